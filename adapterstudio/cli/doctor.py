"""``adapterstudio doctor``: check the installation, the hardware and the library."""

from __future__ import annotations

import argparse
from typing import Any

from adapterstudio.cli._common import emit


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check Python, torch, GPU, disk, memory, the library and plugins")
    p.add_argument("--no-torch", action="store_true", help="skip importing torch (faster)")
    p.set_defaults(handler=doctor)


def doctor(args: argparse.Namespace) -> int:
    from adapterstudio.services.doctor import ERROR, WARN, run_checks

    checks = run_checks(getattr(args, "home", None), include_torch=not args.no_torch)
    worst = ERROR if any(c.status == ERROR for c in checks) else WARN if any(c.status == WARN for c in checks) else "ok"
    marks = {"ok": "ok  ", WARN: "warn", ERROR: "FAIL"}

    def text() -> str:
        lines = []
        for c in checks:
            lines.append(f"[{marks[c.status]}] {c.name:<14} {c.detail}")
            if c.advice:
                lines.append(f"{'':22}-> {c.advice}")
        lines.append("")
        lines.append({"ok": "Everything looks good.", WARN: "Usable, with the warnings above.",
                      ERROR: "Some problems need fixing (see FAIL above)."}[worst])
        return "\n".join(lines)

    emit(args, {"status": worst, "checks": [c.to_json() for c in checks]}, text)
    return 1 if worst == ERROR else 0
