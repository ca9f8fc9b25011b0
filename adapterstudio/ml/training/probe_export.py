"""Turn a run's saved frozen-feature probe into a ``head`` adapter (PEFT folder) in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_probe_head(spec: Any, base_path: str, labels: list[str] | None, head_file: Path, out: Path) -> Path:
    """Load the base with a new head, put the probe's head weights in it, and save it as a head adapter."""
    import shutil

    from safetensors.torch import load_file

    from adapterstudio.core.errors import Incompatible
    from adapterstudio.ml.training.models import apply_strategy, head_modules, load_base_model

    model = load_base_model(spec, base_path, labels)
    tensors = load_file(str(head_file))
    for h in head_modules(model, spec.task):
        mod = getattr(model, h)
        sd = {k[len(h) + 1:]: v for k, v in tensors.items() if k.startswith(h + ".")}
        try:
            mod.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise Incompatible(f"{head_file} does not fit the head of {base_path} ({str(exc).splitlines()[0]}).") from None
    pm, _info = apply_strategy(model, spec.replace(strategy="head"))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pm.save_pretrained(str(tmp), safe_serialization=True)
    spec.save(tmp / "training_spec.yaml")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
