"""Device and precision policy: which device and dtype a session runs on when asked for ``auto``."""

from __future__ import annotations

import torch

from adapterstudio.core.errors import InvalidInput

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


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
    if s in _DTYPES:
        return _DTYPES[s]
    if s != "auto":
        raise InvalidInput(f"{setting!r} is not a precision (use auto, fp32, fp16 or bf16).")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
