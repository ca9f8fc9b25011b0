"""The evaluation metrics a run can select checkpoints by: their names, direction and labels.

One owner for these facts: the training spec validates against :data:`METRICS`, the worker
and the probe pick the best value with :data:`HIGHER_IS_BETTER`, and the CLI, the UI and the
baseline report name them with :data:`METRIC_LABELS`.
"""

from __future__ import annotations

METRICS = ("accuracy", "macro_f1", "loss", "perplexity", "rmse", "r2")
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False, "perplexity": False, "rmse": False, "r2": True}
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss", "perplexity": "perplexity",
                 "rmse": "RMSE", "r2": "R2"}


def best(metric: str, values: list[float]) -> float:
    """The best of *values* for *metric* (the highest where higher is better, else the lowest; lowest when unknown)."""
    return max(values) if HIGHER_IS_BETTER.get(metric, False) else min(values)
