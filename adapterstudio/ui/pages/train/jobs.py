"""The Train page's jobs panel: the runs with live progress, curves and log, the training queue, notifications.

The runs come from the catalogue's runs table and each run's events (read with
:mod:`adapterstudio.core.events`, tailing by byte offset), polled once a second on the I/O
pool, so the list survives closing and reopening the window and shows jobs started from the
CLI as well. The queue runs on the one-slot accelerator pool; each job is a child process
that :mod:`adapterstudio.services.training` supervises.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QObject, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSystemTrayIcon,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core import events as run_events
from adapterstudio.core.context import Context
from adapterstudio.core.metrics import best as best_value
from adapterstudio.core.runs import FINISHED, RunRecord
from adapterstudio.ui.icons import app_icon, icon
from adapterstudio.ui.models import NameRole, RowTableModel, SortRole, human_time
from adapterstudio.ui.pages.detail import MetricsPlot
from adapterstudio.ui.runner import ACCEL, Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted, show_status

Index = QModelIndex | QPersistentModelIndex


# -- tasks: service calls shaped fn(ctx, lib, ...) -------------------------------------------------
def t_runs(ctx: Context, lib: Any, offsets: dict[str, int]) -> dict[str, Any]:
    """The runs table plus the new events of each run since *offsets* (bytes read so far)."""
    from adapterstudio.services import training

    runs = training.runs(lib).list()
    events: dict[str, list[dict[str, Any]]] = {}
    new_offsets = dict(offsets)
    for r in runs:
        out, new_offsets[r.id] = run_events.read_since(r.run_dir, offsets.get(r.id, 0))
        if out:
            events[r.id] = out
    return {"runs": runs, "events": events, "offsets": new_offsets}


def t_run_queue(ctx: Context, lib: Any) -> Any:
    from adapterstudio.services import training

    return training.run_queue(lib, ctx)


def t_resume(ctx: Context, lib: Any, run_id: str) -> Any:
    """Resume a stopped run; a run whose worker outlived its supervisor is followed, then taken over."""
    from adapterstudio.services import training

    return training.resume(lib, run_id, ctx)


def t_save_probe(ctx: Context, lib: Any, run_id: str) -> Any:
    from adapterstudio.services import training

    return training.save_probe(lib, run_id, None, ctx)


def t_cancel(ctx: Context, lib: Any, run_id: str) -> RunRecord:
    from adapterstudio.services import training

    return training.cancel(lib, run_id)


def event_line(ev: dict[str, Any]) -> str | None:
    """The line an event adds to a run's log on this panel (None: it adds none)."""
    kind = ev.get("event")
    if kind == "eval":
        return f"step {ev.get('step')}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in (ev.get("metrics") or {}).items() if isinstance(v, float))
    if kind == "start":
        return (f"started on {ev.get('device')} ×{ev.get('world_size')} ({ev.get('precision')}), "
                f"{ev.get('trainable_params', 0):,} trainable of {ev.get('total_params', 0):,} parameters")
    if kind == "baseline":
        m = ev.get("metric")
        scores = [f"{split} {v[m]:.4f}" for split, v in (("validation", ev.get("val")), ("test", ev.get("test")))
                  if isinstance(v, dict) and isinstance(v.get(m), (int, float))]
        return f"baseline (logistic regression on the frozen {ev.get('features')} features): {m} " + ", ".join(scores)
    if kind == "refit":
        return f"refit: {ev.get('steps')} steps on {ev.get('train_examples')} training + validation rows"
    if kind in ("error", "oom", "oom_retry", "cancelled", "early_stop", "checkpoint", "done", "end"):
        msg = ev.get("message") or ev.get("path") or ""
        return f"{kind}{': ' + str(msg) if msg else ''}"
    return None


