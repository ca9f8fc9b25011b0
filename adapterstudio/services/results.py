"""A training run's result: the name and place of what it produces, its lineage, its import into the catalogue.

On success the adapter is imported with ``source="train"``, the run id and its lineage
(spec, base, dataset hash, labels, chat template, metrics, versions, hardware...). A
``full`` fine-tune is a whole model, not an adapter: it is copied to
``<library>/models/<name>`` and registered as a new *base* whose notes name its parent,
with the same lineage in ``lineage.json`` beside the weights and in the run record. An
adapter imported just before a kill is found again (by its run id) and linked instead of
retraining (:func:`link_imported`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterstudio.core.context import TaskContext
from adapterstudio.core.errors import AlreadyExists, InvalidInput
from adapterstudio.core.fsutil import atomic_write_text
from adapterstudio.core.runs import RESULT_FILE, RunRecord, RunStore
from adapterstudio.core.training.spec import TrainingSpec
from adapterstudio.services import run_folders
from adapterstudio.services.run_folders import last_checkpoint

LINEAGE_FILE = "lineage.json"  # beside a full fine-tune's weights (an adapter's lineage is in the catalogue)


@dataclass
class TrainOutcome:
    run: RunRecord
    adapter: Any | None  # AdapterRecord (or BaseRecord for a full fine-tune)
    result: dict[str, Any]


def _valid_name(name: str, what: str, how: str = "choose another --name") -> None:
    from adapterstudio.core.names import validate_name

    if name != name.strip():
        raise InvalidInput(f"{name!r} is not a valid {what} name (no spaces at either end); {how}.")
    try:
        validate_name(name, what)
    except InvalidInput as exc:
        raise InvalidInput(f"{str(exc).rstrip('.')}; {how}.") from None


def full_dest(lib: Any, name: str) -> Path:
    """Where a full fine-tune named *name* is copied (it becomes a base model)."""
    return Path(lib.root) / "models" / name.replace("/", "_")


def lineage_run_id(folder: Path) -> str | None:
    """The run that produced the full fine-tune in *folder* (from its lineage file), if any."""
    try:
        return json.loads((folder / LINEAGE_FILE).read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _full_notes(parent: str, run_id: str) -> str:
    """The notes of a base model that a full fine-tune registered."""
    return f"full fine-tune of {parent} (run {run_id}); lineage in {LINEAGE_FILE}"


def check_output_name(lib: Any, strategy: str, name: str, run_id: str | None = None,
                      how: str = "choose another --name") -> None:
    """Raise unless *name* is a valid, free name for what a run of *strategy* produces.

    Free means: not in the catalogue, no folder in the way (a full fine-tune), and not the
    output of another queued or running run. *run_id*'s own leftovers do not count. *how*
    ends the message: what the user can do about it."""
    full = strategy == "full"
    _valid_name(name, "base model" if full else "adapter", how)
    if full:
        if lib.catalogue.find_base(name) is not None:
            raise AlreadyExists(f"A base model named {name!r} is already in the catalogue; {how}.")
        dest = full_dest(lib, name)
        if dest.exists() and (run_id is None or lineage_run_id(dest) != run_id):
            raise AlreadyExists(f"{dest} already exists; {how}.")
    elif lib.catalogue.find_adapter(name) is not None:
        raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; {how}.")
    for other in RunStore(lib.catalogue).list():
        if other.id != run_id and other.status in ("queued", "running") and other.name.casefold() == name.casefold() \
                and (other.spec.get("strategy") == "full") == full:
            raise AlreadyExists(f"Run {other.id} ({other.status}) will produce {'a base model' if full else 'an adapter'} "
                                f"named {name!r}; {how}.")


def outcome(lib: Any, run: RunRecord) -> TrainOutcome:
    """What a run that another process saw through produced (its record and result)."""
    result = read_result(Path(run.run_dir)) or dict(run.metrics or {})
    if run.spec.get("strategy") == "full":
        rec = lib.catalogue.find_base(run.name)
    else:
        rec = lib.catalogue.find_adapter(run.adapter) if run.adapter else None
    return TrainOutcome(run=run, adapter=rec, result=result)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The worker's ``result.json`` (written once training finished), or None."""
    try:
        return json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def link_imported(lib: Any, run: RunRecord, ctx: TaskContext) -> TrainOutcome | None:
    """The run's result already in the catalogue (imported just before a crash): link it, mark it succeeded."""
    store = RunStore(lib.catalogue)
    run_dir = Path(run.run_dir)
    result = read_result(run_dir) or {}
    if run.spec.get("strategy") == "full":
        rec = next((b for b in lib.catalogue.list_bases() if b.path and lineage_run_id(Path(b.path)) == run.id), None)
        if rec is None:
            return None
        lineage = json.loads((Path(rec.path) / LINEAGE_FILE).read_text(encoding="utf-8"))
        if not rec.notes:
            lib.catalogue.update_base(rec.name, notes=_full_notes(lineage["base"]["name"], run.id))
            rec = lib.catalogue.get_base(rec.name)
        fields: dict[str, Any] = {"metrics": {**result, "lineage": lineage}}
    else:
        # the adapters table has no run -> adapter link other than the adapter's run_id
        row = lib.catalogue.conn.execute("SELECT name FROM adapters WHERE run_id = ?", (run.id,)).fetchone()
        if row is None:
            return None
        rec = lib.catalogue.get_adapter(row[0])
        fields = {"metrics": result or rec.lineage.get("metrics", {}), "adapter_id": rec.id}
    store.update(run.id, status="succeeded", error="", pid=None, queue_position=None,
                 world_size=result.get("world_size") or run.world_size,
                 finished_at=time.time(), last_checkpoint=last_checkpoint(run_dir), **fields)
    ctx.log(f"run {run.id}'s result {rec.name!r} was already in the catalogue (imported just before it stopped); linked it")
    return TrainOutcome(run=store.get(run.id), adapter=rec, result=result)


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries a run depended on (for its lineage)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("adapterstudio", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def base_chat_template(base_path: str) -> str | None:
    """The chat template of the base model in *base_path* (the default one when it names several), or None."""
    p = Path(base_path)
    jinja = p / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        f = p / name
        if f.is_file():
            try:
                t = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
            except (ValueError, OSError):
                continue
            if isinstance(t, str):
                return t
            if isinstance(t, list) and t:
                return next((x.get("template") for x in t if x.get("name") == "default"), t[0].get("template"))
    return None


def build_lineage(run_id: str, spec: TrainingSpec, job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """What a trained adapter records about how it was made (stored with it in the catalogue)."""
    task = spec.task
    cols = job.get("columns", {})
    return {
        "run_id": run_id, "task": task, "strategy": spec.strategy, "spec": spec.to_dict(), "base": job["base"],
        "dataset": job["dataset"], "labels": job.get("labels"),
        "chat_template": base_chat_template(job["base_path"]) if task == "causal-lm" else None,
        "text_column": cols.get("text_column") or cols.get("messages_column") or cols.get("prompt_column") or cols.get("image_column"),
        "label_column": cols.get("label_column") or cols.get("response_column"),
        "columns": cols,
        "metrics": {"history": result.get("history", []), "final": result.get("final", {}), "test": result.get("test", {})},
        "library_versions": library_versions(), "seed": spec.seed,
        "hardware": {"device": result.get("device"), "precision": result.get("precision"), "platform": platform.platform(),
                     "machine": platform.machine(), "cpu_count": os.cpu_count(), "peak_memory": result.get("peak_memory")},
        "duration_s": result.get("duration_s"), "world_size": result.get("world_size"),
        "trainable_params": result.get("trainable_params"), "total_params": result.get("total_params"),
        "best_step": result.get("best_step"), "steps": result.get("steps"),
        **{k: result[k] for k in ("baseline", "baseline_metric", "gain_over_baseline", "baseline_warning",
                                  "baseline_split", "metric") if k in result},
    }


def import_result(lib: Any, run_id: str, spec: TrainingSpec, run_dir: Path, result: dict[str, Any],
                  ctx: TaskContext) -> Any:
    """Import what the run in *run_dir* trained (an adapter, or a full fine-tune as a base) and mark it succeeded."""
    job = run_folders.read_job(run_dir)
    lineage = build_lineage(run_id, spec, job, result)
    store = RunStore(lib.catalogue)
    out = run_dir / "adapter"
    if spec.strategy == "full":
        dest = full_dest(lib, spec.name)
        if not (dest.exists() and lineage_run_id(dest) == run_id):  # else copied before a crash: register it
            if dest.exists():
                raise AlreadyExists(f"{dest} already exists; choose another --name.")
            tmp = dest.with_name("." + dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out, tmp)
            atomic_write_text(tmp / LINEAGE_FILE, json.dumps(lineage, indent=2, default=str))
            os.replace(tmp, dest)
        rec = lib.add_base(dest, name=spec.name, ctx=ctx)
        run_folders.crash_point("adapter_imported")
        lib.catalogue.update_base(rec.name, notes=_full_notes(job["base"]["name"], run_id))
        store.update(run_id, status="succeeded", metrics={**result, "lineage": lineage}, world_size=result.get("world_size"),
                     error="", finished_at=time.time(), pid=None, last_checkpoint=last_checkpoint(run_dir))
        return lib.catalogue.get_base(rec.name)
    rec = lib.import_adapter(out, spec.name, base=spec.base, source="train", run_id=run_id, lineage=lineage,
                             tags=[f"task:{spec.task}", f"strategy:{spec.strategy}"], ctx=ctx)
    run_folders.crash_point("adapter_imported")
    store.update(run_id, status="succeeded", adapter_id=rec.id, metrics=result, world_size=result.get("world_size"),
                 error="", finished_at=time.time(), pid=None, last_checkpoint=last_checkpoint(run_dir))
    return rec

