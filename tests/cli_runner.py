"""The ``adapterstudio`` command run in this process: what the ``cli_main`` fixture calls.

No pytest here: a test may run it in a subprocess of its own (as another user, in another mount
namespace) to run several commands with one interpreter start.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    """What a command left: like subprocess.CompletedProcess, so a test reads the same either way."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli_main(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> CliResult:
    """``adapterstudio ARGS`` in this process: ``cli.main(argv)`` with stdin, stdout and stderr swapped for
    strings and *env* set for the call only. argparse's exits (usage errors: 2, --version: 0) are exit codes
    here too, as they are for the console script. Commands keep no state between calls (the library is
    opened by each command); what huggingface_hub fixed at import is the ``home`` fixture's job.
    """
    from adapterstudio.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _swap_stdin(io.StringIO(input or "")):
            try:
                code: object = main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): Python prints it and exits with 1
        print(code, file=err)
        code = 1
    return CliResult(list(args), code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _swap_stdin(stream):
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved
