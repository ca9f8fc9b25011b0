"""JSON Lines split on "\\n" only: text with NEL, U+2028 and U+2029 (real tweets hold them) survives."""

from __future__ import annotations

import csv
import json

from adapterstudio.core import jsonl

HOSTILE = ["line\x85break", "para\u2029graph", "sep\u2028arator", "emoji 😀🎉", "rtl \u05e9\u05dc\u05d5\u05dd",
           "cr\rlf\r\n", "tab\tvt\x0bff\x0c", "fs\x1cgs\x1drs\x1e"]


def test_round_trip_keeps_every_unicode_line_separator(tmp_path):
    rows = [{"text": t, "i": i} for i, t in enumerate(HOSTILE)]
    p = tmp_path / "x.jsonl"
    p.write_text(jsonl.text(rows), encoding="utf-8")
    # the bug: str.splitlines() cuts these records apart
    assert len(p.read_text(encoding="utf-8").splitlines()) > len(rows)
    assert jsonl.read(p) == rows


def test_read_since_returns_whole_lines_only(tmp_path):
    p = tmp_path / "events.jsonl"
    jsonl.append(p, {"event": "a", "text": "x\u2028y"})
    with p.open("a", encoding="utf-8") as fh:
        fh.write('{"event": "b", "te')  # a line still being written
    got, off = jsonl.read_since(p, 0)
    assert got == [{"event": "a", "text": "x\u2028y"}]
    with p.open("a", encoding="utf-8") as fh:
        fh.write('xt": "z"}\n')
    got, off2 = jsonl.read_since(p, off)
    assert got == [{"event": "b", "text": "z"}] and off2 == p.stat().st_size
    assert jsonl.read_since(tmp_path / "missing.jsonl", 7) == ([], 7)


def test_prepared_splits_round_trip_hostile_text(tmp_path):
    from adapterstudio.core.training.data import PreparedData, prepare
    from adapterstudio.core.training.spec import TrainingSpec

    data = tmp_path / "tweets.csv"
    with data.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(40):
            w.writerow([f"{HOSTILE[i % len(HOSTILE)]} {i}", "pos" if i % 3 else "neg"])
    prepared = prepare(TrainingSpec(base="b", data=str(data), seed=1))
    prepared.write(tmp_path / "prep")
    back = PreparedData.read(tmp_path / "prep")
    assert back.train == prepared.train and back.validation == prepared.validation
    assert sum(len(s) for s in (back.train, back.validation)) == 40
    assert json.loads((tmp_path / "prep" / "meta.json").read_text())["sizes"]["train"] == len(back.train)


def test_run_events_append_tail_and_series(tmp_path):
    """core.events: one writer and reader of RUN_DIR/events.jsonl (the worker, the supervisor, the UI)."""
    from adapterstudio.core import events

    line = events.append(tmp_path, "step", step=1, total_steps=2, loss=0.5, note="caf\u00e9\u2028")
    assert line.isascii() and json.loads(line)["note"] == "caf\u00e9\u2028"
    got, off = events.read_since(tmp_path, 0)
    assert [(e["event"], e["step"], e["loss"]) for e in got] == [("step", 1, 0.5)] and isinstance(got[0]["time"], float)
    events.append(tmp_path, "eval", step=2, epoch=1, metrics={"accuracy": 0.75, "loss": 0.4, "n": 8, "ok": True})
    with events.events_path(tmp_path).open("a", encoding="utf-8") as fh:
        fh.write('{"event": "step", "st')  # a line still being written
    got, off2 = events.read_since(tmp_path, off)
    assert [e["event"] for e in got] == ["eval"] and off2 < events.events_path(tmp_path).stat().st_size
    assert events.series(tmp_path) == {"train_loss": ([1.0], [0.5]), "eval_accuracy": ([2.0], [0.75]),
                                       "eval_loss": ([2.0], [0.4])}
    assert events.read_since(tmp_path / "none", 0) == ([], 0) and events.series(tmp_path / "none") == {}
    # a field may be called "kind" or "run_dir" (the worker's error events have kind=...)
    (tmp_path / "other").mkdir()
    events.append(tmp_path / "other", "error", kind="internal", run_dir="x")
    assert events.read(tmp_path / "other")[0]["kind"] == "internal"
