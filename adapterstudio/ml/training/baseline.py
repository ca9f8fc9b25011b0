"""A run's frozen-feature baseline: fitted before the fine-tune (the probe itself: :mod:`.probe`), saved in the
run folder, optionally the start of the fine-tune's head, and compared with the fine-tune at the end."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapterstudio.core import events as run_events
from adapterstudio.ml.training import probe as P
from adapterstudio.ml.training.batching import eval_batches
from adapterstudio.ml.training.encoding import collate, example_tokens
from adapterstudio.ml.training.metrics import classification_metrics
from adapterstudio.ml.training.models import head_modules


def run_baseline(spec: Any, model: Any, run_dir: Path, splits: tuple[list[Any], list[Any], list[Any]], pad_id: int,
                 n_labels: int, device: Any, *, fresh: bool, events: Callable[..., None],
                 save: bool) -> dict[str, Any] | None:
    """Fit the frozen-feature baseline (classification); start the head from it when ``head_init`` says so.

    Runs before the strategy wraps the model, so the features are the frozen base's. On a resume from a
    checkpoint the head's weights come from the checkpoint, so only the saved summary is read back."""
    from adapterstudio.core.fsutil import atomic_write_text

    if spec.task not in ("seq-cls", "token-cls", "image-cls") or not (spec.baseline or spec.head_init == "probe"):
        return None
    summary_path = run_dir / "baseline.json"
    if not fresh and summary_path.exists():
        summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
        return summary
    train_ex, val_ex, test_ex = splits
    if not val_ex:
        return None  # the probe is chosen on the validation split
    t0 = time.time()
    model.to(device)
    layer = P.output_layer(model, head_modules(model, spec.task), n_labels)

    def feats(examples: list[Any]) -> dict[str, Any]:
        lens = [example_tokens(e) for e in examples]
        idx = eval_batches(lens, 4096, 64)
        batches = ({k: v.to(device) for k, v in collate([examples[i] for i in b], pad_id, spec.task).items()} for b in idx)
        return P.frozen_features(model, batches, spec.task, layer)

    tr, va = feats(train_ex), feats(val_ex)
    te = feats(test_ex) if test_ex else None
    fits = {k: P.fit(k, tr, va, te, spec.metric, n_labels, classification_metrics) for k in ("pooled", "head-input")}
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
        atomic_write_text(summary_path, json.dumps(out, indent=2, default=run_events.jsonable))
        if head_probe is not None and layer is not None:
            save_probe_head(model, spec, head_probe, layer, run_dir / "probe_head.safetensors")
    events("baseline", **out)
    return out


def save_probe_head(model: Any, spec: Any, probe: P.Probe, layer: Any, path: Path) -> None:
    """The head modules with the probe in their output layer: ``runs save-probe`` turns them into a head adapter."""
    import torch
    from safetensors.torch import save_file

    heads = head_modules(model, spec.task)
    saved_w, saved_b = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    P.init_layer(layer, probe)
    tensors = {f"{h}.{k}": v.detach().to("cpu", torch.float32).contiguous()
               for h in heads for k, v in getattr(model, h).state_dict().items()}
    with torch.no_grad():  # put back what head_init chose (the probe itself, or the random init)
        layer.weight.copy_(saved_w)
        if saved_b is not None:
            layer.bias.copy_(saved_b)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


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
    theirs = (baseline.get(split) or {}).get(metric)
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
