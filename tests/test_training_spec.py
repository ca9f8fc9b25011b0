"""The training spec and data preparation: pure Python, no model involved."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.training.data import prepare, stratified_split
from adapterstudio.core.training.loaders import load_table
from adapterstudio.core.training.spec import TrainingSpec, batch_token_budget, estimate_memory, group_by_length


def test_spec_yaml_round_trip_and_defaults(tmp_path):
    spec = TrainingSpec(base="b", data="d.csv", strategy="partial", epochs=2, target_modules=["query", "value"])
    full = spec.with_defaults(num_parameters=22_000_000).validate()
    assert full.lr == 1e-3 and full.batch_size == 16 and full.max_length == 128 and full.metric == "accuracy"
    assert full.lora_alpha == 16
    p = tmp_path / "spec.yaml"
    full.save(p)
    again = TrainingSpec.from_yaml(p)
    assert again == full
    # defaults differ by task, strategy and size
    lm = TrainingSpec(base="b", data="d", task="causal-lm", strategy="lora").with_defaults(7_000_000_000)
    assert lm.lr == 1e-4 and lm.batch_size == 4 and lm.max_length == 512 and lm.metric == "loss"
    assert TrainingSpec(base="b", data="d", strategy="full").with_defaults(100).lr == 5e-5
    assert TrainingSpec(base="b", data="d", strategy="dora").with_defaults(100).use_dora is True


@pytest.mark.parametrize("changes, words", [
    ({"task": "poetry"}, "task must be one of"),
    ({"strategy": "magic"}, "strategy must be one of"),
    ({"task": "causal-lm", "strategy": "head"}, "causal LM"),
    ({"lr": 5.0}, "lr must be between 0 and 1"),
    ({"epochs": 0.0}, "epochs must be above 0"),
    ({"val_fraction": 0.5, "test_fraction": 0.45}, "at least 10% for training"),
    ({"quantize": "4bit", "strategy": "full"}, "only works with the lora or dora"),
    ({"packing": True}, "packing only applies"),
    ({"max_batch_tokens": -5}, "max_batch_tokens must be 0"),
    ({"base": ""}, "a base model is required"),
])
def test_spec_validation_is_one_sentence(changes, words):
    spec = TrainingSpec(base="b", data="d.csv").replace(**changes)
    with pytest.raises(InvalidInput) as err:
        spec.validate()
    msg = str(err.value)
    assert words in msg and msg.endswith(".") and "\n" not in msg


def test_spec_file_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("base: b\nepochz: 3\n")
    with pytest.raises(InvalidInput, match="unknown setting.*epochz"):
        TrainingSpec.from_yaml(p)
    p.write_text("base: b\nepochs: lots\n")
    with pytest.raises(InvalidInput, match="epochs must be float"):
        TrainingSpec.from_yaml(p)
    p.write_text("base: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        TrainingSpec.from_yaml(p)


def _write(path, rows, fmt):
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "datasets":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


ROWS = [{"sentence": f"text number {i}", "sentiment": "pos" if i % 3 else "neg"} for i in range(60)]


@pytest.mark.parametrize("fmt, name", [("csv", "d.csv"), ("jsonl", "d.jsonl"), ("parquet", "d.parquet"), ("datasets", "dsdir")])
def test_formats_load_the_same_rows(tmp_path, fmt, name):
    p = _write(tmp_path / name, ROWS, fmt)
    t = load_table(p)
    assert t.format == ("datasets" if fmt == "datasets" else fmt)
    assert [r["sentence"] for r in t.rows] == [r["sentence"] for r in ROWS]
    assert len(t.sha256) == 64
    spec = TrainingSpec(base="b", data=str(p), test_fraction=0.2)
    prep = prepare(spec)
    # columns guessed (sentence -> text, sentiment -> label), stratified split keeps the 1:2 ratio
    assert prep.columns["text_column"] == "sentence" and prep.columns["label_column"] == "sentiment"
    assert prep.labels == ["neg", "pos"]
    assert len(prep.train) + len(prep.validation) + len(prep.test) == 60
    for split in (prep.validation, prep.test):
        c = Counter(r["label"] for r in split)
        assert c["neg"] == 4 and c["pos"] == 8
    assert prep.dataset["sha256"] == t.sha256 and prep.dataset["rows"] == 60


def test_split_is_deterministic_and_disjoint():
    rows = [{"text": str(i), "label": str(i % 4)} for i in range(200)]
    a = stratified_split(rows, [0.2, 0.1], seed=7)
    b = stratified_split(rows, [0.2, 0.1], seed=7)
    assert a == b
    ids = [r["text"] for part in a for r in part]
    assert sorted(ids) == sorted(r["text"] for r in rows)
    assert [len(p) for p in a] == [140, 40, 20]
    assert stratified_split(rows, [0.2], seed=8)[1] != a[1]


def test_data_hash_changes_with_content(tmp_path):
    p = _write(tmp_path / "d.csv", ROWS, "csv")
    h1 = load_table(p).sha256
    _write(p, ROWS[:-1], "csv")
    assert load_table(p).sha256 != h1


@pytest.mark.parametrize("content, name, words", [
    ("text,label\nhello,a\n,b\nfine,a\n", "d.csv", "row 2, column 'text' is empty"),
    ("text,label\nhello,a\nworld,\n", "d.csv", "row 2, column 'label' has no label"),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "d.jsonl", "line 2 is not valid JSON"),
    ("text,label\nhello,a\nworld,a\n", "d.csv", "has only one label"),
    ("words,stuff\nhello,a\n", "d.csv", "no obvious text column"),
    ("a", "d.xlsx", "unknown data format"),
    ("text,label\n", "d.csv", "has no rows"),
])
def test_bad_rows_are_named_by_row_and_column(tmp_path, content, name, words):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(InvalidInput) as err:
        prepare(TrainingSpec(base="b", data=str(p)))
    assert words in str(err.value)
    assert str(p) in str(err.value) or "label" in str(err.value)


def test_explicit_columns_and_missing_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("review,stars\n" + "".join(f"text {i},{i % 2}\n" for i in range(20)))
    prep = prepare(TrainingSpec(base="b", data=str(p), text_column="review", label_column="stars"))
    assert prep.labels == ["0", "1"]
    with pytest.raises(InvalidInput, match="has no column 'body'"):
        prepare(TrainingSpec(base="b", data=str(p), text_column="body"))
    reg = prepare(TrainingSpec(base="b", data=str(p), task="regression", text_column="review", label_column="stars"))
    assert reg.labels is None and isinstance(reg.train[0]["label"], float)


def test_causal_lm_and_token_rows(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(InvalidInput, match="row 2, column 'messages' has no assistant message"):
        prepare(TrainingSpec(base="b", data=str(chat), task="causal-lm"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(10)))
    prep = prepare(TrainingSpec(base="b", data=str(pairs), task="causal-lm"))
    assert prep.columns["prompt_column"] == "instruction" and set(prep.train[0]) == {"prompt", "response"}
    tok = tmp_path / "tok.jsonl"
    tok.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(InvalidInput, match="row 1, column 'tags' must hold one tag per word"):
        prepare(TrainingSpec(base="b", data=str(tok), task="token-cls"))


def test_memory_estimate_grows_with_strategy_and_batch():
    cfg = {"hidden_size": 384, "num_hidden_layers": 6}
    head = estimate_memory(TrainingSpec(strategy="head").with_defaults(22_000_000), cfg, 22_000_000)
    lora = estimate_memory(TrainingSpec(strategy="lora").with_defaults(22_000_000), cfg, 22_000_000)
    full = estimate_memory(TrainingSpec(strategy="full").with_defaults(22_000_000), cfg, 22_000_000)
    assert head.total < lora.total < full.total
    big = estimate_memory(TrainingSpec(strategy="full", batch_size=64).with_defaults(7_000_000_000), cfg, 7_000_000_000,
                          "cuda", available=8 * 2**30)
    assert big.fits is False and "GiB" in big.notes[0]


def test_token_budget_defaults_by_device_and_bounds_the_activation_estimate():
    spec = TrainingSpec(batch_size=32, max_length=256).with_defaults(22_000_000)
    assert batch_token_budget(spec, "cpu") == 2048 and batch_token_budget(spec, "cuda") == 0
    assert batch_token_budget(spec.replace(max_batch_tokens=0), "cpu") == 0
    assert batch_token_budget(spec.replace(max_batch_tokens=4096), "cuda") == 4096
    # random batches where passes remove the padding; length-grouped batches where a micro-batch runs whole
    assert group_by_length(spec, "cpu") is False and group_by_length(spec, "cuda") is True
    assert group_by_length(spec.replace(max_batch_tokens=0), "cpu") is True
    assert group_by_length(spec.replace(group_by_length=True), "cpu") is True
    cfg = {"hidden_size": 384, "num_hidden_layers": 6}
    capped = estimate_memory(spec, cfg, 22_000_000, "cpu")
    whole = estimate_memory(spec.replace(max_batch_tokens=0), cfg, 22_000_000, "cpu")
    assert capped.activations * 4 == whole.activations  # 2048 of 32 x 256 tokens in flight
    # a single sequence longer than the budget still runs whole
    long = estimate_memory(spec.replace(max_length=8192, max_batch_tokens=1024), cfg, 22_000_000, "cpu")
    assert long.activations == estimate_memory(spec.replace(max_length=8192, batch_size=1, max_batch_tokens=0), cfg,
                                               22_000_000, "cpu").activations
