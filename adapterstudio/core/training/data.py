"""Training data: map a table's columns, check every row, split it.

The files are read by :mod:`adapterstudio.core.training.loaders` (formats, encodings,
hashes). The supervisor prepares the splits once, in the parent process, and writes them
to the run folder as JSON Lines; the training child and any strategy comparison read those
files, so every strategy sees the same split. Bad input is refused before training starts,
naming the row (1-based, as a spreadsheet shows it; the header is not counted) and the
column.

Data that is probably a mistake is refused in one sentence: text with no visible
character, bytes, labels such as 'NaN' that mean a missing value, labels mixing numbers
and words, one column in two roles, infinite regression targets. Where such data may be deliberate the
refusal names the ``--allow`` check (``TrainingSpec.allow``, see :data:`ALLOW_CHECKS`)
that accepts it. Spellings of one number ('1', '1.0', '01') become one class, and NUL
characters inside text are removed; both with a warning in ``PreparedData.warnings``.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapterstudio.core import jsonl
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.training.loaders import Table, load_table

TEXT_GUESSES = ("text", "sentence", "content", "review", "document", "input", "tweet", "word")
LABEL_GUESSES = ("label", "labels", "class", "target", "category", "sentiment", "y")
PROMPT_GUESSES = ("prompt", "instruction", "question", "input")
RESPONSE_GUESSES = ("response", "output", "answer", "completion")
TOKENS_GUESSES = ("tokens", "words")
TAGS_GUESSES = ("tags", "ner_tags", "labels", "label")
IMAGE_GUESSES = ("image", "img", "path", "file")

# Checks that refuse data which may be deliberate, and what naming one in --allow (TrainingSpec.allow) accepts.
ALLOW_CHECKS = {
    "missing-labels": "keep labels that usually mean a missing value ('NaN', 'None', 'null', 'N/A' ...) as a class",
    "mixed-labels": "accept a label column that mixes numbers and words",
    "same-column": "use one column in two roles (e.g. as both the text and the label)",
}
# Spellings of a missing value (those pandas reads as NaN), compared case-insensitively.
MISSING_LABELS = frozenset({"", "#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "-nan", "1.#ind", "1.#qnan", "<na>",
                            "n/a", "na", "nan", "none", "null"})
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A squared error beyond float32's range (3.4e38) is inf: targets this large cannot train at all.
REGRESSION_MAX = 1e18
REGRESSION_WARN = 1e4  # the loss is the squared error: targets this large want rescaling
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # control, format (zero-width ...), separators


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


# -- column mapping and row checks -----------------------------------------------------
def _norm(name: str) -> str:
    """A column name as matched when no column has the exact name: no byte-order mark, spaces or case."""
    return name.replace("\ufeff", "").strip().casefold()


def _pick_column(columns: list[str], given: str | None, guesses: tuple[str, ...], what: str, path: Path, flag: str,
                 required: bool = True, exclude: tuple[str | None, ...] = (), notes: list[str] | None = None) -> str | None:
    if given:
        if given in columns:
            return given
        near = [c for c in columns if _norm(c) == _norm(given)]
        if len(near) == 1:
            if notes is not None:
                notes.append(f"{path}: column {near[0]!r} is used for {flag} {given} (the names differ only in spaces or case)")
            return near[0]
        raise InvalidInput(f"{path} has no column {given!r} (columns: {', '.join(map(repr, columns))}).")
    lower = {_norm(c): c for c in columns if c not in exclude}
    for g in guesses:
        if g in lower:
            return lower[g]
    if required:
        raise InvalidInput(f"{path} has no obvious {what} column (columns: {', '.join(map(repr, columns))}); name it with {flag}.")
    return None


def _text_value(v: Any, path: Path, row: int, col: str, nul_rows: dict[str, list[int]] | None = None) -> str:
    if v is None or (isinstance(v, float) and v != v):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is empty.")
    if isinstance(v, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} holds bytes, not text; store the column as strings.")
    if isinstance(v, (dict, list)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is not text.")
    s = str(v)
    if "\x00" in s:  # no tokenizer gives NUL a meaning, and C tools cut text at it: dropped, with a warning
        s = s.replace("\x00", "")
        if not s.strip():
            raise InvalidInput(f"{path}: row {row}, column {col!r} holds only NUL characters.")
        if nul_rows is not None:
            nul_rows.setdefault(col, []).append(row)
    if not s.strip():
        raise InvalidInput(f"{path}: row {row}, column {col!r} is empty.")
    if all(unicodedata.category(ch) in _INVISIBLE for ch in s):
        raise InvalidInput(f"{path}: row {row}, column {col!r} holds only control or invisible characters, no text.")
    return s


def _label(v: Any, path: Path, row: int, col: str) -> str:
    if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
        raise InvalidInput(f"{path}: row {row}, column {col!r} has no label.")
    if isinstance(v, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} holds bytes, not text; store the column as strings.")
    if isinstance(v, (dict, list)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is not a single label.")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _target(v: Any, path: Path, row: int, col: str) -> float:
    """A regression target: a finite number whose squared error fits a float32."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{path}: row {row}, column {col!r} holds bytes, not a number.")
    try:
        fv = float(v)
        if fv != fv or isinstance(v, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is {v!r}, not a number.") from None
    if not math.isfinite(fv):
        raise InvalidInput(f"{path}: row {row}, column {col!r} is {v!r}, not a finite number; "
                           "a regression target must be finite.")
    if abs(fv) > REGRESSION_MAX:
        raise InvalidInput(f"{path}: row {row}, column {col!r} is {v!r}, too large to train on "
                           f"(its squared error overflows 32-bit floats beyond {REGRESSION_MAX:g}); rescale the targets.")
    return fv


def normalise(table: Table, task: str, spec_columns: dict[str, str | None],
              warnings: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Rows as the trainer wants them: {"text", ("text_pair"), "label"} / {"messages"} / ... .

    One output row per table row, in order. What was read or mapped with a remark (a column matched
    despite spaces in its name, NUL characters removed) is added to *warnings*.
    """
    p, cols = table.path, table.columns
    g = spec_columns
    notes: list[str] = list(table.warnings)
    nul_rows: dict[str, list[int]] = {}

    def _pick(given: str | None, guesses: tuple[str, ...], what: str, flag: str,
              exclude: tuple[str | None, ...] = ()) -> str:
        """A column that must exist."""
        col = _pick_column(cols, given, guesses, what, p, flag, exclude=exclude, notes=notes)
        assert col is not None  # required=True raises instead of answering None
        return col

    def _maybe(given: str | None, guesses: tuple[str, ...], what: str, flag: str) -> str | None:
        """An optional column."""
        return _pick_column(cols, given, guesses, what, p, flag, required=False, notes=notes)

    def _text(v: Any, path: Path, row: int, col: str) -> str:
        return _text_value(v, path, row, col, nul_rows)

    out: list[dict[str, Any]] = []
    used: dict[str, str | None] = {}
    if task in ("seq-cls", "regression"):
        tc = _pick(g.get("text_column"), TEXT_GUESSES, "text", "--text-column")
        lc = _pick(g.get("label_column"), LABEL_GUESSES, "label", "--label-column", exclude=(tc,))
        pc = _maybe(g.get("text_pair_column"), (), "second text", "--text-pair-column")
        used = {"text_column": tc, "label_column": lc, "text_pair_column": pc}
        for i, r in enumerate(table.rows, start=1):
            ex: dict[str, Any] = {"text": _text(r.get(tc), p, i, tc)}
            if pc:
                ex["text_pair"] = _text(r.get(pc), p, i, pc)
            if task == "regression":
                ex["label"] = _target(r.get(lc), p, i, lc)
            else:
                ex["label"] = _label(r.get(lc), p, i, lc)
            out.append(ex)
    elif task == "causal-lm":
        mc = _maybe(g.get("messages_column"), ("messages", "conversations", "chat"), "messages", "--messages-column")
        prompt_col: str | None = None
        response_col: str | None = None
        text_col: str | None = None
        if not mc:
            prompt_col = _maybe(g.get("prompt_column"), PROMPT_GUESSES, "prompt", "--prompt-column")
            response_col = _maybe(g.get("response_column"), RESPONSE_GUESSES, "response", "--response-column") if prompt_col else None
            if not (prompt_col and response_col):
                prompt_col = response_col = None
                text_col = _pick(g.get("text_column"), TEXT_GUESSES, "text", "--text-column")
        used = {"messages_column": mc, "prompt_column": prompt_col, "response_column": response_col, "text_column": text_col}
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
            elif prompt_col and response_col:
                out.append({"prompt": _text(r.get(prompt_col), p, i, prompt_col), "response": _text(r.get(response_col), p, i, response_col)})
            else:
                assert text_col is not None  # no messages nor prompt/response: a text column was required
                out.append({"text": _text(r.get(text_col), p, i, text_col)})
    elif task == "token-cls":
        tc = _pick(g.get("text_column"), TOKENS_GUESSES, "tokens", "--text-column")
        lc = _pick(g.get("label_column"), TAGS_GUESSES, "tags", "--label-column", exclude=(tc,))
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
        ic = _pick(g.get("image_column"), IMAGE_GUESSES, "image", "--image-column")
        lc = _pick(g.get("label_column"), LABEL_GUESSES, "label", "--label-column", exclude=(ic,))
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
    for col, where in nul_rows.items():
        notes.append(f"{p}: column {col!r} held NUL characters in {len(where)} row{'s' if len(where) > 1 else ''} "
                     f"(first: row {where[0]}); they were removed")
    if warnings is not None:
        warnings.extend(notes)
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
    allow = set(getattr(spec, "allow", None) or ())
    warnings: list[str] = []
    table = load_table(spec.data)
    rows, used = normalise(table, spec.task, cols, warnings)
    _check_roles(table.path, used, allow)
    files = [(table.path, rows)]
    strat_key = "label" if spec.task in ("seq-cls", "image-cls") else None
    dataset: dict[str, Any] = {"path": str(table.path), "name": table.path.stem, "sha256": table.sha256,
                               "rows": len(rows), "format": table.format}
    val_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    fracs = []
    if spec.validation:
        vt = load_table(spec.validation)
        val_rows, _ = normalise(vt, spec.task, {**cols, **used}, warnings)
        files.append((vt.path, val_rows))
        dataset["validation"] = {"path": str(vt.path), "sha256": vt.sha256, "rows": len(val_rows)}
    else:
        fracs.append(spec.val_fraction)
    if spec.test:
        tt = load_table(spec.test)
        test_rows, _ = normalise(tt, spec.task, {**cols, **used}, warnings)
        files.append((tt.path, test_rows))
        dataset["test"] = {"path": str(tt.path), "sha256": tt.sha256, "rows": len(test_rows)}
    elif spec.test_fraction > 0:
        fracs.append(spec.test_fraction)
    if spec.task in ("seq-cls", "image-cls"):
        warnings += _check_labels(files, used["label_column"] or "label", allow)
    elif spec.task == "regression":
        warnings += _check_targets(files, used["label_column"] or "label")
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


def _check_roles(path: Path, used: dict[str, str | None], allow: set[str]) -> None:
    """One column in two roles (text and label ...) shows the model its answer: refused unless allowed."""
    if "same-column" in allow:
        return
    seen: dict[str, str] = {}
    for role, col in used.items():
        if not col:
            continue
        if col in seen:
            flags = " and ".join("--" + r.replace("_", "-") for r in (seen[col], role))
            raise InvalidInput(f"{path}: column {col!r} is used both for {flags}; name another column for one of them, "
                               "or pass --allow same-column if that is meant.")
        seen[col] = role


def _check_labels(files: list[tuple[Path, list[dict[str, Any]]]], col: str, allow: set[str]) -> list[str]:
    """Refuse missing-value labels and labels mixing numbers and words (unless allowed); make spellings
    of one number ('1', '1.0', '01') one class, in place, across the training, validation and test rows."""
    def rows_(n: int) -> str:
        return f"{n} row{'s' if n != 1 else ''}"

    if "missing-labels" not in allow:
        for path, rows in files:
            hits = [(i, r["label"]) for i, r in enumerate(rows, start=1) if r["label"].casefold() in MISSING_LABELS]
            if hits:
                kinds = ", ".join(map(repr, list(dict.fromkeys(lbl for _, lbl in hits))[:5]))
                n = len(hits)
                raise InvalidInput(f"{path}: column {col!r} has {n} label{'s' if n > 1 else ''} that usually "
                                   f"mean{'' if n > 1 else 's'} a missing value ({kinds}), first in row {hits[0][0]}; "
                                   "fix or drop those rows, or pass --allow missing-labels to keep them as a class.")
    count: Counter[str] = Counter()
    first: dict[str, tuple[int, int]] = {}  # label -> (file index, row)
    for f, (_, rows) in enumerate(files):
        for i, r in enumerate(rows, start=1):
            count[r["label"]] += 1
            first.setdefault(r["label"], (f, i))
    nums = [lbl for lbl in count if _NUMBER.fullmatch(lbl)]
    words = [lbl for lbl in count if not _NUMBER.fullmatch(lbl) and lbl.casefold() not in MISSING_LABELS]
    if nums and words and "mixed-labels" not in allow:
        kinds_ = [("numbers", nums), ("words", words)]
        (major, big), (minor, small) = sorted(kinds_, key=lambda k: -sum(count[lbl] for lbl in k[1]))
        odd = min(small, key=lambda lbl: first[lbl])
        f, row = first[odd]
        raise InvalidInput(f"{files[f][0]}: column {col!r} mixes {major} ({rows_(sum(count[lbl] for lbl in big))}, "
                           f"e.g. {big[0]!r}) and {minor} ({rows_(sum(count[lbl] for lbl in small))}, e.g. {odd!r}, "
                           f"first in row {row}); fix the odd ones, or pass --allow mixed-labels if both are meant as classes.")
    groups: dict[Decimal, list[str]] = {}
    for lbl in nums:
        groups.setdefault(Decimal(lbl), []).append(lbl)
    rename: dict[str, str] = {}
    notes = []
    for spellings in groups.values():
        if len(spellings) > 1:
            canon = min(spellings, key=lambda sp: (len(sp), sp))  # the plainest: '1' of '1', '1.0', '01'
            rename.update({sp: canon for sp in spellings})
            notes.append(f"column {col!r}: labels {', '.join(map(repr, sorted(spellings)))} are the same number "
                         f"and were merged into one class {canon!r}")
    for _, rows in files:
        for r in rows:
            r["label"] = rename.get(r["label"], r["label"])
    if len(notes) > 5:
        notes = notes[:5] + [f"column {col!r}: {len(notes) - 5} more numbers had several spellings, merged the same way"]
    return notes


def _check_targets(files: list[tuple[Path, list[dict[str, Any]]]], col: str) -> list[str]:
    """Regression targets (finite, checked row by row) so large that the squared-error loss wants them rescaled."""
    top = max((abs(r["label"]) for _, rows in files for r in rows), default=0.0)
    if top >= REGRESSION_WARN:
        return [f"column {col!r}: regression targets reach {top:g} in size; the loss is their squared error, "
                "so rescale them (e.g. to thousands) for a stable run"]
    return []


def _sorted_labels(counts: Counter[str]) -> list[str]:
    keys = list(counts)
    try:
        return [str(k) for k in sorted(keys, key=lambda k: float(k))]
    except ValueError:
        if "O" in keys:  # BIO tagging: O first, by convention
            return ["O"] + sorted(k for k in keys if k != "O")
        return sorted(keys)
