"""Training use cases: prepare a run, see it through, queue, compare, save a probe, evaluate.

The functions here are plain functions taking a :class:`TaskContext`; callers (CLI, GUI)
run them in a worker thread. A run lives in a folder under ``<library>/runs`` and a row of
the catalogue's ``runs`` table; the work is split by concern:

- :mod:`~adapterstudio.services.run_folders`: writing a run's folder whole before its row
  is inserted, sweeping what crashes left, and the crash points tests kill the process at;
- :mod:`~adapterstudio.services.launch`: the ``accelerate launch`` child, its events, the
  out-of-memory retry, following a worker another process launched;
- :mod:`~adapterstudio.services.results`: the output's name and place, its lineage, its
  import into the catalogue (a ``full`` fine-tune becomes a new base model).

A run's life survives a kill at any point: everything it needs is checked before any work;
one process supervises it at a time (:class:`~adapterstudio.core.runs.RunLock`, held by the
worker too), and :func:`resume` follows a worker that outlived its supervisor instead of
starting a second one; an adapter imported just before a kill is found again (by its run
id) and linked instead of retraining.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import AlreadyExists, Cancelled, InvalidInput, NotFound, UserError
from adapterstudio.core.runs import (
    JOB_FILE,
    RESULT_FILE,
    STOP_FILE,
    WORKER_LOG,
    RunLock,
    RunRecord,
    RunStore,
    lock_holder,
    run_liveness,
    worker_holder,
)
from adapterstudio.core.training.spec import TrainingSpec, estimate_memory
from adapterstudio.services import run_folders
from adapterstudio.services.launch import CANCELLED_ERROR, TrainingFailed, cancelled, follow, resume_hint, supervise
from adapterstudio.services.results import (
    LINEAGE_FILE,
    TrainOutcome,
    build_lineage,
    check_output_name,
    import_result,
    link_imported,
    outcome,
    read_result,
)
from adapterstudio.services.run_folders import RunBusy, last_checkpoint

log = logging.getLogger(__name__)


def runs(lib: Any) -> RunStore:
    """The library's training runs and queue."""
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


def memory_estimate(lib: Any, spec: TrainingSpec) -> dict[str, Any]:
    """The "will it fit" estimate for *spec* on this machine (no torch import on CPU-only paths)."""
    base = lib.catalogue.get_base(spec.base)
    _, config = lib.catalogue.base_details(base.name)
    device, available = _device_memory(spec)
    return estimate_memory(spec, config, base.num_parameters, device, available).to_json()


def estimate(lib: Any, spec: TrainingSpec) -> dict[str, Any]:
    """The "will it fit" estimate for a spec as the user wrote it: settings left open are first decided the way a
    run decides them (the auto recipe without the data), so the CLI's --estimate and the Train page agree."""
    resolved, _ = resolve_spec(lib, spec)
    return memory_estimate(lib, resolved)


def _device_memory(spec: TrainingSpec) -> tuple[str, int | None]:
    """The device a run of *spec* trains on and its free memory (None: unknown, so the estimate says "unknown")."""
    if not spec.cpu:
        gpu = _cuda_memory()
        if gpu is not None:
            return gpu
    try:
        import psutil

        return "cpu", int(psutil.virtual_memory().available)
    except ImportError:
        return "cpu", None


def _cuda_memory() -> tuple[str, int | None] | None:
    """The first CUDA device and its free memory; None when there is no CUDA device to train on here.

    When the probe itself fails the free memory is None ("unknown"), not host RAM: the run
    would still go to the GPU, so an estimate against host RAM would answer "fits" wrongly."""
    try:
        import torch
    except ImportError:  # no torch here, so no CUDA device: the estimate is against host RAM, as on a CPU-only machine
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(0), int(free)
    except Exception as exc:  # noqa: BLE001  (a broken CUDA driver or runtime raises what it likes: logged, answer "unknown")
        log.warning("the CUDA memory probe failed (%s: %s); the GPU's free memory is unknown, so the memory estimate "
                    "cannot say whether the run fits", type(exc).__name__, exc)
        return "cuda", None


def prepare_run(lib: Any, spec: TrainingSpec, ctx: TaskContext = NULL_CONTEXT, *, status: str = "queued",
                prepared_from: Path | None = None) -> RunRecord:
    """Check everything, split the data into the run folder, and record the run."""
    run, lock = _prepare(lib, spec, ctx, status=status, prepared_from=prepared_from)
    lock.release()
    return run


def _prepare(lib: Any, spec: TrainingSpec, ctx: TaskContext, *, status: str,
             prepared_from: Path | None) -> tuple[RunRecord, RunLock]:
    """Prepare a run and return it with its lock held (so no queue runner takes it first).

    Everything is checked, and the data split, before its folder is written
    (:func:`~adapterstudio.services.run_folders.create_run`)."""
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
    run, lock = run_folders.create_run(lib, spec, base, prepared, est, status=status)
    avail = f" of {est['available'] / 2**30:.1f} GiB free on {est['device']}" if est.get("available") else ""
    ctx.log(f"memory estimate: about {est['total'] / 2**30:.2f} GiB{avail}")
    if est.get("fits") is False:
        ctx.log("warning: " + "; ".join(est["notes"]))
    return run, lock


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
        raise InvalidInput(f"Run {run.id} is {run.status}, not running; {resume_hint(run.id)}.")
    state, holder = run_liveness(run_dir)
    adopt = state != "supervised"
    ctx.log(f"run {run.id} is " + ("running without its supervisor (it was killed); following its worker until it "
                                   "stops, then taking over" if adopt else
                                   f"supervised by process {holder.get('supervisor_pid')}; following it"))
    info, lock = follow(run, run_dir, store, ctx)
    handed_over = False
    try:
        run = store.get(run.id)
        if run.status == "succeeded":
            return outcome(lib, run)
        if run.status == "running" or (adopt and run.status == "interrupted"):
            # nobody finished it: this process does
            if (run_dir / STOP_FILE).exists():
                store.update(run.id, status="cancelled", error=CANCELLED_ERROR, pid=None,
                             last_checkpoint=last_checkpoint(run_dir), finished_at=time.time())
                raise cancelled(run.id)
            if info.get("error") and not (run_dir / RESULT_FILE).exists():
                err = f"failed: {info['error']}"
                store.update(run.id, status="failed", error=err, pid=None, last_checkpoint=last_checkpoint(run_dir),
                             finished_at=time.time())
                raise TrainingFailed(f"Training run {run.id} {err}", hint=f"the worker log is {run_dir / WORKER_LOG}")
            handed_over = True
            return run_job(lib, run.id, ctx, _lock=lock)
        raise _ended(run)
    finally:
        if not handed_over:
            lock.release()


def _ended(run: RunRecord) -> UserError | Cancelled:
    """The error that reports a run another process ended without success."""
    if run.status == "cancelled":
        return cancelled(run.id)
    return TrainingFailed(f"Training run {run.id} is {run.status}: {run.error}", hint=resume_hint(run.id))


def cancel(lib: Any, run_id: str) -> RunRecord:
    """Ask a run to stop at its next step (it checkpoints first). Works from any process."""
    store = runs(lib)
    run = store.get(run_id)
    if run.status == "queued":
        return store.update(run.id, status="cancelled", queue_position=None, finished_at=time.time())
    if run.status != "running":
        raise InvalidInput(f"Run {run.id} is {run.status}, not running.")
    (Path(run.run_dir) / STOP_FILE).touch()
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
        linked = link_imported(lib, run, ctx)
        if linked is not None:
            return linked
        try:
            spec = _preflight(lib, run, run_dir, name)
        except UserError as exc:
            _refuse(store, run, exc)
        if not store.claim(run.id, os.getpid()):
            raise RunBusy(f"Run {run.id} is already running in another process.")
        lock.note(run_id=run.id)
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        result = read_result(run_dir) if (run_dir / "adapter").is_dir() else None
        if result is not None:
            ctx.log(f"run {run.id} had finished training; importing its result")
        else:
            try:
                spec, result = supervise(store, run, run_dir, spec, ctx, lock)
            except BaseException as exc:
                # whatever stopped the supervisor (Ctrl-C, a crash in the app): the run must not stay 'running'
                if store.get(run.id).status == "running":
                    store.update(run.id, status="interrupted", error=f"supervision stopped ({type(exc).__name__}); resume it",
                                 pid=None, last_checkpoint=last_checkpoint(run_dir), finished_at=time.time())
                raise
        run_folders.crash_point("before_import")
        ctx.progress(1, 1, "importing into the catalogue")
        try:
            rec = import_result(lib, run.id, spec, run_dir, result, ctx)
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
    missing = [f for f in ("spec.yaml", JOB_FILE, "data/meta.json", "data/train.jsonl") if not (run_dir / f).is_file()]
    if missing:
        raise InvalidInput(f"Run {run.id}'s folder {run_dir} is incomplete (no {missing[0]}): it was cut short while "
                           f"being prepared; remove it with 'adapterstudio queue remove {run.id}'.")
    spec = TrainingSpec.from_yaml(run_dir / "spec.yaml")
    try:
        job = run_folders.read_job(run_dir)
    except ValueError as exc:
        raise InvalidInput(f"{run_dir / JOB_FILE} is not valid JSON ({exc}); remove the run.") from None
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


# -- the queue ---------------------------------------------------------------------
def enqueue(lib: Any, spec: TrainingSpec, ctx: TaskContext = NULL_CONTEXT) -> RunRecord:
    """Check and prepare a run, and put it at the end of the queue."""
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
    shared = run_folders.compare_folder(lib, prefix)
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
    job = run_folders.read_job(run_dir)
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
        lineage_file = Path(b.path or "") / LINEAGE_FILE
        lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.is_file() else {}
        base_rec, adapter_path = b, None
    if not lineage.get("task"):
        raise InvalidInput(f"{name!r} was not trained by AdapterStudio, so its task and labels are unknown; "
                           "evaluation needs an adapter with training lineage.")
    if not base_rec.path:
        raise NotFound(f"Base model {base_rec.name!r} has no local files.")
    return evaluate_folder(base_rec.path, adapter_path, lineage, data, ctx, batch_size=batch_size)
