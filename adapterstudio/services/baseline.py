"""How a run compares with its frozen-feature baseline, in words: one owner for the CLI, the GUI and model cards.

The numbers come from the training child (``ml.training.baseline.baseline_comparison``): a
run's metrics (and an adapter's lineage) carry ``baseline`` (the probe's summary),
``baseline_metric``, ``gain_over_baseline``, ``baseline_split`` and, when the fine-tune is
not better, ``baseline_warning``.
"""

from __future__ import annotations

from typing import Any

from adapterstudio.core.metrics import METRIC_LABELS

KEYS = ("baseline_metric", "gain_over_baseline", "baseline_warning", "baseline_split")


def fields(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The baseline keys a run's JSON carries at its top level."""
    metrics = metrics or {}
    return {k: metrics.get(k) for k in KEYS if k in metrics}


def lines(metrics: dict[str, Any] | None, strategy: str | None) -> list[str]:
    """The baseline and the fine-tune's gain over it; the negative-transfer warning first when there is one."""
    metrics = metrics or {}
    b = metrics.get("baseline")
    if not b or metrics.get("baseline_metric") is None:
        return []
    where = "test" if metrics.get("baseline_split") == "test" else "validation"
    label = METRIC_LABELS.get(b.get("metric"), b.get("metric"))
    out = [f"baseline: a logistic regression on the frozen base's {b.get('features')} features scored "
           f"{metrics['baseline_metric']:.4f} {label} on the {where} split"]
    gain = metrics.get("gain_over_baseline")
    if metrics.get("baseline_warning"):
        out.insert(0, "WARNING: " + metrics["baseline_warning"])
    elif gain is not None:
        out.append(f"{strategy or 'the fine-tune'} beats the baseline by {gain:+.4f} {label}")
    return out
