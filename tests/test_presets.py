"""services.presets: the settings each training strategy starts from (the Train form applies them)."""

from __future__ import annotations

from adapterstudio.core.training.spec import STRATEGIES, TrainingSpec
from adapterstudio.services.presets import PRESETS, StrategyPreset, for_strategy


def test_every_strategy_has_a_preset_and_only_low_rank_adapters_take_rank_settings():
    assert set(PRESETS) == set(STRATEGIES)
    assert {s for s in STRATEGIES if for_strategy(s).low_rank} == {"lora", "dora", "loha", "lokr"}
    for s in STRATEGIES:
        p = for_strategy(s)
        assert p.epochs is None and p.lr is None  # automatic: the recipe decides
        assert p.lora_r == TrainingSpec().lora_r
        assert p.lora_dropout == (TrainingSpec().lora_dropout if p.low_rank else 0.0)
    assert for_strategy("something-new") == StrategyPreset()  # the defaults
