"""The inference session against plain PEFT: same logits, switching, blends, per-row batches, cache bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from adapterstudio.core.errors import Incompatible, InvalidInput  # noqa: E402
from tests.inference_helpers import one_torch_thread  # noqa: E402, F401  (a fixture: pytest finds it by name)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["a quiet walk by the river", "the printer jammed again", "numbers and letters 123"]


def peft_logits(base_path: Path, adapter: Path, task: str, texts, num_labels: int = 2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if task == "SEQ_CLS":
        base = AutoModelForSequenceClassification.from_pretrained(str(base_path), num_labels=num_labels)
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_path))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(str(base_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with torch.no_grad():
        return model(**tok(list(texts), padding=True, return_tensors="pt")).logits


def session(base, task, **kw):
    from adapterstudio.ml.inference import InferenceSession

    return InferenceSession(base, task=task, device="cpu", dtype="fp32", **kw)


@pytest.fixture(scope="module")
def mini_refs(minilm_path, mini_adapters) -> dict:
    """Plain PEFT's logits on TEXTS for each MiniLM adapter, computed once for the module; read-only."""
    return {n: peft_logits(minilm_path, p, "SEQ_CLS", TEXTS) for n, p in mini_adapters.items()}


def test_minilm_lora_and_ia3_match_plain_peft_across_switches(minilm_path, mini_adapters, mini_refs):
    s = session(minilm_path, "SEQ_CLS", num_labels=2, max_resident=2, max_host=1)
    for name, path in mini_adapters.items():
        s.add_adapter(name, path)
    refs = mini_refs
    # switch back and forth through every tier (device, host, disk) and across PEFT types
    for name in ["lora-a", "lora-b", "lora-c", "ia3", "lora-a", "lora-b", "lora-a", "lora-c", "ia3", "lora-b"]:
        s.use(name)
        got = s.logits(TEXTS)
        torch.testing.assert_close(got, refs[name], atol=1e-5, rtol=1e-4)
    s.use_base()
    base_out = s.logits(TEXTS)
    for n in refs:  # the adapters really change the output, so the comparison above means something
        assert (refs[n] - base_out).abs().max() > 1e-3
    info = s.cache_info()
    assert info["disk_loads"] >= 4 and info["evictions"] > 0
    assert len(info["resident"]) <= 2 and len(info["host"]) <= 1


def test_rank_padding_in_shared_slots_is_exact(minilm_path, mini_adapters, mini_refs):
    # lora-b (r=4) lands in a slot sized for r=8: zero padding must not change the result
    s = session(minilm_path, "SEQ_CLS", num_labels=2, max_resident=1, max_host=0)
    s.add_adapter("lora-a", mini_adapters["lora-a"])
    s.add_adapter("lora-b", mini_adapters["lora-b"])
    s.use("lora-a")
    s.use("lora-b")
    assert s.cache_info()["slots"] == 1
    torch.testing.assert_close(s.logits(TEXTS), mini_refs["lora-b"], atol=1e-5, rtol=1e-4)


def test_llama_lora_and_ia3_match_plain_peft(llama_files):
    base, adapters = llama_files
    s = session(base, "CAUSAL_LM", max_resident=2)
    for n, p in adapters.items():
        s.add_adapter(n, p)
    for name in ["chat-a", "chat-b", "chat-ia3", "chat-a"]:
        s.use(name)
        torch.testing.assert_close(s.logits(TEXTS), peft_logits(base, adapters[name], "CAUSAL_LM", TEXTS),
                                   atol=1e-5, rtol=1e-4)


