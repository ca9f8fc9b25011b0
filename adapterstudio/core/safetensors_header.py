"""Read and validate safetensors headers without importing torch.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping
tensor names to ``{dtype, shape, data_offsets}``, then the raw bytes. Reading the header
is enough to learn every tensor's name, dtype and shape, and to detect truncated or
corrupt files, which is what the catalogue's compatibility check needs: no weights are
loaded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from adapterstudio.core.errors import InvalidInput

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1,
    "F6_E3M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
               "I8": "int8", "U8": "uint8", "I32": "int32", "I64": "int64"}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offsets of the tensor's data in the file
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def dominant_dtype(self) -> str | None:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
        if not counts:
            return None
        code = max(counts, key=counts.__getitem__)
        return DTYPE_NAMES.get(code, code.lower())


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate the header of *path*; raise :class:`InvalidInput` if bad."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise InvalidInput(f"{p} is not a safetensors file: it is only {size} bytes long.")
            (n,) = struct.unpack("<Q", raw_len)
            if n == 0 or n > MAX_HEADER or n > size - 8:
                raise InvalidInput(f"{p} is not a valid safetensors file: its header length ({n}) does not fit the file ({size} bytes); it may be truncated or not safetensors at all.")
            raw = fh.read(n)
    except OSError as exc:
        raise InvalidInput(f"{p} cannot be read: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(f"{p} is not a valid safetensors file: its header is not valid JSON (the file is corrupt).") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{p} is not a valid safetensors file: its header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    end_max = 0
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"{p} is not a valid safetensors file: the entry for tensor {name!r} is malformed.") from None
        if dtype not in DTYPE_SIZES or any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise InvalidInput(f"{p} is not a valid safetensors file: tensor {name!r} has an invalid dtype, shape or offsets.")
        expected = math.prod(shape) * DTYPE_SIZES[dtype] if dtype not in ("F4", "F6_E2M3", "F6_E3M2") else end - begin
        if end - begin != expected:
            raise InvalidInput(f"{p} is not a valid safetensors file: tensor {name!r} has {end - begin} bytes but its shape needs {expected}.")
        if end > data_len:
            raise InvalidInput(f"{p} is truncated: tensor {name!r} ends at byte {end} but the file holds only {data_len} bytes of data.")
        end_max = max(end_max, end)
        tensors[name] = TensorInfo(dtype, shape, 8 + n + begin, 8 + n + end)
    if end_max != data_len:
        raise InvalidInput(f"{p} is not a valid safetensors file: it has {data_len - end_max} trailing bytes after its tensors.")
    return SafetensorsHeader(p, tensors, {str(k): str(v) for k, v in dict(metadata).items()}, size)


def read_model_headers(folder: Path) -> list[SafetensorsHeader]:
    """Headers of every weights file of a transformers model folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError):
            raise InvalidInput(f"{index} is not a valid safetensors index (no weight_map).") from None
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise InvalidInput(f"{folder} is missing shard {missing[0]} named in model.safetensors.index.json.")
        return [read_header(folder / f) for f in files]
    files = sorted(folder.glob("*.safetensors"))
    return [read_header(f) for f in files]
