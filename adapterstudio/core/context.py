"""The context long work runs with: progress reports and cooperative cancellation.

Long work (hashing, imports, training supervision, downloads) is a plain function that
takes a :class:`TaskContext`. It knows nothing of Qt; the GUI's runner adapts the
callbacks to signals, the CLI to a progress bar, tests to a recorder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from adapterstudio.core.errors import Cancelled

ProgressCallback = Callable[[float, "float | None", str], None]


@runtime_checkable
class TaskContext(Protocol):
    def progress(self, done: float, total: float | None = None, message: str = "") -> None: ...

    def log(self, message: str) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    def check_cancelled(self) -> None: ...


class Context:
    """A thread-safe context with optional callbacks.

    ``cancel()`` may be called from any thread; the work notices at its next
    ``check_cancelled()``.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self._on_progress = on_progress
        self._on_log = on_log
        self._cancel = threading.Event()

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        if self._on_progress is not None:
            self._on_progress(done, total, message)

    def log(self, message: str) -> None:
        if self._on_log is not None:
            self._on_log(message)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")


NULL_CONTEXT = Context()