def test_disable_gives_the_base_model(llama_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = llama_files
    s = session(base, "CAUSAL_LM")
    s.add_adapter("chat-a", adapters["chat-a"])
    s.use("chat-a")
    s.use_base()
    tok = AutoTokenizer.from_pretrained(str(base))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(base))(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(s.logits(TEXTS), ref, atol=1e-5, rtol=1e-4)


def test_blend_is_the_weighted_sum_and_weights_change_live(llama_files):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = llama_files
    tok = AutoTokenizer.from_pretrained(str(base))
    batch = tok(TEXTS, padding=True, return_tensors="pt")

    def reference(wa: float, wb: float):
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapters["chat-a"]),
                                      adapter_name="a")
        m.load_adapter(str(adapters["chat-b"]), adapter_name="b")
        for mod in m.modules():
            if isinstance(mod, LoraLayer):
                for name, w in (("a", wa), ("b", wb)):
                    if name in mod.scaling:
                        mod.scaling[name] *= w
        m.base_model.set_adapter(["a", "b"])
        with torch.no_grad():
            return m.eval()(**batch).logits

    s = session(base, "CAUSAL_LM", max_resident=2)
    s.add_adapter("chat-a", adapters["chat-a"])
    s.add_adapter("chat-b", adapters["chat-b"])
    s.use_blend({"chat-a": 0.7, "chat-b": 0.3})
    torch.testing.assert_close(s.logits(TEXTS), reference(0.7, 0.3), atol=1e-5, rtol=1e-4)
    s.set_blend_weights({"chat-a": 0.2, "chat-b": 1.5})
    torch.testing.assert_close(s.logits(TEXTS), reference(0.2, 1.5), atol=1e-5, rtol=1e-4)
    s.use("chat-a")  # back to one adapter: its own scaling again
    torch.testing.assert_close(s.logits(TEXTS), peft_logits(base, adapters["chat-a"], "CAUSAL_LM", TEXTS),
                               atol=1e-5, rtol=1e-4)
    s.add_adapter("chat-ia3", adapters["chat-ia3"])
    with pytest.raises(InvalidInput, match="cannot be blended"):
        s.use_blend({"chat-a": 0.5, "chat-ia3": 0.5})


def test_per_row_adapters_in_one_batch(minilm_path, mini_adapters):
    s = session(minilm_path, "SEQ_CLS", num_labels=2, max_resident=3)
    for n in ("lora-a", "lora-b"):
        s.add_adapter(n, mini_adapters[n])
    rows = ["lora-a", "lora-b", None]
    got = s.logits(TEXTS, adapter_names=rows)
    s.use("lora-a")
    a = s.logits(TEXTS)
    s.use("lora-b")
    b = s.logits(TEXTS)
    s.use_base()
    base = s.logits(TEXTS)
    torch.testing.assert_close(got[0], a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], b[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], base[2], atol=1e-5, rtol=1e-4)
    res = s.classify(TEXTS, adapter_names=rows)
    assert [r["adapter"] for r in res] == rows
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in res)


def test_cache_memory_stays_flat_while_cycling(minilm_path, mini_adapters):
    """Memory is bounded by the tier sizes however many adapters cycle through: two rounds over more
    adapters than both tiers hold (2 resident + 3 on the host), two of them new after the first
    measurement, each round reading every adapter from disk again and one from the host tier."""
    s = session(minilm_path, "SEQ_CLS", num_labels=2, max_resident=2, max_host=3)
    names = []
    for i in range(8):  # eight catalogue names over three LoRA folders
        src = ["lora-a", "lora-b", "lora-c"][i % 3]
        s.add_adapter(f"ad{i}", mini_adapters[src])
        names.append(f"ad{i}")

    def footprint():
        info = s.cache_info()
        n_params = sum(p.numel() for p in s.peft_model.parameters())
        return n_params, info["slot_bytes"], info["host_bytes"], len(s.peft_model.peft_config)

    for n in names[:6]:
        s.use(n)
        s.logits(TEXTS[:1])
    first, before = footprint(), s.cache_info()
    for _ in range(2):
        for n in [*names, names[-3]]:  # the last: evicted to the host tier two adapters ago
            s.use(n)
            s.logits(TEXTS[:1])
    assert footprint() == first
    info = s.cache_info()
    assert len(info["resident"]) == 2 and len(info["host"]) == 3 and info["slots"] <= 2
    # both tiers evicted and refilled every round
    assert info["disk_loads"] - before["disk_loads"] >= 2 * len(names)
    assert info["host_loads"] - before["host_loads"] >= 2
    assert info["evictions"] - before["evictions"] >= 2 * len(names)


