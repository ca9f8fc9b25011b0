"""Training data: load a table, map its columns, check every row, split it, hash it.

Formats: CSV/TSV, JSON Lines, JSON (a list of objects), Parquet, and a folder written by
``datasets.Dataset.save_to_disk``. The supervisor prepares the splits once, in the
parent process, and writes them to the run folder as JSON Lines; the training child
and any strategy comparison read those files, so every strategy sees the same split.
Bad input is refused before training starts, naming the row (1-based, as a spreadsheet
shows it; the header is not counted) and the column.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterstudio.core import jsonl
from adapterstudio.core.errors import InvalidInput

TEXT_GUESSES = ("text", "sentence", "content", "review", "document", "input", "tweet", "word")
LABEL_GUESSES = ("label", "labels", "class", "target", "category", "sentiment", "y")
PROMPT_GUESSES = ("prompt", "instruction", "question", "input")
RESPONSE_GUESSES = ("response", "output", "answer", "completion")
TOKENS_GUESSES = ("tokens", "words")
TAGS_GUESSES = ("tags", "ner_tags", "labels", "label")
IMAGE_GUESSES = ("image", "img", "path", "file")


@dataclass
class Table:
    rows: list[dict[str, Any]]
    columns: list[str]
    format: str
    path: Path
    sha256: str


@dataclass
class PreparedData:
    """Splits as lists of normalised examples, plus what the model needs to know."""

    task: str
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    labels: list[str] | None
    columns: dict[str, str | None]
    dataset: dict[str, Any]  # path, name, sha256, rows, format (+ validation/test files)
    warnings: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> None:
        from adapterstudio.core.fsutil import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            rows = getattr(self, split)
            atomic_write_text(folder / f"{split}.jsonl", jsonl.text(rows))
        meta = {"task": self.task, "labels": self.labels, "columns": self.columns, "dataset": self.dataset,
                "warnings": self.warnings, "sizes": {s: len(getattr(self, s)) for s in ("train", "validation", "test")}}
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))

    @classmethod
    def read(cls, folder: Path) -> PreparedData:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        splits = {}
        for split in ("train", "validation", "test"):
            splits[split] = jsonl.read(folder / f"{split}.jsonl")
        return cls(task=meta["task"], labels=meta["labels"], columns=meta["columns"], dataset=meta["dataset"],
                   warnings=meta.get("warnings", []), **splits)


# -- loading ----------------------------------------------------------------------
def hash_path(path: Path) -> str:
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
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInput(f"The data file {p} does not exist.")
    p = p.resolve()
    suffix = p.suffix.lower()
    try:
        if p.is_dir():
            fmt = "datasets"
            rows = _load_datasets_folder(p)
        elif suffix in (".csv", ".tsv", ".txt"):
            fmt = "csv"
            rows = _load_csv(p, "\t" if suffix in (".tsv", ".txt") else ",")
        elif suffix in (".jsonl", ".ndjson"):
            fmt = "jsonl"
            rows = _load_jsonl(p)
        elif suffix == ".json":
            fmt = "json"
            rows = _load_json(p)
        elif suffix in (".parquet", ".pq"):
            fmt = "parquet"
            rows = _load_parquet(p)
        else:
            raise InvalidInput(f"{p} has an unknown data format {suffix!r}; use CSV, TSV, JSONL, JSON, Parquet or a datasets folder.")
    except UnicodeDecodeError:
        raise InvalidInput(f"{p} is not UTF-8 text.") from None
    if not rows:
        raise InvalidInput(f"The data file {p} has no rows.")
    columns: list[str] = []
    for r in rows[:1000]:
        for k in r:
            if k not in columns:
                columns.append(k)
    return Table(rows=rows, columns=columns, format=fmt, path=p, sha256=hash_path(p))


def _load_csv(p: Path, sep: str) -> list[dict[str, Any]]:
    import csv

    with p.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=sep)
        if not reader.fieldnames:
            raise InvalidInput(f"{p} has no header row.")
        rows = []
        for i, r in enumerate(reader, start=1):
            if None in r:
                raise InvalidInput(f"{p}: row {i} has more fields than the header ({len(reader.fieldnames)}).")
            rows.append(dict(r))
        return rows


def _load_jsonl(p: Path) -> list[dict[str, Any]]:
    rows = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
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


def _load_json(p: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
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
        return pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
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


# -- column mapping and row checks -----------------------------------------------------
def _pick(columns: list[str], given: str | None, guesses: tuple[str, ...], what: str, path: Path, flag: str,
          required: bool = True, exclude: tuple[str | None, ...] = ()) -> str | None:
    if given:
        if given not in columns:
            raise InvalidInput(f"{path} has no column {given!r} (columns: {', '.join(columns)}).")
        return given
    lower = {c.lower(): c for c in columns if c not in exclude}
    for g in guesses:
        if g in lower:
            return lower[g]
    if required:
        raise InvalidInput(f"{path} has no obvious {what} column (columns: {', '.join(columns)}); name it with {flag}.")
    return None


def _text(v: Any, path: Path, row: int, col: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is empty.")
    if isinstance(v, (dict, list)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is not text.")
    s = str(v)
    if not s.strip():
        raise InvalidInput(f"{path}: row {row}, column {col!r} is empty.")
    return s


def _label(v: Any, path: Path, row: int, col: str) -> str:
    if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
        raise InvalidInput(f"{path}: row {row}, column {col!r} has no label.")
    if isinstance(v, (dict, list)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is not a single label.")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def normalise(table: Table, task: str, spec_columns: dict[str, str | None]) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Rows as the trainer wants them: {"text", ("text_pair"), "label"} / {"messages"} / ... ."""
    p, cols = table.path, table.columns
    g = spec_columns
    out: list[dict[str, Any]] = []
    used: dict[str, str | None] = {}
    if task in ("seq-cls", "regression"):
        tc = _pick(cols, g.get("text_column"), TEXT_GUESSES, "text", p, "--text-column")
        lc = _pick(cols, g.get("label_column"), LABEL_GUESSES, "label", p, "--label-column", exclude=(tc,))
        pc = _pick(cols, g.get("text_pair_column"), (), "second text", p, "--text-pair-column", required=False)
        used = {"text_column": tc, "label_column": lc, "text_pair_column": pc}
        for i, r in enumerate(table.rows, start=1):
            ex: dict[str, Any] = {"text": _text(r.get(tc), p, i, tc)}
            if pc:
                ex["text_pair"] = _text(r.get(pc), p, i, pc)
            if task == "regression":
                v = r.get(lc)
                try:
                    fv = float(v)  # type: ignore[arg-type]
                    if fv != fv or isinstance(v, bool):
                        raise ValueError
                except (TypeError, ValueError):
                    raise InvalidInput(f"{p}: row {i}, column {lc!r} is {v!r}, not a number.") from None
                ex["label"] = fv
            else:
                ex["label"] = _label(r.get(lc), p, i, lc)
            out.append(ex)
    elif task == "causal-lm":
        mc = _pick(cols, g.get("messages_column"), ("messages", "conversations", "chat"), "messages", p,
                   "--messages-column", required=False)
        pc = rc = tc = None
        if not mc:
            pc = _pick(cols, g.get("prompt_column"), PROMPT_GUESSES, "prompt", p, "--prompt-column", required=False)
            rc = _pick(cols, g.get("response_column"), RESPONSE_GUESSES, "response", p, "--response-column",
                       required=False) if pc else None
            if not (pc and rc):
                pc = rc = None
                tc = _pick(cols, g.get("text_column"), TEXT_GUESSES, "text", p, "--text-column")
        used = {"messages_column": mc, "prompt_column": pc, "response_column": rc, "text_column": tc}
        for i, r in enumerate(table.rows, start=1):
            if mc:
                msgs = r.get(mc)
                if isinstance(msgs, str):
                    try:
                        msgs = json.loads(msgs)
                    except json.JSONDecodeError:
                        raise InvalidInput(f"{p}: row {i}, column {mc!r} is not a list of messages.") from None
                if not isinstance(msgs, list) or not msgs or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
                    raise InvalidInput(f"{p}: row {i}, column {mc!r} must be a list of {{role, content}} messages.")
                if not any(m["role"] == "assistant" for m in msgs):
                    raise InvalidInput(f"{p}: row {i}, column {mc!r} has no assistant message to learn from.")
                out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
            elif pc and rc:
                out.append({"prompt": _text(r.get(pc), p, i, pc), "response": _text(r.get(rc), p, i, rc)})
            else:
                out.append({"text": _text(r.get(tc), p, i, tc)})  # type: ignore[arg-type]
    elif task == "token-cls":
        tc = _pick(cols, g.get("text_column"), TOKENS_GUESSES, "tokens", p, "--text-column")
        lc = _pick(cols, g.get("label_column"), TAGS_GUESSES, "tags", p, "--label-column", exclude=(tc,))
        used = {"text_column": tc, "label_column": lc}
        for i, r in enumerate(table.rows, start=1):
            toks, tags = r.get(tc), r.get(lc)
            if isinstance(toks, str):
                toks = toks.split()
            if isinstance(tags, str):
                tags = tags.split()
            if not isinstance(toks, list) or not toks:
                raise InvalidInput(f"{p}: row {i}, column {tc!r} must be a non-empty list of words.")
            if not isinstance(tags, list) or len(tags) != len(toks):
                raise InvalidInput(f"{p}: row {i}, column {lc!r} must hold one tag per word ({len(toks)}).")
            out.append({"tokens": [str(t) for t in toks], "tags": [_label(t, p, i, lc) for t in tags]})
    elif task == "image-cls":
        ic = _pick(cols, g.get("image_column"), IMAGE_GUESSES, "image", p, "--image-column")
        lc = _pick(cols, g.get("label_column"), LABEL_GUESSES, "label", p, "--label-column", exclude=(ic,))
        used = {"image_column": ic, "label_column": lc}
        for i, r in enumerate(table.rows, start=1):
            img = r.get(ic)
            if isinstance(img, str):
                ip = Path(img) if Path(img).is_absolute() else (p.parent if p.is_file() else p) / img
                if not ip.is_file():
                    raise InvalidInput(f"{p}: row {i}, column {ic!r} names {img}, which does not exist.")
                img = str(ip)
            elif not isinstance(img, list):
                raise InvalidInput(f"{p}: row {i}, column {ic!r} must be an image file path or a pixel array.")
            out.append({"image": img, "label": _label(r.get(lc), p, i, lc)})
    else:  # pragma: no cover - validated earlier
        raise InvalidInput(f"Unknown task {task!r}.")
    return out, used


