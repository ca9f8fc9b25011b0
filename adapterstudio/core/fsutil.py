"""File-system helpers: atomic writes, hashing, copying into place safely."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import DiskFull, InvalidInput, free_bytes, is_disk_full

CHUNK = 4 * 1024 * 1024
# Disk space an import or export keeps free beyond its files (the catalogue's own writes).
SPACE_MARGIN = 1_000_000


def fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, mode: str = "wb", needed: int | None = None) -> Iterator[IO[Any]]:
    """Write to a temp file beside *path*, fsync, then rename over it.

    A full disk (or quota) raises :class:`DiskFull` naming *path* (and *needed* bytes, when
    the caller knows them), after the partial temp file is gone."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with (os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # already gone, or the folder went away: nothing left to clean
        if not isinstance(exc, DiskFull) and is_disk_full(exc):
            raise DiskFull(path, needed) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path, "w", needed=len(text.encode("utf-8", "replace"))) as fh:
        fh.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path, "wb", needed=len(data)) as fh:
        fh.write(data)


def sha256_file(path: Path, ctx: TaskContext = NULL_CONTEXT, done_before: int = 0, total: int | None = None) -> str:
    h = hashlib.sha256()
    done = done_before
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            ctx.progress(done, total, f"hashing {path.name}")
            ctx.check_cancelled()
    return h.hexdigest()


def copy_atomic(src: Path, dst: Path, ctx: TaskContext = NULL_CONTEXT) -> None:
    """Copy *src* to *dst* via a temp file and rename; never leaves a partial *dst*."""
    with atomic_output(dst, "wb", needed=src.stat().st_size) as out, src.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            out.write(chunk)
            ctx.check_cancelled()
    shutil.copymode(src, dst)


def require_space(folder: Path, needed: int) -> None:
    """Refuse before writing anything when *folder*'s disk cannot hold *needed* more bytes."""
    free = free_bytes(folder)
    if needed and free is not None and free < needed + SPACE_MARGIN:
        raise DiskFull(folder, needed, free)


def new_output_folder(dest: str | os.PathLike[str], needed: int = 0) -> tuple[Path, Path]:
    """For an export into the new folder *dest*: (*dest* resolved, an empty temporary folder beside it to write in).

    Refused unless *dest* is absent or an empty folder with room for *needed* bytes.
    :func:`publish_folder` puts the written folder in place whole; whoever fails before that
    removes the temporary folder."""
    out = Path(dest).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} already exists and is not an empty folder; export into a new folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    require_space(out.parent, needed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    return out, tmp


def publish_folder(tmp: Path, out: Path) -> None:
    """Rename the folder written as *tmp* to *out* (from :func:`new_output_folder`), replacing an empty *out*."""
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    fsync_dir(out.parent)


def iter_files(folder: Path) -> Iterator[Path]:
    """Regular files under *folder*, sorted, skipping hidden files and VCS folders."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and not p.is_symlink():
            yield p
        elif p.is_symlink() and p.resolve().is_file():
            yield p
