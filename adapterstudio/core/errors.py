"""Errors that reach the user.

Every failure a user can cause (bad file, unknown name, wrong base...) is raised as a
:class:`UserError` whose message is one readable sentence naming the thing at fault.
The CLI prints it and exits non-zero; the GUI shows it in a dialog. Anything else is a
bug and is reported with a traceback by the exception hook.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is one clear sentence."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFound(UserError):
    """A named catalogue entry, run or file does not exist."""


class AlreadyExists(UserError):
    """A name is already taken in the catalogue."""


class InvalidInput(UserError):
    """A file or value is malformed (corrupt safetensors, invalid config, ...)."""


class PickleRefused(InvalidInput):
    """Weights are only available as pickle and the user did not allow it."""


class Incompatible(UserError):
    """An adapter does not fit a base model."""


class ReadOnlyLibrary(UserError):
    """The library folder or its catalogue cannot be written (permissions, a read-only drive)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(f"The library at {root} is read-only.",
                         hint="Listing, showing and exporting still work; to change it, use a library you can write to.")
        self.root = Path(root)


# ENOSPC: no space left; EDQUOT: the user's quota is used up (the same to the user).
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
_SQLITE_FULL = 13


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the disk holding *path* (its nearest existing folder), None if unknown."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            if candidate.exists():
                return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _mb(n: int, at_least_some: bool = False) -> str:
    mb = n / 1e6
    if at_least_some and 0 < mb < 0.1:
        return "0.1"  # a few kilobytes are still needed: never "0.0 MB needed"
    return f"{mb:.1f}" if mb < 10 else f"{mb:,.0f}"


class DiskFull(UserError):
    """Writing *path* failed because its disk (or the user's quota) is full."""

    def __init__(self, path: str | os.PathLike[str], needed: int | None = None, free: int | None = None) -> None:
        self.path = Path(path)
        self.needed = needed
        self.free = free_bytes(path) if free is None else free
        parts = []
        if self.free is not None:
            parts.append(f"{_mb(self.free)} MB free")
        if needed:
            parts.append(f"about {_mb(needed, True)} MB needed")
        super().__init__(f"The disk holding {self.path} is full" + (f" ({', '.join(parts)})." if parts else "."),
                         hint="Free some space (or move the library to a larger drive with --home) and try again.")


def is_disk_full(exc: BaseException) -> bool:
    """Whether *exc* is an out-of-space error: ENOSPC/EDQUOT, or SQLite's 'database or disk is full'."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return getattr(exc, "sqlite_errorcode", None) is not None and exc.sqlite_errorcode & 0xFF == _SQLITE_FULL  # type: ignore[attr-defined]


def find_disk_full(exc: BaseException) -> BaseException | None:
    """The out-of-space error in *exc*, its causes, contexts or group members, if any."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFull) or is_disk_full(e):
            return e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]  # type: ignore[list-item]
    return None


class Cancelled(Exception):
    """Raised inside long work when the user asked to stop."""


def one_line(exc: BaseException) -> str:
    """An exception as a message can quote it: its type and the first line of what it says."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
