"""Score a trained adapter (or a fully fine-tuned model) on a labelled file, in process."""

from __future__ import annotations

from typing import Any

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import InvalidInput


def evaluate_folder(base_path: str, adapter_path: str | None, lineage: dict[str, Any], data: str,
                    ctx: TaskContext = NULL_CONTEXT, *, batch_size: int = 32) -> dict[str, Any]:
    import torch

    from adapterstudio.core.training.data import normalise
    from adapterstudio.core.training.loaders import load_table
    from adapterstudio.core.training.spec import TrainingSpec
    from adapterstudio.ml.training.encoding import collate, encode, example_tokens, load_tokenizer
    from adapterstudio.ml.training.metrics import evaluate_model
    from adapterstudio.ml.training.models import load_base_model

    spec = TrainingSpec.from_dict(lineage.get("spec") or {}).replace(quantize="none")
    task = lineage["task"]
    labels = lineage.get("labels")
    table = load_table(data)
    cols = {k: v for k, v in (lineage.get("columns") or {}).items() if v and v in table.columns}
    rows, _ = normalise(table, task, cols)
    if labels:
        known = set(labels)
        if task == "token-cls":
            unknown = sorted({t for r in rows for t in r["tags"]} - known)
        else:
            unknown = sorted({r["label"] for r in rows} - known)
        if unknown:
            raise InvalidInput(f"{data} has label(s) {', '.join(map(repr, unknown[:5]))} that the adapter was not trained on.")
    ctx.progress(0, 3, "loading the model")
    torch.manual_seed(0)
    model = load_base_model(spec, adapter_path and base_path or base_path, labels)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    tok = load_tokenizer(base_path, task)
    model.eval()
    ctx.progress(1, 3, "encoding")
    examples = encode(rows, tok, spec.replace(packing=False), labels, base_path, model.config)
    order = sorted(range(len(examples)), key=lambda i: example_tokens(examples[i]))
    pad = tok.pad_token_id if tok is not None else 0
    batches = [collate([examples[i] for i in order[j:j + batch_size]], pad, task) for j in range(0, len(order), batch_size)]
    ctx.progress(2, 3, "scoring")
    res = evaluate_model(model, batches, task, len(labels or []), None)
    if task in ("seq-cls", "image-cls", "token-cls"):
        res["n"] = int(res.get("n", 0))
    res["task"] = task
    res["examples"] = len(rows)
    ctx.progress(3, 3, "done")
    return res
