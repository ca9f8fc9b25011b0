"""The item models over catalogue records, checked with qtmodeltester, plus filtering and roles."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import Qt  # noqa: E402

from adapterstudio.core.records import AdapterRecord, BaseRecord  # noqa: E402


def _base(i: int, name: str, available: bool = True) -> BaseRecord:
    return BaseRecord(id=i, name=name, source="local", path=f"/m/{name}", hub_id=None, revision=None,
                      content_hash=None, architecture="BertModel", model_type="bert", num_parameters=22_000_000,
                      dtype="float32", size_bytes=90_000_000, target_modules=["query", "value"], notes="",
                      created_at=1.0, available=available)


def _adapter(i: int, name: str, base: str | None, peft="LORA", task="SEQ_CLS", tags=(), notes="") -> AdapterRecord:
    return AdapterRecord(id=i, uid=f"u{i}", name=name, base=base, base_ref=base or "someone/missing", peft_type=peft,
                         task_type=task, rank=8 if peft == "LORA" else None, target_modules=["query"],
                         size_bytes=1000 * i, compatible=True if base else None, compat_reason="", path=f"/a/{i}",
                         tags=list(tags), notes=notes, source="import", source_ref=None, run_id=None, parent=None,
                         weights_format="safetensors", created_at=float(i), updated_at=float(i))


BASES = [_base(1, "minilm"), _base(2, "tiny-llama"), _base(3, "hub-only", available=False)]
ADAPTERS = [
    _adapter(1, "sentiment-lora", "minilm", tags=["demo", "sentiment"], notes="vader lexicon"),
    _adapter(2, "sentiment-ia3", "minilm", peft="IA3", tags=["demo"]),
    _adapter(3, "chatty", "tiny-llama", task="CAUSAL_LM"),
    _adapter(4, "orphan", None, peft="LOHA"),
]


def test_adapter_table_model(qtmodeltester):
    from adapterstudio.ui.models import AdapterTableModel, NameRole, RecordRole, SortRole

    m = AdapterTableModel()
    qtmodeltester.check(m)
    m.set_records(ADAPTERS)
    qtmodeltester.check(m)
    assert m.rowCount() == 4 and m.columnCount() == len(m.COLUMNS)
    assert m.index(0, m.NAME).data() == "sentiment-lora"
    assert m.index(3, m.BASE).data() == "someone/missing (missing)"
    assert m.index(0, m.SIZE).data(SortRole) == 1000  # numbers sort as numbers
    assert m.index(2, 0).data(NameRole) == "chatty"
    assert m.index(1, 0).data(RecordRole) is ADAPTERS[1]
    updated = _adapter(2, "sentiment-ia3", "minilm", peft="IA3", tags=["demo", "best"])
    with_changed = []
    m.dataChanged.connect(lambda a, b: with_changed.append((a.row(), b.row())))
    m.update_record(updated)
    assert with_changed == [(1, 1)]
    assert m.index(1, m.TAGS).data() == "demo, best"
    qtmodeltester.check(m)


def test_library_tree_model(qtmodeltester):
    from adapterstudio.ui.models import MISSING_GROUP, KindRole, LibraryTreeModel, NameRole

    m = LibraryTreeModel()
    qtmodeltester.check(m)
    m.set_records(BASES, ADAPTERS)
    qtmodeltester.check(m)
    tops = [m.index(r, 0).data() for r in range(m.rowCount())]
    assert tops == ["minilm", "tiny-llama", "hub-only", MISSING_GROUP]
    minilm = m.index(0, 0)
    assert m.rowCount(minilm) == 2
    child = m.index(1, 0, minilm)
    assert child.data(NameRole) == "sentiment-ia3" and child.data(KindRole) == "adapter"
    assert m.parent(child) == minilm
    assert m.index(3, 0).data(KindRole) == "group"
    assert m.index(0, 0, m.index(3, 0)).data(NameRole) == "orphan"
    assert "not available" in m.index(2, 1).data()


def test_base_list_model(qtmodeltester):
    from adapterstudio.ui.models import BaseListModel, NameRole

    m = BaseListModel()
    m.set_records(BASES)
    qtmodeltester.check(m)
    assert m.index(2, 0).data() == "hub-only (not downloaded)"
    assert not (m.flags(m.index(2, 0)) & Qt.ItemFlag.ItemIsEnabled)
    assert m.index(0, 0).data(NameRole) == "minilm"


@pytest.mark.parametrize("tree", [False, True])
def test_filter_proxy(qtmodeltester, tree):
    from adapterstudio.ui.models import AdapterFilterProxy, AdapterTableModel, KindRole, LibraryTreeModel, NameRole

    src = LibraryTreeModel() if tree else AdapterTableModel()
    if tree:
        src.set_records(BASES, ADAPTERS)
    else:
        src.set_records(ADAPTERS)
    proxy = AdapterFilterProxy()
    proxy.setSourceModel(src)
    qtmodeltester.check(proxy)

    def names() -> set[str]:
        out = set()

        def walk(parent):
            for r in range(proxy.rowCount(parent)):
                idx = proxy.index(r, 0, parent)
                if idx.data(KindRole) == "adapter":
                    out.add(idx.data(NameRole))
                walk(idx)
        walk(proxy.index(-1, -1))
        return out

    assert names() == {a.name for a in ADAPTERS}
    proxy.set_filters(text="SENTIMENT")
    assert names() == {"sentiment-lora", "sentiment-ia3"}
    proxy.set_filters(text="lexicon")  # notes are searched
    assert names() == {"sentiment-lora"}
    proxy.set_filters(text="", peft_type="IA3")
    assert names() == {"sentiment-ia3"}
    proxy.set_filters(peft_type="", task="CAUSAL_LM")
    assert names() == {"chatty"}
    proxy.set_filters(task="", tag="demo", base="minilm")
    assert names() == {"sentiment-lora", "sentiment-ia3"}
    qtmodeltester.check(proxy)
    proxy.set_filters(tag="", base="")
    proxy.sort(0, Qt.SortOrder.DescendingOrder)
    qtmodeltester.check(proxy)
    if not tree:
        assert proxy.index(0, 0).data() == "sentiment-lora"
