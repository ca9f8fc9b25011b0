"""An inference session: one base model in memory, PEFT adapters hot-swapped over it.

Design (see docs/inference.md and ARCHITECTURE.md "Adapter hot-swap"):

* The base is loaded once with the transformers class the adapters' task needs (:mod:`.base`,
  on the device and dtype of :mod:`.devices`).
* Adapters live in a three-tier LRU cache: up to ``max_resident`` on the device
  (:mod:`.residency`), up to ``max_host`` more in host memory (pinned when CUDA is
  present; :mod:`.slots`), the rest on disk. Memory is bounded by the tier sizes,
  however many adapters are cycled through.
* Plain LoRA adapters (what :mod:`.adapters` allows) use *slots* (:mod:`.slots`): PEFT
  adapters whose weights are views into one contiguous buffer per slot, at the largest
  rank in the session. Switching between resident adapters only points the adapter
  layers at other adapters (:mod:`.layers`; microseconds).
* Every other PEFT type (IA3, LoHa, LoKr, DoRA, prompt tuning...) goes through PEFT's
  own ``load_adapter`` / ``add_adapter`` / ``delete_adapter`` in the same cache.
* PEFT holds one adapter family (peft_type) per model; moving to an adapter of another
  family unwraps the adapter layers (the base weights are never touched or reloaded)
  and wraps again.
* :meth:`InferenceSession.compile` puts the model under ``torch.compile`` with one
  "live" slot whose scalings are tensors (``prepare_model_for_compiled_hotswap``);
  switching then copies a resident slot into it in place, so nothing recompiles.
* Generation (streaming, stop strings, chat templates) is :mod:`.generation`.

All public methods are serialized by one lock: a session is used from one worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import Incompatible, InvalidInput
from adapterstudio.core.peft_format import LINEAGE_TASKS, PROMPT_LEARNING_TYPES
from adapterstudio.ml.inference.adapters import AdapterEntry, describe_adapter
from adapterstudio.ml.inference.base import load_base
from adapterstudio.ml.inference.devices import resolve_device, resolve_dtype
from adapterstudio.ml.inference.generation import (
    GenerationParams,
    Prompt,
    apply_chat_template,
    choose_chat_template,
    decode_completions,
    encode_left_padded,
    encode_prompt,
    stream_generate,
)
from adapterstudio.ml.inference.layers import point_heads, point_layers
from adapterstudio.ml.inference.residency import Residency
from adapterstudio.ml.inference.slots import SlotCache

BASE = "__base__"


class InferenceSession:
    """One base model in memory; adapters attached by name, switched without reloading.

    Modes: :meth:`use_base` (adapters disabled), :meth:`use` (one adapter),
    :meth:`use_blend` (a weighted sum of LoRA adapters, weights changeable live, no
    merge), and per-row adapters in one batch (``adapter_names=`` of :meth:`logits`,
    :meth:`classify` and :meth:`generate_batch`).
    """

    def __init__(
        self, base_path: str | Path, *, task: str | None = None, num_labels: int | None = None,
        device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
        max_resident: int = 8, max_host: int = 64, slot_rank: int | None = None,
        base_name: str | None = None, ctx: TaskContext = NULL_CONTEXT,
    ) -> None:
        self.base_path = Path(base_path)
        self.base_name = base_name or self.base_path.name
        if max_resident < 1 or max_host < 0:
            raise InvalidInput("max_resident must be at least 1 and max_host at least 0.")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, self.device)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.adapters: dict[str, AdapterEntry] = {}
        self._mode: tuple[str, dict[str, float]] = ("base", {})
        self.last_generation: dict[str, Any] = {}  # prompt/completion token counts, finish_reason
        loaded = load_base(self.base_path, task, num_labels, dtype=self.dtype, device=self.device,
                           name=self.base_name, ctx=ctx)
        self.model, self.tokenizer, self.task = loaded.model, loaded.tokenizer, loaded.task
        self.cache = SlotCache(self.device, int(max_host))  # the slots and the host tier
        self._res = Residency(self.model, self.device, self.adapters, self.cache, max_resident=int(max_resident),
                              slot_rank=slot_rank, on_change=self._apply_mode)
        self.stats = self._res.stats  # loads from disk and host, evictions, switches
        self.num_labels = getattr(self.model.config, "num_labels", None)

    @property
    def max_resident(self) -> int:
        """How many adapters stay loaded on the device."""
        return self._res.max_resident

    @max_resident.setter
    def max_resident(self, n: int) -> None:
        self._res.max_resident = int(n)

    @property
    def max_host(self) -> int:
        """How many evicted adapters the host tier keeps (0: none)."""
        return self.cache.max_host

    @max_host.setter
    def max_host(self, n: int) -> None:
        self.cache.max_host = int(n)

    @property
    def peft_model(self) -> Any:
        """The PEFT model wrapping the base (None until an adapter was loaded)."""
        return self._res.peft

    # -- registering adapters ---------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path, *, lineage: dict[str, Any] | None = None) -> AdapterEntry:
        """Attach an adapter by name (reads its config and header only; weights on first use)."""
        with self._lock:
            entry = describe_adapter(name, path, lineage)
            want = entry.task_type or LINEAGE_TASKS.get(str(entry.lineage.get("task")), None)
            if want and want != self.task:
                raise Incompatible(
                    f"Adapter {name!r} is a {want} adapter but this session runs the base as {self.task}; "
                    "open a session for that task.")
            if name in self.adapters:
                self._forget(name)
            self.adapters[name] = entry
            return entry

    def remove_adapter(self, name: str) -> None:
        with self._lock:
            self._res.entry(name)
            self._forget(name)
            del self.adapters[name]

    def _forget(self, name: str) -> None:
        self._res.forget(name)
        if name in self._mode[1]:
            self._mode = ("base", {})

    # -- modes ----------------------------------------------------------------------------
    def use_base(self) -> None:
        """Run the base model alone (every adapter disabled)."""
        with self._lock:
            self._mode = ("base", {})
            self._apply_mode()

    def use(self, name: str | None) -> None:
        """Make *name* the active adapter (``None``: the base alone). Loads it if needed."""
        with self._lock:
            if name is None:
                return self.use_base()
            self._res.entry(name)
            peft_name = self._res.make_resident(name)
            self._mode = ("single", {name: 1.0})
            if self._res.compiled is not None:
                self._swap_live(peft_name)
            else:
                self._apply_mode()
            self.stats["switches"] += 1

    def use_blend(self, weights: dict[str, float]) -> None:
        """Activate a weighted sum of LoRA adapters (no merge; change weights with :meth:`set_blend_weights`)."""
        with self._lock:
            if not weights:
                raise InvalidInput("A blend needs at least one adapter.")
            if len(weights) > self.max_resident:
                raise InvalidInput(f"A blend of {len(weights)} adapters needs max_resident >= {len(weights)}.")
            if self._res.compiled is not None:
                raise InvalidInput("Blends are not available on a compiled session; use an uncompiled one.")
            entries = [self._res.entry(n) for n in weights]
            for e in entries:
                if not e.fast:
                    raise InvalidInput(f"Adapter {e.name!r} cannot be blended: blends combine plain LoRA adapters "
                                       f"({e.why_not_fast}).")
            for n in weights:
                self._res.make_resident(n)
            for n in weights:  # none of them was evicted by a later one
                if n not in self._res.resident:
                    raise InvalidInput("The blend does not fit the device cache; raise max_resident.")
            self._mode = ("blend", {n: float(w) for n, w in weights.items()})
            self._apply_mode()

    def set_blend_weights(self, weights: dict[str, float]) -> None:
        """Change the weights of the active blend live (same adapters, or use_blend again)."""
        with self._lock:
            if self._mode[0] != "blend" or set(weights) != set(self._mode[1]):
                return self.use_blend(weights)
            self._mode = ("blend", {n: float(w) for n, w in weights.items()})
            self._apply_mode()

    @property
    def mode(self) -> dict[str, Any]:
        kind, w = self._mode
        return {"mode": kind, "adapters": dict(w)}

    def _apply_mode(self) -> None:
        """Point every adapter layer at the current mode's adapters (the hot-swap itself)."""
        res, peft = self._res, self._res.peft
        if peft is None:
            return
        kind, weights = self._mode
        if kind == "base" or not weights:
            names: list[str] = []
        else:
            order = sorted(weights, key=lambda n: -abs(weights[n]))
            names = [res.resident[n] for n in order if n in res.resident]
        first = names[0] if names else next(iter(peft.peft_config))
        point_layers(res.tuner_layers, names or [first], enabled=bool(names))
        point_heads(res.aux, names)
        try:
            peft.base_model.active_adapter = first
        except AttributeError:
            pass  # a base_model whose active_adapter is a read-only property: nothing to record there
        if getattr(peft, "active_adapter", None) != first and res.family in PROMPT_LEARNING_TYPES:
            peft.set_adapter(first)
        # scalings: blend weights multiply each slot's own alpha/r
        for n, pn in res.resident.items():
            slot = self.cache.slots.get(pn)
            factor = weights.get(n, 1.0) if kind == "blend" else 1.0
            if slot is not None and factor != slot.scale_factor:
                slot.scale(self.adapters[n], factor)

    # -- compile ------------------------------------------------------------------------
    def compile(self, adapter: str, **compile_kwargs: Any) -> None:
        """Put the model under torch.compile; later :meth:`use` calls copy in place (no recompile).

        *adapter* (a plain LoRA adapter) fixes the layout every swapped-in adapter must share.
        """
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        with self._lock:
            res = self._res
            e = res.entry(adapter)
            if not e.fast:
                raise InvalidInput(f"Adapter {adapter!r} cannot be hot-swapped under compile ({e.why_not_fast}).")
            res.make_resident(adapter)
            while len(self.cache.slots) < self.max_resident:  # every slot exists before compiling
                res.create_slot(e, drop_unused=False)
            live = res.new_slot("live", e)
            prepare_model_for_compiled_hotswap(res.peft, check_compiled="ignore")
            live.make_live(self.device)
            res.live = live
            self._mode = ("single", {adapter: 1.0})
            res.peft.base_model.set_adapter(live.name, inference_mode=True)  # every layer and head
            point_layers(res.tuner_layers, None, enabled=True)  # enabled, requires_grad left alone
            self._swap_live(res.resident[adapter])
            res.compiled = torch.compile(res.peft, **compile_kwargs)

    def _swap_live(self, peft_name: str) -> None:
        assert self._res.live is not None
        slot = self.cache.slots.get(peft_name)
        if slot is None or slot.layout != self._res.live.layout:
            raise InvalidInput("Under torch.compile every adapter must target the same modules at the same "
                               "maximum rank as the one compiled with.")
        self._res.live.copy_from(slot, self.adapters[slot.occupant or ""])

    # -- running the model -------------------------------------------------------------
    def _runner(self) -> Any:
        if self._res.compiled is not None:
            return self._res.compiled
        return self._res.peft if self._res.peft is not None else self.model

    def _row_names(self, adapter_names: Sequence[str | None]) -> list[str]:
        if self._res.compiled is not None:
            raise InvalidInput("Per-row adapters are not available on a compiled session.")
        distinct = [n for n in dict.fromkeys(adapter_names) if n is not None and n not in (BASE, "")]
        if len(distinct) > self.max_resident:
            raise InvalidInput(f"A batch with {len(distinct)} different adapters needs max_resident >= {len(distinct)}.")
        for n in distinct:
            self._res.entry(n)
        for n in distinct:
            self._res.make_resident(n)
        for n in distinct:
            if n not in self._res.resident:
                raise InvalidInput("The batch's adapters do not fit the device cache; raise max_resident.")
        fams = {self.adapters[n].family for n in distinct}
        if len(fams) > 1:
            raise InvalidInput("One batch can only mix adapters of one PEFT type.")
        # rows use each adapter alone: adapters enabled, blend factors off (restored after)
        for n, pn in self._res.resident.items():
            slot = self.cache.slots.get(pn)
            if slot is not None and slot.scale_factor != 1.0:
                slot.scale(self.adapters[n], 1.0)
        point_layers(self._res.tuner_layers, None, enabled=True)
        return [BASE if n is None or n in (BASE, "") else self._res.resident[n] for n in adapter_names]

    def _forward(self, batch: dict[str, torch.Tensor], adapter_names: Sequence[str | None] | None) -> Any:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            if adapter_names is not None:
                if len(adapter_names) != next(iter(batch.values())).shape[0]:
                    raise InvalidInput("adapter_names must name one adapter (or None for the base) per input row.")
                rows = self._row_names(adapter_names)
                if self._res.peft is None:
                    return self.model(**batch)
                try:
                    return self._res.peft(**batch, adapter_names=rows)
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(f"Per-row adapters are not supported here: {exc}") from None
                finally:
                    self._apply_mode()
            if self._mode[0] == "base" and self._res.peft is not None:
                if self._res.compiled is not None:
                    raise InvalidInput("A compiled session always runs an adapter; use an uncompiled one for the base.")
                if self._res.family in PROMPT_LEARNING_TYPES:
                    with self._res.peft.disable_adapter():
                        out = self._res.peft(**batch)
                    self._apply_mode()
                    return out
            return self._runner()(**batch)

    def _encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise InvalidInput(f"Base model {self.base_name!r} has no tokenizer in its folder; text inputs need one.")
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InvalidInput("No input text was given.")
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt"))

    def logits(self, texts: Sequence[str] | dict[str, torch.Tensor],
               adapter_names: Sequence[str | None] | None = None) -> torch.Tensor:
        """Raw logits for a batch (texts, or already tokenized tensors) in the current mode."""
        with self._lock:
            batch = texts if isinstance(texts, dict) else self._encode(texts)
            out = self._forward(batch, adapter_names)
            return out.logits if hasattr(out, "logits") else out[0]

    def labels_for(self, name: str | None) -> list[str]:
        e = self.adapters.get(name) if name else None
        if e is not None and e.labels:
            return e.labels
        id2label = getattr(self.model.config, "id2label", None) or {}
        n = self.num_labels or len(id2label)
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]

    def _active_name(self) -> str | None:
        kind, w = self._mode
        if kind == "base" or not w:
            return None
        return max(w, key=lambda n: abs(w[n]))

    def classify(self, texts: Sequence[str], adapter_names: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """Label and probabilities per input (sequence classification), or per token (token classification)."""
        with self._lock:
            if self.task not in ("SEQ_CLS", "TOKEN_CLS"):
                raise InvalidInput(f"Classification needs a classification adapter; this session runs {self.task}.")
            if isinstance(texts, str):
                texts = [texts]
            batch = self._encode(texts)
            logits = self.logits(batch, adapter_names).float()
            out: list[dict[str, Any]] = []
            for i, text in enumerate(texts):
                name = adapter_names[i] if adapter_names is not None else self._active_name()
                labels = self.labels_for(name if name not in (BASE, "") else None)
                if self.task == "SEQ_CLS":
                    row = logits[i]
                    if row.numel() == 1:  # regression
                        out.append({"input": text, "adapter": name, "value": float(row[0])})
                        continue
                    probs = torch.softmax(row, -1)
                    k = int(probs.argmax())
                    out.append({"input": text, "adapter": name, "label": _label(labels, k),
                                "probabilities": {_label(labels, j): float(p) for j, p in enumerate(probs)}})
                else:
                    mask = batch["attention_mask"][i].bool()
                    ids = batch["input_ids"][i][mask]
                    probs = torch.softmax(logits[i][mask.to(logits.device)], -1)
                    toks = self.tokenizer.convert_ids_to_tokens(ids.tolist())
                    out.append({"input": text, "adapter": name, "tokens": [
                        {"token": t, "label": _label(labels, int(p.argmax())), "probability": float(p.max())}
                        for t, p in zip(toks, probs, strict=True)]})
            return out

    # -- generation ---------------------------------------------------------------------
    def chat_template(self, name: str | None = None) -> tuple[str | None, str]:
        """The chat template for *name* (default: the active adapter or blend) and where it comes from.

        The template recorded in the adapter's lineage wins; with none recorded, the base
        tokenizer's own; adapters of a blend must agree.
        """
        names = [name] if name else list(self._mode[1]) if self._mode[0] != "base" else []
        return choose_chat_template((self.adapters[n].chat_template for n in names if n in self.adapters),
                                    self.tokenizer)

    def format_chat(self, messages: list[dict[str, str]], name: str | None = None) -> str:
        if self.tokenizer is None:
            raise InvalidInput(f"Base model {self.base_name!r} has no tokenizer; chat needs one.")
        tpl, _src = self.chat_template(name)
        if tpl is None:
            raise InvalidInput(f"Neither the adapter nor base model {self.base_name!r} records a chat template; "
                               "send a plain prompt (completion) instead.")
        return apply_chat_template(self.tokenizer, messages, tpl)

    def stop(self) -> None:
        """Ask a running generation to stop at its next token (any thread)."""
        self._stop.set()

    def _prepare_prompt(self, prompt: Prompt, add_special: bool | None = None) -> tuple[dict[str, torch.Tensor], int]:
        if self.task != "CAUSAL_LM":
            raise InvalidInput(f"Generation needs a causal-LM base or adapter; this session runs {self.task}.")
        if self.tokenizer is None:
            raise InvalidInput(f"Base model {self.base_name!r} has no tokenizer; generation needs one.")
        if isinstance(prompt, list):
            # the template writes its own special tokens
            return encode_prompt(self.tokenizer, self.format_chat(prompt), add_special=False)
        return encode_prompt(self.tokenizer, prompt, add_special=True if add_special is None else add_special)

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and completion) the model takes: its config's position count, if it has one."""
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            n = getattr(cfg, attr, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    def count_tokens(self, prompt: Prompt) -> int:
        """How many tokens *prompt* takes as :meth:`generate` encodes it (chat template of the current mode)."""
        with self._lock:
            return self._prepare_prompt(prompt)[1]

    def generate(self, prompt: Prompt, params: GenerationParams | None = None, *,
                 stream: bool = False, cancel: threading.Event | None = None, **overrides: Any) -> str | Iterator[str]:
        """Generate from a prompt (or chat messages) with the current mode.

        ``stream=True`` returns an iterator of text pieces as they are produced; the
        session stays locked until it is exhausted (or :meth:`stop` is called).
        *cancel*: an event of the caller's that ends this generation at its next token
        once set (also when set before the generation starts).
        """
        p = params or GenerationParams()
        for k, v in overrides.items():
            setattr(p, k, v)
        if stream:
            return self._generate_stream(prompt, p, cancel)
        return "".join(self._generate_stream(prompt, p, cancel))

    def _generate_stream(self, prompt: Prompt, p: GenerationParams, cancel: threading.Event | None) -> Iterator[str]:
        with self._lock:
            batch, plen = self._prepare_prompt(prompt)
            model = self._res.peft if self._res.peft is not None else self.model
            batch = {k: v.to(self.device) for k, v in batch.items()}
            base_of_prompts = self._mode[0] == "base" and self._res.peft is not None and \
                self._res.family in PROMPT_LEARNING_TYPES
            try:
                yield from stream_generate(model, self.tokenizer, batch, plen, p, self._stop,
                                           adapters_off=self._res.peft.disable_adapter if base_of_prompts else None,
                                           on_done=self._generation_done, cancel=cancel)
            finally:
                if self._mode[0] == "base":
                    self._apply_mode()

    def _generation_done(self, report: dict[str, Any]) -> None:
        self.last_generation = report

    def generate_batch(self, prompts: Sequence[Prompt], adapter_names: Sequence[str | None],
                       params: GenerationParams | None = None) -> list[str]:
        """One batch, one adapter per row (``None`` for the base), greedy or sampled."""
        with self._lock:
            p = params or GenerationParams()
            if len(prompts) != len(adapter_names):
                raise InvalidInput("generate_batch needs one adapter name (or None) per prompt.")
            if self.tokenizer is None or self.task != "CAUSAL_LM":
                raise InvalidInput("Batched generation needs a causal-LM base with a tokenizer.")
            texts = [self.format_chat(x, n) if isinstance(x, list) else x
                     for x, n in zip(prompts, adapter_names, strict=True)]
            enc = encode_left_padded(self.tokenizer, texts)
            rows = self._row_names(adapter_names)
            kw = p.generate_kwargs(self.tokenizer)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                if p.seed is not None:
                    torch.manual_seed(int(p.seed))
                model = self._res.peft if self._res.peft is not None else self.model
                extra = {"adapter_names": rows} if self._res.peft is not None else {}
                try:
                    out = model.generate(**enc, **kw, **extra)
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(f"Per-row adapters are not supported here: {exc}") from None
                finally:
                    self._apply_mode()
            return decode_completions(self.tokenizer, out, enc["input_ids"].shape[1], p.stop)

    # -- introspection --------------------------------------------------------------------
    def cache_info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "task": self.task,
                "family": self._res.family, "max_resident": self.max_resident, "max_host": self.max_host,
                "resident": list(self._res.resident), "host": list(self.cache.host),
                "slots": len(self.cache.slots), "slot_bytes": self.cache.slot_bytes(),
                "host_bytes": self.cache.host_bytes(),
                "compiled": self._res.compiled is not None, **self.stats,
            }

    def close(self) -> None:
        with self._lock:
            self._res.unwrap()
            self.cache.clear_host()
            self.adapters.clear()


def _label(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else f"LABEL_{k}"
