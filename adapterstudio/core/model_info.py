"""What the catalogue knows about a base model, read from its config and headers.

Everything here comes from ``config.json`` and safetensors headers, so registering a
multi-gigabyte model reads a few kilobytes (plus an optional content hash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.peft_format import is_pickle
from adapterstudio.core.safetensors_header import read_model_headers

# Module names that are never useful adapter targets on their own.
_NOT_TARGETS = {"embeddings", "LayerNorm", "layernorm", "layer_norm", "norm", "ln_f", "ln_1", "ln_2",
                "word_embeddings", "position_embeddings", "token_type_embeddings", "wte", "wpe",
                "embed_tokens", "embed_positions", "rotary_emb"}


@dataclass
class ModelInfo:
    architecture: str | None
    model_type: str | None
    num_parameters: int
    dtype: str | None
    size_bytes: int
    config: dict[str, Any]
    module_shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def target_modules(self) -> list[str]:
        """Short names of the weight-bearing modules an adapter can target."""
        names: set[str] = set()
        for mod, shape in self.module_shapes.items():
            last = mod.rsplit(".", 1)[-1]
            if len(shape) >= 2 and last not in _NOT_TARGETS and not last.isdigit():
                names.add(last)
        return sorted(names)


def inspect_model_folder(folder: Path, *, allow_pickle: bool = False) -> ModelInfo:
    """Inspect a transformers model folder (config.json + safetensors)."""
    if not folder.exists():
        raise InvalidInput(f"{folder} does not exist.")
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder; a base model is a folder with config.json and safetensors weights.")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InvalidInput(f"{folder} is not a transformers model folder: it has no config.json.")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError
    except (ValueError, OSError):
        raise InvalidInput(f"{cfg_path} is not a valid JSON model config.") from None
    headers = read_model_headers(folder)
    if not headers:
        pickles = [p.name for p in folder.iterdir() if is_pickle(p)]
        if pickles and not allow_pickle:
            raise InvalidInput(
                f"{folder} has only pickle weights ({pickles[0]}), which can run arbitrary code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust the source."
            )
        if not pickles:
            raise InvalidInput(f"{folder} has no model weights (no *.safetensors file).")
    shapes: dict[str, list[int]] = {}
    nparams = 0
    size = 0
    dtype_counts: dict[str, int] = {}
    for h in headers:
        size += h.file_size
        for name, t in h.tensors.items():
            nparams += t.numel
            dtype_counts[t.dtype] = dtype_counts.get(t.dtype, 0) + t.numel
            if name.endswith(".weight") and len(t.shape) >= 1:
                shapes[name[: -len(".weight")]] = list(t.shape)
    archs = config.get("architectures") or []
    dtype = config.get("torch_dtype") or config.get("dtype")
    if not dtype and dtype_counts:
        from adapterstudio.core.safetensors_header import DTYPE_NAMES

        code = max(dtype_counts, key=dtype_counts.__getitem__)
        dtype = DTYPE_NAMES.get(code, code.lower())
    if not headers:
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return ModelInfo(
        architecture=str(archs[0]) if archs else None,
        model_type=config.get("model_type"),
        num_parameters=nparams,
        dtype=str(dtype) if dtype else None,
        size_bytes=size,
        config=config,
        module_shapes=shapes,
    )
