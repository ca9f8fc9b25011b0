"""Does an adapter fit a base model? Decided from configs and safetensors headers.

The check maps every adapter tensor to the base module it modifies (tolerating the
``bert.`` / ``model.`` prefixes that differ between a bare backbone and a task model)
and checks its shape against that module's weight, per PEFT method. No weights load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from adapterstudio.core.peft_format import AdapterConfig, split_adapter_key
from adapterstudio.core.safetensors_header import TensorInfo

# peft.utils.constants.DUMMY_TARGET_MODULES: targets nothing; used when only
# ``modules_to_save`` (e.g. a new classification head) is trained.
PEFT_DUMMY_TARGET = "dummy-target-modules"


@dataclass
class CompatReport:
    compatible: bool
    problems: list[str] = field(default_factory=list)
    modules_checked: int = 0

    @property
    def reason(self) -> str:
        return self.problems[0] if self.problems else ""


class ModuleIndex:
    """Finds base modules by dotted suffix, so ``bert.encoder.layer.0.x`` matches ``encoder.layer.0.x``."""

    def __init__(self, module_shapes: dict[str, list[int]]) -> None:
        self.shapes = module_shapes
        self._by_suffix: dict[str, list[str]] = {}
        for name in module_shapes:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                self._by_suffix.setdefault(".".join(parts[-k:]), []).append(name)

    def find(self, module: str) -> str | None:
        if module in self.shapes:
            return module
        parts = module.split(".")
        for k in range(len(parts), 0, -1):
            hits = self._by_suffix.get(".".join(parts[-k:]))
            if hits:
                # the longest matching suffix decides; if it is ambiguous the module
                # is not in the base (e.g. layer 7 of an adapter for a deeper model)
                return hits[0] if len(hits) == 1 and (k >= 2 or len(parts) == 1) else None
        return None

    def has_target(self, target: str) -> bool:
        return target in self._by_suffix


def _io(shape: list[int], fan_in_fan_out: bool) -> tuple[int, int]:
    if len(shape) == 1:
        return shape[0], shape[0]
    out, inn = shape[0], math.prod(shape[1:])
    return (inn, out) if fan_in_fan_out else (out, inn)


def check_compatibility(
    config: AdapterConfig,
    tensors: dict[str, TensorInfo] | None,
    module_shapes: dict[str, list[int]],
    base_config: dict[str, Any],
) -> CompatReport:
    problems: list[str] = []
    index = ModuleIndex(module_shapes)

    if config.is_prompt_learning:
        hidden = base_config.get("hidden_size") or base_config.get("d_model") or base_config.get("n_embd")
        token_dim = config.raw.get("token_dim")
        if hidden and token_dim and int(token_dim) != int(hidden):
            problems.append(f"its prompt embeddings have size {token_dim} but the base's hidden size is {hidden}")
        layers = base_config.get("num_hidden_layers") or base_config.get("n_layer")
        nl = config.raw.get("num_layers")
        if config.peft_type == "PREFIX_TUNING" and layers and nl and int(nl) != int(layers):
            problems.append(f"it was made for {nl} layers but the base has {layers}")
        return CompatReport(not problems, problems, 0)

    # Each named target must exist somewhere in the base (regex targets are checked via tensors).
    for target in config.target_modules:
        if target == PEFT_DUMMY_TARGET:
            continue  # PEFT's placeholder: an adapter that only saves whole modules (a new head, unfrozen layers)
        if len(config.target_modules) == 1 and any(c in target for c in "*^$[]()|\\"):
            continue
        if not index.has_target(target):
            problems.append(f"its target module {target!r} does not exist in the base")
    if problems:
        return CompatReport(False, problems, 0)
    if tensors is None:
        return CompatReport(True, [], 0)

    # Group adapter parameters by module.
    per_module: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in tensors.items():
        split = split_adapter_key(key)
        if split is None:
            continue
        module, param = split
        per_module.setdefault(module, {})[param] = info.shape

    fio = config.fan_in_fan_out
    for module, params in sorted(per_module.items()):
        base_name = index.find(module)
        if base_name is None:
            problems.append(f"it modifies {module}, which does not exist in the base")
            if len(problems) >= 5:
                break
            continue
        shape = module_shapes[base_name]
        out, inn = _io(shape, fio)
        problems.extend(_check_params(module, params, shape, out, inn))
        if len(problems) >= 5:
            break
    return CompatReport(not problems, problems, len(per_module))


def _check_params(module: str, params: dict[str, tuple[int, ...]], shape: list[int], out: int, inn: int) -> list[str]:
    errs: list[str] = []

    def bad(param: str, got: Any, want: Any, what: str) -> None:
        errs.append(f"{module}.{param} has {what} {got} but the base module needs {want} (base weight shape {list(shape)})")

    lokr: dict[str, tuple[int, ...]] = {}
    for param, s in params.items():
        head = param.split(".")[0]
        if head == "lora_A" and param.endswith("weight") and len(s) >= 2:
            if math.prod(s[1:]) != inn:
                bad(param, math.prod(s[1:]), inn, "input size")
        elif head == "lora_B" and param.endswith("weight") and len(s) >= 1:
            if s[0] != out:
                bad(param, s[0], out, "output size")
        elif head == "lora_embedding_A" and len(s) == 2 and len(shape) == 2:
            if s[1] != shape[0]:
                bad(param, s[1], shape[0], "vocabulary size")
        elif head == "lora_embedding_B" and len(s) == 2 and len(shape) == 2:
            if s[0] != shape[1]:
                bad(param, s[0], shape[1], "embedding size")
        elif head == "lora_magnitude_vector":
            if math.prod(s) != out:
                bad(param, math.prod(s), out, "size")
        elif head == "ia3_l":
            if math.prod(s) not in (out, inn):
                bad(param, math.prod(s), f"{out} or {inn}", "size")
        elif head in ("hada_w1_a", "hada_w2_a") and len(s) == 2:
            if s[0] != out:
                bad(param, s[0], out, "output size")
        elif head in ("hada_w1_b", "hada_w2_b") and len(s) == 2:
            if s[1] != inn:
                bad(param, s[1], inn, "input size")
        elif head.startswith("lokr_"):
            lokr[head] = s
    if lokr:
        w1 = lokr.get("lokr_w1") or (
            (lokr["lokr_w1_a"][0], lokr["lokr_w1_b"][-1]) if "lokr_w1_a" in lokr and "lokr_w1_b" in lokr else None
        )
        w2 = lokr.get("lokr_w2") or (
            (lokr["lokr_w2_a"][0], math.prod(lokr["lokr_w2_b"][1:])) if "lokr_w2_a" in lokr and "lokr_w2_b" in lokr else None
        )
        if w1 and w2 and len(w1) >= 2 and len(w2) >= 2:
            o, i = w1[0] * w2[0], math.prod(w1[1:]) * math.prod(w2[1:])
            if (o, i) != (out, inn):
                bad("lokr", f"{o}x{i}", f"{out}x{inn}", "Kronecker shape")
    return errs
