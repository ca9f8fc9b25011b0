"""Module names and weight shapes of a model *as transformers builds it*.

Checkpoint files and in-memory models do not always agree: transformers 5 renames some
architectures' modules when it loads them (ViT's ``attention.attention.key`` becomes
``attention.k_proj``), and PEFT adapters are named after the in-memory modules. This
builds the model on torch's meta device (no weights are read or allocated) to learn
those names. Used only when the header-based compatibility check cannot place a module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loaded_module_shapes(path: str | Path) -> dict[str, list[int]]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    cls: Any = None  # a model class named in the config (has _from_config), else AutoModel (from_config)
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            break
    cls = cls or AutoModel
    with torch.device("meta"):
        model = cls.from_config(config) if cls is AutoModel else cls._from_config(config)
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor):
            shapes[name] = list(weight.shape)
    return shapes
