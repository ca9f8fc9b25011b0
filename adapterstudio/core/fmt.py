"""Human-readable formatting shared by the CLI and the GUI."""

from __future__ import annotations


def human_size(n: int | None, missing: str = "-") -> str:
    """``1536`` -> ``"1.5 KB"``; *missing* for None."""
    if n is None:
        return missing
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
