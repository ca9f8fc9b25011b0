"""Models, strategies, tokenisation, batching and metrics for the training child.

Every strategy yields a PEFT model, so every result is an adapter the catalogue imports
and inference hot-swaps:

- ``head``: PEFT's placeholder target plus ``modules_to_save`` = the new head; the
  backbone is frozen. The adapter file holds only the head.
- ``partial``: the same, with the last N transformer layers in ``modules_to_save`` too;
  their parameters get ``backbone_lr_ratio`` x the head's learning rate.
- ``lora``/``dora`` (rsLoRA option), ``ia3``, ``loha``, ``lokr``: PEFT adapters; a new
  classification head is always in ``modules_to_save``.
- ``full``: every weight trains; the result is a whole model folder (the catalogue
  registers it as a new base with its lineage, see services/training.py).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

log = logging.getLogger(__name__)

from adapterstudio.core.errors import Incompatible, InvalidInput

IGNORE = -100


# -- model -------------------------------------------------------------------------
def auto_class(task: str):
    import transformers as tf

    return {"seq-cls": tf.AutoModelForSequenceClassification, "regression": tf.AutoModelForSequenceClassification,
            "token-cls": tf.AutoModelForTokenClassification, "causal-lm": tf.AutoModelForCausalLM,
            "image-cls": tf.AutoModelForImageClassification}[task]


def load_base_model(spec: Any, base_path: str, labels: list[str] | None, dtype: Any = None):
    import torch

    kwargs: dict[str, Any] = {}
    if spec.task in ("seq-cls", "token-cls", "image-cls") and labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={lbl: i for i, lbl in enumerate(labels)}, ignore_mismatched_sizes=True)
    elif spec.task == "regression":
        kwargs.update(num_labels=1, problem_type="regression", ignore_mismatched_sizes=True)
    if spec.quantize != "none":
        kwargs["quantization_config"] = quantization_config(spec)
    if dtype is not None:
        kwargs["dtype"] = dtype
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(spec.seed)
    try:
        model = auto_class(spec.task).from_pretrained(base_path, **kwargs)
    except ValueError as exc:
        raise Incompatible(f"The base at {base_path} cannot be loaded for {spec.task}: {str(exc).splitlines()[0]}") from None
    if spec.task == "causal-lm" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def quantization_config(spec: Any):
    """QLoRA's 4-bit (or 8-bit) base: only with bitsandbytes on a CUDA device."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise InvalidInput(f"quantize={spec.quantize} (QLoRA) needs a CUDA GPU; this machine has none, so train without --quantize.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput(f"quantize={spec.quantize} (QLoRA) needs bitsandbytes: pip install bitsandbytes.")
    from transformers import BitsAndBytesConfig

    if spec.quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def head_modules(model: Any, task: str) -> list[str]:
    """Names of the task head's top-level modules (classifier, score, ...)."""
    if task == "causal-lm":
        return []
    prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, mod in model.named_children():
        if name == prefix or not any(True for _ in mod.parameters()):
            continue
        names.append(name)
    if not names:
        raise Incompatible(f"{type(model).__name__} has no separate head module to train.")
    return names


def layer_stack(model: Any) -> tuple[str, int]:
    """The largest ModuleList of blocks (the transformer layers): (dotted name, length)."""
    import torch.nn as nn

    best, n = "", 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > n:
            best, n = name, len(mod)
    if not n:
        raise Incompatible(f"{type(model).__name__} has no stack of layers to unfreeze partially; use head, lora or full.")
    return best, n


def peft_task_type(task: str) -> str | None:
    return {"seq-cls": "SEQ_CLS", "regression": "SEQ_CLS", "token-cls": "TOKEN_CLS", "causal-lm": "CAUSAL_LM"}.get(task)


