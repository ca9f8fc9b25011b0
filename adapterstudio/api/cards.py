"""Model cards: ``README.md`` with YAML front matter, as the Hugging Face Hub reads them.

Helpers for providers and for the hub service; pure Python (PyYAML only).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from adapterstudio.core.peft_format import HUB_ID as HUB_ID  # re-exported: providers match repository ids with it

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def parse_card(text: str | None) -> tuple[dict[str, Any], str]:
    """(front matter as a dict, body). A card without front matter gives ``({}, text)``."""
    if not text:
        return {}, ""
    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        data = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}, text[m.end():]
    return (data if isinstance(data, dict) else {}), text[m.end():]


def render_card(metadata: dict[str, Any], body: str) -> str:
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()
    return f"---\n{front}\n---\n\n{body.lstrip()}"


def looks_like_local_path(value: str) -> bool:
    return (value.startswith(("/", "./", "../", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value) is not None
            or "\\" in value or value.count("/") > 1)


def card_errors(text: str) -> list[str]:
    """What the Hub's metadata validation would refuse in an adapter card, checked locally."""
    m = _FRONT.match(text or "")
    if not m:
        return ["the card has no YAML front matter (--- ... ---)"]
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        return [f"the card's YAML front matter does not parse: {str(exc).splitlines()[0]}"]
    if not isinstance(meta, dict):
        return ["the card's YAML front matter is not a mapping"]
    errors: list[str] = []
    bases = meta.get("base_model")
    for b in ([bases] if isinstance(bases, str) else bases or []):
        if not isinstance(b, str) or looks_like_local_path(b) or not (HUB_ID.match(b) or re.match(r"^[\w.-]+$", b)):
            errors.append(f"base_model must be a Hub model id (owner/name), not {b!r}")
    for key in ("tags", "datasets", "metrics"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            errors.append(f"{key} must be a list of strings")
    for d in meta.get("datasets") or []:
        if isinstance(d, str) and looks_like_local_path(d):
            errors.append(f"datasets must hold Hub dataset ids, not the local path {d!r}")
    for key in ("library_name", "pipeline_tag", "license"):
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            errors.append(f"{key} must be a string")
    return errors
