"""The training child: ``accelerate launch -m adapterstudio.ml.training.worker RUN_DIR``.

Reads ``RUN_DIR/spec.yaml``, ``RUN_DIR/job.json`` and the prepared splits in
``RUN_DIR/data``; appends JSON-lines events to ``RUN_DIR/events.jsonl`` (and stdout) from
process 0; checkpoints to ``RUN_DIR/checkpoints/step-N`` (Accelerate ``save_state``,
trainable weights only, plus ``progress.json``) and resumes from the newest one found;
stops cooperatively when ``RUN_DIR/stop`` appears (after checkpointing); exports the
best checkpoint's adapter to ``RUN_DIR/adapter`` and writes ``RUN_DIR/result.json``.

Exit codes: 0 done, 3 cancelled (checkpoint kept), 75 out of memory (the supervisor
halves the micro-batch and resumes), 1 error (an ``error`` event says why).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from adapterstudio.core import events as run_events
from adapterstudio.core.runs import EXIT_CANCELLED, EXIT_OOM, latest_checkpoint


class Events:
    """The worker's event sink: appends to ``RUN_DIR/events.jsonl`` (see :mod:`adapterstudio.core.events`)
    and echoes each line to stdout (the worker log); only process 0 writes (*enabled*)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled

    def __call__(self, event: str, /, **data: Any) -> None:
        if not self.enabled:
            return
        print(run_events.append(self.run_dir, event, **data), flush=True)


_jsonable = run_events.jsonable  # result.json and summaries hold the same kinds of values as events


def peak_memory(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss * (1 if sys.platform == "darwin" else 1024))
    except (ImportError, OSError):
        return 0


def choose_precision(spec: Any, device_type: str) -> str:
    import torch

    if spec.precision != "auto":
        return {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[spec.precision]
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # CPU/MPS: fp32 (CPU autocast is rarely faster for training)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = Path(argv[0]).resolve()
    from adapterstudio.core.runs import hold_worker_lock

    _worker_lock = hold_worker_lock(run_dir)  # (held until this process ends: tells apps the worker lives)
    from adapterstudio.core.training.spec import TrainingSpec

    spec = TrainingSpec.from_yaml(run_dir / "spec.yaml")
    job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    events = Events(run_dir, enabled=rank == 0)
    try:
        if not spec.refit:
            return train(spec, job, run_dir, events)
        rc = train(spec, job, run_dir, events, final=False)
        return rc if rc != 0 else refit(spec, job, run_dir, events)
    except Exception as exc:  # noqa: BLE001  (the worker's last word: an error event with the traceback, exit 1)
        import traceback

        from adapterstudio.core.errors import UserError

        if _is_oom(exc):
            events("oom", message=str(exc).splitlines()[0] if str(exc) else "out of memory",
                   batch_size=spec.batch_size, grad_accum=spec.grad_accum)
            return EXIT_OOM
        if isinstance(exc, UserError):
            events("error", message=str(exc), kind=type(exc).__name__)
        else:
            events("error", message=f"{type(exc).__name__}: {exc}", kind="internal", traceback=traceback.format_exc())
        traceback.print_exc()
        return 1


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()[:200]


def refit(spec: Any, job: dict[str, Any], run_dir: Path, events: Events) -> int:
    """``refit``: train again from the base on training + validation rows for the steps selection chose.

    The first phase chose the number of steps on the validation split (``selection.json``); this
    phase uses those rows for training too (a quarter more with the default 20% split), so the model
    it exports has no validation score of its own: only the test split, when there is one, scores
    it. It costs a second training run. Its checkpoints live in ``RUN_DIR/refit`` (resumable)."""
    import math as _math

    from adapterstudio.core.fsutil import atomic_write_text
    from adapterstudio.core.training.data import PreparedData

    selection = json.loads((run_dir / "selection.json").read_text(encoding="utf-8"))
    data = PreparedData.read(run_dir / "data")
    sub = run_dir / "refit"
    if not (sub / "data" / "meta.json").exists():
        merged = PreparedData(task=data.task, train=data.train + data.validation, validation=[], test=data.test,
                              labels=data.labels, columns=data.columns, dataset=data.dataset, warnings=data.warnings)
        merged.write(sub / "data")
    # the same number of epochs as the selected checkpoint saw, over the larger training set
    steps = max(1, _math.ceil(int(selection.get("best_step") or selection["steps"]) *
                               (len(data.train) + len(data.validation)) / max(len(data.train), 1)))
    sub_spec = spec.replace(refit=False, max_steps=steps, eval_every=0, early_stopping_patience=0, baseline=False,
                            head_init="random" if spec.head_init == "probe" else spec.head_init)
    sub_spec.save(sub / "spec.yaml")
    atomic_write_text(sub / "job.json", json.dumps(job))
    events("refit", steps=steps, train_examples=len(data.train) + len(data.validation),
           selected_step=selection.get("best_step"))
    sub_events = Events(run_dir, enabled=events.enabled)  # one stream: the app follows the progress
    rc = train(sub_spec, job, sub, sub_events)
    if rc != 0:
        return rc
    final = json.loads((sub / "result.json").read_text(encoding="utf-8"))
    result = {**selection, "refit": {"steps": final["steps"], "train_examples": final["train_examples"],
                                     "test": final.get("test", {}), "duration_s": final.get("duration_s")},
              "test": final.get("test", {}), "steps": selection["steps"] + final["steps"],
              "duration_s": float(selection.get("duration_s") or 0) + float(final.get("duration_s") or 0),
              "peak_memory": max(int(selection.get("peak_memory") or 0), int(final.get("peak_memory") or 0))}
    result.update(baseline_comparison(spec, selection.get("baseline"), selection.get("final", {}), result["test"]))
    if events.enabled:
        dest = run_dir / "adapter"
        tmp = run_dir / "adapter.refit.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(sub / "adapter", tmp)
        spec.save(tmp / "training_spec.yaml")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2, default=_jsonable))
    events("done", **result)
    return 0


