"""What the session knows of an adapter before loading it, and which loading path it takes.

:func:`describe_adapter` reads an adapter's config and weights header (no weights). An
adapter goes through the *slot* path (see :mod:`adapterstudio.ml.inference.slots`) only
when everything about it is on :data:`SLOT_LORA_FIELDS`, the allow-list of what that
path supports; anything else, including a LoRA variant a newer PEFT adds, loads through
PEFT's own loader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.peft_format import CONFIG_NAME, SAFE_WEIGHTS, split_adapter_key
from adapterstudio.ml.inference.weights import RawTensor, read_st_header

LORA_A, LORA_B = "lora_A.weight", "lora_B.weight"

# The LoRA config fields the slot path supports, each with the values it supports (None:
# any value). A slot is a plain LoRA layer built by PEFT from the adapter's own config
# (rank padded, scalings alpha/r or alpha/sqrt(r) per module, set by the session), plus
# any ``modules_to_save`` head. Every field not named here must be absent or unset
# (null, false, empty): a variant that PEFT adds later (a new flag or config block, as
# DoRA, aLoRA, VeLoRA, MonteCLoRA, Arrow... were) then takes PEFT's path, not a slot.
SLOT_LORA_FIELDS: dict[str, frozenset[Any] | None] = {
    # bookkeeping: no effect on the forward pass
    "peft_type": None, "task_type": None, "auto_mapping": None, "peft_version": None,
    "base_model_name_or_path": None, "revision": None, "inference_mode": None,
    # which modules are adapted: PEFT builds the slot's layers from the same config
    "target_modules": None, "exclude_modules": None, "layers_to_transform": None, "layers_pattern": None,
    "modules_to_save": None,
    "fan_in_fan_out": None,  # a Conv1D weight's orientation: changes merging, not the unmerged forward
    # the scaling, read per module by describe_adapter (ranks come from the tensors)
    "r": None, "lora_alpha": None, "use_rslora": None, "rank_pattern": None, "alpha_pattern": None,
    "lora_dropout": None,  # inactive at inference
    "megatron_core": None,  # a module name, used only with megatron_config
    "qalora_group_size": None,  # used only with use_qalora
    "runtime_config": None,  # how PEFT loads (GPU offload), not what the layer computes
    "bias": frozenset({"none"}),
    # initialisations that do not rewrite the base weights (PiSSA, OLoRA, LoftQ... do)
    "init_lora_weights": frozenset({True, False, "gaussian"}),
}


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
        return self.path / SAFE_WEIGHTS

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


def describe_adapter(name: str, path: str | Path, lineage: dict[str, Any] | None = None) -> AdapterEntry:
    """Read an adapter's config and weights header (no weights) into an :class:`AdapterEntry`."""
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInput(f"{cfg_path} is missing or not valid JSON.") from None
    st = folder / SAFE_WEIGHTS
    if not st.is_file():
        raise InvalidInput(f"{folder} has no {SAFE_WEIGHTS} (inference loads safetensors only).")
    header, size = read_st_header(st)
    peft_type = str(config.get("peft_type", "")).upper()
    task = config.get("task_type") or None
    entry = AdapterEntry(name=name, path=folder, config=config, lineage=dict(lineage or {}), header=header,
                         peft_type=peft_type, task_type=str(task) if task else None, size_bytes=size)
    entry.fast, entry.why_not_fast = slot_eligibility(entry)
    if entry.fast:
        alpha = config.get("lora_alpha", 8)
        rs = bool(config.get("use_rslora"))
        for key, t in header.items():
            mod = _lora_module(key, LORA_A)
            if mod is not None:
                r = t.shape[0]
                entry.lora_modules[mod] = r
                a = float(_pattern_value(config.get("alpha_pattern") or {}, mod, alpha))
                entry.scalings[mod] = a / math.sqrt(r) if rs else a / r
        entry.rank = max(entry.lora_modules.values(), default=0)
        entry.other_keys = tuple(sorted(k for k in header if ".lora_" not in k))
    return entry


def slot_eligibility(e: AdapterEntry) -> tuple[bool, str]:
    """Whether *e* can live in a slot (everything about it on the allow-list), and if not, why."""
    if e.peft_type != "LORA":
        return False, f"{e.peft_type} adapters load through PEFT"
    for key, value in e.config.items():
        allowed = SLOT_LORA_FIELDS.get(key, frozenset())
        if allowed is None or not value or (isinstance(value, (str, bool)) and value in allowed):
            continue
        return False, f"LoRA with {key}={value!r} loads through PEFT"
    a_mods = {m for m in (_lora_module(k, LORA_A) for k in e.header) if m is not None}
    b_mods = {m for m in (_lora_module(k, LORA_B) for k in e.header) if m is not None}
    if not a_mods or a_mods != b_mods:
        return False, "not a plain lora_A/lora_B adapter"
    for k, t in e.header.items():
        if ".lora_" in k and not (k.endswith("." + LORA_A) or k.endswith("." + LORA_B)):
            return False, f"tensor {k} needs PEFT's loader"
        if ".lora_" in k and len(t.shape) != 2:
            return False, "convolution LoRA loads through PEFT"
        if "trainable_tokens" in k:
            return False, "trainable tokens load through PEFT"
    return True, ""


def _lora_module(key: str, param: str) -> str | None:
    """The module path of a ``lora_A``/``lora_B`` weight named *key* (None for any other tensor)."""
    split = split_adapter_key(key)
    return split[0] if split is not None and split[1] == param else None


def _pattern_value(patterns: dict[str, Any], path: str, default: Any) -> Any:
    from peft.utils.other import get_pattern_key

    if not patterns:
        return default
    key = get_pattern_key(list(patterns.keys()), path)
    return patterns.get(key, default)
