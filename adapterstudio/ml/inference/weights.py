"""Reading adapter weights: one read of the safetensors file, tensors as views of it.

The floor for loading an adapter is reading its bytes and copying its tensors to the
device; anything more is overhead. :func:`read_safetensors` does exactly one read into
one buffer and hands out zero-copy views, so the only copy left is into the
destination (a pre-allocated slot on the device, or a pinned staging buffer).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.safetensors_header import read_header

ST_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class RawTensor:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_st_header(path: Path) -> tuple[dict[str, RawTensor], int]:
    """Tensor name -> :class:`RawTensor` (absolute offsets), and the file size.

    The header is parsed and validated by :func:`adapterstudio.core.safetensors_header.read_header`.
    """
    h = read_header(path)
    out: dict[str, RawTensor] = {}
    for key, info in h.tensors.items():
        dt = ST_DTYPES.get(info.dtype)
        if dt is None:
            raise InvalidInput(f"{path}: tensor {key!r} has an unsupported dtype {info.dtype!r}.")
        out[key] = RawTensor(dt, info.shape, info.start, info.end)
    return out, h.file_size


def read_safetensors(path: Path, header: dict[str, RawTensor] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of *path* as views into one buffer filled by a single read."""
    if header is None:
        header, _ = read_st_header(path)
    if not header:
        return {}
    lo = min(t.start for t in header.values())
    hi = max(t.end for t in header.values())
    buf = bytearray(hi - lo)
    with path.open("rb", buffering=0) as fh:
        fh.seek(lo)
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = fh.readinto(view[got:])
            if not n:
                raise InvalidInput(f"{path} is truncated.")
            got += n
    tensors = {}
    for key, t in header.items():
        numel = math.prod(t.shape)
        if numel == 0:
            tensors[key] = torch.empty(t.shape, dtype=t.dtype)
            continue
        tensors[key] = torch.frombuffer(buf, dtype=t.dtype, count=numel, offset=t.start - lo).view(t.shape)
    return tensors


def file_size(path: Path) -> int:
    return os.stat(path).st_size
