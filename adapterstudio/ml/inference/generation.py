"""Text generation on a loaded model: settings, chat templates, prompts, streaming and stop strings.

The session decides *which* model and adapters run; these functions run it. Streaming
generates on a worker thread and yields text pieces as they come, holding back a tail
that could be the start of a stop string.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import torch

from adapterstudio.core.errors import InvalidInput

Prompt = str | list[dict[str, str]]  # a plain prompt (completion), or chat messages


@dataclass
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None

    def validate(self) -> None:
        if not (1 <= int(self.max_new_tokens) <= 1_000_000):
            raise InvalidInput("max_new_tokens must be a positive integer.")
        if self.temperature < 0:
            raise InvalidInput("temperature must be 0 or more (0 means greedy decoding).")
        if not (0 < self.top_p <= 1):
            raise InvalidInput("top_p must be in (0, 1].")

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        """Validated keyword arguments for ``model.generate`` (greedy at temperature 0)."""
        self.validate()
        kw: dict[str, Any] = {"max_new_tokens": int(self.max_new_tokens)}
        if self.temperature and self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        else:
            kw.update(do_sample=False)
        if tokenizer is not None:
            kw["pad_token_id"] = tokenizer.pad_token_id
            if tokenizer.eos_token_id is not None:
                kw["eos_token_id"] = tokenizer.eos_token_id
        return kw


class StopOnEvent:
    """A StoppingCriteria: stops when asked to (*event*, or the caller's *cancel*), or when a stop string appears."""

    def __init__(self, event: threading.Event, tokenizer: Any, prompt_len: int, stops: Sequence[str],
                 cancel: threading.Event | None = None) -> None:
        self.event, self.tok, self.prompt_len, self.stops = event, tokenizer, prompt_len, [s for s in stops if s]
        self.cancel = cancel
        self.generated = 0
        self.last_token: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.generated = int(input_ids.shape[1]) - self.prompt_len
        self.last_token = int(input_ids[0, -1])
        if self.event.is_set() or (self.cancel is not None and self.cancel.is_set()):
            return done | True
        if self.stops:
            for i in range(input_ids.shape[0]):
                text = self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
                if any(s in text for s in self.stops):
                    done[i] = True
        return done


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """*text* up to the first stop string, and whether one was found."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


# -- chat templates and prompts --------------------------------------------------------------
def choose_chat_template(recorded: Iterable[str | None], tokenizer: Any) -> tuple[str | None, str]:
    """The template the adapters recorded (they must agree), else the base tokenizer's; and where it came from."""
    found = {t for t in recorded if t}
    if len(found) > 1:
        raise InvalidInput("The blended adapters were trained with different chat templates; "
                           "blend adapters that share one.")
    if found:
        return found.pop(), "adapter lineage"
    tok_tpl = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if tok_tpl:
        return tok_tpl, "base tokenizer"
    return None, "none"


def apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], template: str) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001  (a broken template is the user's data: re-raised as a sentence)
        raise InvalidInput(f"The chat template could not be applied: {exc}") from None
    return cast(str, text)


def encode_prompt(tokenizer: Any, text: str, add_special: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The prompt's tensors and its length in tokens."""
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
    return dict(enc), int(enc["input_ids"].shape[1])


def encode_left_padded(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """A batch of prompts padded on the left, so every row's completion starts at the same column."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(tokenizer(texts, return_tensors="pt", padding=True))
    finally:
        tokenizer.padding_side = side


def decode_completions(tokenizer: Any, out: torch.Tensor, prompt_len: int, stops: Sequence[str]) -> list[str]:
    """Each row's generated text after the (padded) prompt, cut at the first stop string."""
    return [cut_at_stop(cast(str, tokenizer.decode(row[prompt_len:], skip_special_tokens=True)), stops)[0]
            for row in out]


# -- streaming ---------------------------------------------------------------------------------
def stream_generate(
    model: Any, tokenizer: Any, batch: dict[str, torch.Tensor], prompt_len: int, p: GenerationParams,
    stop_event: threading.Event, *, adapters_off: Callable[[], AbstractContextManager[Any]] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None, cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Yield the text of one generation piece by piece; *stop_event* ends it at the next token.

    *cancel*: the caller's own event, checked between tokens like *stop_event* but never
    cleared here (a request cancelled before its generation starts stays cancelled).
    *batch* is on the model's device. *adapters_off*: a context manager factory entered
    around ``generate`` (the base alone, for prompt-learning adapters). *on_done* gets
    the token counts and finish reason when the generation ends (not when the consumer
    closes the iterator early).
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    kw = p.generate_kwargs(tokenizer)
    stop_event.clear()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    stopper = StopOnEvent(stop_event, tokenizer, prompt_len, list(p.stop), cancel)
    error: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                if p.seed is not None:
                    torch.manual_seed(int(p.seed))
                with adapters_off() if adapters_off is not None else nullcontext():
                    model.generate(**batch, **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([stopper]))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the consuming thread below)
            error.append(exc)
            streamer.end()

    worker = threading.Thread(target=work, name="adapterstudio-generate", daemon=True)
    worker.start()
    text = ""
    emitted = 0
    finished = False
    stopped_by_string = False
    try:
        for piece in streamer:
            text += piece
            cut, hit = cut_at_stop(text, p.stop)
            # hold back a tail that might be the start of a stop string
            hold = max((len(s) - 1 for s in p.stop if s), default=0)
            safe = len(cut) if hit else max(emitted, len(cut) - hold)
            if safe > emitted:
                yield cut[emitted:safe]
                emitted = safe
            if hit:
                stopped_by_string = True
                stop_event.set()
                break
        else:
            finished = True
            cut, _ = cut_at_stop(text, p.stop)
            if len(cut) > emitted:
                yield cut[emitted:]
    finally:
        stop_event.set()
        if not finished:
            worker.join(timeout=600)  # the stop criterion ends it at the next token
        worker.join()
        stop_event.clear()
    eos = kw.get("eos_token_id")
    if on_done is not None:
        on_done({
            "prompt_tokens": prompt_len, "completion_tokens": stopper.generated,
            "finish_reason": ("stop" if stopped_by_string or stopper.last_token == eos
                              else "length" if stopper.generated >= kw["max_new_tokens"] else "stop"),
        })
    if error and not isinstance(error[0], (KeyboardInterrupt,)):
        exc = error[0]
        if isinstance(exc, (ValueError, TypeError)):
            raise InvalidInput(f"Generation failed: {exc}") from None
        raise exc
