"""A run's event stream, ``RUN_DIR/events.jsonl``: the one writer and reader of it.

The training worker appends what it does (``start``, ``step``, ``eval``, ``checkpoint``,
``baseline``, ``refit``, ``early_stop``, ``error``, ``oom``, ``cancelled``, ``done`` ...) and
its supervisor appends ``launch`` and ``oom_retry``. Every record is
``{"event": kind, "time": <unix seconds>, **fields}``, one JSON line, written through
:mod:`adapterstudio.core.jsonl`. The supervisor, the CLI, the UI and the benchmarks read
it back with :func:`read`, :func:`read_since` (tailing by byte offset) and :func:`series`
(the curves a run draws).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapterstudio.core import jsonl

EVENTS_FILE = "events.jsonl"


def events_path(run_dir: Path | str) -> Path:
    """Where the run in *run_dir* keeps its events."""
    return Path(run_dir) / EVENTS_FILE


def jsonable(o: Any) -> Any:
    """Values JSON cannot hold (tensors, numpy scalars, paths): a number when they are one, else text."""
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def append(run_dir: Path | str, event: str, /, **data: Any) -> str:
    """Append the event *event* with *data* (a whole, flushed line) and return the line written.

    Lines are ASCII (non-ASCII text escaped) so that the worker can echo them to any stdout.
    """
    record = {"event": event, "time": time.time(), **data}
    return jsonl.append(events_path(run_dir), record, ensure_ascii=True, default=jsonable)


def read(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every event of the run (none when it has no events yet); a torn line is skipped."""
    return [ev for ev in jsonl.read(events_path(run_dir), skip_bad=True) if isinstance(ev, dict)]


def read_since(run_dir: Path | str, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The events appended after byte *offset* and the offset to read from next time (whole lines only)."""
    records, new_offset = jsonl.read_since(events_path(run_dir), offset)
    return [ev for ev in records if isinstance(ev, dict)], new_offset


def points(ev: dict[str, Any]) -> Iterator[tuple[str, float, float]]:
    """The curve points one event adds: ``("train_loss", step, loss)`` for a step and
    ``("eval_<metric>", step, value)`` for each numeric metric of an evaluation (not ``n``,
    the number of examples)."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    kind = ev.get("event")
    if kind == "step":
        if number(ev.get("loss")):
            yield "train_loss", float(ev.get("step", 0)), float(ev["loss"])
    elif kind == "eval":
        for k, v in (ev.get("metrics") or {}).items():
            if k != "n" and number(v):
                yield f"eval_{k}", float(ev.get("step", 0)), float(v)


def series(run_dir: Path | str) -> dict[str, tuple[list[float], list[float]]]:
    """Every curve of the run: name -> (steps, values), in the order they were logged."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for ev in read(run_dir):
        for name, x, y in points(ev):
            xs, ys = out.setdefault(name, ([], []))
            xs.append(x)
            ys.append(y)
    return out