def apply_strategy(model: Any, spec: Any) -> tuple[Any, dict[str, Any]]:
    """Wrap *model* for the strategy; returns (model, info with trainable counts and groups)."""
    import peft
    from peft.utils.constants import DUMMY_TARGET_MODULES

    heads = head_modules(model, spec.task)
    info: dict[str, Any] = {"head_modules": heads, "unfrozen_layers": []}
    task_type = peft_task_type(spec.task)
    if spec.strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, _count(model, info)
    if spec.quantize != "none":
        model = peft.prepare_model_for_kbit_training(model)
    if spec.strategy in ("head", "partial"):
        save = list(heads)
        if spec.strategy == "partial":
            stack, n = layer_stack(model)
            k = min(spec.unfreeze_layers, n)
            save += [f"{stack}.{i}" for i in range(n - k, n)]
            info["unfrozen_layers"] = save[len(heads):]
        cfg = peft.LoraConfig(task_type=task_type, target_modules=DUMMY_TARGET_MODULES, modules_to_save=save)
    else:
        targets = spec.target_modules or None
        common: dict[str, Any] = dict(task_type=task_type, modules_to_save=(heads or None) if task_type is None else None)
        if not targets and heads:
            common["exclude_modules"] = heads  # "all-linear" must not wrap the new head (it is saved whole)
        if spec.task == "image-cls":
            common["modules_to_save"] = heads
        try:
            if spec.strategy in ("lora", "dora"):
                cfg = peft.LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                                      target_modules=targets or "all-linear", use_rslora=spec.use_rslora,
                                      use_dora=spec.use_dora or spec.strategy == "dora", **common)
            elif spec.strategy == "ia3":
                cfg = peft.IA3Config(target_modules=targets, feedforward_modules=[] if targets else None, **common)
            elif spec.strategy == "loha":
                cfg = peft.LoHaConfig(r=spec.lora_r, alpha=spec.lora_alpha, target_modules=targets or "all-linear", **common)
            elif spec.strategy == "lokr":
                cfg = peft.LoKrConfig(r=spec.lora_r, alpha=spec.lora_alpha, target_modules=targets or "all-linear", **common)
            else:  # pragma: no cover
                raise InvalidInput(f"Unknown strategy {spec.strategy!r}.")
        except ValueError as exc:
            raise Incompatible(f"PEFT cannot set up {spec.strategy} for this base: {str(exc).splitlines()[0]}") from None
    try:
        pm = peft.get_peft_model(model, cfg)
    except (ValueError, KeyError) as exc:
        msg = str(exc).splitlines()[0]
        raise Incompatible(f"PEFT cannot apply {spec.strategy} to {type(model).__name__} ({msg}); "
                           "name the layers with --target-modules or pick another strategy.") from None
    if spec.task == "image-cls":
        # the new head is in modules_to_save; make sure it trains (no task type does it for us)
        for n, p in pm.named_parameters():
            if "modules_to_save" in n:
                p.requires_grad_(True)
    return pm, _count(pm, info)


def _count(model: Any, info: dict[str, Any]) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info.update(trainable_params=trainable, total_params=total)
    return info


