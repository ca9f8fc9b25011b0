"""Test inputs for inference: adapters with non-trivial weights, a tiny llama with a tokenizer.

PEFT initialises LoRA's B matrix to zero (and IA3 vectors to one), so a freshly saved
adapter computes exactly the base model; comparing such adapters against PEFT would
prove nothing. These builders perturb every adapter weight with seeded noise first.
The texts are made up for mechanics tests; nothing here is claimed to be real data.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch's CPU ops on one thread for a test module of tiny models (used ``autouse`` by the modules).

    These models' matrices are too small to gain from a second thread, and with both cores busy (a
    second pytest, a training run) torch's thread pool waits for a thread that is not running: 128
    tokens for 3 rows of the tiny llama took 0.7 s alone and 3-3.7 s beside one busy process on two
    threads, 0.85 s on one; test_inference.py took 88-175 s on a shared 2-core machine. Restored after the module.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _perturb(model, seed: int, scale: float = 0.2) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def save_adapter(base_dir: Path, out: Path, config, task: str, seed: int, num_labels: int = 2) -> Path:
    """Build *config* on the base in *base_dir*, perturb its weights, save with plain PEFT."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if task == "SEQ_CLS":
        base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=num_labels)
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model = get_peft_model(base, config)
    _perturb(model, seed)
    model.save_pretrained(str(out))
    return out


def minilm_adapters(out: Path, minilm_path: Path) -> dict[str, Path]:
    from peft import IA3Config, LoraConfig

    specs = {
        "lora-a": LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]),
        "lora-b": LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
        "lora-c": LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=4, target_modules=["query", "key", "value"],
                             use_rslora=True),
        "ia3": IA3Config(task_type="SEQ_CLS", target_modules=["query", "value", "output.dense"],
                         feedforward_modules=["output.dense"]),
    }
    return {name: save_adapter(minilm_path, out / name, cfg, "SEQ_CLS", seed=i + 1)
            for i, (name, cfg) in enumerate(specs.items())}


def byte_tokenizer(out: Path, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """A byte-level BPE tokenizer with no merges: ids 0-255 are bytes, then <s> </s> <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out))


def tiny_llama(out: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, vocab: int = 260, with_tokenizer: bool = True) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    if with_tokenizer:
        byte_tokenizer(out)
    return out


def llama_adapters(out: Path, base: Path) -> dict[str, Path]:
    from peft import IA3Config, LoraConfig

    specs = {
        "chat-a": LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "chat-b": LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=4,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        "chat-ia3": IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                              feedforward_modules=["down_proj"]),
    }
    return {name: save_adapter(base, out / name, cfg, "CAUSAL_LM", seed=10 + i)
            for i, (name, cfg) in enumerate(specs.items())}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def serve_in_thread(inference, **options) -> Iterator[tuple[str, Any]]:
    """What ``adapterstudio serve --port 0`` runs (the same app and uvicorn settings), on a thread of this
    process: yields (the ``.../v1`` URL, the app); stopped and joined on exit. *options*: ``create_app``'s."""
    from adapterstudio.server.app import create_app, listen, uvicorn_server

    app = create_app(inference, **options)
    sock = listen("127.0.0.1", 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
