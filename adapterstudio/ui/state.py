"""Window geometry and splitter state: the only use of QSettings in the app.

Everything else the user chooses lives in the typed settings file
(:mod:`adapterstudio.core.settings`). With ``$ADAPTERSTUDIO_HOME`` set (tests, portable
libraries) the state is an INI file inside that folder, so nothing leaks into the
user's real configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

ORG = "AdapterStudio"
APP = "AdapterStudio"


def _settings() -> QSettings:
    home = os.environ.get("ADAPTERSTUDIO_HOME")
    if home:
        return QSettings(str(Path(home) / "window-state.ini"), QSettings.Format.IniFormat)
    return QSettings(ORG, APP)


def save(key: str, value: QByteArray | str | int) -> None:
    s = _settings()
    s.setValue(key, value)
    s.sync()


def load_bytes(key: str) -> QByteArray | None:
    v = _settings().value(key)
    return v if isinstance(v, QByteArray) and not v.isEmpty() else None


def load_value(key: str, default: str | int | None = None):
    return _settings().value(key, default)
