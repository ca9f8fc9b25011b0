"""The Train page: the form on the left; the jobs, the strategy comparison and the queue's log on the right.

The page only composes its panels (:mod:`.form`, :mod:`.jobs`, :mod:`.comparison`) and wires
them together: a job queued from the form shows in the jobs panel (and starts the queue when
asked), the comparison trains with the form's settings, and the queue's and the comparison's
log lines go to the "Queue log" tab.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QSplitter, QTabWidget, QVBoxLayout, QWidget

from adapterstudio.ui.icons import icon
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder, title_label


def training_available() -> bool:
    try:
        import adapterstudio.core.training.spec  # probing: is the training extra importable
        import adapterstudio.services.training  # noqa: F401  (probing)
    except ImportError:
        return False
    return True


class TrainPage(QWidget):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        self.available = training_available()
        if not self.available:
            lay.addWidget(PagePlaceholder("Train", "This page appears once the training engine is part of this build.",
                                          "train"))
            return
        # the panels import the training spec: only once the probe found it
        from adapterstudio.ui.pages.train.comparison import ComparisonPanel
        from adapterstudio.ui.pages.train.form import TrainForm
        from adapterstudio.ui.pages.train.jobs import JobsPanel

        lay.setContentsMargins(24, 20, 24, 12)
        head = QHBoxLayout()
        head.addWidget(title_label("Train"))
        head.addStretch(1)
        lay.addLayout(head)
        self.form = TrainForm(session)
        self.jobs = JobsPanel(session)
        self.comparison = ComparisonPanel(session, self.form.spec_or_error)
        self.queue_log = QPlainTextEdit()
        self.queue_log.setReadOnly(True)
        self.queue_log.setMaximumBlockCount(5000)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.jobs, icon("train"), "Jobs")
        self.tabs.addTab(self.comparison, icon("compare"), "Compare strategies")
        log_tab = QWidget()
        QVBoxLayout(log_tab).addWidget(self.queue_log)
        self.tabs.addTab(log_tab, icon("notes"), "Queue log")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.form)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([430, 650])
        lay.addWidget(self.splitter, 1)

        self.form.queued.connect(self.jobs.queued)
        self.jobs.log.connect(self.queue_log.appendPlainText)
        self.comparison.log.connect(self.queue_log.appendPlainText)
        self.jobs.jobs_updated.connect(self._jobs_updated)
        self.setEnabled(False)  # until the library is open and its runs are read

    def _jobs_updated(self) -> None:
        self.setEnabled(True)
        if self.form.base.count() == 0:
            self.form.refresh_bases()

    # -- window state ----------------------------------------------------------------------
    def save_state(self) -> QByteArray | None:
        return self.splitter.saveState() if self.available else None

    def restore_state(self, data: QByteArray) -> None:
        if self.available:
            self.splitter.restoreState(data)

    def keeps_running(self) -> bool:
        """True while this window supervises a training queue (closing the window hides it instead)."""
        return self.available and self.jobs.queue_running()

    def shutdown(self) -> None:
        if self.available:
            self.jobs.poll_timer.stop()

    def retheme(self) -> None:
        if self.available:
            self.jobs.plot.retheme()
