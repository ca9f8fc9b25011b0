"""``adapterstudio serve`` checked with the official ``openai`` client (and raw HTTP where a client hides the wire).

One real server (uvicorn on 127.0.0.1, a thread of this process) per module on the tiny llama and its chat
adapters; the tests that need other options (a time limit, an API key) start their own on the same model.
Token budgets stay small: every test here runs in seconds.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from urllib.parse import urlsplit

import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")

from adapterstudio.core.errors import InvalidInput  # noqa: E402
from tests.inference_helpers import serve_in_thread  # noqa: E402

CHAT = [{"role": "user", "content": "hi"}]
LONG = 200  # tokens per choice of a generation meant to be cut short (the tiny llama takes 256 in all)


@pytest.fixture(scope="module")
def inference(tmp_path_factory, llama_files):
    from adapterstudio.core.settings import Settings
    from adapterstudio.services.inference import open_inference
    from adapterstudio.services.library import open_library

    base, adapters = llama_files
    lib = open_library(tmp_path_factory.mktemp("serve-library"), settings=Settings())
    lib.add_base(base, name="tiny")
    for name, path in adapters.items():
        lib.import_adapter(path, name, base="tiny")
    inf = open_inference(lib, "tiny", device="cpu")
    inf.session()
    yield inf
    inf.close()
    lib.close()


@pytest.fixture(scope="module")
def served(inference):
    with serve_in_thread(inference) as (url, app):
        yield url, app


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0, timeout=120)


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | dict | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
    """One request on a kept-alive connection; the reply must be a JSON object."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.getheader("Content-Type", "").startswith("application/json"), raw
    return resp.status, json.loads(raw)


