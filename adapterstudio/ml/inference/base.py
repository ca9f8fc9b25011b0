"""Loading a base model for inference: the transformers class its task needs, and its tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapterstudio.core.context import TaskContext
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.peft_format import TASK_CLASSES

CLASSIFICATION_TASKS = ("SEQ_CLS", "TOKEN_CLS", "IMAGE_CLS")


@dataclass
class LoadedBase:
    model: Any  # a transformers PreTrainedModel of the task's class, on the device, in eval mode
    tokenizer: Any  # None for image models and folders without a tokenizer
    task: str


def task_of(config: dict[str, Any]) -> str:
    """The PEFT task type a base's architecture names (``FEATURE_EXTRACTION`` when none fits)."""
    arch = (config.get("architectures") or [""])[0]
    return ("CAUSAL_LM" if arch.endswith(("ForCausalLM", "LMHeadModel")) else
            "SEQ_CLS" if arch.endswith("ForSequenceClassification") else
            "TOKEN_CLS" if arch.endswith("ForTokenClassification") else
            "IMAGE_CLS" if arch.endswith("ForImageClassification") else "FEATURE_EXTRACTION")


def load_base(folder: Path, task: str | None, num_labels: int | None, *, dtype: torch.dtype,
              device: torch.device, name: str, ctx: TaskContext) -> LoadedBase:
    """Load the safetensors model in *folder* for *task* (None: from its architecture)."""
    import transformers

    if not (folder / "config.json").is_file():
        raise InvalidInput(f"{folder} is not a model folder (it has no config.json).")
    if not any(folder.glob("*.safetensors")):
        raise InvalidInput(f"{folder} has no .safetensors weights; inference loads safetensors only.")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if task is None:
        task = task_of(config)
    if task not in TASK_CLASSES:
        raise InvalidInput(f"Task {task!r} is not supported for inference (supported: {', '.join(TASK_CLASSES)}).")
    cls = getattr(transformers, TASK_CLASSES[task])
    kwargs: dict[str, Any] = {}
    if num_labels and task in CLASSIFICATION_TASKS:
        kwargs["num_labels"] = int(num_labels)
    ctx.progress(0, 2, f"loading {name}")
    ctx.check_cancelled()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        # a new head (num_labels) is initialised randomly; seed it so base-only runs repeat
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                        trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{folder} cannot be loaded as {TASK_CLASSES[task]}: {str(exc).splitlines()[0]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    ctx.check_cancelled()
    model = model.to(device).eval()
    tokenizer = None
    if task != "IMAGE_CLS":
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # a base without a tokenizer still runs tensor inputs; text inputs say it has none
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    ctx.progress(2, 2, "base loaded")
    return LoadedBase(model, tokenizer, task)
