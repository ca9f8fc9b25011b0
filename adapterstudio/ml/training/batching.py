"""Batches and steps: examples into micro-batches (grouped by length), micro-batches into passes within a token
budget, and one optimizer step's forward and backward passes with the loss weighted as the whole step's mean
(class-weighted where the spec asks); evaluation batches by length."""

from __future__ import annotations

import math
import random
from typing import Any

from adapterstudio.ml.training.encoding import IGNORE, collate


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group: bool) -> list[list[int]]:
    """Batches of indices. Grouped: shuffle, sort within mega-batches (up to 50 batches) by
    length, cut, shuffle the batches (so each batch pads little but the order stays random)."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group:
        # mega-batches of up to 50 batches, but at least 4 per dataset: sorting a small dataset whole would make
        # batches of near-equal length, and where length tracks the label, one-label batches that train worse
        mega = batch_size * max(1, min(50, len(idx) // (batch_size * 4)))
        chunks = [sorted(idx[i:i + mega], key=lambda j: -lengths[j]) for i in range(0, len(idx), mega)]
        batches = [c[i:i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
        # keep the longest batch first (it fails fast if memory is short), shuffle the rest
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(lengths[j] for j in batches[b]))
            first = batches.pop(longest)
            rng.shuffle(batches)
            batches.insert(0, first)
        return batches
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


# what one extra forward/backward pass costs, in tokens' worth of work (measured on CPU with MiniLM: ~15 ms of
# fixed cost against ~0.7 ms a token); it keeps the split from making many tiny passes
PASS_OVERHEAD_TOKENS = 32


def token_chunks(indices: list[int], lengths: list[int], budget: int,
                 pass_overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split one micro-batch into forward/backward passes of at most *budget* tokens, padding included.

    The examples are sorted longest first and cut into contiguous passes, each padded only
    to its own longest example; the cut minimises the padded tokens computed plus
    *pass_overhead* per pass (dynamic programming, exact). A single example longer than
    the budget gets a pass of its own. ``budget`` 0 keeps the micro-batch whole."""
    if not budget or len(indices) < 2:
        return [list(indices)]
    order = sorted(indices, key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest cover of the j longest examples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # pass order[i:j], padded to lengths[order[i]]
            width = lengths[order[i]]
            if j - i > 1 and (j - i) * width > budget:
                break  # longer passes only get wider
            cost = best[i] + pass_overhead + (j - i) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks: list[list[int]] = []
    j = n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def eval_batches(lengths: list[int], budget: int, max_examples: int) -> list[list[int]]:
    """Evaluation batches by length: short examples go many to a batch, long ones few."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max_examples and (len(out[-1]) + 1) * lengths[i] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def loss_items(labels: Any, task: str) -> int:
    """How many terms the model's mean loss averages over: label tokens (LM, tagging) or examples."""
    if task == "causal-lm":
        return int((labels[:, 1:] != IGNORE).sum())
    if task == "token-cls":
        return int((labels != IGNORE).sum())
    return int(labels.shape[0])


def training_passes(examples: list[dict[str, Any]], micro_batches: list[list[int]], lengths: list[int], budget: int,
                    pad_id: int, task: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The collated passes of one optimizer step (each micro-batch split within *budget*) and the
    number of loss terms in each."""
    passes = [collate([examples[i] for i in chunk], pad_id, task)
              for mb in micro_batches for chunk in token_chunks(mb, lengths, budget)]
    return passes, [loss_items(b["labels"], task) for b in passes]


def accumulate_gradients(model: Any, passes: list[dict[str, Any]], items: list[int], *, total_items: float | None = None,
                         world: int = 1, backward: Any = None, no_sync: Any = None, autocast: Any = None,
                         to_device: Any = None, loss_fn: Any = None) -> Any:
    """Forward and backward every pass of one step; returns this process's share of the step's loss.

    Each pass's mean loss is weighted by its share of the step's loss terms (examples, or
    label tokens for LM and tagging, summed over all processes: *total_items*), so the
    gradient is the one of the whole step's mean loss however the step is split into
    micro-batches, passes and processes (DDP averages over *world*, hence the factor)."""
    import contextlib

    import torch

    total = float(sum(items) if total_items is None else total_items)
    share = None
    for k, (cpu_batch, n_items) in enumerate(zip(passes, items, strict=True)):
        batch = to_device(cpu_batch) if to_device else cpu_batch
        sync = no_sync(model) if (no_sync is not None and k < len(passes) - 1) else contextlib.nullcontext()
        with sync, (autocast() if autocast is not None else contextlib.nullcontext()):
            out = model(**batch)
            if n_items:
                mean = loss_fn(out, batch) if loss_fn is not None else out.loss
                loss = mean * (n_items * world / max(total, 1.0))
            else:  # nothing to learn in this pass (all labels masked): a zero that keeps DDP in step
                loss = out.logits.float().sum() * 0.0
        (backward or torch.Tensor.backward)(loss)
        share = loss.detach() / world if share is None else share + loss.detach() / world
        del out, loss, batch
    return share




def class_weighted_loss(spec: Any, train_ex: list[dict[str, Any]], n_labels: int, device: Any) -> Any:
    """``class_weights: balanced``: cross-entropy with each class weighted n / (classes x count), as the
    *loss_fn* of :func:`accumulate_gradients`; None (the model's own loss) otherwise."""
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
