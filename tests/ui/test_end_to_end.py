"""The whole workflow through the window: register MiniLM, train a small LoRA on real words,
see it in the library, switch to it in the playground, push it to the loopback Hub."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("adapterstudio.services.training")
pytest.importorskip("adapterstudio.services.inference")
pytest.importorskip("adapterstudio.services.hub")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

from tests.ui.conftest import wait_loaded, wait_worker  # noqa: E402
from tests.ui.test_share_page import TOKEN, USER, server  # noqa: E402,F401
from tests.ui.test_stall import StallMeter, report  # noqa: E402


def test_register_train_browse_play_push(qtbot, window, minilm_path, tmp_path, server, lib):
    from tests.test_training_cli import vader_words

    window.show()
    data = vader_words(tmp_path / "vader.csv", 160)  # real words with human sentiment ratings (MIT)

    # 1. register MiniLM from the first-run screen's folder route
    lib_page = window.pages["library"]
    assert lib_page.body.currentWidget() is lib_page.first_run
    wait_loaded(qtbot, lib_page, lib_page.add_base(str(minilm_path), "minilm", compute_hash=False,
                                                   hub_id="sentence-transformers/all-MiniLM-L6-v2"))

    # 2. train a small LoRA from the Train page
    train = window.pages["train"]
    window.show_page("train")
    qtbot.waitUntil(lambda: train.form.base.findText("minilm") >= 0, timeout=20000)
    train.form.base.setCurrentText("minilm")
    train.form.data.setText(str(data))
    train.form.strategy.setCurrentText("lora")
    train.form.epochs.setValue(2)
    train.form.max_length.setValue(16)
    train.form.cpu.setChecked(True)
    train.form.name.setText("vader-lora")
    with StallMeter(window.runner) as meter:
        wait_worker(qtbot, train.form.enqueue(start=False))
        with qtbot.waitSignal(train.jobs.run_finished, timeout=600000) as done:
            queue = train.jobs.start_queue()
        wait_worker(qtbot, queue, timeout=600000)
    report("MiniLM LoRA training from the window", meter.summary())
    assert done.args[0].status == "succeeded", done.args[0].error

    # 3. it is in the library, with its lineage and curves
    # the library may already hold it (the queue's end announced a catalogue change) or load it now: either way
    # opening the run's adapter selects it there
    train.jobs.open_selected()
    qtbot.waitUntil(lambda: lib_page.selected_name() == "vader-lora", timeout=30000)
    qtbot.waitUntil(lambda: lib_page.detail.adapter.record is not None
                    and lib_page.detail.adapter.record.name == "vader-lora", timeout=20000)
    assert "vader" in lib_page.detail.adapter.lineage.toPlainText()
    assert lib_page.detail.adapter.plot.curves

    # 4. switch to it in the playground and classify
    play = window.pages["playground"]
    with qtbot.waitSignal(play.loaded, timeout=120000):
        lib_page.detail.adapter.buttons["use"].click()
    assert play.active == "vader-lora" and play.task == "SEQ_CLS"
    res = wait_worker(qtbot, play.send("wonderful"))
    assert set(res[0]["probabilities"]) == {"negative", "positive"}

    # 5. push it to the loopback Hub after reading its card
    share = window.pages["share"]
    window.session.lib.settings.hub_endpoint = server.url
    with qtbot.waitSignal(share.providers_loaded, timeout=20000):
        share.refresh_providers()
    share.provider.setCurrentIndex(share.provider.findData("huggingface"))
    wait_worker(qtbot, share.login(TOKEN))
    dlg = share.open_push_dialog("vader-lora", exec_=False)
    qtbot.waitUntil(lambda: dlg.push_btn.isEnabled(), timeout=20000)
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in dlg.card_text
    dlg.close()
    out = wait_worker(qtbot, share.push("vader-lora", f"{USER}/vader-lora"))
    assert out["id"] == f"{USER}/vader-lora"
    share.query.setText("vader")
    assert [a.id for a in wait_worker(qtbot, share.search())] == [f"{USER}/vader-lora"]
