"""Shared CLI plumbing: error reporting, JSON output, progress bars, opening the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from adapterstudio.core.context import Context
from adapterstudio.core.errors import Cancelled, DiskFull, UserError, find_disk_full
from adapterstudio.core.fmt import human_size  # noqa: F401  (re-exported for the command modules)

log = logging.getLogger("adapterstudio")


def add_group(sub: Any, name: str, help: str) -> Any:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def want_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    """Print *data* as JSON with --json, else the human *text*."""
    if want_json(args):
        print(json.dumps(data, indent=2, default=str))
    else:
        out = text() if callable(text) else text
        if out:
            print(out)


def open_lib(args: argparse.Namespace):
    from adapterstudio.services.library import open_library

    return open_library(getattr(args, "home", None))


def run_command(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    try:
        rc = handler(args)
        return int(rc or 0)
    except UserError as exc:
        _error(args, str(exc), exc.exit_code, hint=exc.hint)
        return exc.exit_code
    except Cancelled:
        _error(args, "Cancelled.", 130)
        return 130
    except KeyboardInterrupt:
        _error(args, "Interrupted.", 130)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001  (a bug: say so in one line, keep the traceback in the crash log)
        full = find_disk_full(exc)
        if full is not None:  # not a bug: a full disk, wherever it was hit
            err = full if isinstance(full, DiskFull) else DiskFull(_full_path(full, args))
            _error(args, str(err), err.exit_code, hint=err.hint)
            return err.exit_code
        path, why = _write_crash_log(args)
        where = f"Details were written to {path}." if path else \
            f"The details could not be saved ({why}); run again with ADAPTERSTUDIO_DEBUG=1 to print them."
        _error(args, f"Internal error: {type(exc).__name__}: {exc}. {where}", 70)
        if os.environ.get("ADAPTERSTUDIO_DEBUG"):
            traceback.print_exc()
        return 70


def _full_path(exc: BaseException, args: argparse.Namespace) -> str:
    """The path a disk-full error was writing: its file name, else the library folder."""
    name = getattr(exc, "filename", None)
    if name:
        return os.fsdecode(name)
    try:
        from adapterstudio.core.settings import load_settings

        return str(load_settings().resolved_library_dir(getattr(args, "home", None)))
    except Exception:  # noqa: BLE001 - only for the message: a broken settings file must not hide the real error
        return getattr(args, "home", None) or "the library"


def _error(args: argparse.Namespace, message: str, code: int, hint: str | None = None) -> None:
    try:
        if want_json(args):
            print(json.dumps({"error": message, "exit_code": code, **({"hint": hint} if hint else {})}))
        print(f"error: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
    except OSError:
        pass  # stdout/stderr closed or their disk full: the exit code still tells


SECRET_OPTIONS = ("--api-key",)  # options whose value never goes into a log


def redacted_argv(argv: list[str]) -> list[str]:
    """*argv* with the values of :data:`SECRET_OPTIONS` (or argparse's abbreviations of them) replaced by ``***``."""
    def secret(name: str) -> bool:
        return name.startswith("--") and len(name) > 2 and any(o.startswith(name) for o in SECRET_OPTIONS)

    out: list[str] = []
    hide = False
    for a in argv:
        name, eq, _value = a.partition("=")
        if hide:
            out.append("***")
            hide = False
        elif secret(name) and eq:
            out.append(name + "=***")
        else:
            out.append(a)
            hide = secret(a)
    return out


def _write_crash_log(args: argparse.Namespace) -> tuple[str | None, str]:
    """Write the current exception's traceback to a log; (its path, "") or (None, why not). Never raises:
    it runs while an error is being reported, and a second error here would bury the first."""
    import tempfile
    from pathlib import Path

    candidates = []
    try:
        from adapterstudio.core.settings import load_settings

        candidates.append(load_settings().resolved_library_dir(getattr(args, "home", None)) / "logs")
    except Exception:  # noqa: BLE001, S110  (a broken settings file: the crash log falls back to the temp folder)
        pass
    candidates.append(Path(tempfile.gettempdir()))
    why = ""
    for logs in candidates:
        path = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"argv: {redacted_argv(sys.argv)!r}\n")
                traceback.print_exc(file=fh)
            return str(path), ""
        except Exception as exc:  # noqa: BLE001 - try the next folder; say why if none works
            why = f"{path}: {getattr(exc, 'strerror', None) or exc}"
    return None, why


class ProgressBar:
    """A one-line progress bar on stderr, used as a Context's progress callback."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, done: float, total: float | None, message: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and not (total and done >= total):
            return
        self._last = now
        if total:
            frac = max(0.0, min(1.0, done / total))
            bar = "#" * int(frac * 30)
            line = f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {message[:40]:<40}"
        else:
            line = f"\r{self.label} {message[:60]:<60}"
        sys.stderr.write(line)
        sys.stderr.flush()

    def log(self, message: str) -> None:
        """A log line on stderr, above the bar (they share stderr)."""
        if self.enabled:
            sys.stderr.write("\r\033[K")
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cli_context(label: str, args: argparse.Namespace, *, logs: bool = False) -> tuple[Context, ProgressBar]:
    """A task context whose progress draws a bar on stderr (none with --json); with *logs*, its log lines too."""
    bar = ProgressBar(label, enabled=not want_json(args))
    return Context(on_progress=bar, on_log=bar.log if logs and not want_json(args) else None), bar


@contextmanager
def progress(label: str, args: argparse.Namespace, *, logs: bool = False) -> Iterator[Context]:
    """:func:`cli_context` for one block: the bar is closed when it ends, however it ends."""
    ctx, bar = cli_context(label, args, logs=logs)
    try:
        yield ctx
    finally:
        bar.close()


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