class RunsModel(RowTableModel):
    """The training runs (queued, running, finished) with live progress from their events."""

    COLUMNS = ("Run", "Status", "Base", "Strategy", "Progress", "Best", "Started")
    PROGRESS = 4
    STATUS_COLORS = {"running": "#6d5dfc", "succeeded": "#1e9e5a", "failed": "#d0403a", "cancelled": "#b0803a",
                     "interrupted": "#b0803a", "queued": "#8a8fa3"}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[RunRecord] = []
        self._display: list[tuple[str, ...]] = []
        self.progress: dict[str, tuple[int, int]] = {}

    def set_runs(self, runs: list[RunRecord]) -> None:
        self.beginResetModel()
        self._rows = list(runs)
        self._display = [self._row(r) for r in self._rows]
        self.endResetModel()

    def runs(self) -> list[RunRecord]:
        return list(self._rows)

    def _row(self, r: RunRecord) -> tuple[str, ...]:
        spec = r.spec or {}
        done, total = self.progress.get(r.id, (0, 0))
        prog = "100%" if r.status == "succeeded" else (f"{100 * done / total:.0f}%" if total else "–")
        best = ""
        hist = (r.metrics or {}).get("history") or []
        metric = spec.get("metric") or "accuracy"
        vals = [h.get(f"eval_{metric}") for h in hist if isinstance(h.get(f"eval_{metric}"), (int, float))]
        if vals:
            best = f"{metric} {best_value(metric, vals):.3f}"
        return (r.name, r.status_text, r.base or spec.get("base", "–"), spec.get("strategy", "–"), prog, best,
                human_time(r.started_at or r.created_at))

    def set_progress(self, run_id: str, done: int, total: int) -> None:
        self.progress[run_id] = (done, total)
        for i, r in enumerate(self._rows):
            if r.id == run_id:
                self._display[i] = self._row(r)
                self.dataChanged.emit(self.index(i, self.PROGRESS), self.index(i, self.PROGRESS))

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not self._row_index_ok(index):
            return None
        r = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[index.row()][index.column()]
        if role == NameRole:
            return r.id
        if role == SortRole:
            return self._display[index.row()][index.column()]
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == 1:
            return QColor(self.STATUS_COLORS.get("interrupted" if r.supervisor_gone else r.status, "#8a8fa3"))
        if role == Qt.ItemDataRole.ToolTipRole and r.supervisor_gone:
            return ("The process supervising this run was closed or killed while its worker still runs; "
                    "Resume follows the worker and takes the run over.")
        if role == Qt.ItemDataRole.ToolTipRole and r.error:
            return r.error
        return None


