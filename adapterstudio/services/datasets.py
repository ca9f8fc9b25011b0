"""What a training data set holds, before anything trains on it: the one preview for the GUI and scripts.

:func:`preview` reads, checks and splits the data exactly as a training run will
(:func:`adapterstudio.core.training.data.prepare`, so it refuses and warns about the same
things) and reports the columns it picked, the label counts, the split sizes, the warnings and
a few example rows. It needs no base model and no ML library.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from adapterstudio.core.training.data import prepare
from adapterstudio.core.training.spec import TrainingSpec

SPLITS = ("train", "validation", "test")
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class DatasetPreview:
    """The data set as a run with the same settings would see it."""

    columns: dict[str, str | None]  # role (text_column, label_column ...) -> the column used
    labels: list[str] | None  # the classes (classification and token tagging), in the order the model gets them
    label_counts: dict[str | int, int]  # rows per label over every split (empty when rows have no single label)
    sizes: dict[str, int]  # rows per split: train, validation, test
    dataset: dict[str, Any]  # path, name, sha256, rows, format (+ validation/test files)
    warnings: list[str]  # what the data checks found worth a look (each one sentence)
    sample: list[dict[str, Any]]  # the first training rows, plain values only


def preview(spec: TrainingSpec) -> DatasetPreview:
    """Load, check and split *spec*'s data the way training will; raises InvalidInput for data it would refuse.

    Only the data settings of *spec* matter (files, task, columns, splits, seed, allowed checks).
    """
    prepared = prepare(spec)
    rows = prepared.train + prepared.validation + prepared.test
    labels = [r.get("label") for r in rows]
    counts = Counter(lbl for lbl in labels if isinstance(lbl, (str, int)))
    sample = [{k: v for k, v in r.items() if isinstance(v, (str, int, float))} for r in prepared.train[:SAMPLE_ROWS]]
    return DatasetPreview(columns=prepared.columns, labels=prepared.labels, label_counts=dict(counts),
                          sizes={s: len(getattr(prepared, s)) for s in SPLITS}, dataset=prepared.dataset,
                          warnings=prepared.warnings, sample=sample)
