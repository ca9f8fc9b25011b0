"""The Share page against the loopback Hub the unmodified huggingface_hub client talks to:
providers, login state, push with the generated card shown first, search cards, pull."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("adapterstudio.services.hub")
pytestmark = pytest.mark.gui

from adapterstudio.core.errors import UserError  # noqa: E402
from tests.ui.conftest import wait_loaded, wait_worker  # noqa: E402

TOKEN = "hf_testTOKEN_gui_9Zq3xK29sLmN4pR8vW"  # made up for the loopback server
USER = "alice"


@pytest.fixture
def server(monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    from tests.hubserver import HubServer

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)  # the test server is on loopback
    monkeypatch.setattr(hfc, "HF_HUB_DISABLE_XET", True)
    # huggingface_hub fixes its token paths at import: give each test its own token store
    monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(tmp_path / "hf-token" / "token"))
    monkeypatch.setattr(hfc, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-token" / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    s = HubServer("regular").start()
    s.add_user(USER, TOKEN)
    yield s
    s.stop()


@pytest.fixture
def share(qtbot, window, server, minilm_path, peft_adapters):
    lib_page = window.pages["library"]
    wait_loaded(qtbot, lib_page, lib_page.add_base(str(minilm_path), "minilm", compute_hash=False,
                                                   hub_id="sentence-transformers/all-MiniLM-L6-v2"))
    wait_loaded(qtbot, lib_page, lib_page.import_paths([str(peft_adapters["lora"])], name="sent-lora")[0])
    window.session.lib.settings.hub_endpoint = server.url
    page = window.pages["share"]
    with qtbot.waitSignal(page.providers_loaded, timeout=20000):
        page.refresh_providers()
    page.provider.setCurrentIndex(page.provider.findData("huggingface"))
    return page


def test_login_push_search_pull(qtbot, window, share, lib, errors_shown, qtmodeltester):
    page = share
    names = [page.provider.itemData(i) for i in range(page.provider.count())]
    assert "huggingface" in names
    wait_worker(qtbot, page.refresh_auth())
    assert "not logged in" in page.auth_label.text() and page.login_btn.isVisibleTo(page)
    status = wait_worker(qtbot, page.login(TOKEN))
    assert status.logged_in and status.user == USER
    assert "logged in as" in page.auth_label.text() and USER in page.auth_label.text()
    assert TOKEN not in page.auth_label.text()

    # the push dialog shows the card that will be uploaded, with the Hub id as base_model
    dlg = page.open_push_dialog("sent-lora", exec_=False)
    assert dlg.repo.text() == f"{USER}/sent-lora"
    qtbot.waitUntil(lambda: dlg.push_btn.isEnabled(), timeout=20000)
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in dlg.card_text
    assert "library_name: peft" in dlg.card_text and str(lib.root) not in dlg.card_text
    dlg.close()
    res = wait_worker(qtbot, page.push("sent-lora", f"{USER}/sent-lora"))
    assert res["id"] == f"{USER}/sent-lora" and "Pushed sent-lora" in page.pull_status.text()

    # search shows the pushed adapter as a card; its card text is read on selection
    page.query.setText("sent")
    items = wait_worker(qtbot, page.search())
    assert [a.id for a in items] == [f"{USER}/sent-lora"]
    qtmodeltester.check(page.results_model)
    qtbot.waitUntil(lambda: "adapter_model.safetensors" in page.detail.toPlainText(), timeout=20000)
    page.base.setCurrentIndex(page.base.findData("minilm"))  # adapters of a catalogued base
    assert [a.id for a in wait_worker(qtbot, page.search())] == [f"{USER}/sent-lora"]

    # pull it back under another name: verified, imported, compatible, listed in the library
    page.pull_name.setText("pulled")
    lib_page = window.pages["library"]
    with qtbot.waitSignal(lib_page.loaded, timeout=60000):
        out = wait_worker(qtbot, page.pull_selected())
    assert out["adapter"] == "pulled" and out["base"] == "minilm"
    rec = lib.catalogue.get_adapter("pulled")
    assert rec.source == "hub:huggingface" and rec.compatible
    assert lib_page.table_model.row_of("pulled") >= 0
    assert "Pulled as pulled" in page.pull_status.text()

    # errors are readable: pulling the same name again
    w = page.pull(f"{USER}/sent-lora", "pulled")
    with pytest.raises(UserError, match="already in the catalogue"):
        wait_worker(qtbot, w)
    qtbot.waitUntil(lambda: bool(errors_shown))
    assert errors_shown[-1][0] == "Cannot do that" and "already in the catalogue" in errors_shown[-1][1]
    wait_worker(qtbot, page.logout())
    assert "not logged in" in page.auth_label.text()


def test_settings_lists_plugins(qtbot, window):
    page = window.pages["settings"]
    qtbot.waitUntil(lambda: page.plugins.rowCount() > 0, timeout=20000)
    assert page.plugins_group.isVisibleTo(page)
    names = {page.plugins.item(i, 0).text(): page.plugins.item(i, 1).text() for i in range(page.plugins.rowCount())}
    assert names.get("huggingface") == "loaded"