# -- splitting -----------------------------------------------------------------------
def stratified_split(rows: list[dict[str, Any]], fractions: list[float], seed: int,
                     key: str | None = "label") -> list[list[dict[str, Any]]]:
    """Split into len(fractions)+1 parts (the rest first), keeping label proportions."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        k = r.get(key) if key and isinstance(r.get(key), str) else None
        groups.setdefault(k, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for k in sorted(groups, key=str):
        idx = groups[k]
        rng.shuffle(idx)
        n = len(idx)
        start = 0
        for j, f in enumerate(fractions):
            take = int(round(n * f))
            if f > 0 and take == 0 and n - start > 1:
                take = 1
            parts[j + 1].extend(idx[start:start + take])
            start += take
        parts[0].extend(idx[start:])
    out = []
    for part in parts:
        rng.shuffle(part)
        out.append([rows[i] for i in part])
    return out


def prepare(spec: Any) -> PreparedData:
    """Load, check, map and split the spec's data (and validation/test files)."""
    cols = {k: getattr(spec, k) for k in ("text_column", "text_pair_column", "label_column", "prompt_column",
                                          "response_column", "messages_column", "image_column")}
    table = load_table(spec.data)
    rows, used = normalise(table, spec.task, cols)
    warnings: list[str] = []
    strat_key = "label" if spec.task in ("seq-cls", "image-cls") else None
    dataset: dict[str, Any] = {"path": str(table.path), "name": table.path.stem, "sha256": table.sha256,
                               "rows": len(rows), "format": table.format}
    val_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    fracs = []
    if spec.validation:
        vt = load_table(spec.validation)
        val_rows, _ = normalise(vt, spec.task, {**cols, **used})
        dataset["validation"] = {"path": str(vt.path), "sha256": vt.sha256, "rows": len(val_rows)}
    else:
        fracs.append(spec.val_fraction)
    if spec.test:
        tt = load_table(spec.test)
        test_rows, _ = normalise(tt, spec.task, {**cols, **used})
        dataset["test"] = {"path": str(tt.path), "sha256": tt.sha256, "rows": len(test_rows)}
    elif spec.test_fraction > 0:
        fracs.append(spec.test_fraction)
    parts = stratified_split(rows, fracs, spec.seed, strat_key)
    train = parts[0]
    i = 1
    if not spec.validation:
        val_rows = parts[i]
        i += 1
    if not spec.test and spec.test_fraction > 0:
        test_rows = parts[i]
    if not train:
        raise InvalidInput(f"{table.path} leaves no rows for training after the validation/test split.")
    labels: list[str] | None = None
    if spec.task in ("seq-cls", "image-cls"):
        counts = Counter(r["label"] for r in rows)
        if len(counts) < 2:
            raise InvalidInput(f"{table.path}: column {used['label_column']!r} has only one label ({next(iter(counts))!r}); "
                               "classification needs at least two.")
        labels = _sorted_labels(counts)
        unknown = sorted({r["label"] for r in val_rows + test_rows} - set(labels), key=str)
        if unknown:
            raise InvalidInput(f"The validation/test data has label(s) {', '.join(map(repr, unknown[:5]))} that the training data lacks.")
        rare = [lbl for lbl, c in counts.items() if c < 2]
        if rare:
            warnings.append(f"label(s) {', '.join(map(repr, rare[:5]))} occur only once")
    elif spec.task == "token-cls":
        labels = _sorted_labels(Counter(t for r in rows + val_rows + test_rows for t in r["tags"]))
    return PreparedData(task=spec.task, train=train, validation=val_rows, test=test_rows, labels=labels,
                        columns=used, dataset=dataset, warnings=warnings)


def _sorted_labels(counts: Counter) -> list[str]:
    keys = list(counts)
    try:
        return [str(k) for k in sorted(keys, key=lambda k: float(k))]
    except ValueError:
        if "O" in keys:  # BIO tagging: O first, by convention
            return ["O"] + sorted(k for k in keys if k != "O")
        return sorted(keys)
