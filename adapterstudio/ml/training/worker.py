"""The training child: ``accelerate launch -m adapterstudio.ml.training.worker RUN_DIR``.

Reads ``RUN_DIR/spec.yaml``, ``RUN_DIR/job.json`` and the prepared splits in
``RUN_DIR/data``; appends JSON-lines events to ``RUN_DIR/events.jsonl`` (and stdout) from
process 0; checkpoints to ``RUN_DIR/checkpoints/step-N`` (Accelerate ``save_state``,
trainable weights only, plus ``progress.json``) and resumes from the newest one found;
stops cooperatively when ``RUN_DIR/stop`` appears (after checkpointing); exports the
best checkpoint's adapter to ``RUN_DIR/adapter`` and writes ``RUN_DIR/result.json``.
The training itself is :class:`~adapterstudio.ml.training.finetune.FineTuneRecipe`; this
module is its entry point, its event sink, the exit codes, and ``refit``'s second phase.

Exit codes: 0 done, 3 cancelled (checkpoint kept), 75 out of memory (the supervisor
halves the micro-batch and resumes), 1 error (an ``error`` event says why).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from adapterstudio.core import events as run_events
from adapterstudio.core.runs import EXIT_OOM, JOB_FILE, RESULT_FILE
from adapterstudio.ml.training.baseline import baseline_comparison
from adapterstudio.ml.training.finetune import FineTuneRecipe


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = Path(argv[0]).resolve()
    from adapterstudio.core.runs import hold_worker_lock

    _worker_lock = hold_worker_lock(run_dir)  # (held until this process ends: tells apps the worker lives)
    from adapterstudio.core.training.spec import TrainingSpec

    spec = TrainingSpec.from_yaml(run_dir / "spec.yaml")
    job = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    events = Events(run_dir, enabled=rank == 0)
    try:
        if not spec.refit:
            return FineTuneRecipe(spec, job, run_dir, events).run()
        rc = FineTuneRecipe(spec, job, run_dir, events, final=False).run()
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
    steps = max(1, math.ceil(int(selection.get("best_step") or selection["steps"]) *
                             (len(data.train) + len(data.validation)) / max(len(data.train), 1)))
    sub_spec = spec.replace(refit=False, max_steps=steps, eval_every=0, early_stopping_patience=0, baseline=False,
                            head_init="random" if spec.head_init == "probe" else spec.head_init)
    sub_spec.save(sub / "spec.yaml")
    atomic_write_text(sub / JOB_FILE, json.dumps(job))
    events("refit", steps=steps, train_examples=len(data.train) + len(data.validation),
           selected_step=selection.get("best_step"))
    # the same recipe over RUN_DIR/refit; its events go to the run's one stream: the app follows the progress
    rc = FineTuneRecipe(sub_spec, job, sub, events).run()
    if rc != 0:
        return rc
    final = json.loads((sub / RESULT_FILE).read_text(encoding="utf-8"))
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
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2, default=run_events.jsonable))
    events("done", **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