def _wait_for(predicate, what: str, limit: float = 60.0):
    """Poll until *predicate* gives something true (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


def _running(app):
    """The request the worker is generating for (None while it waits or prepares)."""
    h = app.state.scheduler.running
    return h if h is not None and h.state == "generating" else None


def _finished(app, handle):
    return handle if handle in app.state.scheduler.recent else None


# -- the API as clients use it -----------------------------------------------------------------------
def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny" and {"tiny:chat-a", "tiny:chat-b", "tiny:chat-ia3"} <= set(ids)
    m = client.models.retrieve("tiny:chat-a")
    assert m.id == "tiny:chat-a" and m.object == "model" and m.owned_by == "adapterstudio"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("tiny:nope")
    assert err.value.code == "model_not_found"


def test_chat_and_completions_per_adapter(client):
    def chat(model):
        r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0)
        assert r.object == "chat.completion" and r.model == model and r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        return r.choices[0].message.content

    first = chat("tiny:chat-a")
    others = {m: chat(m) for m in ("tiny", "tiny:chat-b", "tiny:chat-ia3")}
    assert chat("tiny:chat-a") == first  # hot-swapped per request: back to chat-a, the same answer
    assert any(text != first for text in others.values())  # the model id picks the adapter

    r = client.completions.create(model="tiny:chat-b", prompt="hello", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str) and r.usage.completion_tokens <= 5
    echo = client.completions.create(model="tiny:chat-b", prompt="hello", max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == "hello" + r.choices[0].text


def test_streams_match_the_whole_answer_and_report_usage(client):
    whole = client.chat.completions.create(model="tiny:chat-a", messages=CHAT, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny:chat-a", messages=CHAT, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()

    plain = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    parts = list(client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in parts) == plain.choices[0].text
    assert all(c.usage is None for c in parts)  # no usage chunk unless asked for


def test_n_choices_and_max_completion_tokens(client):
    r = client.chat.completions.create(model="tiny:chat-a", messages=CHAT, n=2, max_completion_tokens=3,
                                       temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1] and 0 < r.usage.completion_tokens <= 6
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    again = client.chat.completions.create(model="tiny:chat-a", messages=CHAT, n=2, max_completion_tokens=3,
                                           temperature=1.0, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded

    chunks = list(client.chat.completions.create(model="tiny:chat-a", messages=CHAT, n=2, max_completion_tokens=3,
                                                 temperature=1.0, seed=7, stream=True))
    for i in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
        assert text == r.choices[i].message.content
    done = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(done) == [0, 1]


def test_nulls_and_current_fields_are_accepted(client, served):
    r = client.chat.completions.create(
        model="tiny:chat-a", messages=[{"role": "developer", "content": "be brief"},
                                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_completion_tokens=4, temperature=0, stop=["\n", "zz"], seed=3, user="someone", logprobs=False,
        frequency_penalty=0.5, presence_penalty=0.0, metadata={"k": "v"}, store=False, parallel_tool_calls=None,
        response_format={"type": "text"})
    assert r.choices[0].message.role == "assistant"
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=3, stop="\n", user="u", best_of=1,
                                     logprobs=None, suffix=None).usage.completion_tokens <= 3

    conn = _connection(served[0])
    nulls = {"model": "tiny", "messages": CHAT, "temperature": None, "top_p": None, "n": None, "stop": None,
             "max_tokens": None, "max_completion_tokens": 3, "seed": None, "stream": None, "stream_options": None,
             "logprobs": None, "top_logprobs": None, "user": None, "tools": None, "tool_choice": None,
             "response_format": None, "logit_bias": None, "frequency_penalty": None, "presence_penalty": None,
             "a_field_from_the_future": {"x": 1}}
    status, body = _request(conn, "POST", "/v1/chat/completions", nulls)
    assert status == 200 and body["usage"]["completion_tokens"] <= 3, body
    status, body = _request(conn, "POST", "/v1/completions", {"model": "tiny", "prompt": ["hello"], "top_p": 0,
                                                               "max_tokens": 2, "echo": None})
    assert status == 200 and len(body["choices"]) == 1


@pytest.mark.parametrize("field, value, param", [
    ("temperature", "hot", "temperature"),
    ("temperature", 3, "temperature"),
    ("top_p", [1], "top_p"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("n", 1.5, "n"),
    ("stop", [1, 2], "stop"),
    ("stream", "yes", "stream"),
    ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    ("messages", [], "messages"),
    ("messages", [{"role": "wizard", "content": "hi"}], "messages[0].role"),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content[0]"),
    ("logprobs", True, "logprobs"),
    ("tools", [{"type": "function", "function": {"name": "f"}}], "tools"),
    ("response_format", {"type": "json_object"}, "response_format"),
    ("logit_bias", {"50": 10}, "logit_bias"),
    ("model", 7, "model"),
])
def test_bad_fields_are_a_400_naming_the_field_and_the_connection_survives(served, field, value, param):
    conn = _connection(served[0])
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2, field: value}
    status, err = _request(conn, "POST", "/v1/chat/completions", body)
    assert status == 400 and err["error"]["param"] == param, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["type"] == "invalid_request_error"
    status, again = _request(conn, "POST", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 1})
    assert status == 200 and again["object"] == "chat.completion"


def test_failures_while_preparing_are_errors_before_the_stream(client, inference, monkeypatch, caplog):
    from adapterstudio.core.errors import Incompatible

    def refuse(adapter):
        raise Incompatible(f"Adapter {adapter!r} does not fit base model 'tiny': made up for this test.")

    with monkeypatch.context() as m:
        m.setattr(inference, "use", refuse)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny:chat-a", messages=CHAT, stream=True)
    assert err.value.param == "model" and err.value.code == "model_incompatible" and "made up" in err.value.message

    def bug(prompt):
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(inference, "prompt_tokens", bug)
        with pytest.raises(openai.InternalServerError) as err:
            client.completions.create(model="tiny", prompt="hi", stream=True)
    assert err.value.status_code == 500 and err.value.code == "internal_error"
    assert "a bug" in caplog.text  # the traceback is in the server's log, not in the answer
    assert "a bug" not in err.value.message
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=1).usage.completion_tokens == 1


# -- the four bugs of the hand-rolled server ---------------------------------------------------------
def test_unknown_routes_and_malformed_json_leave_the_connection_usable(served):
    """Bug 1 and 2: a POST to an unknown route, and a body that is not JSON, answer JSON errors, and the next
    request on the same kept-alive connection is answered normally."""
    conn = _connection(served[0])
    status, err = _request(conn, "POST", "/v1/nope", b'{"model": "tiny", "messages": [' + b" " * 5000 + b"]}")
    assert status == 404 and err["error"]["code"] == "unknown_url"
    status, models = _request(conn, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "tiny"
    status, err = _request(conn, "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = _request(conn, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = _request(conn, "GET", "/v1/chat/completions")
    assert status == 405 and err["error"]["code"] == "method_not_allowed"
    status, body = _request(conn, "POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 1})
    assert status == 200 and body["object"] == "text_completion"


def test_a_bad_streaming_request_is_a_json_error_not_a_200_stream(client):
    """Bug 3: the model, the adapter and the prompt are checked before the stream starts."""
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="tiny:missing", messages=CHAT, stream=True)
    assert err.value.code == "model_not_found" and "missing" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other-base", messages=CHAT, stream=True)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny:chat-a", prompt="x" * 400, stream=True)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"


def test_max_tokens_is_capped_at_the_context(client):
    """Bug 4a: the model's 256 positions bound prompt and completion together."""
    prompt = "y" * 240  # the byte tokenizer: one token per byte
    r = client.completions.create(model="tiny:chat-a", prompt=prompt, max_tokens=100_000, temperature=0)
    assert r.usage.prompt_tokens >= 240 and r.usage.total_tokens <= 256
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny:chat-a", messages=[{"role": "user", "content": "z" * 300}])
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"


