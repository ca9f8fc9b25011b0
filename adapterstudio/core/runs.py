"""Training runs and the persistent job queue, kept in the catalogue's ``runs`` table.

A run moves through ``queued -> running -> succeeded | failed | cancelled``. A run whose
process died with the app (its pid is gone while it says ``running``) is shown as
``interrupted`` and can be resumed from its last checkpoint. The queue is the runs in
state ``queued``, ordered by ``queue_position``: it survives restarts because it is
just rows in the catalogue.

One process supervises a run at a time: it holds an exclusive ``flock`` on
``RUN_DIR/supervisor.lock`` (:class:`RunLock`) and hands the open lock to the launcher of
the worker, so the lock stays held from the launch on, even if the supervisor is killed;
the worker itself holds ``RUN_DIR/worker.lock`` (shared, one per process) stamped with
its launch. :func:`run_liveness` reads both: a run that says ``running`` is
*interrupted* when nothing of it runs, and *running with its supervisor gone* while its
worker runs or is being started.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapterstudio.core.catalogue import Catalogue
from adapterstudio.core.errors import InvalidInput, NotFound

try:
    import fcntl
except ImportError:  # Windows: no flock; runs fall back to the supervisor's pid alone
    fcntl = None  # type: ignore[assignment]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
FINISHED = ("succeeded", *RESUMABLE)  # nothing runs it any more
# The training worker's exit codes besides 0 (done) and 1 (an error event says why):
EXIT_CANCELLED = 3  # stopped on request after checkpointing
EXIT_OOM = 75  # out of memory: the supervisor halves the micro-batch and resumes
LOCK_FILE = "supervisor.lock"
WORKER_LOCK = "worker.lock"
# the files of a run folder that its supervisor and its worker both know
JOB_FILE = "job.json"  # what the worker needs beyond spec.yaml: the base's path and identity, labels, columns, dataset
RESULT_FILE = "result.json"  # written by the worker once training finished
STOP_FILE = "stop"  # its presence asks the worker to stop at its next step (after a checkpoint)
WORKER_LOG = "worker.log"  # the launcher's and worker's output
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


@dataclass
class RunRecord:
    id: str
    name: str
    status: str
    spec: dict[str, Any]
    base: str | None
    adapter: str | None
    run_dir: str
    metrics: dict[str, Any]
    world_size: int | None
    last_checkpoint: str | None
    error: str
    pid: int | None
    queue_position: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    extra: dict[str, Any] = field(default_factory=dict)
    # 'running' whose supervising process is gone while its worker still runs (it holds the run's lock)
    supervisor_gone: bool = False

    @property
    def status_text(self) -> str:
        """The status as the runs tables show it (CLI and GUI): a run whose supervisor is gone says so."""
        return "running (supervisor gone)" if self.supervisor_gone else self.status

    @property
    def duration_s(self) -> float | None:
        d = self.metrics.get("duration_s") if isinstance(self.metrics, dict) else None
        if d is not None:
            return float(d)
        if self.started_at:
            return (self.finished_at or time.time()) - self.started_at
        return None

    @property
    def resumable(self) -> bool:
        """Stopped, or running without its supervisor (resuming follows its worker, then takes the run over)."""
        return self.status in RESUMABLE or self.supervisor_gone

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra", None)
        d["duration_s"] = self.duration_s
        return d


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    # a zombie (exited, not yet reaped) counts as dead
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunStore:
    """Rows of the ``runs`` table as :class:`RunRecord`; all writes in transactions."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.cat = catalogue

    _SELECT = ("SELECT r.*, b.name AS base_name, a.name AS adapter_name FROM runs r "
               "LEFT JOIN bases b ON b.id = r.base_id LEFT JOIN adapters a ON a.id = r.adapter_id")

    def _row(self, r: Any) -> RunRecord:
        return RunRecord(
            id=r["id"], name=r["name"], status=r["status"], spec=json.loads(r["spec"]), base=r["base_name"],
            adapter=r["adapter_name"], run_dir=r["run_dir"], metrics=json.loads(r["metrics"]), world_size=r["world_size"],
            last_checkpoint=r["last_checkpoint"], error=r["error"], pid=r["pid"], queue_position=r["queue_position"],
            created_at=r["created_at"], started_at=r["started_at"], finished_at=r["finished_at"], updated_at=r["updated_at"],
        )

    def create(self, *, name: str, spec: dict[str, Any], base_id: int | None, status: str = "queued",
               run_id: str | None = None, metrics: dict[str, Any] | None = None) -> RunRecord:
        rid = run_id or new_run_id()
        run_dir = self.cat.runs_dir / rid
        now = time.time()
        with self.cat.transaction() as c:
            pos = None
            if status == "queued":
                pos = (c.execute("SELECT MAX(queue_position) FROM runs").fetchone()[0] or 0) + 1
            c.execute(
                "INSERT INTO runs (id, name, status, spec, base_id, run_dir, metrics, queue_position, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (rid, name, status, json.dumps(spec), base_id, str(run_dir), json.dumps(metrics or {}, default=str),
                 pos, now, now),
            )
        return self.get(rid)

    def get(self, run_id: str) -> RunRecord:
        r = self.cat.conn.execute(self._SELECT + " WHERE r.id = ?", (run_id,)).fetchone()
        if r is None:
            # allow a unique prefix or the run's name
            rows = self.cat.conn.execute(self._SELECT + " WHERE r.id LIKE ? OR r.name = ? ORDER BY r.created_at DESC",
                                         (run_id.replace("%", "") + "%", run_id)).fetchall()
            if len(rows) == 1 or (rows and rows[0]["name"] == run_id):
                return self._mark_dead(self._row(rows[0]))
            raise NotFound(f"No training run {run_id!r} (see 'adapterstudio runs list').")
        return self._mark_dead(self._row(r))

    def list(self, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        sql = self._SELECT
        args: list[Any] = []
        if status:
            sql += " WHERE r.status = ?"
            args.append(status)
        sql += " ORDER BY r.created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._mark_dead(self._row(r)) for r in self.cat.conn.execute(sql, args)]

    def queue(self) -> builtins.list[RunRecord]:  # builtins: the method list() shadows it here
        return [self._row(r) for r in self.cat.conn.execute(
            self._SELECT + " WHERE r.status = 'queued' ORDER BY r.queue_position, r.created_at")]

    def update(self, run_id: str, **fields: Any) -> RunRecord:
        allowed = {"status", "spec", "metrics", "world_size", "last_checkpoint", "error", "pid", "queue_position",
                   "started_at", "finished_at", "adapter_id", "base_id", "name"}
        sets, args = [], []
        for k, v in fields.items():
            if k not in allowed:
                raise ValueError(k)
            if k == "status" and v not in STATUSES:
                raise ValueError(v)
            if k in ("spec", "metrics"):
                v = json.dumps(v, default=str)
            sets.append(f"{k} = ?")
            args.append(v)
        sets.append("updated_at = ?")
        args.append(time.time())
        with self.cat.transaction() as c:
            c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", args + [run_id])
        return self.get(run_id)

    def claim(self, run_id: str, pid: int) -> bool:
        """Atomically move a queued/resumable run to running (False if another worker got it)."""
        now = time.time()
        with self.cat.transaction() as c:
            r = c.execute("SELECT status, pid FROM runs WHERE id = ?", (run_id,)).fetchone()
            if r is None:
                raise NotFound(f"No training run {run_id!r}.")
            if r["status"] == "running" and pid_alive(r["pid"]) and r["pid"] != pid:
                return False
            c.execute("UPDATE runs SET status = 'running', pid = ?, queue_position = NULL, error = '',"
                      " started_at = COALESCE(started_at, ?), finished_at = NULL, updated_at = ? WHERE id = ?",
                      (pid, now, now, run_id))
        return True

    def remove(self, run_id: str) -> RunRecord:
        """Forget a run that is not running, and delete its folder (checkpoints, prepared data, logs)."""
        run = self.get(run_id)
        if run.status == "running":
            raise InvalidInput(f"Run {run.id} is running; cancel it first.")
        run_dir = Path(run.run_dir)
        holder = lock_holder(run_dir) or worker_holder(run_dir)
        if holder is not None:
            raise InvalidInput(f"Run {run.id} is held by process {holder.get('supervisor_pid') or holder.get('pid', '?')}, "
                               "which runs it or is about to; cancel it first.")
        with self.cat.transaction() as c:
            c.execute("DELETE FROM runs WHERE id = ?", (run.id,))
        # only a folder of ours: runs/<id> (a killed removal leaves a folder without a row, swept later)
        if run_dir.name == run.id and run_dir.parent.resolve() == self.cat.runs_dir.resolve():
            shutil.rmtree(run_dir, ignore_errors=True)
        return run

    def _mark_dead(self, run: RunRecord) -> RunRecord:
        """A 'running' run whose supervising process is gone was interrupted.

        The run's locks say whether anything of it still runs (:func:`run_liveness`): its
        worker alive, or being started, with the supervisor gone -> still running
        (``supervisor_gone``); nothing -> interrupted (even if the recorded pid now belongs
        to another process). Without a lock file (a run supervised by an older version, or
        no flock) the pid decides.
        The supervisor may have died before recording the newest checkpoint, so the run
        folder (complete checkpoints only) is the truth for where it can resume."""
        if run.status != "running":
            return run
        state, _ = run_liveness(Path(run.run_dir))
        if state in ("supervised", "orphaned"):
            run.supervisor_gone = state == "orphaned"
            return run
        dead = state == "stopped" or not pid_alive(run.pid)
        if dead:
            newest = latest_checkpoint(Path(run.run_dir))
            ckpt = str(newest) if newest else run.last_checkpoint
            with self.cat.transaction() as c:
                c.execute("UPDATE runs SET status = 'interrupted', error = ?, last_checkpoint = ?, updated_at = ?"
                          " WHERE id = ? AND status = 'running'",
                          ("the process running it stopped (app closed or killed); resume it with 'adapterstudio train --resume "
                           f"{run.id}'", ckpt, time.time(), run.id))
            run.status = "interrupted"
            run.last_checkpoint = ckpt
        return run


class RunLock:
    """The right to supervise one run: an exclusive ``flock`` on ``RUN_DIR/supervisor.lock``.

    Pass :attr:`fd` to the worker's launcher (``pass_fds``): the lock belongs to the open
    file, so it stays held while any process holding it lives. :meth:`release` only closes
    this process's copy (an unlock would free it for the worker too). The file holds JSON
    about the holder (``supervisor_pid``, later ``launcher_pid``) for :func:`lock_holder`.
    """

    def __init__(self, fd: int | None, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.info: dict[str, Any] = {}

    @classmethod
    def acquire(cls, run_dir: Path, *, tries: int = 5, **info: Any) -> RunLock | None:
        """The lock, or None when another process holds it. *run_dir* must exist."""
        path = Path(run_dir) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            for i in range(tries):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    # held; or a reader's brief shared probe (lock_holder): try again shortly
                    if i == tries - 1:
                        os.close(fd)
                        return None
                    time.sleep(0.05)
        lock = cls(fd, path)
        lock.note(supervisor_pid=os.getpid(), since=time.time(), **info)
        return lock

    def note(self, **info: Any) -> None:
        """Record who holds the lock (read by :func:`lock_holder`)."""
        if self.fd is None:
            return
        self.info.update(info)
        data = json.dumps(self.info).encode()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, data)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _probe(path: Path, exclusive: bool = False) -> dict[str, Any] | None:
    """What the holder of the flock on *path* wrote about itself, or None when nobody holds it.

    The probe takes a shared lock (a supervisor holds its lock exclusively), or an exclusive one
    where the holders share theirs (workers); either way it is dropped when the descriptor closes."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or no folder): nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            return _read_info(fd)
        return None
    finally:
        os.close(fd)


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
    except ValueError:  # being written this very moment
        return {}
    return info if isinstance(info, dict) else {}


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """What the holder of a run's supervisor lock wrote (a supervisor, or the launcher it started), or None."""
    return _probe(Path(run_dir) / LOCK_FILE)


def worker_holder(run_dir: Path) -> dict[str, Any] | None:
    """``{"pid", "launch"}`` of a run's live worker (it holds ``worker.lock``), or None."""
    # exclusive: any worker process's shared hold refuses it (a worker starting now waits a moment)
    return _probe(Path(run_dir) / WORKER_LOCK, exclusive=True)


def run_liveness(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """Who runs this run now, from its locks: ``(state, holder info)``.

    ``supervised``: a live supervisor holds it. ``orphaned``: its supervisor is gone but its
    worker runs, or its launcher is still starting this launch's worker. ``stopped``: nothing
    runs it (a launcher whose worker has ended may still hold the lock a moment: acquiring
    waits). ``unknown``: no lock file (a run of an older version, or no flock): go by pid.
    """
    run_dir = Path(run_dir)
    if fcntl is None or not (run_dir / LOCK_FILE).exists():
        return "unknown", {}
    sup = lock_holder(run_dir)
    if sup is not None and pid_alive(sup.get("supervisor_pid")):
        return "supervised", sup
    worker = worker_holder(run_dir)
    if worker is not None:
        return "orphaned", {**(sup or {}), "worker_pid": worker.get("pid")}
    if sup is not None and sup.get("launch"):
        # held by the launcher: if this launch's worker never stamped worker.lock, it is still starting
        try:
            stamped = json.loads((run_dir / WORKER_LOCK).read_text(encoding="utf-8")).get("launch")
        except (OSError, ValueError, AttributeError):
            stamped = None
        if stamped != sup["launch"]:
            return "orphaned", sup
    return "stopped", sup or {}


def hold_worker_lock(run_dir: Path) -> Any:
    """For the worker: hold ``RUN_DIR/worker.lock`` (shared) for the life of this process, stamped
    with the launch (``ADAPTERSTUDIO_LAUNCH``) by process 0. Keep the returned object referenced."""
    if fcntl is None:
        return None
    fd = os.open(Path(run_dir) / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a probe's instant
    if int(os.environ.get("RANK", "0") or 0) == 0:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "launch": os.environ.get("ADAPTERSTUDIO_LAUNCH")}).encode())
    return fd


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (``checkpoints/step-N`` with its ``progress.json``)."""
    ck = run_dir / "checkpoints"
    if not ck.is_dir():
        return None
    done = [p for p in ck.iterdir() if p.name.startswith("step-") and (p / "progress.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None
