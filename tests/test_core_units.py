"""Pure-Python core pieces: safetensors headers, settings, compatibility mapping."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapterstudio.core.compat import ModuleIndex, check_compatibility
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.peft_format import AdapterConfig, split_adapter_key
from adapterstudio.core.safetensors_header import read_header
from adapterstudio.core.settings import Settings, load_settings, save_settings


def test_header_matches_the_safetensors_library(tmp_path):
    tensors = {"a": np.zeros((3, 4), np.float32), "b": np.ones((5,), np.float16), "c": np.zeros((), np.int64)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    h = read_header(tmp_path / "x.safetensors")
    assert {k: (t.dtype, t.shape) for k, t in h.tensors.items()} == {
        "a": ("F32", (3, 4)), "b": ("F16", (5,)), "c": ("I64", ())}
    assert h.metadata == {"format": "pt"} and h.num_parameters == 12 + 5 + 1


@pytest.mark.parametrize("mutate,pattern", [
    (lambda b: b[:4], "only 4 bytes"),
    (lambda b: struct.pack("<Q", 10**9) + b[8:], "header length"),
    (lambda b: b[:-3], "truncated"),
    (lambda b: b + b"xyz", "trailing bytes"),
    (lambda b: b[:8] + b"[" + b[9:], "not valid JSON|not a JSON object"),
])
def test_damaged_files_are_named_in_one_sentence(tmp_path, mutate, pattern):
    save_file({"w": np.zeros((4, 4), np.float32)}, tmp_path / "ok.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mutate((tmp_path / "ok.safetensors").read_bytes()))
    with pytest.raises(InvalidInput, match=pattern) as info:
        read_header(bad)
    assert str(bad) in str(info.value)


def test_adapter_keys_map_to_modules():
    assert split_adapter_key("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight") == (
        "bert.encoder.layer.0.attention.self.query", "lora_A.weight")
    assert split_adapter_key("base_model.model.model.layers.1.mlp.down_proj.ia3_l") == ("model.layers.1.mlp.down_proj", "ia3_l")
    assert split_adapter_key("base_model.model.classifier.modules_to_save.weight") is None
    assert split_adapter_key("base_model.model.classifier.weight") is None
    assert split_adapter_key("prompt_embeddings") is None


def test_module_index_tolerates_task_prefixes():
    idx = ModuleIndex({"encoder.layer.0.attention.self.query": [8, 8], "encoder.layer.1.attention.self.query": [8, 8]})
    assert idx.find("bert.encoder.layer.1.attention.self.query") == "encoder.layer.1.attention.self.query"
    assert idx.find("encoder.layer.2.attention.self.query") is None
    assert idx.has_target("query") and not idx.has_target("q_proj")


def test_gpt2_conv1d_uses_fan_in_fan_out():
    # GPT-2's c_attn is a Conv1D stored as [in, out] = [64, 192]
    shapes = {"transformer.h.0.attn.c_attn": [64, 192]}
    cfg = AdapterConfig({"peft_type": "LORA", "r": 4, "target_modules": ["c_attn"], "fan_in_fan_out": True})
    from adapterstudio.core.safetensors_header import TensorInfo

    good = {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": TensorInfo("F32", (4, 64)),
            "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight": TensorInfo("F32", (192, 4))}
    assert check_compatibility(cfg, good, shapes, {}).compatible
    bad = dict(good)
    bad["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"] = TensorInfo("F32", (96, 4))
    report = check_compatibility(cfg, bad, shapes, {})
    assert not report.compatible and "output size 96" in report.reason


def test_settings_roundtrip_validation_and_versions(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    s = Settings(device="cuda:1", precision="bf16", theme="dark")
    save_settings(s, path)
    assert load_settings(path) == s
    path.write_text(json.dumps({"version": 1, "precision": "fp8"}))
    with pytest.raises(InvalidInput, match="precision must be one of"):
        load_settings(path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(InvalidInput, match="newer AdapterStudio"):
        load_settings(path)
    path.write_text(json.dumps({"version": 1, "max_resident_adapters": "8"}))
    with pytest.raises(InvalidInput, match="max_resident_adapters must be int"):
        load_settings(path)
    path.write_text("{oops")
    with pytest.raises(InvalidInput, match="not a valid settings file"):
        load_settings(path)
    # ADAPTERSTUDIO_HOME keeps settings and library together; --home wins over it
    monkeypatch.setenv("ADAPTERSTUDIO_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("ADAPTERSTUDIO_CONFIG", raising=False)
    from adapterstudio.core.settings import settings_path

    assert settings_path() == tmp_path / "h" / "settings.json"
    assert Settings().resolved_library_dir() == (tmp_path / "h").resolve()
    assert Settings().resolved_library_dir(tmp_path / "x") == (tmp_path / "x").resolve()


def test_head_only_adapter_with_peft_placeholder_target_fits():
    cfg = AdapterConfig({"peft_type": "LORA", "r": 8, "target_modules": ["dummy-target-modules"],
                         "modules_to_save": ["classifier"]})
    from adapterstudio.core.safetensors_header import TensorInfo

    tensors = {"base_model.model.classifier.weight": TensorInfo("F32", (2, 384)),
               "base_model.model.classifier.bias": TensorInfo("F32", (2,))}
    report = check_compatibility(cfg, tensors, {"encoder.layer.0.attention.self.query": [384, 384]}, {})
    assert report.compatible, report.problems
