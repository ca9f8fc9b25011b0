"""An inference session: one base model in memory, PEFT adapters hot-swapped over it.

Design (see docs/inference.md and ARCHITECTURE.md "Adapter hot-swap"):

* The base is loaded once with the transformers class the adapters' task needs.
* Adapters live in a three-tier LRU cache: up to ``max_resident`` on the device, up to
  ``max_host`` more in host memory (pinned when CUDA is present), the rest on disk.
  Memory is bounded by the tier sizes, however many adapters are cycled through.
* Plain LoRA adapters (linear layers, no DoRA) use *slots*: a PEFT adapter whose
  weights are views into one contiguous buffer per slot, pre-allocated at the largest
  rank in the session (smaller ranks are zero-padded, which changes nothing). Loading
  an adapter into a slot is one read of its file plus one copy; bringing one back from
  host memory is a single buffer copy; switching between resident adapters only flips
  the active-adapter pointers of the adapter layers (microseconds).
* Every other PEFT type (IA3, LoHa, LoKr, DoRA, prompt tuning...) goes through PEFT's
  own ``load_adapter`` / ``add_adapter`` / ``delete_adapter`` in the same cache.
* PEFT holds one adapter family (peft_type) per model; moving to an adapter of another
  family unwraps the adapter layers (the base weights are never touched or reloaded)
  and wraps again.
* :meth:`InferenceSession.compile` puts the model under ``torch.compile`` with one
  "live" slot whose scalings are tensors (``prepare_model_for_compiled_hotswap``);
  switching then copies a resident slot into it in place, so nothing recompiles.

All public methods are serialized by one lock: a session is used from one worker.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import Incompatible, InvalidInput, NotFound
from adapterstudio.core.peft_format import LINEAGE_TASKS, PROMPT_LEARNING_TYPES, TASK_CLASSES
from adapterstudio.ml.inference.weights import RawTensor, read_safetensors, read_st_header

BASE = "__base__"
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# -- device and dtype --------------------------------------------------------------------
def resolve_device(setting: str | None = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else CPU; or the named device."""
    s = (setting or "auto").strip()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if s.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"Device {s!r} was asked for but CUDA is not available on this machine; use cpu or auto.")
    try:
        return torch.device(s)
    except RuntimeError:
        raise InvalidInput(f"{s!r} is not a device (use auto, cpu, cuda, cuda:N or mps).") from None


