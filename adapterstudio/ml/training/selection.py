"""Which checkpoint a run exports: the best validation score so far, within the metric's sampling noise, and
how the exported weights are put back into the model at the end of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def noise(metric: str, value: float, n: int) -> float:
    """About one standard error of a validation *metric* at *value* over *n* examples (0 where unknown).

    Accuracy and macro-F1 on a small split move by this much from sampling alone (the binomial
    standard error; about 0.04 at 0.8 on 100 rows), so checkpoints that differ by less are a tie."""
    if metric not in ("accuracy", "macro_f1") or n <= 0 or not 0 <= value <= 1:
        return 0.0
    return math.sqrt(max(value * (1 - value), 0.0) / n)


def select_checkpoint(progress: dict[str, Any], value: float, loss: float, metric: str, higher: bool,
                      n: int) -> tuple[bool, bool]:
    """Track the best validation score and choose the checkpoint to export: (improved, keep this one).

    The one-standard-error rule, leaning to the more trained model: a checkpoint within the metric's
    sampling noise of the best score so far replaces the kept one (a later checkpoint has seen more
    steps at a lower learning rate, and a small split cannot tell them apart), though it is not a
    new best score for early stopping's patience. Updates *progress* in place."""
    best = progress.get("best_seen", progress.get("best"))
    sign = 1.0 if higher else -1.0
    improved = best is None or sign * (value - best) > 0 or (value == best and loss < progress.get("best_loss", math.inf) - 1e-3)
    if improved or best is None:  # (improved whenever there was no best yet)
        progress["best_seen"] = value
        best = value
    tol = noise(metric, best, n)
    keep = improved or (tol > 0 and sign * (best - value) <= tol)
    if keep:
        progress["best"], progress["best_step"], progress["best_loss"] = value, progress["step"], loss
    # patience counts evaluations without a new best score, whichever checkpoint is kept
    progress["bad_evals"] = 0 if improved else progress.get("bad_evals", 0) + 1
    return improved, keep


def load_best(model: Any, best_dir: Path, spec: Any) -> None:
    """Put the kept checkpoint's weights (``RUN_DIR/best``: an adapter, or a whole model for ``full``) into *model*."""
    from safetensors.torch import load_file

    if spec.strategy == "full":
        files = sorted(best_dir.glob("*.safetensors"))
        sd: dict[str, Any] = {}
        for f in files:
            sd.update(load_file(str(f)))
        model.load_state_dict(sd, strict=False)
        return
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(best_dir / "adapter_model.safetensors")))
