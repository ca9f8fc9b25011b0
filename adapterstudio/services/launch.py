"""Launching a run's worker and watching it: the child process, its events, the out-of-memory retry.

The job runs as ``python -m accelerate.commands.launch ... -m adapterstudio.ml.training.worker
RUN_DIR`` in a child process (one or many processes: the same code path). :func:`supervise`
launches it, passes the JSON-lines events it writes to ``RUN_DIR/events.jsonl`` to the
task's context and into the run's row, retries with half the micro-batch after an
out-of-memory exit, and turns any other end into the run's status. :func:`follow` passes
on the events of a worker that another process launched.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from adapterstudio.core import events as run_events
from adapterstudio.core.context import Context, TaskContext
from adapterstudio.core.errors import Cancelled, UserError
from adapterstudio.core.runs import (
    EXIT_CANCELLED,
    EXIT_OOM,
    RESULT_FILE,
    STOP_FILE,
    WORKER_LOG,
    RunLock,
    RunRecord,
    RunStore,
    worker_holder,
)
from adapterstudio.core.training.spec import TrainingSpec
from adapterstudio.services import run_folders
from adapterstudio.services.run_folders import last_checkpoint

STOP_GRACE_S = 120.0
CANCELLED_ERROR = "was cancelled; its last checkpoint is kept"  # a cancelled run's error in the runs table


class TrainingFailed(UserError):
    """The training child failed; the message says why (and the run stays resumable)."""


def resume_hint(run_id: str) -> str:
    """What the user can do about a run that stopped."""
    return f"resume it with 'adapterstudio train --resume {run_id}'"


def cancelled(run_id: str) -> Cancelled:
    """The error that ends a supervisor's call when its run was cancelled."""
    return Cancelled(f"run {run_id} cancelled; {resume_hint(run_id)}")


def supervise(store: RunStore, run: RunRecord, run_dir: Path, spec: TrainingSpec,
              ctx: TaskContext, lock: RunLock | None = None) -> tuple[TrainingSpec, dict[str, Any]]:
    """Run the worker until it succeeds; return the spec it finally ran with and its result.

    After an out-of-memory exit it goes on from the last checkpoint with half the micro-batch
    (and twice the gradient accumulation); any other end is recorded as the run's status and
    raised (:class:`TrainingFailed`, or ``Cancelled``)."""
    attempts = 0
    while True:
        attempts += 1
        rc, info = _launch_and_watch(spec, run_dir, run.id, store, ctx, lock)
        if rc == 0:
            break
        # accelerate's launcher turns the worker's exit code into 1: the events say what happened
        if (rc == EXIT_OOM or info.get("oom")) and spec.batch_size and spec.batch_size > 1 and attempts < 8:
            new_bs, new_ga = spec.batch_size // 2, spec.grad_accum * 2
            msg = (f"out of memory at micro-batch {spec.batch_size}: retrying with micro-batch {new_bs} and gradient "
                   f"accumulation {new_ga} (same effective batch), from the last checkpoint")
            ctx.log(msg)
            run_events.append(run_dir, "oom_retry", message=msg, batch_size=new_bs, grad_accum=new_ga)
            spec = spec.replace(batch_size=new_bs, grad_accum=new_ga)
            spec.save(run_dir / "spec.yaml")
            store.update(run.id, spec=spec.to_dict())
            continue
        status, err = _failure(rc, info, ctx)
        store.update(run.id, status=status, error=err, finished_at=time.time(),
                     last_checkpoint=last_checkpoint(run_dir), pid=None)
        if status == "cancelled":
            raise cancelled(run.id)
        raise TrainingFailed(f"Training run {run.id} {err}", hint=resume_hint(run.id)
                             if status == "interrupted" else f"the worker log is {run_dir / WORKER_LOG}")
    return spec, json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))


