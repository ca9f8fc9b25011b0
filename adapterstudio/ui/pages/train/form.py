"""The Train page's form: what to train and how, a preview of the data set and the "will it fit" estimate.

Every answer comes from a service run through the session: the data set preview from
:mod:`adapterstudio.services.datasets`, the settings a strategy starts from from
:mod:`adapterstudio.services.presets`, the memory estimate and the queueing from
:mod:`adapterstudio.services.training`. The form only reads and shows them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core.context import Context
from adapterstudio.core.errors import InvalidInput, UserError
from adapterstudio.core.metrics import METRICS
from adapterstudio.core.records import BaseRecord
from adapterstudio.core.training.spec import STRATEGIES, TASKS, TrainingSpec
from adapterstudio.services import datasets, presets
from adapterstudio.services.datasets import DatasetPreview
from adapterstudio.ui import errors
from adapterstudio.ui.icons import icon
from adapterstudio.ui.models import human_size
from adapterstudio.ui.runner import Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted, primary


# -- tasks: service calls shaped fn(ctx, lib, ...) -------------------------------------------------
def t_preview(ctx: Context, lib: Any, spec_dict: dict[str, Any]) -> DatasetPreview:
    return datasets.preview(TrainingSpec.from_dict(spec_dict))


def t_estimate(ctx: Context, lib: Any, spec_dict: dict[str, Any]) -> dict[str, Any]:
    from adapterstudio.services import training

    return training.estimate(lib, TrainingSpec.from_dict(spec_dict))


def t_enqueue(ctx: Context, lib: Any, spec_dict: dict[str, Any]) -> Any:
    from adapterstudio.services import training

    return training.enqueue(lib, TrainingSpec.from_dict(spec_dict), ctx)


def t_list_bases(ctx: Context, lib: Any) -> list[BaseRecord]:
    return lib.list_bases()


class TrainForm(QWidget):
    """The training spec as a form, with its data set preview and memory estimate."""

    queued = Signal(object, bool)  # the queued RunRecord; whether to start the queue now

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.last_preview: DatasetPreview | None = None
        self.last_estimate: dict[str, Any] | None = None
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        outer.addWidget(scroll)
        body = QWidget()
        v = QVBoxLayout(body)
        v.setContentsMargins(0, 0, 8, 0)
        v.addWidget(self._build_what())
        v.addWidget(self._build_settings())

        g = QGroupBox("Dataset preview")
        gl = QVBoxLayout(g)
        self.preview_label = muted("Choose a dataset to see its columns and labels.")
        self.preview_label.setTextFormat(Qt.TextFormat.RichText)
        gl.addWidget(self.preview_label)
        v.addWidget(g)

        g = QGroupBox("Will it fit?")
        gl = QVBoxLayout(g)
        self.estimate_label = muted("Pick a base to estimate memory.")
        self.estimate_label.setTextFormat(Qt.TextFormat.RichText)
        gl.addWidget(self.estimate_label)
        v.addWidget(g)
        v.addStretch(1)

        buttons = QHBoxLayout()
        self.queue_btn = QPushButton(icon("add"), "Add to queue")
        self.queue_btn.clicked.connect(lambda: self.enqueue(start=False))
        self.train_btn = primary(QPushButton(icon("play", "#ffffff"), "Train"))
        self.train_btn.setToolTip("Queue this job and start the queue (Ctrl+Return)")
        self.train_btn.setShortcut("Ctrl+Return")
        self.train_btn.clicked.connect(lambda: self.enqueue(start=True))
        buttons.addWidget(self.queue_btn)
        buttons.addWidget(self.train_btn)
        v.addLayout(buttons)
        scroll.setWidget(body)
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(300)
        self._estimate_timer.timeout.connect(self.estimate)
        session.catalogue_changed.connect(self.refresh_bases)

    def _build_what(self) -> QGroupBox:
        g = QGroupBox("What to train")
        f = QFormLayout(g)
        self.base = QComboBox()
        self.base.currentTextChanged.connect(self._spec_changed)
        f.addRow("Base model", self.base)
        row = QHBoxLayout()
        self.data = QLineEdit()
        self.data.setPlaceholderText("CSV, JSON Lines, JSON, Parquet or a datasets folder")
        self.data.editingFinished.connect(self.preview)
        b = QPushButton("Browse…")
        b.clicked.connect(self._pick_data)
        row.addWidget(self.data, 1)
        row.addWidget(b)
        f.addRow("Dataset", row)
        self.task = QComboBox()
        self.task.addItems(list(TASKS))
        self.task.currentTextChanged.connect(self._task_changed)
        f.addRow("Task", self.task)
        self.text_column = QLineEdit()
        self.text_column.setPlaceholderText("detected")
        self.label_column = QLineEdit()
        self.label_column.setPlaceholderText("detected")
        f.addRow("Text column", self.text_column)
        f.addRow("Label column", self.label_column)
        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.strategy.setCurrentText("lora")
        self.strategy.currentTextChanged.connect(self.apply_preset)
        f.addRow("Strategy", self.strategy)
        self.name = QLineEdit()
        self.name.setPlaceholderText("automatic: <base>-<strategy>-<time>")
        f.addRow("Adapter name", self.name)
        return g

    def _build_settings(self) -> QGroupBox:
        g = QGroupBox("Settings (preset per strategy; blank means automatic)")
        f = QFormLayout(g)
        self.recipe = QComboBox()
        self.recipe.addItem("Auto: decided from the data", "auto")
        self.recipe.addItem("Fixed: the same for every data set", "fixed")
        self.recipe.setToolTip("Auto gives small data sets enough steps, validates several times, stops early, selects "
                               "by macro-F1 on skewed classes and weighs the loss against the skew; what it decides is "
                               "written into the run's spec. Every setting you fill in below wins.")
        f.addRow("Recipe", self.recipe)
        self.epochs = QDoubleSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setSpecialValueText("auto")
        self.epochs.setValue(0)
        f.addRow("Epochs", self.epochs)
        self.selection_metric = QComboBox()  # (not "metric": that would hide QWidget.metric)
        self.selection_metric.addItem("auto", None)
        for m in METRICS:
            self.selection_metric.addItem(m, m)
        self.selection_metric.setToolTip("The validation metric that picks the best checkpoint and stops early")
        f.addRow("Selection metric", self.selection_metric)
        self.lr = QLineEdit()
        self.lr.setPlaceholderText("auto")
        f.addRow("Learning rate", self.lr)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(0, 4096)
        self.batch_size.setSpecialValueText("auto")
        f.addRow("Batch size", self.batch_size)
        self.max_length = QSpinBox()
        self.max_length.setRange(0, 32768)
        self.max_length.setSpecialValueText("auto")
        f.addRow("Max length", self.max_length)
        self.max_batch_tokens = QSpinBox()
        self.max_batch_tokens.setRange(0, 1 << 24)
        self.max_batch_tokens.setSingleStep(512)
        self.max_batch_tokens.setSpecialValueText("auto")
        self.max_batch_tokens.setToolTip("Most tokens (padding included) in one forward/backward pass. A longer "
                                         "micro-batch runs as several passes with the same gradient, so memory follows "
                                         "this number. Auto: 2048 on CPU, no cap on a GPU.")
        f.addRow("Tokens per pass", self.max_batch_tokens)
        self.lora_r = QSpinBox()
        self.lora_r.setRange(1, 1024)
        self.lora_r.setValue(8)
        f.addRow("Rank (r)", self.lora_r)
        self.lora_alpha = QSpinBox()
        self.lora_alpha.setRange(0, 4096)
        self.lora_alpha.setSpecialValueText("2 × r")
        f.addRow("Alpha", self.lora_alpha)
        self.lora_dropout = QDoubleSpinBox()
        self.lora_dropout.setRange(0, 0.9)
        self.lora_dropout.setSingleStep(0.05)
        self.lora_dropout.setValue(0.05)
        f.addRow("Dropout", self.lora_dropout)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.9)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.2)
        f.addRow("Validation share", self.val_fraction)
        self.patience = QSpinBox()
        self.patience.setRange(-1, 100)
        self.patience.setSpecialValueText("auto")
        self.patience.setValue(-1)
        self.patience.setToolTip("Validations without improvement before stopping; 0 never stops early")
        f.addRow("Early stopping patience", self.patience)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(42)
        f.addRow("Seed", self.seed)
        self.cpu = QCheckBox("Train on the CPU")
        f.addRow(self.cpu)
        for w in (self.epochs, self.batch_size, self.max_length, self.max_batch_tokens, self.lora_r):
            w.valueChanged.connect(self._spec_changed)
        return g

    # -- the spec --------------------------------------------------------------------------
    def apply_preset(self, strategy: str) -> None:
        """The settings *strategy* starts from (services.presets); the rank settings only for low-rank adapters."""
        p = presets.for_strategy(strategy)
        self.epochs.setValue(p.epochs or 0)  # 0 shows "auto"
        self.lora_r.setValue(p.lora_r)
        self.lora_dropout.setValue(p.lora_dropout)
        self.lr.setText("" if p.lr is None else str(p.lr))
        for w in (self.lora_r, self.lora_alpha, self.lora_dropout):
            w.setEnabled(p.low_rank)
        self._spec_changed()

    def spec_dict(self) -> dict[str, Any]:
        """The form as a training spec's fields; raises InvalidInput for a field that cannot be read."""
        lr = self.lr.text().strip()
        try:
            lr_value = float(lr) if lr else None
        except ValueError:
            raise InvalidInput(f"The learning rate {lr!r} is not a number; write e.g. 2e-4, or leave it blank."
                               ) from None
        d = dataclasses.asdict(TrainingSpec())
        d.update(
            base=self.base.currentText(), data=self.data.text().strip(), task=self.task.currentText(),
            strategy=self.strategy.currentText(), name=self.name.text().strip(),
            text_column=self.text_column.text().strip() or None, label_column=self.label_column.text().strip() or None,
            recipe=self.recipe.currentData(), metric=self.selection_metric.currentData(),
            epochs=self.epochs.value() or None, lr=lr_value, batch_size=self.batch_size.value() or None,
            max_length=self.max_length.value() or None, max_batch_tokens=self.max_batch_tokens.value() or None,
            lora_r=self.lora_r.value(),
            lora_alpha=self.lora_alpha.value() or None, lora_dropout=self.lora_dropout.value(),
            val_fraction=self.val_fraction.value(),
            early_stopping_patience=None if self.patience.value() < 0 else self.patience.value(),
            seed=self.seed.value(), cpu=self.cpu.isChecked(),
        )
        return d

    def spec_or_error(self) -> dict[str, Any] | None:
        """:meth:`spec_dict`, or None after showing why the form cannot be read."""
        try:
            return self.spec_dict()
        except UserError as exc:
            errors.show_error(self, exc)
            return None

    def _spec_changed(self, *_a: Any) -> None:
        if self.session.lib is not None:
            self._estimate_timer.start()

    def _task_changed(self, _task: str) -> None:
        self.preview()
        self._spec_changed()

    def _pick_data(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Training data", os.path.expanduser("~"),
                                           "Data (*.csv *.tsv *.jsonl *.json *.parquet);;All files (*)")
        if f:
            self.data.setText(f)
            self.preview()

    # -- the bases -------------------------------------------------------------------------
    def refresh_bases(self) -> None:
        if self.session.lib is None:
            return
        self.session.run(t_list_bases, label="list bases", quiet=True, on_result=self._set_bases)

    def _set_bases(self, bases: list[BaseRecord]) -> None:
        current = self.base.currentText()
        self.base.blockSignals(True)
        self.base.clear()
        for b in bases:
            if b.available:
                self.base.addItem(icon("base"), b.name)
        i = self.base.findText(current)
        self.base.setCurrentIndex(max(0, i))
        self.base.blockSignals(False)
        self._spec_changed()

    # -- the data set preview --------------------------------------------------------------
    def preview(self) -> Worker | None:
        if not self.data.text().strip() or self.session.lib is None:
            return None
        spec = self.spec_or_error()
        if spec is None:
            return None
        self.preview_label.setText("Reading the dataset…")
        return self.session.run(t_preview, spec, label="preview dataset", on_result=self._previewed,
                                on_error=self._preview_failed)

    def _previewed(self, p: DatasetPreview) -> None:
        self.last_preview = p
        cols = ", ".join(f"{k.replace('_column', '')}: <b>{v}</b>" for k, v in p.columns.items() if v)
        text = [f"{p.dataset.get('rows')} rows ({p.dataset.get('format')}) · detected {cols}",
                f"split: {p.sizes['train']} train / {p.sizes['validation']} validation / {p.sizes['test']} test"]
        if p.label_counts:
            total = sum(p.label_counts.values())
            bars = "".join(f"<tr><td>{lbl}</td><td align='right'>{n}</td><td>"
                           f"<span style='color:#6d5dfc'>{'█' * max(1, round(30 * n / total))}</span></td></tr>"
                           for lbl, n in sorted(p.label_counts.items(), key=lambda kv: -kv[1])[:12])
            text.append(f"<table cellspacing='4'>{bars}</table>")
        for w in p.warnings:
            text.append(f"<span style='color:#b0803a'>warning: {w}</span>")
        self.preview_label.setText("<br>".join(text))

    def _preview_failed(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            self.preview_label.setText(f"<span style='color:#d0403a'>{exc}</span>")
        else:
            self.session.runner.unhandled_error.emit(exc, getattr(exc, "__adapterstudio_traceback__", ""))

    # -- will it fit -----------------------------------------------------------------------
    def estimate(self) -> Worker | None:
        if not self.base.currentText() or self.session.lib is None:
            return None
        try:
            spec = self.spec_dict()
        except Exception as exc:  # noqa: BLE001  (a half-typed field: shown where the estimate goes)
            self.estimate_label.setText(str(exc))
            return None
        return self.session.run(t_estimate, spec, label="estimate memory", on_result=self._estimated,
                                on_error=lambda exc: self.estimate_label.setText(str(exc)))

    def _estimated(self, est: dict[str, Any]) -> None:
        self.last_estimate = est
        fits = est.get("fits")
        verdict = {True: "<b style='color:#1e9e5a'>Fits</b>", False: "<b style='color:#d0403a'>Does not fit</b>",
                   None: "<b>Unknown</b>"}[fits]
        avail = est.get("available")
        parts = [f"{verdict}: about {human_size(est.get('total'))} needed on {est.get('device')}"
                 + (f", {human_size(avail)} available" if avail else ""),
                 f"weights {human_size(est.get('weights'))} · gradients {human_size(est.get('gradients'))} · "
                 f"optimizer {human_size(est.get('optimizer'))} · activations {human_size(est.get('activations'))}"]
        parts += list(est.get("notes") or [])
        self.estimate_label.setText("<br>".join(parts))

    # -- queueing --------------------------------------------------------------------------
    def enqueue(self, start: bool = True) -> Worker | None:
        """Queue the form's job (prepared on the I/O pool); *start*: then start the queue."""
        spec = self.spec_or_error()
        if self.session.lib is None or spec is None:
            return None
        w = self.session.run(t_enqueue, spec, label="prepare run")
        w.signals.result.connect(lambda run: self.queued.emit(run, start))
        return w
