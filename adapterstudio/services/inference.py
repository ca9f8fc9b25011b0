"""Inference use cases by catalogue name: one base in memory, adapters hot-swapped.

This is the documented Python API the GUI and the CLI drive (no Qt here; torch is
imported only when a session is opened)::

    from adapterstudio.services.library import open_library
    from adapterstudio.services.inference import open_inference

    lib = open_library()
    inf = open_inference(lib, "tiny-llama")            # loads the base once
    inf.use("poet")                                    # attaches + activates (compat-checked)
    for piece in inf.generate("Roses are", stream=True, max_new_tokens=40):
        print(piece, end="")
    inf.use_blend({"poet": 0.7, "pirate": 0.3})         # weighted, no merge
    inf.set_blend_weights({"poet": 0.2, "pirate": 0.8})  # live
    inf.compare("Roses are", ["poet", "pirate", None])   # None: the base alone
    inf.use("sentiment"); inf.classify(["great!"])     # [{"label", "probabilities"}]

An adapter is always checked against the base with ``lib.require_compatible`` before
the model is touched. A session exists per task (a classifier head and a language-model
head are different model classes); the base weights are loaded once per task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import Incompatible, InvalidInput, NotFound
from adapterstudio.core.peft_format import LINEAGE_TASKS

if TYPE_CHECKING:
    from adapterstudio.ml.inference.session import InferenceSession
    from adapterstudio.services.library import Library

HEAD_SUFFIXES = ("classifier.out_proj.weight", "score.weight", "classifier.weight")


def adapter_task(rec: Any) -> str | None:
    """The PEFT task type an adapter record needs (its config's, else its lineage's)."""
    if rec.task_type:
        return str(rec.task_type)
    return LINEAGE_TASKS.get(str((rec.lineage or {}).get("task")))


def adapter_num_labels(rec: Any) -> int | None:
    """Labels of a classification adapter: from its lineage, else the saved head's shape."""
    lineage = rec.lineage or {}
    if lineage.get("task") == "regression":
        return 1
    labels = lineage.get("labels")
    if isinstance(labels, list) and labels:
        return len(labels)
    from adapterstudio.core.safetensors_header import read_header

    st = Path(rec.path) / "adapter_model.safetensors"
    if not st.is_file():
        return None
    tensors = read_header(st).tensors
    for suffix in HEAD_SUFFIXES:
        for key, info in tensors.items():
            if key.endswith(suffix) and ".lora_" not in key and len(info.shape) == 2:
                return int(info.shape[0])
    return None


def parse_adapter_arg(text: str) -> tuple[str, float]:
    """``NAME`` or ``NAME:WEIGHT`` (the weight is a float)."""
    name, sep, w = text.rpartition(":")
    if sep and name:
        try:
            return name, float(w)
        except ValueError:
            pass
    return text, 1.0


