"""The training spec: every setting of a fine-tune, typed, validated, saved as YAML.

Pure Python (no torch at import) so the CLI, the GUI and the supervisor can build and
check a spec before any heavy library loads. A spec is saved beside the trained adapter
(``training_spec.yaml``) and in its lineage, so a run can be reproduced from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adapterstudio.core.errors import InvalidInput

# the metric facts live in core.metrics; re-exported here for callers of the spec
from adapterstudio.core.metrics import HIGHER_IS_BETTER as HIGHER_IS_BETTER
from adapterstudio.core.metrics import METRIC_LABELS as METRIC_LABELS
from adapterstudio.core.metrics import METRICS
from adapterstudio.core.settings import PRECISIONS

SPEC_VERSION = 1

TASKS = ("seq-cls", "regression", "causal-lm", "token-cls", "image-cls")
# The transfer-learning playbook, in order: baseline first, full fine-tune last.
STRATEGIES = ("head", "partial", "lora", "dora", "ia3", "loha", "lokr", "full")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
QUANTIZE = ("none", "4bit", "8bit")
RECIPES = ("auto", "fixed")
CLASS_WEIGHTS = ("none", "balanced")
HEAD_INITS = ("random", "probe")
CLASSIFICATION_TASKS = ("seq-cls", "token-cls", "image-cls")


@dataclass
class TrainingSpec:
    """All settings of one training run. ``None`` means "choose a default for this task and model"."""

    base: str = ""
    data: str = ""
    task: str = "seq-cls"
    strategy: str = "lora"
    name: str = ""
    # columns (None: guessed from the data)
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    messages_column: str | None = None
    image_column: str | None = None
    # splits
    validation: str | None = None
    test: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    # the recipe: "auto" decides epochs (a step budget), evaluation, early stopping, metric, learning rates,
    # class weights and head initialisation from the data and the base before training (see recipe.py) and
    # writes them here; "fixed" uses the same defaults for every data set. A setting given by the user wins.
    recipe: str = "auto"
    # optimisation
    epochs: float | None = None  # None: the recipe's step budget (fixed: 3)
    max_steps: int = 0
    lr: float | None = None
    head_lr: float | None = None  # the new head's learning rate (None: lr; the auto recipe sets a higher one)
    backbone_lr_ratio: float = 0.1  # partial: pretrained layers learn this much slower than the new head
    unfreeze_layers: int = 2  # partial: how many of the last layers to train
    batch_size: int | None = None
    grad_accum: int = 1
    max_length: int | None = None
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "auto"
    seed: int = 42
    # adapters
    lora_r: int = 8
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    quantize: str = "none"
    # loop
    eval_every: int | None = None  # optimizer steps between evaluations; 0: once per epoch (None: by the recipe)
    save_every: int = 0  # optimizer steps between checkpoints; 0: at evaluations and the end
    log_every: int = 1
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping; 0: never
    metric: str | None = None  # validation metric to select the best checkpoint (accuracy, macro_f1, loss, rmse ...)
    class_weights: str | None = None  # classification: "balanced" weighs the loss against class skew, or "none"
    # classification: "probe" starts the new head from the frozen-feature probe (linear probing, then
    # fine-tuning: Kumar et al., 2022), "random" from a random init
    head_init: str | None = None
    # classification: fit the frozen-feature baseline (logistic regression on the frozen base's features) on the
    # same split and report the fine-tune's gain over it
    baseline: bool = True
    # after the validation split chose the number of steps, train again from the base on training + validation
    # rows for that many epochs and export that model (a quarter more training data; twice the time; no validation score)
    refit: bool = False
    # batches of similar length (less padding, but a batch's labels follow its length where the two correlate).
    # None: auto: random batches when passes are split by a token budget (the split removes the padding
    # instead), length-grouped batches when a micro-batch runs whole
    group_by_length: bool | None = None
    # most tokens (padding included) run through the model at once; a longer micro-batch is split into
    # chunks whose gradients add up to the same step. None: auto (CPU 2048, GPU no cap); 0: no cap
    max_batch_tokens: int | None = None
    packing: bool = False  # causal LM: pack several texts into each row (no padding at all)
    allow: list[str] | None = None  # data checks to skip for deliberate data (see data.ALLOW_CHECKS)
    # hardware
    num_processes: int = 1
    cpu: bool = False
    accelerate_config: str | None = None
    version: int = SPEC_VERSION

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the training spec") -> TrainingSpec:
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} must be a mapping of setting: value.")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInput(f"{source} has unknown setting(s) {', '.join(unknown)}; see 'adapterstudio train --help'.")
        spec = cls()
        for key, value in data.items():
            setattr(spec, key, _coerce(key, value, getattr(cls(), key), known[key].type, source))
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainingSpec:
        import yaml

        p = Path(path).expanduser()
        if not p.is_file():
            raise InvalidInput(f"The spec file {p} does not exist.")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{p} is not valid YAML: {str(exc).splitlines()[0]}.") from None
        return cls.from_dict(data, str(p))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: Path) -> None:
        from adapterstudio.core.fsutil import atomic_write_text

        atomic_write_text(path, "# AdapterStudio training spec\n" + self.to_yaml())

    def replace(self, **changes: Any) -> TrainingSpec:
        d = self.to_dict()
        d.update(changes)
        return TrainingSpec.from_dict(d)

    # -- defaults ----------------------------------------------------------------
    def with_defaults(self, num_parameters: int | None = None) -> TrainingSpec:
        """Fill every ``None`` with a default that suits the task, strategy and model size."""
        s = self.replace()
        n = num_parameters or 0
        big = n > 1_000_000_000
        if s.epochs is None and not s.max_steps:
            s.epochs = 3.0
        if s.eval_every is None:
            s.eval_every = 0
        if s.early_stopping_patience is None:
            s.early_stopping_patience = 0
        if s.class_weights is None:
            s.class_weights = "none"
        if s.head_init is None:
            s.head_init = "random"
        if s.lr is None:
            s.lr = default_lr(s.task, s.strategy, n)
        if s.batch_size is None:
            s.batch_size = (4 if big else 8) if s.task == "causal-lm" else (8 if big else 16)
        if s.max_length is None:
            s.max_length = 512 if s.task == "causal-lm" else 128
        if s.lora_alpha is None:
            s.lora_alpha = 2 * s.lora_r
        if s.metric is None:
            s.metric = {"seq-cls": "accuracy", "token-cls": "accuracy", "image-cls": "accuracy",
                        "regression": "rmse", "causal-lm": "loss"}[s.task]
        if s.strategy == "dora":
            s.use_dora = True
        return s

    # -- validation --------------------------------------------------------------
    def validate(self) -> TrainingSpec:
        """Raise :class:`InvalidInput` with one sentence for the first bad setting."""
        def bad(msg: str) -> None:
            raise InvalidInput(f"Training spec: {msg}.")

        if not self.base:
            bad("a base model is required (--base NAME)")
        if not self.data:
            bad("a data file is required (--data FILE)")
        if self.task not in TASKS:
            bad(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.strategy not in STRATEGIES:
            bad(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.task == "causal-lm" and self.strategy in ("head", "partial"):
            bad(f"strategy {self.strategy!r} trains a new classification head, which a causal LM does not have; use lora, dora, ia3 or full")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.quantize not in QUANTIZE:
            bad(f"quantize must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}")
        if self.quantize != "none" and self.strategy not in ("lora", "dora"):
            bad("quantize (QLoRA) only works with the lora or dora strategy")
        if self.recipe not in RECIPES:
            bad(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        if self.epochs is not None and not (self.epochs > 0 or self.max_steps > 0):
            bad("epochs must be above 0 (or set max_steps)")
        if self.head_lr is not None and not (0 < self.head_lr < 1):
            bad(f"head_lr must be between 0 and 1, not {self.head_lr}")
        if self.class_weights is not None and self.class_weights not in CLASS_WEIGHTS:
            bad(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, not {self.class_weights!r}")
        if self.class_weights == "balanced" and self.task not in ("seq-cls", "image-cls"):
            bad("class_weights only applies to the seq-cls and image-cls tasks")
        if self.refit and self.task == "causal-lm":
            bad("refit applies to the classification and regression tasks")
        if self.head_init is not None and self.head_init not in HEAD_INITS:
            bad(f"head_init must be one of {', '.join(HEAD_INITS)}, not {self.head_init!r}")
        if self.max_steps < 0:
            bad("max_steps must be 0 (no limit) or more")
        if self.lr is not None and not (0 < self.lr < 1):
            bad(f"lr must be between 0 and 1, not {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            bad("batch_size must be at least 1")
        if self.grad_accum < 1:
            bad("grad_accum must be at least 1")
        if self.max_length is not None and self.max_length < 8:
            bad("max_length must be at least 8 tokens")
        if not (0 <= self.val_fraction < 1) or not (0 <= self.test_fraction < 1) or self.val_fraction + self.test_fraction >= 0.9:
            bad("val_fraction and test_fraction must be fractions that leave at least 10% for training")
        if not (0 <= self.warmup_ratio < 1):
            bad("warmup_ratio must be between 0 and 1")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            bad("weight_decay and max_grad_norm must not be negative")
        if not (0 < self.backbone_lr_ratio <= 1):
            bad("backbone_lr_ratio must be in (0, 1]")
        if self.unfreeze_layers < 1:
            bad("unfreeze_layers must be at least 1")
        if self.lora_r < 1:
            bad("lora_r must be at least 1")
        if not (0 <= self.lora_dropout < 1):
            bad("lora_dropout must be in [0, 1)")
        if self.num_processes < 1:
            bad("num_processes must be at least 1")
        if (self.early_stopping_patience or 0) < 0 or (self.eval_every or 0) < 0 or self.save_every < 0 or self.log_every < 1:
            bad("early_stopping_patience, eval_every and save_every must not be negative, log_every at least 1")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 0:
            bad("max_batch_tokens must be 0 (no cap) or a number of tokens")
        if self.packing and self.task != "causal-lm":
            bad("packing only applies to the causal-lm task")
        if self.allow:
            from adapterstudio.core.training.data import ALLOW_CHECKS

            unknown = [a for a in self.allow if a not in ALLOW_CHECKS]
            if unknown:
                bad(f"allow takes {', '.join(ALLOW_CHECKS)}, not {', '.join(map(repr, unknown))}")
        if self.metric is not None and self.metric not in METRICS:
            bad(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.metric in ("accuracy", "macro_f1") and self.task in ("causal-lm", "regression"):
            bad(f"metric {self.metric!r} does not apply to {self.task}; use loss" + (", rmse or r2" if self.task == "regression" else ""))
        if self.metric in ("rmse", "r2") and self.task != "regression":
            bad(f"metric {self.metric!r} only applies to regression")
        return self


# On a CPU the time per token is flat once a pass holds a few hundred tokens, while memory grows with every
# token in flight: cap the tokens per pass. On an accelerator a bigger pass is faster, so no cap by default.
CPU_BATCH_TOKENS = 2048


def batch_token_budget(spec: TrainingSpec, device_type: str) -> int:
    """Tokens (padding included) that one forward/backward pass may hold; 0 means no cap."""
    if spec.max_batch_tokens is not None:
        return int(spec.max_batch_tokens)
    return CPU_BATCH_TOKENS if device_type == "cpu" else 0


def group_by_length(spec: TrainingSpec, device_type: str) -> bool:
    """Whether micro-batches are grouped by length (see ``TrainingSpec.group_by_length``)."""
    if spec.group_by_length is not None:
        return bool(spec.group_by_length)
    return batch_token_budget(spec, device_type) == 0




def default_lr(task: str, strategy: str, num_parameters: int) -> float:
    """Learning rates that work in practice for each strategy (scaled down for big models)."""
    big = num_parameters > 1_000_000_000
    if strategy == "head":
        return 2e-3
    if strategy == "partial":
        return 1e-3  # the head's rate; pretrained layers get backbone_lr_ratio of it
    if strategy in ("lora", "dora", "loha", "lokr"):
        return (2e-4 if big else 5e-4) if task != "causal-lm" else (1e-4 if big else 2e-4)
    if strategy == "ia3":
        return 3e-3
    return 1e-5 if big else 5e-5  # full


def _coerce(key: str, value: Any, default: Any, typ: Any, source: str) -> Any:
    typ_s = str(typ)
    if value is None:
        if "None" in typ_s:
            return None
        raise InvalidInput(f"{source}: {key} must have a value.")
    try:
        if "list" in typ_s:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return value
        if "bool" in typ_s:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if typ_s.startswith("float") or "float" in typ_s:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if math.isnan(v):
                raise ValueError
            return v
        if "int" in typ_s:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if "str" in typ_s:
            return str(value)
    except (TypeError, ValueError):
        want = "a list of names" if "list" in typ_s else typ_s.replace(" | None", "")
        raise InvalidInput(f"{source}: {key} must be {want}, not {value!r}.") from None
    return value


@dataclass
class MemoryEstimate:
    """A rough "will it fit" estimate of peak training memory, in bytes."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    available: int | None
    device: str
    fits: bool | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate_memory(spec: TrainingSpec, config: dict[str, Any], num_parameters: int | None,
                    device: str = "cpu", available: int | None = None) -> MemoryEstimate:
    """Weights + gradients + AdamW state of the trainable part + activations (rule of thumb).

    Activations: about 34 bytes x sequence x hidden per layer and sample in 16-bit
    (Korthikanti et al., 2022), doubled in fp32; LoRA/head keep the same activations
    because the backward pass still runs through the backbone (except ``head``).
    """
    n = int(num_parameters or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 768)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 12)
    wbytes = 2 if spec.precision in ("bf16", "fp16") else 4
    weights = n * wbytes
    if spec.quantize == "4bit":
        weights = n // 2
    elif spec.quantize == "8bit":
        weights = n
    if spec.strategy == "full":
        trainable = n
    elif spec.strategy == "partial":
        trainable = int(n * min(1.0, spec.unfreeze_layers / max(layers, 1))) + hidden * 4
    elif spec.strategy == "head":
        trainable = hidden * hidden + hidden * 16
    else:
        trainable = 2 * spec.lora_r * hidden * 4 * layers
    grads = trainable * 4
    opt = trainable * 8 + (trainable * 4 if spec.strategy == "full" and wbytes == 2 else 0)
    seq = int(spec.max_length or 128)
    bs = int(spec.batch_size or 8)
    tokens = seq * bs
    budget = batch_token_budget(spec, "cpu" if device == "cpu" else "cuda")
    if budget:  # a longer micro-batch runs in chunks of at most this many tokens (at least one sequence)
        tokens = min(tokens, max(budget, seq))
    act_layers = 0 if spec.strategy == "head" else layers
    act = int(34 * tokens * hidden * max(act_layers, 1) * (2 if wbytes == 4 else 1))
    total = int((weights + grads + opt + act) * 1.2)  # 20% for allocator slack and buffers
    fits = None if available is None else total <= available
    notes = []
    if available is not None and not fits:
        notes.append(f"needs about {total / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is free on {device}; "
                     "lower max_batch_tokens, batch_size or max_length, or use lora instead of full")
    return MemoryEstimate(weights, grads, opt, act, total, available, device, fits, notes)
