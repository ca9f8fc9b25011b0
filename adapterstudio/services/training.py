"""Training use cases: prepare a run, supervise its child process, import the result.

The job runs as ``python -m accelerate.commands.launch ... -m adapterstudio.ml.training.worker
RUN_DIR`` in a child process (one or many processes: the same code path). The functions
here are plain functions taking a :class:`TaskContext`; callers (CLI, GUI) run them in a
worker thread. They read the child's JSON-lines events from ``RUN_DIR/events.jsonl`` and
record the run in the catalogue's ``runs`` table.

On success the adapter is imported with ``source="train"``, the run id and its lineage
(spec, base, dataset hash, labels, chat template, metrics, versions, hardware...). A
``full`` fine-tune is a whole model, not an adapter: it is copied to
``<library>/models/<name>`` and registered as a new *base* whose notes name its parent,
with the same lineage in ``lineage.json`` beside the weights and in the run record.

A run's life survives a kill at any point: everything it needs is checked before any work;
its folder is written under a temporary name and renamed whole before its row is
inserted; one process supervises it at a time (:class:`~adapterstudio.core.runs.RunLock`,
held by the worker too), and :func:`resume` follows a worker that outlived its supervisor
instead of starting a second one; an adapter imported just before a kill is found again
(by its run id) and linked instead of retraining. :func:`crash_point` marks the moments
where tests kill the process.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterstudio.core import events as run_events
from adapterstudio.core.context import NULL_CONTEXT, Context, TaskContext
from adapterstudio.core.errors import AlreadyExists, Cancelled, InvalidInput, NotFound, UserError
from adapterstudio.core.fsutil import atomic_write_text, fsync_dir
from adapterstudio.core.runs import (EXIT_CANCELLED, EXIT_OOM, RUN_ID_RE, RunLock, RunRecord, RunStore, latest_checkpoint, lock_holder, run_liveness,
                                     worker_holder)
from adapterstudio.core.training.spec import TrainingSpec, estimate_memory

log = logging.getLogger(__name__)

STOP_GRACE_S = 120.0
TMP_PREFIX = ".tmp-"  # a run folder being written; renamed to runs/<id> once complete
LEFTOVER_GRACE_S = 3600.0  # a temp folder this old belongs to no live process


class TrainingFailed(UserError):
    """The training child failed; the message says why (and the run stays resumable)."""


class RunBusy(InvalidInput):
    """Another process supervises this run (it holds the run's lock)."""


def crash_point(point: str) -> None:
    """A moment in a run's life where a crash must leave the library consistent. Does nothing.

    Tests replace it (``monkeypatch.setattr(training, "crash_point", ...)``, or in a child
    process) to kill the process exactly there. The points: ``run_data_written`` (the split
    is in the temporary run folder, spec.yaml not yet), ``run_folder_placed`` (the run
    folder is complete under its final name, its row not inserted), ``worker_launched`` (the
    worker's launcher has just started), ``before_import`` (the worker finished, nothing
    imported), ``adapter_imported`` (the adapter is in the catalogue, the run not yet marked
    succeeded).
    """


@dataclass
class TrainOutcome:
    run: RunRecord
    adapter: Any | None  # AdapterRecord (or BaseRecord for a full fine-tune)
    result: dict[str, Any]


def runs(lib: Any) -> RunStore:
    return RunStore(lib.catalogue)


# -- preparing --------------------------------------------------------------------
def resolve_spec(lib: Any, spec: TrainingSpec, prepared: Any = None,
                 notes: list[str] | None = None) -> tuple[TrainingSpec, Any]:
    """Validate *spec* against the catalogue; fill defaults for the base's size.

    With the *prepared* data, the auto recipe first decides what the user left open from the
    data (its decisions are appended to *notes*)."""
    spec.validate()
    base = lib.catalogue.get_base(spec.base)
    if not base.path or not Path(base.path).exists():
        raise NotFound(f"Base model {base.name!r} has no local files to train on; download it first.")
    if not spec.name:
        spec = spec.replace(name=f"{base.name.split('/')[-1]}-{spec.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    elif spec.name != spec.name.strip():
        spec = spec.replace(name=spec.name.strip())
    check_output_name(lib, spec.strategy, spec.name)
    for key in ("data", "validation", "test", "accelerate_config"):
        v = getattr(spec, key)
        if v:
            setattr(spec, key, str(Path(v).expanduser().resolve()))
    if prepared is not None:
        from adapterstudio.core.training import recipe

        if spec.refit and not prepared.validation:
            raise InvalidInput("refit retrains on the training and validation rows for the steps the validation split "
                               "chose, so it needs a validation split (--val-fraction above 0 or --validation FILE).")
        spec, decided = recipe.apply(spec, prepared, base.num_parameters)
        if notes is not None:
            notes.extend(decided)
    return spec.with_defaults(base.num_parameters).validate(), base


def _valid_name(name: str, what: str, how: str = "choose another --name") -> None:
    from adapterstudio.core.names import validate_name

    if name != name.strip():
        raise InvalidInput(f"{name!r} is not a valid {what} name (no spaces at either end); {how}.")
    try:
        validate_name(name, what)
    except InvalidInput as exc:
        raise InvalidInput(f"{str(exc).rstrip('.')}; {how}.") from None


def _full_dest(lib: Any, name: str) -> Path:
    return lib.root / "models" / name.replace("/", "_")


def _lineage_run_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / "lineage.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def check_output_name(lib: Any, strategy: str, name: str, run_id: str | None = None,
                      how: str = "choose another --name") -> None:
    """Raise unless *name* is a valid, free name for what a run of *strategy* produces.

    Free means: not in the catalogue, no folder in the way (a full fine-tune), and not the
    output of another queued or running run. *run_id*'s own leftovers do not count. *how*
    ends the message: what the user can do about it."""
    full = strategy == "full"
    _valid_name(name, "base model" if full else "adapter", how)
    if full:
        if lib.catalogue.find_base(name) is not None:
            raise AlreadyExists(f"A base model named {name!r} is already in the catalogue; {how}.")
        dest = _full_dest(lib, name)
        if dest.exists() and (run_id is None or _lineage_run_id(dest) != run_id):
            raise AlreadyExists(f"{dest} already exists; {how}.")
    elif lib.catalogue.find_adapter(name) is not None:
        raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; {how}.")
    for other in runs(lib).list():
        if other.id != run_id and other.status in ("queued", "running") and other.name.casefold() == name.casefold() \
                and (other.spec.get("strategy") == "full") == full:
            raise AlreadyExists(f"Run {other.id} ({other.status}) will produce {'a base model' if full else 'an adapter'} "
                                f"named {name!r}; {how}.")


def memory_estimate(lib: Any, spec: TrainingSpec) -> dict[str, Any]:
    """The "will it fit" estimate for *spec* on this machine (no torch import on CPU-only paths)."""
    base = lib.catalogue.get_base(spec.base)
    _, config = lib.catalogue.base_details(base.name)
    device, available = _device_memory(spec)
    return estimate_memory(spec, config, base.num_parameters, device, available).to_json()


def _device_memory(spec: TrainingSpec) -> tuple[str, int | None]:
    if not spec.cpu:
        try:
            import torch

            if torch.cuda.is_available():
                free, _ = torch.cuda.mem_get_info()
                return torch.cuda.get_device_name(0), int(free)
        except Exception as exc:  # noqa: BLE001  (a broken CUDA/driver: the estimate falls back to host RAM, logged)
            log.warning("the CUDA memory probe failed (%s: %s); the memory estimate is against host RAM instead",
                        type(exc).__name__, exc)
    try:
        import psutil

        return "cpu", int(psutil.virtual_memory().available)
    except ImportError:
        return "cpu", None


def prepare_run(lib: Any, spec: TrainingSpec, ctx: TaskContext = NULL_CONTEXT, *, status: str = "queued",
                prepared_from: Path | None = None) -> RunRecord:
    """Check everything, split the data into the run folder, and record the run."""
    run, lock = _prepare(lib, spec, ctx, status=status, prepared_from=prepared_from)
    lock.release()
    return run


def _prepare(lib: Any, spec: TrainingSpec, ctx: TaskContext, *, status: str,
             prepared_from: Path | None) -> tuple[RunRecord, RunLock]:
    """Prepare a run and return it with its lock held (so no queue runner takes it first).

    The folder is written as ``runs/.tmp-<id>`` and renamed whole to ``runs/<id>``; the row
    is inserted after. A kill on the way leaves a temporary folder or a folder without a
    row (both swept later), never a queued run with a half-written folder."""
    from adapterstudio.core.training.data import PreparedData, prepare

    checked, base = resolve_spec(lib, spec)
    ctx.log(f"checking and splitting {checked.data}")
    if prepared_from is not None:
        prepared = PreparedData.read(prepared_from)
    else:
        prepared = prepare(checked)
    for w in prepared.warnings:
        ctx.log(f"warning: {w}")
    notes: list[str] = []
    spec, base = resolve_spec(lib, spec.replace(name=checked.name), prepared, notes)
    for n in notes:
        ctx.log(f"recipe: {n}")
    est = memory_estimate(lib, spec)
    sweep_leftovers(lib)
    store = runs(lib)
    runs_dir = lib.catalogue.runs_dir
    rid = _unused_run_id(runs_dir)
    tmp, final = runs_dir / f"{TMP_PREFIX}{rid}", runs_dir / rid
    tmp.mkdir(parents=True)
    lock: RunLock | None = None
    placed = False
    try:
        lock = RunLock.acquire(tmp)  # the lock is on the file, so it moves with the folder
        if lock is None:
            raise RunBusy(f"{tmp} is locked by another process.")
        prepared.write(tmp / "data")
        crash_point("run_data_written")
        spec.save(tmp / "spec.yaml")
        job = {"run_id": rid, "base_path": base.path, "base": {"name": base.name, "hub_id": base.hub_id,
               "revision": base.revision, "content_hash": base.content_hash}, "labels": prepared.labels,
               "columns": prepared.columns, "dataset": prepared.dataset}
        atomic_write_text(tmp / "job.json", json.dumps(job, indent=2))
        fsync_dir(tmp)
        os.replace(tmp, final)
        placed = True
        fsync_dir(runs_dir)
        lock.path = final / lock.path.name
        crash_point("run_folder_placed")
        run = store.create(name=spec.name, spec=spec.to_dict(), base_id=base.id, status=status, run_id=rid,
                           metrics={"estimate": est, "sizes": {"train": len(prepared.train),
                                    "validation": len(prepared.validation), "test": len(prepared.test)}})
    except BaseException:
        if lock is not None:
            lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if placed and lib.catalogue.conn.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone() is None:
            shutil.rmtree(final, ignore_errors=True)
        raise
    avail = f" of {est['available'] / 2**30:.1f} GiB free on {est['device']}" if est.get("available") else ""
    ctx.log(f"memory estimate: about {est['total'] / 2**30:.2f} GiB{avail}")
    if est.get("fits") is False:
        ctx.log("warning: " + "; ".join(est["notes"]))
    return run, lock


def _unused_run_id(runs_dir: Path) -> str:
    from adapterstudio.core.runs import new_run_id

    while True:
        rid = new_run_id()
        if not (runs_dir / rid).exists() and not (runs_dir / f"{TMP_PREFIX}{rid}").exists():
            return rid


def sweep_leftovers(lib: Any, grace_s: float = LEFTOVER_GRACE_S) -> list[Path]:
    """Delete what crashes left in ``runs/`` once older than *grace_s*: temporary run folders,
    compare splits, and run folders that have no row and never ran (killed between the rename
    and the insert, or whose removal was cut short). Returns what was deleted."""
    runs_dir = lib.catalogue.runs_dir
    known = {r[0] for r in lib.catalogue.conn.execute("SELECT id FROM runs")}
    now = time.time()
    gone: list[Path] = []
    try:
        entries = list(runs_dir.iterdir())
    except OSError:  # no runs folder yet: nothing to sweep
        return gone
    for p in entries:
        if p.name.startswith((TMP_PREFIX, ".compare-")):
            pass
        elif RUN_ID_RE.match(p.name) and p.name not in known:
            if run_events.events_path(p).exists() or (p / "checkpoints").exists():
                continue  # it trained once: not ours to delete without a row saying so
        else:
            continue
        try:
            if not p.is_dir() or now - p.stat().st_mtime < grace_s or lock_holder(p) is not None:
                continue
        except OSError:  # gone meanwhile
            continue
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    return gone


# -- running ------------------------------------------------------------------------
def train(lib: Any, spec: TrainingSpec, ctx: TaskContext = NULL_CONTEXT) -> TrainOutcome:
    """Prepare and run one job to the end (the CLI's ``train``)."""
    run, lock = _prepare(lib, spec, ctx, status="queued", prepared_from=None)
    return run_job(lib, run.id, ctx, _lock=lock)


def resume(lib: Any, run_id: str, ctx: TaskContext = NULL_CONTEXT, *, name: str | None = None) -> TrainOutcome:
    """Go on with a run that stopped (interrupted, failed, cancelled) or is still queued.

    A run whose worker still runs (its supervisor was killed, or another app supervises it)
    is followed (:func:`attach`), never given a second worker. *name* changes the output
    name first (when the original name turned out to be invalid or taken). A run whose
    training had finished is only imported; one whose adapter was imported just before a
    crash is only linked."""
    store = runs(lib)
    run = store.get(run_id)
    if lock_holder(Path(run.run_dir)) is not None or worker_holder(Path(run.run_dir)) is not None:
        if name is not None and name.strip() != run.name:
            raise InvalidInput(f"Run {run.id} is running; change its output name once it has stopped.")
        return attach(lib, run.id, ctx)
    if run.status == "succeeded":
        raise InvalidInput(f"Run {run.id} already finished; its adapter is {run.adapter!r}.")
    if run.status == "running":
        raise RunBusy(f"Run {run.id} is running in another process (pid {run.pid}).")
    return run_job(lib, run.id, ctx, name=name)


def attach(lib: Any, run_id: str, ctx: TaskContext = NULL_CONTEXT) -> TrainOutcome:
    """Follow a run whose worker another process launched until it ends, then see it through.

    For a GUI reopened while a run goes on, and for :func:`resume`. The run's events come to
    *ctx* as they would to its supervisor. If that supervisor is alive (another app or CLI),
    this only follows and returns (or raises) what it records. If it is gone (the worker
    stops by itself at its next step, keeping a checkpoint), this process takes the run over
    once the worker has stopped: it imports a finished result, or resumes from the newest
    checkpoint. ``ctx.cancel()`` asks the worker to stop, as ``runs cancel`` does."""
    store = runs(lib)
    run = store.get(run_id)
    run_dir = Path(run.run_dir)
    if lock_holder(run_dir) is None and worker_holder(run_dir) is None:
        if run.status == "running":  # supervised by an older version (no lock): nothing to follow from here
            raise RunBusy(f"Run {run.id} is running in another process (pid {run.pid}).")
        raise InvalidInput(f"Run {run.id} is {run.status}, not running; resume it with "
                           f"'adapterstudio train --resume {run.id}'.")
    state, holder = run_liveness(run_dir)
    adopt = state != "supervised"
    ctx.log(f"run {run.id} is " + ("running without its supervisor (it was killed); following its worker until it "
                                   "stops, then taking over" if adopt else
                                   f"supervised by process {holder.get('supervisor_pid')}; following it"))
    info, lock = _follow(run, run_dir, store, ctx)
    handed_over = False
    try:
        run = store.get(run.id)
        if run.status == "succeeded":
            return _outcome(lib, run)
        if run.status == "running" or (adopt and run.status == "interrupted"):
            # nobody finished it: this process does
            if (run_dir / "stop").exists():
                store.update(run.id, status="cancelled", error="was cancelled; its last checkpoint is kept", pid=None,
                             last_checkpoint=_latest_checkpoint(run_dir), finished_at=time.time())
                raise Cancelled(f"run {run.id} cancelled; resume it with 'adapterstudio train --resume {run.id}'")
            if info.get("error") and not (run_dir / "result.json").exists():
                err = f"failed: {info['error']}"
                store.update(run.id, status="failed", error=err, pid=None, last_checkpoint=_latest_checkpoint(run_dir),
                             finished_at=time.time())
                raise TrainingFailed(f"Training run {run.id} {err}", hint=f"the worker log is {run_dir / 'worker.log'}")
            handed_over = True
            return run_job(lib, run.id, ctx, _lock=lock)
        raise _ended(run)
    finally:
        if not handed_over:
            lock.release()


def _follow(run: RunRecord, run_dir: Path, store: RunStore, ctx: TaskContext) -> tuple[dict[str, Any], RunLock]:
    """Pass the run's events to *ctx* until nothing runs it (its lock and its worker's are free); return
    what they said, and the run's lock, now held by this process."""
    info: dict[str, Any] = {"log": str(run_dir / "worker.log")}
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
            (run_dir / "stop").touch()
            stop_sent = True
            ctx.log("stopping at the next step (a checkpoint is saved first)")
        time.sleep(0.3)


def _ended(run: RunRecord) -> UserError | Cancelled:
    """The error that reports a run another process ended without success."""
    if run.status == "cancelled":
        return Cancelled(f"run {run.id} cancelled; resume it with 'adapterstudio train --resume {run.id}'")
    return TrainingFailed(f"Training run {run.id} is {run.status}: {run.error}",
                          hint=f"resume it with 'adapterstudio train --resume {run.id}'")


def _outcome(lib: Any, run: RunRecord) -> TrainOutcome:
    result = _read_result(Path(run.run_dir)) or dict(run.metrics or {})
    if run.spec.get("strategy") == "full":
        rec = lib.catalogue.find_base(run.name)
    else:
        rec = lib.catalogue.find_adapter(run.adapter) if run.adapter else None
    return TrainOutcome(run=run, adapter=rec, result=result)


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cancel(lib: Any, run_id: str) -> RunRecord:
    """Ask a run to stop at its next step (it checkpoints first). Works from any process."""
    store = runs(lib)
    run = store.get(run_id)
    if run.status == "queued":
        return store.update(run.id, status="cancelled", queue_position=None, finished_at=time.time())
    if run.status != "running":
        raise InvalidInput(f"Run {run.id} is {run.status}, not running.")
    (Path(run.run_dir) / "stop").touch()
    return run


def run_job(lib: Any, run_id: str, ctx: TaskContext = NULL_CONTEXT, *, name: str | None = None,
            _lock: RunLock | None = None) -> TrainOutcome:
    """Supervise a prepared run (queued, interrupted, failed or cancelled) until it ends.

    Takes the run's lock (:class:`RunBusy` if another process holds it) and checks
    everything the run needs before launching anything."""
    store = runs(lib)
    lock = _lock
    try:
        run = store.get(run_id)
        run_dir = Path(run.run_dir)
        if lock is None:
            if not run_dir.is_dir():
                _refuse(store, run, InvalidInput(
                    f"Run {run.id}'s folder {run_dir} is missing; remove the run with 'adapterstudio queue remove {run.id}'."))
            lock = RunLock.acquire(run_dir)
            if lock is None:
                raise RunBusy(f"Run {run.id} is already running in another process.")
            run = store.get(run.id)  # as the last supervisor left it
        if run.status == "succeeded":
            raise InvalidInput(f"Run {run.id} already finished.")
        worker = worker_holder(run_dir)
        if worker is not None:  # a worker that outlived its launcher: never a second one in the same folder
            raise RunBusy(f"Run {run.id}'s worker (pid {worker.get('pid')}) is still running; follow it with "
                          f"'adapterstudio train --resume {run.id}'.")
        linked = _link_imported(lib, run, ctx)
        if linked is not None:
            return linked
        try:
            spec = _preflight(lib, run, run_dir, name)
        except UserError as exc:
            _refuse(store, run, exc)
        if not store.claim(run.id, os.getpid()):
            raise RunBusy(f"Run {run.id} is already running in another process.")
        lock.note(run_id=run.id)
        (run_dir / "stop").unlink(missing_ok=True)
        result = _read_result(run_dir) if (run_dir / "adapter").is_dir() else None
        if result is not None:
            ctx.log(f"run {run.id} had finished training; importing its result")
        else:
            try:
                spec, result = _supervise(store, run, run_dir, spec, ctx, lock)
            except BaseException as exc:
                # whatever stopped the supervisor (Ctrl-C, a crash in the app): the run must not stay 'running'
                if store.get(run.id).status == "running":
                    store.update(run.id, status="interrupted", error=f"supervision stopped ({type(exc).__name__}); resume it",
                                 pid=None, last_checkpoint=_latest_checkpoint(run_dir), finished_at=time.time())
                raise
        crash_point("before_import")
        ctx.progress(1, 1, "importing into the catalogue")
        try:
            rec = _import_result(lib, run.id, spec, run_dir, result, ctx)
        except UserError as exc:
            store.update(run.id, status="failed", error=f"could not import the trained adapter: {exc}", pid=None,
                         finished_at=time.time())
            raise
        return TrainOutcome(run=store.get(run.id), adapter=rec, result=result)
    finally:
        if lock is not None:
            lock.release()


def _refuse(store: RunStore, run: RunRecord, exc: UserError) -> None:
    """Raise *exc*; a queued run that cannot run leaves the queue as failed (with *exc* as its error)."""
    if run.status == "queued":
        store.update(run.id, status="failed", error=str(exc), queue_position=None, pid=None, finished_at=time.time())
    raise exc


def _preflight(lib: Any, run: RunRecord, run_dir: Path, name: str | None) -> TrainingSpec:
    """Everything a run needs, checked before anything is launched: its folder, base files, output name."""
    missing = [f for f in ("spec.yaml", "job.json", "data/meta.json", "data/train.jsonl") if not (run_dir / f).is_file()]
    if missing:
        raise InvalidInput(f"Run {run.id}'s folder {run_dir} is incomplete (no {missing[0]}): it was cut short while "
                           f"being prepared; remove it with 'adapterstudio queue remove {run.id}'.")
    spec = TrainingSpec.from_yaml(run_dir / "spec.yaml")
    try:
        job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidInput(f"{run_dir / 'job.json'} is not valid JSON ({exc}); remove the run.") from None
    base_path = job.get("base_path")
    if not base_path or not Path(base_path).exists():
        raise NotFound(f"The base model files of run {run.id} ({base_path}) are gone; add the base model back first.")
    if name is not None and name.strip() != spec.name:
        new = name.strip()
        check_output_name(lib, spec.strategy, new, run.id)
        spec = spec.replace(name=new)
        spec.save(run_dir / "spec.yaml")
        if (run_dir / "adapter" / "training_spec.yaml").is_file():
            spec.save(run_dir / "adapter" / "training_spec.yaml")
        runs(lib).update(run.id, name=new, spec=spec.to_dict())
    else:
        check_output_name(lib, spec.strategy, spec.name, run.id,
                          how=f"resume it under another name with 'adapterstudio train --resume {run.id} --name NEW'")
    return spec


def _link_imported(lib: Any, run: RunRecord, ctx: TaskContext) -> TrainOutcome | None:
    """The run's result already in the catalogue (imported just before a crash): link it, mark it succeeded."""
    store = runs(lib)
    run_dir = Path(run.run_dir)
    result = _read_result(run_dir) or {}
    if run.spec.get("strategy") == "full":
        rec = next((b for b in lib.catalogue.list_bases() if b.path and _lineage_run_id(Path(b.path)) == run.id), None)
        if rec is None:
            return None
        lineage = json.loads((Path(rec.path) / "lineage.json").read_text(encoding="utf-8"))
        if not rec.notes:
            lib.catalogue.update_base(rec.name, notes=f"full fine-tune of {lineage['base']['name']} (run {run.id}); "
                                      "lineage in lineage.json")
            rec = lib.catalogue.get_base(rec.name)
        fields: dict[str, Any] = {"metrics": {**result, "lineage": lineage}}
    else:
        # the adapters table has no run -> adapter link other than the adapter's run_id
        row = lib.catalogue.conn.execute("SELECT name FROM adapters WHERE run_id = ?", (run.id,)).fetchone()
        if row is None:
            return None
        rec = lib.catalogue.get_adapter(row[0])
        fields = {"metrics": result or rec.lineage.get("metrics", {}), "adapter_id": rec.id}
    store.update(run.id, status="succeeded", error="", pid=None, queue_position=None,
                 world_size=result.get("world_size") or run.world_size,
                 finished_at=time.time(), last_checkpoint=_latest_checkpoint(run_dir), **fields)
    ctx.log(f"run {run.id}'s result {rec.name!r} was already in the catalogue (imported just before it stopped); linked it")
    return TrainOutcome(run=store.get(run.id), adapter=rec, result=result)


def _supervise(store: RunStore, run: RunRecord, run_dir: Path, spec: TrainingSpec,
               ctx: TaskContext, lock: RunLock | None = None) -> tuple[TrainingSpec, dict[str, Any]]:
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
            _append_event(run_dir, "oom_retry", message=msg, batch_size=new_bs, grad_accum=new_ga)
            spec = spec.replace(batch_size=new_bs, grad_accum=new_ga)
            spec.save(run_dir / "spec.yaml")
            store.update(run.id, spec=spec.to_dict())
            continue
        status, err = _failure(rc, info, ctx)
        store.update(run.id, status=status, error=err, finished_at=time.time(),
                     last_checkpoint=_latest_checkpoint(run_dir), pid=None)
        if status == "cancelled":
            raise Cancelled(f"run {run.id} cancelled; resume it with 'adapterstudio train --resume {run.id}'")
        raise TrainingFailed(f"Training run {run.id} {err}", hint=f"resume it with 'adapterstudio train --resume {run.id}'"
                             if status == "interrupted" else f"the worker log is {run_dir / 'worker.log'}")
    return spec, json.loads((run_dir / "result.json").read_text(encoding="utf-8"))


def _failure(rc: int, info: dict[str, Any], ctx: TaskContext) -> tuple[str, str]:
    if rc == EXIT_CANCELLED or info.get("cancelled"):
        return "cancelled", "was cancelled; its last checkpoint is kept"
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


def _launch_and_watch(spec: TrainingSpec, run_dir: Path, run_id: str, store: RunStore,
                      ctx: TaskContext, lock: RunLock | None = None) -> tuple[int, dict[str, Any]]:
    # marks where this launch's events begin (for a process that attaches later)
    launch = secrets.token_hex(8)
    _append_event(run_dir, "launch", supervisor_pid=os.getpid(), launch=launch)
    if lock is not None:
        lock.note(launch=launch)  # before the launcher inherits the lock (see core.runs.run_liveness)
    env = {**_child_env(spec.cpu), "ADAPTERSTUDIO_LAUNCH": launch}
    offset = run_events.events_path(run_dir).stat().st_size
    log_path = run_dir / "worker.log"
    info: dict[str, Any] = {"log": str(log_path)}
    with log_path.open("ab") as log:
        log.write(f"\n==== launch {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
        log.flush()
        # the launcher inherits the run's lock: it stays held while the worker lives, even if this process is killed
        proc = subprocess.Popen(launch_command(spec, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(run_dir), start_new_session=True,
                                pass_fds=(lock.fd,) if lock is not None and lock.fd is not None else ())
    if lock is not None:
        lock.note(launcher_pid=proc.pid)
    crash_point("worker_launched")
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
                (run_dir / "stop").touch()
                stop_sent_at = time.monotonic()
                ctx.log("stopping at the next step (a checkpoint is saved first)")
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_S:
                ctx.log("the job did not stop in time; killing it")
                _kill(proc)
                info["cancelled"] = True
            time.sleep(0.2)
    except BaseException:
        _kill(proc)
        raise


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


def _append_event(run_dir: Path, kind: str, /, **data: Any) -> None:
    run_events.append(run_dir, kind, **data)


def _latest_checkpoint(run_dir: Path) -> str | None:
    newest = latest_checkpoint(run_dir)
    return str(newest) if newest else None


# -- importing -------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("adapterstudio", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def base_chat_template(base_path: str) -> str | None:
    p = Path(base_path)
    jinja = p / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        f = p / name
        if f.is_file():
            try:
                t = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
            except (ValueError, OSError):
                continue
            if isinstance(t, str):
                return t
            if isinstance(t, list) and t:
                return next((x.get("template") for x in t if x.get("name") == "default"), t[0].get("template"))
    return None


def build_lineage(run_id: str, spec: TrainingSpec, job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    task = spec.task
    cols = job.get("columns", {})
    return {
        "run_id": run_id, "task": task, "strategy": spec.strategy, "spec": spec.to_dict(), "base": job["base"],
        "dataset": job["dataset"], "labels": job.get("labels"),
        "chat_template": base_chat_template(job["base_path"]) if task == "causal-lm" else None,
        "text_column": cols.get("text_column") or cols.get("messages_column") or cols.get("prompt_column") or cols.get("image_column"),
        "label_column": cols.get("label_column") or cols.get("response_column"),
        "columns": cols,
        "metrics": {"history": result.get("history", []), "final": result.get("final", {}), "test": result.get("test", {})},
        "library_versions": library_versions(), "seed": spec.seed,
        "hardware": {"device": result.get("device"), "precision": result.get("precision"), "platform": platform.platform(),
                     "machine": platform.machine(), "cpu_count": os.cpu_count(), "peak_memory": result.get("peak_memory")},
        "duration_s": result.get("duration_s"), "world_size": result.get("world_size"),
        "trainable_params": result.get("trainable_params"), "total_params": result.get("total_params"),
        "best_step": result.get("best_step"), "steps": result.get("steps"),
        **{k: result[k] for k in ("baseline", "baseline_metric", "gain_over_baseline", "baseline_warning",
                                  "baseline_split", "metric") if k in result},
    }


def _import_result(lib: Any, run_id: str, spec: TrainingSpec, run_dir: Path, result: dict[str, Any],
                   ctx: TaskContext) -> Any:
    job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    lineage = build_lineage(run_id, spec, job, result)
    store = runs(lib)
    out = run_dir / "adapter"
    if spec.strategy == "full":
        dest = _full_dest(lib, spec.name)
        if not (dest.exists() and _lineage_run_id(dest) == run_id):  # else copied before a crash: register it
            if dest.exists():
                raise AlreadyExists(f"{dest} already exists; choose another --name.")
            tmp = dest.with_name("." + dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out, tmp)
            atomic_write_text(tmp / "lineage.json", json.dumps(lineage, indent=2, default=str))
            os.replace(tmp, dest)
        rec = lib.add_base(dest, name=spec.name, ctx=ctx)
        crash_point("adapter_imported")
        lib.catalogue.update_base(rec.name, notes=f"full fine-tune of {job['base']['name']} (run {run_id}); lineage in lineage.json")
        store.update(run_id, status="succeeded", metrics={**result, "lineage": lineage}, world_size=result.get("world_size"),
                     error="", finished_at=time.time(), pid=None, last_checkpoint=_latest_checkpoint(run_dir))
        return lib.catalogue.get_base(rec.name)
    rec = lib.import_adapter(out, spec.name, base=spec.base, source="train", run_id=run_id, lineage=lineage,
                             tags=[f"task:{spec.task}", f"strategy:{spec.strategy}"], ctx=ctx)
    crash_point("adapter_imported")
    store.update(run_id, status="succeeded", adapter_id=rec.id, metrics=result, world_size=result.get("world_size"),
                 error="", finished_at=time.time(), pid=None, last_checkpoint=_latest_checkpoint(run_dir))
    return rec


# -- the queue ---------------------------------------------------------------------
def enqueue(lib: Any, spec: TrainingSpec, ctx: TaskContext = NULL_CONTEXT) -> RunRecord:
    return prepare_run(lib, spec, ctx, status="queued")


def run_queue(lib: Any, ctx: TaskContext = NULL_CONTEXT, *, limit: int | None = None,
              keep_going: bool = True) -> list[dict[str, Any]]:
    """Run queued jobs one after the other (the accelerator is one slot). Failures are recorded, not fatal."""
    done: list[dict[str, Any]] = []
    store = runs(lib)
    busy: set[str] = set()  # held by another process (a 'train' that queued it, another queue runner)
    while limit is None or len(done) < limit:
        q = [r for r in store.queue() if r.id not in busy]
        if not q:
            break
        run = q[0]
        ctx.log(f"starting queued run {run.id} ({run.name})")
        try:
            out = run_job(lib, run.id, ctx)
            done.append({"run": out.run.id, "name": run.name, "status": "succeeded"})
        except RunBusy:
            busy.add(run.id)
            ctx.log(f"run {run.id} is being run by another process; skipping it")
        except UserError as exc:
            done.append({"run": run.id, "name": run.name, "status": store.get(run.id).status, "error": str(exc)})
            if not keep_going:
                break
        ctx.check_cancelled()
    return done


# -- comparison ----------------------------------------------------------------------
def compare(lib: Any, spec: TrainingSpec, strategies: list[str], ctx: TaskContext = NULL_CONTEXT) -> list[dict[str, Any]]:
    """Train each strategy on the same split; one row per strategy (the playbook's table)."""
    from adapterstudio.core.training.data import prepare

    if not strategies:
        raise InvalidInput("Name at least one strategy to compare (e.g. head,lora,full).")
    if not spec.test and spec.test_fraction == 0:
        spec = spec.replace(test_fraction=0.2)
    prefix = spec.name or f"{spec.base.split('/')[-1]}-cmp-{time.strftime('%Y%m%d-%H%M%S')}"
    # every strategy's output name is checked before the first one trains
    first = [resolve_spec(lib, spec.replace(name=f"{prefix}-{s}", strategy=s))[0] for s in strategies][0]
    shared = lib.root / "runs" / f".compare-{prefix}"
    prepare(first).write(shared)  # one split for all strategies
    rows: list[dict[str, Any]] = []
    try:
        for s in strategies:
            ctx.check_cancelled()
            ctx.log(f"== {s} ==")
            sub = spec.replace(strategy=s, name=f"{prefix}-{s}", lr=spec.lr if len(strategies) == 1 else None)
            run, lock = _prepare(lib, sub, ctx, status="queued", prepared_from=shared)
            try:
                out = run_job(lib, run.id, ctx, _lock=lock)
            except UserError as exc:
                rows.append({"strategy": s, "run": run.id, "status": runs(lib).get(run.id).status, "error": str(exc)})
                continue
            r = out.result
            metric = r.get("metric") or "loss"
            if r.get("baseline") and not any(x["strategy"] == "probe" for x in rows):
                b = r["baseline"]
                rows.append({"strategy": "probe", "run": run.id, "adapter": None, "status": "succeeded",
                             "features": b.get("features"), "trainable_params": None, "total_params": None,
                             "metric": b.get("metric"), "val": (b.get("val") or {}).get(b.get("metric")),
                             "test": (b.get("test") or {}).get(b.get("metric")), "val_metrics": b.get("val", {}),
                             "test_metrics": b.get("test", {}), "train_time_s": b.get("seconds"), "peak_memory": None})
            rows.append({
                "strategy": s, "run": run.id, "adapter": getattr(out.adapter, "name", None), "status": "succeeded",
                "trainable_params": r.get("trainable_params"), "total_params": r.get("total_params"), "metric": metric,
                "val": r.get("final", {}).get(metric), "test": r.get("test", {}).get(metric),
                "val_metrics": r.get("final", {}), "test_metrics": r.get("test", {}),
                "train_time_s": r.get("duration_s"), "peak_memory": r.get("peak_memory"),
                "gain_over_baseline": r.get("gain_over_baseline"),
            })
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return rows


def save_probe(lib: Any, run_id: str, name: str | None = None, ctx: TaskContext = NULL_CONTEXT) -> Any:
    """Save a run's frozen-feature probe (fitted on the head's input features) as a ``head`` adapter."""
    from adapterstudio.ml.training.probe_export import export_probe_head

    run = runs(lib).get(run_id)
    run_dir = Path(run.run_dir)
    head = run_dir / "probe_head.safetensors"
    summary = run_dir / "baseline.json"
    if not head.is_file() or not summary.is_file():
        raise NotFound(f"Run {run.id} has no saved probe (only classification runs with a validation split fit one).")
    spec = TrainingSpec.from_yaml(run_dir / "spec.yaml")
    name = name or f"{run.name}-probe"
    if lib.catalogue.find_adapter(name) is not None:
        raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; choose another --name.")
    job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    base = lib.catalogue.get_base(spec.base)
    probe_summary = json.loads(summary.read_text(encoding="utf-8"))
    probe_spec = spec.replace(strategy="head", name=name, head_init="probe")
    out = run_dir / ".probe-adapter"
    ctx.progress(0, 2, "building the head adapter")
    export_probe_head(probe_spec, base.path, job.get("labels"), head, out)
    scores = (probe_summary.get("candidates") or {}).get("head-input") or {}
    lineage = build_lineage(run.id, probe_spec, job, {
        "metric": spec.metric, "final": {spec.metric: scores.get("val")},
        "test": {spec.metric: scores["test"]} if scores.get("test") is not None else {}})
    lineage["probe"] = probe_summary
    ctx.progress(1, 2, "importing into the catalogue")
    try:
        return lib.import_adapter(out, name, base=spec.base, source="train", run_id=run.id, lineage=lineage,
                                  tags=[f"task:{spec.task}", "strategy:probe"], ctx=ctx)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- evaluation -----------------------------------------------------------------------
def evaluate(lib: Any, name: str, data: str, ctx: TaskContext = NULL_CONTEXT, *, batch_size: int = 32,
             base: str | None = None) -> dict[str, Any]:
    """Score a catalogued adapter (or a full fine-tune base) on a labelled file, in this process."""
    from adapterstudio.ml.training.evaluate import evaluate_folder

    a = lib.catalogue.find_adapter(name)
    if a is not None:
        lineage = a.lineage or {}
        base_name = base or a.base
        if base_name is None:
            raise NotFound(f"Adapter {name!r} has no base in the catalogue; pass --base NAME.")
        if base:
            lib.require_compatible(name, base)
        base_rec = lib.catalogue.get_base(base_name)
        adapter_path: str | None = a.path
    else:
        b = lib.catalogue.find_base(name)
        if b is None:
            raise NotFound(f"No adapter or base model named {name!r} is in the catalogue.")
        lineage_file = Path(b.path or "") / "lineage.json"
        lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.is_file() else {}
        base_rec, adapter_path = b, None
    if not lineage.get("task"):
        raise InvalidInput(f"{name!r} was not trained by AdapterStudio, so its task and labels are unknown; "
                           "evaluation needs an adapter with training lineage.")
    if not base_rec.path:
        raise NotFound(f"Base model {base_rec.name!r} has no local files.")
    return evaluate_folder(base_rec.path, adapter_path, lineage, data, ctx, batch_size=batch_size)
