"""The Train page: a form built from the training spec, a dataset preview, the "will it fit"
estimate, a queue of jobs with live curves, and the strategy comparison table.

Everything is a call into :mod:`adapterstudio.services.training` run through the runner:
preparing a run and previews on the I/O pool, the job itself (a child process the
service supervises) on the one-slot accelerator pool. The jobs list is read from the
catalogue's runs table and each run's ``events.jsonl``, so it survives closing and
reopening the window, and shows jobs started from the CLI as well.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from typing import Any

from PySide6.QtCore import QByteArray, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
                               QPushButton, QScrollArea, QSpinBox, QSplitter, QSystemTrayIcon, QTableView, QTabWidget,
                               QVBoxLayout, QWidget)

from adapterstudio.core import events as run_events
from adapterstudio.core.metrics import best as best_value
from adapterstudio.core.runs import FINISHED, RESUMABLE
from adapterstudio.ui.icons import app_icon, icon
from adapterstudio.ui.models import NameRole, RowTableModel, SortRole, human_count, human_size, human_time
from adapterstudio.ui.runner import ACCEL, Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder, muted, primary, title_label

Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()


def training_available() -> bool:
    try:
        import adapterstudio.core.training.spec  # probing: is the training extra importable
        import adapterstudio.services.training  # noqa: F401  (probing)
    except ImportError:
        return False
    return True


# -- tasks: service calls shaped fn(ctx, lib, ...) -------------------------------------------------
def t_preview(ctx, lib, spec_dict: dict[str, Any]) -> dict[str, Any]:
    """Load, check and split the dataset the way training will; report columns and label counts."""
    from adapterstudio.core.training.data import prepare
    from adapterstudio.core.training.spec import TrainingSpec

    spec = TrainingSpec.from_dict({k: v for k, v in spec_dict.items() if k not in ("base", "name")} | {"base": "x"})
    prepared = prepare(spec)
    counts = Counter(r.get("label") for r in prepared.train + prepared.validation + prepared.test
                     if isinstance(r.get("label"), (str, int)))
    sample = [{k: v for k, v in r.items() if isinstance(v, (str, int, float))} for r in prepared.train[:5]]
    return {"columns": prepared.columns, "labels": prepared.labels, "label_counts": dict(counts),
            "sizes": {s: len(getattr(prepared, s)) for s in ("train", "validation", "test")},
            "dataset": prepared.dataset, "warnings": prepared.warnings, "sample": sample}


def t_estimate(ctx, lib, spec_dict: dict[str, Any]) -> dict[str, Any]:
    from adapterstudio.core.training.spec import TrainingSpec
    from adapterstudio.services import training

    spec = TrainingSpec.from_dict(spec_dict)
    base = lib.catalogue.get_base(spec.base)
    return training.memory_estimate(lib, spec.with_defaults(base.num_parameters))


def t_enqueue(ctx, lib, spec_dict: dict[str, Any]):
    from adapterstudio.core.training.spec import TrainingSpec
    from adapterstudio.services import training

    return training.enqueue(lib, TrainingSpec.from_dict(spec_dict), ctx)


def t_run_queue(ctx, lib):
    from adapterstudio.services import training

    return training.run_queue(lib, ctx)


def t_resume(ctx, lib, run_id: str):
    """Resume a stopped run; a run whose worker outlived its supervisor is followed, then taken over."""
    from adapterstudio.services import training

    return training.resume(lib, run_id, ctx)


def status_text(r: Any) -> str:
    """A run's status as the runs table shows it (as 'adapterstudio runs list' does)."""
    return "running (supervisor gone)" if r.supervisor_gone else r.status


def can_resume(r: Any) -> bool:
    """Stopped, or running without its supervisor (Resume follows its worker, then takes the run over)."""
    return r.status in RESUMABLE or r.supervisor_gone


def t_save_probe(ctx, lib, run_id: str):
    from adapterstudio.services import training

    return training.save_probe(lib, run_id, None, ctx)


