"""The auto recipe (decided from the data, written into the spec) and the frozen-feature baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterstudio.core.training import recipe
from adapterstudio.core.training.spec import TrainingSpec
from tests.training_helpers import child_in_process_unless_slow  # noqa: F401  (autouse: the worker runs in this process)


def _decide(n=500, val=100, labels=None, **kw):
    spec = TrainingSpec(base="b", data="d.csv", **kw)
    labels = labels if labels is not None else ["neg"] * int(n * 0.7) + ["pos"] * (n - int(n * 0.7))
    return recipe.decide(spec, train_size=n, val_size=val, train_labels=labels, num_parameters=22_000_000)


def test_small_skewed_data_gets_a_step_budget_macro_f1_and_class_weights():
    s, notes = _decide(400, 100)  # 70/30
    assert s.metric == "macro_f1" and s.class_weights == "none" and s.head_init == "random"
    strong, _ = _decide(400, 100, labels=["a"] * 300 + ["b"] * 80 + ["c"] * 20)  # 75/20/5: weigh the loss
    assert strong.metric == "macro_f1" and strong.class_weights == "balanced"
    assert s.batch_size == 8 and s.epochs == 6.0  # 50 steps an epoch: 300 steps, twice the fixed recipe's compute
    assert s.eval_every == 25 and s.early_stopping_patience == 6  # 12 validations, stop after 6 without gain
    assert s.lr == 1e-3 and s.head_lr and s.head_lr >= s.lr
    assert any("macro_f1" in n for n in notes) and any("300 optimizer steps" in n for n in notes)
    # written into the spec: it validates and survives a YAML round trip
    assert TrainingSpec.from_dict(s.with_defaults(22_000_000).validate().to_dict()).epochs == 6.0


def test_balanced_two_classes_select_by_accuracy_without_weights():
    s, _ = _decide(400, 100, labels=["a", "b"] * 200)
    assert s.metric == "accuracy" and s.class_weights == "none"
    s3, _ = _decide(300, 100, labels=["a", "b", "c"] * 100)
    assert s3.metric == "macro_f1" and s3.class_weights == "none"  # more than two classes, balanced


def test_tiny_and_big_data_sets():
    tiny, _ = _decide(60, 20)
    assert tiny.epochs == 20.0  # at most MAX_EPOCHS
    big, _ = _decide(100_000, 5_000)
    assert big.batch_size == 16 and big.epochs == 1.0  # 6,250 steps an epoch: one epoch, not three
    mid, _ = _decide(20_000, 2_000)
    assert mid.epochs == pytest.approx(2.4, abs=0.01)  # about BIG_STEPS steps
    # validation on a large split costs at most about a quarter of the training compute
    assert mid.eval_every >= 1 and mid.max_steps == 0


def test_user_settings_win_and_fixed_recipe_keeps_the_old_defaults():
    s, _ = _decide(400, 100, epochs=2, metric="accuracy", eval_every=0, early_stopping_patience=0, lr=5e-4,
                   class_weights="none", head_init="probe", batch_size=32)
    assert (s.epochs, s.metric, s.eval_every, s.early_stopping_patience, s.lr, s.class_weights, s.head_init,
            s.batch_size) == (2, "accuracy", 0, 0, 5e-4, "none", "probe", 32)
    fixed, notes = _decide(400, 100, recipe="fixed")
    assert notes == [] and fixed.epochs is None
    f = fixed.with_defaults(22_000_000)
    assert (f.epochs, f.eval_every, f.early_stopping_patience, f.metric, f.lr, f.batch_size, f.class_weights) == \
        (3.0, 0, 0, "accuracy", 5e-4, 16, "none")


def test_regression_and_causal_lm():
    reg, _ = _decide(400, 100, task="regression", labels=[])
    assert reg.metric == "rmse" and reg.class_weights == "none" and reg.head_init == "random" and reg.epochs == 6.0
    lm, _ = _decide(400, 100, task="causal-lm", labels=[])
    assert lm.metric == "loss" and lm.epochs is None and lm.lr is None  # language models keep the fixed recipe


def test_bad_recipe_settings_are_one_sentence():
    from adapterstudio.core.errors import InvalidInput

    for kw, msg in [({"recipe": "magic"}, "recipe must be one of"), ({"class_weights": "odd"}, "class_weights must be"),
                    ({"head_lr": 2.0}, "head_lr must be between"), ({"metric": "rmse"}, "only applies to regression"),
                    ({"task": "token-cls", "class_weights": "balanced"}, "class_weights only applies")]:
        with pytest.raises(InvalidInput, match=msg):
            TrainingSpec(base="b", data="d", **kw).validate()


# -- the probe ----------------------------------------------------------------------------------------
def _blobs(n, dim, classes, seed):
    import numpy as np

    centres = np.random.default_rng(99).normal(0, 3, (classes, dim))  # one distribution, three samples of it
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = centres[y] + rng.normal(0, 2.5, (n, dim)) + 10  # offset and scale: the folding must undo the standardising
    return {"pooled": X, "head-input": X * 7, "y": y}


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_weights_fold_the_standardisation_into_one_linear_layer(classes):
    import numpy as np

    from adapterstudio.ml.training import probe as P
    from adapterstudio.ml.training.metrics import classification_metrics

    tr, va, te = _blobs(300, 8, classes, 0), _blobs(100, 8, classes, 1), _blobs(200, 8, classes, 2)
    p = P.fit("head-input", tr, va, te, "macro_f1", classes, classification_metrics)
    assert p is not None and p.val["macro_f1"] > 0.6 and p.C in P.C_GRID
    logits = te["head-input"] @ p.weight.T + p.bias  # what the initialised head computes
    ours = classification_metrics(logits.argmax(1).tolist(), te["y"].tolist(), classes)
    assert ours == pytest.approx(p.test)  # same predictions as the fitted logistic regression
    assert P.better(p, P.fit("pooled", tr, va, te, "macro_f1", classes, classification_metrics)) is not None
    assert np.isfinite(p.weight).all()


def test_baseline_comparison_gain_and_negative_transfer_warning():
    from adapterstudio.ml.training.baseline import baseline_comparison

    spec = TrainingSpec(strategy="lora", metric="macro_f1")
    b = {"features": "pooled", "metric": "macro_f1", "val": {"macro_f1": 0.8}, "test": {"macro_f1": 0.79}}
    worse = baseline_comparison(spec, b, {"macro_f1": 0.7}, {"macro_f1": 0.68})
    assert worse["baseline_metric"] == 0.79 and worse["gain_over_baseline"] == pytest.approx(-0.11)
    assert "lora scored 0.680 macro-F1" in worse["baseline_warning"] and "below the frozen-feature baseline's 0.790" in \
        worse["baseline_warning"]
    better = baseline_comparison(spec, b, {"macro_f1": 0.85}, {"macro_f1": 0.83})
    assert better["gain_over_baseline"] == pytest.approx(0.04) and "baseline_warning" not in better
    no_test = baseline_comparison(spec, b, {"macro_f1": 0.85}, {})
    assert no_test["baseline_split"] == "val" and no_test["gain_over_baseline"] == pytest.approx(0.05)
    rmse = baseline_comparison(TrainingSpec(metric="rmse"), {"metric": "rmse", "val": {"rmse": 1.0}, "test": {}},
                               {"rmse": 0.5}, {})
    assert rmse["gain_over_baseline"] == pytest.approx(0.5)  # lower is better: a positive gain


def test_head_learning_rate_and_class_weighted_loss():
    import torch

    from adapterstudio.ml.training.batching import class_weighted_loss
    from adapterstudio.ml.training.models import param_groups

    spec = TrainingSpec(strategy="lora", lr=1e-3, head_lr=4e-3, class_weights="balanced")
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "classifier": torch.nn.Linear(4, 2)})
    groups = param_groups(model, spec, {"head_modules": ["classifier"]})
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model["classifier"].weight)] == 4e-3 and lr_of[id(model["encoder"].weight)] == 1e-3
    train = [{"labels": 0}] * 6 + [{"labels": 1}] * 2
    loss = class_weighted_loss(spec, train, 2, torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([8 / 12, 8 / 4])  # n / (classes x count)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (ce * w[labels]).sum() / 3
    assert float(loss(type("O", (), {"logits": logits})(), {"labels": labels})) == pytest.approx(float(expected))
    assert class_weighted_loss(spec.replace(class_weights="none"), train, 2, torch.device("cpu")) is None


# -- end to end on a tiny model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tests.training_helpers import tiny_with_tokenizer

    return tiny_with_tokenizer("bert", tmp_path_factory.mktemp("tiny-recipe") / "bert")


@pytest.fixture
def tiny_lib(lib, tiny_bert, tmp_path):
    from tests.training_helpers import sentiment_rows

    lib.add_base(tiny_bert, name="tb")
    rows = sentiment_rows(90)[:80]  # 40/40 ... then skew it: keep one negative in eight (40/5)
    rows = [r for i, r in enumerate(rows) if r["label"] == "pos" or i % 8 == 1]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lib.test_data = data  # type: ignore[attr-defined]
    return lib


def test_auto_run_records_recipe_baseline_and_saves_the_probe(tiny_lib, cli_main, home):
    from adapterstudio.core.context import Context
    from adapterstudio.services import training as T

    logs: list[str] = []
    out = T.train(tiny_lib, TrainingSpec(base="tb", data=str(tiny_lib.test_data), cpu=True, name="auto",
                                         test_fraction=0.2, epochs=2, head_init="probe"), Context(on_log=logs.append))
    r = out.result
    spec = TrainingSpec.from_yaml(Path(out.run.run_dir) / "spec.yaml")
    assert spec.recipe == "auto" and spec.metric == "macro_f1" and spec.class_weights == "balanced"
    assert spec.epochs == 2 and spec.eval_every and spec.head_init == "probe"  # the user's epochs kept
    assert any(m.startswith("recipe: metric macro_f1") for m in logs) and any(m.startswith("baseline:") for m in logs)
    assert r["metric"] == "macro_f1" and r["baseline"]["kind"] == "probe"
    assert r["baseline"]["features"] in ("pooled", "head-input") and r["baseline_split"] == "test"
    assert r["baseline_metric"] == r["baseline"]["test"]["macro_f1"]
    assert r["gain_over_baseline"] == pytest.approx(r["test"]["macro_f1"] - r["baseline_metric"])
    lin = tiny_lib.catalogue.get_adapter("auto").lineage
    assert lin["baseline_metric"] == r["baseline_metric"] and "gain_over_baseline" in lin
    # runs show --json carries the comparison at the top level
    shown = cli_main("runs", "show", out.run.id, "--json")
    assert shown.returncode == 0, shown.stderr
    d = json.loads(shown.stdout)
    assert d["baseline_metric"] == r["baseline_metric"] and d["gain_over_baseline"] == pytest.approx(r["gain_over_baseline"])
    text = cli_main("runs", "show", out.run.id).stdout
    assert "baseline: a logistic regression on the frozen base's" in text
    # the probe becomes a head adapter in one action, and it scores what the probe scored on the test split
    saved = cli_main("runs", "save-probe", out.run.id, "--name", "auto-probe")
    assert saved.returncode == 0, saved.stderr
    probe = tiny_lib.catalogue.get_adapter("auto-probe")
    assert probe.lineage["strategy"] == "head" and probe.lineage["probe"]["kind"] == "probe"
    test_file = Path(out.run.run_dir) / "data" / "test.jsonl"
    scored = T.evaluate(tiny_lib, "auto-probe", str(test_file))
    head_input = r["baseline"]["candidates"]["head-input"]["test"]
    assert scored["macro_f1"] == pytest.approx(head_input, abs=1e-6)
    again = cli_main("runs", "save-probe", out.run.id, "--name", "auto-probe")
    assert again.returncode == 1 and "already in the catalogue" in again.stderr


def test_refit_trains_again_on_training_and_validation_rows(tiny_lib):
    import math

    from safetensors.torch import load_file

    from adapterstudio.core.errors import InvalidInput
    from adapterstudio.services import training as T

    spec = TrainingSpec(base="tb", data=str(tiny_lib.test_data), cpu=True, name="refit", test_fraction=0.2, epochs=2,
                        refit=True)
    out = T.train(tiny_lib, spec)
    r, run_dir = out.result, Path(out.run.run_dir)
    sel = json.loads((run_dir / "selection.json").read_text())
    sizes = {k: len((run_dir / "data" / f"{k}.jsonl").read_text().splitlines()) for k in ("train", "validation")}
    assert r["refit"]["train_examples"] == sizes["train"] + sizes["validation"]
    assert r["refit"]["steps"] == math.ceil(sel["best_step"] * (sizes["train"] + sizes["validation"]) / sizes["train"])
    assert r["steps"] == sel["steps"] + r["refit"]["steps"] and r["test"] == r["refit"]["test"]
    assert r["final"] == sel["final"] and r["baseline"] and "gain_over_baseline" in r
    # the exported (and catalogued) adapter is the refit model, not the selected checkpoint
    exported = load_file(str(Path(tiny_lib.catalogue.get_adapter("refit").path) / "adapter_model.safetensors"))
    refit_w = load_file(str(run_dir / "refit" / "adapter" / "adapter_model.safetensors"))
    selected = load_file(str(run_dir / "best" / "adapter_model.safetensors"))
    k = next(iter(exported))
    assert (exported[k] == refit_w[k]).all() and not all((exported[n] == selected[n]).all() for n in exported)
    with pytest.raises(InvalidInput, match="refit .* needs a validation split"):
        T.train(tiny_lib, spec.replace(name="refit2", val_fraction=0.0))


def test_checkpoint_selection_leans_to_the_later_of_checkpoints_within_noise():
    from adapterstudio.ml.training.selection import noise, select_checkpoint

    assert noise("macro_f1", 0.8, 100) == pytest.approx(0.04)
    assert noise("loss", 0.3, 100) == 0.0 and noise("accuracy", 0.8, 0) == 0.0
    progress: dict = {"best": None, "best_step": None, "bad_evals": 0}
    seen = []
    for step, value in [(25, 0.70), (50, 0.86), (75, 0.83), (100, 0.79), (125, 0.85), (150, 0.84)]:
        progress["step"] = step
        seen.append(select_checkpoint(progress, value, 0.5, "macro_f1", True, 100))
    # 0.83, 0.85 and 0.84 are within one standard error (~0.035) of the best 0.86: the latest of them is kept;
    # 0.79 is clearly worse; only 0.86 was a new best, so patience has counted four evaluations since
    assert [keep for _, keep in seen] == [True, True, True, False, True, True]
    assert [imp for imp, _ in seen] == [True, True, False, False, False, False]
    assert progress["best_step"] == 150 and progress["best"] == 0.84 and progress["bad_evals"] == 4
    loss_progress: dict = {"best": None, "best_step": None, "bad_evals": 0}
    for step, value in [(1, 0.5), (2, 0.49), (3, 0.495)]:  # loss has no sampling tolerance: lower is kept
        loss_progress["step"] = step
        select_checkpoint(loss_progress, value, value, "loss", False, 100)
    assert loss_progress["best_step"] == 2
