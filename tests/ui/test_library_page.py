"""The Library page driven like a user would: first run, add a base, import, detail, actions, errors."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from adapterstudio.core.errors import AlreadyExists, InvalidInput  # noqa: E402
from tests.ui.conftest import wait_loaded, wait_worker  # noqa: E402


@pytest.fixture
def page(window):
    return window.pages["library"]


@pytest.fixture
def with_base(qtbot, page, minilm_path):
    wait_loaded(qtbot, page, page.add_base(str(minilm_path), "minilm", compute_hash=False,
                                           hub_id="sentence-transformers/all-MiniLM-L6-v2"))
    return page


def test_first_run_then_add_base_from_folder(qtbot, page, minilm_path, lib):
    assert page.body.currentWidget() is page.first_run  # empty library: the first-run screen
    base = wait_loaded(qtbot, page, page.add_base(str(minilm_path), "minilm"))
    assert base.content_hash.startswith("sha256:")
    assert page.body.currentWidget() is page.splitter
    assert [b.name for b in page.snapshot["bases"]] == ["minilm"]
    assert lib.catalogue.get_base("minilm").architecture == "BertModel"
    page.set_view(1)  # the tree view shows the base as a top-level row
    assert page.tree_proxy.index(0, 0).data() == "minilm"


def test_first_run_scans_the_hf_cache(qtbot, page, minilm_path, home, tmp_path):
    import shutil

    # A repo without an owner (like "gpt2") is registered under its bare name.
    cache = tmp_path / "hf-home" / "hub" / "models--all-MiniLM-L6-v2"
    snap = cache / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(minilm_path / f, snap / f)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("a" * 40)
    res = wait_loaded(qtbot, page, page.scan_cache())
    assert [b.name for b in res["added"]] == ["all-MiniLM-L6-v2"], res
    assert "Found 1 new models" in page.first_run.status.text()
    assert page.snapshot["bases"][0].source == "hf-cache"


def test_first_run_hub_id_and_a_bad_one(qtbot, page, errors_shown):
    page.first_run.hub_id.setText("someone/some-model")
    with qtbot.waitSignal(page.loaded, timeout=20000):
        page.first_run.hub_btn.click()
    assert page.snapshot["bases"][0].hub_id == "someone/some-model"
    assert page.snapshot["bases"][0].name == "someone/some-model"
    assert not page.snapshot["bases"][0].available
    w = page.add_base("not a path nor an id")
    with pytest.raises(InvalidInput):
        wait_worker(qtbot, w)
    qtbot.waitUntil(lambda: len(errors_shown) == 1)
    assert errors_shown[0][0] == "Cannot do that" and "does not exist" in errors_shown[0][1]


def test_first_run_runs_the_self_check(qtbot, window, page):
    window.show()
    assert page.body.currentWidget() is page.first_run
    # the doctor's checks run in the background and end up on the welcome screen
    qtbot.waitUntil(lambda: "Self-check" in page.first_run.checks.text(), timeout=60000)
    text = page.first_run.checks.text()
    assert "checks passed" in text
    if "accelerator" in text:  # no GPU here: shown as a warning with its advice
        assert "CPU" in text


def test_import_shows_adapter_with_details(qtbot, with_base, peft_adapters, lib):
    page = with_base
    with qtbot.waitSignal(page.imported, timeout=30000) as got:
        wait_loaded(qtbot, page, page.import_paths([str(peft_adapters["lora"])], name="sentiment-lora")[0])
    rec = got.args[0]
    assert rec.name == "sentiment-lora" and rec.base == "minilm"
    assert lib.catalogue.get_adapter("sentiment-lora").compatible is True
    m = page.table_model
    assert m.rowCount() == 1 and m.index(0, m.BASE).data() == "minilm"
    # the new adapter is selected and its details load in the background
    assert page.selected_name() == "sentiment-lora"
    detail = page.detail
    qtbot.waitUntil(lambda: detail.currentIndex() == detail.ADAPTER and detail.adapter.record is not None, timeout=20000)
    a = detail.adapter
    assert a.name_label.text() == "sentiment-lora"
    assert "query, value" in a.overview.toPlainText()
    assert a.files.rowCount() == len(rec.files) >= 2
    files = {a.files.item(i, 0).text() for i in range(a.files.rowCount())}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "Fits minilm" in a.compat.toPlainText()
    assert not a.plot.isVisibleTo(a)  # an imported adapter has no metrics history
    # compatibility re-check against the base, from the pane
    report = wait_worker(qtbot, a.run_check())
    assert report.compatible and a.check_result.text().startswith("✔")


def test_rename_tag_notes_export_remove(qtbot, with_base, peft_adapters, lib, tmp_path):
    page = with_base
    wait_loaded(qtbot, page, page.import_paths([str(peft_adapters["ia3"])], name="a1")[0])
    wait_loaded(qtbot, page, page.rename("a1", "renamed"))
    assert [a.name for a in page.snapshot["adapters"]] == ["renamed"]
    assert page.selected_name() == "renamed"
    wait_loaded(qtbot, page, page.set_tags("renamed", ["demo", " sentiment "]))
    assert lib.catalogue.get_adapter("renamed").tags == ["demo", "sentiment"]
    assert page.filter_boxes["tag"].findData("sentiment") > 0
    wait_loaded(qtbot, page, page.set_tags("renamed", ["demo"]))
    assert lib.catalogue.get_adapter("renamed").tags == ["demo"]
    detail = page.detail
    qtbot.waitUntil(lambda: detail.adapter.record is not None and detail.adapter.record.name == "renamed", timeout=20000)
    detail.adapter.notes.setPlainText("good on short texts")
    wait_worker(qtbot, detail.adapter.save_notes())
    assert lib.catalogue.get_adapter("renamed").notes == "good on short texts"
    assert page.table_model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole) == "good on short texts"
    out = wait_worker(qtbot, page.export("renamed", str(tmp_path / "exported")))
    assert (out / "adapter_model.safetensors").read_bytes() == (peft_adapters["ia3"] / "adapter_model.safetensors").read_bytes()
    wait_loaded(qtbot, page, page.remove("renamed"))
    assert page.table_model.rowCount() == 0
    assert lib.catalogue.find_adapter("renamed") is None


def test_search_and_filters(qtbot, with_base, peft_adapters):
    page = with_base
    for k in ("lora", "ia3", "loha"):
        wait_loaded(qtbot, page, page.import_paths([str(peft_adapters[k])], name=f"m-{k}", tags=[k])[0])
    assert page.table_proxy.rowCount() == 3
    page.search.setText("m-lo")
    assert page.table_proxy.rowCount() == 2
    assert page.count_label.text().startswith("2 of 3")
    page.search.clear()
    page.set_filters(peft_type="IA3")
    assert page.table_proxy.rowCount() == 1 and page.table_proxy.index(0, 0).data() == "m-ia3"
    page.set_filters(peft_type="", tag="loha")
    assert page.table_proxy.index(0, 0).data() == "m-loha"
    page.set_filters(tag="", base="minilm", task="SEQ_CLS")
    assert page.table_proxy.rowCount() == 3
    page.table.sortByColumn(page.table_model.SIZE, Qt.SortOrder.DescendingOrder)
    sizes = [page.table_proxy.index(r, page.table_model.SIZE).data(page.table_proxy.sortRole())
             for r in range(3)]
    assert sizes == sorted(sizes, reverse=True)


def test_drop_a_folder_to_import(qtbot, with_base, peft_adapters):
    page = with_base
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(peft_adapters["dora"]))])
    ev = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(page.imported, timeout=30000) as got:
        page.dropEvent(ev)
    assert got.args[0].name == "minilm-dora"
    qtbot.waitUntil(lambda: page.table_model.rowCount() == 1, timeout=20000)


def test_import_errors_are_shown_readably(qtbot, with_base, peft_adapters, tmp_path, errors_shown):
    page = with_base
    wait_loaded(qtbot, page, page.import_paths([str(peft_adapters["lora"])], name="x")[0])
    w = page.import_paths([str(peft_adapters["lora"])], name="x")[0]
    with pytest.raises(AlreadyExists):
        wait_worker(qtbot, w)
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    w = page.import_paths([str(empty)])[0]
    with pytest.raises(InvalidInput):
        wait_worker(qtbot, w)
    qtbot.waitUntil(lambda: len(errors_shown) == 2)
    titles = {t for t, _m in errors_shown}
    assert titles == {"Cannot do that"}  # user errors, not "unexpected error"
    assert any("already in the catalogue" in m for _t, m in errors_shown)
    assert any("not-an-adapter" in m for _t, m in errors_shown)
    assert page.table_model.rowCount() == 1  # nothing half-imported