class JobsPanel(QWidget):
    """The runs table, the selected run's progress, baseline, curves and log, and the queue's buttons."""

    jobs_updated = Signal()  # after each poll of the runs
    run_finished = Signal(object)  # RunRecord that went from running to an end state
    log = Signal(str)  # a line of the training queue's log

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.offsets: dict[str, int] = {}
        self.history: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self.logs: dict[str, list[str]] = {}
        self.last_step: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}  # bumped when a run's curves or log change
        self._shown: tuple[str, int, str] | None = None  # (run id, version, status) on screen
        self._runs_signature: list[tuple[str, str, bool, float]] | None = None
        self.statuses: dict[str, str] = {}
        self.queue_worker: Worker | None = None
        self._resuming: dict[str, Worker] = {}  # run id -> its Resume task
        self._poll_worker: Worker | None = None
        self.tray: QSystemTrayIcon | None = None
        self.last_notification = ""
        self._build()
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(1000)
        self.poll_timer.timeout.connect(self.poll)
        session.opened.connect(self._library_opened)

    def _build(self) -> None:
        v = QVBoxLayout(self)
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
        self.plot = MetricsPlot()
        v.addWidget(self.plot, 3)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("The selected run's events appear here.")
        v.addWidget(self.log_view, 1)

    def _library_opened(self, _lib: Any) -> None:
        self.poll()
        self.poll_timer.start()

    # -- selection -------------------------------------------------------------------------
    def selected_run(self) -> RunRecord | None:
        idx = self.runs_view.currentIndex()
        if not idx.isValid():
            return None
        return self.runs_model.runs()[idx.row()]

    def select_run(self, run_id: str) -> None:
        for i, r in enumerate(self.runs_model.runs()):
            if r.id == run_id:
                self.runs_view.selectRow(i)
                return

    # -- polling the runs and their events -------------------------------------------------
    def poll(self) -> Worker | None:
        """Read the runs table and new events (on the I/O pool); one poll at a time."""
        if self.session.lib is None or (self._poll_worker is not None and not self._poll_worker.is_done):
            return None
        self._poll_worker = self.session.run(t_runs, dict(self.offsets), label="poll runs", quiet=True,
                                             on_result=self._polled)
        return self._poll_worker

    def _polled(self, res: dict[str, Any]) -> None:
        self.offsets = res["offsets"]
        for run_id, events in res["events"].items():
            for ev in events:
                self._event(run_id, ev)
        selected = self.selected_run()
        runs: list[RunRecord] = res["runs"]
        for r in runs:
            old = self.statuses.get(r.id)
            if old in ("running", "queued") and r.status in FINISHED:
                self.run_finished.emit(r)
                self.notify(r)
            self.statuses[r.id] = r.status
        signature = [(r.id, r.status, r.supervisor_gone, r.updated_at) for r in runs]
        if signature != self._runs_signature:  # a reset (and relayout) only when runs changed
            self._runs_signature = signature
            self.runs_model.set_runs(runs)
            if selected is not None:
                self.select_run(selected.id)
            elif runs:
                self.runs_view.selectRow(0)
        self._show_run(refresh_only=True)
        self._update_buttons()
        self.jobs_updated.emit()

    def _event(self, run_id: str, ev: dict[str, Any]) -> None:
        self.versions[run_id] = self.versions.get(run_id, 0) + 1
        hist = self.history.setdefault(run_id, {})
        for name, x, y in run_events.points(ev):  # the curves: train_loss per step, eval_<metric> per evaluation
            hist.setdefault(name, []).append((x, y))
        if ev.get("event") == "step":
            self.last_step[run_id] = ev
            self.runs_model.set_progress(run_id, ev.get("step", 0), ev.get("total_steps", 0))
        line = event_line(ev)
        if line is not None:
            self.logs.setdefault(run_id, []).append(line)

    # -- the selected run ------------------------------------------------------------------
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
            self.speed.setText(f"done in {r.duration_s:.0f} s" if r.duration_s else "done")
        elif last and last.get("total_steps"):
            self.progress.setValue(int(1000 * last["step"] / last["total_steps"]))
            eta = last.get("eta_s")
            left = f" · {eta:.0f} s left" if isinstance(eta, (int, float)) and r.status == "running" else ""
            self.speed.setText(f"step {last['step']}/{last['total_steps']} · "
                               f"{last.get('samples_per_s', 0):.1f} samples/s{left}")
        else:
            self.progress.setValue(0)
            self.speed.setText(r.status_text)
        self._update_buttons()

    def _show_baseline(self, r: RunRecord) -> None:
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
        self.resume_btn.setEnabled(r is not None and r.resumable and (resuming is None or resuming.is_done))
        self.open_btn.setEnabled(bool(r is not None and r.adapter))
        queued = any(x.status == "queued" for x in self.runs_model.runs())
        self.start_btn.setEnabled(queued and not self.queue_running())

    # -- actions on the selected run -------------------------------------------------------
    def cancel_selected(self) -> Worker | None:
        r = self.selected_run()
        if r is None:
            return None
        return self.session.run(t_cancel, r.id, label=f"cancel {r.name}", on_result=lambda _r: self.poll())

    def resume_selected(self) -> Worker | None:
        r = self.selected_run()
        if r is None:
            return None
        w = self.session.run(t_resume, r.id, pool=ACCEL, label=f"resume {r.name}", changes=True)
        self._resuming[r.id] = w  # one Resume per run at a time (following an orphan takes a while)
        w.signals.finished.connect(self.poll)
        self._update_buttons()
        return w

    def save_probe_selected(self) -> Worker | None:
        r = self.selected_run()
        if r is None:
            return None
        return self.session.run(t_save_probe, r.id, label=f"save the baseline of {r.name}", changes=True)

    def open_selected(self) -> None:
        r = self.selected_run()
        if r is not None and r.adapter:
            self.session.navigate.emit("library", r.adapter)

    # -- the queue -------------------------------------------------------------------------
    def queued(self, run: RunRecord, start: bool) -> None:
        """A job was added to the queue: show it, and start the queue when asked to."""
        self.poll()
        if start:
            self.start_queue()

    def start_queue(self) -> Worker | None:
        """Run queued jobs one by one on the accelerator slot (a no-op while the queue runs)."""
        if self.queue_worker is not None and not self.queue_worker.is_done:
            return self.queue_worker
        self.queue_worker = self.session.run(t_run_queue, pool=ACCEL, label="training queue")
        self.queue_worker.signals.log.connect(self.log)
        self.queue_worker.signals.finished.connect(self._queue_finished)
        self._update_buttons()
        return self.queue_worker

    def _queue_finished(self) -> None:
        self.session.catalogue_changed.emit()
        self.poll()

    def queue_running(self) -> bool:
        return self.queue_worker is not None and not self.queue_worker.is_done

    def notify(self, run: RunRecord) -> None:
        """A desktop notification when a job ends (where the desktop has a tray)."""
        text = {"succeeded": f"{run.name} finished" + (f": adapter {run.adapter}" if run.adapter else ""),
                "failed": f"{run.name} failed: {run.error}", "cancelled": f"{run.name} was cancelled",
                "interrupted": f"{run.name} was interrupted; it can be resumed"}.get(run.status, run.status)
        self.last_notification = text
        if not QSystemTrayIcon.isSystemTrayAvailable():
            show_status(self, text, 15000)
            return
        if self.tray is None:
            self.tray = QSystemTrayIcon(app_icon(), self)
            self.tray.show()
        icon_kind = (QSystemTrayIcon.MessageIcon.Information if run.status == "succeeded"
                     else QSystemTrayIcon.MessageIcon.Warning)
        self.tray.showMessage("AdapterStudio", text, icon_kind, 10000)
