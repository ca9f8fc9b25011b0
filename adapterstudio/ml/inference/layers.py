"""What the session does to PEFT's adapter layers: find them, point them at adapters, take them out.

Everything here goes through PEFT's public API except :func:`point_layers`, the hot
path of a switch, whose reasons are in its docstring.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Silence the FutureWarning that wrapping a model in ``PeftModel`` raises, around that call only.

    ``PeftModel.__init__`` (peft 0.21.2) reads transformers' deprecated
    ``is_gradient_checkpointing``, which warns on every wrap; nothing the caller can change.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def adapter_layers(peft_model: Any) -> tuple[list[Any], list[Any]]:
    """The tuner layers (LoRA, IA3... layers) and auxiliary wrappers (``modules_to_save`` heads) of a model."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if peft_model is None:
        return [], []
    modules = list(peft_model.modules())
    return ([m for m in modules if isinstance(m, BaseTunerLayer)],
            [m for m in modules if isinstance(m, AuxiliaryTrainingWrapper)])


def point_layers(tuner_layers: Sequence[Any], names: list[str] | None, *, enabled: bool) -> None:
    """Make *names* the active adapters of every tuner layer (None: keep them), enabled or disabled.

    The one place that writes PEFT's private layer state, on purpose (checked against peft
    0.21.2). PEFT's public verbs do more than a switch needs: ``BaseTunerLayer.set_adapter``
    (and the model-level ``set_adapter`` built on it) sets ``requires_grad`` on every
    parameter of every adapter of every layer, O(layers x adapters) on each switch (17.6 ms
    against 5.5 us here, for 8 rank-16 slots on 32 layers, CPU), and
    ``enable_adapters(True)`` makes the active adapter trainable, which also changes what
    ``torch.compile`` guards on. No public API activates adapters, or disables all of them,
    with ``requires_grad`` left alone. So this writes the two attributes that those verbs
    write, ``_active_adapter`` and ``_disable_adapters``, and nothing else; into the
    instance dict, as ``nn.Module.__setattr__`` costs more than the rest of a switch.
    """
    disabled = not enabled
    for layer in tuner_layers:
        d = layer.__dict__
        if names is not None:
            d["_active_adapter"] = names
        d["_disable_adapters"] = disabled


def point_heads(aux_wrappers: Sequence[Any], names: Sequence[str]) -> None:
    """Activate on each auxiliary wrapper (a saved head, trainable tokens) the first of *names* it holds, or none."""
    for w in aux_wrappers:
        held = getattr(w, "modules_to_save", None)
        if held is None:  # trainable tokens: the adapters are the token layer's
            held = getattr(getattr(w, "token_adapter", None), "trainable_tokens_delta", {})
        n = next((s for s in names if s in held), None)
        w.set_adapter(n if n is not None else [], inference_mode=True)


def strip_adapter_layers(model: torch.nn.Module) -> None:
    """Put every wrapped module of *model* back (base layers, original heads); base weights are untouched.

    Not ``unload()``: PEFT's unload keeps the active adapter's copy of a saved head, where
    the session wants the base's own head back.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for _mod_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, AuxiliaryTrainingWrapper):
                setattr(module, child_name, child.original_module)
            elif isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())
    if hasattr(model, "peft_config"):
        try:
            delattr(model, "peft_config")
        except AttributeError:
            pass
