"""The training engine end to end on tiny models: the supervisor, the worker, real checkpoints.

The worker runs in this process (``child_in_process_unless_slow``: the same ``worker.main``, on a thread);
the tests that need its real processes (two DDP processes under ``accelerate launch``, the
out-of-memory retry through the launcher's exit code) are marked ``slow`` and launch it for real.
The models are tiny random transformers and the text is small synthetic data (this file tests
mechanics, not quality; quality is tested on MiniLM with real data in test_training_cli.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from adapterstudio.core import jsonl
from adapterstudio.core.context import Context
from adapterstudio.core.errors import Cancelled, InvalidInput
from adapterstudio.core.runs import RunStore
from adapterstudio.core.training.spec import TrainingSpec
from adapterstudio.services import training as T
from adapterstudio.services.launch import TrainingFailed
from tests.training_helpers import child_in_process_unless_slow, sentiment_rows, tiny_with_tokenizer  # noqa: F401

LINEAGE_KEYS = {"run_id", "task", "strategy", "spec", "base", "dataset", "labels", "chat_template", "text_column",
                "label_column", "metrics", "library_versions", "seed", "hardware", "duration_s", "world_size"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {"bert": tiny_with_tokenizer("bert", d / "bert"), "llama": tiny_with_tokenizer("llama", d / "llama", chat_template=True)}


@pytest.fixture
def tlib(lib, models, tmp_path):
    lib.add_base(models["bert"], name="tb")
    data = tmp_path / "data.jsonl"
    # every row holds NEL, U+2028 and U+2029, which real tweets contain and str.splitlines() treats as line ends
    rows = [{**r, "text": r["text"] + " \x85\u2028\u2029"} for r in sentiment_rows(80)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lib.test_data = data  # type: ignore[attr-defined]
    return lib


def _spec(lib, **kw):
    # the fixed recipe: these tests are about the loop's mechanics (the auto recipe: test_recipe.py)
    base = dict(base="tb", data=str(lib.test_data), epochs=1, batch_size=8, cpu=True, name="t", recipe="fixed")
    base.update(kw)
    return TrainingSpec(**base)


def _events(run):
    return jsonl.read(Path(run.run_dir) / "events.jsonl")


def test_lora_run_lands_in_catalogue_with_lineage(tlib):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    logs: list[str] = []
    prog: list[tuple] = []
    out = T.train(tlib, _spec(tlib, strategy="lora", test_fraction=0.2, name="tiny-lora", epochs=2),
                  Context(on_progress=lambda d, t, m: prog.append((d, t, m)), on_log=logs.append))
    a = tlib.catalogue.get_adapter("tiny-lora")
    assert a.source == "train" and a.run_id == out.run.id and a.peft_type == "LORA" and a.compatible is True
    assert LINEAGE_KEYS <= set(a.lineage)
    lin = a.lineage
    assert lin["labels"] == ["neg", "pos"] and lin["task"] == "seq-cls" and lin["world_size"] == 1
    assert lin["dataset"]["sha256"] and lin["dataset"]["rows"] == 80 and lin["dataset"]["format"] == "jsonl"
    assert lin["base"]["name"] == "tb" and lin["spec"]["lr"] == 5e-4 and lin["library_versions"]["peft"]
    assert lin["metrics"]["history"] and "eval_accuracy" in lin["metrics"]["history"][-1]
    assert [h["epoch"] for h in lin["metrics"]["history"]] == [1.0, 2.0]  # one evaluation per epoch
    assert set(lin["metrics"]["test"]) >= {"accuracy", "macro_f1", "n"} and lin["metrics"]["test"]["n"] == 16
    assert "training_spec.yaml" in {f.relpath for f in a.files}
    assert TrainingSpec.from_yaml(Path(a.path) / "training_spec.yaml").lr == 5e-4
    run = RunStore(tlib.catalogue).get(out.run.id)
    assert run.status == "succeeded" and run.adapter == "tiny-lora" and run.world_size == 1 and run.last_checkpoint
    # the progress callback saw every step; events carry throughput and memory
    assert prog[0][1] == out.result["steps"]
    step = next(e for e in _events(run) if e["event"] == "step")
    assert {"loss", "lr", "samples_per_s", "tokens_per_s", "eta_s", "peak_memory", "epoch"} <= set(step)
    assert any("trainable" in m for m in logs)
    # the catalogued adapter loads with plain PEFT
    m = AutoModelForSequenceClassification.from_pretrained(tlib.catalogue.get_base("tb").path, num_labels=2)
    PeftModel.from_pretrained(m, a.path)


def test_head_and_partial_are_adapters_and_partial_uses_slower_backbone(tlib):
    from adapterstudio.ml.training.models import apply_strategy, load_base_model, param_groups

    T.train(tlib, _spec(tlib, strategy="head", name="h", lr=1e-3))
    h = tlib.catalogue.get_adapter("h")
    assert h.target_modules == ["dummy-target-modules"] and h.compatible is True
    spec = _spec(tlib, strategy="partial", unfreeze_layers=1, lr=1e-3, backbone_lr_ratio=0.05).with_defaults(0)
    base = load_base_model(spec, tlib.catalogue.get_base("tb").path, ["neg", "pos"])
    pm, info = apply_strategy(base, spec)
    assert info["head_modules"] == ["classifier"] and info["unfrozen_layers"] == ["bert.encoder.layer.1"]
    lrs = {g["lr"] for g in param_groups(pm, spec, info)}
    assert lrs == {1e-3, 5e-5}
    trained = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert all("classifier" in n or "encoder.layer.1." in n for n in trained)
    assert not any("encoder.layer.0." in n for n in trained)


def test_cancel_keeps_checkpoint_and_resume_finishes(tlib):
    ctx = Context()
    seen = threading.Event()
    ctx._on_progress = lambda d, t, m: seen.set() if d >= 2 else None
    result: dict = {}
    total = 80  # 10 epochs of 8 steps: the cancel lands long before the end

    def work():
        try:
            T.train(tlib, _spec(tlib, strategy="lora", epochs=total // 8, name="c"), ctx)
        except Cancelled as exc:
            result["cancelled"] = exc

    th = threading.Thread(target=work)
    th.start()
    assert seen.wait(120)
    ctx.cancel()
    th.join(180)
    assert "cancelled" in result
    run = RunStore(tlib.catalogue).list()[0]
    assert run.status == "cancelled" and run.last_checkpoint and Path(run.last_checkpoint).is_dir()
    stopped_at = int(Path(run.last_checkpoint).name.split("-")[1])
    assert 2 <= stopped_at < total
    assert tlib.catalogue.find_adapter("c") is None
    out = T.resume(tlib, run.id, Context())
    start = [e for e in _events(out.run) if e["event"] == "start"][-1]
    assert start["resumed_from"] == f"step-{stopped_at}" and start["step"] == stopped_at
    assert out.result["steps"] == total and tlib.catalogue.get_adapter("c").run_id == run.id


def test_a_supervisor_that_fails_mid_run_stops_its_worker_and_the_run_resumes(tlib):
    from adapterstudio.core.runs import worker_holder

    class AppBug(Exception):
        pass

    def progress(done, total, message):
        if done >= 2:
            raise AppBug("the app's progress callback failed")

    with pytest.raises(AppBug):
        T.train(tlib, _spec(tlib, strategy="head", epochs=4, name="sup"), Context(on_progress=progress))
    run = RunStore(tlib.catalogue).list()[0]
    # the supervisor stopped its worker on the way out: nothing runs the run, which is resumable, not 'running'
    assert run.status == "interrupted" and "supervision stopped (AppBug)" in run.error
    assert worker_holder(Path(run.run_dir)) is None and tlib.catalogue.find_adapter("sup") is None
    out = T.resume(tlib, run.id, Context())
    assert out.run.status == "succeeded" and out.result["steps"] == 32 and tlib.catalogue.get_adapter("sup")


@pytest.mark.slow
def test_out_of_memory_halves_micro_batch_and_keeps_effective_batch(tlib, monkeypatch):
    # the worker's test hook raises torch.OutOfMemoryError for micro-batches above 4 (after step 1)
    monkeypatch.setenv("ADAPTERSTUDIO_SIMULATE_OOM_ABOVE_BATCH", "4")
    logs: list[str] = []
    out = T.train(tlib, _spec(tlib, strategy="lora", save_every=1, name="oom"), Context(on_log=logs.append))
    assert any("out of memory at micro-batch 8" in m and "micro-batch 4 and gradient accumulation 2" in m for m in logs)
    run = RunStore(tlib.catalogue).get(out.run.id)
    assert run.spec["batch_size"] == 4 and run.spec["grad_accum"] == 2
    kinds = [e["event"] for e in _events(run)]
    assert "oom" in kinds and "oom_retry" in kinds
    starts = [e for e in _events(run) if e["event"] == "start"]
    assert starts[-1]["resumed_from"] == "step-1" and out.result["steps"] == 8
    assert tlib.catalogue.get_adapter("oom").lineage["spec"]["batch_size"] == 4


def test_early_stopping_and_best_checkpoint(tlib):
    # with a learning rate this small nothing changes: no improvement after the first evaluation
    out = T.train(tlib, _spec(tlib, strategy="lora", epochs=5, lr=1e-12, eval_every=1, early_stopping_patience=2, name="es"))
    # patience counts evaluations without a new best; of checkpoints that score the same (within the metric's
    # sampling noise) the latest, most trained one is exported
    assert out.result["stopped_early"] is True and out.result["steps"] == 3 and out.result["best_step"] == 3
    assert [h["step"] for h in out.result["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_two_cpu_processes_ddp(tlib):
    out = T.train(tlib, _spec(tlib, strategy="lora", num_processes=2, epochs=2, name="ddp"))
    assert out.result["world_size"] == 2
    run = RunStore(tlib.catalogue).get(out.run.id)
    assert run.world_size == 2 and tlib.catalogue.get_adapter("ddp").lineage["world_size"] == 2
    start = next(e for e in _events(run) if e["event"] == "start")
    assert start["world_size"] == 2
    # 64 training rows, micro-batch 8, two processes: 4 optimizer steps per epoch
    assert out.result["steps"] == 8


def test_causal_lm_chat_loss_on_answers_only(lib, models, tmp_path):
    from adapterstudio.ml.training.encoding import IGNORE, _encode_lm, load_tokenizer

    tok = load_tokenizer(str(models["llama"]), "causal-lm")
    msgs = [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "hi"}]
    ex = _encode_lm({"messages": msgs}, tok, 256)
    trained = [t for t, y in zip(ex["input_ids"], ex["labels"], strict=True) if y != IGNORE]
    text = tok.decode(trained)
    assert text.replace(" ", "").startswith("hellothere") and "say" not in text and "again" not in text
    assert "hi" in text.replace("hellothere", "") and ex["labels"][0] == IGNORE
    # instruction/response pairs without a template still mask the prompt
    ex2 = _encode_lm({"prompt": "2+2?", "response": "4"}, tok, 64)
    assert tok.decode([t for t, y in zip(ex2["input_ids"], ex2["labels"], strict=True) if y != IGNORE]).strip().startswith("4")
    # a full run records the chat template and perplexity
    lib.add_base(models["llama"], name="tl")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i} plus one?"},
                                                     {"role": "assistant", "content": str(i + 1)}]}) + "\n" for i in range(40)))
    out = T.train(lib, TrainingSpec(base="tl", data=str(data), task="causal-lm", strategy="lora", epochs=1,
                                    batch_size=8, cpu=True, name="chat", packing=False))
    a = lib.catalogue.get_adapter("chat")
    assert a.task_type == "CAUSAL_LM" and a.lineage["chat_template"].startswith("{% for m in messages")
    assert set(out.result["final"]) >= {"loss", "perplexity"}


def test_packing_fills_rows():
    from adapterstudio.ml.training.encoding import pack

    exs = [{"input_ids": list(range(n)), "attention_mask": [1] * n, "labels": list(range(n))} for n in (5, 7, 9, 3)]
    packed = pack(exs, 8)
    assert [len(p["input_ids"]) for p in packed] == [8, 8, 8]
    assert sum(len(p["input_ids"]) for p in packed) == 24


def test_token_chunks_split_long_micro_batches_within_the_budget():
    from adapterstudio.ml.training.batching import PASS_OVERHEAD_TOKENS, eval_batches, token_chunks

    lengths = [300, 10, 120, 64, 64, 64, 250, 5]
    idx = list(range(8))
    chunks = token_chunks(idx, lengths, 256)
    assert sorted(i for c in chunks for i in c) == idx
    for c in chunks:  # each pass pads to its own longest example and stays in budget (or holds one example)
        assert len(c) == 1 or len(c) * max(lengths[i] for i in c) <= 256
    assert [0] in chunks and [6] in chunks  # longer than the budget: a pass of its own
    assert token_chunks(idx, lengths, 0) == [idx]
    assert token_chunks([0, 1, 2], [50, 50, 50], 4096) == [[0, 1, 2]]  # nothing to save: one pass

    evb = eval_batches(lengths, 256, 3)
    assert sorted(i for b in evb for i in b) == idx and max(len(b) for b in evb) <= 3

    def cost(chunks, ls):
        return sum(PASS_OVERHEAD_TOKENS + len(c) * max(ls[i] for i in c) for c in chunks)

    # the cut is optimal: no split of the length-sorted examples into in-budget passes computes less
    import itertools
    import random

    rng = random.Random(3)
    for _ in range(30):
        ls = [rng.choice([rng.randint(3, 40), rng.randint(40, 300)]) for _ in range(9)]
        got = token_chunks(list(range(9)), ls, 512)
        order = sorted(range(9), key=lambda i: -ls[i])
        best = min(cost(parts, ls) for cuts in itertools.product([0, 1], repeat=8)
                   for parts in [[order[a:b] for a, b in zip([0] + [k + 1 for k in range(8) if cuts[k]],
                                                              [k + 1 for k in range(8) if cuts[k]] + [9], strict=True)]]
                   if all(len(c) == 1 or len(c) * ls[c[0]] <= 512 for c in parts))
        assert cost(got, ls) == best


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,task", [("bert", "seq-cls"), ("llama", "causal-lm")])
def test_split_steps_give_the_gradient_of_the_whole_step(models, kind, task):
    """However a step is cut (micro-batches of unequal size, passes within a token budget), the gradient is
    that of the step's mean loss: per example for classification, per label token for causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from adapterstudio.ml.training.batching import accumulate_gradients, training_passes
    from adapterstudio.ml.training.encoding import encode, example_tokens

    torch.manual_seed(0)
    path = str(models[kind])
    auto = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    model = auto.from_pretrained(path, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) \
        if task == "seq-cls" else auto.from_pretrained(path)
    model.train()
    tok = AutoTokenizer.from_pretrained(path)
    rows = sentiment_rows(10)
    spec = TrainingSpec(task=task, max_length=64)
    if task == "seq-cls":
        exs = encode(rows, tok, spec, ["neg", "pos"])
    else:
        exs = encode([{"prompt": r["label"], "response": r["text"]} for r in rows], tok, spec, None)
    lengths = [example_tokens(e) for e in exs]
    assert len(set(lengths)) > 3
    pad = tok.pad_token_id

    whole, items = training_passes(exs, [list(range(10))], lengths, 0, pad, task)
    accumulate_gradients(model, whole, items)
    ref = _grads(model)
    model.zero_grad(set_to_none=True)

    split, items = training_passes(exs, [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9]], lengths, 2 * max(lengths), pad, task)
    assert len(split) >= 4
    accumulate_gradients(model, split, items)
    got = _grads(model)
    assert ref.keys() == got.keys()
    for n in ref:
        assert torch.allclose(ref[n], got[n], atol=1e-5, rtol=1e-4), n