def param_groups(model: Any, spec: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases/norms; pretrained layers slower for ``partial``; the new head at
    ``head_lr`` for adapters (LoRA and friends) when set."""
    heads = info.get("head_modules", [])
    groups: dict[tuple[bool, str], list[Any]] = {}
    head_lr = getattr(spec, "head_lr", None)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        in_head = any(h in name.split(".") for h in heads)
        if spec.strategy == "partial":
            kind = "head" if in_head else "slow"
        elif spec.strategy in ("head", "full"):
            kind = "main"
        else:
            kind = "head" if in_head and head_lr else "main"
        groups.setdefault((no_decay, kind), []).append(p)
    out = []
    for (no_decay, kind), params in groups.items():
        lr = {"slow": spec.lr * spec.backbone_lr_ratio, "head": head_lr or spec.lr, "main": spec.lr}[kind]
        if spec.strategy == "partial" and kind == "head":
            lr = spec.lr  # partial: lr is the head's rate, the backbone's is a ratio of it
        out.append({"params": params, "weight_decay": 0.0 if no_decay else spec.weight_decay, "lr": lr})
    return out


# -- tokenisation ----------------------------------------------------------------------
def load_tokenizer(base_path: str, task: str):
    if task == "image-cls":
        return None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_path)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"The base at {base_path} has no usable tokenizer ({str(exc).splitlines()[0]}).") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def encode(rows: list[dict[str, Any]], tok: Any, spec: Any, labels: list[str] | None, base_path: str | None = None,
           model_config: Any = None) -> list[dict[str, Any]]:
    task, L = spec.task, int(spec.max_length)
    lab = {lbl: i for i, lbl in enumerate(labels or [])}
    out: list[dict[str, Any]] = []
    if task in ("seq-cls", "regression"):
        texts = [r["text"] for r in rows]
        pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
        enc = tok(texts, pairs, truncation=True, max_length=L) if pairs else tok(texts, truncation=True, max_length=L)
        for i, r in enumerate(rows):
            ex = {k: enc[k][i] for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")}
            ex["labels"] = float(r["label"]) if task == "regression" else lab[r["label"]]
            out.append(ex)
    elif task == "token-cls":
        if not getattr(tok, "is_fast", False):
            raise Incompatible("Token classification needs a fast tokenizer (one with word alignment); this base has none.")
        enc = tok([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=L)
        for i, r in enumerate(rows):
            wids = enc.word_ids(i)
            prev = None
            ys = []
            for w in wids:
                ys.append(IGNORE if w is None or w == prev else lab[r["tags"][w]])
                prev = w
            ex = {k: enc[k][i] for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")}
            ex["labels"] = ys
            out.append(ex)
    elif task == "causal-lm":
        for r in rows:
            out.append(_encode_lm(r, tok, L))
        if spec.packing:
            out = pack(out, L)
    elif task == "image-cls":
        proc = _image_processor(base_path, model_config)
        for r in rows:
            out.append({"pixel_values": proc(r["image"]), "labels": lab[r["label"]]})
    return out


def _render(r: dict[str, Any], tok: Any) -> tuple[str, list[tuple[int, int]]]:
    """Text of one causal-LM example and the character spans the loss is computed on."""
    if "text" in r:
        return r["text"], [(0, len(r["text"]))]
    msgs = r.get("messages") or [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
    if getattr(tok, "chat_template", None):
        full = tok.apply_chat_template(msgs, tokenize=False)
        spans = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True) if k else ""
            upto = tok.apply_chat_template(msgs[:k + 1], tokenize=False)
            if full.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))
        if not spans:  # a template that re-renders history: learn the last answer's text
            last = msgs[-1]["content"]
            at = full.rfind(last)
            spans = [(at, at + len(last))] if at >= 0 else [(0, len(full))]
        return full, spans
    # no chat template: a plain "prompt\nresponse" layout; loss on the responses only
    text, spans = "", []
    for m in msgs:
        piece = m["content"] + "\n"
        if m["role"] == "assistant":
            spans.append((len(text), len(text) + len(piece)))
        text += piece
    return text, spans


def _encode_lm(r: dict[str, Any], tok: Any, L: int) -> dict[str, Any]:
    text, spans = _render(r, tok)
    enc = tok(text, truncation=True, max_length=L - 1, return_offsets_mapping=getattr(tok, "is_fast", False),
              add_special_tokens=not text.startswith(tok.bos_token or "\0"))
    ids = list(enc["input_ids"])
    if getattr(tok, "is_fast", False):
        offs = enc["offset_mapping"]
        ys = [t if any(s <= a < e for s, e in spans) and b > a else IGNORE for t, (a, b) in zip(ids, offs, strict=True)]
    else:
        ys = list(ids)
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
        ys.append(tok.eos_token_id if spans and spans[-1][1] >= len(text) - 1 else IGNORE)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ys}


def pack(examples: list[dict[str, Any]], L: int) -> list[dict[str, Any]]:
    """Concatenate examples and cut rows of exactly L tokens: no padding at all."""
    ids: list[int] = []
    ys: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        ys += ex["labels"]
    out = []
    for i in range(0, len(ids), L):
        chunk, lab = ids[i:i + L], ys[i:i + L]
        if len(chunk) < 2:
            break
        out.append({"input_ids": chunk, "attention_mask": [1] * len(chunk), "labels": lab})
    return out


def _image_processor(base_path: str | None, config: Any):
    import numpy as np
    import torch

    proc, reason = None, ""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(base_path)
    except Exception as exc:  # noqa: BLE001  (no or a broken preprocessor config: fall back, and say so in the log)
        proc = None
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    size = int(getattr(config, "image_size", 224) or 224)
    channels = int(getattr(config, "num_channels", 3) or 3)
    if proc is None:
        log.warning("no image processor for %s (%s); images are resized to %dx%d and scaled to [-1, 1], "
                    "which may not be the normalisation the model was trained with", base_path, reason, size, size)

    def to_tensor(img: Any):
        if isinstance(img, str):
            try:
                from PIL import Image
            except ImportError:
                raise InvalidInput("Reading image files needs Pillow: pip install 'adapterstudio[data]'.") from None
            arr = np.asarray(Image.open(img).convert("RGB"), dtype=np.float32) / 255.0
        else:
            arr = np.asarray(img, dtype=np.float32)
            if arr.max() > 1.0:
                arr = arr / 255.0
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)  # C, H, W in [0, 1]

    def run(img: Any) -> list:
        x = to_tensor(img)
        if proc is not None:
            return proc(images=x, return_tensors="pt", do_rescale=False)["pixel_values"][0].tolist()
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        x = (x - 0.5) / 0.5
        return x[:channels].tolist()

    return run


# -- batching ------------------------------------------------------------------------
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
                         to_device: Any = None, loss_fn: Any = None):
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


def collate(examples: list[dict[str, Any]], pad_id: int, task: str):
    import torch

    if "pixel_values" in examples[0]:
        return {"pixel_values": torch.tensor([e["pixel_values"] for e in examples], dtype=torch.float32),
                "labels": torch.tensor([e["labels"] for e in examples])}
    n = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, Any] = {}
    batch["input_ids"] = torch.tensor([e["input_ids"] + [pad_id] * (n - len(e["input_ids"])) for e in examples])
    batch["attention_mask"] = torch.tensor([e["attention_mask"] + [0] * (n - len(e["attention_mask"])) for e in examples])
    if "token_type_ids" in examples[0]:
        batch["token_type_ids"] = torch.tensor([e["token_type_ids"] + [0] * (n - len(e["token_type_ids"])) for e in examples])
    if isinstance(examples[0]["labels"], list):
        batch["labels"] = torch.tensor([e["labels"] + [IGNORE] * (n - len(e["labels"])) for e in examples])
    elif task == "regression":
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.float32)
    else:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


def example_tokens(e: dict[str, Any]) -> int:
    if "input_ids" in e:
        return len(e["input_ids"])
    return 1


# -- metrics -------------------------------------------------------------------------
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
