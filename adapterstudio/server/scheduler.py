"""Generations on the one loaded model: queued, run one at a time on a dedicated thread, cancellable.

:meth:`Scheduler.submit` queues a checked request and returns a :class:`Handle` at once;
the HTTP side never blocks on the model, so ``GET /v1/models`` answers while a
generation runs. The worker thread takes one request at a time and reports what happens
through the handle's *sink* (a callable the HTTP side gives, run on the worker thread):

* :class:`Ready` once the adapter is active and every prompt is encoded and fits the
  context: the request is valid, an HTTP 200 can be sent;
* :class:`Piece` text as it is generated, :class:`ChoiceDone` at the end of each choice;
* :class:`Finished`, or :class:`Failed` (with ``started`` telling whether
  :class:`Ready` came first, i.e. whether a status can still be chosen).

:meth:`Handle.cancel` (a client gone, a timeout) ends the request at the next token of
its generation, or skips it if it is still queued.

This is the seam for running several requests together (cross-adapter batching):
a scheduler that takes several queued handles per step can replace this one without
the HTTP side changing.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapterstudio.core.errors import UserError
from adapterstudio.server.errors import APIError, from_user_error, internal, invalid
from adapterstudio.server.validation import CompletionRequest

if TYPE_CHECKING:
    from adapterstudio.services.inference import Inference

log = logging.getLogger("adapterstudio.server")

DEFAULT_MAX_TOKENS = 128  # a request that names no max_tokens (always capped at what the context leaves)


@dataclass
class Ready:
    prompt_tokens: int  # all prompts together (each counted once, whatever n is)
    max_tokens: list[int]  # per prompt: the request's, capped at what the context leaves


@dataclass
class Piece:
    index: int  # the choice
    text: str


@dataclass
class ChoiceDone:
    index: int
    finish_reason: str  # "stop" or "length"
    completion_tokens: int


@dataclass
class Finished:
    cancelled: bool


@dataclass
class Failed:
    error: APIError
    started: bool  # Ready was sent before the failure


Event = Ready | Piece | ChoiceDone | Finished | Failed


@dataclass(eq=False)  # one request is equal only to itself
class Handle:
    """One submitted request: cancel it, or read how it went (``state``, ``completion_tokens``)."""

    request: CompletionRequest
    adapter: str | None  # None: the base alone
    sink: Callable[[Event], None]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    state: str = "queued"  # queued, preparing, generating, finished, cancelled, failed
    completion_tokens: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """End the request at its next token (any thread); a queued one is skipped."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled", "failed")

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the event loop that listens has closed (server shutting down)
            log.info("request %s: nobody listens any more; cancelling it", self.id)
            self.cancel()


def _nowhere(event: Event) -> None:
    """The sink of a finished request."""


class Scheduler:
    """Runs submitted requests one at a time on its own thread, on one :class:`Inference`."""

    def __init__(self, inference: Inference, *, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 history: int = 64) -> None:
        self.inference = inference
        self.default_max_tokens = default_max_tokens
        self.running: Handle | None = None
        self.recent: deque[Handle] = deque(maxlen=history)  # finished requests, newest last
        self._queue: queue.Queue[Handle | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="adapterstudio-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, request: CompletionRequest, adapter: str | None, sink: Callable[[Event], None]) -> Handle:
        if self._closed:
            raise APIError(503, "The server is shutting down.", type="server_error", code="shutting_down")
        handle = Handle(request, adapter, sink)
        self._queue.put(handle)
        return handle

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs and what waits, and stop the thread."""
        self._closed = True
        running = self.running
        if running is not None:
            running.cancel()
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.cancel()
                self._finish(waiting)
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker thread -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            handle = self._queue.get()
            if handle is None:
                return
            self.running = handle
            try:
                self._run(handle)
            finally:
                self.running = None
                handle.sink = _nowhere  # the finished request keeps no reference to its listener
                self.recent.append(handle)

    def _run(self, h: Handle) -> None:
        if h.cancelled:
            self._finish(h)
            return
        h.state = "preparing"
        try:
            ready = self._prepare(h)
        except APIError as exc:
            self._fail(h, exc, started=False)
            return
        except Exception:  # noqa: BLE001  (a bug: logged with its traceback, the client gets a 500 object)
            log.exception("request %s failed before generating", h.id)
            self._fail(h, internal(), started=False)
            return
        h.state = "generating"
        h.emit(ready)
        try:
            self._generate(h, ready)
        except UserError as exc:
            self._fail(h, from_user_error(exc), started=True)
            return
        except Exception:  # noqa: BLE001  (a bug: logged with its traceback, the client gets an error event)
            log.exception("request %s failed while generating", h.id)
            self._fail(h, internal(), started=True)
            return
        self._finish(h)

    def _prepare(self, h: Handle) -> Ready:
        """Activate the adapter and check every prompt against the context: any error here is a 4xx."""
        inf, req = self.inference, h.request
        try:
            inf.use(h.adapter)
        except UserError as exc:
            raise from_user_error(exc, "model") from None
        task = inf.active.task
        if task != "CAUSAL_LM":
            raise invalid(f"The model {req.model or inf.base.name!r} does not generate text (it runs {task}).",
                          "model")
        context = inf.context_length
        total, caps = 0, []
        for prompt in req.prompts:
            try:
                n = inf.prompt_tokens(prompt)
            except UserError as exc:
                raise from_user_error(exc, req.prompt_param) from None
            room = None if context is None else context - n
            if room is not None and room < 1:
                raise APIError(400, f"This model's maximum context length is {context} tokens, and the "
                                    f"{req.prompt_param} take {n}: no room is left for a completion; shorten them.",
                               param=req.prompt_param, code="context_length_exceeded")
            want = req.max_tokens or self.default_max_tokens
            caps.append(want if room is None else min(want, room))
            total += n
        return Ready(total, caps)

    def _generate(self, h: Handle, ready: Ready) -> None:
        inf, req = self.inference, h.request
        greedy = req.top_p == 0  # nucleus of zero width: the most likely token, as greedy decoding picks
        for p, prompt in enumerate(req.prompts):
            for j in range(req.n):
                if h.cancelled:
                    return
                index = p * req.n + j
                stream = inf.generate(prompt, stream=True, cancel=h.cancel_event, max_new_tokens=ready.max_tokens[p],
                                      temperature=0.0 if greedy else req.temperature,
                                      top_p=None if greedy else req.top_p, stop=req.stop,
                                      seed=None if req.seed is None else req.seed + j)
                for piece in stream:
                    h.emit(Piece(index, piece))
                last = dict(inf.active.last_generation)
                tokens = int(last.get("completion_tokens", 0))
                h.completion_tokens += tokens
                h.emit(ChoiceDone(index, str(last.get("finish_reason", "stop")), tokens))

    def _finish(self, h: Handle) -> None:
        h.state = "cancelled" if h.cancelled else "finished"
        if h.cancelled:
            log.info("request %s cancelled after %d generated tokens", h.id, h.completion_tokens)
        h.emit(Finished(h.cancelled))

    def _fail(self, h: Handle, error: APIError, *, started: bool) -> None:
        h.state = "failed"
        h.emit(Failed(error, started))
