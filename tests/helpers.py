"""Builders for test inputs: real PEFT adapters and tiny random models from configs."""

from __future__ import annotations

from pathlib import Path


def save_minilm_adapters(out: Path, minilm_path: Path) -> dict[str, Path]:
    import torch
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    configs = {
        "lora": LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]),
        "dora": LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "key"], use_dora=True),
        "ia3": IA3Config(task_type="SEQ_CLS", target_modules=["query", "value", "output.dense"],
                         feedforward_modules=["output.dense"]),
        "loha": LoHaConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
        "lokr": LoKrConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]),
        "prompt": PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    }
    paths = {}
    base = AutoModelForSequenceClassification.from_pretrained(str(minilm_path), num_labels=2)
    for name, cfg in configs.items():
        model = get_peft_model(base, cfg)
        d = out / f"minilm-{name}"
        model.save_pretrained(str(d))
        paths[name] = d
        if len(paths) == len(configs):
            break  # the last adapter: no base to load for a next one
        base = model.unload() if hasattr(model, "unload") and name not in ("prompt",) else \
            AutoModelForSequenceClassification.from_pretrained(str(minilm_path), num_labels=2)
    return paths


def tiny_model(kind: str, out: Path) -> Path:
    """Save a tiny random model of *kind* (llama, gpt2, bert, vit) as safetensors; seconds."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        LlamaConfig,
        ViTConfig,
    )

    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = AutoModelForCausalLM.from_config(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        model = AutoModelForCausalLM.from_config(cfg)
    elif kind == "bert":
        cfg = BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128)
        model = AutoModelForSequenceClassification.from_config(cfg)
    elif kind == "vit":
        cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_labels=3)
        model = AutoModelForImageClassification.from_config(cfg)
    else:
        raise ValueError(kind)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
