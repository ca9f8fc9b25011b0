"""The PEFT on-disk format, read without torch: adapter configs and weight names.

PEFT writes ``adapter_config.json`` (with ``peft_type``, ``task_type``,
``target_modules``, ``r`` ...) and ``adapter_model.safetensors`` whose tensor names are
``base_model.model.<module path>.<adapter parameter>``. This module parses both and
maps each adapter tensor to the base-model module it modifies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from adapterstudio.core.errors import InvalidInput, PickleRefused

CONFIG_NAME = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
# Files that hold Python pickles (loading one can run arbitrary code): refused unless allowed,
# both when a pull downloads a repository (api.files) and when an import copies a folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")

# PEFT types whose adapter is extra tokens/prompts rather than weights on named modules.
PROMPT_LEARNING_TYPES = frozenset(
    {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT"})

# The transformers auto class that loads a base for each PEFT task type.
TASK_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    "IMAGE_CLS": "AutoModelForImageClassification",
}
# The PEFT task type of each AdapterStudio training task (what a trained adapter's lineage says).
LINEAGE_TASKS = {"seq-cls": "SEQ_CLS", "regression": "SEQ_CLS", "causal-lm": "CAUSAL_LM",
                 "token-cls": "TOKEN_CLS", "image-cls": "IMAGE_CLS"}
# A Hub repository id: ``owner/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_pickle(path: str | Path) -> bool:
    """Whether the file at *path* is a pickle by its suffix (any case)."""
    return PurePosixPath(str(path).replace("\\", "/")).suffix.lower() in PICKLE_SUFFIXES

# The first dotted component of an adapter tensor name that belongs to the adapter
# itself (``lora_A``, ``ia3_l``, ``hada_w1_a`` ...); what precedes it is the module path.
_ADAPTER_PARAM = re.compile(
    r"^(lora|ia3|hada|lokr|vera|boft|oft|fourierft|vblora|hra|bone|miss|c3a|shira|road|randlora|waveft|delora|gralora|ln_tuning|adalora)_"
)
_WRAPPER_PREFIXES = ("base_model.model.", "base_model.")


@dataclass
class AdapterConfig:
    raw: dict[str, Any]

    @property
    def peft_type(self) -> str:
        return str(self.raw.get("peft_type", "")).upper()

    @property
    def task_type(self) -> str | None:
        t = self.raw.get("task_type")
        return str(t) if t else None

    @property
    def rank(self) -> int | None:
        for key in ("r", "rank", "num_virtual_tokens"):
            v = self.raw.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def target_modules(self) -> list[str]:
        t = self.raw.get("target_modules")
        if t is None:
            return []
        if isinstance(t, str):
            return [t]
        return sorted(str(x) for x in t)

    @property
    def base_model(self) -> str | None:
        b = self.raw.get("base_model_name_or_path")
        return str(b) if b else None

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.raw.get("fan_in_fan_out", False))

    @property
    def is_prompt_learning(self) -> bool:
        return self.peft_type in PROMPT_LEARNING_TYPES


def read_adapter_config(folder: Path) -> AdapterConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InvalidInput(f"{folder} is not a PEFT adapter folder: it has no {CONFIG_NAME}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}).") from None
    except OSError as exc:
        raise InvalidInput(f"{path} cannot be read: {exc.strerror or exc}.") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path} is not a PEFT adapter config: it is not a JSON object.")
    if not raw.get("peft_type") or not isinstance(raw["peft_type"], str):
        raise InvalidInput(f"{path} is not a PEFT adapter config: it has no peft_type.")
    cfg = AdapterConfig(raw)
    if not cfg.is_prompt_learning and raw.get("target_modules") is None and cfg.peft_type not in ("LN_TUNING",):
        # PEFT fills target_modules when it saves; a config without it cannot be applied.
        if "target_parameters" not in raw or not raw.get("target_parameters"):
            raise InvalidInput(f"{path} is not a usable PEFT adapter config: it names no target_modules.")
    return cfg


def find_weights(folder: Path, allow_pickle: bool) -> Path:
    """The adapter weights file in *folder*: safetensors, or pickle only if allowed."""
    safe = folder / SAFE_WEIGHTS
    if safe.is_file():
        return safe
    for name in PICKLE_WEIGHTS:
        p = folder / name
        if p.is_file():
            if not allow_pickle:
                raise PickleRefused(
                    f"{p} is a pickle file, which can run arbitrary code when loaded; it was refused "
                    "(convert it to safetensors, or pass --allow-pickle if you trust its source)."
                )
            return p
    raise InvalidInput(f"{folder} has no adapter weights ({SAFE_WEIGHTS} is missing).")


def split_adapter_key(key: str) -> tuple[str, str] | None:
    """``base_model.model.x.y.lora_A.weight`` -> (``x.y``, ``lora_A.weight``).

    Returns None for tensors that are not adapter parameters on a base module (a new
    head saved through ``modules_to_save``, prompt embeddings, trainable tokens...).
    """
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    parts = key.split(".")
    if "modules_to_save" in parts or "trainable_tokens_delta" in parts:
        return None
    for i, comp in enumerate(parts):
        if i > 0 and _ADAPTER_PARAM.match(comp):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return None