class Inference:
    """One base model with catalogue adapters hot-swapped over it. Thread-safe (one lock)."""

    def __init__(self, lib: Library, base: str, *, device: str | None = None, precision: str | None = None,
                 max_resident: int | None = None, max_host: int | None = None, ctx: TaskContext = NULL_CONTEXT) -> None:
        self.lib = lib
        self.base = lib.catalogue.get_base(base)
        if not self.base.path or not Path(self.base.path).is_dir():
            raise NotFound(f"Base model {base!r} is not on this machine (no local folder); download it first.")
        s = lib.settings
        self.device = device or s.device
        self.precision = precision or s.precision
        self.max_resident = int(max_resident or s.max_resident_adapters)
        self.max_host = int(max_host if max_host is not None else s.max_host_adapters)
        self._sessions: dict[tuple[str, int | None], InferenceSession] = {}
        self._current: InferenceSession | None = None
        self._lock = threading.RLock()
        self._ctx = ctx

    # -- sessions ------------------------------------------------------------------------
    def _key_for(self, adapter: str | None) -> tuple[str | None, int | None]:
        if adapter is None:
            return None, None
        rec = self.lib.catalogue.get_adapter(adapter)
        task = adapter_task(rec)
        n = adapter_num_labels(rec) if task in ("SEQ_CLS", "TOKEN_CLS", "IMAGE_CLS") else None
        return task, n

    def session(self, task: str | None = None, num_labels: int | None = None,
                ctx: TaskContext | None = None) -> InferenceSession:
        """The session running the base for *task* (loaded on first use; ``None``: the base's own class)."""
        from adapterstudio.ml.inference import InferenceSession

        with self._lock:
            if task is None and self._current is not None:
                return self._current
            for (t, n), sess in self._sessions.items():
                if (task is None or t == task) and (num_labels is None or n == num_labels):
                    return sess
            sess = InferenceSession(str(self.base.path), task=task, num_labels=num_labels, device=self.device,
                                    dtype=self.precision, max_resident=self.max_resident, max_host=self.max_host,
                                    base_name=self.base.name, ctx=ctx or self._ctx)
            self._sessions[(sess.task, num_labels)] = sess
            return sess

    def attach(self, adapter: str, ctx: TaskContext | None = None) -> InferenceSession:
        """Check *adapter* against the base (headers only), then register it with its task's session."""
        with self._lock:
            rec = self.lib.require_compatible(adapter, self.base.name)  # refused before the model is touched
            if rec.weights_format != "safetensors":
                raise InvalidInput(f"Adapter {adapter!r} has pickle weights; inference loads safetensors only.")
            task, n = self._key_for(adapter)
            sess = self.session(task, n, ctx) if task else self.session(None, None, ctx)
            if task and sess.task != task:
                raise Incompatible(f"Adapter {adapter!r} is a {task} adapter; the base runs as {sess.task}.")
            if adapter not in sess.adapters:
                sess.add_adapter(adapter, rec.path, lineage=rec.lineage)
            return sess

    def _session_with(self, names: Sequence[str | None]) -> InferenceSession:
        named = [n for n in names if n]
        if not named:
            return self.session()
        sessions = {id(s): s for s in (self.attach(n) for n in named)}
        if len(sessions) > 1:
            raise InvalidInput("These adapters are for different tasks (or label sets) and cannot run together.")
        return next(iter(sessions.values()))

    # -- modes ------------------------------------------------------------------------------
    def use(self, adapter: str | None, ctx: TaskContext | None = None) -> None:
        """Activate one adapter (``None``: the base alone, adapters disabled)."""
        with self._lock:
            sess = self.attach(adapter, ctx) if adapter else self.session(ctx=ctx)
            sess.use(adapter)
            self._current = sess

    def use_base(self) -> None:
        self.use(None)

    def use_blend(self, weights: dict[str, float]) -> None:
        with self._lock:
            sess = self._session_with(list(weights))
            sess.use_blend(weights)
            self._current = sess

    def set_blend_weights(self, weights: dict[str, float]) -> None:
        with self._lock:
            self._session_with(list(weights)).set_blend_weights(weights)

    def use_spec(self, specs: Sequence[tuple[str, float]]) -> None:
        """From CLI-style (name, weight) pairs: none -> base; one at weight 1 -> single; else a blend."""
        if not specs:
            self.use(None)
        elif len(specs) == 1 and specs[0][1] == 1.0:
            self.use(specs[0][0])
        else:
            self.use_blend(dict(specs))

    @property
    def active(self) -> InferenceSession:
        return self._current or self.session()

    # -- running ----------------------------------------------------------------------------
    def classify(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """Label and probabilities per text with the active mode, or one adapter per text."""
        with self._lock:
            sess = self._session_with(adapters) if adapters is not None else self.active
            return sess.classify(list(texts), adapter_names=adapters)

    def logits(self, texts: Sequence[str], adapters: Sequence[str | None] | None = None) -> Any:
        with self._lock:
            sess = self._session_with(adapters) if adapters is not None else self.active
            return sess.logits(list(texts), adapter_names=adapters)

    def generate(self, prompt: str | list[dict[str, str]], *, stream: bool = False,
                 cancel: threading.Event | None = None, **params: Any) -> str | Iterator[str]:
        """Text from a prompt or chat messages (the adapter's recorded chat template).

        *cancel*: setting this event (from any thread) ends the generation at its next token."""
        from adapterstudio.ml.inference import GenerationParams

        return self.active.generate(prompt, _params(GenerationParams, params), stream=stream, cancel=cancel)

    def prompt_tokens(self, prompt: str | list[dict[str, str]]) -> int:
        """How many tokens *prompt* takes in the active mode (chat messages through its chat template)."""
        return self.active.count_tokens(prompt)

    @property
    def context_length(self) -> int | None:
        """The most tokens, prompt and completion together, the active model takes (None: no known limit)."""
        return self.active.context_length

    def generate_batch(self, prompts: Sequence[str | list[dict[str, str]]], adapters: Sequence[str | None],
                       **params: Any) -> list[str]:
        from adapterstudio.ml.inference import GenerationParams

        with self._lock:
            sess = self._session_with(adapters)
            return sess.generate_batch(prompts, adapters, _params(GenerationParams, params))

    def compare(self, prompt: str | list[dict[str, str]], adapters: Sequence[str | None], **params: Any) -> dict[str, Any]:
        """The same prompt through several adapters (``None``: base); one batch when they are one family."""
        with self._lock:
            sess = self._session_with(adapters)
            keys = [a or "base" for a in adapters]
            if sess.task == "CAUSAL_LM":
                from adapterstudio.ml.inference import GenerationParams

                outs = []
                for a in adapters:
                    sess.use(a)
                    outs.append(sess.generate(prompt, _params(GenerationParams, params)))
                self._current = sess
                return dict(zip(keys, outs, strict=True))
            texts: list[Any] = [prompt] * len(adapters) if isinstance(prompt, str) else prompt
            res = sess.classify(texts, adapter_names=list(adapters))  # one batch, one adapter per row
            return dict(zip(keys, res, strict=False))

    def stop(self) -> None:
        """Stop a running generation (from any thread)."""
        for s in list(self._sessions.values()):
            s.stop()

    def chat_template(self, adapter: str | None = None) -> dict[str, Any]:
        sess = self.attach(adapter) if adapter else self.active
        tpl, source = sess.chat_template(adapter)
        return {"template": tpl, "source": source}

    def cache_info(self) -> list[dict[str, Any]]:
        return [s.cache_info() for s in self._sessions.values()]

    def close(self) -> None:
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()
            self._current = None


def _params(cls: Any, params: dict[str, Any]) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInput(f"Unknown generation setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))}).")
    return cls(**{k: v for k, v in params.items() if v is not None})


def open_inference(lib: Library, base: str, *, device: str | None = None, precision: str | None = None,
                   max_resident: int | None = None, max_host: int | None = None,
                   ctx: TaskContext = NULL_CONTEXT) -> Inference:
    """An :class:`Inference` on catalogue base *base* (settings give device, precision, cache sizes)."""
    return Inference(lib, base, device=device, precision=precision, max_resident=max_resident,
                     max_host=max_host, ctx=ctx)


# -- export ---------------------------------------------------------------------------------
def export_merged(lib: Library, adapters: dict[str, float] | str, dest: str | Path, *,
                  precision: str | None = None, ctx: TaskContext = NULL_CONTEXT) -> Path:
    """Merge an adapter (or a weighted blend of LoRA adapters) into a full model folder (safetensors)."""
    from adapterstudio.ml.inference.export import merge_to_folder

    weights = {adapters: 1.0} if isinstance(adapters, str) else dict(adapters)
    if not weights:
        raise InvalidInput("Name at least one adapter to merge.")
    recs = [lib.catalogue.get_adapter(n) for n in weights]
    bases = {r.base for r in recs}
    if None in bases:
        raise NotFound(f"Adapter {recs[0].name!r} has no base in the catalogue; register its base first.")
    if len(bases) > 1:
        raise InvalidInput("Adapters to blend must share one base model.")
    base = lib.catalogue.get_base(bases.pop())  # type: ignore[arg-type]
    for r in recs:
        lib.require_compatible(r.name, base.name)
    tasks = {adapter_task(r) for r in recs}
    if len(tasks) > 1:
        raise InvalidInput("Adapters to blend must be for the same task.")
    task = tasks.pop()
    n = adapter_num_labels(recs[0]) if task in ("SEQ_CLS", "TOKEN_CLS", "IMAGE_CLS") else None
    if not base.path:
        raise NotFound(f"Base model {base.name!r} is not on this machine; merging needs its weights.")
    lineage = recs[0].lineage or {}
    return merge_to_folder(base.path, [(r.name, r.path, w) for r, w in zip(recs, weights.values(), strict=True)], dest,
                           task=task, num_labels=n, labels=lineage.get("labels"),
                           chat_template=lineage.get("chat_template"),
                           dtype=precision or lib.settings.precision, ctx=ctx)


def export_gguf(lib: Library, adapter: str, dest: str | Path, *, outtype: str = "f32",
                ctx: TaskContext = NULL_CONTEXT) -> dict[str, Any]:
    """A GGUF LoRA adapter plus an Ollama Modelfile, without merging (llama.cpp architectures)."""
    from adapterstudio.ml.inference.export import lora_to_gguf

    rec = lib.catalogue.get_adapter(adapter)
    if rec.base is None:
        raise NotFound(f"Adapter {adapter!r} has no base in the catalogue; register its base first.")
    base = lib.catalogue.get_base(rec.base)
    lib.require_compatible(adapter, base.name)
    if not base.path:
        raise NotFound(f"Base model {base.name!r} is not on this machine; its config is needed for the export.")
    return lora_to_gguf(Path(rec.path), Path(base.path), Path(dest), adapter_name=rec.name,
                        base_ref=base.hub_id or base.name, chat_template=(rec.lineage or {}).get("chat_template"),
                        outtype=outtype, ctx=ctx)
