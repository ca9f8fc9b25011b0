"""Evaluation metrics of the training child: loss plus the task's metrics over batches (what each metric means
and which way is better: :mod:`adapterstudio.core.metrics`)."""

from __future__ import annotations

import math
from typing import Any

from adapterstudio.ml.training.batching import loss_items
from adapterstudio.ml.training.encoding import IGNORE


def classification_metrics(preds: list[int], golds: list[int], n_labels: int) -> dict[str, float]:
    n = len(golds)
    if not n:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    acc = sum(int(p == g) for p, g in zip(preds, golds, strict=True)) / n
    f1s = []
    for c in range(n_labels):
        tp = sum(1 for p, g in zip(preds, golds, strict=True) if p == c and g == c)
        fp = sum(1 for p, g in zip(preds, golds, strict=True) if p == c and g != c)
        fn = sum(1 for p, g in zip(preds, golds, strict=True) if p != c and g == c)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "n": n}


def evaluate_model(model: Any, loader: Any, task: str, n_labels: int, accelerator: Any = None) -> dict[str, float]:
    """Loss plus task metrics over *loader* (gathered across processes)."""
    import torch

    model.eval()
    tot_loss, tot_w = 0.0, 0
    preds: list[int] = []
    golds: list[int] = []
    sq = gsum = gsq = 0.0
    with torch.no_grad():
        for batch in loader:
            out = model(**batch)
            labels = batch["labels"]
            w = loss_items(labels, task)
            loss = out.loss.detach().float() * w if w else torch.zeros((), device=labels.device)
            stats = torch.tensor([float(loss), float(w)], device=labels.device)
            if task in ("seq-cls", "image-cls"):
                p, g = out.logits.argmax(-1), labels
            elif task == "token-cls":
                mask = labels != IGNORE
                p, g = out.logits.argmax(-1)[mask], labels[mask]
            elif task == "regression":
                p, g = out.logits.squeeze(-1), labels
                sq += float(((p.float() - g.float()) ** 2).sum())
                gsum += float(g.float().sum())
                gsq += float((g.float() ** 2).sum())
            if accelerator is not None and accelerator.num_processes > 1:
                stats = accelerator.reduce(stats, reduction="sum")
                if task in ("seq-cls", "image-cls", "token-cls"):
                    p = accelerator.gather_for_metrics(p) if task != "token-cls" else accelerator.pad_across_processes(p, pad_index=-1)
                    g = accelerator.gather_for_metrics(g) if task != "token-cls" else accelerator.pad_across_processes(g, pad_index=-1)
                    if task == "token-cls":
                        p, g = accelerator.gather(p), accelerator.gather(g)
                        keep = g != -1
                        p, g = p[keep], g[keep]
            tot_loss += float(stats[0])
            tot_w += int(stats[1])
            if task in ("seq-cls", "image-cls", "token-cls"):
                preds += p.tolist()
                golds += g.tolist()
    model.train()
    loss = tot_loss / max(tot_w, 1)
    res: dict[str, float] = {"loss": loss}
    if task == "causal-lm":
        res["perplexity"] = math.exp(min(loss, 50.0))
        res["n"] = tot_w
    elif task == "regression":
        mse = sq / max(tot_w, 1)
        var = (gsq / max(tot_w, 1)) - (gsum / max(tot_w, 1)) ** 2
        res.update(mse=mse, rmse=math.sqrt(mse), r2=1.0 - mse / var if var > 0 else 0.0, n=tot_w)
    else:
        res.update(classification_metrics(preds, golds, n_labels))
    return res