def train(spec: Any, job: dict[str, Any], run_dir: Path, events: Events, final: bool = True) -> int:
    """One training phase. ``final=False`` (refit's selection phase) writes ``selection.json``, not ``result.json``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from adapterstudio.ml.training import modeling as M
    from adapterstudio.core.training.data import PreparedData
    from adapterstudio.core.metrics import HIGHER_IS_BETTER

    t_start = time.time()
    cpu = spec.cpu or job.get("device") == "cpu"
    probe_device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    accelerator = Accelerator(mixed_precision=choose_precision(spec, probe_device), cpu=cpu)
    set_seed(spec.seed)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    data = PreparedData.read(run_dir / "data")
    base_path = job["base_path"]
    tok = M.load_tokenizer(base_path, spec.task)
    model = M.load_base_model(spec, base_path, data.labels)
    train_ex = M.encode(data.train, tok, spec, data.labels, base_path, model.config)
    val_ex = M.encode(data.validation, tok, spec, data.labels, base_path, model.config) if data.validation else []
    test_ex = M.encode(data.test, tok, spec, data.labels, base_path, model.config) if data.test else []
    pad_id = tok.pad_token_id if tok is not None else 0
    n_labels = len(data.labels or [])
    ck = latest_checkpoint(run_dir)
    baseline = _baseline(spec, model, run_dir, (train_ex, val_ex, test_ex), pad_id, n_labels, device,
                         fresh=ck is None, events=events, save=accelerator.is_main_process)
    model, info = M.apply_strategy(model, spec)
    if spec.task == "causal-lm" and getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    loss_fn = _class_weighted_loss(spec, train_ex, n_labels, device)

    mb = int(spec.batch_size)
    ga = int(spec.grad_accum)
    lengths = [M.example_tokens(e) for e in train_ex]
    from adapterstudio.core.training.spec import batch_token_budget, group_by_length

    budget = batch_token_budget(spec, device.type)
    grouped = group_by_length(spec, device.type)
    # no gradients kept while evaluating: the same memory holds about twice the tokens
    eval_tokens = 2 * (budget or mb * int(spec.max_length or 512))
    micro_per_epoch = len(M.length_grouped_batches(lengths, mb, spec.seed, False)) // world
    if micro_per_epoch < 1:
        from adapterstudio.core.errors import InvalidInput

        raise InvalidInput(f"The training split has {len(train_ex)} examples, fewer than one batch of {mb} per process; "
                           "lower --batch-size or add data.")
    steps_per_epoch = math.ceil(micro_per_epoch / ga)
    # max_steps, when set, wins over epochs (it may run more or fewer epochs)
    total_steps = spec.max_steps or max(1, math.ceil(spec.epochs * steps_per_epoch))

    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(M.param_groups(model, spec, info), lr=spec.lr)
    scheduler = get_scheduler(spec.schedule, optimizer, num_warmup_steps=int(spec.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    # the scheduler is not prepared: accelerate would step it once per process, and total_steps already counts
    # optimizer steps across processes; it is still saved and restored with the checkpoint
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    trainable_names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def trim_weights(models: list, weights: list, output_dir: str) -> None:
        if spec.strategy == "full":
            return
        for i, sd in enumerate(weights):
            weights[i] = {k: v for k, v in sd.items() if k in trainable_names}

    accelerator.register_save_state_pre_hook(trim_weights)

    progress: dict[str, Any] = {"step": 0, "epoch": 0, "micro_done": 0, "best": None, "best_step": None,
                                "bad_evals": 0, "history": [], "elapsed": 0.0, "stopped_early": False,
                                "batch_size": mb, "grad_accum": ga}
    resumed_from = None
    if ck is not None:
        accelerator.load_state(str(ck), strict=False)
        prev = json.loads((ck / "progress.json").read_text(encoding="utf-8"))
        # samples already consumed this epoch stay consumed even if the micro-batch changed (after an OOM)
        samples_done = prev["micro_done"] * prev["batch_size"]
        prev["micro_done"] = samples_done // mb
        prev["batch_size"], prev["grad_accum"] = mb, ga
        progress.update(prev)
        resumed_from = ck.name

    higher = HIGHER_IS_BETTER.get(spec.metric, False)
    events("start", pid=os.getpid(), world_size=world, device=str(device), precision=accelerator.mixed_precision, total_steps=total_steps,
           steps_per_epoch=steps_per_epoch, train_examples=len(train_ex), validation_examples=len(val_ex),
           test_examples=len(test_ex), trainable_params=info["trainable_params"], total_params=info["total_params"],
           batch_size=mb, grad_accum=ga, max_batch_tokens=budget, group_by_length=grouped, resumed_from=resumed_from, step=progress["step"], head_modules=info["head_modules"],
           unfrozen_layers=info["unfrozen_layers"])

    def to_dev(batch: dict) -> dict:
        return {k: v.to(device) for k, v in batch.items()}

    def do_eval(examples: list) -> dict[str, float]:
        # every process scores the whole (small) evaluation split: identical metrics, no collectives
        # batches by length within the token budget: many short examples to a pass, few long ones; built
        # one at a time so only one is in memory
        lens = [M.example_tokens(e) for e in examples]
        idx = M.eval_batches(lens, eval_tokens, max(mb, 8) * 8)
        batches = (to_dev(M.collate([examples[i] for i in b], pad_id, spec.task)) for b in idx)
        return M.evaluate_model(accelerator.unwrap_model(model), batches, spec.task, n_labels, None)

    def save_checkpoint() -> Path:
        path = run_dir / "checkpoints" / f"step-{progress['step']}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            progress["elapsed"] = elapsed()
            (path / "progress.json").write_text(json.dumps(progress), encoding="utf-8")
            for old in sorted((run_dir / "checkpoints").iterdir(), key=lambda p: p.stat().st_mtime)[:-2]:
                if old != path and old.name.startswith("step-"):
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        events("checkpoint", step=progress["step"], path=str(path))
        return path

    def save_adapter(dest: Path) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            m = accelerator.unwrap_model(model)
            m.save_pretrained(str(tmp), safe_serialization=True)
            if spec.strategy == "full" and tok is not None:
                tok.save_pretrained(str(tmp))
            spec.save(tmp / "training_spec.yaml")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        accelerator.wait_for_everyone()

    t0 = time.time()
    cpu0 = time.process_time()

    def elapsed() -> float:
        return float(progress.get("elapsed_base", 0.0)) + (time.time() - t0)

    progress["elapsed_base"] = progress.get("elapsed", 0.0)
    stop_file = run_dir / "stop"
    oom_above = int(os.environ.get("ADAPTERSTUDIO_SIMULATE_OOM_ABOVE_BATCH", "0") or 0)

    supervisor = int(os.environ.get("ADAPTERSTUDIO_SUPERVISOR_PID", "0") or 0)

    def stop_requested() -> bool:
        # a stop file, or the supervising app gone (then keep a checkpoint and let it be resumed)
        from adapterstudio.core.runs import pid_alive

        stop = stop_file.exists() or (supervisor > 0 and not pid_alive(supervisor))
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        if world > 1:
            flag = accelerator.reduce(flag, reduction="max")
        return bool(flag.item() > 0)

    model.train()
    window_t, window_samples, window_tokens = time.time(), 0, 0
    last_loss = float("nan")
    done = progress["step"] >= total_steps
    while not done:
        epoch = progress["epoch"]
        batches = M.length_grouped_batches(lengths, mb, spec.seed + epoch, grouped)
        mine = batches[rank::world][:micro_per_epoch]
        groups = [list(range(i, min(i + ga, len(mine)))) for i in range(0, len(mine), ga)]
        start_micro = progress["micro_done"]
        for gidx, grp in enumerate(groups):
            if grp[-1] < start_micro:
                continue
            grp = [g for g in grp if g >= start_micro] or grp
            passes, items = M.training_passes(train_ex, [mine[gi] for gi in grp], lengths, budget, pad_id, spec.task)
            if oom_above and mb > oom_above and progress["step"] >= 1:
                raise torch.OutOfMemoryError(f"simulated out of memory at micro-batch {mb} (test hook)")
            total_items = float(sum(items))
            if world > 1:  # the step's mean is over every process's loss terms
                total_items = float(accelerator.reduce(torch.tensor([total_items], device=device), reduction="sum")[0])
            step_loss = M.accumulate_gradients(model, passes, items, total_items=total_items, world=world,
                                               backward=accelerator.backward, no_sync=accelerator.no_sync,
                                               autocast=accelerator.autocast, to_device=to_dev, loss_fn=loss_fn)
            n_samp = sum(len(mine[gi]) for gi in grp)
            n_tok = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["labels"].shape[0])
                        for b in passes)
            if spec.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress["step"] += 1
            progress["micro_done"] = grp[-1] + 1
            step = progress["step"]
            if world > 1:
                # each process holds its share of the step's mean loss: the sum is the step's loss
                stats = accelerator.reduce(torch.tensor([float(step_loss), n_samp, n_tok], device=device), reduction="sum")
                last_loss, n_samp, n_tok = float(stats[0]), int(stats[1]), int(stats[2])
            else:
                last_loss = float(step_loss)
            window_samples += n_samp
            window_tokens += n_tok
            if step % spec.log_every == 0 or step == total_steps:
                dt = max(time.time() - window_t, 1e-9)
                rate = window_samples / dt
                remaining = (total_steps - step) * (mb * ga * world) / max(rate, 1e-9)
                events("step", step=step, total_steps=total_steps, epoch=epoch + progress["micro_done"] / max(len(mine), 1),
                       loss=last_loss, lr=scheduler.get_last_lr()[0], samples_per_s=rate, tokens_per_s=window_tokens / dt,
                       eta_s=remaining, peak_memory=peak_memory(device), elapsed_s=elapsed(),
                       cpu_s=time.process_time() - cpu0)
                window_t, window_samples, window_tokens = time.time(), 0, 0
            end_of_epoch = gidx == len(groups) - 1  # (grp may be a trimmed copy after a resume)
            want_eval = bool(val_ex) and ((spec.eval_every and step % spec.eval_every == 0) or
                                          (not spec.eval_every and end_of_epoch) or step >= total_steps)
            saved = False
            if want_eval:
                metrics = do_eval(val_ex)
                entry = {"epoch": round(epoch + progress["micro_done"] / max(len(mine), 1), 4), "step": step,
                         "train_loss": last_loss, **{f"eval_{k}": v for k, v in metrics.items()}}
                progress["history"].append(entry)
                value = metrics.get(spec.metric, metrics["loss"])
                improved, keep = select_checkpoint(progress, value, metrics["loss"], spec.metric, higher,
                                                   int(metrics.get("n") or 0))
                if keep:
                    save_adapter(run_dir / "best")
                events("eval", step=step, epoch=entry["epoch"], metrics=metrics, best=progress["best"],
                       best_step=progress["best_step"], improved=improved)
                if spec.early_stopping_patience and progress["bad_evals"] >= spec.early_stopping_patience:
                    progress["stopped_early"] = True
                    events("early_stop", step=step, patience=spec.early_stopping_patience)
                    done = True
            elif not val_ex:
                progress["history"].append({"epoch": epoch, "step": step, "train_loss": last_loss}) if end_of_epoch else None
            if step >= total_steps:
                done = True
            if spec.save_every and step % spec.save_every == 0 and not done:
                save_checkpoint()
                saved = True
            if stop_requested():
                if not saved:
                    save_checkpoint()
                events("cancelled", step=step)
                return EXIT_CANCELLED
            if done:
                break
        if not done:
            progress["epoch"] += 1
            progress["micro_done"] = 0
    save_checkpoint()

    # export: the best validation checkpoint (or the final weights without validation data)
    best_dir = run_dir / "best"
    if not val_ex or not best_dir.exists():
        save_adapter(best_dir)
    elif progress["best_step"] != progress["step"]:
        _load_best(accelerator.unwrap_model(model), best_dir, spec)
    final_val = do_eval(val_ex) if val_ex else {}
    test = do_eval(test_ex) if test_ex else {}
    if accelerator.is_main_process:
        dest = run_dir / "adapter"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(best_dir, dest)
    duration = elapsed()
    result = {
        "status": "succeeded", "world_size": world, "device": str(device), "precision": accelerator.mixed_precision,
        "steps": progress["step"], "best_step": progress["best_step"], "best_metric": progress["best"],
        "metric": spec.metric, "stopped_early": progress["stopped_early"], "history": progress["history"],
        "final": final_val, "test": test, "trainable_params": info["trainable_params"], "total_params": info["total_params"],
        "duration_s": duration, "peak_memory": peak_memory(device), "train_examples": len(train_ex),
        "batch_size": mb, "grad_accum": ga, "wall_s": time.time() - t_start,
        **baseline_comparison(spec, baseline if spec.baseline else None, final_val, test),  # --no-baseline: not reported
    }
    out_name = "result.json" if final else "selection.json"
    if accelerator.is_main_process:
        tmp = run_dir / (out_name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=_jsonable), encoding="utf-8")
        os.replace(tmp, run_dir / out_name)
    events("done" if final else "selected", **result)
    accelerator.end_training()
    return 0


def _baseline(spec: Any, model: Any, run_dir: Path, splits: tuple[list, list, list], pad_id: int, n_labels: int,
              device: Any, *, fresh: bool, events: Events, save: bool) -> dict[str, Any] | None:
    """Fit the frozen-feature baseline (classification); start the head from it when ``head_init`` says so.

    Runs before the strategy wraps the model, so the features are the frozen base's. On a resume from a
    checkpoint the head's weights come from the checkpoint, so only the saved summary is read back."""
    from adapterstudio.core.fsutil import atomic_write_text
    from adapterstudio.ml.training import modeling as M
    from adapterstudio.ml.training import probe as P

    if spec.task not in ("seq-cls", "token-cls", "image-cls") or not (spec.baseline or spec.head_init == "probe"):
        return None
    summary_path = run_dir / "baseline.json"
    if not fresh and summary_path.exists():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    train_ex, val_ex, test_ex = splits
    if not val_ex:
        return None  # the probe is chosen on the validation split
    t0 = time.time()
    model.to(device)
    layer = P.output_layer(model, M.head_modules(model, spec.task), n_labels)

    def feats(examples: list) -> dict[str, Any]:
        lens = [M.example_tokens(e) for e in examples]
        idx = M.eval_batches(lens, 4096, 64)
        batches = ({k: v.to(device) for k, v in M.collate([examples[i] for i in b], pad_id, spec.task).items()} for b in idx)
        return P.frozen_features(model, batches, spec.task, layer)

    tr, va = feats(train_ex), feats(val_ex)
    te = feats(test_ex) if test_ex else None
    fits = {k: P.fit(k, tr, va, te, spec.metric, n_labels, M.classification_metrics) for k in ("pooled", "head-input")}
    best = P.better(fits["pooled"], fits["head-input"])
    if best is None:
        return None
    out = {**best.summary(), "seconds": round(time.time() - t0, 2),
           "candidates": {k: {"val": f.val.get(spec.metric), "test": f.test.get(spec.metric)} for k, f in fits.items() if f}}
    head_probe = fits["head-input"]
    if spec.head_init == "probe" and head_probe is not None and layer is not None:
        P.init_layer(layer, head_probe)
        out["head_init"] = {"features": "head-input", "val": head_probe.val.get(spec.metric)}
    if save:
        atomic_write_text(summary_path, json.dumps(out, indent=2, default=_jsonable))
        if head_probe is not None and layer is not None:
            _save_probe_head(model, spec, head_probe, layer, run_dir / "probe_head.safetensors")
    events("baseline", **out)
    return out


