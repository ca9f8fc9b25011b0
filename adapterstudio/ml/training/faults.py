"""Fault injection for tests: make the training child fail the way real hardware does, without the hardware.

This module exists for tests. The training loop knows nothing of it: :meth:`FineTuneRecipe.setup` calls
:func:`install` once, and only when a test has set one of the environment variables below does it wrap a
recipe method so that it fails.

- ``ADAPTERSTUDIO_SIMULATE_OOM_ABOVE_BATCH=N``: every optimizer step after the first raises
  ``torch.OutOfMemoryError`` while the micro-batch is larger than N, as a device would that cannot hold it
  (the supervisor then halves the micro-batch and resumes from the last checkpoint).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapterstudio.ml.training.finetune import FineTuneRecipe

SIMULATE_OOM_ABOVE_BATCH = "ADAPTERSTUDIO_SIMULATE_OOM_ABOVE_BATCH"


def install(recipe: FineTuneRecipe) -> None:
    """Wrap *recipe*'s methods with the faults the environment asks for (none unless a test set them)."""
    oom_above = int(os.environ.get(SIMULATE_OOM_ABOVE_BATCH, "0") or 0)
    if oom_above and recipe.mb > oom_above:
        _simulate_oom(recipe)


def _simulate_oom(recipe: FineTuneRecipe) -> None:
    import torch

    real = recipe.forward_backward

    def forward_backward(passes: list[dict[str, Any]], items: list[int]) -> Any:
        if recipe.progress["step"] >= 1:
            raise torch.OutOfMemoryError(f"simulated out of memory at micro-batch {recipe.mb} (test hook)")
        return real(passes, items)

    # the seam: this instance's step fails, the class and the loop stay as they are
    recipe.forward_backward = forward_backward  # type: ignore[method-assign]
