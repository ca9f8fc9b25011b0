"""The GUI's handle on the library: opens it off the GUI thread and tells pages when it changed.

It holds no logic of its own: every operation is a service call run through the
:class:`~adapterstudio.ui.runner.Runner`; the functions in :mod:`adapterstudio.ui.tasks`
only adapt service signatures to ``fn(ctx, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from adapterstudio.ui import tasks
from adapterstudio.ui.runner import IO, Runner, Worker


class Session(QObject):
    opened = Signal(object)  # Library
    open_failed = Signal(object)  # exception
    catalogue_changed = Signal()  # adapters or bases added, removed, renamed, tagged
    adapter_changed = Signal(object)  # one AdapterRecord updated in place
    settings_changed = Signal(object)  # Settings
    navigate = Signal(str, object)  # page name, argument (e.g. an adapter name to show)

    def __init__(self, runner: Runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.lib: Any = None
        self.home: str | None = None

    def open(self, home: str | None = None) -> Worker:
        self.home = home
        return self.runner.submit(tasks.open_library, home, label="open library", on_result=self._opened,
                                  on_error=self._open_failed)

    def _opened(self, lib: Any) -> None:
        old, self.lib = self.lib, lib
        self.opened.emit(lib)
        if old is not None and old is not lib:
            pass  # connections are per thread; the old object is dropped with its pools' threads

    def _open_failed(self, exc: BaseException) -> None:
        self.open_failed.emit(exc)
        self.runner.unhandled_error.emit(exc, getattr(exc, "__adapterstudio_traceback__", ""))

    def run(self, fn: Callable[..., Any], *args: Any, pool: str = IO, label: str = "", changes: bool = False,
            quiet: bool = False, **kwargs: Any) -> Worker:
        """Run ``fn(ctx, lib, *args)``; with *changes*, announce catalogue_changed on success."""
        w = self.runner.submit(fn, self.lib, *args, pool=pool, label=label or fn.__name__.replace("_", " "),
                               quiet=quiet, **kwargs)
        if changes:
            w.signals.result.connect(lambda _r: self.catalogue_changed.emit())
        return w
