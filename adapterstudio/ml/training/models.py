"""Base models and fine-tuning strategies: load a base with its new task head, wrap it for the strategy, and
group its trainable parameters for the optimizer.

Every strategy yields a PEFT model, so every result is an adapter the catalogue imports
and inference hot-swaps:

- ``head``: PEFT's placeholder target plus ``modules_to_save`` = the new head; the
  backbone is frozen. The adapter file holds only the head.
- ``partial``: the same, with the last N transformer layers in ``modules_to_save`` too;
  their parameters get ``backbone_lr_ratio`` x the head's learning rate.
- ``lora``/``dora`` (rsLoRA option), ``ia3``, ``loha``, ``lokr``: PEFT adapters; a new
  classification head is always in ``modules_to_save``.
- ``full``: every weight trains; the result is a whole model folder (the catalogue
  registers it as a new base with its lineage, see services/results.py).
"""

from __future__ import annotations

from typing import Any

from adapterstudio.core.errors import Incompatible, InvalidInput
from adapterstudio.core.peft_format import LINEAGE_TASKS


def auto_class(task: str) -> Any:
    import transformers as tf

    return {"seq-cls": tf.AutoModelForSequenceClassification, "regression": tf.AutoModelForSequenceClassification,
            "token-cls": tf.AutoModelForTokenClassification, "causal-lm": tf.AutoModelForCausalLM,
            "image-cls": tf.AutoModelForImageClassification}[task]


def load_base_model(spec: Any, base_path: str, labels: list[str] | None, dtype: Any = None) -> Any:
    import torch

    kwargs: dict[str, Any] = {}
    if spec.task in ("seq-cls", "token-cls", "image-cls") and labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={lbl: i for i, lbl in enumerate(labels)}, ignore_mismatched_sizes=True)
    elif spec.task == "regression":
        kwargs.update(num_labels=1, problem_type="regression", ignore_mismatched_sizes=True)
    if spec.quantize != "none":
        kwargs["quantization_config"] = quantization_config(spec)
    if dtype is not None:
        kwargs["dtype"] = dtype
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(spec.seed)
    try:
        model = auto_class(spec.task).from_pretrained(base_path, **kwargs)
    except ValueError as exc:
        raise Incompatible(f"The base at {base_path} cannot be loaded for {spec.task}: {str(exc).splitlines()[0]}") from None
    if spec.task == "causal-lm" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def quantization_config(spec: Any) -> Any:
    """QLoRA's 4-bit (or 8-bit) base: only with bitsandbytes on a CUDA device."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise InvalidInput(f"quantize={spec.quantize} (QLoRA) needs a CUDA GPU; this machine has none, so train without --quantize.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput(f"quantize={spec.quantize} (QLoRA) needs bitsandbytes: pip install bitsandbytes.")
    from transformers import BitsAndBytesConfig

    if spec.quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def head_modules(model: Any, task: str) -> list[str]:
    """Names of the task head's top-level modules (classifier, score, ...)."""
    if task == "causal-lm":
        return []
    prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, mod in model.named_children():
        if name == prefix or not any(True for _ in mod.parameters()):
            continue
        names.append(name)
    if not names:
        raise Incompatible(f"{type(model).__name__} has no separate head module to train.")
    return names


def layer_stack(model: Any) -> tuple[str, int]:
    """The largest ModuleList of blocks (the transformer layers): (dotted name, length)."""
    import torch.nn as nn

    best, n = "", 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > n:
            best, n = name, len(mod)
    if not n:
        raise Incompatible(f"{type(model).__name__} has no stack of layers to unfreeze partially; use head, lora or full.")
    return best, n


def peft_task_type(task: str) -> str | None:
    """PEFT's task type for *task*; None for image classification, which PEFT has no task type for (its head is
    kept trainable through modules_to_save instead)."""
    return None if task == "image-cls" else LINEAGE_TASKS.get(task)


