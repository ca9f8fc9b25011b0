"""The Playground page. It drives the inference service; until that service is in this build it says so."""

from __future__ import annotations

from PySide6.QtWidgets import QVBoxLayout, QWidget

from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder


class PlaygroundPage(QWidget):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        lay.addWidget(PagePlaceholder("Playground", "This page appears once the inference service is part of this build.", "playground"))