def _save_probe_head(model: Any, spec: Any, probe: Any, layer: Any, path: Path) -> None:
    """The head modules with the probe in their output layer: ``runs save-probe`` turns them into a head adapter."""
    import torch
    from safetensors.torch import save_file

    from adapterstudio.ml.training import modeling as M

    heads = M.head_modules(model, spec.task)
    saved_w, saved_b = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    from adapterstudio.ml.training.probe import init_layer

    init_layer(layer, probe)
    tensors = {f"{h}.{k}": v.detach().to("cpu", torch.float32).contiguous()
               for h in heads for k, v in getattr(model, h).state_dict().items()}
    with torch.no_grad():  # put back what head_init chose (the probe itself, or the random init)
        layer.weight.copy_(saved_w)
        if saved_b is not None:
            layer.bias.copy_(saved_b)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _class_weighted_loss(spec: Any, train_ex: list[dict[str, Any]], n_labels: int, device: Any) -> Any:
    """``class_weights: balanced``: cross-entropy with each class weighted n / (classes x count)."""
    if spec.class_weights != "balanced" or spec.task not in ("seq-cls", "image-cls") or n_labels < 2:
        return None
    import torch
    import torch.nn.functional as F

    counts = torch.zeros(n_labels)
    for e in train_ex:
        counts[int(e["labels"])] += 1
    present = counts > 0
    w = torch.zeros(n_labels)
    w[present] = counts.sum() / (int(present.sum()) * counts[present])
    w = w.to(device)

    def loss(out: Any, batch: dict[str, Any]) -> Any:
        labels = batch["labels"]
        return F.cross_entropy(out.logits.float(), labels, weight=w, reduction="sum") / labels.shape[0]

    return loss