def apply_strategy(model: Any, spec: Any) -> tuple[Any, dict[str, Any]]:
    """Wrap *model* for the strategy; returns (model, info with trainable counts and groups)."""
    import peft
    from peft.utils.constants import DUMMY_TARGET_MODULES

    heads = head_modules(model, spec.task)
    info: dict[str, Any] = {"head_modules": heads, "unfrozen_layers": []}
    task_type = peft_task_type(spec.task)
    if spec.strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, _count(model, info)
    if spec.quantize != "none":
        model = peft.prepare_model_for_kbit_training(model)
    if spec.strategy in ("head", "partial"):
        save = list(heads)
        if spec.strategy == "partial":
            stack, n = layer_stack(model)
            k = min(spec.unfreeze_layers, n)
            save += [f"{stack}.{i}" for i in range(n - k, n)]
            info["unfrozen_layers"] = save[len(heads):]
        cfg: peft.PeftConfig = peft.LoraConfig(task_type=task_type, target_modules=DUMMY_TARGET_MODULES,
                                               modules_to_save=save)
    else:
        targets = spec.target_modules or None
        common: dict[str, Any] = dict(task_type=task_type, modules_to_save=(heads or None) if task_type is None else None)
        if not targets and heads:
            common["exclude_modules"] = heads  # "all-linear" must not wrap the new head (it is saved whole)
        if spec.task == "image-cls":
            common["modules_to_save"] = heads
        try:
            if spec.strategy in ("lora", "dora"):
                cfg = peft.LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                                      target_modules=targets or "all-linear", use_rslora=spec.use_rslora,
                                      use_dora=spec.use_dora or spec.strategy == "dora", **common)
            elif spec.strategy == "ia3":
                cfg = peft.IA3Config(target_modules=targets, feedforward_modules=[] if targets else None, **common)
            elif spec.strategy == "loha":
                cfg = peft.LoHaConfig(r=spec.lora_r, alpha=spec.lora_alpha, target_modules=targets or "all-linear", **common)
            elif spec.strategy == "lokr":
                cfg = peft.LoKrConfig(r=spec.lora_r, alpha=spec.lora_alpha, target_modules=targets or "all-linear", **common)
            else:  # pragma: no cover
                raise InvalidInput(f"Unknown strategy {spec.strategy!r}.")
        except ValueError as exc:
            raise Incompatible(f"PEFT cannot set up {spec.strategy} for this base: {str(exc).splitlines()[0]}") from None
    try:
        pm = peft.get_peft_model(model, cfg)
    except (ValueError, KeyError) as exc:
        msg = str(exc).splitlines()[0]
        raise Incompatible(f"PEFT cannot apply {spec.strategy} to {type(model).__name__} ({msg}); "
                           "name the layers with --target-modules or pick another strategy.") from None
    if spec.task == "image-cls":
        # the new head is in modules_to_save; make sure it trains (no task type does it for us)
        for name, p in pm.named_parameters():
            if "modules_to_save" in name:
                p.requires_grad_(True)
    return pm, _count(pm, info)


def _count(model: Any, info: dict[str, Any]) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info.update(trainable_params=trainable, total_params=total)
    return info


def param_groups(model: Any, spec: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases/norms; pretrained layers slower for ``partial``; the new head at
    ``head_lr`` for adapters (LoRA and friends) when set."""
    heads = info.get("head_modules", [])
    groups: dict[tuple[bool, str], list[Any]] = {}
    head_lr = getattr(spec, "head_lr", None)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        in_head = any(h in name.split(".") for h in heads)
        if spec.strategy == "partial":
            kind = "head" if in_head else "slow"
        elif spec.strategy in ("head", "full"):
            kind = "main"
        else:
            kind = "head" if in_head and head_lr else "main"
        groups.setdefault((no_decay, kind), []).append(p)
    out = []
    for (no_decay, kind), params in groups.items():
        lr = {"slow": spec.lr * spec.backbone_lr_ratio, "head": head_lr or spec.lr, "main": spec.lr}[kind]
        if spec.strategy == "partial" and kind == "head":
            lr = spec.lr  # partial: lr is the head's rate, the backbone's is a ratio of it
        out.append({"params": params, "weight_decay": 0.0 if no_decay else spec.weight_decay, "lr": lr})
    return out

