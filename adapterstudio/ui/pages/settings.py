"""Settings: library location, device, precision, safety switches, theme, sharing, plugins."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core.settings import PRECISIONS, THEMES
from adapterstudio.ui import tasks
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted, primary, title_label

DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps")


def plugin_statuses(ctx=None, lib=None) -> list[dict] | None:
    """The hub-provider plugins with their status, or None while this build has no plugin registry.

    Discovery imports the plugins, so the page runs it on the I/O pool.
    """
    try:
        from adapterstudio.api import ENTRY_POINT_GROUP
        from adapterstudio.api.registry import discover
    except ImportError:
        return None
    disabled = tuple(lib.settings.disabled_plugins) if lib is not None else ()
    return [e.to_json() for e in discover(ENTRY_POINT_GROUP, disabled=disabled)]


def registry_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("adapterstudio.api.registry") is not None
    except ModuleNotFoundError:
        return False


class SettingsPage(QWidget):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(24, 20, 24, 16)
        outer.addWidget(title_label("Settings"))
        outer.addWidget(muted("Stored in one settings file; the library location can also be set with --home "
                              "or $ADAPTERSTUDIO_HOME."))
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        body = QWidget()
        v = QVBoxLayout(body)
        v.setContentsMargins(0, 8, 8, 8)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)

        g = QGroupBox("Library")
        f = QFormLayout(g)
        row = QHBoxLayout()
        self.library_dir = QLineEdit()
        self.library_dir.setPlaceholderText("the platform's data folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.library_dir, 1)
        row.addWidget(browse)
        f.addRow("Location", row)
        self.env_note = muted("")
        f.addRow("", self.env_note)
        v.addWidget(g)

        g = QGroupBox("Compute")
        f = QFormLayout(g)
        self.device = QComboBox()
        self.device.setEditable(True)
        self.device.addItems(DEVICES)
        f.addRow("Device", self.device)
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        f.addRow("Precision", self.precision)
        self.max_resident = QSpinBox()
        self.max_resident.setRange(1, 1024)
        f.addRow("Adapters kept on the device", self.max_resident)
        self.max_host = QSpinBox()
        self.max_host.setRange(1, 4096)
        f.addRow("Adapters kept in memory", self.max_host)
        v.addWidget(g)

        g = QGroupBox("Safety")
        f = QFormLayout(g)
        self.allow_pickle = QCheckBox("Allow pickle weights (.bin, .pt): they can run code, trusted sources only")
        f.addRow(self.allow_pickle)
        self.trust_remote_code = QCheckBox("Trust remote code in model repositories")
        f.addRow(self.trust_remote_code)
        v.addWidget(g)

        g = QGroupBox("Appearance")
        f = QFormLayout(g)
        self.theme = QComboBox()
        self.theme.addItems(THEMES)
        self.theme.currentTextChanged.connect(self._theme_preview)
        f.addRow("Theme", self.theme)
        v.addWidget(g)

        g = QGroupBox("Sharing")
        f = QFormLayout(g)
        self.provider = QLineEdit()
        f.addRow("Default provider", self.provider)
        self.endpoint = QLineEdit()
        self.endpoint.setPlaceholderText("$HF_ENDPOINT or the public Hub")
        f.addRow("Hub endpoint", self.endpoint)
        v.addWidget(g)

        self.plugins_group = QGroupBox("Plugins")
        pl = QVBoxLayout(self.plugins_group)
        self.plugins = QTableWidget(0, 3)
        self.plugins.setHorizontalHeaderLabels(["Plugin", "Status", "Details"])
        self.plugins.horizontalHeader().setStretchLastSection(True)
        self.plugins.verticalHeader().hide()
        pl.addWidget(self.plugins)
        v.addWidget(self.plugins_group)
        v.addStretch(1)

        buttons = QHBoxLayout()
        self.status = muted("", wrap=False)
        buttons.addWidget(self.status, 1)
        self.revert_btn = QPushButton("Revert")
        self.revert_btn.clicked.connect(self.load_from_library)
        self.save_btn = primary(QPushButton("Save"))
        self.save_btn.clicked.connect(self.save)
        buttons.addWidget(self.revert_btn)
        buttons.addWidget(self.save_btn)
        outer.addLayout(buttons)
        self.setEnabled(False)
        self.plugin_rows: list[dict] = []
        session.opened.connect(self._library_opened)
        self.plugins_group.setVisible(registry_available())

    def _library_opened(self, _lib: Any) -> None:
        self.load_from_library()
        self.refresh_plugins()

    def activated(self) -> None:
        self.refresh_plugins()

    def refresh_plugins(self):
        """List the plugins with their status (hidden while the build has no plugin registry)."""
        self.plugins_group.setVisible(registry_available())
        if not registry_available() or self.session.lib is None:
            return None
        return self.session.run(plugin_statuses, label="list plugins", quiet=True, on_result=self._plugins)

    def _plugins(self, statuses: list[dict] | None) -> None:
        statuses = statuses or []
        self.plugin_rows = statuses
        self.plugins.setRowCount(len(statuses))
        for i, p in enumerate(statuses):
            name = str(p.get("name", "?"))
            status = "disabled" if p.get("disabled") else ("loaded" if p.get("ok") else "broken")
            detail = str(p.get("error") or " ".join(x for x in (p.get("distribution"), p.get("version")) if x)
                         or p.get("value") or "")
            for j, text in enumerate((name, status, detail)):
                item = QTableWidgetItem(text)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                if j == 0:
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    item.setCheckState(Qt.CheckState.Unchecked if p.get("disabled") else Qt.CheckState.Checked)
                    item.setToolTip("Uncheck to disable this plugin (saved with Save)")
                self.plugins.setItem(i, j, item)
        self.plugins.resizeColumnsToContents()

    def disabled_plugins(self) -> list[str]:
        out = []
        for i in range(self.plugins.rowCount()):
            item = self.plugins.item(i, 0)
            if item is not None and item.checkState() == Qt.CheckState.Unchecked:
                out.append(item.text())
        return out

    def load_from_library(self) -> None:
        lib = self.session.lib
        if lib is None:
            return
        s = lib.settings
        self.setEnabled(True)
        self.library_dir.setText(s.library_dir)
        env = os.environ.get("ADAPTERSTUDIO_HOME")
        self.env_note.setText(f"In use now: {lib.root}" + (" (from $ADAPTERSTUDIO_HOME or --home, which override this setting)"
                                                            if env else ""))
        self.device.setCurrentText(s.device)
        self.precision.setCurrentText(s.precision)
        self.max_resident.setValue(s.max_resident_adapters)
        self.max_host.setValue(s.max_host_adapters)
        self.allow_pickle.setChecked(s.allow_pickle)
        self.trust_remote_code.setChecked(s.trust_remote_code)
        self.theme.blockSignals(True)
        self.theme.setCurrentText(s.theme)
        self.theme.blockSignals(False)
        self.provider.setText(s.default_hub_provider)
        self.endpoint.setText(s.hub_endpoint)
        self.status.setText("")

    def current_settings(self):
        s = dataclasses.replace(
            self.session.lib.settings, library_dir=self.library_dir.text().strip(), device=self.device.currentText().strip(),
            precision=self.precision.currentText(), max_resident_adapters=self.max_resident.value(),
            max_host_adapters=self.max_host.value(), allow_pickle=self.allow_pickle.isChecked(),
            trust_remote_code=self.trust_remote_code.isChecked(), theme=self.theme.currentText(),
            default_hub_provider=self.provider.text().strip() or "huggingface", hub_endpoint=self.endpoint.text().strip(),
        )
        if self.plugin_rows:
            s = dataclasses.replace(s, disabled_plugins=self.disabled_plugins())
        return s

    def save(self):
        if self.session.lib is None:
            return None
        old_dir = self.session.lib.settings.resolved_library_dir()
        s = self.current_settings()
        w = self.session.run(tasks.save_settings, s, label="save settings")
        w.signals.result.connect(lambda saved: self._saved(saved, old_dir))
        return w

    def _saved(self, settings, old_dir) -> None:
        self.status.setText("Saved.")
        self.session.settings_changed.emit(settings)
        self.refresh_plugins()
        if settings.resolved_library_dir() != old_dir and not os.environ.get("ADAPTERSTUDIO_HOME"):
            self.session.open(str(settings.resolved_library_dir()))

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Library folder", self.library_dir.text() or os.path.expanduser("~"))
        if d:
            self.library_dir.setText(d)

    def _theme_preview(self, name: str) -> None:
        win = self.window()
        if hasattr(win, "apply_theme"):
            win.apply_theme(name)
        else:
            from adapterstudio.ui import theme

            app = QApplication.instance()
            if isinstance(app, QApplication):
                theme.apply(app, name)


__all__ = ["SettingsPage", "QLabel"]