def baseline_comparison(spec: Any, baseline: dict[str, Any] | None, final_val: dict[str, Any],
                        test: dict[str, Any]) -> dict[str, Any]:
    """``baseline`` (the probe's summary), ``baseline_metric``, ``gain_over_baseline`` and, where the fine-tune
    is not better, ``baseline_warning``: on the test split when there is one, else on validation."""
    if not baseline:
        return {}
    from adapterstudio.core.metrics import HIGHER_IS_BETTER, METRIC_LABELS

    metric = spec.metric
    split = "test" if test and baseline.get("test") else "val"
    ours = (test if split == "test" else final_val).get(metric)
    theirs = (baseline.get("test") if split == "test" else baseline.get("val") or {}).get(metric)
    out: dict[str, Any] = {"baseline": baseline, "baseline_metric": theirs, "baseline_split": split}
    if ours is None or theirs is None:
        return out
    gain = float(ours) - float(theirs)
    if not HIGHER_IS_BETTER.get(metric, True):
        gain = -gain
    out["gain_over_baseline"] = gain
    if gain <= 0:
        label = METRIC_LABELS.get(metric, metric)
        out["baseline_warning"] = (
            f"{spec.strategy} scored {ours:.3f} {label} on the {split} split, "
            f"{'below' if gain < 0 else 'no better than'} the frozen-feature baseline's {theirs:.3f}: the baseline "
            "is the better model here (negative transfer); try more data or epochs, another learning rate, "
            "the head strategy, or save the probe with 'adapterstudio runs save-probe'.")
    return out


