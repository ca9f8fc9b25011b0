"""One training phase as a recipe, in torchtune's shape: :class:`FineTuneRecipe`.

``setup()`` builds what the phase needs (the Accelerator, the encoded splits, the model wrapped
for its strategy, the optimizer and schedule, the state of a checkpoint it resumes from);
``train()`` runs the loop, one ``train_epoch()`` and one ``train_step()`` at a time, and reads
top to bottom; ``evaluate()`` scores a split; ``save_checkpoint()`` keeps a resumable state;
``export()`` writes the best adapter and the phase's result. The state the steps share lives
on the instance (``progress`` is what a checkpoint saves and a resume restores).

Files in the run folder: ``checkpoints/step-N`` (Accelerate ``save_state``, trainable weights
only, plus ``progress.json``; the newest two kept), ``best`` (the checkpoint chosen for export),
``adapter`` (the export), ``result.json`` (``selection.json`` for refit's selection phase),
``baseline.json`` and ``probe_head.safetensors`` (classification). The Accelerate child,
:mod:`adapterstudio.ml.training.worker`, runs one recipe (two with refit).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from adapterstudio.core import events as run_events
from adapterstudio.core.runs import EXIT_CANCELLED, RESULT_FILE, STOP_FILE, latest_checkpoint
from adapterstudio.ml.training import faults
from adapterstudio.ml.training.baseline import baseline_comparison, run_baseline
from adapterstudio.ml.training.batching import (
    accumulate_gradients,
    class_weighted_loss,
    eval_batches,
    length_grouped_batches,
    training_passes,
)
from adapterstudio.ml.training.encoding import collate, encode, example_tokens, load_tokenizer
from adapterstudio.ml.training.metrics import evaluate_model
from adapterstudio.ml.training.models import apply_strategy, load_base_model, param_groups
from adapterstudio.ml.training.selection import load_best, select_checkpoint

# where an epoch ended: "next" (go on with the next epoch), "done" (step budget or early stopping), "cancelled"
Outcome = Literal["next", "done", "cancelled"]


class EventSink(Protocol):
    """Where the recipe's events go (the worker's :class:`~adapterstudio.ml.training.worker.Events`)."""

    def __call__(self, event: str, /, **data: Any) -> None: ...


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


class FineTuneRecipe:
    """One training phase over ``RUN_DIR/data``. ``final=False`` (refit's selection phase) writes
    ``selection.json`` and a ``selected`` event instead of ``result.json`` and ``done``."""

    # set by setup(): the machinery
    accelerator: Any
    device: Any
    world: int  # processes
    rank: int
    tok: Any  # None for images
    model: Any  # prepared by Accelerate (unwrap_model for the PEFT model)
    info: dict[str, Any]  # apply_strategy's counts and head/unfrozen module names
    optimizer: Any
    scheduler: Any
    loss_fn: Any  # None: the model's own loss
    trainable_names: set[str]
    # the data
    train_ex: list[dict[str, Any]]
    val_ex: list[dict[str, Any]]
    test_ex: list[dict[str, Any]]
    lengths: list[int]  # tokens of each training example
    pad_id: int
    n_labels: int
    baseline: dict[str, Any] | None
    # the geometry of a step
    mb: int  # micro-batch
    ga: int  # gradient accumulation
    budget: int  # tokens a training pass may hold (0: no limit)
    grouped: bool  # length-grouped batches
    eval_tokens: int
    micro_per_epoch: int  # micro-batches per process and epoch
    steps_per_epoch: int
    total_steps: int
    higher: bool  # the selection metric: higher is better
    # progress: saved in each checkpoint's progress.json, restored on resume
    progress: dict[str, Any]
    resumed_from: str | None
    # the clocks, the throughput window of the step events, the stop signals
    t_start: float
    t0: float
    cpu0: float
    window_t: float
    window_samples: int
    window_tokens: int
    last_loss: float
    epoch_batches: int  # this process's micro-batches in the current epoch
    stop_file: Path
    supervisor: int  # the supervising app's pid (0: none)

    def __init__(self, spec: Any, job: dict[str, Any], run_dir: Path, events: EventSink, *, final: bool = True) -> None:
        self.spec = spec
        self.job = job
        self.run_dir = run_dir
        self.events = events
        self.final = final

    def run(self) -> int:
        """Set up, train, export: the worker's exit code (0, or ``EXIT_CANCELLED`` with a checkpoint kept)."""
        self.setup()
        if self.train() == "cancelled":
            return EXIT_CANCELLED
        self.save_checkpoint()
        self.export()
        return 0

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from adapterstudio.core.metrics import HIGHER_IS_BETTER

        spec = self.spec
        self.t_start = time.time()
        cpu = spec.cpu or self.job.get("device") == "cpu"
        probe_device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
        self.accelerator = Accelerator(mixed_precision=choose_precision(spec, probe_device), cpu=cpu)
        set_seed(spec.seed)
        self.device = self.accelerator.device
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        model = self._setup_data()
        ck = latest_checkpoint(self.run_dir)
        self.baseline = run_baseline(spec, model, self.run_dir, (self.train_ex, self.val_ex, self.test_ex), self.pad_id,
                                     self.n_labels, self.device, fresh=ck is None, events=self.events,
                                     save=self.accelerator.is_main_process)
        model, self.info = apply_strategy(model, spec)
        if spec.task == "causal-lm" and getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        self.loss_fn = class_weighted_loss(spec, self.train_ex, self.n_labels, self.device)
        self._setup_steps()
        self._setup_optimizer(model)
        self._resume(ck)
        self.higher = HIGHER_IS_BETTER.get(spec.metric, False)
        info = self.info
        self.events("start", pid=os.getpid(), world_size=self.world, device=str(self.device),
                    precision=self.accelerator.mixed_precision, total_steps=self.total_steps,
                    steps_per_epoch=self.steps_per_epoch, train_examples=len(self.train_ex),
                    validation_examples=len(self.val_ex), test_examples=len(self.test_ex),
                    trainable_params=info["trainable_params"], total_params=info["total_params"], batch_size=self.mb,
                    grad_accum=self.ga, max_batch_tokens=self.budget, group_by_length=self.grouped,
                    resumed_from=self.resumed_from, step=self.progress["step"], head_modules=info["head_modules"],
                    unfrozen_layers=info["unfrozen_layers"])
        self.t0 = time.time()
        self.cpu0 = time.process_time()
        self.progress["elapsed_base"] = self.progress.get("elapsed", 0.0)
        self.stop_file = self.run_dir / STOP_FILE
        self.supervisor = int(os.environ.get("ADAPTERSTUDIO_SUPERVISOR_PID", "0") or 0)
        faults.install(self)  # nothing unless a test asks for a fault (see faults.py)

    def _setup_data(self) -> Any:
        """The tokenizer, the base model with its new head, and the encoded splits; returns the model."""
        from adapterstudio.core.training.data import PreparedData

        spec = self.spec
        data = PreparedData.read(self.run_dir / "data")
        base_path = self.job["base_path"]
        self.tok = load_tokenizer(base_path, spec.task)
        model = load_base_model(spec, base_path, data.labels)
        self.train_ex = encode(data.train, self.tok, spec, data.labels, base_path, model.config)
        self.val_ex = encode(data.validation, self.tok, spec, data.labels, base_path, model.config) if data.validation else []
        self.test_ex = encode(data.test, self.tok, spec, data.labels, base_path, model.config) if data.test else []
        self.pad_id = self.tok.pad_token_id if self.tok is not None else 0
        self.n_labels = len(data.labels or [])
        self.lengths = [example_tokens(e) for e in self.train_ex]
        return model

    def _setup_steps(self) -> None:
        """Micro-batch, accumulation, token budgets and the number of optimizer steps."""
        from adapterstudio.core.errors import InvalidInput
        from adapterstudio.core.training.spec import batch_token_budget, group_by_length

        spec, device = self.spec, self.device
        self.mb = mb = int(spec.batch_size)
        self.ga = int(spec.grad_accum)
        self.budget = batch_token_budget(spec, device.type)
        self.grouped = group_by_length(spec, device.type)
        # no gradients kept while evaluating: the same memory holds about twice the tokens
        self.eval_tokens = 2 * (self.budget or mb * int(spec.max_length or 512))
        self.micro_per_epoch = len(length_grouped_batches(self.lengths, mb, spec.seed, False)) // self.world
        if self.micro_per_epoch < 1:
            raise InvalidInput(f"The training split has {len(self.train_ex)} examples, fewer than one batch of {mb} "
                               "per process; lower --batch-size or add data.")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.ga)
        # max_steps, when set, wins over epochs (it may run more or fewer epochs)
        self.total_steps = spec.max_steps or max(1, math.ceil(spec.epochs * self.steps_per_epoch))

    def _setup_optimizer(self, model: Any) -> None:
        """AdamW and the schedule; the model and optimizer prepared by Accelerate, checkpoints trimmed to what trains."""
        import torch
        from transformers import get_scheduler

        spec, acc = self.spec, self.accelerator
        optimizer = torch.optim.AdamW(param_groups(model, spec, self.info), lr=spec.lr)
        self.scheduler = get_scheduler(spec.schedule, optimizer, num_warmup_steps=int(spec.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        # the scheduler is not prepared: accelerate would step it once per process, and total_steps already counts
        # optimizer steps across processes; it is still saved and restored with the checkpoint
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.trainable_names = {n for n, p in acc.unwrap_model(self.model).named_parameters() if p.requires_grad}
        acc.register_save_state_pre_hook(self._trim_weights)

    def _trim_weights(self, models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        """Accelerate's save-state hook: a checkpoint keeps the trainable weights only (all of them for ``full``)."""
        if self.spec.strategy == "full":
            return
        for i, sd in enumerate(weights):
            weights[i] = {k: v for k, v in sd.items() if k in self.trainable_names}

    def _resume(self, ck: Path | None) -> None:
        """Fresh progress, or the newest checkpoint's state and progress."""
        mb, ga = self.mb, self.ga
        self.progress = {"step": 0, "epoch": 0, "micro_done": 0, "best": None, "best_step": None,
                         "bad_evals": 0, "history": [], "elapsed": 0.0, "stopped_early": False,
                         "batch_size": mb, "grad_accum": ga}
        self.resumed_from = None
        if ck is None:
            return
        self.accelerator.load_state(str(ck), strict=False)
        prev = json.loads((ck / "progress.json").read_text(encoding="utf-8"))
        # samples already consumed this epoch stay consumed even if the micro-batch changed (after an OOM)
        samples_done = prev["micro_done"] * prev["batch_size"]
        prev["micro_done"] = samples_done // mb
        prev["batch_size"], prev["grad_accum"] = mb, ga
        self.progress.update(prev)
        self.resumed_from = ck.name

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> Outcome:
        """Epochs of optimizer steps until the step budget, early stopping or a stop request."""
        self.model.train()
        self.window_t, self.window_samples, self.window_tokens = time.time(), 0, 0
        self.last_loss = float("nan")
        outcome: Outcome = "done" if self.progress["step"] >= self.total_steps else "next"
        while outcome == "next":
            outcome = self.train_epoch()
        return outcome

    def train_epoch(self) -> Outcome:
        """One pass over this process's share of the training batches (what is left of it after a resume)."""
        spec, progress = self.spec, self.progress
        batches = length_grouped_batches(self.lengths, self.mb, spec.seed + progress["epoch"], self.grouped)
        mine = batches[self.rank::self.world][:self.micro_per_epoch]
        self.epoch_batches = len(mine)
        groups = [list(range(i, min(i + self.ga, len(mine)))) for i in range(0, len(mine), self.ga)]
        start_micro = progress["micro_done"]
        for gidx, grp in enumerate(groups):
            if grp[-1] < start_micro:
                continue  # trained before the checkpoint this run resumed from
            grp = [g for g in grp if g >= start_micro] or grp
            self.train_step([mine[g] for g in grp], micro_done=grp[-1] + 1)
            step = progress["step"]
            early_stop = self.validate(end_of_epoch=gidx == len(groups) - 1)  # (grp may be a trimmed copy after a resume)
            done = early_stop or step >= self.total_steps
            saved = False
            if spec.save_every and step % spec.save_every == 0 and not done:
                self.save_checkpoint()
                saved = True
            if self.stop_requested():
                if not saved:
                    self.save_checkpoint()
                self.events("cancelled", step=step)
                return "cancelled"
            if done:
                return "done"
        progress["epoch"] += 1
        progress["micro_done"] = 0
        return "next"

    def train_step(self, micro_batches: list[list[int]], *, micro_done: int) -> None:
        """One optimizer step over *micro_batches* (indices into the training split); a ``step`` event when due."""
        import torch

        spec, acc, progress = self.spec, self.accelerator, self.progress
        passes, items = training_passes(self.train_ex, micro_batches, self.lengths, self.budget, self.pad_id, spec.task)
        step_loss = self.forward_backward(passes, items)
        n_samp = sum(len(m) for m in micro_batches)
        n_tok = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["labels"].shape[0]) for b in passes)
        if spec.max_grad_norm > 0:
            acc.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        progress["step"] += 1
        progress["micro_done"] = micro_done
        if self.world > 1:
            # each process holds its share of the step's mean loss: the sum is the step's loss
            stats = acc.reduce(torch.tensor([float(step_loss), n_samp, n_tok], device=self.device), reduction="sum")
            self.last_loss, n_samp, n_tok = float(stats[0]), int(stats[1]), int(stats[2])
        else:
            self.last_loss = float(step_loss)
        self.window_samples += n_samp
        self.window_tokens += n_tok
        if progress["step"] % spec.log_every == 0 or progress["step"] == self.total_steps:
            self._log_step()

    def forward_backward(self, passes: list[dict[str, Any]], items: list[int]) -> Any:
        """Forward and backward every pass of one step (gradients accumulate); this process's share of its loss."""
        import torch

        acc = self.accelerator
        total_items = float(sum(items))
        if self.world > 1:  # the step's mean is over every process's loss terms
            total_items = float(acc.reduce(torch.tensor([total_items], device=self.device), reduction="sum")[0])
        return accumulate_gradients(self.model, passes, items, total_items=total_items, world=self.world,
                                    backward=acc.backward, no_sync=acc.no_sync, autocast=acc.autocast,
                                    to_device=self._to_device, loss_fn=self.loss_fn)

    def _log_step(self) -> None:
        step, total = self.progress["step"], self.total_steps
        dt = max(time.time() - self.window_t, 1e-9)
        rate = self.window_samples / dt
        remaining = (total - step) * (self.mb * self.ga * self.world) / max(rate, 1e-9)
        self.events("step", step=step, total_steps=total, epoch=self._epoch_position(), loss=self.last_loss,
                    lr=self.scheduler.get_last_lr()[0], samples_per_s=rate, tokens_per_s=self.window_tokens / dt,
                    eta_s=remaining, peak_memory=peak_memory(self.device), elapsed_s=self.elapsed(),
                    cpu_s=time.process_time() - self.cpu0)
        self.window_t, self.window_samples, self.window_tokens = time.time(), 0, 0

    def _epoch_position(self) -> float:
        """Epochs trained so far, fractional."""
        return self.progress["epoch"] + self.progress["micro_done"] / max(self.epoch_batches, 1)

    def validate(self, *, end_of_epoch: bool) -> bool:
        """Evaluate on the validation split when due, keep the chosen checkpoint in ``RUN_DIR/best``;
        True when early stopping ends the run."""
        spec, progress, step = self.spec, self.progress, self.progress["step"]
        want_eval = bool(self.val_ex) and ((spec.eval_every and step % spec.eval_every == 0) or
                                           (not spec.eval_every and end_of_epoch) or step >= self.total_steps)
        if want_eval:
            metrics = self.evaluate(self.val_ex)
            entry = {"epoch": round(self._epoch_position(), 4), "step": step, "train_loss": self.last_loss,
                     **{f"eval_{k}": v for k, v in metrics.items()}}
            progress["history"].append(entry)
            value = metrics.get(spec.metric, metrics["loss"])
            improved, keep = select_checkpoint(progress, value, metrics["loss"], spec.metric, self.higher,
                                               int(metrics.get("n") or 0))
            if keep:
                self.save_adapter(self.run_dir / "best")
            self.events("eval", step=step, epoch=entry["epoch"], metrics=metrics, best=progress["best"],
                        best_step=progress["best_step"], improved=improved)
            if spec.early_stopping_patience and progress["bad_evals"] >= spec.early_stopping_patience:
                progress["stopped_early"] = True
                self.events("early_stop", step=step, patience=spec.early_stopping_patience)
                return True
        elif not self.val_ex and end_of_epoch:
            progress["history"].append({"epoch": progress["epoch"], "step": step, "train_loss": self.last_loss})
        return False

    def evaluate(self, examples: list[dict[str, Any]]) -> dict[str, float]:
        """Loss and the task's metrics over *examples*."""
        # every process scores the whole (small) evaluation split: identical metrics, no collectives
        # batches by length within the token budget: many short examples to a pass, few long ones; built
        # one at a time so only one is in memory
        lens = [example_tokens(e) for e in examples]
        idx = eval_batches(lens, self.eval_tokens, max(self.mb, 8) * 8)
        batches = (self._to_device(collate([examples[i] for i in b], self.pad_id, self.spec.task)) for b in idx)
        return evaluate_model(self.accelerator.unwrap_model(self.model), batches, self.spec.task, self.n_labels, None)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def elapsed(self) -> float:
        """Training seconds, across resumes."""
        return float(self.progress.get("elapsed_base", 0.0)) + (time.time() - self.t0)

    def stop_requested(self) -> bool:
        """A stop file, or the supervising app gone (then keep a checkpoint and let it be resumed); every process agrees."""
        import torch

        from adapterstudio.core.runs import pid_alive

        stop = self.stop_file.exists() or (self.supervisor > 0 and not pid_alive(self.supervisor))
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="max")
        return bool(flag.item() > 0)

    # -- saving ------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N``: Accelerate's state (trainable weights, optimizer, schedule, RNG) and ``progress.json``;
        the two newest are kept."""
        acc, progress, checkpoints = self.accelerator, self.progress, self.run_dir / "checkpoints"
        path = checkpoints / f"step-{progress['step']}"
        acc.wait_for_everyone()
        acc.save_state(str(path))
        if acc.is_main_process:
            progress["elapsed"] = self.elapsed()
            (path / "progress.json").write_text(json.dumps(progress), encoding="utf-8")
            for old in sorted(checkpoints.iterdir(), key=lambda p: p.stat().st_mtime)[:-2]:
                if old != path and old.name.startswith("step-"):
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.events("checkpoint", step=progress["step"], path=str(path))
        return path

    def save_adapter(self, dest: Path) -> None:
        """The model as it is now, as a PEFT adapter (a whole model with its tokenizer for ``full``) in *dest*."""
        acc, spec = self.accelerator, self.spec
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            m = acc.unwrap_model(self.model)
            m.save_pretrained(str(tmp), safe_serialization=True)
            if spec.strategy == "full" and self.tok is not None:
                self.tok.save_pretrained(str(tmp))
            spec.save(tmp / "training_spec.yaml")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        acc.wait_for_everyone()

    def export(self) -> dict[str, Any]:
        """The best validation checkpoint (the final weights without validation data) to ``RUN_DIR/adapter``,
        scored on validation and test; writes and announces the phase's result."""
        acc, spec, progress, run_dir = self.accelerator, self.spec, self.progress, self.run_dir
        best_dir = run_dir / "best"
        if not self.val_ex or not best_dir.exists():
            self.save_adapter(best_dir)
        elif progress["best_step"] != progress["step"]:
            load_best(acc.unwrap_model(self.model), best_dir, spec)
        final_val = self.evaluate(self.val_ex) if self.val_ex else {}
        test = self.evaluate(self.test_ex) if self.test_ex else {}
        if acc.is_main_process:
            dest = run_dir / "adapter"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(best_dir, dest)
        duration = self.elapsed()
        info = self.info
        result = {
            "status": "succeeded", "world_size": self.world, "device": str(self.device),
            "precision": acc.mixed_precision, "steps": progress["step"], "best_step": progress["best_step"],
            "best_metric": progress["best"], "metric": spec.metric, "stopped_early": progress["stopped_early"],
            "history": progress["history"], "final": final_val, "test": test,
            "trainable_params": info["trainable_params"], "total_params": info["total_params"],
            "duration_s": duration, "peak_memory": peak_memory(self.device), "train_examples": len(self.train_ex),
            "batch_size": self.mb, "grad_accum": self.ga, "wall_s": time.time() - self.t_start,
            # --no-baseline: not reported
            **baseline_comparison(spec, self.baseline if spec.baseline else None, final_val, test),
        }
        out_name = RESULT_FILE if self.final else "selection.json"
        if acc.is_main_process:
            tmp = run_dir / (out_name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=run_events.jsonable), encoding="utf-8")
            os.replace(tmp, run_dir / out_name)
        self.events("done" if self.final else "selected", **result)
        acc.end_training()
        return result