def test_classify_uses_lineage_labels(minilm_path, mini_adapters):
    s = session(minilm_path, "SEQ_CLS", num_labels=2)
    s.add_adapter("lora-a", mini_adapters["lora-a"], lineage={"labels": ["calm", "annoyed"], "task": "seq-cls"})
    s.use("lora-a")
    res = s.classify(TEXTS)
    assert all(r["label"] in ("calm", "annoyed") and set(r["probabilities"]) == {"calm", "annoyed"} for r in res)


def test_task_mismatch_is_refused(minilm_path, llama_files):
    _, adapters = llama_files
    s = session(minilm_path, "SEQ_CLS", num_labels=2)
    with pytest.raises(Incompatible, match="CAUSAL_LM"):
        s.add_adapter("chat-a", adapters["chat-a"])


def test_generation_matches_peft_streams_and_stops(llama_files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = llama_files
    s = session(base, "CAUSAL_LM")
    s.add_adapter("chat-a", adapters["chat-a"])
    s.use("chat-a")
    text = s.generate("hello", max_new_tokens=12, temperature=0)
    tok = AutoTokenizer.from_pretrained(str(base))
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapters["chat-a"])).eval()
    enc = tok("hello", return_tensors="pt")
    with torch.no_grad():
        ids = m.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    assert text == tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    pieces = list(s.generate("hello", max_new_tokens=12, temperature=0, stream=True))
    assert "".join(pieces) == text and pieces
    stop = text[3:5]
    assert stop and text.find(stop) >= 0
    assert s.last_generation["completion_tokens"] == ids.shape[1] - enc["input_ids"].shape[1]
    assert s.last_generation["finish_reason"] == ("length" if s.last_generation["completion_tokens"] == 12 else "stop")
    cut = s.generate("hello", max_new_tokens=12, temperature=0, stop=[stop])
    assert cut == text[: text.find(stop)]
    assert s.last_generation["finish_reason"] == "stop"
    a = s.generate("hello", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert a == s.generate("hello", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)


def test_chat_template_comes_from_the_adapter_lineage(llama_files):
    base, adapters = llama_files
    s = session(base, "CAUSAL_LM", max_resident=2)
    own = "{% for m in messages %}[[{{ m['content'] }}]]{% endfor %}"
    s.add_adapter("chat-a", adapters["chat-a"], lineage={"chat_template": own})
    s.add_adapter("chat-b", adapters["chat-b"], lineage={"chat_template": "{{ messages[0]['content'] }}!"})
    s.use("chat-a")
    msgs = [{"role": "user", "content": "hi"}]
    assert s.format_chat(msgs) == "[[hi]]"
    assert s.chat_template()[1] == "adapter lineage"
    s.use_base()
    assert s.chat_template()[1] == "base tokenizer" and "assistant:" in s.format_chat(msgs)
    s.use_blend({"chat-a": 0.5, "chat-b": 0.5})
    with pytest.raises(InvalidInput, match="different chat templates"):
        s.format_chat(msgs)


def test_per_row_generation(llama_files):
    """One batch, one adapter per row (and the base): each row generates what that adapter alone does.
    16 greedy tokens show it as well as the default 128, at an eighth of the decoding."""
    from adapterstudio.ml.inference import GenerationParams

    base, adapters = llama_files
    s = session(base, "CAUSAL_LM", max_resident=2)
    s.add_adapter("chat-a", adapters["chat-a"])
    s.add_adapter("chat-b", adapters["chat-b"])
    p = GenerationParams(max_new_tokens=16, temperature=0)
    rows = ["chat-a", "chat-b", None]
    outs = s.generate_batch(["hello"] * 3, rows, p)
    alone = []
    for name in rows:
        if name is None:
            s.use_base()
        else:
            s.use(name)
        alone.append(s.generate("hello", p))
    # left padding is the same for equal prompts, so a row equals the single-adapter run
    assert outs == alone
    assert len(set(alone)) == 3  # the adapters change the text: each row really ran its own


def _compiled_pair(tmp_path: Path):
    """A one-layer llama, two LoRA adapters of one layout (same modules; ranks 8 and 4, other scalings),
    plain PEFT's logits for each, and a session compiled with the first (nothing traced yet)."""
    from peft import LoraConfig

    from tests.inference_helpers import save_adapter, tiny_llama

    base = tiny_llama(tmp_path / "base", layers=1)
    targets = ["q_proj", "v_proj"]
    paths = {"r8": save_adapter(base, tmp_path / "r8", LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                                  target_modules=targets), "CAUSAL_LM", seed=20),
             "r4": save_adapter(base, tmp_path / "r4", LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=12,
                                                                  target_modules=targets), "CAUSAL_LM", seed=21)}
    refs = {n: peft_logits(base, p, "CAUSAL_LM", TEXTS) for n, p in paths.items()}
    assert (refs["r8"] - refs["r4"]).abs().max() > 1e-3  # a swap must change the output to prove anything
    s = session(base, "CAUSAL_LM", max_resident=2)
    for n, p in paths.items():
        s.add_adapter(n, p)
    s.compile("r8", backend="eager")  # torch.compile is lazy: dynamo traces on the first call
    return s, refs