def noise(metric: str, value: float, n: int) -> float:
    """About one standard error of a validation *metric* at *value* over *n* examples (0 where unknown).

    Accuracy and macro-F1 on a small split move by this much from sampling alone (the binomial
    standard error; about 0.04 at 0.8 on 100 rows), so checkpoints that differ by less are a tie."""
    if metric not in ("accuracy", "macro_f1") or n <= 0 or not 0 <= value <= 1:
        return 0.0
    return math.sqrt(max(value * (1 - value), 0.0) / n)


def select_checkpoint(progress: dict[str, Any], value: float, loss: float, metric: str, higher: bool,
                      n: int) -> tuple[bool, bool]:
    """Track the best validation score and choose the checkpoint to export: (improved, keep this one).

    The one-standard-error rule, leaning to the more trained model: a checkpoint within the metric's
    sampling noise of the best score so far replaces the kept one (a later checkpoint has seen more
    steps at a lower learning rate, and a small split cannot tell them apart), though it is not a
    new best score for early stopping's patience. Updates *progress* in place."""
    best = progress.get("best_seen", progress.get("best"))
    sign = 1.0 if higher else -1.0
    improved = best is None or sign * (value - best) > 0 or (value == best and loss < progress.get("best_loss", math.inf) - 1e-3)
    if improved:
        progress["best_seen"] = value
        best = value
    tol = noise(metric, best, n)
    keep = improved or (tol > 0 and sign * (best - value) <= tol)
    if keep:
        progress["best"], progress["best_step"], progress["best_loss"] = value, progress["step"], loss
    # patience counts evaluations without a new best score, whichever checkpoint is kept
    progress["bad_evals"] = 0 if improved else progress.get("bad_evals", 0) + 1
    return improved, keep


def _load_best(model: Any, best_dir: Path, spec: Any) -> None:
    from safetensors.torch import load_file

    if spec.strategy == "full":
        files = sorted(best_dir.glob("*.safetensors"))
        sd: dict = {}
        for f in files:
            sd.update(load_file(str(f)))
        model.load_state_dict(sd, strict=False)
        return
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(best_dir / "adapter_model.safetensors")))


if __name__ == "__main__":
    raise SystemExit(main())
