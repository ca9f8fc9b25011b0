"""The Train page. It drives the training engine; until that service is in this build it says so."""

from __future__ import annotations

from PySide6.QtWidgets import QVBoxLayout, QWidget

from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder


class TrainPage(QWidget):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        lay.addWidget(PagePlaceholder("Train", "This page appears once the training engine is part of this build.", "train"))
