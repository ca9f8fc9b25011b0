"""Sharing use cases over the catalogue: push, pull, search, login, fetch a base.

Providers (plugins, see :mod:`adapterstudio.api`) move folders; this module decides
what goes into them and what comes out of them: it exports an adapter with a model card
generated from its record and lineage, validates the card before anything is uploaded,
and imports a pulled folder through :meth:`Library.import_adapter` (safetensors only
unless pickle is allowed, compatibility checked), so a failed pull leaves the catalogue
exactly as it was.

>>> from adapterstudio.services.library import open_library            # doctest: +SKIP
>>> from adapterstudio.services import hub
>>> lib = open_library()
>>> hub.push_adapter(lib, "sentiment-lora", "alice/minilm-sentiment-lora")
>>> hub.pull_adapter(lib, "bob/minilm-topics-lora", name="topics")
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapterstudio.api import ENTRY_POINT_GROUP, HubProvider, NetworkError, ProviderConfig, RemoteAdapter
from adapterstudio.api.cards import HUB_ID, card_errors, looks_like_local_path, parse_card, render_card
from adapterstudio.api.registry import ProviderEntry, discover, load_provider
from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import AlreadyExists, InvalidInput, NotFound, UserError, one_line
from adapterstudio.core.records import AdapterRecord
from adapterstudio.services import baseline

DEFAULT_PROVIDER = "huggingface"

# lineage task (training) and PEFT task_type -> the Hub's pipeline_tag
PIPELINE_BY_TASK = {
    "seq-cls": "text-classification", "regression": "text-classification", "causal-lm": "text-generation",
    "token-cls": "token-classification", "image-cls": "image-classification",
    "SEQ_CLS": "text-classification", "CAUSAL_LM": "text-generation", "TOKEN_CLS": "token-classification",
    "SEQ_2_SEQ_LM": "text2text-generation", "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
AUTO_CLASS_BY_PIPELINE = {
    "text-classification": "AutoModelForSequenceClassification", "text-generation": "AutoModelForCausalLM",
    "token-classification": "AutoModelForTokenClassification", "image-classification": "AutoModelForImageClassification",
    "text2text-generation": "AutoModelForSeq2SeqLM", "question-answering": "AutoModelForQuestionAnswering",
    "feature-extraction": "AutoModel",
}
_METRIC_SKIP = re.compile(r"(loss|runtime|per_second|epoch|step|samples|flos|time|lr|learning_rate)")


# -- providers ---------------------------------------------------------------------------
def list_providers(lib) -> list[ProviderEntry]:
    """Installed providers, broken ones with their error (never raises)."""
    return discover(ENTRY_POINT_GROUP, disabled=tuple(lib.settings.disabled_plugins))


def provider_config(lib) -> ProviderConfig:
    s = lib.settings
    return ProviderConfig(endpoint=s.hub_endpoint or None,
                          root=getattr(s, "shared_folder", "") or os.environ.get("ADAPTERSTUDIO_SHARED_FOLDER") or None)


def get_provider(lib, name: str | None = None) -> HubProvider:
    name = name or lib.settings.default_hub_provider or DEFAULT_PROVIDER
    return load_provider(name, provider_config(lib), disabled=tuple(lib.settings.disabled_plugins))


# -- model cards ---------------------------------------------------------------------------
def resolve_base_model(lib, adapter: AdapterRecord, override: str | None = None) -> str:
    """The Hub id of the adapter's base, for the card's ``base_model`` (never a local path)."""
    if override:
        if not HUB_ID.match(override) or looks_like_local_path(override):
            raise InvalidInput(f"--base-model must be a Hub model id of the form owner/name, not {override!r}.")
        return override
    if adapter.base:
        base = lib.catalogue.get_base(adapter.base)
        if base.hub_id and HUB_ID.match(base.hub_id):
            return base.hub_id
        raise InvalidInput(
            f"The base model {base.name!r} of adapter {adapter.name!r} has no Hub id, and a model card needs one "
            f"(a local path is not allowed): pass --base-model OWNER/NAME, or record it with "
            f"'adapterstudio base add {base.path or base.name} --hub-id OWNER/NAME'.")
    ref = adapter.base_ref or ""
    if HUB_ID.match(ref) and not looks_like_local_path(ref) and not Path(ref).exists():
        return ref
    raise InvalidInput(f"Adapter {adapter.name!r} has no base model with a Hub id in the catalogue; "
                       f"pass --base-model OWNER/NAME.")


def _dataset_id(lineage: dict[str, Any]) -> str | None:
    ds = lineage.get("dataset") or {}
    if not isinstance(ds, dict):
        return None
    for key in ("hub_id", "name"):
        v = ds.get(key)
        if isinstance(v, str) and HUB_ID.match(v) and not looks_like_local_path(v) and not Path(v).exists():
            return v
    return None


def _metrics(lineage: dict[str, Any]) -> dict[str, float]:
    m = lineage.get("metrics") or {}
    out: dict[str, float] = {}
    for section in ("test", "final"):
        values = m.get(section) or {}
        if not isinstance(values, dict):
            continue
        for k, v in values.items():
            name = re.sub(r"^(eval|test)_", "", str(k))
            if _METRIC_SKIP.search(name) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            out.setdefault(name, float(v))
    return out


def make_card(lib, adapter: AdapterRecord, base_model: str, repo_id: str | None = None) -> str:
    """The model card (README.md) for *adapter*: YAML front matter PEFT and the Hub understand, and usage."""
    lineage = adapter.lineage or {}
    task = lineage.get("task") or adapter.task_type
    pipeline = PIPELINE_BY_TASK.get(str(task)) if task else None
    peft_type = (adapter.peft_type or "").lower()
    tags = ["peft", *([peft_type] if peft_type else []), f"base_model:adapter:{base_model}", "transformers", "adapterstudio"]
    meta: dict[str, Any] = {"library_name": "peft", "base_model": base_model, "base_model_relation": "adapter",
                            "tags": list(dict.fromkeys(tags))}
    if pipeline:
        meta["pipeline_tag"] = pipeline
    dataset = _dataset_id(lineage)
    if dataset:
        meta["datasets"] = [dataset]
    metrics = _metrics(lineage)
    if metrics:
        meta["metrics"] = sorted(metrics)
    title = repo_id.split("/")[-1] if repo_id else adapter.name
    auto = AUTO_CLASS_BY_PIPELINE.get(pipeline or "", "AutoModel")
    labels = lineage.get("labels")
    load_extra = f", num_labels={len(labels)}" if isinstance(labels, list) and labels and auto.endswith("SequenceClassification") else ""
    lines = [f"# {title}", "",
             f"A {adapter.peft_type} adapter for [{base_model}](https://huggingface.co/{base_model})"
             + (f" ({pipeline})" if pipeline else "") + ", made with AdapterStudio.", ""]
    details = [("PEFT type", adapter.peft_type), ("Task type", adapter.task_type), ("Rank", adapter.rank),
               ("Target modules", ", ".join(adapter.target_modules) or None),
               ("Training strategy", lineage.get("strategy")), ("Labels", ", ".join(map(str, labels)) if isinstance(labels, list) else None),
               ("Dataset", dataset), ("Rows", (lineage.get("dataset") or {}).get("rows") if isinstance(lineage.get("dataset"), dict) else None),
               ("Seed", lineage.get("seed"))]
    lines += ["## Adapter", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in details if v not in (None, "")] + [""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())] + [""]
    compared = baseline.lines(lineage, lineage.get("strategy"))
    if compared:
        lines += ["## Against the frozen-feature baseline", "",
                  "Trained beside a logistic regression on the frozen base's features (same training split, "
                  "scored on the same held-out split):", ""] + [f"- {x}" for x in compared] + [""]
    rid = repo_id or f"OWNER/{adapter.name}"
    lines += ["## How to use", "", "With PEFT:", "", "```python",
              f"from transformers import {auto}", "from peft import PeftModel", "",
              f'base = {auto}.from_pretrained("{base_model}"{load_extra})',
              f'model = PeftModel.from_pretrained(base, "{rid}")', "```", "",
              "With AdapterStudio:", "", "```bash", f"adapterstudio base add {base_model}",
              f"adapterstudio hub pull {rid}", "```", ""]
    versions = lineage.get("library_versions")
    if isinstance(versions, dict) and versions:
        lines += ["## Framework versions", ""] + [f"- {k} {v}" for k, v in sorted(versions.items())] + [""]
    return render_card(meta, "\n".join(lines))


def validate_card(provider: HubProvider, text: str, what: str) -> None:
    errors = card_errors(text)
    if not errors and provider.capabilities.card_validation:
        errors = provider.validate_card(text)
    if errors:
        raise InvalidInput(f"The model card generated for {what} is not valid: {'; '.join(errors)}.")


# -- use cases -------------------------------------------------------------------------------
def push_adapter(lib, name: str, repo_id: str, *, provider: str | None = None, private: bool = False,
                 message: str | None = None, base_model: str | None = None,
                 ctx: TaskContext = NULL_CONTEXT) -> dict[str, Any]:
    """Publish catalogue adapter *name* as *repo_id* (created when missing; else a new revision)."""
    if not HUB_ID.match(repo_id or ""):
        raise InvalidInput(f"{repo_id!r} is not a repository id of the form owner/name.")
    adapter = lib.catalogue.get_adapter(name)
    base_id = resolve_base_model(lib, adapter, base_model)
    prov = get_provider(lib, provider)
    card = make_card(lib, adapter, base_id, repo_id)
    validate_card(prov, card, f"adapter {name!r}")
    with tempfile.TemporaryDirectory(prefix="adapterstudio-push-") as tmp:
        folder = lib.export_adapter(name, Path(tmp) / "adapter", ctx)
        (folder / "README.md").write_text(card, encoding="utf-8")
        result = prov.push(folder, repo_id, private=private, message=message or f"Upload {name} with AdapterStudio", ctx=ctx)
    return {"adapter": name, "provider": prov.name, "base_model": base_id, **result.to_json()}


def _staging_dir(lib, provider: str, repo_id: str, revision: str | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "--", f"{provider}--{repo_id}--{revision or 'main'}")
    return lib.root / "downloads" / safe


def pull_adapter(lib, repo_id: str, *, revision: str | None = None, name: str | None = None,
                 provider: str | None = None, allow_pickle: bool | None = None,
                 ctx: TaskContext = NULL_CONTEXT) -> dict[str, Any]:
    """Download *repo_id* (safetensors only unless pickle is allowed), verify it, and import it.

    The download is staged under ``<library>/downloads``; when the network breaks off, the
    partial files stay there (hidden) so running the same pull again resumes. The catalogue
    changes only once the whole adapter is verified and passes the compatibility check.
    """
    if not HUB_ID.match(repo_id or ""):
        raise InvalidInput(f"{repo_id!r} is not a repository id of the form owner/name.")
    allow_pickle = lib.settings.allow_pickle if allow_pickle is None else allow_pickle
    name = name or repo_id.split("/", 1)[1]
    if lib.catalogue.find_adapter(name) is not None:
        raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; choose another name with --name.")
    prov = get_provider(lib, provider)
    staging = _staging_dir(lib, prov.name, repo_id, revision)
    if staging.exists():
        for p in staging.iterdir():  # visible leftovers of an older, finished attempt
            if not p.name.startswith("."):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    keep_partial = False
    try:
        result = prov.pull(repo_id, staging, revision=revision, allow_pickle=allow_pickle, ctx=ctx)
        readme = staging / "README.md"
        meta, _ = parse_card(readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else None)
        base_model = meta.get("base_model")
        base_model = base_model[0] if isinstance(base_model, list) and base_model else base_model
        base_rec = lib.catalogue.match_base(base_model) if isinstance(base_model, str) else None
        rec = lib.import_adapter(staging, name, base=base_rec.name if base_rec else None, allow_pickle=allow_pickle,
                                 source=f"hub:{prov.name}", source_ref=f"{repo_id}@{result.revision}", ctx=ctx)
    except NetworkError:
        keep_partial = True
        raise
    finally:
        if not keep_partial:
            shutil.rmtree(staging, ignore_errors=True)
    out: dict[str, Any] = {"adapter": rec.name, "id": repo_id, "revision": result.revision, "provider": prov.name,
                           "base": rec.base, "base_model": base_model, "base_missing": rec.base is None,
                           "compatible": rec.compatible, "skipped": result.skipped}
    if rec.base is None:
        wanted_base = base_model if isinstance(base_model, str) else rec.base_ref
        out["hint"] = (f"Its base model {wanted_base} is not in the catalogue; add it with "
                       f"'adapterstudio base add {wanted_base}' (then 'adapterstudio base fetch {wanted_base}' to download it).")
    return out


def search(lib, query: str = "", *, base: str | None = None, provider: str | None = None, author: str | None = None,
           limit: int = 50) -> list[RemoteAdapter]:
    """Remote adapters matching *query*; *base* (a catalogue name or a Hub id) lists the adapters of that base."""
    base_id = None
    if base:
        rec = lib.catalogue.find_base(base)
        if rec is not None:
            if not rec.hub_id:
                raise InvalidInput(f"Base model {base!r} has no Hub id to search by; record one with "
                                   f"'adapterstudio base add {rec.path or base} --hub-id OWNER/NAME'.")
            base_id = rec.hub_id
        elif HUB_ID.match(base):
            base_id = base
        else:
            raise NotFound(f"There is no base model named {base!r} in the catalogue (and it is not a Hub id).")
    return get_provider(lib, provider).search(query, base_model=base_id, author=author, limit=limit)


def show(lib, repo_id: str, *, revision: str | None = None, provider: str | None = None):
    return get_provider(lib, provider).show(repo_id, revision)


def login(lib, token: str, *, provider: str | None = None):
    prov = get_provider(lib, provider)
    if not prov.capabilities.login:
        raise UserError(f"The {prov.display_name} provider has no login.")
    return prov.login(token)


def logout(lib, *, provider: str | None = None) -> None:
    get_provider(lib, provider).logout()


def whoami(lib, *, provider: str | None = None):
    return get_provider(lib, provider).auth_status()


# -- bases -----------------------------------------------------------------------------------
BASE_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


def fetch_base(lib, name: str, *, revision: str | None = None, ctx: TaskContext = NULL_CONTEXT):
    """Download a base registered by Hub id (safetensors, configs, tokenizer files) and complete its record."""
    from adapterstudio.core.model_info import inspect_model_folder
    from adapterstudio.services.library import hash_model_folder

    base = lib.catalogue.get_base(name)
    if not base.hub_id:
        raise InvalidInput(f"Base model {name!r} has no Hub id to download; it is a local folder ({base.path}).")
    import huggingface_hub
    import huggingface_hub.errors

    endpoint = lib.settings.hub_endpoint or os.environ.get("HF_ENDPOINT") or None
    patterns = [p for p in BASE_PATTERNS if p != "*.py" or lib.settings.trust_remote_code]
    ctx.progress(0, None, f"downloading {base.hub_id}")
    try:
        api = huggingface_hub.HfApi(endpoint=endpoint, library_name="adapterstudio")
        info = api.model_info(base.hub_id, revision=revision or base.revision, files_metadata=True)
        names = [s.rfilename for s in info.siblings or []]
        if not any(n.endswith(".safetensors") for n in names):
            raise InvalidInput(f"{base.hub_id} has no safetensors weights; AdapterStudio does not download pickle "
                               f"weights for bases (convert it or download it yourself).")
        folder = Path(api.snapshot_download(base.hub_id, revision=info.sha, allow_patterns=patterns))
    except UserError:
        raise
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise NotFound(f"There is no model {base.hub_id} on {endpoint or huggingface_hub.constants.ENDPOINT} "
                       f"(or it is gated/private and you are not logged in).") from None
    except Exception as exc:  # noqa: BLE001  (huggingface_hub/requests raise many types: one NetworkError sentence)
        raise NetworkError(f"Could not download {base.hub_id}: {one_line(exc)}.") from None
    info_local = inspect_model_folder(folder, allow_pickle=False)
    content_hash = hash_model_folder(folder, ctx)
    rec = lib.catalogue.update_base(
        name, path=str(folder), source="hf-cache", revision=info.sha, content_hash=content_hash,
        architecture=info_local.architecture, model_type=info_local.model_type,
        num_parameters=info_local.num_parameters, dtype=info_local.dtype, size_bytes=info_local.size_bytes,
        target_modules=info_local.target_modules, module_shapes=info_local.module_shapes, config=info_local.config)
    lib._relink_orphans(rec)
    return lib.catalogue.get_base(name)
