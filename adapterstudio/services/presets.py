"""Starting settings per training strategy: what a form fills in when the user picks a strategy.

``None`` means "automatic", as in :class:`~adapterstudio.core.training.spec.TrainingSpec`: the
auto recipe sets the number of epochs (a step budget) and the learning rate for the strategy
and the model size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrategyPreset:
    epochs: float | None = None  # None: the recipe's step budget
    lr: float | None = None  # None: chosen for the strategy and the model size
    lora_r: int = 8
    lora_dropout: float = 0.05
    low_rank: bool = False  # a low-rank adapter (LoRA and kin): the rank, alpha and dropout settings apply


PRESETS = {
    "head": StrategyPreset(lora_dropout=0.0),
    "partial": StrategyPreset(lora_dropout=0.0),
    "lora": StrategyPreset(low_rank=True),
    "dora": StrategyPreset(low_rank=True),
    "ia3": StrategyPreset(lora_dropout=0.0),
    "loha": StrategyPreset(low_rank=True),
    "lokr": StrategyPreset(low_rank=True),
    "full": StrategyPreset(lora_dropout=0.0),
}


def for_strategy(strategy: str) -> StrategyPreset:
    """The starting settings for *strategy* (an unknown one gets the defaults)."""
    return PRESETS.get(strategy, StrategyPreset())
