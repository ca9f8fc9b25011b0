"""The Train page on the real training engine: form, preview, estimate, queue, live curves, notification.

Runs a real (tiny) training job in a child process: a random tiny BERT with a character
tokenizer on small synthetic sentences (mechanics, not quality). The event-loop stall
meter runs throughout the job.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("adapterstudio.services.training")
pytestmark = pytest.mark.gui

from tests.ui.conftest import wait_loaded, wait_worker  # noqa: E402
from tests.ui.test_stall import StallMeter, report  # noqa: E402


@pytest.fixture
def tiny_setup(qtbot, window, tmp_path):
    from tests.training_helpers import sentiment_rows, tiny_with_tokenizer

    model = tiny_with_tokenizer("bert", tmp_path / "tinybert")
    lib_page = window.pages["library"]
    wait_loaded(qtbot, lib_page, lib_page.add_base(str(model), "tb"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(80)))
    page = window.pages["train"]
    qtbot.waitUntil(lambda: page.isEnabled() and page.form.base.findText("tb") >= 0, timeout=20000)
    return page, data


@pytest.mark.slow
def test_train_page_runs_a_job_end_to_end(qtbot, window, tiny_setup, lib):
    page, data = tiny_setup
    window.show()
    page.form.base.setCurrentText("tb")
    page.form.data.setText(str(data))
    wait_worker(qtbot, page.form.preview())
    p = page.form.last_preview
    assert p.columns["text_column"] == "text" and p.columns["label_column"] == "label"
    assert sum(p.label_counts.values()) == 80 and len(p.label_counts) >= 2
    assert "train" in page.form.preview_label.text()
    est = wait_worker(qtbot, page.form.estimate())
    assert est["total"] > 0 and "needed" in page.form.estimate_label.text()
    assert page.form.spec_dict()["max_batch_tokens"] is None  # auto
    # the auto recipe decides what the form leaves on "auto"; a value set in the form wins
    d = page.form.spec_dict()
    assert (d["recipe"], d["epochs"], d["early_stopping_patience"], d["metric"]) == ("auto", None, None, None)
    page.form.patience.setValue(0)
    page.form.selection_metric.setCurrentText("accuracy")
    page.form.recipe.setCurrentIndex(1)
    d = page.form.spec_dict()
    assert (d["recipe"], d["early_stopping_patience"], d["metric"]) == ("fixed", 0, "accuracy")
    page.form.recipe.setCurrentIndex(0)
    page.form.patience.setValue(-1)
    page.form.selection_metric.setCurrentText("auto")
    page.form.max_batch_tokens.setValue(256)
    assert page.form.spec_dict()["max_batch_tokens"] == 256
    smaller = wait_worker(qtbot, page.form.estimate())
    assert smaller["activations"] < est["activations"]
    page.form.max_batch_tokens.setValue(0)
    page.form.strategy.setCurrentText("ia3")  # the preset disables the LoRA-only fields
    assert not page.form.lora_r.isEnabled()
    page.form.strategy.setCurrentText("lora")
    assert page.form.lora_r.isEnabled()
    page.form.epochs.setValue(2)
    page.form.cpu.setChecked(True)
    page.form.name.setText("tiny-lora")

    with StallMeter(window.runner) as meter:
        run = wait_worker(qtbot, page.form.enqueue(start=False))
        assert run.status == "queued"
        qtbot.waitUntil(lambda: any(r.id == run.id for r in page.jobs.runs_model.runs()), timeout=20000)
        with qtbot.waitSignal(page.jobs.run_finished, timeout=300000) as done:
            queue = page.jobs.start_queue()
        wait_worker(qtbot, queue, timeout=300000)
    s = meter.summary()
    report("a training job (tiny BERT, CPU)", s)
    finished = done.args[0]
    assert finished.status == "succeeded", finished.error
    assert finished.adapter == "tiny-lora"
    assert "finished" in page.jobs.last_notification
    # live data came from the run's events: a loss curve and validation metrics
    hist = page.jobs.history[run.id]
    assert len(hist["train_loss"]) >= 2 and "eval_loss" in hist
    page.jobs.select_run(run.id)
    assert page.jobs.progress.value() == 1000
    assert page.jobs.open_btn.isEnabled() and not page.jobs.cancel_btn.isEnabled()
    assert lib.catalogue.get_adapter("tiny-lora").lineage["spec"]["strategy"] == "lora"
    # Open adapter -> the Library page selects it, with its metric curves
    lib_page = window.pages["library"]
    page.jobs.open_selected()
    assert window.current_page() == "library"
    qtbot.waitUntil(lambda: lib_page.selected_name() == "tiny-lora", timeout=20000)
    qtbot.waitUntil(lambda: lib_page.detail.adapter.record is not None
                    and lib_page.detail.adapter.record.name == "tiny-lora", timeout=20000)
    assert lib_page.detail.adapter.plot.curves  # the lineage has a metrics history
    assert s["max_ms"] < 100, (s, meter.slow)

    # a new window on the same library lists the run with its curves (jobs survive the window)
    from adapterstudio.ui.main_window import MainWindow

    again = MainWindow(open_library=False)
    qtbot.addWidget(again)
    train2 = again.pages["train"]
    with qtbot.waitSignal(train2.jobs.jobs_updated, timeout=20000):
        again.session.open()
    assert [r.id for r in train2.jobs.runs_model.runs()] == [run.id]
    assert train2.jobs.runs_model.runs()[0].status == "succeeded"
    assert len(train2.jobs.history[run.id]["train_loss"]) == len(hist["train_loss"])
    again.close()
    again.runner.wait(20000)
    again.session.lib.close()


def test_train_page_models(qtmodeltester, tiny_setup):
    page, _data = tiny_setup
    qtmodeltester.check(page.jobs.runs_model)
    page.comparison.model.set_rows([
        {"strategy": "head", "status": "succeeded", "val": 0.7, "test": 0.68, "trainable_params": 1538,
         "total_params": 22_000_000, "train_time_s": 12.0, "peak_memory": 2 ** 28},
        {"strategy": "lora", "status": "failed", "error": "out of memory"},
    ])
    qtmodeltester.check(page.comparison.model)
    assert page.comparison.model.index(0, 5).data() == "0.01%"
    assert page.comparison.model.index(1, 1).data() == "failed"


def test_bad_form_values_are_readable_errors(qtbot, tiny_setup, errors_shown):
    page, data = tiny_setup
    page.form.base.setCurrentText("tb")
    page.form.data.setText(str(data))
    page.form.lr.setText("fast")
    assert page.form.enqueue() is None  # nothing was queued
    assert errors_shown[-1][0] == "Cannot do that" and "'fast' is not a number" in errors_shown[-1][1]
    page.form.lr.clear()
    page.form.data.setText(str(data.parent / "missing.csv"))
    w = page.form.preview()
    from adapterstudio.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="missing.csv does not exist"):
        wait_worker(qtbot, w)
    assert "missing.csv" in page.form.preview_label.text()


def test_a_run_whose_supervisor_died_shows_so_and_can_be_resumed(qtbot, tiny_setup, lib):
    """What a killed app leaves: its worker's launcher holds the run's lock; the page says so and offers Resume
    (which follows the worker, services.training.attach); once nothing holds the run it is interrupted."""
    import subprocess

    from PySide6.QtCore import Qt

    from adapterstudio.core.runs import RunLock, RunStore
    from adapterstudio.core.training.spec import TrainingSpec
    from adapterstudio.services import training

    page, data = tiny_setup
    run = training.enqueue(lib, TrainingSpec(base="tb", data=str(data), strategy="head", max_steps=2, cpu=True,
                                             name="orphan"))
    lock = RunLock.acquire(run.run_dir)
    lock.note(supervisor_pid=2**22 + 12345, launch="L1")  # the supervisor (the killed app) is gone
    launcher = subprocess.Popen(["sleep", "120"], pass_fds=(lock.fd,))  # still starting this launch's worker
    lock.release()
    try:
        RunStore(lib.catalogue).update(run.id, status="running", pid=2**22 + 12345, queue_position=None)
        shown = lambda: page.jobs.runs_model.index(0, 1).data()  # noqa: E731
        qtbot.waitUntil(lambda: (page.jobs.poll(), shown())[1] == "running (supervisor gone)", timeout=20000)
        page.jobs.select_run(run.id)
        assert page.jobs.resume_btn.isEnabled() and page.jobs.cancel_btn.isEnabled()
        assert "Resume follows the worker" in page.jobs.runs_model.index(0, 1).data(Qt.ItemDataRole.ToolTipRole)
    finally:
        launcher.kill()
        launcher.wait()
    qtbot.waitUntil(lambda: (page.jobs.poll(), shown())[1] == "interrupted", timeout=20000)
    page.jobs.select_run(run.id)
    assert page.jobs.resume_btn.isEnabled() and not page.jobs.cancel_btn.isEnabled()
