"""Reading a training data file into a :class:`Table`: the formats, the encodings, the file's hash.

Formats: CSV/TSV, JSON Lines, JSON (a list of objects), Parquet, and a folder written by
``datasets.Dataset.save_to_disk``. Text files are read as UTF-8 (a byte-order mark is
dropped; UTF-16 with a byte-order mark, as Excel's "Unicode Text" writes it, is read too).
A file that cannot be read as what it claims to be (an unclosed CSV quote, a line that is
not JSON, bytes that are not UTF-8) is refused in one sentence naming the line. What the
rows hold is checked later, by :mod:`adapterstudio.core.training.data`.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterstudio.core.errors import InvalidInput


@dataclass
class Table:
    """A data file's rows as read (columns in first-seen order), with what reading it remarked."""

    rows: list[dict[str, Any]]
    columns: list[str]
    format: str
    path: Path
    sha256: str
    warnings: list[str] = field(default_factory=list)


def hash_path(path: Path) -> str:
    """The SHA-256 of a file, or of a folder's files and their relative names."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load_table(path: str | Path) -> Table:
    """Read the data file or datasets folder at *path*; refuse an unknown format, unreadable text or no rows."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInput(f"The data file {p} does not exist.")
    p = p.resolve()
    suffix = p.suffix.lower()
    warnings: list[str] = []
    if p.is_dir():
        fmt = "datasets"
        rows = _load_datasets_folder(p)
    elif suffix in (".csv", ".tsv", ".txt"):
        fmt = "csv"
        rows = _load_csv(p, _read_text(p), "\t" if suffix in (".tsv", ".txt") else ",", warnings)
    elif suffix in (".jsonl", ".ndjson"):
        fmt = "jsonl"
        rows = _load_jsonl(p, _read_text(p))
    elif suffix == ".json":
        fmt = "json"
        rows = _load_json(p, _read_text(p))
    elif suffix in (".parquet", ".pq"):
        fmt = "parquet"
        rows = _load_parquet(p)
    else:
        raise InvalidInput(f"{p} has an unknown data format {suffix!r}; use CSV, TSV, JSONL, JSON, Parquet or a datasets folder.")
    if not rows:
        raise InvalidInput(f"The data file {p} has no rows.")
    columns: list[str] = []
    for r in rows[:1000]:
        for k in r:
            if k not in columns:
                columns.append(k)
    return Table(rows=rows, columns=columns, format=fmt, path=p, sha256=hash_path(p), warnings=warnings)


def _read_text(p: Path) -> str:
    """The file as text: UTF-8 without its byte-order mark, or UTF-16 where a byte-order mark says so."""
    raw = p.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text"
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise InvalidInput(f"{p} starts with a UTF-16 byte-order mark but is not UTF-16 text; "
                               "re-save it as UTF-8.") from None
    head = raw[:4096]
    if head and head.count(0) * 4 >= len(head):  # ASCII in UTF-16/32: every other byte is NUL
        raise InvalidInput(f"{p} holds NUL bytes between its letters, as UTF-16 text without a byte-order mark does; "
                           "re-save it as UTF-8.")
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line = raw.count(b"\n", 0, at) + 1
        excel = " (in Excel: Save As, CSV UTF-8)" if p.suffix.lower() in (".csv", ".tsv", ".txt") else ""
        raise InvalidInput(f"{p} is not UTF-8 text: byte 0x{raw[at]:02X} at offset {at} (line {line}) is not valid UTF-8; "
                           f"re-save it as UTF-8{excel}.") from None
    return text


# Fed to the CSV reader after the file's last line: it comes back as a row of its own unless a quote
# left open swallows it, which is how a quoted field that runs to the end of the file is told apart.
_END_MARK = "\u2063adapterstudio end of file\u2063"