def test_length_grouped_batches_cover_each_example_once_with_less_padding():
    import random

    from adapterstudio.ml.training.batching import length_grouped_batches

    rng = random.Random(1)
    lengths = [rng.randint(4, 200) for _ in range(1000)]
    grouped = length_grouped_batches(lengths, 16, 0, True)
    plain = length_grouped_batches(lengths, 16, 0, False)
    assert sorted(i for b in grouped for i in b) == list(range(1000))

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)


def test_token_classification(lib, models, tmp_path):
    lib.add_base(models["bert"], name="tb")
    rows = [{"tokens": ["Rome", "cat", "Paris", "ran"][i % 4:] + ["dog"], "tags": (["LOC", "O", "LOC", "O"][i % 4:] + ["O"])}
            for i in range(40)]
    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = T.train(lib, TrainingSpec(base="tb", data=str(data), task="token-cls", strategy="lora", epochs=1,
                                    batch_size=8, cpu=True, name="ner"))
    a = lib.catalogue.get_adapter("ner")
    assert a.task_type == "TOKEN_CLS" and a.lineage["labels"] == ["O", "LOC"]
    assert set(out.result["final"]) >= {"accuracy", "macro_f1"}


def test_image_classification_on_digits(lib, tmp_path):
    sklearn = pytest.importorskip("sklearn.datasets")
    from tests.helpers import tiny_model

    tiny_model("vit", tmp_path / "vit")
    lib.add_base(tmp_path / "vit", name="tv")
    X, y = sklearn.load_digits(return_X_y=True)  # real handwritten digits (scikit-learn, BSD)
    data = tmp_path / "digits.jsonl"
    data.write_text("".join(json.dumps({"image": (X[i].reshape(8, 8) / 16.0).tolist(), "label": str(y[i])}) + "\n"
                            for i in range(120)))
    out = T.train(lib, TrainingSpec(base="tv", data=str(data), task="image-cls", strategy="head", epochs=1,
                                    batch_size=16, cpu=True, name="digits"))
    a = lib.catalogue.get_adapter("digits")
    assert a.lineage["labels"] == [str(i) for i in range(10)] and out.result["trainable_params"] == 650


