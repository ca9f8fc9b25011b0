"""The OpenAI-compatible application: ``GET /v1/models[/{id}]``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` on one :class:`~adapterstudio.services.inference.Inference`.

A model id is the base's catalogue name, or ``BASE:ADAPTER`` for one of its adapters (hot-swapped
per request). What a client can rely on:

* every error is OpenAI's JSON error object with a fitting status, and a request is fully
  checked (fields, model, adapter, prompt length against the context) *before* any stream
  starts, so a bad streaming request gets a 4xx, never an empty 200 stream; only what fails
  after the stream began (a timeout, a bug) arrives as an ``error`` event inside it;
* request bodies are always read to their end, so a kept-alive connection stays usable after
  an error;
* a client that goes away (streaming or not) cancels its generation at the next token, and
  every request has a time limit;
* generation runs on one worker thread (:mod:`.scheduler`), so listing models never waits
  for it;
* with an API key, every route needs ``Authorization: Bearer KEY``; the key is never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapterstudio.core.errors import InvalidInput, NotFound, UserError
from adapterstudio.server.errors import SERVER_ERROR, APIError, from_user_error, internal, invalid, model_not_found
from adapterstudio.server.scheduler import (
    DEFAULT_MAX_TOKENS,
    ChoiceDone,
    Event,
    Failed,
    Finished,
    Handle,
    Piece,
    Ready,
    Scheduler,
)
from adapterstudio.server.validation import CompletionRequest, parse_json, parse_request
from adapterstudio.services.inference import adapter_task

if TYPE_CHECKING:
    import uvicorn

    from adapterstudio.services.inference import Inference

log = logging.getLogger("adapterstudio.server")

MAX_BODY = 16 * 1024 * 1024  # bytes of one request body
DEFAULT_TIMEOUT = 600.0  # seconds a request may take, waiting in the queue included


def create_app(inference: Inference, *, api_key: str | None = None, request_timeout: float = DEFAULT_TIMEOUT,
               default_max_tokens: int = DEFAULT_MAX_TOKENS) -> Starlette:
    """The application serving *inference*'s base and its adapters (the caller keeps and closes *inference*).

    ``app.state.scheduler`` is the :class:`~adapterstudio.server.scheduler.Scheduler` running the
    generations; it stops with the application's lifespan.
    """
    scheduler = Scheduler(inference, default_max_tokens=default_max_tokens)
    api = _OpenAI(inference, scheduler, api_key=api_key or None, timeout=float(request_timeout))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.close)

    routes = [
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.get_model, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _bug})
    app.state.scheduler = scheduler
    return app


# -- errors ------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), as OpenAI's error object, body drained."""
    assert isinstance(exc, HTTPException)
    try:
        await _drain(request)
    except APIError:
        pass  # a body over the limit: it was read to its end all the same, and the route's error says more
    if exc.status_code == 404:
        err = APIError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
    elif exc.status_code == 405:
        err = APIError(405, f"{request.method} is not allowed on {request.url.path}.", code="method_not_allowed",
                       headers=dict(exc.headers or {}))
    else:
        err = APIError(exc.status_code, str(exc.detail), code=None, headers=dict(exc.headers or {}))
    return await _api_error(request, err)


