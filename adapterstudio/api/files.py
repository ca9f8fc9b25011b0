"""Which remote files a pull takes, and how downloaded files are verified."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from adapterstudio.core.fsutil import atomic_write_bytes as atomic_write_bytes  # re-exported for providers
from adapterstudio.core.fsutil import fsync_dir as fsync_dir  # re-exported for providers
from adapterstudio.core.fsutil import sha256_file

# the pickle suffixes live in core.peft_format (a local import refuses the same files a pull does)
from adapterstudio.core.peft_format import PICKLE_SUFFIXES
from adapterstudio.core.peft_format import is_pickle as is_pickle  # re-exported for providers

# Safe, data-only files an adapter repository holds (weights, configs, cards, tokenizer files).
SAFE_SUFFIXES = (".safetensors", ".json", ".md", ".txt", ".model", ".jinja", ".yaml", ".yml")


def wanted(path: str, allow_pickle: bool = False) -> bool:
    """Whether *path* (relative, POSIX) is downloaded by a pull."""
    p = PurePosixPath(path)
    if any(part.startswith(".") for part in p.parts) or ".." in p.parts or p.is_absolute():
        return False
    suffix = p.suffix.lower()
    return suffix in SAFE_SUFFIXES or (allow_pickle and suffix in PICKLE_SUFFIXES)


def git_blob_oid(data_path: str | os.PathLike[str]) -> str:
    """The git blob id (SHA-1 of ``blob <size>\\0`` + content) of a file, as git hubs report it."""
    size = os.path.getsize(data_path)
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(data_path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(data_path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file, as hubs report it for large files."""
    return sha256_file(Path(data_path))
