"""Run plain ``fn(ctx, ...)`` functions off the GUI thread and relay what they report as signals.

The shape follows superqt's worker: a :class:`QRunnable` that owns a composed
:class:`QObject` of signals (a QRunnable cannot emit signals itself). Two pools, as
Anki does with its two executors:

* ``"accel"``: one thread. Model loading, training supervision and generation share
  the accelerator, so they queue behind each other instead of competing for memory.
* ``"io"``: a few threads for scans, imports, hashing, exports and network transfers.

The work itself is a plain function that takes a :class:`~adapterstudio.core.context.Context`
as its first argument; it knows nothing of Qt. The GUI thread never waits on either pool.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from adapterstudio.core.context import Context
from adapterstudio.core.errors import Cancelled

log = logging.getLogger("adapterstudio.ui")

ACCEL = "accel"
IO = "io"


class WorkerSignals(QObject):
    """Signals of one worker. Emitted from the pool thread; delivered queued on the GUI thread."""

    started = Signal()
    progress = Signal(float, object, str)  # done, total (float or None), message
    log = Signal(str)
    posted = Signal(object)  # free-form events a function posts with ctx.emit(...) (e.g. tokens, metrics)
    result = Signal(object)
    error = Signal(object)  # the exception; its formatted traceback is on worker.traceback
    cancelled = Signal()
    finished = Signal()  # always last, after result, error or cancelled


class WorkerContext(Context):
    """A Context whose callbacks emit the worker's signals, with progress throttled to ~25 Hz."""

    MIN_INTERVAL = 0.04

    def __init__(self, signals: WorkerSignals) -> None:
        super().__init__(on_progress=self._progress, on_log=signals.log.emit)
        self._signals = signals
        self._last = 0.0

    def _progress(self, done: float, total: float | None, message: str) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last < self.MIN_INTERVAL:
            return
        self._last = now
        self._signals.progress.emit(float(done), None if total is None else float(total), message)

    def emit(self, event: Any) -> None:
        """Post an arbitrary event (a streamed token, a metrics row...) to the GUI thread."""
        self._signals.posted.emit(event)


class Worker(QRunnable):
    """One call of ``fn(ctx, *args, **kwargs)`` on a pool thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, label: str = "", pool: str = IO, **kwargs: Any) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the Runner keeps the Python object alive until finished
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.name = label or getattr(fn, "__name__", "task")  # shown in the status bar
        self.pool = pool
        self.signals = WorkerSignals()
        self.ctx = WorkerContext(self.signals)
        self.traceback = ""
        self.quiet = False
        self.state = "queued"  # queued | running | done | failed | cancelled
        self.last_progress: tuple[float, float | None, str] = (0.0, None, "")
        self.value: Any = None  # the result, once done
        self.exception: BaseException | None = None  # the error, once failed
        self.delivered = False  # True once 'finished' reached the GUI thread (all earlier signals did too)
        self.signals.progress.connect(self._remember_progress)
        self.signals.finished.connect(self._mark_delivered)

    @Slot()
    def _mark_delivered(self) -> None:
        self.delivered = True

    @Slot(float, object, str)
    def _remember_progress(self, done: float, total: float | None, message: str) -> None:
        self.last_progress = (done, total, message)

    def cancel(self) -> None:
        """Ask the work to stop; it does so at its next ``ctx.check_cancelled()``."""
        self.ctx.cancel()

    @property
    def is_done(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def run(self) -> None:  # on the pool thread
        sig = self.signals
        if self.ctx.cancelled:
            self.state = "cancelled"
            sig.cancelled.emit()
            sig.finished.emit()
            return
        self.state = "running"
        sig.started.emit()
        try:
            value = self.fn(self.ctx, *self.args, **self.kwargs)
        except Cancelled:
            self.state = "cancelled"
            sig.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, never swallowed
            self.traceback = traceback.format_exc()
            self.state = "failed"
            self.exception = exc
            try:
                exc.__adapterstudio_traceback__ = self.traceback  # type: ignore[attr-defined]  # travels with it
            except AttributeError:
                pass
            sig.error.emit(exc)
        else:
            self.value = value
            self.state = "done"
            sig.result.emit(value)
        finally:
            self.args, self.kwargs = (), {}  # drop references (a token, a model) once done
            sig.finished.emit()


def _tolerate_deleted(cb: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """Wrap a result/progress callback so that a widget closed while its task ran is
    not an error: the task's answer simply has nowhere to go any more."""
    if cb is None:
        return None

    def call(*args: Any) -> Any:
        try:
            return cb(*args)
        except RuntimeError as exc:
            if "already deleted" in str(exc):
                log.debug("dropped a task callback: its widget was closed (%s)", exc)
                return None
            raise

    return call


