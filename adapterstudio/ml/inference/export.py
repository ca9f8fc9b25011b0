"""Exports: a merged full model folder, and a GGUF LoRA for llama.cpp / Ollama (no merge).

GGUF LoRA conventions follow llama.cpp's ``convert_lora_to_gguf.py``: ``general.type``
= ``adapter``, ``adapter.type`` = ``lora``, ``adapter.lora.alpha``; one ``<name>.lora_a``
and ``<name>.lora_b`` per adapted weight, named as llama.cpp names the base tensor
(``blk.N.attn_q.weight``...), in torch (out, in) order which GGUF stores reversed; for
the llama architecture the q/k rows are permuted as llama.cpp does for its rotary
layout. llama.cpp scales by alpha / rank (rank read from the tensors), so per-module
scalings (rsLoRA, alpha/rank patterns) are folded into lora_b.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.fsutil import atomic_write_text, new_output_folder, publish_folder
from adapterstudio.core.peft_format import TASK_CLASSES
from adapterstudio.ml.inference.adapters import describe_adapter
from adapterstudio.ml.inference.devices import resolve_dtype
from adapterstudio.ml.inference.layers import quiet_peft_wrap
from adapterstudio.ml.inference.weights import read_safetensors

# HF architecture -> (GGUF architecture name, permute q/k like llama.cpp does)
GGUF_ARCHS = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.txt", "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja")


def merge_to_folder(base_path: str | Path, adapters: list[tuple[str, str | Path, float]], dest: str | Path, *,
                    task: str | None, num_labels: int | None = None, labels: list[str] | None = None,
                    chat_template: str | None = None, dtype: str = "auto",
                    ctx: TaskContext = NULL_CONTEXT) -> Path:
    """Merge one adapter, or a weighted sum of LoRA adapters, into the base; save a full model folder."""
    import transformers
    from peft import PeftModel

    base_path = Path(base_path)
    out, tmp = new_output_folder(dest)
    try:
        entries = [describe_adapter(n, p) for n, p, _ in adapters]
        if len(entries) > 1 or any(w != 1.0 for _, _, w in adapters):
            for e in entries:
                if e.peft_type != "LORA" or e.config.get("use_dora"):
                    raise InvalidInput(f"Adapter {e.name!r} is {e.peft_type}; only plain LoRA adapters can be "
                                       "merged as a weighted blend.")
        task = task or "CAUSAL_LM"
        cls = getattr(transformers, TASK_CLASSES.get(task, "AutoModel"))
        kwargs: dict[str, Any] = {"num_labels": num_labels} if num_labels else {}
        if labels and num_labels == len(labels):
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {v: i for i, v in enumerate(labels)}
        ctx.progress(0, 4, "loading base")
        torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            model = cls.from_pretrained(str(base_path), dtype=torch_dtype, use_safetensors=True,
                                        trust_remote_code=False, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        ctx.check_cancelled()
        ctx.progress(1, 4, "loading adapters")
        names = []
        peft_model = None
        for i, (_name, path, _w) in enumerate(adapters):
            aname = f"a{i}"
            if peft_model is None:
                with quiet_peft_wrap():
                    peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=aname, use_safetensors=True)
            else:
                peft_model.load_adapter(str(path), adapter_name=aname, use_safetensors=True)
            names.append(aname)
        assert peft_model is not None
        from peft.tuners.lora import LoraLayer

        for (_name, _p, w), aname in zip(adapters, names, strict=True):
            if w != 1.0:
                for m in peft_model.modules():
                    if isinstance(m, LoraLayer) and aname in m.scaling:
                        m.scaling[aname] = m.scaling[aname] * float(w)
        ctx.check_cancelled()
        ctx.progress(2, 4, "merging")
        tuner: Any = peft_model.base_model
        merged = tuner.merge_and_unload(adapter_names=names) if len(names) > 1 else peft_model.merge_and_unload()
        ctx.progress(3, 4, "saving")
        try:
            merged.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            transformers.utils.logging.enable_progress_bar()
        for f in TOKENIZER_FILES:
            if (base_path / f).is_file():
                shutil.copy2(base_path / f, tmp / f)
        if chat_template:
            atomic_write_text(tmp / "chat_template.jinja", chat_template)
        atomic_write_text(tmp / "adapterstudio_merge.json", json.dumps(
            {"base": str(base_path), "adapters": [{"name": n, "weight": w} for n, _, w in adapters]}, indent=2) + "\n")
        publish_folder(tmp, out)
        ctx.progress(4, 4, "done")
        return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder rows from HF's rotary layout to llama.cpp's (done on lora_b, the output side)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def lora_to_gguf(adapter_path: Path, base_path: Path, dest: Path, *, adapter_name: str, base_ref: str,
                 chat_template: str | None = None, outtype: str = "f32",
                 ctx: TaskContext = NULL_CONTEXT) -> dict[str, Any]:
    """Write ``<name>.gguf`` (a GGUF LoRA) and a ``Modelfile`` with an ``ADAPTER`` line into *dest*."""
    import gguf
    import numpy as np

    cfg_file = base_path / "config.json"
    try:
        hparams = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInput(f"{cfg_file} is missing or not valid JSON; the export needs the base's config.") from None
    arch_hf = (hparams.get("architectures") or [""])[0]
    if arch_hf not in GGUF_ARCHS:
        raise InvalidInput(f"GGUF LoRA export supports {', '.join(sorted(GGUF_ARCHS))} bases; "
                           f"{arch_hf or 'this base'} is not one of them (use --merged instead).")
    arch, permute = GGUF_ARCHS[arch_hf]
    e = describe_adapter(adapter_name, adapter_path)
    if e.peft_type != "LORA" or e.config.get("use_dora") or not e.fast:
        raise InvalidInput(f"Adapter {adapter_name!r} is not a plain LoRA on linear layers "
                           f"({e.peft_type}{', DoRA' if e.config.get('use_dora') else ''}); llama.cpp loads only those.")
    if e.task_type not in (None, "CAUSAL_LM"):
        raise InvalidInput(f"Adapter {adapter_name!r} is a {e.task_type} adapter; llama.cpp runs causal language models.")
    if e.other_keys:
        raise InvalidInput(f"Adapter {adapter_name!r} also saves whole modules ({', '.join(e.other_keys[:2])}); "
                           "llama.cpp LoRA adapters cannot carry them (use --merged instead).")
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    n_layers = int(hparams.get("num_hidden_layers", 0))
    n_head = int(hparams.get("num_attention_heads", 0))
    n_kv = int(hparams.get("num_key_value_heads") or n_head)
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    tensors = read_safetensors(e.weights, e.header)
    alpha = float(e.config.get("lora_alpha", 8))
    qtype = {"f32": (np.float32, gguf.GGMLQuantizationType.F32),
             "f16": (np.float16, gguf.GGMLQuantizationType.F16)}.get(outtype)
    if qtype is None:
        raise InvalidInput(f"GGUF outtype must be f32 or f16, not {outtype!r}.")
    out, tmp = new_output_folder(dest)
    try:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in adapter_name) or "adapter"
        gguf_path = tmp / f"{safe}.gguf"
        w = gguf.GGUFWriter(str(gguf_path), arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(adapter_name)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        names = []
        mods = sorted(e.lora_modules)
        for i, mod in enumerate(mods):
            ctx.check_cancelled()
            ctx.progress(i, len(mods), f"converting {mod}")
            a = tensors[f"base_model.model.{mod}.lora_A.weight"].float()
            b = tensors[f"base_model.model.{mod}.lora_B.weight"].float()
            r = a.shape[0]
            # llama.cpp applies alpha / r; fold anything else (rsLoRA, patterns) into lora_b
            b = b * (e.scalings[mod] / (alpha / r))
            hf_name = mod + ".weight"
            name = tmap.get_name(hf_name, try_suffixes=(".weight",))
            if name is None:
                raise InvalidInput(f"llama.cpp has no tensor for {mod!r} in a {arch} model; cannot export this adapter.")
            if permute and mod.endswith("self_attn.q_proj"):
                b = _permute_rows(b, n_head)
            elif permute and mod.endswith("self_attn.k_proj"):
                b = _permute_rows(b, n_kv)
            dt, qt = qtype
            w.add_tensor(name + ".lora_a", np.ascontiguousarray(a.numpy().astype(dt)), raw_dtype=qt)
            w.add_tensor(name + ".lora_b", np.ascontiguousarray(b.numpy().astype(dt)), raw_dtype=qt)
            names += [name + ".lora_a", name + ".lora_b"]
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        lines = [
            "# Ollama Modelfile written by AdapterStudio.",
            f"# FROM must name a GGUF of the base this adapter was trained on ({base_ref});",
            "# convert it with llama.cpp's convert_hf_to_gguf.py or pull it, then edit the line below.",
            f"FROM {base_ref}",
            f"ADAPTER ./{gguf_path.name}",
        ]
        if chat_template:
            lines.append("# The adapter was trained with this Jinja chat template (Ollama uses Go templates):")
            lines += ["# " + ln for ln in chat_template.splitlines()]
        atomic_write_text(tmp / "Modelfile", "\n".join(lines) + "\n")
        publish_folder(tmp, out)
        ctx.progress(len(mods), len(mods), "done")
        return {"gguf": str(out / gguf_path.name), "modelfile": str(out / "Modelfile"), "architecture": arch,
                "tensors": names, "alpha": alpha, "rank": e.rank}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
