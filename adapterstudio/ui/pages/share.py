"""The Share page. It drives the sharing service; until that service is in this build it says so."""

from __future__ import annotations

from PySide6.QtWidgets import QVBoxLayout, QWidget

from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder


class SharePage(QWidget):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        lay.addWidget(PagePlaceholder("Share", "This page appears once the sharing service is part of this build.", "share"))
