"""The Library page's first-run screen: shown while the library has no base model, with three ways to add one
and the same self-check as ``adapterstudio doctor``."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.ui import tasks
from adapterstudio.ui.icons import app_icon, icon
from adapterstudio.ui.widgets import Card, muted, primary, title_label

if TYPE_CHECKING:
    from adapterstudio.ui.pages.library import LibraryPage


class FirstRun(QWidget):
    """Shown while the library has no base model: three ways to add one."""

    def __init__(self, page: LibraryPage) -> None:
        super().__init__()
        self.page = page
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        head = QLabel()
        head.setPixmap(app_icon().pixmap(72, 72))
        head.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(head)
        t = title_label("Welcome to AdapterStudio")
        t.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(t)
        m = muted("Adapters are trained on a frozen base model. Start by adding one: nothing is copied, "
                  "the library only records where it is and what it is.")
        m.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(m)
        grid = QGridLayout()
        grid.setSpacing(16)

        c1 = Card()
        c1.layout_.addWidget(_card_title("download", "From the Hugging Face cache"))
        c1.layout_.addWidget(muted("Register every model already downloaded with transformers or huggingface-cli."))
        c1.layout_.addStretch(1)
        self.scan_btn = primary(QPushButton("Scan the cache"))
        self.scan_btn.clicked.connect(lambda: self.page.scan_cache())
        c1.layout_.addWidget(self.scan_btn)
        grid.addWidget(c1, 0, 0)

        c2 = Card()
        c2.layout_.addWidget(_card_title("folder", "From a folder"))
        c2.layout_.addWidget(muted("A model folder with config.json and safetensors weights, on any drive."))
        c2.layout_.addStretch(1)
        self.folder_btn = QPushButton("Choose a folder…")
        self.folder_btn.clicked.connect(self._pick_folder)
        c2.layout_.addWidget(self.folder_btn)
        grid.addWidget(c2, 0, 1)

        c3 = Card()
        c3.layout_.addWidget(_card_title("base", "By Hub id"))
        c3.layout_.addWidget(muted("Name a model on the Hub, e.g. sentence-transformers/all-MiniLM-L6-v2; "
                                   "it is fetched when first used."))
        c3.layout_.addStretch(1)
        row = QHBoxLayout()
        self.hub_id = QLineEdit()
        self.hub_id.setPlaceholderText("owner/name")
        self.hub_id.returnPressed.connect(self._add_hub_id)
        row.addWidget(self.hub_id, 1)
        self.hub_btn = QPushButton("Add")
        self.hub_btn.clicked.connect(self._add_hub_id)
        row.addWidget(self.hub_btn)
        c3.layout_.addLayout(row)
        grid.addWidget(c3, 0, 2)
        for c in (c1, c2, c3):
            c.setMinimumWidth(240)
            c.setMaximumWidth(340)
        wrap = QHBoxLayout()
        wrap.addStretch(1)
        wrap.addLayout(grid)
        wrap.addStretch(1)
        outer.addSpacing(12)
        outer.addLayout(wrap)
        self.status = muted("")
        self.status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(self.status)
        # First-run self-check (the same checks as `adapterstudio doctor`), in the background.
        self.checks = muted("Checking this computer…")
        self.checks.setTextFormat(Qt.TextFormat.RichText)
        self.checks.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(self.checks)
        self._checked = False
        skip = QPushButton("Skip: I only want to import adapters")
        skip.setFlat(True)
        skip.clicked.connect(lambda: self.page.dismiss_first_run())
        outer.addWidget(skip, 0, Qt.AlignmentFlag.AlignCenter)
        outer.addStretch(2)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt naming)
        super().showEvent(event)
        if not self._checked:
            self._checked = True
            self.page.session.run(tasks.self_check, label="self-check", quiet=True,
                                  on_result=self._show_checks, on_error=lambda exc: self.checks.setText(
                                      f"The self-check could not run: {html.escape(str(exc))}"))

    def _show_checks(self, checks: list) -> None:
        problems = [c for c in checks if c.status != "ok"]
        if not problems:
            self.checks.setText(f"Self-check: all {len(checks)} checks passed (see <i>adapterstudio doctor</i>).")
            return
        rows = []
        for c in problems:
            mark = "&#9888;" if c.status == "warning" else "&#10060;"
            advice = f"<br><span style='opacity:0.8'>{html.escape(c.advice)}</span>" if c.advice else ""
            rows.append(f"{mark} <b>{html.escape(c.name)}</b>: {html.escape(c.detail)}{advice}")
        ok = len(checks) - len(problems)
        self.checks.setText(f"Self-check: {ok} of {len(checks)} checks passed.<br>" + "<br>".join(rows))

    def _pick_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Choose a model folder", os.path.expanduser("~"))
        if d:
            self.page.add_base(d)

    def _add_hub_id(self) -> None:
        text = self.hub_id.text().strip()
        if text:
            self.page.add_base(text)  # registered under its Hub id, e.g. "owner/name"


def _card_title(icon_name: str, text: str) -> QWidget:
    w = QWidget()
    h = QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    ic = QLabel()
    ic.setPixmap(icon(icon_name).pixmap(22, 22))
    h.addWidget(ic)
    lab = QLabel(text)
    lab.setStyleSheet("font-weight: 600; font-size: 14px;")
    h.addWidget(lab, 1)
    return w
