"""Data that used to load wrong without a word: each case is refused in one sentence, warned about,
or read right. Everything here runs in process on small real files."""

from __future__ import annotations

import csv
import json

import pytest

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.training.data import prepare
from adapterstudio.core.training.loaders import load_table
from adapterstudio.core.training.spec import TrainingSpec


def _csv(path, rows, header=("text", "label"), **kw):
    with path.open("w", encoding=kw.pop("encoding", "utf-8"), newline="") as fh:
        w = csv.writer(fh, **kw)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(path, **kw):
    return TrainingSpec(base="b", data=str(path), **kw)


ROWS = [(f"review number {i}", "pos" if i % 2 else "neg") for i in range(40)]


# -- CSV structure ------------------------------------------------------------------------------
def test_an_unclosed_quote_is_refused_instead_of_swallowing_the_rest_of_the_file(tmp_path):
    lines = ["text,label"] + [f"{t},{lab}" for t, lab in ROWS]
    lines[7] = '"review number 6 never closes,neg'  # row 7; the old loader read 7 rows and trained on them
    p = tmp_path / "d.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as err:
        load_table(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: row 7 (line 8, column 'text'): ")
    assert "a quoted field runs to the end of the file (an unclosed quote)" in msg
    # in the last row and without a final newline too
    p.write_text("text,label\nfine,pos\nalso fine,\"neg\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"row 2 \(line 3, column 'label'\): a quoted field runs to the end"):
        load_table(p)
    p.write_text('"text,label\nfine,pos\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="the header row .* runs to the end of the file"):
        load_table(p)


def test_quoted_fields_with_line_breaks_that_close_are_kept(tmp_path):
    rows = [(f"first line {i}\nsecond line\r\nthird, with a comma" if i % 5 == 0 else f"plain {i}", "pos" if i % 2 else "neg")
            for i in range(40)]
    p = _csv(tmp_path / "d.csv", rows)
    t = load_table(p)
    assert [(r["text"], r["label"]) for r in t.rows] == rows
    assert t.warnings == []
    prep = prepare(_spec(p))
    assert len(prep.train) + len(prep.validation) == 40 and prep.warnings == []


def test_a_stray_quote_closed_later_is_warned_about(tmp_path):
    lines = ["text,label"] + [f"{t},{lab}" for t, lab in ROWS]
    lines[3] = '"review number 2 opens a quote,neg'
    lines[9] = '"quoted" word,pos'  # ...that this row's quote closes: rows 3-8 merge into one
    p = tmp_path / "d.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prep = prepare(_spec(p))
    assert len(prep.train) + len(prep.validation) == 34
    assert any("row 3, column 'text' spans 7 lines, 6 of which look like rows of their own" in w for w in prep.warnings)


def test_the_preview_service_reports_what_training_will_see(tmp_path):
    """services.datasets.preview (the Train page's dataset preview): the columns, label counts over every split,
    the split sizes and the data checks' warnings of the same preparation training does."""
    from adapterstudio.services.datasets import preview

    lines = ["text,label"] + [f"{t},{lab}" for t, lab in ROWS]
    lines[3] = '"review number 2 opens a quote,neg'
    lines[9] = '"quoted" word,pos'  # rows 3-8 merge into one, as above
    p = tmp_path / "d.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prep = prepare(_spec(p, test_fraction=0.1))
    pv = preview(_spec(p, test_fraction=0.1))
    assert pv.columns == prep.columns == {**pv.columns, "text_column": "text", "label_column": "label"}
    assert pv.labels == prep.labels == ["neg", "pos"]
    assert pv.sizes == {"train": len(prep.train), "validation": len(prep.validation), "test": len(prep.test)}
    assert sum(pv.sizes.values()) == 34 and pv.sizes["test"] > 0
    labels = [r["label"] for r in prep.train + prep.validation + prep.test]
    assert pv.label_counts == {"neg": labels.count("neg"), "pos": labels.count("pos")}
    assert pv.warnings == prep.warnings and any("spans 7 lines" in w for w in pv.warnings)
    assert pv.dataset["rows"] == 34 and pv.dataset["format"] == prep.dataset["format"]
    assert pv.sample == prep.train[:5]
    with pytest.raises(InvalidInput, match="missing.csv does not exist"):
        preview(_spec(tmp_path / "missing.csv"))

def test_a_field_over_the_csv_module_limit_is_read_whole(tmp_path):
    big = "word " * 40_000  # 200,000 characters; the csv default limit is 131,072
    rows = [(big if i == 3 else f"short {i}", "pos" if i % 2 else "neg") for i in range(10)]
    for sep, name in ((",", "d.csv"), ("\t", "d.tsv")):
        t = load_table(_csv(tmp_path / name, rows, delimiter=sep))
        assert t.rows[3]["text"] == big and len(t.rows) == 10


def test_duplicate_header_names_are_refused(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label,text\na,pos,b\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="the header names column 'text' twice"):
        load_table(p)


# -- encodings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".json"):
        p.write_text(json.dumps([{"text": t, "label": lab} for t, lab in ROWS]), encoding="utf-8-sig")
    elif name.endswith(".jsonl"):
        p.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS), encoding="utf-8-sig")
    else:
        _csv(p, ROWS, delimiter="," if name.endswith(".csv") else "\t", encoding="utf-8-sig")
    assert p.read_bytes().startswith(b"\xef\xbb\xbf")
    t = load_table(p)
    assert t.columns == ["text", "label"]
    prep = prepare(_spec(p, text_column="text"))
    assert prep.columns["text_column"] == "text" and prep.labels == ["neg", "pos"]


def test_utf16_with_a_byte_order_mark_is_read_and_without_one_is_named(tmp_path):
    p = _csv(tmp_path / "excel-unicode.txt", ROWS, delimiter="\t", encoding="utf-16")  # Excel's "Unicode Text"
    assert [r["text"] for r in load_table(p).rows] == [t for t, _ in ROWS]
    p.write_bytes("text,label\nhello,pos\n".encode("utf-16-le"))
    with pytest.raises(InvalidInput, match="UTF-16 .*without a byte-order mark.*re-save it as UTF-8"):
        load_table(p)


def test_header_names_with_spaces_match_and_say_so(tmp_path):
    p = _csv(tmp_path / "d.csv", ROWS, header=(" text ", "Label"))
    prep = prepare(_spec(p, text_column="text", label_column="label"))
    assert prep.columns == {"text_column": " text ", "label_column": "Label", "text_pair_column": None}
    assert any("column ' text ' is used for --text-column text" in w for w in prep.warnings)
    assert prepare(_spec(p)).columns["text_column"] == " text "  # guessed as well
    with pytest.raises(InvalidInput, match=r"has no column 'body' \(columns: ' text ', 'Label'\)"):
        prepare(_spec(p, text_column="body"))


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl"])
def test_a_file_that_is_not_utf8_names_the_byte_and_line(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".csv"):
        p.write_bytes("text,label\nfine,pos\ncaf\u00e9 au lait,neg\n".encode("cp1252"))
        where = "offset 23 (line 3)"
    else:
        p.write_bytes('{"text": "fine", "label": "pos"}\n{"text": "caf\u00e9", "label": "neg"}\n'.encode("latin-1"))
        where = "offset 46 (line 2)"
    with pytest.raises(InvalidInput) as err:
        load_table(p)
    msg = str(err.value)
    assert msg.startswith(f"{p} is not UTF-8 text: ") and "byte 0xE9" in msg and where in msg
    assert "re-save it as UTF-8" in msg and msg.count(". ") == 0


# -- labels -------------------------------------------------------------------------------------
def test_missing_value_labels_are_refused_unless_allowed(tmp_path):
    rows = [(f"t {i}", ["pos", "neg", "NaN", "None", "N/A"][i % 5] if i >= 4 else "pos") for i in range(40)]
    p = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(InvalidInput) as err:
        prepare(_spec(p))
    msg = str(err.value)
    assert f"{p}: column 'label' has 22 labels that usually mean a missing value ('N/A', 'NaN', 'None'), first in row 5" in msg
    assert "--allow missing-labels" in msg
    prep = prepare(_spec(p, allow=["missing-labels"]))
    assert set(prep.labels) == {"pos", "neg", "NaN", "None", "N/A"}


def test_numerically_equal_labels_are_one_class(tmp_path):
    spellings = ["0", "1", "1.0", "01", "0.0", "2.50", "2.5"]
    rows = [(f"t {i}", spellings[i % len(spellings)]) for i in range(42)]
    p = _csv(tmp_path / "d.csv", rows)
    prep = prepare(_spec(p))
    assert prep.labels == ["0", "1", "2.5"]
    assert {r["label"] for r in prep.train + prep.validation} == {"0", "1", "2.5"}
    assert any("labels '01', '1', '1.0' are the same number and were merged into one class '1'" in w for w in prep.warnings)
    # a validation file spelling the number another way joins the same class
    v = _csv(tmp_path / "v.csv", [("x", "1.00"), ("y", "0")])
    prep = prepare(_spec(p, validation=str(v)))
    assert sorted(r["label"] for r in prep.validation) == ["0", "1"]


def test_labels_mixing_numbers_and_words_are_refused_unless_allowed(tmp_path):
    rows = [(f"t {i}", "two" if i == 12 else str(i % 3)) for i in range(40)]
    p = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(InvalidInput) as err:
        prepare(_spec(p))
    msg = str(err.value)
    assert f"{p}: column 'label' mixes numbers (39 rows, e.g. '0') and words (1 row, e.g. 'two', first in row 13)" in msg
    assert "--allow mixed-labels" in msg
    assert prepare(_spec(p, allow=["mixed-labels"])).labels == ["0", "1", "2", "two"]


def test_one_column_for_two_roles_is_refused_unless_allowed(tmp_path):
    p = _csv(tmp_path / "d.csv", ROWS)
    with pytest.raises(InvalidInput, match=f"{p}: column 'text' is used both for --text-column and --label-column"):
        prepare(_spec(p, label_column="text"))
    with pytest.raises(InvalidInput, match="used both for --text-column and --text-pair-column"):
        prepare(_spec(p, text_pair_column="text"))
    q = _csv(tmp_path / "q.csv", [(f"q{i}", f"a{i}") for i in range(10)], header=("prompt", "response"))
    with pytest.raises(InvalidInput, match="used both for --prompt-column and --response-column"):
        prepare(_spec(q, task="causal-lm", prompt_column="prompt", response_column="prompt"))
    n = _csv(tmp_path / "n.csv", [(str(i % 4), "x") for i in range(20)])
    reg = prepare(_spec(n, task="regression", text_column="text", label_column="text", allow=["same-column"]))
    assert {r["label"] for r in reg.train + reg.validation} == {0.0, 1.0, 2.0, 3.0}


# -- values -------------------------------------------------------------------------------------
def test_bytes_values_are_refused_not_turned_into_b_quotes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    texts = [f"review {i}".encode() for i in range(10)]
    pq.write_table(pa.table({"text": pa.array(texts, pa.binary()), "label": ["pos", "neg"] * 5}), p)
    with pytest.raises(InvalidInput, match=f"{p}: row 1, column 'text' holds bytes, not text"):
        prepare(_spec(p))
    pq.write_table(pa.table({"text": [f"review {i}" for i in range(10)],
                             "label": pa.array([b"pos", b"neg"] * 5, pa.binary())}), p)
    with pytest.raises(InvalidInput, match="row 1, column 'label' holds bytes, not text"):
        prepare(_spec(p))
    with pytest.raises(InvalidInput, match="row 1, column 'label' holds bytes, not a number"):
        prepare(_spec(p, task="regression"))


@pytest.mark.parametrize("bad, words", [
    ("\x00\x00", "holds only NUL characters"),
    ("\x01\x02\x7f", "holds only control or invisible characters"),
    ("\u200b\ufeff\u00a0", "holds only control or invisible characters"),
    (" \t\r\n ", "is empty"),
])
def test_text_without_a_visible_character_is_refused(tmp_path, bad, words):
    p = _jsonl(tmp_path / "d.jsonl", [{"text": bad if i == 5 else f"t {i}", "label": "ab"[i % 2]} for i in range(20)])
    with pytest.raises(InvalidInput, match=f"row 6, column 'text' {words}"):
        prepare(_spec(p))
    with pytest.raises(InvalidInput, match=f"row 6, column 'prompt' {words}"):
        prepare(_spec(_jsonl(tmp_path / "c.jsonl", [{"prompt": bad if i == 5 else "q", "response": "a"} for i in range(10)]),
                     task="causal-lm"))


def test_nul_characters_inside_text_are_removed_with_a_warning(tmp_path):
    p = _csv(tmp_path / "d.csv", [(f"t\x00 {i}" if i in (3, 9) else f"t {i}", "ab"[i % 2]) for i in range(20)])
    prep = prepare(_spec(p))
    texts = {r["text"] for r in prep.train + prep.validation}
    assert "t 3" in texts and "t 9" in texts and not any("\x00" in t for t in texts)
    assert "column 'text' held NUL characters in 2 rows (first: row 4); they were removed" in "\n".join(prep.warnings)


@pytest.mark.parametrize("value, words", [
    ("inf", "not a finite number"), ("-inf", "not a finite number"), ("1e400", "not a finite number"),
    ("3e19", "too large to train on"), ("nan", "not a number"),
])
def test_regression_targets_must_be_finite_and_trainable(tmp_path, value, words):
    p = _csv(tmp_path / "d.csv", [(f"t {i}", value if i == 4 else str(i)) for i in range(20)])
    with pytest.raises(InvalidInput, match=f"{p}: row 5, column 'label' is '{value}', {words}"):
        prepare(_spec(p, task="regression"))


def test_regression_json_infinity_and_large_scale(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(f'{{"text": "t {i}", "label": {"Infinity" if i == 2 else i}}}\n' for i in range(20)))
    with pytest.raises(InvalidInput, match="row 3, column 'label' is inf, not a finite number"):
        prepare(_spec(p, task="regression"))
    big = _jsonl(tmp_path / "big.jsonl", [{"text": f"t {i}", "label": 1000.0 * i * i} for i in range(20)])
    prep = prepare(_spec(big, task="regression"))
    assert any("regression targets reach 361000 in size" in w and "rescale" in w for w in prep.warnings)
    assert prepare(_spec(_jsonl(tmp_path / "ok.jsonl", [{"text": f"t {i}", "label": i / 7} for i in range(20)]),
                         task="regression")).warnings == []


# -- the escape hatch ---------------------------------------------------------------------------
def test_allow_names_are_validated_and_reach_the_spec_from_the_cli():
    from adapterstudio.cli import build_parser
    from adapterstudio.cli.training import build_spec

    with pytest.raises(InvalidInput, match="allow takes missing-labels, mixed-labels, same-column, not 'nan'"):
        TrainingSpec(base="b", data="d", allow=["nan"]).validate()
    TrainingSpec(base="b", data="d", allow=["missing-labels"]).validate()
    args = build_parser().parse_args(["train", "--base", "b", "--data", "d.csv", "--allow", "missing-labels, mixed-labels",
                                      "--allow", "same-column"])
    spec = build_spec(args)
    assert spec.allow == ["missing-labels", "mixed-labels", "same-column"]
    assert TrainingSpec.from_dict(spec.to_dict()).allow == spec.allow
    assert build_spec(build_parser().parse_args(["train", "--base", "b", "--data", "d.csv"])).allow is None
