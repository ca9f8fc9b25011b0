"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``, checked field by field.

What the OpenAI API allows is accepted, JSON ``null`` included (it means "the default").
A field this server cannot honour and whose effect a client relies on (tools, JSON mode,
log-probabilities, images...) is a 400 naming it; a field that only tunes something this
server does not have (``user``, ``metadata``, ``store``, ``service_tier``, the
frequency and presence penalties...) is accepted and ignored. Fields nobody defined
are ignored too, so a newer client keeps working. Every refusal is an
:class:`~adapterstudio.server.errors.APIError` whose ``param`` names the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from adapterstudio.server.errors import invalid, unsupported

Prompt = str | list[dict[str, str]]  # a plain prompt (completions) or chat messages

MAX_N = 16  # choices per request (n), and prompts per completions request
MAX_STOPS = 16
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
TEXT_PARTS = {"text", "input_text", "output_text"}


@dataclass
class CompletionRequest:
    """A checked request: what the scheduler runs and how the answer is shaped."""

    chat: bool
    model: str | None  # None: the server's base
    prompts: list[Prompt]  # chat: one list of messages; completions: one or more strings
    max_tokens: int | None = None  # None: the server's default (always capped at the context)
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # completions: the prompt is repeated before each completion

    @property
    def prompt_param(self) -> str:
        """The field holding the prompt (what an over-long prompt's error names)."""
        return "messages" if self.chat else "prompt"


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid("We could not parse the JSON body of your request: it is not valid JSON.",
                      code="invalid_json") from None
    if not isinstance(obj, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    return obj


def parse_request(body: dict[str, Any], *, chat: bool) -> CompletionRequest:
    """Check *body* (a JSON object) as a chat or completions request."""
    req = CompletionRequest(chat=chat, model=_string(body, "model"), prompts=[])
    if chat:
        req.prompts = [_messages(body.get("messages"))]
        _refuse_chat_features(body)
    else:
        req.prompts = _prompts(body.get("prompt"))
        req.echo = bool(_boolean(body, "echo"))
        _refuse_completion_features(body)
    req.max_tokens = _integer(body, "max_completion_tokens", 1)
    if req.max_tokens is None:
        req.max_tokens = _integer(body, "max_tokens", 1)
    req.temperature = _number(body, "temperature", 0, 2)
    req.top_p = _number(body, "top_p", 0, 1)
    req.n = _integer(body, "n", 1, MAX_N) or 1
    req.seed = _integer(body, "seed", -(2 ** 63), 2 ** 63 - 1)
    req.stop = _stops(body.get("stop"))
    req.stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options must be an object.", "stream_options", "invalid_type")
        req.include_usage = bool(_boolean(options, "include_usage", "stream_options.include_usage"))
    for name in ("frequency_penalty", "presence_penalty"):  # accepted, not applied (see the module docstring)
        _number(body, name, -2, 2)
    if len(req.prompts) * req.n > MAX_N:
        raise invalid(f"At most {MAX_N} completions per request (prompts times n).", "n")
    return req


# -- the prompt ----------------------------------------------------------------------------
def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list of messages.", "messages",
                      "invalid_type" if value is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{where} must be an object with a role and content.", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(sorted(ROLES))}.", f"{where}.role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return out


def _content(c: Any, where: str) -> str:
    if c is None or isinstance(c, str):
        return c or ""
    if not isinstance(c, list):
        raise invalid(f"{where}.content must be a string or a list of content parts.", f"{where}.content",
                      "invalid_type")
    texts = []
    for j, part in enumerate(c):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise invalid(f"{at} must be an object.", at, "invalid_type")
        kind = part.get("type")
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise unsupported(at, f"content parts of type {kind!r} (this server reads text parts only)")
    return "".join(texts)


def _prompts(value: Any) -> list[Prompt]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        if len(value) > MAX_N:
            raise invalid(f"At most {MAX_N} prompts per request.", "prompt")
        return list(value)
    if isinstance(value, list) and value and all(isinstance(p, (int, list)) for p in value):
        raise unsupported("prompt", "token-id prompts (send the text)")
    raise invalid("prompt must be a string or a non-empty list of strings.", "prompt",
                  "invalid_type" if value is not None else "missing_required_parameter")


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOPS:
            raise invalid(f"stop takes at most {MAX_STOPS} strings.", "stop")
        return [s for s in value if s]
    raise invalid("stop must be a string or a list of strings.", "stop", "invalid_type")


# -- what is refused -----------------------------------------------------------------------
def _refuse_chat_features(body: dict[str, Any]) -> None:
    if _boolean(body, "logprobs"):
        raise unsupported("logprobs")
    if _integer(body, "top_logprobs", 0, 20):
        raise unsupported("top_logprobs")
    for name in ("tools", "functions"):
        if body.get(name):
            raise unsupported(name, "tool and function calling")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise unsupported(name, "tool and function calling")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise unsupported("response_format", "JSON mode and structured outputs")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported("modalities", "this server answers with text only")
    for name in ("audio", "web_search_options"):
        if body.get(name) is not None:
            raise unsupported(name)
    _refuse_logit_bias(body)


def _refuse_completion_features(body: dict[str, Any]) -> None:
    if _integer(body, "logprobs", 0, 5):
        raise unsupported("logprobs")
    if _integer(body, "best_of", 1, MAX_N) not in (None, 1):
        raise unsupported("best_of")
    if _string(body, "suffix"):
        raise unsupported("suffix")
    _refuse_logit_bias(body)


def _refuse_logit_bias(body: dict[str, Any]) -> None:
    bias = body.get("logit_bias")
    if bias is not None and not isinstance(bias, dict):
        raise invalid("logit_bias must be an object.", "logit_bias", "invalid_type")
    if bias:
        raise unsupported("logit_bias")


# -- typed fields (null is always allowed: the default) ----------------------------------------
def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(f"{name} must be an integer.", name, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        raise invalid(f"{name} must be at least {lo}" + (f" and at most {hi}." if hi is not None else "."), name)
    return v


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise invalid(f"{name} must be a number.", name, "invalid_type")
    if not lo <= v <= hi:
        raise invalid(f"{name} must be between {lo:g} and {hi:g}.", name)
    return float(v)


def _boolean(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    v = body.get(name)
    if v is None or isinstance(v, bool):
        return v
    raise invalid(f"{param or name} must be true or false.", param or name, "invalid_type")


def _string(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is None or isinstance(v, str):
        return v
    raise invalid(f"{name} must be a string.", name, "invalid_type")