def test_compiled_session_swaps_in_place(tmp_path):
    """After compile, each swap copies the adapter into the live slot the compiled graph reads: the model's
    modules, run eagerly here (no trace), give each adapter's own output; blends are refused."""
    s, refs = _compiled_pair(tmp_path)
    batch = s.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    for n in ["r8", "r4", "r8", "r4"]:
        s.use(n)
        with torch.inference_mode():
            torch.testing.assert_close(s.peft_model(**batch).logits, refs[n], atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidInput):
        s.use_blend({"r8": 0.5, "r4": 0.5})
    with pytest.raises(InvalidInput, match="compiled"):
        s.logits(TEXTS, adapter_names=["r8", "r4", None])


@pytest.mark.slow
def test_compiled_swaps_do_not_recompile(tmp_path):
    """Under torch.compile, swapping adapters of one layout gives each adapter's output through the compiled
    model without a new graph. Slow: dynamo traces the whole model once, ~3 s for this one-layer llama on an
    idle CPU and 9 s or more on a busy 2-core machine, even with the eager backend; the quick loop checks the
    in-place swap itself (test_compiled_session_swaps_in_place)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    s, refs = _compiled_pair(tmp_path)
    torch.testing.assert_close(s.logits(TEXTS), refs["r8"], atol=1e-5, rtol=1e-4)
    frames = counters["stats"]["unique_graphs"]
    for n in ["r4", "r8", "r4"]:
        s.use(n)
        torch.testing.assert_close(s.logits(TEXTS), refs[n], atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == frames


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr", "prompt"])
def test_other_peft_types_match_plain_peft(tmp_path, minilm_path, kind):
    from peft import LoHaConfig, LoKrConfig, LoraConfig, PromptTuningConfig

    from tests.inference_helpers import save_adapter

    cfg = {"dora": LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "key"], use_dora=True),
           "loha": LoHaConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
           "lokr": LoKrConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]),
           "prompt": PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)}[kind]
    path = save_adapter(minilm_path, tmp_path / kind, cfg, "SEQ_CLS", seed=7)
    s = session(minilm_path, "SEQ_CLS", num_labels=2, max_resident=1)
    entry = s.add_adapter(kind, path)
    assert not entry.fast  # these go through PEFT's own loader
    s.use(kind)
    torch.testing.assert_close(s.logits(TEXTS), peft_logits(minilm_path, path, "SEQ_CLS", TEXTS),
                               atol=1e-5, rtol=1e-4)


def test_token_classification_adapter(tmp_path, minilm_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from tests.inference_helpers import _perturb

    torch.manual_seed(0)
    base = AutoModelForTokenClassification.from_pretrained(str(minilm_path), num_labels=3)
    m = get_peft_model(base, LoraConfig(task_type="TOKEN_CLS", r=4, target_modules=["query", "value"]))
    _perturb(m, 5)
    m.save_pretrained(str(tmp_path / "ner"))
    s = session(minilm_path, "TOKEN_CLS", num_labels=3)
    s.add_adapter("ner", tmp_path / "ner", lineage={"labels": ["O", "PER", "LOC"], "task": "token-cls"})
    s.use("ner")
    ref_model = PeftModel.from_pretrained(
        AutoModelForTokenClassification.from_pretrained(str(minilm_path), num_labels=3), str(tmp_path / "ner")).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    with torch.no_grad():
        ref = ref_model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(s.logits(TEXTS), ref, atol=1e-5, rtol=1e-4)
    res = s.classify(TEXTS[:1])
    assert res[0]["tokens"][0]["token"] == "[CLS]"
    assert all(t["label"] in ("O", "PER", "LOC") for t in res[0]["tokens"])


def test_stop_ends_a_running_generation(llama_files):
    import threading

    base, adapters = llama_files
    s = session(base, "CAUSAL_LM")
    s.add_adapter("chat-a", adapters["chat-a"])
    s.use("chat-a")
    started = threading.Event()
    out: list[str] = []

    def run():
        stream = s.generate("hello", max_new_tokens=5000, temperature=0, stream=True)
        started.set()
        out.append("".join(stream))

    t = threading.Thread(target=run)
    t.start()
    started.wait(30)
    t.join(0.3)
    deadline = 120
    while t.is_alive() and deadline > 0:  # from another thread, as the GUI's Stop button does
        s.stop()
        t.join(0.2)
        deadline -= 0.2
    assert not t.is_alive()
    n_tokens = len(s.tokenizer(out[0], add_special_tokens=False)["input_ids"])
    assert n_tokens < 5000
    # the session is usable afterwards
    assert isinstance(s.generate("hello", max_new_tokens=3, temperature=0), str)


def test_only_allow_listed_lora_configs_use_slots(tmp_path, mini_adapters):
    mini = mini_adapters
    import json
    import shutil

    from adapterstudio.ml.inference.adapters import describe_adapter

    assert describe_adapter("plain", mini["lora-a"]).fast

    def variant(name: str, **changes):
        folder = tmp_path / name
        shutil.copytree(mini["lora-a"], folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
        return describe_adapter(name, folder)

    # a variant PEFT adds later (a flag or a config block this code has never seen) takes PEFT's path
    for name, changes in {"new-flag": {"use_some_new_variant": True},
                          "new-block": {"some_new_config": {"k": 1}},
                          "velora": {"velora_config": {"rank": 4}},
                          "dora": {"use_dora": True},
                          "bias": {"bias": "all"},
                          "pissa": {"init_lora_weights": "pissa"}}.items():
        e = variant(name, **changes)
        assert not e.fast and next(iter(changes)) in e.why_not_fast, name
    # unset fields of any name, and settings the slot path handles, stay on slots
    for name, changes in {"unset": {"use_some_new_variant": False, "some_new_config": None},
                          "gaussian": {"init_lora_weights": "gaussian"},
                          "rslora": {"use_rslora": True, "lora_dropout": 0.1}}.items():
        assert variant(name, **changes).fast, name
