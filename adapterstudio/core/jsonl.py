"""JSON Lines: the one reader and writer for every ``.jsonl`` file AdapterStudio keeps.

Records are separated by ``"\\n"`` and nothing else. ``json.dumps`` escapes ``\\n`` and
``\\r`` inside strings but, with ``ensure_ascii=False``, writes NEL (U+0085), U+2028 and
U+2029 raw; ``str.splitlines()`` treats those as line ends and cuts a record in two (real
tweets hold them). So never split JSON Lines with ``splitlines()``: use these functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def dumps(record: Any, **kwargs: Any) -> str:
    """One record as one line (without the newline); readable Unicode kept as is."""
    return json.dumps(record, **{"ensure_ascii": False, **kwargs})


def iter_lines(text: str) -> Iterator[str]:
    """The non-blank lines of *text*, split on ``"\\n"`` only."""
    for line in text.split("\n"):
        if line.strip():
            yield line


def loads(text: str, *, skip_bad: bool = False) -> list[Any]:
    """Every record in *text*; a line that is not JSON raises unless *skip_bad* (then it is dropped)."""
    out = []
    for line in iter_lines(text):
        try:
            out.append(json.loads(line))
        except ValueError:
            if not skip_bad:
                raise
    return out


def read(path: Path, *, skip_bad: bool = False) -> list[Any]:
    """Every record of the file at *path* (none when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict" if not skip_bad else "replace")
    except FileNotFoundError:
        return []
    return loads(text, skip_bad=skip_bad)


def read_since(path: Path, offset: int) -> tuple[list[Any], int]:
    """Records appended after byte *offset*, and the offset to read from next time.

    Only whole lines are read: a line still being written is left for the next call. A line
    that does not parse (a torn write after a crash) is skipped.
    """
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    return loads(chunk[:end].decode("utf-8", errors="replace"), skip_bad=True), offset + end


def text(records: Iterable[Any]) -> str:
    """The records as JSON Lines text, each line ended by ``"\\n"``."""
    return "".join(dumps(r) + "\n" for r in records)


def append(path: Path, record: Any, **kwargs: Any) -> str:
    """Append one record (a whole line, flushed) and return the line written (*kwargs* go to :func:`dumps`)."""
    line = dumps(record, **kwargs)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
    return line