async def _bug(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer and uvicorn logs the traceback; the client gets an object, not a page
    return await _api_error(request, internal("The server failed on this request; its log has the details."))


async def _drain(request: Request) -> bytes:
    """The whole body (read to its end whatever its size, so the connection stays usable)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_BODY:
                chunks.append(chunk)
    except ClientDisconnect:
        return b""  # nobody is left to answer
    if size > MAX_BODY:
        raise APIError(413, f"The request body is larger than {MAX_BODY // (1024 * 1024)} MiB.",
                       code="request_too_large")
    return b"".join(chunks)


# -- the routes --------------------------------------------------------------------------
class _OpenAI:
    def __init__(self, inference: Inference, scheduler: Scheduler, *, api_key: str | None, timeout: float) -> None:
        self.inference, self.scheduler, self.timeout = inference, scheduler, timeout
        self._key = api_key.encode() if api_key else None
        self.base = inference.base.name

    async def _open(self, request: Request) -> bytes:
        """The body (always drained first), once the API key is checked."""
        body = await _drain(request)
        if self._key is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            challenge = {"WWW-Authenticate": "Bearer"}
            if scheme.lower() != "bearer" or not token.strip():
                raise APIError(401, "This server needs an API key: send it in the header 'Authorization: Bearer KEY'.",
                               code="missing_api_key", headers=challenge)
            if not hmac.compare_digest(token.strip().encode(), self._key):
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", headers=challenge)
        return body

    # models
    def _models(self) -> list[dict[str, Any]]:
        base = self.inference.base
        data = [{"id": base.name, "object": "model", "created": int(base.created_at), "owned_by": "adapterstudio"}]
        for a in self.inference.lib.list_adapters(base=base.name):
            if a.compatible is not False and adapter_task(a) in (None, "CAUSAL_LM"):
                data.append({"id": f"{base.name}:{a.name}", "object": "model", "created": int(a.created_at),
                             "owned_by": "adapterstudio"})
        return data

    async def list_models(self, request: Request) -> Response:
        await self._open(request)
        return JSONResponse({"object": "list", "data": await run_in_threadpool(self._models)})

    async def get_model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if not model_id:  # /v1/models/
            return await self.list_models(request)
        await self._open(request)
        for m in await run_in_threadpool(self._models):
            if m["id"] == model_id:
                return JSONResponse(m)
        raise model_not_found(model_id, f"this server runs base {self.base!r} and the adapters GET /v1/models lists.")

    def _resolve(self, model: str | None) -> str | None:
        """The adapter a model id names (None: the base alone); a 404 for what this server does not have."""
        if model is None or model == self.base:
            return None
        prefix = self.base + ":"
        if not model.startswith(prefix) or model == prefix:
            raise model_not_found(model, f"this server runs base {self.base!r}; use {self.base!r} or "
                                         f"'{self.base}:ADAPTER' (GET /v1/models lists them).")
        name = model[len(prefix):]
        try:
            rec = self.inference.lib.catalogue.get_adapter(name)
        except NotFound:
            raise model_not_found(model, f"the library has no adapter {name!r}.") from None
        except UserError as exc:  # a name the catalogue refuses, a library it cannot read
            raise from_user_error(exc, "model") from None
        task = adapter_task(rec)
        if task not in (None, "CAUSAL_LM"):
            raise invalid(f"Adapter {name!r} is a {task} adapter: it does not generate text.", "model")
        return name

    # completions
    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        req = parse_request(parse_json(await self._open(request)), chat=chat)
        adapter = await run_in_threadpool(self._resolve, req.model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:  # on the worker thread: hand the event to this request's coroutine
            loop.call_soon_threadsafe(events.put_nowait, event)

        handle = self.scheduler.submit(req, adapter, sink)
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        answer = _Answer(req, self.base, handle)
        try:
            first = await self._next(events, handle, deadline)
            if isinstance(first, Failed):
                raise first.error
            if not isinstance(first, Ready):
                raise APIError(503, "The request was cancelled before it started (the server is stopping, "
                                    "or the client left).", type=SERVER_ERROR, code="cancelled")
            answer.ready = first
            if req.stream:
                stream = self._events(answer, events, deadline, watcher)
                return _EventStream(stream, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            while True:
                ev = await self._next(events, handle, deadline)
                if isinstance(ev, Failed):
                    raise ev.error
                if isinstance(ev, Finished):
                    return JSONResponse(answer.whole())
                answer.take(ev)
        finally:
            if not req.stream or answer.ready is None:
                _stop(handle, watcher)

    async def _next(self, events: asyncio.Queue[Event], handle: Handle, deadline: float) -> Event:
        try:
            return await asyncio.wait_for(events.get(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            handle.cancel()
            raise APIError(504, f"The request took longer than this server's limit of {self.timeout:g} s and was "
                                "cancelled.", type=SERVER_ERROR, code="timeout") from None

    async def _events(self, answer: _Answer, events: asyncio.Queue[Event], deadline: float,
                      watcher: asyncio.Task[None]) -> AsyncIterator[bytes]:
        handle = answer.handle
        try:
            for chunk in answer.opening():
                yield _sse(chunk)
            while True:
                try:
                    ev = await self._next(events, handle, deadline)
                except APIError as exc:
                    yield _sse(exc.body())
                    return
                if isinstance(ev, Failed):
                    yield _sse(ev.error.body())  # the openai client raises this as an APIError
                    return
                if isinstance(ev, Finished):
                    for chunk in answer.closing():
                        yield _sse(chunk)
                    yield b"data: [DONE]\n\n"
                    return
                for chunk in answer.chunks(ev):
                    yield _sse(chunk)
        finally:
            _stop(handle, watcher)


def _stop(handle: Handle, watcher: asyncio.Task[None]) -> None:
    if not handle.done:
        handle.cancel()
    watcher.cancel()


async def _cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """Cancel *handle* when the client closes the connection (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            if not handle.done:
                log.info("request %s: the client disconnected; cancelling it", handle.id)
                handle.cancel()
            return


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class _EventStream(StreamingResponse):
    """A server-sent event stream that ends quietly when the client leaves (its generator cancels the work)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (ClientDisconnect, OSError):
            pass  # the client left mid-stream; the finally below ends the generation
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


class _Answer:
    """The response to one request, as a whole object or as stream chunks (OpenAI's shapes)."""

    def __init__(self, req: CompletionRequest, base: str, handle: Handle) -> None:
        self.req, self.handle = req, handle
        self.model = req.model or base
        self.id = ("chatcmpl-" if req.chat else "cmpl-") + handle.id
        self.created = int(time.time())
        self.ready: Ready | None = None
        count = len(req.prompts) * req.n
        self.texts = [self._echo(i) for i in range(count)]
        self.finish: list[str | None] = [None] * count
        self.completion_tokens = 0

    def _echo(self, index: int) -> str:
        prompt = self.req.prompts[index // self.req.n]
        return prompt if self.req.echo and isinstance(prompt, str) else ""

    def usage(self) -> dict[str, int]:
        prompt = self.ready.prompt_tokens if self.ready else 0
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    def take(self, ev: Event) -> None:
        if isinstance(ev, Piece):
            self.texts[ev.index] += ev.text
        elif isinstance(ev, ChoiceDone):
            self.finish[ev.index] = ev.finish_reason
            self.completion_tokens += ev.completion_tokens

    # whole
    def whole(self) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for i, (text, finish) in enumerate(zip(self.texts, self.finish, strict=True)):
            if self.req.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish or "stop", "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": finish or "stop", "logprobs": None})
        return {"id": self.id, "object": "chat.completion" if self.req.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage()}

    # streamed
    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.req.chat else "text_completion"
        chunk: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                                 "choices": choices}
        if self.req.include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.req.chat:
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

    def opening(self) -> list[dict[str, Any]]:
        if self.req.chat:
            return [self._chunk([{"index": i, "delta": {"role": "assistant"}, "finish_reason": None,
                                  "logprobs": None}]) for i in range(len(self.texts))]
        return [self._chunk([self._choice(i, t, None)]) for i, t in enumerate(self.texts) if t]  # echo

    def chunks(self, ev: Event) -> list[dict[str, Any]]:
        self.take(ev)
        if isinstance(ev, Piece):
            return [self._chunk([self._choice(ev.index, ev.text, None)])]
        if isinstance(ev, ChoiceDone):
            return [self._chunk([self._choice(ev.index, None, ev.finish_reason)])]
        return []

    def closing(self) -> list[dict[str, Any]]:
        if not self.req.include_usage:
            return []
        return [{**self._chunk([]), "usage": self.usage()}]


# -- running it --------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether *host* is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "" (every address): assume it is reachable from outside


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without an API key."""
    if not api_key and not is_loopback(host):
        raise InvalidInput(f"Serving on {host or 'every address'} lets other machines in, so it needs an API key: "
                           "pass --api-key KEY or set ADAPTERSTUDIO_API_KEY.")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on *host*:*port* (0: a free port)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InvalidInput(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    return sock


def uvicorn_server(app: Starlette) -> uvicorn.Server:
    """The uvicorn server for *app* (its request log off: prompts stay private); ``.run(sockets=[listen(...)])``
    serves until Ctrl+C or SIGTERM, ``.should_exit = True`` stops it from another thread."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)