def test_qlora_without_cuda_is_a_clear_error(tlib):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingFailed, match="QLoRA.*needs a CUDA GPU"):
        T.train(tlib, _spec(tlib, strategy="lora", quantize="4bit", name="q"))


def test_a_failing_cuda_probe_makes_the_estimate_unknown_not_a_host_ram_fit(tlib, monkeypatch, caplog):
    import torch

    def broken():
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", broken)
    spec, _ = T.resolve_spec(tlib, _spec(tlib, cpu=False))
    est = T.memory_estimate(tlib, spec)
    assert (est["device"], est["available"], est["fits"]) == ("cuda", None, None)
    assert "CUDA driver version is insufficient" in caplog.text
    # a CPU run never asks CUDA: host RAM is the memory it trains in
    assert T.memory_estimate(tlib, spec.replace(cpu=True))["device"] == "cpu"


def test_name_taken_and_unknown_base_fail_before_launch(tlib):
    T.train(tlib, _spec(tlib, strategy="head", name="taken", max_steps=1))
    from adapterstudio.core.errors import AlreadyExists, NotFound

    with pytest.raises(AlreadyExists, match="'taken' is already in the catalogue"):
        T.prepare_run(tlib, _spec(tlib, name="taken"))
    with pytest.raises(NotFound, match="No base model named 'nope'"):
        T.prepare_run(tlib, _spec(tlib, base="nope"))
    n = len(RunStore(tlib.catalogue).list())
    with pytest.raises(InvalidInput):
        T.prepare_run(tlib, _spec(tlib, data=str(tlib.test_data.with_name("missing.csv"))))
    assert len(RunStore(tlib.catalogue).list()) == n  # nothing recorded for refused input