def _failure(rc: int, info: dict[str, Any], ctx: TaskContext) -> tuple[str, str]:
    """The status and error of a run whose worker exited with *rc* (what its events said in *info*)."""
    if rc == EXIT_CANCELLED or info.get("cancelled"):
        return "cancelled", CANCELLED_ERROR
    if info.get("error"):
        return "failed", f"failed: {info['error']}"
    if rc < 0 or rc in (128 + 9, 128 + 15, 137, 143):
        sig = -rc if rc < 0 else rc - 128
        return "interrupted", f"stopped: its process was killed (signal {sig}); it can resume from its last checkpoint"
    if rc == EXIT_OOM or info.get("oom"):
        return "failed", "ran out of memory even with a micro-batch of 1; lower max_length or use lora"
    return "failed", f"failed (exit code {rc}); see {info.get('log')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(spec: TrainingSpec, run_dir: Path) -> list[str]:
    """The ``accelerate launch`` command line that runs the worker on *run_dir*."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.accelerate_config:
        cmd += ["--config_file", spec.accelerate_config]
    else:
        cmd += ["--num_machines", "1", "--dynamo_backend", "no"]
        if spec.num_processes > 1:
            # torchrun-style launcher for N processes; on CPU the worker's Accelerator(cpu=True) then
            # sets up DDP over gloo (accelerate's own --cpu launcher wants mpirun for that)
            cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(spec.num_processes), "--main_process_port", str(_free_port())]
    if spec.cpu and spec.num_processes == 1:
        cmd.append("--cpu")
    cmd += ["-m", "adapterstudio.ml.training.worker", str(run_dir)]
    return cmd


def _child_env(cpu: bool = False) -> dict[str, str]:
    """The worker's environment: this checkout importable, its supervisor named, CUDA hidden for a CPU run."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["ADAPTERSTUDIO_SUPERVISOR_PID"] = str(os.getpid())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def start_worker(spec: TrainingSpec, run_dir: Path, env: dict[str, str], log: IO[bytes],
                 lock: RunLock | None) -> subprocess.Popen[bytes]:
    """Start the worker (:func:`launch_command`) in a session of its own, its output to *log*: the one place
    a worker starts. The supervisor uses what it returns as ``pid``, ``poll()``, ``wait()`` and ``kill()``.
    The launcher inherits the run's lock: it stays held while the worker lives, even if this process is killed."""
    return subprocess.Popen(launch_command(spec, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(run_dir), start_new_session=True,
                            pass_fds=(lock.fd,) if lock is not None and lock.fd is not None else ())


def _launch_and_watch(spec: TrainingSpec, run_dir: Path, run_id: str, store: RunStore,
                      ctx: TaskContext, lock: RunLock | None = None) -> tuple[int, dict[str, Any]]:
    # marks where this launch's events begin (for a process that attaches later)
    launch = secrets.token_hex(8)
    run_events.append(run_dir, "launch", supervisor_pid=os.getpid(), launch=launch)
    if lock is not None:
        lock.note(launch=launch)  # before the launcher inherits the lock (see core.runs.run_liveness)
    env = {**_child_env(spec.cpu), "ADAPTERSTUDIO_LAUNCH": launch}
    offset = run_events.events_path(run_dir).stat().st_size
    log_path = run_dir / WORKER_LOG
    info: dict[str, Any] = {"log": str(log_path)}
    with log_path.open("ab") as log:
        log.write(f"\n==== launch {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
        log.flush()
        proc = start_worker(spec, run_dir, env, log, lock)
    if lock is not None:
        lock.note(launcher_pid=proc.pid)
    run_folders.crash_point("worker_launched")
    stop_sent_at: float | None = None
    history: list[dict[str, Any]] = []
    metrics = store.get(run_id).metrics
    try:
        while True:
            rc = proc.poll()
            new_events, offset = run_events.read_since(run_dir, offset)
            for ev in new_events:
                if isinstance(ev, dict):
                    _handle_event(ev, run_id, store, ctx, info, history, metrics)
            if rc is not None:
                return rc, info
            if ctx.cancelled and stop_sent_at is None:
                _ask_to_stop(run_dir, ctx)
                stop_sent_at = time.monotonic()
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_S:
                ctx.log("the job did not stop in time; killing it")
                _kill(proc)
                info["cancelled"] = True
            time.sleep(0.2)
    except BaseException:
        _kill(proc)
        raise


def _ask_to_stop(run_dir: Path, ctx: TaskContext) -> None:
    (run_dir / STOP_FILE).touch()
    ctx.log("stopping at the next step (a checkpoint is saved first)")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        proc.kill()
    proc.wait()


def _handle_event(ev: dict[str, Any], run_id: str, store: RunStore, ctx: TaskContext, info: dict[str, Any],
                  history: list[dict[str, Any]], metrics: dict[str, Any], *, record: bool = True) -> None:
    """One worker event: to *ctx*, into *info*; and into the run's row when *record* (its supervisor)."""
    kind = ev.get("event")
    if kind == "start":
        info["start"] = ev
        metrics.update(trainable_params=ev.get("trainable_params"), total_params=ev.get("total_params"),
                       device=ev.get("device"), precision=ev.get("precision"), total_steps=ev.get("total_steps"))
        if record:
            store.update(run_id, world_size=ev.get("world_size"), metrics=metrics)
        precision = {"no": "fp32", None: "fp32"}.get(ev.get("precision"), ev.get("precision"))  # accelerate says "no"
        ctx.log(f"training on {ev.get('device')} x{ev.get('world_size')} ({precision}), "
                f"{ev.get('trainable_params'):,} trainable of {ev.get('total_params'):,} parameters"
                + (f", resumed from {ev['resumed_from']}" if ev.get("resumed_from") else ""))
    elif kind == "step":
        info["last_step"] = ev
        ctx.progress(ev["step"], ev["total_steps"],
                     f"loss {ev['loss']:.4f} | {ev['samples_per_s']:.1f} samples/s | eta {ev['eta_s']:.0f}s")
    elif kind == "eval":
        m = ev.get("metrics", {})
        metrics.setdefault("history", []).append({"step": ev["step"], "epoch": ev["epoch"], **{f"eval_{k}": v for k, v in m.items()}})
        if record:
            store.update(run_id, metrics=metrics)
        ctx.log(f"step {ev['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)))
    elif kind == "checkpoint":
        if record:
            store.update(run_id, last_checkpoint=ev.get("path"))
    elif kind == "error":
        info["error"] = ev.get("message")
    elif kind == "oom":
        info["oom"] = True
        ctx.log(f"out of memory: {ev.get('message')}")
    elif kind == "cancelled":
        info["cancelled"] = True
    elif kind == "baseline":
        val = (ev.get("val") or {}).get(ev.get("metric"))
        test = (ev.get("test") or {}).get(ev.get("metric"))
        ctx.log(f"baseline: logistic regression on the frozen {ev.get('features')} features: {ev.get('metric')} "
                f"{val:.4f} on validation" + (f", {test:.4f} on test" if test is not None else "") +
                (" (the new head starts from it)" if ev.get("head_init") else ""))
    elif kind == "refit":
        ctx.log(f"refit: training again on {ev.get('train_examples')} training + validation rows for {ev.get('steps')} "
                f"steps (the validation split chose step {ev.get('selected_step')})")
    elif kind == "early_stop":
        ctx.log(f"early stop at step {ev.get('step')}: no improvement in {ev.get('patience')} evaluations")


def follow(run: RunRecord, run_dir: Path, store: RunStore, ctx: TaskContext) -> tuple[dict[str, Any], RunLock]:
    """Pass the run's events to *ctx* until nothing runs it (its lock and its worker's are free); return
    what they said, and the run's lock, now held by this process."""
    info: dict[str, Any] = {"log": str(run_dir / WORKER_LOG)}
    history: list[dict[str, Any]] = []
    quiet = Context()  # the events written before we came are replayed only for what they say
    old, offset = run_events.read_since(run_dir, 0)
    for ev in old:
        if isinstance(ev, dict):
            if ev.get("event") == "launch":
                info = {"log": info["log"]}
            _handle_event(ev, run.id, store, quiet, info, history, {}, record=False)
    if info.get("last_step"):
        ev = info["last_step"]
        ctx.progress(ev.get("step", 0), ev.get("total_steps"), "following the running worker")
    stop_sent = False
    lock: RunLock | None = None
    while True:
        if lock is None:
            lock = RunLock.acquire(run_dir, tries=1)  # free once any supervisor and the launcher are gone
        new, offset = run_events.read_since(run_dir, offset)
        for ev in new:
            if isinstance(ev, dict):
                _handle_event(ev, run.id, store, ctx, info, history, {}, record=False)
        if lock is not None and worker_holder(run_dir) is None:
            return info, lock
        if ctx.cancelled and not stop_sent:
            _ask_to_stop(run_dir, ctx)
            stop_sent = True
        time.sleep(0.3)

