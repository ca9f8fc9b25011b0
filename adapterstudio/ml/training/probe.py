"""The frozen-feature baseline: logistic regression on what the frozen base already knows.

The transfer-learning playbook starts with a baseline and fine-tunes only if the
fine-tune beats it. Every classification run fits one, on the same training split, and
scores it on the same validation and test splits, so a run can say how much the fine-tune
gained (or that it lost: negative transfer).

Two kinds of frozen features come from one forward pass of the base (with its new head):

- ``pooled``: the mean of the last hidden states over real tokens (the sentence embedding
  of encoders such as sentence-transformers models; the CLS/patch mean for ViT);
- ``head-input``: what the new head's output layer sees (BERT's pooler output, ViT's
  normalised CLS token, each word's first sub-token for tagging). A probe on these is
  exactly a trained head, so it can initialise the fine-tune's head and be saved as a
  ``head`` adapter.

For each, a standardised logistic regression is chosen on the validation split over a
small grid (regularisation, class weighting); the baseline is the better of the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adapterstudio.core.metrics import HIGHER_IS_BETTER

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class Probe:
    """One fitted probe: its scores and, for ``head-input``, the weights of the head's output layer."""

    features: str  # "pooled" or "head-input"
    metric: str
    val: dict[str, float]
    test: dict[str, float]
    C: float
    class_weight: str | None
    weight: Any = None  # numpy (n_labels, dim), standardisation folded in
    bias: Any = None  # numpy (n_labels,)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"kind": "probe", "features": self.features, "metric": self.metric, "val": self.val,
                "test": self.test, "C": self.C, "class_weight": self.class_weight or "none", **self.extra}


def output_layer(model: Any, head_modules: list[str], n_labels: int) -> Any:
    """The head's last linear layer with *n_labels* outputs (classifier, score, out_proj ...), or None."""
    import torch.nn as nn

    found = None
    for name in head_modules:
        mod = getattr(model, name, None)
        if mod is None:
            continue
        for m in ([mod] if isinstance(mod, nn.Linear) else []) + [m for m in mod.modules() if isinstance(m, nn.Linear)]:
            if m.out_features == n_labels:
                found = m
    return found


def frozen_features(model: Any, batches: Iterable[dict[str, Any]], task: str, layer: Any) -> dict[str, Any]:
    """Features (numpy) of every example in *batches*: ``pooled``, ``head-input`` and the labels ``y``.

    For token classification each labelled token (a word's first sub-token) is one example."""
    import numpy as np
    import torch

    pooled: list[Any] = []
    head: list[Any] = []
    ys: list[Any] = []
    seen: list[Any] = []
    hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())) if layer is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                seen.clear()
                out = model(**batch, output_hidden_states=True)
                hidden = out.hidden_states[-1].float()
                labels = batch["labels"]
                h = seen[-1].float() if seen else None
                if task == "token-cls":
                    keep = labels != -100
                    pooled.append(hidden[keep].cpu())
                    if h is not None:
                        head.append(h[keep].cpu())
                    ys.append(labels[keep].cpu())
                    continue
                if "attention_mask" in batch:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
                else:  # images: the mean over patch tokens
                    pooled.append(hidden.mean(1).cpu())
                if h is not None:
                    if h.dim() == 3:  # a head whose output layer sees every position (Llama's score): the last real one
                        last = batch["attention_mask"].sum(1) - 1 if "attention_mask" in batch else torch.full(
                            (h.shape[0],), h.shape[1] - 1)
                        h = h[torch.arange(h.shape[0]), last.to(h.device)]
                    head.append(h.cpu())
                ys.append(labels.cpu())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    out_d: dict[str, Any] = {"y": torch.cat(ys).numpy() if ys else np.zeros(0, dtype=int)}
    out_d["pooled"] = torch.cat(pooled).numpy() if pooled else None
    out_d["head-input"] = torch.cat(head).numpy() if head else None
    return out_d