def test_queue_survives_reopen_and_dead_runs_show_interrupted(tlib, home):
    from adapterstudio.services.library import open_library

    r1 = T.enqueue(tlib, _spec(tlib, strategy="head", name="q1", max_steps=2))
    r2 = T.enqueue(tlib, _spec(tlib, strategy="head", name="q2", max_steps=2))
    tlib.close()
    lib2 = open_library()
    store = RunStore(lib2.catalogue)
    assert [r.id for r in store.queue()] == [r1.id, r2.id]
    # a run that says 'running' but whose process is gone was interrupted
    store.update(r2.id, status="running", pid=2**22 + 12345, queue_position=None)
    assert store.get(r2.id).status == "interrupted"
    done = T.run_queue(lib2, Context())
    assert [d["status"] for d in done] == ["succeeded"]
    out = T.resume(lib2, r2.id, Context())
    assert out.run.status == "succeeded" and lib2.catalogue.find_adapter("q2") is not None
    lib2.close()


@pytest.mark.parametrize("strategy, extra, peft_type", [
    ("dora", {}, "LORA"), ("lora", {"use_rslora": True}, "LORA"), ("ia3", {}, "IA3"), ("loha", {}, "LOHA"),
    ("lokr", {}, "LOKR"),
])
def test_other_peft_methods_build_and_step(models, strategy, extra, peft_type):
    import torch

    from adapterstudio.ml.training.models import apply_strategy, load_base_model, param_groups

    spec = TrainingSpec(base="tb", data="-", strategy=strategy, **extra).with_defaults(0)
    model = load_base_model(spec, str(models["bert"]), ["a", "b"])
    pm, info = apply_strategy(model, spec)
    cfg = pm.peft_config["default"]
    assert cfg.peft_type.value == peft_type and 0 < info["trainable_params"] < info["total_params"]
    if strategy == "dora":
        assert cfg.use_dora is True
    if extra.get("use_rslora"):
        assert cfg.use_rslora is True
    # the new head trains with every method
    assert any("classifier" in n and p.requires_grad for n, p in pm.named_parameters())
    opt = torch.optim.AdamW(param_groups(pm, spec, info), lr=1e-2)
    batch = {"input_ids": torch.tensor([[2, 10, 11, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([1])}
    before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    pm(**batch).loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in pm.named_parameters() if p.requires_grad)


def test_full_fine_tune_becomes_a_base_with_lineage(tlib, tmp_path):
    out = T.train(tlib, _spec(tlib, strategy="full", name="tb-full", lr=1e-3))
    b = tlib.catalogue.get_base("tb-full")
    assert "full fine-tune of tb" in b.notes and out.run.id in b.notes
    lineage = json.loads((Path(b.path) / "lineage.json").read_text())
    assert lineage["strategy"] == "full" and lineage["labels"] == ["neg", "pos"] and lineage["run_id"] == out.run.id
    assert out.result["trainable_params"] == out.result["total_params"]
    assert RunStore(tlib.catalogue).get(out.run.id).status == "succeeded"
    # it scores like an adapter does
    res = T.evaluate(tlib, "tb-full", str(tlib.test_data))
    assert res["n"] == 80 and 0 <= res["accuracy"] <= 1