def test_a_client_that_leaves_cancels_its_generation_and_frees_the_server(served, client):
    """Bug 4b: a non-streaming request whose client disconnects stops generating at once, so what comes
    next (even GET /v1/models) is not stuck behind it."""
    url, app = served
    conn = _connection(url)
    body = {"model": "tiny:chat-a", "messages": CHAT, "n": 8, "max_tokens": LONG, "temperature": 0}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    handle = _wait_for(lambda: _running(app), "the generation to start")
    conn.close()  # the client gives up
    assert [m.id for m in client.models.list()][0] == "tiny"
    _wait_for(lambda: _finished(app, handle), "the cancelled request to end")
    assert handle.state == "cancelled" and handle.completion_tokens < 8 * LONG
    r = client.chat.completions.create(model="tiny:chat-a", messages=CHAT, max_tokens=1)
    assert r.usage.completion_tokens == 1


def test_models_answer_while_a_stream_runs_and_closing_the_stream_cancels_it(served, client):
    url, app = served
    stream = client.chat.completions.create(model="tiny:chat-b", messages=CHAT, n=8, max_tokens=LONG,
                                            temperature=0, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    handle = _wait_for(lambda: _running(app), "the generation to start")
    assert "tiny:chat-b" in [m.id for m in client.models.list()]
    assert app.state.scheduler.running is handle  # listing did not wait for the generation
    stream.close()
    _wait_for(lambda: _finished(app, handle), "the cancelled stream to end")
    assert handle.state == "cancelled" and handle.completion_tokens < 8 * LONG


def test_a_request_over_the_time_limit_is_cancelled_with_a_504(inference):
    with serve_in_thread(inference, request_timeout=0.3) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="tiny:chat-a", messages=CHAT, n=8, max_tokens=LONG, temperature=0)
        assert err.value.status_code == 504 and err.value.code == "timeout"
        handle = _wait_for(lambda: app.state.scheduler.recent and app.state.scheduler.recent[-1], "the request")
        assert handle.state == "cancelled" and handle.completion_tokens < 8 * LONG
        # a stream past its limit ends with an error event, which the client raises
        with pytest.raises(openai.APIError, match="limit"):
            for _ in client.chat.completions.create(model="tiny:chat-a", messages=CHAT, n=8, max_tokens=LONG,
                                                    temperature=0, stream=True):
                pass


# -- the API key ---------------------------------------------------------------------------------------
def test_api_key_required_accepted_refused_and_never_logged(inference, caplog):
    key = "sk-test-Zq93kLm0pQ"
    caplog.set_level(logging.DEBUG)
    with serve_in_thread(inference, api_key=key) as (url, _app):
        good = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in good.models.list()][0] == "tiny"
        r = good.chat.completions.create(model="tiny:chat-a", messages=CHAT, max_tokens=2)
        assert r.usage.completion_tokens <= 2

        bad = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0, timeout=120)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="tiny:chat-a", messages=CHAT, max_tokens=2, stream=True)
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        conn = _connection(url)
        status, body = _request(conn, "POST", "/v1/completions", {"model": "tiny", "prompt": "hi"})
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        status, body = _request(conn, "GET", "/v1/models", headers={"Authorization": "Bearer " + key})
        assert status == 200  # the same connection, after the refusal
    assert key not in caplog.text


def test_serving_beyond_this_machine_needs_an_api_key(cli_main, home):
    from adapterstudio.server.app import check_bind

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(InvalidInput, match="API key"):
        check_bind("0.0.0.0", None)
    r = cli_main("serve", "--base", "tiny", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--api-key" in r.stderr, r.stderr
    # with the key in the environment it goes on (and stops at the missing base: this library is empty)
    r = cli_main("serve", "--base", "tiny", "--host", "0.0.0.0", "--port", "0",
                 env={"ADAPTERSTUDIO_API_KEY": "sk-env-key-4821"})
    assert r.returncode == 1 and "API key" not in r.stderr and "tiny" in r.stderr
    assert "sk-env-key-4821" not in r.stderr + r.stdout


def test_the_api_key_stays_out_of_crash_logs():
    from adapterstudio.cli._common import redacted_argv

    argv = ["adapterstudio", "serve", "--base", "tiny", "--api-key", "sk-1", "--api-k=sk-2", "--api", "sk-3"]
    assert redacted_argv(argv) == ["adapterstudio", "serve", "--base", "tiny", "--api-key", "***", "--api-k=***",
                                   "--api", "***"]
