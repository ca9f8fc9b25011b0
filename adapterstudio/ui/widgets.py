"""Small widgets shared by pages: headers, cards, the status-bar task list."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.ui.icons import icon
from adapterstudio.ui.runner import Runner, Worker


def title_label(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setObjectName("PageTitle")
    return lab


def muted(text: str, wrap: bool = True) -> QLabel:
    lab = QLabel(text)
    lab.setObjectName("Muted")
    lab.setWordWrap(wrap)
    return lab


def primary(button: QPushButton) -> QPushButton:
    button.setProperty("primary", True)
    return button


def show_status(widget: QWidget, text: str, ms: int) -> None:
    """Show *text* for *ms* milliseconds in the status bar of *widget*'s main window (if it is in one)."""
    win = widget.window()
    if isinstance(win, QMainWindow):
        win.statusBar().showMessage(text, ms)


def tool_button(icon_name: str, tip: str, shortcut: str | None = None) -> QToolButton:
    b = QToolButton()
    b.setIcon(icon(icon_name))
    b.setToolTip(tip + (f" ({shortcut})" if shortcut else ""))
    b.setAutoRaise(True)
    return b


class Card(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(16, 14, 16, 14)
        self.layout_.setSpacing(8)


class PagePlaceholder(QWidget):
    """What a page shows while the service it drives has not landed in this build."""

    def __init__(self, title: str, text: str, icon_name: str) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        ic = QLabel()
        ic.setPixmap(icon(icon_name).pixmap(64, 64))
        ic.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(ic)
        t = title_label(title)
        t.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(t)
        m = muted(text)
        m.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(m)
        lay.addStretch(2)


def eta_text(done: float, total: float | None, started: float) -> str:
    if not total or done <= 0:
        return ""
    elapsed = time.monotonic() - started
    remaining = elapsed * (total - done) / done
    if remaining < 1:
        return ""
    m, s = divmod(int(remaining), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m left" if h else (f"{m}m {s:02d}s left" if m else f"{s}s left")


class TaskRow(QWidget):
    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.started = time.monotonic()
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel(worker.name)
        self.bar = QProgressBar()
        self.bar.setFixedWidth(140)
        self.bar.setRange(0, 0)
        self.bar.setTextVisible(False)
        self.cancel = tool_button("stop", "Cancel")
        self.cancel.clicked.connect(worker.cancel)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel)
        worker.signals.progress.connect(self._progress)

    def _progress(self, done: float, total: float | None, message: str) -> None:
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * min(1.0, done / total)))
        eta = eta_text(done, total, self.started)
        text = self.worker.name + (f": {message}" if message else "")
        self.label.setText(text[:70] + (f" · {eta}" if eta else ""))


class TaskIndicator(QWidget):
    """The running tasks, one row each, in the status bar; each can be cancelled."""

    count_changed = Signal(int)

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.lay = QHBoxLayout(self)
        self.lay.setContentsMargins(0, 0, 0, 0)
        self.rows: dict[int, TaskRow] = {}
        runner.task_added.connect(self._added)
        runner.task_finished.connect(self._finished)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def _added(self, w: Worker) -> None:
        if w.quiet or len(self.rows) >= 3:
            return  # the status bar shows at most three; the rest run all the same
        row = TaskRow(w)
        self.rows[id(w)] = row
        self.lay.addWidget(row)
        self.count_changed.emit(len(self.rows))

    def _finished(self, w: Worker) -> None:
        row = self.rows.pop(id(w), None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self.count_changed.emit(len(self.rows))
