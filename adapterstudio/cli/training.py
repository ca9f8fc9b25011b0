"""``adapterstudio train``, ``runs``, ``queue``, ``eval`` and ``compare``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from adapterstudio.cli._common import add_group, emit, human_size, open_lib, progress, table
from adapterstudio.core.metrics import METRICS
from adapterstudio.core.runs import STATUSES
from adapterstudio.core.settings import PRECISIONS
from adapterstudio.core.training.spec import CLASS_WEIGHTS, HEAD_INITS, QUANTIZE, RECIPES, SCHEDULES, STRATEGIES, TASKS
from adapterstudio.services import baseline

# CLI flag -> spec field (only flags the user gave override the --config file)
SPEC_FLAGS = {
    "base": "base", "data": "data", "task": "task", "strategy": "strategy", "name": "name",
    "text_column": "text_column", "text_pair_column": "text_pair_column", "label_column": "label_column",
    "prompt_column": "prompt_column", "response_column": "response_column", "messages_column": "messages_column",
    "image_column": "image_column", "validation": "validation", "test": "test", "val_fraction": "val_fraction",
    "test_fraction": "test_fraction", "epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
    "grad_accum": "grad_accum", "max_steps": "max_steps", "max_length": "max_length", "num_processes": "num_processes",
    "cpu": "cpu", "seed": "seed", "precision": "precision", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
    "target_modules": "target_modules", "rslora": "use_rslora", "unfreeze_layers": "unfreeze_layers",
    "early_stopping": "early_stopping_patience", "eval_every": "eval_every", "save_every": "save_every",
    "quantize": "quantize", "packing": "packing", "accelerate_config": "accelerate_config", "schedule": "schedule",
    "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay", "max_batch_tokens": "max_batch_tokens",
    "recipe": "recipe", "metric": "metric", "head_lr": "head_lr", "class_weights": "class_weights",
    "head_init": "head_init", "baseline": "baseline", "allow": "allow", "refit": "refit",
}


def _spec_args(p: argparse.ArgumentParser, *, for_compare: bool = False) -> None:
    S = argparse.SUPPRESS
    p.add_argument("--base", default=S, help="catalogued base model name")
    p.add_argument("--data", default=S, help="CSV, TSV, JSONL, JSON, Parquet file or a datasets save_to_disk folder")
    p.add_argument("--task", choices=TASKS, default=S, help="what to train (default seq-cls)")
    if not for_compare:
        p.add_argument("--strategy", choices=STRATEGIES, default=S, help="head, partial, lora (default), dora, ia3, loha, lokr or full")
    p.add_argument("--name", default=S, help="catalogue name of the result" + (" prefix" if for_compare else ""))
    p.add_argument("--text-column", default=S)
    p.add_argument("--text-pair-column", default=S)
    p.add_argument("--label-column", default=S)
    p.add_argument("--prompt-column", default=S, help="causal-lm: instruction column")
    p.add_argument("--response-column", default=S, help="causal-lm: answer column (the loss is on answers only)")
    p.add_argument("--messages-column", default=S, help="causal-lm: chat messages [{role, content}] column")
    p.add_argument("--image-column", default=S)
    p.add_argument("--validation", default=S, metavar="FILE", help="a validation file (default: a stratified split)")
    p.add_argument("--test", default=S, metavar="FILE", help="a held-out test file")
    p.add_argument("--val-fraction", type=float, default=S)
    p.add_argument("--test-fraction", type=float, default=S)
    p.add_argument("--recipe", choices=RECIPES, default=S,
                   help="auto (default): epochs as a step budget, evaluations, early stopping, metric, learning rates, "
                        "class weights and head initialisation decided from the data (written into the spec; any "
                        "setting you give wins); fixed: the same defaults for every data set (3 epochs, ...)")
    p.add_argument("--epochs", type=float, default=S, help="(default: the recipe's step budget; fixed: 3)")
    p.add_argument("--metric", choices=list(METRICS), default=S,
                   help="validation metric that selects the best checkpoint and stops early (default: macro_f1 for "
                        "skewed or multi-class labels, accuracy for balanced two-class, rmse for regression)")
    p.add_argument("--head-lr", type=float, default=S, help="the new head's learning rate (adapters; default by recipe)")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=S,
                   help="weigh the loss against class skew (default: balanced when classes are skewed)")
    p.add_argument("--head-init", choices=HEAD_INITS, default=S,
                   help="start the new head from the frozen-feature probe (default) or at random")
    p.add_argument("--refit", action="store_true", default=S,
                   help="after the validation split chose the number of steps, train again on training + validation "
                        "rows and export that model (more data for the model, twice the time, no validation score)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", default=S,
                   help="skip the frozen-feature baseline (logistic regression) fitted beside every classification run")
    p.add_argument("--lr", type=float, default=S, help="learning rate (default: by strategy and model size" +
                   ("; compare uses each strategy's default when it runs several)" if for_compare else ")"))
    p.add_argument("--batch-size", type=int, default=S, help="micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=S)
    p.add_argument("--max-steps", type=int, default=S)
    p.add_argument("--max-length", type=int, default=S)
    p.add_argument("--max-batch-tokens", type=int, default=S, metavar="N",
                   help="most tokens (padding included) in one forward/backward pass; longer micro-batches run in "
                        "several passes with the same gradient (default: 2048 on CPU, no cap on GPU; 0: no cap)")
    p.add_argument("--num-processes", type=int, default=S, help="processes (GPUs, or CPU processes with --cpu: DDP over gloo)")
    p.add_argument("--cpu", action="store_true", default=S, help="train on the CPU even if a GPU is present")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--precision", choices=PRECISIONS, default=S)
    p.add_argument("--lora-r", type=int, default=S)
    p.add_argument("--lora-alpha", type=int, default=S)
    p.add_argument("--target-modules", default=S, help="comma-separated module names (default: all linear layers)")
    p.add_argument("--rslora", action="store_true", default=S, help="rank-stabilised LoRA scaling")
    p.add_argument("--unfreeze-layers", type=int, default=S, help="partial: how many last layers train")
    p.add_argument("--early-stopping", type=int, default=S, metavar="N",
                   help="stop after N evaluations without improvement (0: never; default by recipe)")
    p.add_argument("--eval-every", type=int, default=S, metavar="STEPS",
                   help="optimizer steps between validations (0: once per epoch; default by recipe)")
    p.add_argument("--save-every", type=int, default=S, metavar="STEPS", help="checkpoint every N optimizer steps")
    p.add_argument("--quantize", choices=QUANTIZE, default=S, help="QLoRA base (CUDA + bitsandbytes only)")
    p.add_argument("--packing", action="store_true", default=S, help="causal-lm: pack texts into full rows")
    from adapterstudio.core.training.data import ALLOW_CHECKS

    p.add_argument("--allow", action="append", default=S, metavar="CHECK[,CHECK]",
                   help="accept data that a check refuses because it is usually a mistake (repeatable): " +
                        "; ".join(f"{k}: {v}" for k, v in ALLOW_CHECKS.items()))
    p.add_argument("--schedule", choices=SCHEDULES, default=S)
    p.add_argument("--warmup-ratio", type=float, default=S)
    p.add_argument("--weight-decay", type=float, default=S)
    p.add_argument("--accelerate-config", default=S, metavar="FILE", help="an accelerate config (multi-GPU, DeepSpeed, FSDP)")
    p.add_argument("--config", default=S, metavar="SPEC.yaml", help="a training spec file; flags override it")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common], help="fine-tune a base model into a catalogued adapter",
                       description="Fine-tune a base model; exits 0 only when the result is in the catalogue.")
    _spec_args(p)
    p.add_argument("--resume", metavar="RUN", default=argparse.SUPPRESS,
                   help="resume an interrupted, failed or cancelled run (follows it if its worker still runs); "
                        "with --name, under a new output name")
    p.add_argument("--estimate", action="store_true", help="only print the memory estimate (will it fit?)")
    p.set_defaults(handler=cmd_train)

    r = add_group(sub, "runs", "training run history")
    q = r.add_parser("list", parents=[common], help="list training runs")
    q.add_argument("--status", choices=list(STATUSES))
    q.set_defaults(handler=cmd_runs_list)
    q = r.add_parser("show", parents=[common], help="show a run: status, spec, metrics, world size, checkpoint, duration")
    q.add_argument("run")
    q.set_defaults(handler=cmd_runs_show)
    q = r.add_parser("save-probe", parents=[common],
                     help="save a run's frozen-feature probe as a head adapter in the catalogue")
    q.add_argument("run")
    q.add_argument("--name", help="catalogue name (default: the run's name + '-probe')")
    q.set_defaults(handler=cmd_runs_save_probe)
    q = r.add_parser("cancel", parents=[common], help="ask a running run to stop at its next step (it checkpoints first)")
    q.add_argument("run")
    q.set_defaults(handler=cmd_runs_cancel)

    qg = add_group(sub, "queue", "the persistent training queue (survives restarts)")
    q = qg.add_parser("list", parents=[common], help="list queued jobs in order")
    q.set_defaults(handler=cmd_queue_list)
    q = qg.add_parser("add", parents=[common], help="check and queue a training job (same options as train)")
    _spec_args(q)
    q.set_defaults(handler=cmd_queue_add)
    q = qg.add_parser("run", parents=[common], help="run queued jobs one after another")
    q.add_argument("--limit", type=int, help="stop after this many jobs")
    q.set_defaults(handler=cmd_queue_run)
    q = qg.add_parser("remove", parents=[common], help="remove a queued (or finished) job")
    q.add_argument("run")
    q.set_defaults(handler=cmd_queue_remove)

    p = sub.add_parser("eval", parents=[common], help="score a trained adapter on a labelled file")
    p.add_argument("name", help="adapter (or full fine-tune) name")
    p.add_argument("--data", required=True)
    p.add_argument("--base", help="evaluate on this base instead of the adapter's own (must be compatible)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("compare", parents=[common], help="train several strategies on the same split: one table")
    _spec_args(p, for_compare=True)
    p.add_argument("--strategies", required=True, help="comma-separated, e.g. head,lora,full")
    p.set_defaults(handler=cmd_compare)


# -- helpers -------------------------------------------------------------------------
def build_spec(args: argparse.Namespace):
    from adapterstudio.core.training.spec import TrainingSpec

    cfg = getattr(args, "config", None)
    spec = TrainingSpec.from_yaml(cfg) if cfg else TrainingSpec()
    changes = {field: getattr(args, flag) for flag, field in SPEC_FLAGS.items() if hasattr(args, flag)}
    if "target_modules" in changes:
        changes["target_modules"] = [t.strip() for t in changes["target_modules"].split(",") if t.strip()]
    if "allow" in changes:
        changes["allow"] = [a.strip() for v in changes["allow"] for a in v.split(",") if a.strip()]
    return spec.replace(**changes)


def _run_outcome(args: argparse.Namespace, out: Any) -> int:
    r = out.result
    name = getattr(out.adapter, "name", None)
    data = {"run": out.run.to_json(), "adapter": name, "kind": "base" if out.run.spec.get("strategy") == "full" else "adapter",
            "final": r.get("final"), "test": r.get("test"), "world_size": r.get("world_size"),
            "trainable_params": r.get("trainable_params"), "duration_s": r.get("duration_s"),
            **baseline.fields(r)}

    def text() -> str:
        lines = [f"run {out.run.id}: {out.run.status}; {'base' if data['kind'] == 'base' else 'adapter'} {name!r} is in the catalogue",
                 f"trainable parameters {r.get('trainable_params'):,} of {r.get('total_params'):,}; "
                 f"{r.get('steps')} steps in {r.get('duration_s', 0):.1f}s on {r.get('device')} x{r.get('world_size')}"]
        for split in ("final", "test"):
            m = r.get(split) or {}
            if m:
                lines.append(f"{'validation' if split == 'final' else 'test'}: " +
                             ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
        lines += baseline.lines(r, out.run.spec.get("strategy"))
        return "\n".join(lines)

    emit(args, data, text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    if hasattr(args, "resume"):
        other = [f for f in list(SPEC_FLAGS) + ["config"] if f != "name" and hasattr(args, f)]
        if other:
            from adapterstudio.core.errors import InvalidInput

            raise InvalidInput(f"--resume goes on with the run's own spec: only --name may go with it, not "
                               f"--{other[0].replace('_', '-')}.")
        with progress("training", args, logs=True) as ctx:
            out = T.resume(lib, args.resume, ctx, name=getattr(args, "name", None))
        return _run_outcome(args, out)
    spec = build_spec(args)
    if args.estimate:
        est = T.estimate(lib, spec)
        emit(args, est, lambda: f"estimated peak memory {human_size(est['total'])} (weights {human_size(est['weights'])}, "
             f"optimizer {human_size(est['optimizer'])}, activations {human_size(est['activations'])}); "
             f"available on {est['device']}: {human_size(est['available'])}; "
             + ("fits" if est["fits"] else "does NOT fit" if est["fits"] is False else "unknown"))
        return 0
    with progress("training", args, logs=True) as ctx:
        out = T.train(lib, spec, ctx)
    return _run_outcome(args, out)


def _fmt_metric(run: Any) -> str:
    m = run.metrics or {}
    final = m.get("final") or {}
    for k in (m.get("metric"), "accuracy", "loss"):
        if k in final:
            return f"{k} {final[k]:.4f}"
    hist = m.get("history") or []
    if hist:
        last = hist[-1]
        for k in ("eval_accuracy", "eval_loss"):
            if k in last:
                return f"{k[5:]} {last[k]:.4f}"
    return "-"


def cmd_runs_list(args: argparse.Namespace) -> int:
    from adapterstudio.core.runs import RunStore

    lib = open_lib(args)
    rs = RunStore(lib.catalogue).list(status=args.status)
    emit(args, [r.to_json() for r in rs], lambda: table(
        [[r.id, r.name, r.status_text, r.spec.get("strategy"), r.base, r.world_size,
          f"{r.duration_s:.0f}s" if r.duration_s is not None else None, _fmt_metric(r)] for r in rs],
        ["RUN", "NAME", "STATUS", "STRATEGY", "BASE", "WORLD", "TIME", "METRIC"]) if rs else "no training runs")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from adapterstudio.core.runs import RunStore

    lib = open_lib(args)
    r = RunStore(lib.catalogue).get(args.run)
    d = {**r.to_json(), **baseline.fields(r.metrics)}

    def text() -> str:
        lines = [f"run {r.id} ({r.name}): {r.status_text}", f"base: {r.base}", f"adapter: {r.adapter or '-'}",
                 f"world_size: {r.world_size or '-'}", f"last checkpoint: {r.last_checkpoint or '-'}",
                 f"duration: {r.duration_s:.1f}s" if r.duration_s is not None else "duration: -",
                 f"folder: {r.run_dir}"]
        if r.error:
            lines.append(f"error: {r.error}")
        lines.append("spec: " + ", ".join(f"{k}={v}" for k, v in r.spec.items() if v not in (None, "", [])))
        for h in (r.metrics or {}).get("history", []):
            lines.append("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in h.items()))
        for split in ("final", "test"):
            m = (r.metrics or {}).get(split)
            if m:
                lines.append(f"{split}: " + json.dumps(m))
        lines += baseline.lines(r.metrics, r.spec.get("strategy"))
        return "\n".join(lines)

    emit(args, d, text)
    return 0


def cmd_runs_save_probe(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    with progress("saving the probe", args, logs=True) as ctx:
        rec = T.save_probe(lib, args.run, args.name, ctx)
    emit(args, rec.to_json() if hasattr(rec, "to_json") else {"name": rec.name},
         f"saved the frozen-feature probe of run {args.run} as head adapter {rec.name!r}")
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    r = T.cancel(lib, args.run)
    emit(args, r.to_json(), f"asked run {r.id} to stop")
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    from adapterstudio.core.runs import RunStore

    lib = open_lib(args)
    q = RunStore(lib.catalogue).queue()
    emit(args, [r.to_json() for r in q], lambda: table(
        [[i + 1, r.id, r.name, r.spec.get("strategy"), r.base, r.spec.get("data")] for i, r in enumerate(q)],
        ["#", "RUN", "NAME", "STRATEGY", "BASE", "DATA"]) if q else "the queue is empty")
    return 0


def cmd_queue_add(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    with progress("checking", args, logs=True) as ctx:
        r = T.enqueue(lib, build_spec(args), ctx)
    emit(args, r.to_json(), f"queued run {r.id} ({r.name}); start the queue with 'adapterstudio queue run'")
    return 0


def cmd_queue_run(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    with progress("queue", args, logs=True) as ctx:
        done = T.run_queue(lib, ctx, limit=args.limit)
    emit(args, done, lambda: table([[d["run"], d["name"], d["status"], d.get("error", "")] for d in done],
                                   ["RUN", "NAME", "STATUS", "ERROR"]) if done else "the queue is empty")
    return 0 if all(d["status"] == "succeeded" for d in done) else 1


def cmd_queue_remove(args: argparse.Namespace) -> int:
    from adapterstudio.core.runs import RunStore

    lib = open_lib(args)
    r = RunStore(lib.catalogue).remove(args.run)
    emit(args, r.to_json(), f"removed run {r.id} ({r.name}) and its folder")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    with progress("evaluating", args, logs=True) as ctx:
        res = T.evaluate(lib, args.name, args.data, ctx, batch_size=args.batch_size, base=args.base)
    emit(args, res, lambda: "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in res.items()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from adapterstudio.services import training as T

    lib = open_lib(args)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    spec = build_spec(args)
    with progress("compare", args, logs=True) as ctx:
        rows = T.compare(lib, spec, strategies, ctx)

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    emit(args, rows, lambda: table(
        [[r["strategy"], f"{r['trainable_params']:,}" if r.get("trainable_params") else "-", r.get("metric", "-"),
          fmt(r.get("val")), fmt(r.get("test")),
          f"{r['gain_over_baseline']:+.4f}" if isinstance(r.get("gain_over_baseline"), float) else "-",
          f"{r['train_time_s']:.1f}s" if r.get("train_time_s") else "-", human_size(r.get("peak_memory")),
          r.get("adapter") or r.get("error") or ("frozen-feature baseline" if r["strategy"] == "probe" else "")]
         for r in rows],
        ["STRATEGY", "TRAINABLE", "METRIC", "VAL", "TEST", "VS PROBE", "TIME", "PEAK MEM", "RESULT"]))
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1