def resolve_dtype(setting: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA when supported (else fp16), fp32 on CPU and MPS."""
    s = (setting or "auto").strip().lower()
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if s in table:
        return table[s]
    if s != "auto":
        raise InvalidInput(f"{setting!r} is not a precision (use auto, fp32, fp16 or bf16).")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# -- adapters ------------------------------------------------------------------------------
@dataclass
class AdapterEntry:
    """What the session knows of one adapter before loading it: config and file header."""

    name: str
    path: Path
    config: dict[str, Any]
    lineage: dict[str, Any]
    header: dict[str, RawTensor]
    peft_type: str
    task_type: str | None
    fast: bool = False  # eligible for slots (plain LoRA on linear layers)
    why_not_fast: str = ""
    rank: int = 0
    lora_modules: dict[str, int] = field(default_factory=dict)  # module path -> rank
    other_keys: tuple[str, ...] = ()  # modules_to_save tensors (e.g. a classifier head)
    scalings: dict[str, float] = field(default_factory=dict)  # module path -> alpha/r
    size_bytes: int = 0

    @property
    def weights(self) -> Path:
        return self.path / "adapter_model.safetensors"

    @property
    def labels(self) -> list[str] | None:
        labels = self.lineage.get("labels") if self.lineage else None
        return [str(x) for x in labels] if isinstance(labels, list) and labels else None

    @property
    def chat_template(self) -> str | None:
        t = self.lineage.get("chat_template") if self.lineage else None
        return t if isinstance(t, str) and t.strip() else None

    @property
    def family(self) -> str:
        return self.peft_type


def _strip_prefix(key: str) -> str:
    for p in ("base_model.model.", "base_model."):
        if key.startswith(p):
            return key[len(p):]
    return key


def _pattern_value(patterns: dict[str, Any], path: str, default: Any) -> Any:
    from peft.utils.other import get_pattern_key

    if not patterns:
        return default
    key = get_pattern_key(list(patterns.keys()), path)
    return patterns.get(key, default)


def describe_adapter(name: str, path: str | Path, lineage: dict[str, Any] | None = None) -> AdapterEntry:
    """Read an adapter's config and weights header (no weights) into an :class:`AdapterEntry`."""
    folder = Path(path)
    cfg_path = folder / "adapter_config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInput(f"{cfg_path} is missing or not valid JSON.") from None
    st = folder / "adapter_model.safetensors"
    if not st.is_file():
        raise InvalidInput(f"{folder} has no adapter_model.safetensors (inference loads safetensors only).")
    header, size = read_st_header(st)
    peft_type = str(config.get("peft_type", "")).upper()
    task = config.get("task_type") or None
    entry = AdapterEntry(name=name, path=folder, config=config, lineage=dict(lineage or {}), header=header,
                         peft_type=peft_type, task_type=str(task) if task else None, size_bytes=size)
    entry.fast, entry.why_not_fast = _fast_eligible(entry)
    if entry.fast:
        alpha = config.get("lora_alpha", 8)
        rs = bool(config.get("use_rslora"))
        for key, t in header.items():
            if key.endswith(".lora_A.weight"):
                mod = _strip_prefix(key[: -len(".lora_A.weight")])
                r = t.shape[0]
                entry.lora_modules[mod] = r
                a = float(_pattern_value(config.get("alpha_pattern") or {}, mod, alpha))
                entry.scalings[mod] = a / math.sqrt(r) if rs else a / r
        entry.rank = max(entry.lora_modules.values(), default=0)
        entry.other_keys = tuple(sorted(k for k in header if ".lora_" not in k))
    return entry


def _fast_eligible(e: AdapterEntry) -> tuple[bool, str]:
    c = e.config
    if e.peft_type != "LORA":
        return False, f"{e.peft_type} adapters load through PEFT"
    if c.get("use_dora") or c.get("lora_bias") or c.get("target_parameters") or c.get("layer_replication"):
        return False, "DoRA, LoRA bias, target_parameters and layer replication load through PEFT"
    if c.get("use_qalora") or c.get("use_bdlora") or c.get("alora_invocation_tokens"):
        return False, "this LoRA variant loads through PEFT"
    a_keys = {k[: -len(".lora_A.weight")] for k in e.header if k.endswith(".lora_A.weight")}
    b_keys = {k[: -len(".lora_B.weight")] for k in e.header if k.endswith(".lora_B.weight")}
    if not a_keys or a_keys != b_keys:
        return False, "not a plain lora_A/lora_B adapter"
    for k, t in e.header.items():
        if ".lora_" in k and not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")):
            return False, f"tensor {k} needs PEFT's loader"
        if ".lora_" in k and len(t.shape) != 2:
            return False, "convolution LoRA loads through PEFT"
        if "trainable_tokens" in k:
            return False, "trainable tokens load through PEFT"
    return True, ""


# -- cache tiers ---------------------------------------------------------------------------
class _Slot:
    """A PEFT LoRA adapter whose parameters are views of contiguous per-dtype buffers."""

    def __init__(self, name: str, rank: int, lora_modules: tuple[str, ...], other_keys: tuple[str, ...]) -> None:
        self.name = name
        self.rank = rank
        self.lora_modules = lora_modules
        self.other_keys = other_keys
        self.bufs: dict[torch.dtype, torch.Tensor] = {}
        self.views: dict[str, torch.Tensor] = {}  # file key -> view in a buffer
        self.layers: list[tuple[str, Any]] = []  # (module path, LoRA layer)
        self.occupant: str | None = None
        self.scale_factor = 1.0

    @property
    def layout(self) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in self.views.items())

    def fits(self, e: AdapterEntry) -> bool:
        return (e.fast and e.rank <= self.rank and set(e.lora_modules) <= set(self.lora_modules)
                and e.other_keys == self.other_keys)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.bufs.values())


@dataclass
class _HostEntry:
    kind: str  # "slot": packed buffers in a slot layout; "sd": a PEFT state dict
    layout: tuple = ()
    bufs: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        if self.kind == "slot":
            return sum(b.numel() * b.element_size() for b in self.bufs.values())
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())


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


class _StopOnEvent:
    """A StoppingCriteria: stops when asked to, or when a stop string appears."""

    def __init__(self, event: threading.Event, tokenizer: Any, prompt_len: int, stops: Sequence[str]) -> None:
        self.event, self.tok, self.prompt_len, self.stops = event, tokenizer, prompt_len, [s for s in stops if s]
        self.generated = 0
        self.last_token: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.generated = int(input_ids.shape[1]) - self.prompt_len
        self.last_token = int(input_ids[0, -1])
        if self.event.is_set():
            return done | True
        if self.stops:
            for i in range(input_ids.shape[0]):
                text = self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
                if any(s in text for s in self.stops):
                    done[i] = True
        return done


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