def fit(features: str, train: dict[str, Any], val: dict[str, Any], test: dict[str, Any] | None, metric: str,
        n_labels: int, score: Callable[[list[int], list[int], int], dict[str, float]]) -> Probe | None:
    """The best logistic regression on *features* by validation *metric* (ties: lower validation loss)."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    Xtr, Xva = train.get(features), val.get(features)
    if Xtr is None or Xva is None or not len(Xtr) or not len(Xva):
        return None
    ytr, yva = train["y"], val["y"]
    if len(set(ytr.tolist())) < 2:
        return None
    mu = Xtr.mean(0)
    sd = Xtr.std(0) + 1e-6
    Ztr, Zva = (Xtr - mu) / sd, (Xva - mu) / sd
    higher = HIGHER_IS_BETTER.get(metric, True)
    best: tuple[Any, ...] | None = None
    for cw in (None, "balanced"):
        for C in C_GRID:
            clf = LogisticRegression(C=C, class_weight=cw, max_iter=500)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Ztr, ytr)
            pred = clf.predict(Zva).tolist()
            m = score(pred, yva.tolist(), n_labels)
            value = m.get(metric, m.get("accuracy", 0.0))
            proba = np.zeros((len(Zva), n_labels))
            proba[:, clf.classes_] = clf.predict_proba(Zva)
            proba = np.clip(proba, 1e-9, 1)  # classes absent from training get a tiny share, not log(0)
            proba /= proba.sum(axis=1, keepdims=True)  # rows sum to one again (sklearn warns otherwise)
            loss = float(log_loss(yva, proba, labels=list(range(n_labels))))
            key = (value if higher else -value, -loss)
            if best is None or key > best[0]:
                best = (key, clf, C, cw, {**m, "loss": loss})
    assert best is not None
    _, clf, C, cw, val_metrics = best
    test_metrics: dict[str, float] = {}
    if test is not None and test.get(features) is not None and len(test[features]):
        test_metrics = score(clf.predict((test[features] - mu) / sd).tolist(), test["y"].tolist(), n_labels)
    # fold the standardisation into one linear layer over the raw features
    coef = np.zeros((n_labels, Xtr.shape[1]))
    intercept = np.zeros(n_labels)
    if len(clf.classes_) == 2 and clf.coef_.shape[0] == 1:  # binary: one score; logits (-s/2, +s/2) give the same softmax
        c0, c1 = clf.classes_
        coef[c1], coef[c0] = clf.coef_[0] / 2, -clf.coef_[0] / 2
        intercept[c1], intercept[c0] = clf.intercept_[0] / 2, -clf.intercept_[0] / 2
    else:
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
        missing = sorted(set(range(n_labels)) - set(clf.classes_.tolist()))
        if missing:  # a class the training split lacks: never predicted, as the probe never predicts it
            intercept[missing] = -10.0
    weight = coef / sd
    bias = intercept - (coef * (mu / sd)).sum(1)
    return Probe(features=features, metric=metric, val=val_metrics, test=test_metrics, C=C, class_weight=cw,
                 weight=weight, bias=bias)


def better(a: Probe | None, b: Probe | None) -> Probe | None:
    """The probe with the better validation metric."""
    if a is None or b is None:
        return a or b
    higher = HIGHER_IS_BETTER.get(a.metric, True)
    va, vb = a.val.get(a.metric, 0.0), b.val.get(b.metric, 0.0)
    return a if (va >= vb if higher else va <= vb) else b


def init_layer(layer: Any, probe: Probe) -> None:
    """Copy the probe's weights into the head's output layer (linear probing, then fine-tuning)."""
    import torch

    with torch.no_grad():
        w = torch.as_tensor(probe.weight, dtype=layer.weight.dtype, device=layer.weight.device)
        layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.copy_(torch.as_tensor(probe.bias, dtype=layer.bias.dtype, device=layer.bias.device))
