"""The ``adapterstudio`` command. With no subcommand it starts the desktop app.

Each command group lives in its own module with a ``register(subparsers, common)``
function; the modules are listed in :data:`COMMAND_MODULES`. Every command accepts
``--json`` and ``--home DIR``. User errors print one sentence and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from adapterstudio import __version__

COMMAND_MODULES = ["library", "training", "inference", "hub", "doctor"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="library folder (default: $ADAPTERSTUDIO_HOME or the platform data folder)")
    parser = argparse.ArgumentParser(
        prog="adapterstudio",
        description="AdapterStudio: a local studio for LoRA and other PEFT adapters. Run without a command to open the app.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"adapterstudio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(f"adapterstudio.cli.{mod}").register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from adapterstudio.cli._common import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        return _start_gui(parser, args)
    handler = getattr(args, "handler", None)
    if handler is None:
        # a group without its subcommand, e.g. 'adapterstudio base'
        getattr(args, "group_parser", parser).print_help()
        return 2
    return run_command(handler, args)


def _start_gui(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        import adapterstudio.ui.app as app  # PySide6 is an optional extra
    except ImportError as exc:
        parser.print_help()
        missing = getattr(exc, "name", None) or ""
        if missing.startswith(("PySide6", "shiboken6", "pyqtgraph")) or "adapterstudio.ui" in str(exc):
            print("\nThe desktop app needs the GUI extra: pip install 'adapterstudio[gui]'", file=sys.stderr)
            return 0 if "adapterstudio.ui" in str(exc) else 1
        raise
    if getattr(args, "home", None):
        os.environ["ADAPTERSTUDIO_HOME"] = str(args.home)
    return app.main()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
