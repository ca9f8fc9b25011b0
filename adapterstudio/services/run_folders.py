"""A training run's folder under ``<library>/runs``: written whole, then recorded; what crashes leave, swept.

:func:`create_run` writes the folder as ``runs/.tmp-<id>`` and renames it whole to
``runs/<id>`` before the run's row is inserted, so a kill on the way leaves a temporary
folder or a folder without a row (both removed later by :func:`sweep_leftovers`), never a
queued run with a half-written folder.

:func:`crash_point` marks the moments of a run's whole life (here, in
:mod:`~adapterstudio.services.launch`, :mod:`~adapterstudio.services.results` and
:mod:`~adapterstudio.services.training`) where tests kill the process; every caller looks it
up on this module, so replacing ``run_folders.crash_point`` reaches all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from adapterstudio.core import events as run_events
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.fsutil import atomic_write_text, fsync_dir
from adapterstudio.core.runs import (
    JOB_FILE,
    RUN_ID_RE,
    RunLock,
    RunRecord,
    RunStore,
    latest_checkpoint,
    lock_holder,
    new_run_id,
)
from adapterstudio.core.training.spec import TrainingSpec

TMP_PREFIX = ".tmp-"  # a run folder being written; renamed to runs/<id> once complete
COMPARE_PREFIX = ".compare-"  # the split that all strategies of a comparison share
LEFTOVER_GRACE_S = 3600.0  # a temp folder this old belongs to no live process


class RunBusy(InvalidInput):
    """Another process supervises this run (it holds the run's lock)."""


def crash_point(point: str) -> None:
    """A moment in a run's life where a crash must leave the library consistent. Does nothing.

    Tests replace it (``monkeypatch.setattr(run_folders, "crash_point", ...)``, or in a child
    process) to kill the process exactly there. The points: ``run_data_written`` (the split
    is in the temporary run folder, spec.yaml not yet), ``run_folder_placed`` (the run
    folder is complete under its final name, its row not inserted), ``worker_launched`` (the
    worker's launcher has just started), ``before_import`` (the worker finished, nothing
    imported), ``adapter_imported`` (the adapter is in the catalogue, the run not yet marked
    succeeded).
    """


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint in *run_dir*, as the runs table records it."""
    newest = latest_checkpoint(run_dir)
    return str(newest) if newest else None


def read_job(run_dir: Path) -> dict[str, Any]:
    """The run's job file (written by :func:`create_run`)."""
    job: dict[str, Any] = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    return job


def compare_folder(lib: Any, prefix: str) -> Path:
    """Where a comparison named *prefix* keeps the split its strategies share (swept if left behind)."""
    return Path(lib.catalogue.runs_dir) / f"{COMPARE_PREFIX}{prefix}"


def create_run(lib: Any, spec: TrainingSpec, base: Any, prepared: Any, estimate: dict[str, Any], *,
               status: str) -> tuple[RunRecord, RunLock]:
    """Write the folder of a checked run (its split *prepared*, spec and job) and record the run.

    Returns the run with its lock held (so no queue runner takes it first)."""
    sweep_leftovers(lib)
    store = RunStore(lib.catalogue)
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
        atomic_write_text(tmp / JOB_FILE, json.dumps(job, indent=2))
        fsync_dir(tmp)
        os.replace(tmp, final)
        placed = True
        fsync_dir(runs_dir)
        lock.path = final / lock.path.name
        crash_point("run_folder_placed")
        run = store.create(name=spec.name, spec=spec.to_dict(), base_id=base.id, status=status, run_id=rid,
                           metrics={"estimate": estimate, "sizes": {"train": len(prepared.train),
                                    "validation": len(prepared.validation), "test": len(prepared.test)}})
    except BaseException:
        if lock is not None:
            lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if placed and lib.catalogue.conn.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone() is None:
            shutil.rmtree(final, ignore_errors=True)
        raise
    return run, lock


def _unused_run_id(runs_dir: Path) -> str:
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
        if p.name.startswith((TMP_PREFIX, COMPARE_PREFIX)):
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