def t_cancel(ctx, lib, run_id: str):
    from adapterstudio.services import training

    return training.cancel(lib, run_id)


def t_compare(ctx, lib, spec_dict: dict[str, Any], strategies: list[str]):
    from adapterstudio.core.training.spec import TrainingSpec
    from adapterstudio.services import training

    return training.compare(lib, TrainingSpec.from_dict(spec_dict), strategies, ctx)


def t_runs(ctx, lib, offsets: dict[str, int]) -> dict[str, Any]:
    """The runs table plus the new events of each run since *offsets* (bytes read so far)."""
    from adapterstudio.services import training

    runs = training.runs(lib).list()
    events: dict[str, list[dict[str, Any]]] = {}
    new_offsets = dict(offsets)
    for r in runs:
        p = run_events.events_path(r.run_dir)
        start = offsets.get(r.id, 0)
        try:
            if p.stat().st_size <= start:
                continue
        except OSError:
            continue
        out, new_offsets[r.id] = run_events.read_since(r.run_dir, start)
        events[r.id] = out
    return {"runs": runs, "events": events, "offsets": new_offsets}


# -- models -------------------------------------------------------------------------------------------
class RunsModel(RowTableModel):
    """The training runs (queued, running, finished) with live progress from their events."""

    COLUMNS = ("Run", "Status", "Base", "Strategy", "Progress", "Best", "Started")
    STATUS_COLORS = {"running": "#6d5dfc", "succeeded": "#1e9e5a", "failed": "#d0403a", "cancelled": "#b0803a",
                     "interrupted": "#b0803a", "queued": "#8a8fa3"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._runs: list[Any] = []
        self._display: list[tuple[str, ...]] = []
        self.progress: dict[str, tuple[int, int]] = {}

    def set_runs(self, runs: list[Any]) -> None:
        self.beginResetModel()
        self._runs = list(runs)
        self._display = [self._row(r) for r in self._runs]
        self.endResetModel()

    def runs(self) -> list[Any]:
        return list(self._runs)

    def _row(self, r: Any) -> tuple[str, ...]:
        spec = r.spec or {}
        done, total = self.progress.get(r.id, (0, 0))
        prog = "100%" if r.status == "succeeded" else (f"{100 * done / total:.0f}%" if total else "–")
        best = ""
        hist = (r.metrics or {}).get("history") or []
        metric = spec.get("metric") or "accuracy"
        vals = [h.get(f"eval_{metric}") for h in hist if isinstance(h.get(f"eval_{metric}"), (int, float))]
        if vals:
            best = f"{metric} {best_value(metric, vals):.3f}"
        return (r.name, status_text(r), r.base or spec.get("base", "–"), spec.get("strategy", "–"), prog, best,
                human_time(r.started_at or r.created_at))

    def set_progress(self, run_id: str, done: int, total: int) -> None:
        self.progress[run_id] = (done, total)
        for i, r in enumerate(self._runs):
            if r.id == run_id:
                self._display[i] = self._row(r)
                self.dataChanged.emit(self.index(i, 4), self.index(i, 4))

    @property
    def _rows(self) -> list:
        return self._runs

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not (0 <= index.row() < len(self._runs)):
            return None
        r = self._runs[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[index.row()][index.column()]
        if role == NameRole:
            return r.id
        if role == SortRole:
            return self._display[index.row()][index.column()]
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == 1:
            from PySide6.QtGui import QColor

            return QColor(self.STATUS_COLORS.get("interrupted" if r.supervisor_gone else r.status, "#8a8fa3"))
        if role == Qt.ItemDataRole.ToolTipRole and r.supervisor_gone:
            return ("The process supervising this run was closed or killed while its worker still runs; "
                    "Resume follows the worker and takes the run over.")
        if role == Qt.ItemDataRole.ToolTipRole and r.error:
            return r.error
        return None


class CompareModel(RowTableModel):
    """The playbook's table: one row per strategy with its metric, parameters, time and memory."""

    COLUMNS = ("Strategy", "Status", "Validation", "Test", "Trainable params", "Share", "Time", "Peak memory")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []
        self._display: list[tuple[str, ...]] = []

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self._display = [self._fmt(r) for r in self._rows]
        self.endResetModel()

    @staticmethod
    def _fmt(r: dict[str, Any]) -> tuple[str, ...]:
        def num(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, (int, float)) else "–"

        tp, total = r.get("trainable_params"), r.get("total_params")
        share = f"{100 * tp / total:.2f}%" if tp and total else "–"
        t = r.get("train_time_s")
        return (r.get("strategy", "?"), r.get("status", "?") if not r.get("error") else "failed",
                num(r.get("val")), num(r.get("test")), human_count(tp), share,
                f"{t:.0f} s" if isinstance(t, (int, float)) else "–", human_size(r.get("peak_memory")))

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not (0 <= index.row() < len(self._rows)):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[index.row()][index.column()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._rows[index.row()].get("error") or None
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() >= 2:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


# -- the page -----------------------------------------------------------------------------------------
class TrainPage(QWidget):
    jobs_updated = Signal()  # after each poll of the runs
    run_finished = Signal(object)  # RunRecord that went from running to an end state

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        if not training_available():
            self.available = False
            lay.addWidget(PagePlaceholder("Train", "This page appears once the training engine is part of this build.",
                                          "train"))
            return
        self.available = True
        from adapterstudio.core.training.spec import STRATEGIES, TASKS

        self.STRATEGIES, self.TASKS = STRATEGIES, TASKS
        lay.setContentsMargins(24, 20, 24, 12)
        head = QHBoxLayout()
        head.addWidget(title_label("Train"))
        head.addStretch(1)
        lay.addLayout(head)
        split = QSplitter(Qt.Orientation.Horizontal)
        lay.addWidget(split, 1)
        self.splitter = split
        split.addWidget(self._build_form())
        split.addWidget(self._build_jobs())
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([430, 650])

        self.offsets: dict[str, int] = {}
        self.history: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self.logs: dict[str, list[str]] = {}
        self.last_step: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}  # bumped when a run's curves or log change
        self._shown: tuple[str, int] | None = None  # (run id, version) on screen
        self.statuses: dict[str, str] = {}
        self.queue_worker: Worker | None = None
        self._resuming: dict[str, Worker] = {}  # run id -> its Resume task
        self._poll_worker: Worker | None = None
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(1000)
        self.poll_timer.timeout.connect(self.poll)
        self.tray: QSystemTrayIcon | None = None
        session.opened.connect(lambda _lib: (self.poll(), self.poll_timer.start()))
        session.catalogue_changed.connect(self._bases_maybe_changed)
        self.setEnabled(False)

    # -- the form --------------------------------------------------------------------------
    def _build_form(self) -> QWidget:
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        body = QWidget()
        v = QVBoxLayout(body)
        v.setContentsMargins(0, 0, 8, 0)
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
        self.task.addItems(list(self.TASKS))
        self.task.currentTextChanged.connect(lambda _t: (self.preview(), self._spec_changed()))
        f.addRow("Task", self.task)
        self.text_column = QLineEdit()
        self.text_column.setPlaceholderText("detected")
        self.label_column = QLineEdit()
        self.label_column.setPlaceholderText("detected")
        f.addRow("Text column", self.text_column)
        f.addRow("Label column", self.label_column)
        self.strategy = QComboBox()
        self.strategy.addItems(list(self.STRATEGIES))
        self.strategy.setCurrentText("lora")
        self.strategy.currentTextChanged.connect(self.apply_preset)
        f.addRow("Strategy", self.strategy)
        self.name = QLineEdit()
        self.name.setPlaceholderText("automatic: <base>-<strategy>-<time>")
        f.addRow("Adapter name", self.name)
        v.addWidget(g)

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
        self.metric = QComboBox()
        for m in ("auto", "accuracy", "macro_f1", "loss", "rmse", "r2"):
            self.metric.addItem(m, None if m == "auto" else m)
        self.metric.setToolTip("The validation metric that picks the best checkpoint and stops early")
        f.addRow("Selection metric", self.metric)
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
        v.addWidget(g)

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
        return scroll

    def apply_preset(self, strategy: str) -> None:
        """Good defaults per strategy: the rank and dropout for adapters, fewer epochs for full."""
        # epochs 0: the recipe's step budget
        presets = {"head": (0, 8, 0.0), "partial": (0, 8, 0.0), "lora": (0, 8, 0.05), "dora": (0, 8, 0.05),
                   "ia3": (0, 8, 0.0), "loha": (0, 8, 0.05), "lokr": (0, 8, 0.05), "full": (0, 8, 0.0)}
        epochs, r, drop = presets.get(strategy, (0, 8, 0.05))
        self.epochs.setValue(epochs)
        self.lora_r.setValue(r)
        self.lora_dropout.setValue(drop)
        self.lr.clear()  # the service picks the learning rate for the strategy and model size
        adapter_like = strategy in ("lora", "dora", "loha", "lokr")
        for w in (self.lora_r, self.lora_alpha, self.lora_dropout):
            w.setEnabled(adapter_like)
        self._spec_changed()

    def spec_dict(self) -> dict[str, Any]:
        from adapterstudio.core.training.spec import TrainingSpec

        from adapterstudio.core.errors import InvalidInput

        lr = self.lr.text().strip()
        try:
            lr_value = float(lr) if lr else None
        except ValueError:
            raise InvalidInput(f"The learning rate {lr!r} is not a number; write e.g. 2e-4, or leave it blank.") from None
        d = dataclasses.asdict(TrainingSpec())
        d.update(
            base=self.base.currentText(), data=self.data.text().strip(), task=self.task.currentText(),
            strategy=self.strategy.currentText(), name=self.name.text().strip(),
            text_column=self.text_column.text().strip() or None, label_column=self.label_column.text().strip() or None,
            recipe=self.recipe.currentData(), metric=self.metric.currentData(),
            epochs=self.epochs.value() or None, lr=lr_value, batch_size=self.batch_size.value() or None,
            max_length=self.max_length.value() or None, max_batch_tokens=self.max_batch_tokens.value() or None,
            lora_r=self.lora_r.value(),
            lora_alpha=self.lora_alpha.value() or None, lora_dropout=self.lora_dropout.value(),
            val_fraction=self.val_fraction.value(), early_stopping_patience=None if self.patience.value() < 0 else self.patience.value(),
            seed=self.seed.value(), cpu=self.cpu.isChecked(),
        )
        return d

    def _pick_data(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Training data", os.path.expanduser("~"),
                                           "Data (*.csv *.tsv *.jsonl *.json *.parquet);;All files (*)")
        if f:
            self.data.setText(f)
            self.preview()

    def _bases_maybe_changed(self) -> None:
        if self.session.lib is None:
            return
        self.session.run(lambda ctx, lib: lib.list_bases(), label="list bases", quiet=True,
                         on_result=self._set_bases)

    def _set_bases(self, bases: list[Any]) -> None:
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

    def _spec_changed(self, *_a: Any) -> None:
        if self.available and self.session.lib is not None:
            self._estimate_timer.start()

    def preview(self):
        if not self.data.text().strip() or self.session.lib is None:
            return None
        spec = self._spec_or_error()
        if spec is None:
            return None
        self.preview_label.setText("Reading the dataset…")
        return self.session.run(t_preview, spec, label="preview dataset", on_result=self._previewed,
                                on_error=self._preview_failed)

    def _previewed(self, p: dict[str, Any]) -> None:
        self.last_preview = p
        cols = ", ".join(f"{k.replace('_column', '')}: <b>{v}</b>" for k, v in p["columns"].items() if v)
        sizes = p["sizes"]
        text = [f"{p['dataset'].get('rows')} rows ({p['dataset'].get('format')}) · detected {cols}",
                f"split: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test"]
        if p["label_counts"]:
            total = sum(p["label_counts"].values())
            bars = "".join(f"<tr><td>{lbl}</td><td align='right'>{n}</td><td>"
                           f"<span style='color:#6d5dfc'>{'█' * max(1, round(30 * n / total))}</span></td></tr>"
                           for lbl, n in sorted(p["label_counts"].items(), key=lambda kv: -kv[1])[:12])
            text.append(f"<table cellspacing='4'>{bars}</table>")
        for w in p["warnings"]:
            text.append(f"<span style='color:#b0803a'>warning: {w}</span>")
        self.preview_label.setText("<br>".join(text))

    def _preview_failed(self, exc: BaseException) -> None:
        from adapterstudio.core.errors import UserError

        if isinstance(exc, UserError):
            self.preview_label.setText(f"<span style='color:#d0403a'>{exc}</span>")
        else:
            self.session.runner.unhandled_error.emit(exc, getattr(exc, "__adapterstudio_traceback__", ""))

    def estimate(self):
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

    def _spec_or_error(self) -> dict[str, Any] | None:
        from adapterstudio.core.errors import UserError
        from adapterstudio.ui import errors

        try:
            return self.spec_dict()
        except UserError as exc:
            errors.show_error(self, exc)
            return None

    def enqueue(self, start: bool = True):
        spec = self._spec_or_error()
        if self.session.lib is None or spec is None:
            return None
        w = self.session.run(t_enqueue, spec, label="prepare run")
        w.signals.result.connect(lambda run: self._queued(run, start))
        return w

    def _queued(self, run: Any, start: bool) -> None:
        self.poll()
        if start:
            self.start_queue()

    def start_queue(self) -> Worker | None:
        """Run queued jobs one by one on the accelerator slot (a no-op while the queue runs)."""
        if self.queue_worker is not None and not self.queue_worker.is_done:
            return self.queue_worker
        self.queue_worker = self.session.run(t_run_queue, pool=ACCEL, label="training queue")
        self.queue_worker.signals.log.connect(self._queue_log)
        self.queue_worker.signals.finished.connect(lambda: (self.session.catalogue_changed.emit(), self.poll()))
        self._update_buttons()
        return self.queue_worker

    def _queue_log(self, line: str) -> None:
        self.queue_log.appendPlainText(line)

    # -- the jobs panel ----------------------------------------------------------------------
    def _build_jobs(self) -> QWidget:
        self.tabs = QTabWidget()
        jobs = QWidget()
        v = QVBoxLayout(jobs)
        self.runs_model = RunsModel(self)
        self.runs_view = QTableView()
        self.runs_view.setModel(self.runs_model)
        self.runs_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.runs_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.runs_view.verticalHeader().hide()
        self.runs_view.setShowGrid(False)
        self.runs_view.setAlternatingRowColors(True)
        self.runs_view.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.runs_view.selectionModel().currentRowChanged.connect(lambda *_: self._show_run())
        v.addWidget(self.runs_view, 2)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        row.addWidget(self.progress, 1)
        self.speed = muted("", wrap=False)
        row.addWidget(self.speed)
        v.addLayout(row)
        # the run against its frozen-feature baseline (gain, or the negative-transfer warning)
        self.baseline_label = QLabel("")
        self.baseline_label.setWordWrap(True)
        self.baseline_label.setObjectName("Baseline")
        self.baseline_label.hide()
        v.addWidget(self.baseline_label)
        buttons = QHBoxLayout()
        self.cancel_btn = QPushButton(icon("stop"), "Cancel")
        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn = QPushButton(icon("resume"), "Resume")
        self.resume_btn.clicked.connect(self.resume_selected)
        self.open_btn = QPushButton(icon("adapter"), "Open adapter")
        self.open_btn.clicked.connect(self.open_selected)
        self.probe_btn = QPushButton(icon("adapter"), "Save baseline as adapter")
        self.probe_btn.setToolTip("Save this run's frozen-feature probe (logistic regression) as a head adapter")
        self.probe_btn.clicked.connect(self.save_probe_selected)
        self.start_btn = QPushButton(icon("play"), "Start queue")
        self.start_btn.clicked.connect(self.start_queue)
        for b in (self.start_btn, self.cancel_btn, self.resume_btn, self.open_btn, self.probe_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        v.addLayout(buttons)
        from adapterstudio.ui.pages.detail import MetricsPlot

        self.plot = MetricsPlot()
        v.addWidget(self.plot, 3)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("The selected run's events appear here.")
        v.addWidget(self.log_view, 1)
        self.tabs.addTab(jobs, icon("train"), "Jobs")

        cmp = QWidget()
        cv = QVBoxLayout(cmp)
        cv.addWidget(muted("Train several strategies on the same split of the form's dataset and compare them: "
                           "the baseline head, partial unfreezing, LoRA and full fine-tuning side by side."))
        boxes = QHBoxLayout()
        self.compare_boxes: dict[str, QCheckBox] = {}
        for s in self.STRATEGIES:
            cb = QCheckBox(s)
            cb.setChecked(s in ("head", "lora", "full"))
            self.compare_boxes[s] = cb
            boxes.addWidget(cb)
        boxes.addStretch(1)
        cv.addLayout(boxes)
        self.compare_btn = QPushButton(icon("compare"), "Run comparison")
        self.compare_btn.clicked.connect(self.compare)
        cv.addWidget(self.compare_btn, 0, Qt.AlignmentFlag.AlignLeft)
        self.compare_model = CompareModel(self)
        self.compare_view = QTableView()
        self.compare_view.setModel(self.compare_model)
        self.compare_view.verticalHeader().hide()
        self.compare_view.horizontalHeader().setStretchLastSection(True)
        cv.addWidget(self.compare_view, 1)
        self.queue_log = QPlainTextEdit()
        self.queue_log.setReadOnly(True)
        self.queue_log.setMaximumBlockCount(5000)
        self.tabs.addTab(cmp, icon("compare"), "Compare strategies")
        log_tab = QWidget()
        lv = QVBoxLayout(log_tab)
        lv.addWidget(self.queue_log)
        self.tabs.addTab(log_tab, icon("notes"), "Queue log")
        return self.tabs

    def compare(self):
        strategies = [s for s, cb in self.compare_boxes.items() if cb.isChecked()]
        spec = self._spec_or_error()
        if spec is None:
            return None
        w = self.session.run(t_compare, spec, strategies, pool=ACCEL, label="compare strategies",
                             changes=True)
        w.signals.log.connect(self._queue_log)
        w.signals.result.connect(self.compare_model.set_rows)
        return w

    def selected_run(self) -> Any | None:
        idx = self.runs_view.currentIndex()
        if not idx.isValid():
            return None
        return self.runs_model.runs()[idx.row()]

    def select_run(self, run_id: str) -> None:
        for i, r in enumerate(self.runs_model.runs()):
            if r.id == run_id:
                self.runs_view.selectRow(i)
                return

    def poll(self) -> Worker | None:
        """Read the runs table and new events (on the I/O pool); one poll at a time."""
        if self.session.lib is None or (self._poll_worker is not None and not self._poll_worker.is_done):
            return None
        self._poll_worker = self.session.run(t_runs, dict(self.offsets), label="poll runs", quiet=True,
                                            on_result=self._polled)
        return self._poll_worker

    def _polled(self, res: dict[str, Any]) -> None:
        self.setEnabled(True)
        if self.base.count() == 0:
            self._bases_maybe_changed()
        self.offsets = res["offsets"]
        for run_id, events in res["events"].items():
            for ev in events:
                self._event(run_id, ev)
        selected = self.selected_run()
        for r in res["runs"]:
            old = self.statuses.get(r.id)
            if old in ("running", "queued") and r.status in FINISHED:
                self.run_finished.emit(r)
                self.notify(r)
            self.statuses[r.id] = r.status
        signature = [(r.id, r.status, r.supervisor_gone, r.updated_at) for r in res["runs"]]
        if signature != getattr(self, "_runs_signature", None):  # a reset (and relayout) only when runs changed
            self._runs_signature = signature
            self.runs_model.set_runs(res["runs"])
            if selected is not None:
                self.select_run(selected.id)
            elif res["runs"]:
                self.runs_view.selectRow(0)
        self._show_run(refresh_only=True)
        self._update_buttons()
        self.jobs_updated.emit()

    def _event(self, run_id: str, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        self.versions[run_id] = self.versions.get(run_id, 0) + 1
        hist = self.history.setdefault(run_id, {})
        log = self.logs.setdefault(run_id, [])
        for name, x, y in run_events.points(ev):  # the curves: train_loss per step, eval_<metric> per evaluation
            hist.setdefault(name, []).append((x, y))
        if kind == "step":
            self.last_step[run_id] = ev
            self.runs_model.set_progress(run_id, ev.get("step", 0), ev.get("total_steps", 0))
        elif kind == "eval":
            log.append(f"step {ev.get('step')}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in (ev.get("metrics") or {}).items() if isinstance(v, float)))
        elif kind == "start":
            log.append(f"started on {ev.get('device')} ×{ev.get('world_size')} ({ev.get('precision')}), "
                       f"{ev.get('trainable_params', 0):,} trainable of {ev.get('total_params', 0):,} parameters")
        elif kind == "baseline":
            m = ev.get("metric")
            scores = [f"{split} {v[m]:.4f}" for split, v in (("validation", ev.get("val")), ("test", ev.get("test")))
                      if isinstance(v, dict) and isinstance(v.get(m), (int, float))]
            log.append(f"baseline (logistic regression on the frozen {ev.get('features')} features): {m} "
                       + ", ".join(scores))
        elif kind == "refit":
            log.append(f"refit: {ev.get('steps')} steps on {ev.get('train_examples')} training + validation rows")
        elif kind in ("error", "oom", "oom_retry", "cancelled", "early_stop", "checkpoint", "done", "end"):
            msg = ev.get("message") or ev.get("path") or ""
            log.append(f"{kind}{': ' + str(msg) if msg else ''}")

    def _show_run(self, refresh_only: bool = False) -> None:
        r = self.selected_run()
        if r is None:
            self.plot.clear()
            self.log_view.clear()
            self.progress.setValue(0)
            self.speed.setText("")
            self.baseline_label.hide()
            self._update_buttons()
            return
        self._show_baseline(r)
        shown = (r.id, self.versions.get(r.id, 0), r.status)
        if shown != self._shown:  # redraw only what changed since the last poll
            self._shown = shown
            hist = self.history.get(r.id, {})
            self.plot.set_series({k: ([p[0] for p in v], [p[1] for p in v]) for k, v in hist.items()})
            text = "\n".join(self.logs.get(r.id, [])) + (f"\n{r.status}: {r.error}" if r.error else "")
            old = self.log_view.toPlainText()
            if text.startswith(old) and old:
                if text != old:
                    self.log_view.appendPlainText(text[len(old):].lstrip("\n"))  # only the new lines
            else:
                self.log_view.setPlainText(text)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        last = self.last_step.get(r.id)
        if r.status == "succeeded":
            self.progress.setValue(1000)
            self.speed.setText(f"done in {r.duration_s:.0f} s" if getattr(r, "duration_s", None) else "done")
        elif last and last.get("total_steps"):
            self.progress.setValue(int(1000 * last["step"] / last["total_steps"]))
            eta = last.get("eta_s")
            self.speed.setText(f"step {last['step']}/{last['total_steps']} · {last.get('samples_per_s', 0):.1f} samples/s"
                               + (f" · {eta:.0f} s left" if isinstance(eta, (int, float)) and r.status == "running" else ""))
        else:
            self.progress.setValue(0)
            self.speed.setText(status_text(r))
        self._update_buttons()

    def _show_baseline(self, r: Any) -> None:
        from adapterstudio.services import baseline

        text = baseline.lines(r.metrics if isinstance(r.metrics, dict) else {}, r.spec.get("strategy"))
        warn = bool(text) and text[0].startswith("WARNING")
        self.baseline_label.setText("\n".join(text))
        self.baseline_label.setStyleSheet("color: #d0403a; font-weight: 600;" if warn else "")
        self.baseline_label.setVisible(bool(text))

    def _update_buttons(self) -> None:
        r = self.selected_run()
        status = r.status if r is not None else ""
        self.probe_btn.setEnabled(bool(r is not None and isinstance(r.metrics, dict) and r.metrics.get("baseline")
                                       and r.spec.get("task", "seq-cls") in ("seq-cls", "token-cls", "image-cls")))
        self.cancel_btn.setEnabled(status in ("running", "queued"))
        resuming = self._resuming.get(r.id) if r is not None else None
        self.resume_btn.setEnabled(r is not None and can_resume(r) and (resuming is None or resuming.is_done))
        self.open_btn.setEnabled(bool(r is not None and r.adapter))
        running = self.queue_worker is not None and not self.queue_worker.is_done
        self.start_btn.setEnabled(not running and any(x.status == "queued" for x in self.runs_model.runs()))

    def cancel_selected(self):
        r = self.selected_run()
        if r is None:
            return None
        return self.session.run(t_cancel, r.id, label=f"cancel {r.name}", on_result=lambda _r: self.poll())

    def resume_selected(self):
        r = self.selected_run()
        if r is None:
            return None
        w = self.session.run(t_resume, r.id, pool=ACCEL, label=f"resume {r.name}", changes=True)
        self._resuming[r.id] = w  # one Resume per run at a time (following an orphan takes a while)
        w.signals.finished.connect(self.poll)
        self._update_buttons()
        return w

    def save_probe_selected(self):
        r = self.selected_run()
        if r is None:
            return None
        return self.session.run(t_save_probe, r.id, label=f"save the baseline of {r.name}", changes=True)

    def open_selected(self) -> None:
        r = self.selected_run()
        if r is not None and r.adapter:
            self.session.navigate.emit("library", r.adapter)

    def notify(self, run: Any) -> None:
        """A desktop notification when a job ends (where the desktop has a tray)."""
        text = {"succeeded": f"{run.name} finished" + (f": adapter {run.adapter}" if run.adapter else ""),
                "failed": f"{run.name} failed: {run.error}", "cancelled": f"{run.name} was cancelled",
                "interrupted": f"{run.name} was interrupted; it can be resumed"}.get(run.status, run.status)
        self.last_notification = text
        if not QSystemTrayIcon.isSystemTrayAvailable():
            win = self.window()
            if hasattr(win, "statusBar"):
                win.statusBar().showMessage(text, 15000)
            return
        if self.tray is None:
            self.tray = QSystemTrayIcon(app_icon(), self)
            self.tray.show()
        icon_kind = QSystemTrayIcon.MessageIcon.Information if run.status == "succeeded" else QSystemTrayIcon.MessageIcon.Warning
        self.tray.showMessage("AdapterStudio", text, icon_kind, 10000)

    # -- window state ----------------------------------------------------------------------
    def save_state(self) -> QByteArray | None:
        return self.splitter.saveState() if self.available else None

    def restore_state(self, data: QByteArray) -> None:
        if self.available:
            self.splitter.restoreState(data)

    def keeps_running(self) -> bool:
        """True while this window supervises a training queue (closing the window hides it instead)."""
        return self.available and self.queue_worker is not None and not self.queue_worker.is_done

    def shutdown(self) -> None:
        if self.available:
            self.poll_timer.stop()

    def retheme(self) -> None:
        if self.available:
            self.plot.retheme()


__all__ = ["TrainPage", "time", "QLabel"]
