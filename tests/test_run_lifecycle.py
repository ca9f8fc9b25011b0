"""A training run's life survives a kill at any moment (tiny models, synthetic text: mechanics only).

Kills are real: a child process replaces ``run_folders.crash_point`` and SIGKILLs itself at the
named moment, so no cleanup handler runs. Checks that need no training run in-process; the
two that follow a run through a kill (``slow``) train a tiny model for a few steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from adapterstudio.core import jsonl
from adapterstudio.core.context import Context
from adapterstudio.core.errors import AlreadyExists, InvalidInput
from adapterstudio.core.runs import LOCK_FILE, RunLock, RunStore, lock_holder
from adapterstudio.core.training.spec import TrainingSpec
from adapterstudio.services import run_folders
from adapterstudio.services import training as T
from adapterstudio.services.launch import TrainingFailed
from adapterstudio.services.run_folders import RunBusy
from tests.training_helpers import sentiment_rows, tiny_with_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEAD_PID = 2**22 + 12345  # above the usual pid_max: no such process


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_with_tokenizer("bert", tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def tlib(lib, bert, tmp_path):
    lib.add_base(bert, name="tb")
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl.text(sentiment_rows(48)))
    lib.test_data = data  # type: ignore[attr-defined]
    return lib


def _spec(lib, **kw) -> TrainingSpec:
    base = dict(base="tb", data=str(lib.test_data), strategy="head", max_steps=3, batch_size=8, cpu=True, name="t")
    base.update(kw)
    return TrainingSpec(**base)


def _run_dirs(lib) -> list[Path]:
    return sorted(p for p in lib.catalogue.runs_dir.iterdir())


def _killed_at(point: str, action: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a training service call in a child process that SIGKILLs itself at *point*."""
    script = textwrap.dedent("""
        import json, os, signal, sys
        from adapterstudio.core.training.spec import TrainingSpec
        from adapterstudio.services import run_folders
        from adapterstudio.services import training as T
        from adapterstudio.services.library import open_library

        point, action, arg, name = sys.argv[1], sys.argv[2], sys.argv[3], (sys.argv[4:] or [None])[0]

        def crash(p):
            if p == point:
                print("killing at", p, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        run_folders.crash_point = crash
        lib = open_library()
        if action == "enqueue":
            T.enqueue(lib, TrainingSpec.from_dict(json.loads(arg)))
        elif action == "train":
            T.train(lib, TrainingSpec.from_dict(json.loads(arg)))
        else:
            T.resume(lib, arg, name=name)
        print("not killed", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", script, point, action, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stdout, res.stderr[-3000:])
    return res


def _launches(run_dir: Path) -> int:
    log = run_dir / "worker.log"
    return log.read_text(errors="replace").count("==== launch") if log.exists() else 0


# -- 1. everything is checked before any work -----------------------------------------
def test_invalid_or_taken_output_names_are_refused_before_anything_is_written(tlib):
    store = RunStore(tlib.catalogue)
    for bad in ("a:b", "back\\slash", "tab\there", ".."):
        with pytest.raises(InvalidInput, match="is not a valid adapter name"):
            T.prepare_run(tlib, _spec(tlib, name=bad))
    with pytest.raises(InvalidInput, match="is not a valid base model name"):
        T.enqueue(tlib, _spec(tlib, strategy="full", name="x:y"))
    assert store.list() == [] and _run_dirs(tlib) == []
    # a name another queued run will produce is taken too (it used to fail only when the second run finished)
    first = T.enqueue(tlib, _spec(tlib, name="same"))
    with pytest.raises(AlreadyExists, match=f"Run {first.id} \\(queued\\) will produce an adapter named 'Same'"):
        T.enqueue(tlib, _spec(tlib, name="Same"))
    # a full fine-tune's folder in the way
    (tlib.root / "models" / "fft").mkdir(parents=True)
    with pytest.raises(AlreadyExists, match="models/fft already exists"):
        T.enqueue(tlib, _spec(tlib, strategy="full", name="fft"))
    assert [r.id for r in store.list()] == [first.id]
    assert [p.name for p in _run_dirs(tlib)] == [first.id]


def test_compare_checks_every_output_name_before_the_first_strategy_trains(tlib):
    T.enqueue(tlib, _spec(tlib, name="cmp-lora"))  # will produce what compare's second strategy would
    with pytest.raises(AlreadyExists, match="will produce an adapter named 'cmp-lora'"):
        T.compare(tlib, _spec(tlib, name="cmp"), ["head", "lora"])
    assert [r.name for r in RunStore(tlib.catalogue).list()] == ["cmp-lora"]


def _plain_peft_lora(base_path: str, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    get_peft_model(m, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])).save_pretrained(str(out))
    return out


def test_queued_run_whose_name_was_taken_meanwhile_fails_without_launching(tlib, tmp_path):
    run = T.enqueue(tlib, _spec(tlib, name="later-taken"))
    # the name is taken after queueing (an import)
    tlib.import_adapter(_plain_peft_lora(tlib.catalogue.get_base("tb").path, tmp_path / "lora"), "later-taken", base="tb")
    done = T.run_queue(tlib, Context())
    assert done[0]["status"] == "failed" and "'later-taken' is already in the catalogue" in done[0]["error"]
    assert "--resume" in done[0]["error"] and "--name NEW" in done[0]["error"]
    assert _launches(Path(run.run_dir)) == 0 and RunStore(tlib.catalogue).queue() == []


# -- 2. a run folder is complete or not a run -----------------------------------------------
@pytest.mark.parametrize("point", ["run_data_written", "run_folder_placed"])
def test_kill_while_preparing_leaves_no_runnable_run(tlib, point):
    _killed_at(point, "enqueue", json.dumps(_spec(tlib, name="k").to_dict()))
    store = RunStore(tlib.catalogue)
    assert store.list() == [] and store.queue() == []
    assert T.run_queue(tlib, Context()) == []
    left = _run_dirs(tlib)
    assert len(left) == 1
    if point == "run_data_written":
        assert left[0].name.startswith(run_folders.TMP_PREFIX) and not (left[0] / "spec.yaml").exists()
    else:
        assert not left[0].name.startswith(".") and (left[0] / "spec.yaml").is_file() and (left[0] / "job.json").is_file()
    # young leftovers stay (a live process may own them); old ones are swept
    assert run_folders.sweep_leftovers(tlib) == [] and left[0].exists()
    assert run_folders.sweep_leftovers(tlib, grace_s=0) == left and not left[0].exists()
    # and the name is free again
    assert T.enqueue(tlib, _spec(tlib, name="k")).name == "k"


def test_phantom_queued_run_is_refused_not_launched_and_remove_deletes_its_folder(tlib):
    # what the old preparation left when killed while writing the split: a queued row, no spec.yaml
    store = RunStore(tlib.catalogue)
    base = tlib.catalogue.get_base("tb")
    ph = store.create(name="ph", spec=_spec(tlib, name="ph").to_dict(), base_id=base.id)
    (Path(ph.run_dir) / "data").mkdir(parents=True)
    (Path(ph.run_dir) / "data" / "train.jsonl").write_text('{"text": "half", "label": "pos"}\n')
    done = T.run_queue(tlib, Context())
    assert [d["status"] for d in done] == ["failed"]
    assert "is incomplete (no spec.yaml)" in done[0]["error"] and f"queue remove {ph.id}" in done[0]["error"]
    run = store.get(ph.id)
    assert run.status == "failed" and run.queue_position is None and store.queue() == []
    assert _launches(Path(ph.run_dir)) == 0 and not (Path(ph.run_dir) / "events.jsonl").exists()
    store.remove(ph.id)
    assert not Path(ph.run_dir).exists() and store.list() == []


def test_queue_remove_deletes_the_folder_unless_someone_holds_the_run(tlib, capsys):
    from adapterstudio.cli import main

    run = T.enqueue(tlib, _spec(tlib, name="rm"))
    run_dir = Path(run.run_dir)
    assert (run_dir / "data" / "train.jsonl").is_file()
    lock = RunLock.acquire(run_dir)
    assert lock is not None
    assert main(["queue", "remove", run.id]) == 1
    assert "held by process" in capsys.readouterr().err and run_dir.is_dir()
    lock.release()
    assert main(["queue", "remove", run.id]) == 0
    assert "and its folder" in capsys.readouterr().out
    assert not run_dir.exists() and RunStore(tlib.catalogue).list() == []


# -- 4. one supervisor per run ------------------------------------------------------------
def _fake_launcher(run_dir: Path, launch: str) -> subprocess.Popen:
    """What a supervisor killed right after launching leaves: a launcher holding the run's lock."""
    lock = RunLock.acquire(run_dir)
    assert lock is not None
    lock.note(supervisor_pid=DEAD_PID, launch=launch)
    launcher = subprocess.Popen(["sleep", "120"], pass_fds=(lock.fd,))
    lock.note(launcher_pid=launcher.pid)
    lock.release()  # the supervisor is gone
    return launcher


def _fake_worker(run_dir: Path, launch: str) -> subprocess.Popen:
    """A worker process of *launch*: it holds worker.lock as the real worker does, then waits."""
    code = ("import sys, time; from adapterstudio.core.runs import hold_worker_lock; h = hold_worker_lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(120)")
    w = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "ADAPTERSTUDIO_LAUNCH": launch,
                              "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert w.stdout.readline().strip() == "held"
    return w


def test_a_run_whose_supervisor_died_is_running_while_its_worker_runs_or_starts(tlib, capsys):
    from adapterstudio.cli import main

    store = RunStore(tlib.catalogue)
    run = T.enqueue(tlib, _spec(tlib, name="orphan"))
    run_dir = Path(run.run_dir)
    procs = []
    try:
        # the launcher is still starting the worker (this launch's worker has not stamped worker.lock)
        launcher = _fake_launcher(run_dir, "L1")
        procs.append(launcher)
        store.update(run.id, status="running", pid=DEAD_PID, queue_position=None)
        r = store.get(run.id)
        assert r.status == "running" and r.supervisor_gone and r.to_json()["supervisor_gone"] is True
        assert lock_holder(run_dir)["launcher_pid"] == launcher.pid
        assert main(["runs", "list"]) == 0
        assert "running (supervisor gone)" in capsys.readouterr().out
        with pytest.raises(RunBusy):  # no second supervisor, so no second worker
            T.run_job(tlib, run.id, Context())
        # the worker runs; even with its launcher gone it holds the run
        worker = _fake_worker(run_dir, "L1")
        procs.append(worker)
        launcher.kill()
        launcher.wait()
        assert lock_holder(run_dir) is None and store.get(run.id).supervisor_gone
        with pytest.raises(RunBusy, match=f"worker \\(pid {worker.pid}\\) is still running"):
            T.run_job(tlib, run.id, Context())
        with pytest.raises(InvalidInput, match="cancel it first"):
            store.remove(run.id)
        worker.kill()
        worker.wait()
        assert store.get(run.id).status == "interrupted"
        # a launcher still exiting after its worker ended (the worker stamped this launch) holds nothing alive
        procs.append(_fake_launcher(run_dir, "L1"))
        assert lock_holder(run_dir) is not None
        r = store.update(run.id, status="running", pid=DEAD_PID)
        assert r.status == "interrupted" and not r.supervisor_gone
        assert _launches(run_dir) == 0
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()


def test_attach_follows_a_live_supervisor_and_reports_what_it_records(tlib):
    store = RunStore(tlib.catalogue)
    run = T.enqueue(tlib, _spec(tlib, name="followed"))
    # another process supervises the run: it holds the lock, its worker logs steps, then the run fails
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from adapterstudio.core import jsonl
        from adapterstudio.core.runs import RunLock, RunStore
        from adapterstudio.services.library import open_library

        run_id, run_dir = sys.argv[1], Path(sys.argv[2])
        store = RunStore(open_library().catalogue)
        lock = RunLock.acquire(run_dir)
        store.claim(run_id, __import__("os").getpid())
        print("supervising", flush=True)
        sys.stdin.readline()
        for step in (1, 2):
            jsonl.append(run_dir / "events.jsonl", {"event": "step", "step": step, "total_steps": 3, "loss": 0.5,
                                                    "samples_per_s": 1.0, "eta_s": 1.0})
            time.sleep(0.5)
        store.update(run_id, status="failed", error="failed: boom", pid=None)
    """)
    sup = subprocess.Popen([sys.executable, "-c", code, run.id, run.run_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    try:
        assert sup.stdout.readline().strip() == "supervising"
        assert store.get(run.id).status == "running" and not store.get(run.id).supervisor_gone
        logs: list[str] = []
        steps: list[float] = []
        def go():
            sup.stdin.write("go\n")
            sup.stdin.flush()

        threading.Timer(0.3, go).start()  # the steps come while attach follows
        with pytest.raises(TrainingFailed, match=f"Training run {run.id} is failed: failed: boom"):
            T.attach(tlib, run.id, Context(on_log=logs.append, on_progress=lambda d, t, m: steps.append(d)))
        assert steps and set(steps) <= {1, 2} and steps[-1] == 2 and any(f"supervised by process {sup.pid}" in m for m in logs)
    finally:
        sup.kill()
        sup.wait()
    assert store.get(run.id).status == "failed" and _launches(Path(run.run_dir)) == 0


def test_a_free_lock_means_interrupted_even_if_the_pid_now_belongs_to_someone_else(tlib):
    store = RunStore(tlib.catalogue)
    run = T.enqueue(tlib, _spec(tlib, name="reused"))
    assert (Path(run.run_dir) / LOCK_FILE).exists() and lock_holder(Path(run.run_dir)) is None
    # the supervisor died; its pid was reused (here: this very process)
    store.update(run.id, status="running", pid=os.getpid(), queue_position=None)
    assert store.get(run.id).status == "interrupted"


def test_train_holds_its_run_from_birth_so_no_one_else_can_run_it(tlib, monkeypatch):
    real_run_job = T.run_job
    seen = {}

    def run_job_of_train(lib, run_id, ctx, **kw):
        # while 'train' goes from preparing to supervising, another supervisor (a queue runner) is refused
        run = RunStore(lib.catalogue).get(run_id)
        seen["holder"] = lock_holder(Path(run.run_dir))
        with pytest.raises(RunBusy):
            real_run_job(lib, run_id, Context())
        kw["_lock"].release()
        return "stopped here"

    monkeypatch.setattr(T, "run_job", run_job_of_train)
    assert T.train(tlib, _spec(tlib, name="born")) == "stopped here"
    assert seen["holder"]["supervisor_pid"] == os.getpid()
    assert _launches(Path(RunStore(tlib.catalogue).list()[0].run_dir)) == 0


def test_resume_refuses_spec_flags_but_takes_a_name(tlib, capsys):
    from adapterstudio.cli import main

    assert main(["train", "--resume", "nope", "--lr", "0.1"]) == 1
    assert "only --name may go with it, not --lr" in capsys.readouterr().err
    assert main(["train", "--resume", "nope", "--name", "x"]) == 1
    assert "No training run 'nope'" in capsys.readouterr().err


# -- real runs through a kill ----------------------------------------------------------------------
@pytest.mark.slow
def test_name_taken_during_training_then_kill_after_import_resume_never_retrains(tlib):
    store = RunStore(tlib.catalogue)
    # the worker finished; the supervisor is killed before importing anything
    _killed_at("before_import", "train", json.dumps(_spec(tlib, name="r").to_dict()))
    run = store.list()[0]
    run_dir = Path(run.run_dir)
    assert run.status == "interrupted" and (run_dir / "result.json").is_file() and _launches(run_dir) == 1
    # meanwhile the name was taken (an import of the same name)
    tlib.import_adapter(run_dir / "adapter", "r", base="tb")
    with pytest.raises(AlreadyExists, match=f"'r' is already in the catalogue; resume it under another name with "
                                            f"'adapterstudio train --resume {run.id} --name NEW'"):
        T.resume(tlib, run.id, Context())
    with pytest.raises(InvalidInput, match="'r:2' is not a valid adapter name"):
        T.resume(tlib, run.id, Context(), name="r:2")
    assert store.get(run.id).status == "interrupted" and _launches(run_dir) == 1
    # resume under a new name; killed right after the adapter went into the catalogue
    _killed_at("adapter_imported", "resume", run.id, "r2")
    a = tlib.catalogue.get_adapter("r2")
    assert a.run_id == run.id and a.lineage["spec"]["name"] == "r2"
    r = store.get(run.id)
    assert r.status == "interrupted" and r.adapter is None and r.name == "r2"
    # resume notices its adapter is in the catalogue: it links it, trains nothing, imports nothing
    logs: list[str] = []
    out = T.resume(tlib, run.id, Context(on_log=logs.append))
    assert out.run.status == "succeeded" and out.run.adapter == "r2" and out.adapter.name == "r2"
    assert out.result["steps"] == 3 and any("already in the catalogue" in m for m in logs)
    assert _launches(run_dir) == 1 and [a.name for a in tlib.list_adapters()] == ["r", "r2"]
    assert TrainingSpec.from_yaml(Path(a.path) / "training_spec.yaml").name == "r2"


@pytest.mark.slow
def test_sigkill_during_worker_startup_resume_follows_the_orphan_instead_of_a_second_worker(tlib):
    store = RunStore(tlib.catalogue)
    _killed_at("worker_launched", "train", json.dumps(_spec(tlib, name="o", strategy="lora", max_steps=3).to_dict()))
    run = store.list()[0]
    run_dir = Path(run.run_dir)
    shown = store.get(run.id)
    # the orphaned worker is starting up: it holds the run, it is not interrupted
    assert shown.status == "running" and shown.supervisor_gone, shown
    logs: list[str] = []
    out = T.resume(tlib, run.id, Context(on_log=logs.append))
    assert out.run.status == "succeeded" and tlib.catalogue.get_adapter("o").run_id == run.id
    assert any("running without its supervisor" in m for m in logs)
    evs = jsonl.read(run_dir / "events.jsonl")
    kinds = [e["event"] for e in evs]
    # the orphan stopped by itself after its first step (its supervisor was gone), keeping a checkpoint;
    # only then did the resumed supervisor launch a worker, which went on from that checkpoint
    assert kinds.count("launch") == 2 and kinds.count("start") == 2, kinds
    second_launch = [i for i, k in enumerate(kinds) if k == "launch"][1]
    assert kinds.index("cancelled") < second_launch
    first_end = max(e["time"] for e in evs[:second_launch])
    assert evs[second_launch]["time"] >= first_end
    starts = [e for e in evs if e["event"] == "start"]
    assert starts[0]["resumed_from"] is None and starts[1]["resumed_from"] == "step-1"
    assert evs[-1]["event"] == "done" and evs[-1]["steps"] == 3
    assert starts[0]["pid"] != starts[1]["pid"]
    assert lock_holder(run_dir) is None  # no worker left behind
