"""How failures reach the user.

* A :class:`~adapterstudio.core.errors.UserError` (bad file, unknown name, wrong base)
  is shown as its one readable sentence, with the hint and details on demand.
* Anything else is a bug: the exception hook logs the traceback to the log file and
  shows a dialog saying so, with the traceback under "Show Details". The app keeps
  running; it never dies on an exception in a slot.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from adapterstudio.core.errors import UserError

log = logging.getLogger("adapterstudio.ui")

# Dialogs are not shown while this is False (tests use it to collect errors instead).
INTERACTIVE = True
shown: list[tuple[str, str]] = []  # (title, message) of every error shown; tests read it


def describe(exc: BaseException, tb: str = "") -> tuple[str, str, str]:
    """(title, one-line message, details) for an exception."""
    if isinstance(exc, UserError):
        message = str(exc)
        if exc.hint:
            message += f"\n\n{exc.hint}"
        return "Cannot do that", message, tb or f"{type(exc).__name__}: {exc}"
    tb = tb or getattr(exc, "__adapterstudio_traceback__", "") or "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = f"Something went wrong inside AdapterStudio: {type(exc).__name__}: {exc}"
    path = log_path()
    if path:
        message += f"\n\nThe details were written to {path}."
    return "Unexpected error", message, tb


def show_error(parent: QWidget | None, exc: BaseException, tb: str = "") -> QMessageBox | None:
    title, message, details = describe(exc, tb)
    shown.append((title, message))
    if not INTERACTIVE:
        return None
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning if isinstance(exc, UserError) else QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(message)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if details:
        box.setDetailedText(details)  # "Show Details..." on demand
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()  # window-modal, does not spin a nested event loop
    return box


# -- logging ---------------------------------------------------------------------------
_log_file: Path | None = None


def log_path() -> Path | None:
    return _log_file


def setup_logging(folder: Path) -> Path | None:
    """Log to ``<library>/logs/gui.log`` (INFO and up) as well as stderr (WARNING and up)."""
    global _log_file
    root = logging.getLogger("adapterstudio")
    root.setLevel(logging.INFO)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "gui.log"
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
            fh = logging.FileHandler(path, encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(fh)
        _log_file = path
    except OSError:
        _log_file = None
    return _log_file


# -- the exception hook ------------------------------------------------------------------
class _Relay(QObject):
    """Carries exceptions from any thread to the GUI thread."""

    caught = Signal(object, str)


class ExceptionHook:
    def __init__(self, parent_getter) -> None:
        self._parent_getter = parent_getter
        self._relay = _Relay()
        self._relay.caught.connect(self._show)
        self._prev_hook = sys.excepthook
        self._prev_thread_hook = threading.excepthook

    def install(self) -> None:
        sys.excepthook = self._hook
        threading.excepthook = lambda args: self._hook(args.exc_type, args.exc_value, args.exc_traceback)

    def uninstall(self) -> None:
        sys.excepthook = self._prev_hook
        threading.excepthook = self._prev_thread_hook

    def _hook(self, etype: type[BaseException], value: BaseException | None, tb: TracebackType | None) -> None:
        if issubclass(etype, KeyboardInterrupt):
            app = QApplication.instance()
            if app is not None:
                QTimer.singleShot(0, app.quit)
            return
        text = "".join(traceback.format_exception(etype, value, tb))
        if isinstance(value, UserError):
            log.info("user error: %s", value)
        else:
            log.error("unhandled exception:\n%s", text)
        self._relay.caught.emit(value, text)  # queued to the GUI thread when raised elsewhere

    def _show(self, exc: BaseException, text: str) -> None:
        show_error(self._parent_getter(), exc, text)