def _load_csv(p: Path, text: str, sep: str, warnings: list[str]) -> list[dict[str, Any]]:
    import csv

    # The default limit (131,072 characters) refuses long texts, which the tokenizer truncates anyway;
    # sys.maxsize overflows a C long on Windows, 2**31 - 1 fits everywhere.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(itertools.chain(io.StringIO(text, newline=""), [_END_MARK + "\n"]), delimiter=sep)
    records: list[tuple[int, list[str]]] = []  # (first line, fields); blank lines dropped
    try:
        while True:
            first = reader.line_num + 1
            try:
                rec = next(reader)
            except StopIteration:
                break
            if rec:
                records.append((first, rec))
    except csv.Error as exc:
        raise InvalidInput(f"{p}: line {reader.line_num} cannot be read as CSV ({exc}).") from None
    last_line, last = records[-1]
    if last != [_END_MARK]:  # the open field is the last one of the last record
        header, n = records[0][1], len(records) - 1
        if not n:
            where = "the header row (line 1)"
        elif len(last) <= len(header):
            where = f"row {n} (line {last_line}, column {header[len(last) - 1]!r})"
        else:
            where = f"row {n} (line {last_line})"
        raise InvalidInput(f"{p}: {where}: a quoted field runs to the end of the file (an unclosed quote); "
                           "close the quote or remove it.")
    records.pop()
    if not records:
        raise InvalidInput(f"{p} has no header row.")
    header = records[0][1]
    dup = next((c for c, k in Counter(header).items() if k > 1 and c.strip()), None)
    if dup is not None:
        raise InvalidInput(f"{p}: the header names column {dup!r} twice; rename one of them.")
    rows = []
    merged: list[str] = []
    for i, (first, rec) in enumerate(records[1:], start=1):
        if len(rec) > len(header):
            raise InvalidInput(f"{p}: row {i} has more fields than the header ({len(header)}).")
        if len(header) > 1:
            for c, v in zip(header, rec, strict=False):  # a short row: its missing fields are None
                if "\n" in v or "\r" in v:
                    note = _merged_rows(v, sep, len(header))
                    if note:
                        merged.append(f"row {i}, column {c!r} {note} (check the quotes from line {first})")
        rows.append({c: (rec[j] if j < len(rec) else None) for j, c in enumerate(header)})
    if merged:
        more = f"; {len(merged) - 1} more such field(s)" if len(merged) > 1 else ""
        warnings.append(f"{p}: {merged[0]}: a stray quote may have merged rows{more}")
    return rows


def _merged_rows(value: str, sep: str, width: int) -> str | None:
    """Whether a multi-line field looks like rows a stray quote swallowed: most of its lines split into
    as many fields as the header has."""
    import csv

    lines = re.split(r"\r\n|\r|\n", value)
    if len(lines) < 3:
        return None
    rowlike = sum(1 for line in lines if len(next(csv.reader([line], delimiter=sep), [])) == width)
    if rowlike >= 2 and 2 * rowlike >= len(lines):
        return f"spans {len(lines)} lines, {rowlike} of which look like rows of their own"
    return None


def _load_jsonl(p: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(text.split("\n"), start=1):  # JSON Lines end at "\n" only (see core.jsonl)
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{p}: line {i} is not valid JSON ({exc.msg}).") from None
        if not isinstance(r, dict):
            raise InvalidInput(f"{p}: line {i} is not a JSON object.")
        rows.append(r)
    return rows


def _load_json(p: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InvalidInput(f"{p} must hold a list of objects (one per example).")
    return data


def _load_parquet(p: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInput("Reading Parquet needs pyarrow: pip install 'adapterstudio[data]'.") from None
    try:
        rows: list[dict[str, Any]] = pq.read_table(p).to_pylist()
        return rows
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for corrupt files: re-raised as a sentence)
        raise InvalidInput(f"{p} is not a readable Parquet file ({exc}).") from None


def _load_datasets_folder(p: Path) -> list[dict[str, Any]]:
    if not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise InvalidInput(f"{p} is a folder but not one saved by datasets (save_to_disk); pass a file or such a folder.")
    try:
        import datasets
    except ImportError:
        raise InvalidInput("Reading a datasets folder needs the datasets package: pip install 'adapterstudio[data]'.") from None
    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    rows = []
    for r in ds:
        row = {}
        for k, v in r.items():
            if hasattr(v, "save") and hasattr(v, "size"):  # a PIL image: keep it as an array
                import numpy as np

                v = np.asarray(v.convert("RGB")).tolist()
            row[k] = v
        rows.append(row)
    feats = ds.features
    for k, f in feats.items():
        names = getattr(f, "names", None)
        if names:
            for row in rows:
                if isinstance(row.get(k), int):
                    row[k] = names[row[k]]
    return rows