# -- the session ---------------------------------------------------------------------------
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
        self.max_resident, self.max_host = int(max_resident), int(max_host)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, self.device)
        self._slot_rank_hint = slot_rank
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.adapters: dict[str, AdapterEntry] = {}
        self._resident: OrderedDict[str, str] = OrderedDict()  # adapter -> PEFT adapter name (slot/generic)
        self._host: OrderedDict[str, _HostEntry] = OrderedDict()
        self._slots: dict[str, _Slot] = {}
        self._generic: dict[str, str] = {}  # PEFT name -> adapter
        self._counter = 0
        self._family: str | None = None
        self._peft: Any = None
        self._tuner_layers: list[Any] = []
        self._aux: list[Any] = []
        self._mode: tuple[str, dict[str, float]] = ("base", {})
        self._compiled: Any = None
        self._live: _Slot | None = None
        self._live_scal: torch.Tensor | None = None
        self._host_pool: dict[tuple, list[torch.Tensor]] = {}
        self.stats = {"disk_loads": 0, "host_loads": 0, "evictions": 0, "switches": 0}
        self.last_generation: dict[str, Any] = {}  # prompt/completion token counts, finish_reason
        self._load_base(task, num_labels, ctx)

    # -- loading the base -------------------------------------------------------------
    def _load_base(self, task: str | None, num_labels: int | None, ctx: TaskContext) -> None:
        import transformers

        folder = self.base_path
        if not (folder / "config.json").is_file():
            raise InvalidInput(f"{folder} is not a model folder (it has no config.json).")
        if not any(folder.glob("*.safetensors")):
            raise InvalidInput(f"{folder} has no .safetensors weights; inference loads safetensors only.")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if task is None:
            arch = (config.get("architectures") or [""])[0]
            task = ("CAUSAL_LM" if arch.endswith(("ForCausalLM", "LMHeadModel")) else
                    "SEQ_CLS" if arch.endswith("ForSequenceClassification") else
                    "TOKEN_CLS" if arch.endswith("ForTokenClassification") else
                    "IMAGE_CLS" if arch.endswith("ForImageClassification") else "FEATURE_EXTRACTION")
        if task not in TASK_CLASSES:
            raise InvalidInput(f"Task {task!r} is not supported for inference (supported: {', '.join(TASK_CLASSES)}).")
        self.task = task
        cls = getattr(transformers, TASK_CLASSES[task])
        kwargs: dict[str, Any] = {}
        if num_labels and task in ("SEQ_CLS", "TOKEN_CLS", "IMAGE_CLS"):
            kwargs["num_labels"] = int(num_labels)
        ctx.progress(0, 2, f"loading {self.base_name}")
        ctx.check_cancelled()
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            # a new head (num_labels) is initialised randomly; seed it so base-only runs repeat
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = cls.from_pretrained(str(folder), dtype=self.dtype, use_safetensors=True,
                                            trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{folder} cannot be loaded as {TASK_CLASSES[task]}: {str(exc).splitlines()[0]}") from None
        finally:
            transformers.logging.set_verbosity(verbosity)
            transformers.utils.logging.enable_progress_bar()
        ctx.check_cancelled()
        self.model = model.to(self.device).eval()
        self.num_labels = getattr(self.model.config, "num_labels", None)
        self.tokenizer = None
        if task != "IMAGE_CLS":
            try:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            except (OSError, ValueError, TypeError):
                self.tokenizer = None
        if self.tokenizer is not None and self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        ctx.progress(2, 2, "base loaded")

    @property
    def peft_model(self) -> Any:
        """The PEFT model wrapping the base (None until an adapter was loaded)."""
        return self._peft

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
            self._entry(name)
            self._forget(name)
            del self.adapters[name]

    def _forget(self, name: str) -> None:
        if name in self._resident:
            self._evict(name, keep_host=False)
        self._host.pop(name, None)
        if name in self._mode[1]:
            self._mode = ("base", {})

    def _entry(self, name: str) -> AdapterEntry:
        try:
            return self.adapters[name]
        except KeyError:
            raise NotFound(f"Adapter {name!r} is not attached to this session.") from None

    # -- PEFT wrapping --------------------------------------------------------------------
    def _peft_config(self, e: AdapterEntry, rank: int | None = None) -> Any:
        from peft import PeftConfig

        try:
            cfg = PeftConfig.from_pretrained(str(e.path))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"{e.path / 'adapter_config.json'} cannot be read by PEFT: {exc}") from None
        cfg.inference_mode = True
        if rank is not None:  # a slot: rank padded, scalings set per adapter by the session
            cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern, cfg.use_rslora = rank, rank, {}, {}, False
            cfg.init_lora_weights = False
        return cfg

    def _new_name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _unwrap(self) -> None:
        """Remove every adapter layer, restoring the base modules (base weights untouched)."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        if self._peft is None:
            return
        for name in list(self._resident):
            self._evict(name, keep_host=True, delete=False)
        for _mod_name, module in list(self.model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, AuxiliaryTrainingWrapper):
                    setattr(module, child_name, child.original_module)
                elif isinstance(child, BaseTunerLayer):
                    setattr(module, child_name, child.get_base_layer())
        for attr in ("peft_config",):
            if hasattr(self.model, attr):
                try:
                    delattr(self.model, attr)
                except AttributeError:
                    pass
        self._peft = None
        self._family = None
        self._slots.clear()
        self._generic.clear()
        self._live = None
        self._compiled = None
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        if self._peft is None:
            self._tuner_layers, self._aux = [], []
            return
        self._tuner_layers = [m for m in self._peft.modules() if isinstance(m, BaseTunerLayer)]
        self._aux = [m for m in self._peft.modules() if isinstance(m, AuxiliaryTrainingWrapper)]

    def _wrap_with(self, peft_name: str, config: Any, *, low_cpu: bool) -> None:
        from peft import get_peft_model

        self._family = self._family or str(getattr(config, "peft_type", "")).split(".")[-1].upper()
        if self._peft is None:
            self._peft = get_peft_model(self.model, config, adapter_name=peft_name,
                                        low_cpu_mem_usage=low_cpu)
            self._peft.eval()
        else:
            self._peft.add_adapter(peft_name, config, low_cpu_mem_usage=low_cpu)

    # -- the cache ----------------------------------------------------------------------
    def _ensure_family(self, e: AdapterEntry) -> None:
        if self._family is not None and self._family != e.family:
            if self._compiled is not None:
                raise InvalidInput(f"Adapter {e.name!r} is {e.peft_type}; a compiled session swaps LoRA adapters only.")
            self._unwrap()
        self._family = e.family

    def _make_resident(self, name: str) -> str:
        """Make *name* resident on the device; return its PEFT adapter name."""
        e = self._entry(name)
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name]
        self._ensure_family(e)
        if e.fast:
            slot = self._free_slot_for(e)
            self._fill_slot(slot, e)
            peft_name = slot.name
        else:
            while len(self._resident) >= self.max_resident:
                self._evict(next(iter(self._resident)))
            peft_name = self._load_generic(e)
        self._resident[name] = peft_name
        return peft_name

    def _pinned(self) -> bool:
        return self.device.type == "cuda"

    def _alloc_host(self, shape_key: tuple, numel: int, dtype: torch.dtype) -> torch.Tensor:
        pool = self._host_pool.get(shape_key)
        if pool:
            return pool.pop()
        t = torch.empty(numel, dtype=dtype, pin_memory=self._pinned())
        return t

    def _free_host(self, h: _HostEntry) -> None:
        if h.kind == "slot":
            for dt, b in h.bufs.items():
                key = (h.layout, dt)
                pool = self._host_pool.setdefault(key, [])
                if len(pool) < 2:
                    pool.append(b)
            # bound the pool: only layouts still in use keep spare buffers
            if len(self._host_pool) > 8:
                for k in list(self._host_pool)[:-8]:
                    del self._host_pool[k]

    def _put_host(self, name: str, h: _HostEntry) -> None:
        if self.max_host == 0:
            self._free_host(h)
            return
        old = self._host.pop(name, None)
        if old is not None and old is not h:
            self._free_host(old)
        self._host[name] = h
        while len(self._host) > self.max_host:
            _, dropped = self._host.popitem(last=False)
            self._free_host(dropped)

    def _evict(self, name: str, keep_host: bool = True, delete: bool = True) -> None:
        peft_name = self._resident.pop(name)
        self.stats["evictions"] += 1
        if peft_name in self._slots:
            slot = self._slots[peft_name]
            if keep_host and self.max_host > 0 and name not in self._host:
                h = _HostEntry("slot", layout=slot.layout)
                for dt, b in slot.bufs.items():
                    hb = self._alloc_host((h.layout, dt), b.numel(), dt)
                    hb.copy_(b)
                    h.bufs[dt] = hb
                self._put_host(name, h)
            elif name in self._host:
                self._host.move_to_end(name)
            slot.occupant = None
        else:
            if keep_host and self.max_host > 0 and name not in self._host and self._peft is not None:
                from peft import get_peft_model_state_dict

                sd = get_peft_model_state_dict(self._peft, adapter_name=peft_name)
                h = _HostEntry("sd", state_dict={k: v.detach().to("cpu", copy=True) for k, v in sd.items()})
                self._put_host(name, h)
            self._generic.pop(peft_name, None)
            if delete and self._peft is not None:
                self._delete_peft_adapter(peft_name)

    def _delete_peft_adapter(self, peft_name: str) -> None:
        assert self._peft is not None
        if len(self._peft.peft_config) <= 1:
            self._unwrap_keep_nothing()
            return
        self._peft.delete_adapter(peft_name)
        self._refresh_layers()

    def _unwrap_keep_nothing(self) -> None:
        resident = list(self._resident)
        for n in resident:
            self._resident.pop(n)
        self._unwrap()

    def _free_slot_for(self, e: AdapterEntry) -> _Slot:
        free = [s for s in self._slots.values() if s.occupant is None and s.fits(e)]
        if free:
            return free[0]
        if len(self._resident) >= self.max_resident:
            # evict the least recently used adapter whose slot fits, else the least recent one
            victim = next((n for n, p in self._resident.items() if p in self._slots and self._slots[p].fits(e)), None)
            if victim is not None:
                p = self._resident[victim]
                self._evict(victim)
                return self._slots[p]
            self._evict(next(iter(self._resident)))
        # drop empty slots that do not fit (their memory comes back before the new one is made)
        return self._create_slot(e)

    def _slot_rank(self, e: AdapterEntry) -> int:
        ranks = [a.rank for a in self.adapters.values() if a.fast and a.other_keys == e.other_keys]
        r = max([e.rank, *ranks])
        if self._slot_rank_hint:
            r = max(r, int(self._slot_rank_hint))
        return r

    def _create_slot(self, e: AdapterEntry, drop_unused: bool = True) -> _Slot:
        for s in [s for s in self._slots.values() if s.occupant is None and drop_unused]:
            # an unused slot of another layout: give its memory back first
            del self._slots[s.name]
            self._delete_peft_adapter(s.name)
        rank = self._slot_rank(e)
        name = self._new_name("slot")
        self._wrap_with(name, self._peft_config(e, rank=rank), low_cpu=True)
        slot = _Slot(name, rank, tuple(sorted(e.lora_modules)), e.other_keys)
        self._bind_slot(slot)
        self._slots[name] = slot
        self._refresh_layers()
        self._deactivate_new(name)
        return slot

    def _bind_slot(self, slot: _Slot) -> None:
        """Re-point the slot's PEFT parameters at views of one contiguous buffer per dtype."""
        assert self._peft is not None
        tag = f".{slot.name}."
        params: list[tuple[str, str, torch.nn.Module, str, torch.Tensor]] = []
        for pname, p in self._peft.named_parameters():
            if tag not in pname and not pname.endswith(f".{slot.name}"):
                continue
            key = pname.replace(f".modules_to_save.{slot.name}.", ".").replace(tag, ".")
            mod_name, _, attr = pname.rpartition(".")
            params.append((pname, key, self._peft.get_submodule(mod_name), attr, p))
        dtype_of = {id(p): p.dtype for _, _, _, _, p in params}
        totals: dict[torch.dtype, int] = {}
        for _, _, _, _, p in params:
            totals[dtype_of[id(p)]] = totals.get(dtype_of[id(p)], 0) + p.numel()
        slot.bufs = {dt: torch.zeros(n, dtype=dt, device=self.device) for dt, n in totals.items()}
        offs = dict.fromkeys(totals, 0)
        views: dict[str, torch.Tensor] = {}
        for _pname, key, module, attr, p in sorted(params, key=lambda x: x[1]):
            dt = dtype_of[id(p)]
            v = slot.bufs[dt][offs[dt]: offs[dt] + p.numel()].view(p.shape)
            offs[dt] += p.numel()
            if p.device.type != "meta":
                v.copy_(p.detach())  # keeps a head's original values where an adapter has none
            setattr(module, attr, torch.nn.Parameter(v, requires_grad=False))
            views[key] = v
        slot.views = views
        base = self._peft.base_model.model
        slot.layers = [(m, base.get_submodule(m)) for m in slot.lora_modules]

    def _deactivate_new(self, peft_name: str) -> None:
        # PEFT may activate a freshly added adapter on some layers; restore the current mode
        self._apply_mode()

    def _fill_slot(self, slot: _Slot, e: AdapterEntry) -> None:
        h = self._host.get(e.name)
        if h is not None and h.kind == "slot" and h.layout == slot.layout:
            for dt, b in slot.bufs.items():
                b.copy_(h.bufs[dt], non_blocking=True)  # one copy per buffer
            self._host.move_to_end(e.name)
            self.stats["host_loads"] += 1
            if self.device.type == "cuda":  # the pinned source may be recycled right after
                torch.cuda.current_stream(self.device).synchronize()
        else:
            tensors = read_safetensors(e.weights, e.header) if h is None or h.kind != "slot" else None
            if tensors is None:
                tensors = self._unpack_host(h)
            else:
                self.stats["disk_loads"] += 1
            if self.device.type == "cuda":
                # pack into pinned host memory, then one copy to the device; the packed
                # buffer is the adapter's host-tier entry
                layout = slot.layout
                hb = {dt: self._alloc_host((layout, dt), b.numel(), dt) for dt, b in slot.bufs.items()}
                host_views = _views_like(slot, hb)
                _pack(host_views, tensors, slot.rank)
                for dt, b in slot.bufs.items():
                    b.copy_(hb[dt], non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()
                self._put_host(e.name, _HostEntry("slot", layout=layout, bufs=hb))
            else:
                _pack(slot.views, tensors, slot.rank)
        slot.occupant = e.name
        slot.scale_factor = 1.0
        if self._compiled is not None:
            return  # under compile only the live slot's tensor scalings are read
        for mod, layer in slot.layers:
            layer.scaling[slot.name] = e.scalings.get(mod, 0.0)

    def _unpack_host(self, h: _HostEntry) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        offs: dict[torch.dtype, int] = {}
        for key, shape, dt in h.layout:
            n = math.prod(shape)
            o = offs.get(dt, 0)
            out[key] = h.bufs[dt][o: o + n].view(shape)
            offs[dt] = o + n
        return out

    def _load_generic(self, e: AdapterEntry) -> str:
        from peft import PeftModel, set_peft_model_state_dict

        name = self._new_name("peft")
        h = self._host.get(e.name)
        if h is not None and h.kind == "sd":
            self._wrap_with(name, self._peft_config(e), low_cpu=False)
            set_peft_model_state_dict(self._peft, {k: v.to(self.device) for k, v in h.state_dict.items()},
                                      adapter_name=name)
            self._host.move_to_end(e.name)
            self.stats["host_loads"] += 1
        elif self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, str(e.path), adapter_name=name, is_trainable=False,
                                                   use_safetensors=True)
            self._peft.eval()
            self.stats["disk_loads"] += 1
        else:
            self._peft.load_adapter(str(e.path), adapter_name=name, is_trainable=False, use_safetensors=True)
            self.stats["disk_loads"] += 1
        self._generic[name] = e.name
        self._refresh_layers()
        self._peft.eval()
        self._apply_mode()
        return name

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
            self._entry(name)
            peft_name = self._make_resident(name)
            self._mode = ("single", {name: 1.0})
            if self._compiled is not None:
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
            if self._compiled is not None:
                raise InvalidInput("Blends are not available on a compiled session; use an uncompiled one.")
            entries = [self._entry(n) for n in weights]
            for e in entries:
                if not e.fast:
                    raise InvalidInput(f"Adapter {e.name!r} cannot be blended: blends combine plain LoRA adapters "
                                       f"({e.why_not_fast}).")
            for n in weights:
                self._make_resident(n)
            for n in weights:  # none of them was evicted by a later one
                if n not in self._resident:
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
        if self._peft is None:
            return
        kind, weights = self._mode
        if kind == "base" or not weights:
            names: list[str] = []
        else:
            order = sorted(weights, key=lambda n: -abs(weights[n]))
            names = [self._resident[n] for n in order if n in self._resident]
        first = names[0] if names else next(iter(self._peft.peft_config))
        active, disabled = (names if names else [first]), not names
        for layer in self._tuner_layers:
            # plain attributes: write the instance dict directly (nn.Module.__setattr__ is slow)
            d = layer.__dict__
            d["_active_adapter"] = active
            d["_disable_adapters"] = disabled
        for w in self._aux:
            n = next((s for s in names if s in w.modules_to_save), None) if hasattr(w, "modules_to_save") else None
            w.__dict__["_active_adapter"] = [n] if n else []
        try:
            self._peft.base_model.active_adapter = first
        except AttributeError:
            pass
        if getattr(self._peft, "active_adapter", None) != first and hasattr(self._peft, "set_adapter") and \
                self._family in PROMPT_LEARNING_TYPES:
            self._peft.set_adapter(first)
        # scalings: blend weights multiply each slot's own alpha/r
        for n, pn in self._resident.items():
            slot = self._slots.get(pn)
            if slot is None:
                continue
            factor = weights.get(n, 1.0) if kind == "blend" else 1.0
            if factor != slot.scale_factor:
                e = self.adapters[n]
                for mod, layer in slot.layers:
                    layer.scaling[slot.name] = e.scalings.get(mod, 0.0) * factor
                slot.scale_factor = factor

    # -- compile ------------------------------------------------------------------------
    def compile(self, adapter: str, **compile_kwargs: Any) -> None:
        """Put the model under torch.compile; later :meth:`use` calls copy in place (no recompile).

        *adapter* (a plain LoRA adapter) fixes the layout every swapped-in adapter must share.
        """
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        with self._lock:
            e = self._entry(adapter)
            if not e.fast:
                raise InvalidInput(f"Adapter {adapter!r} cannot be hot-swapped under compile ({e.why_not_fast}).")
            self._make_resident(adapter)
            while len(self._slots) < self.max_resident:  # every slot exists before compiling
                self._create_slot(e, drop_unused=False)
            live = self._create_live(e)
            prepare_model_for_compiled_hotswap(self._peft, check_compiled="ignore")
            self._live_scal = torch.zeros(len(live.layers), dtype=torch.float32, device=self.device)
            for i, (_, layer) in enumerate(live.layers):
                layer.scaling[live.name] = self._live_scal[i]
            self._live = live
            self._mode = ("single", {adapter: 1.0})
            for layer in self._tuner_layers:
                layer._active_adapter = [live.name]
                layer._disable_adapters = False
            for w in self._aux:
                w._active_adapter = [live.name] if live.name in getattr(w, "modules_to_save", {}) else []
            self._swap_live(self._resident[adapter])
            self._compiled = torch.compile(self._peft, **compile_kwargs)

    def _create_live(self, e: AdapterEntry) -> _Slot:
        name = self._new_name("live")
        self._wrap_with(name, self._peft_config(e, rank=self._slot_rank(e)), low_cpu=True)
        live = _Slot(name, self._slot_rank(e), tuple(sorted(e.lora_modules)), e.other_keys)
        self._bind_slot(live)
        self._refresh_layers()
        return live

    def _swap_live(self, peft_name: str) -> None:
        assert self._live is not None and self._live_scal is not None
        slot = self._slots.get(peft_name)
        if slot is None or slot.layout != self._live.layout:
            raise InvalidInput("Under torch.compile every adapter must target the same modules at the same "
                               "maximum rank as the one compiled with.")
        e = self.adapters[slot.occupant or ""]
        for dt, b in self._live.bufs.items():
            b.copy_(slot.bufs[dt], non_blocking=True)
        vec = torch.tensor([e.scalings.get(m, 0.0) for m, _ in self._live.layers], dtype=torch.float32)
        self._live_scal.copy_(vec, non_blocking=True)

    # -- running the model -------------------------------------------------------------
    def _runner(self) -> Any:
        if self._compiled is not None:
            return self._compiled
        return self._peft if self._peft is not None else self.model

    def _row_names(self, adapter_names: Sequence[str | None]) -> list[str]:
        if self._compiled is not None:
            raise InvalidInput("Per-row adapters are not available on a compiled session.")
        distinct = [n for n in dict.fromkeys(adapter_names) if n not in (None, BASE, "")]
        if len(distinct) > self.max_resident:
            raise InvalidInput(f"A batch with {len(distinct)} different adapters needs max_resident >= {len(distinct)}.")
        for n in distinct:
            self._entry(n)
        for n in distinct:
            self._make_resident(n)
        for n in distinct:
            if n not in self._resident:
                raise InvalidInput("The batch's adapters do not fit the device cache; raise max_resident.")
        fams = {self.adapters[n].family for n in distinct}
        if len(fams) > 1:
            raise InvalidInput("One batch can only mix adapters of one PEFT type.")
        # rows use each adapter alone: adapters enabled, blend factors off (restored after)
        for n, pn in self._resident.items():
            slot = self._slots.get(pn)
            if slot is not None and slot.scale_factor != 1.0:
                for mod, layer in slot.layers:
                    layer.scaling[slot.name] = self.adapters[n].scalings.get(mod, 0.0)
                slot.scale_factor = 1.0
        for layer in self._tuner_layers:
            layer._disable_adapters = False
        return [BASE if n in (None, BASE, "") else self._resident[n] for n in adapter_names]

    def _forward(self, batch: dict[str, torch.Tensor], adapter_names: Sequence[str | None] | None) -> Any:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            if adapter_names is not None:
                if len(adapter_names) != next(iter(batch.values())).shape[0]:
                    raise InvalidInput("adapter_names must name one adapter (or None for the base) per input row.")
                rows = self._row_names(adapter_names)
                if self._peft is None:
                    return self.model(**batch)
                try:
                    return self._peft(**batch, adapter_names=rows)
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(f"Per-row adapters are not supported here: {exc}") from None
                finally:
                    self._apply_mode()
            if self._mode[0] == "base" and self._peft is not None:
                if self._compiled is not None:
                    raise InvalidInput("A compiled session always runs an adapter; use an uncompiled one for the base.")
                if self._family in PROMPT_LEARNING_TYPES:
                    with self._peft.disable_adapter():
                        out = self._peft(**batch)
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

    def logits(self, texts: Sequence[str] | dict[str, torch.Tensor], adapter_names: Sequence[str | None] | None = None) -> torch.Tensor:
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
            out = []
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
                    toks = self.tokenizer.convert_ids_to_tokens(ids.tolist())  # type: ignore[union-attr]
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
        templates = {n: self.adapters[n].chat_template for n in names if n in self.adapters}
        recorded = {t for t in templates.values() if t}
        if len(recorded) > 1:
            raise InvalidInput("The blended adapters were trained with different chat templates; "
                               "blend adapters that share one.")
        if recorded:
            return recorded.pop(), "adapter lineage"
        tok_tpl = getattr(self.tokenizer, "chat_template", None) if self.tokenizer is not None else None
        if tok_tpl:
            return tok_tpl, "base tokenizer"
        return None, "none"

    def format_chat(self, messages: list[dict[str, str]], name: str | None = None) -> str:
        if self.tokenizer is None:
            raise InvalidInput(f"Base model {self.base_name!r} has no tokenizer; chat needs one.")
        tpl, _src = self.chat_template(name)
        if tpl is None:
            raise InvalidInput(f"Neither the adapter nor base model {self.base_name!r} records a chat template; "
                               "send a plain prompt (completion) instead.")
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=tpl, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001  (a broken template is the user's data: re-raised as a sentence)
            raise InvalidInput(f"The chat template could not be applied: {exc}") from None

    def stop(self) -> None:
        """Ask a running generation to stop at its next token (any thread)."""
        self._stop.set()

    def _gen_kwargs(self, p: GenerationParams) -> dict[str, Any]:
        p.validate()
        kw: dict[str, Any] = {"max_new_tokens": int(p.max_new_tokens)}
        if p.temperature and p.temperature > 0:
            kw.update(do_sample=True, temperature=float(p.temperature), top_p=float(p.top_p))
        else:
            kw.update(do_sample=False)
        tok = self.tokenizer
        if tok is not None:
            kw["pad_token_id"] = tok.pad_token_id
            if tok.eos_token_id is not None:
                kw["eos_token_id"] = tok.eos_token_id
        return kw

    def _prepare_prompt(self, prompt: str | list[dict[str, str]], add_special: bool | None = None) -> tuple[dict, int]:
        if self.task != "CAUSAL_LM":
            raise InvalidInput(f"Generation needs a causal-LM base or adapter; this session runs {self.task}.")
        if self.tokenizer is None:
            raise InvalidInput(f"Base model {self.base_name!r} has no tokenizer; generation needs one.")
        if isinstance(prompt, list):
            text = self.format_chat(prompt)
            special = False  # the template writes its own special tokens
        else:
            text = prompt
            special = True if add_special is None else add_special
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=special)
        return dict(enc), enc["input_ids"].shape[1]

    def generate(self, prompt: str | list[dict[str, str]], params: GenerationParams | None = None, *,
                 stream: bool = False, **overrides: Any) -> str | Iterator[str]:
        """Generate from a prompt (or chat messages) with the current mode.

        ``stream=True`` returns an iterator of text pieces as they are produced; the
        session stays locked until it is exhausted (or :meth:`stop` is called).
        """
        p = params or GenerationParams()
        for k, v in overrides.items():
            setattr(p, k, v)
        if stream:
            return self._generate_stream(prompt, p)
        return "".join(self._generate_stream(prompt, p))

    def _generate_stream(self, prompt: str | list[dict[str, str]], p: GenerationParams) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        with self._lock:
            batch, plen = self._prepare_prompt(prompt)
            kw = self._gen_kwargs(p)
            self._stop.clear()
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
            stopper = _StopOnEvent(self._stop, self.tokenizer, plen, list(p.stop))
            error: list[BaseException] = []
            model = self._peft if self._peft is not None else self.model
            batch = {k: v.to(self.device) for k, v in batch.items()}

            def work() -> None:
                try:
                    with torch.inference_mode():
                        if p.seed is not None:
                            torch.manual_seed(int(p.seed))
                        if self._mode[0] == "base" and self._peft is not None and self._family in PROMPT_LEARNING_TYPES:
                            with self._peft.disable_adapter():
                                model.generate(**batch, **kw, streamer=streamer,
                                               stopping_criteria=StoppingCriteriaList([stopper]))
                        else:
                            model.generate(**batch, **kw, streamer=streamer,
                                           stopping_criteria=StoppingCriteriaList([stopper]))
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
                    cut, hit = _cut_at_stop(text, p.stop)
                    # hold back a tail that might be the start of a stop string
                    hold = max((len(s) - 1 for s in p.stop if s), default=0)
                    safe = len(cut) if hit else max(emitted, len(cut) - hold)
                    if safe > emitted:
                        yield cut[emitted:safe]
                        emitted = safe
                    if hit:
                        stopped_by_string = True
                        self._stop.set()
                        break
                else:
                    finished = True
                    cut, _ = _cut_at_stop(text, p.stop)
                    if len(cut) > emitted:
                        yield cut[emitted:]
            finally:
                self._stop.set()
                if not finished:
                    worker.join(timeout=600)  # the stop criterion ends it at the next token
                worker.join()
                self._stop.clear()
                if self._mode[0] == "base":
                    self._apply_mode()
            eos = kw.get("eos_token_id")
            self.last_generation = {
                "prompt_tokens": plen, "completion_tokens": stopper.generated,
                "finish_reason": ("stop" if stopped_by_string or stopper.last_token == eos
                                  else "length" if stopper.generated >= kw["max_new_tokens"] else "stop"),
            }
            if error and not isinstance(error[0], (KeyboardInterrupt,)):
                exc = error[0]
                if isinstance(exc, (ValueError, TypeError)):
                    raise InvalidInput(f"Generation failed: {exc}") from None
                raise exc

    def generate_batch(self, prompts: Sequence[str | list[dict[str, str]]], adapter_names: Sequence[str | None],
                       params: GenerationParams | None = None) -> list[str]:
        """One batch, one adapter per row (``None`` for the base), greedy or sampled."""
        with self._lock:
            p = params or GenerationParams()
            if len(prompts) != len(adapter_names):
                raise InvalidInput("generate_batch needs one adapter name (or None) per prompt.")
            if self.tokenizer is None or self.task != "CAUSAL_LM":
                raise InvalidInput("Batched generation needs a causal-LM base with a tokenizer.")
            texts = [self.format_chat(x, n) if isinstance(x, list) else x for x, n in zip(prompts, adapter_names, strict=True)]
            side = self.tokenizer.padding_side
            self.tokenizer.padding_side = "left"
            try:
                enc = dict(self.tokenizer(texts, return_tensors="pt", padding=True))
            finally:
                self.tokenizer.padding_side = side
            rows = self._row_names(adapter_names)
            kw = self._gen_kwargs(p)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                if p.seed is not None:
                    torch.manual_seed(int(p.seed))
                model = self._peft if self._peft is not None else self.model
                extra = {"adapter_names": rows} if self._peft is not None else {}
                try:
                    out = model.generate(**enc, **kw, **extra)
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(f"Per-row adapters are not supported here: {exc}") from None
                finally:
                    self._apply_mode()
            plen = enc["input_ids"].shape[1]
            res = []
            for i in range(len(texts)):
                t = self.tokenizer.decode(out[i, plen:], skip_special_tokens=True)
                res.append(_cut_at_stop(t, p.stop)[0])
            return res

    # -- introspection --------------------------------------------------------------------
    def cache_info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "task": self.task,
                "family": self._family, "max_resident": self.max_resident, "max_host": self.max_host,
                "resident": list(self._resident), "host": list(self._host),
                "slots": len(self._slots), "slot_bytes": sum(s.nbytes() for s in self._slots.values()),
                "host_bytes": sum(h.nbytes() for h in self._host.values()),
                "compiled": self._compiled is not None, **self.stats,
            }

    def close(self) -> None:
        with self._lock:
            self._unwrap()
            self._host.clear()
            self._host_pool.clear()
            self.adapters.clear()


def _label(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else f"LABEL_{k}"


def _views_like(slot: _Slot, bufs: dict[torch.dtype, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    offs: dict[torch.dtype, int] = {}
    for key, v in slot.views.items():
        dt = v.dtype
        o = offs.get(dt, 0)
        out[key] = bufs[dt][o: o + v.numel()].view(v.shape)
        offs[dt] = o + v.numel()
    return out


def _pack(views: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], rank: int) -> None:
    """Copy an adapter's tensors into slot views, zero-padding ranks below the slot's."""
    for key, dst in views.items():
        src = tensors.get(key)
        if src is None:
            if ".lora_" in key:
                dst.zero_()
            continue
        if key.endswith(".lora_A.weight"):
            r = src.shape[0]
            dst[:r].copy_(src)
            if r < dst.shape[0]:
                dst[r:].zero_()
        elif key.endswith(".lora_B.weight"):
            r = src.shape[1]
            dst[:, :r].copy_(src)
            if r < dst.shape[1]:
                dst[:, r:].zero_()
        else:
            dst.copy_(src)
