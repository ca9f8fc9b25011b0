"""The model card the hub service generates, and local card validation."""

from __future__ import annotations

import pytest

from adapterstudio.api.cards import card_errors, parse_card
from adapterstudio.core.errors import InvalidInput
from adapterstudio.services import hub

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def adapter(lib, minilm_path, peft_adapters, tmp_path):
    lib.add_base(minilm_path, name="minilm", hub_id=BASE_ID, compute_hash=False)
    local_data = tmp_path / "reviews.csv"
    local_data.write_text("text,label\n")
    lineage = {
        "run_id": "r1", "task": "seq-cls", "strategy": "lora", "seed": 7, "labels": ["neg", "pos"],
        "dataset": {"path": str(local_data), "name": "reviews.csv", "sha256": "0" * 64, "rows": 120, "format": "csv"},
        "metrics": {"history": [], "final": {"eval_accuracy": 0.875, "eval_loss": 0.31, "eval_runtime": 2.0},
                    "test": {"test_f1": 0.8, "test_samples_per_second": 100.0}},
        "library_versions": {"peft": "0.21.0"},
    }
    return lib.import_adapter(peft_adapters["lora"], "sent-lora", base="minilm", lineage=lineage)


def test_card_front_matter_is_what_peft_and_the_hub_expect(lib, adapter):
    card = hub.make_card(lib, adapter, hub.resolve_base_model(lib, adapter), "alice/sent-lora")
    meta, body = parse_card(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == BASE_ID
    assert meta["pipeline_tag"] == "text-classification"
    assert {"peft", "lora", f"base_model:adapter:{BASE_ID}", "transformers"} <= set(meta["tags"])
    assert "datasets" not in meta  # a local CSV is not a Hub dataset: never on the card
    assert "reviews.csv" not in card.split("---")[1]
    assert meta["metrics"] == ["accuracy", "f1"]  # real values only, no losses or timings
    assert "| accuracy | 0.875 |" in body
    assert 'PeftModel.from_pretrained(base, "alice/sent-lora")' in body and "num_labels=2" in body
    assert card_errors(card) == []


def test_the_card_says_how_the_adapter_did_against_its_frozen_feature_baseline(lib, adapter):
    baseline = {"kind": "probe", "features": "pooled", "metric": "macro_f1", "val": {"macro_f1": 0.8},
                "test": {"macro_f1": 0.79}}
    adapter.lineage.update(baseline=baseline, baseline_metric=0.79, gain_over_baseline=0.04, baseline_split="test")
    card = hub.make_card(lib, adapter, BASE_ID)
    assert "## Against the frozen-feature baseline" in card
    assert "scored 0.7900 macro-F1 on the test split" in card and "lora beats the baseline by +0.0400 macro-F1" in card
    assert card_errors(card) == []
    adapter.lineage.update(gain_over_baseline=-0.11, baseline_warning="lora scored 0.680 macro-F1 on the test split, "
                           "below the frozen-feature baseline's 0.790: the baseline is the better model here")
    assert "- WARNING: lora scored 0.680 macro-F1" in hub.make_card(lib, adapter, BASE_ID)
    adapter.lineage.pop("baseline")
    assert "frozen-feature baseline" not in hub.make_card(lib, adapter, BASE_ID)


def test_a_hub_dataset_id_goes_on_the_card(lib, adapter):
    adapter.lineage["dataset"] = {"name": "stanfordnlp/imdb", "path": "", "rows": 10}
    meta, _ = parse_card(hub.make_card(lib, adapter, BASE_ID))
    assert meta["datasets"] == ["stanfordnlp/imdb"]


def test_a_base_without_hub_id_is_refused_with_the_fix(lib, minilm_path, peft_adapters):
    lib.add_base(minilm_path, name="local-minilm", compute_hash=False)
    a = lib.import_adapter(peft_adapters["lora"], "x", base="local-minilm")
    with pytest.raises(InvalidInput) as err:
        hub.resolve_base_model(lib, a)
    assert "--base-model" in str(err.value) and "--hub-id" in str(err.value)
    with pytest.raises(InvalidInput):
        hub.resolve_base_model(lib, a, "/home/me/models/minilm")
    assert hub.resolve_base_model(lib, a, BASE_ID) == BASE_ID


@pytest.mark.parametrize("text, fragment", [
    ("# no front matter\n", "no YAML front matter"),
    ("---\nbase_model: /home/me/base\n---\n", "Hub model id"),
    ("---\nbase_model: ./base\n---\n", "Hub model id"),
    ("---\ndatasets: /data/train.csv\n---\n", "list of strings"),
    ("---\nbase_model: [unclosed\n---\n", "does not parse"),
])
def test_local_card_validation(text, fragment):
    errors = card_errors(text)
    assert errors and fragment in errors[0]
