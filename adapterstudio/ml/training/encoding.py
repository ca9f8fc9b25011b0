"""Examples as the model sees them: the tokenizer, rows encoded per task (text pairs, word-aligned tags, chat
turns with the loss on the answers only, packed LM rows, images), and the collation of examples into tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from adapterstudio.core.errors import Incompatible, InvalidInput

log = logging.getLogger(__name__)

IGNORE = -100  # the label of a position the loss skips (padding, prompts, a word's later sub-tokens)


def load_tokenizer(base_path: str, task: str) -> Any:
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


def _load_image_processor(base_path: str | None) -> tuple[Any, str]:
    """The base's own image processor, or None and why there is none (then :func:`_image_processor` falls back).

    A base with no image-processor config, or without the libraries its processor needs (Pillow is an
    optional extra), falls back; a config that transformers cannot use is a broken base: an error."""
    if base_path is None:
        return None, "no base folder to read one from"
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(base_path), ""
    except OSError as exc:  # no preprocessor_config.json (nor processor_config.json) in the base folder
        return None, f"the base ships no image-processor config ({_first_line(exc)})"
    except ImportError as exc:  # transformers' image processors need Pillow, an optional extra
        return None, f"its image processor needs a library that is missing ({_first_line(exc)})"
    except ValueError as exc:
        raise InvalidInput(f"The base at {base_path} has an image-processor config that transformers cannot use "
                           f"({_first_line(exc)}); fix or remove its preprocessor_config.json.") from None


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _image_processor(base_path: str | None, config: Any) -> Callable[[Any], list[Any]]:
    """Image (a file path or an array) -> the model's pixel values, as a nested list.

    With the base's image processor where it has one; otherwise, stated in a warning with the reason,
    resized to the config's ``image_size`` and scaled to [-1, 1] (ViT's normalisation, which may not be
    the one the model was trained with)."""
    import numpy as np
    import torch

    proc, reason = _load_image_processor(base_path)
    size = int(getattr(config, "image_size", 224) or 224)
    channels = int(getattr(config, "num_channels", 3) or 3)
    if proc is None:
        log.warning("no image processor for %s (%s); images are resized to %dx%d and scaled to [-1, 1], "
                    "which may not be the normalisation the model was trained with", base_path, reason, size, size)

    def to_tensor(img: Any) -> Any:
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

    def run(img: Any) -> list[Any]:
        x = to_tensor(img)
        if proc is not None:
            return proc(images=x, return_tensors="pt", do_rescale=False)["pixel_values"][0].tolist()
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        x = (x - 0.5) / 0.5
        return x[:channels].tolist()

    return run


def collate(examples: list[dict[str, Any]], pad_id: int, task: str) -> dict[str, Any]:
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

