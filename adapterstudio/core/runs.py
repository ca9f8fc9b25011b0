"""Training runs and the persistent job queue, kept in the catalogue's ``runs`` table.

A run moves through ``queued -> running -> succeeded | failed | cancelled``. A run whose
process died with the app (its pid is gone while it says ``running``) is shown as
``interrupted`` and can be resumed from its last checkpoint. The queue is the runs in
state ``queued``, ordered by ``queue_position``: it survives restarts because it is
just rows in the catalogue.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

from adapterstudio.core.catalogue import Catalogue
from adapterstudio.core.errors import InvalidInput, NotFound

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")


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

    @property
    def duration_s(self) -> float | None:
        d = self.metrics.get("duration_s") if isinstance(self.metrics, dict) else None
        if d is not None:
            return float(d)
        if self.started_at:
            return (self.finished_at or time.time()) - self.started_at
        return None

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
               run_id: str | None = None) -> RunRecord:
        rid = run_id or new_run_id()
        run_dir = self.cat.runs_dir / rid
        now = time.time()
        with self.cat.transaction() as c:
            pos = None
            if status == "queued":
                pos = (c.execute("SELECT MAX(queue_position) FROM runs").fetchone()[0] or 0) + 1
            c.execute(
                "INSERT INTO runs (id, name, status, spec, base_id, run_dir, queue_position, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (rid, name, status, json.dumps(spec), base_id, str(run_dir), pos, now, now),
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

    def queue(self) -> list[RunRecord]:
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
        run = self.get(run_id)
        if run.status == "running":
            raise InvalidInput(f"Run {run.id} is running; cancel it first.")
        with self.cat.transaction() as c:
            c.execute("DELETE FROM runs WHERE id = ?", (run.id,))
        return run

    def _mark_dead(self, run: RunRecord) -> RunRecord:
        """A 'running' run whose supervising process is gone was interrupted.

        The supervisor may have died before recording the newest checkpoint, so the run
        folder (complete checkpoints only) is the truth for where it can resume."""
        if run.status == "running" and not pid_alive(run.pid):
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


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (``checkpoints/step-N`` with its ``progress.json``)."""
    ck = run_dir / "checkpoints"
    if not ck.is_dir():
        return None
    done = [p for p in ck.iterdir() if p.name.startswith("step-") and (p / "progress.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None
