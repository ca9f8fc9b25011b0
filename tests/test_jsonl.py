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
    from adapterstudio.ml.training.data import PreparedData, prepare
    from adapterstudio.ml.training.spec import TrainingSpec

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