class Runner(QObject):
    """Owns the two pools and the set of live workers.

    ``submit`` returns the :class:`Worker` and starts it on the next turn of the event
    loop; connect to ``worker.signals`` (before returning to the loop) or pass the
    ``on_*`` callbacks. An error with no ``on_error`` handler goes to
    :attr:`unhandled_error`, which the main window shows: never a silent failure.
    """

    task_added = Signal(object)  # Worker
    task_finished = Signal(object)  # Worker
    unhandled_error = Signal(object, str)  # exception, traceback text
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, io_threads: int = 4) -> None:
        super().__init__(parent)
        self.pools = {ACCEL: QThreadPool(self), IO: QThreadPool(self)}
        self.pools[ACCEL].setMaxThreadCount(1)
        self.pools[IO].setMaxThreadCount(io_threads)
        self._live: list[Worker] = []
        self._lock = threading.Lock()

    @property
    def workers(self) -> list[Worker]:
        return list(self._live)

    def is_busy(self, pool: str | None = None) -> bool:
        return any(w.pool == pool or pool is None for w in self._live)

    def submit(
        self, fn: Callable[..., Any], *args: Any, pool: str = IO, label: str = "",
        on_result: Callable[[Any], None] | None = None, on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[float, float | None, str], None] | None = None,
        on_log: Callable[[str], None] | None = None, on_event: Callable[[Any], None] | None = None,
        on_cancelled: Callable[[], None] | None = None, on_finished: Callable[[], None] | None = None,
        quiet: bool = False, **kwargs: Any,
    ) -> Worker:
        if pool not in self.pools:
            raise ValueError(f"unknown pool {pool!r}")
        w = Worker(fn, *args, label=label, pool=pool, **kwargs)
        w.quiet = quiet  # background refreshes are not listed in the status bar
        s = w.signals
        on_result, on_progress, on_log, on_event, on_cancelled, on_error, on_finished = (
            _tolerate_deleted(cb) for cb in (on_result, on_progress, on_log, on_event, on_cancelled, on_error, on_finished))
        for signal, cb in ((s.result, on_result), (s.progress, on_progress), (s.log, on_log), (s.posted, on_event),
                           (s.cancelled, on_cancelled), (s.error, on_error)):
            if cb is not None:
                signal.connect(cb)
        if on_error is None:
            s.error.connect(lambda exc, w=w: self.unhandled_error.emit(exc, w.traceback))
        s.error.connect(lambda exc, w=w: log.log(
            logging.INFO if _is_user_error(exc) else logging.ERROR, "task %s failed: %s\n%s", w.name, exc, w.traceback))
        if on_finished is not None:
            s.finished.connect(on_finished)
        s.finished.connect(lambda w=w: self._done(w))
        was_busy = bool(self._live)
        self._live.append(w)
        self.task_added.emit(w)
        if not was_busy:
            self.busy_changed.emit(True)
        # Start on the next turn of the event loop, so that connections the caller makes to
        # the returned worker's signals are in place before it can emit anything.
        QTimer.singleShot(0, self, lambda: self.pools[pool].start(w))
        return w

    def _done(self, w: Worker) -> None:
        import shiboken6

        if not shiboken6.isValid(self):  # the window (and this runner) went away while the task ran
            return
        if w in self._live:
            self._live.remove(w)
        self.task_finished.emit(w)
        if not self._live:
            self.busy_changed.emit(False)

    def cancel_all(self) -> None:
        for w in list(self._live):
            w.cancel()

    def wait(self, msecs: int = -1) -> bool:
        """Block until both pools are idle (only for shutdown and tests)."""
        ok = True
        for p in self.pools.values():
            ok = p.waitForDone(msecs) and ok
        return ok


def _is_user_error(exc: BaseException) -> bool:
    from adapterstudio.core.errors import UserError

    return isinstance(exc, UserError)
