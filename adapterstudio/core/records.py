"""Plain records the catalogue hands out. JSON keys are the field names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class BaseRecord:
    id: int
    name: str
    source: str  # "local" | "hf-cache" | "hub"
    path: str | None
    hub_id: str | None
    revision: str | None
    content_hash: str | None
    architecture: str | None
    model_type: str | None
    num_parameters: int | None
    dtype: str | None
    size_bytes: int | None
    target_modules: list[str]
    notes: str
    created_at: float
    available: bool = True  # False for a Hub id not fetched yet, or a folder that vanished

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AdapterFile:
    relpath: str
    sha256: str
    size: int


@dataclass(slots=True)
class AdapterRecord:
    id: int
    uid: str
    name: str
    base: str | None  # the catalogue name of its base, None when the base is missing
    base_ref: str | None  # what the adapter itself names as its base
    peft_type: str
    task_type: str | None
    rank: int | None
    target_modules: list[str]
    size_bytes: int
    compatible: bool | None
    compat_reason: str
    path: str
    tags: list[str]
    notes: str
    source: str
    source_ref: str | None
    run_id: str | None
    parent: str | None
    weights_format: str
    created_at: float
    updated_at: float
    lineage: dict[str, Any] = field(default_factory=dict)
    files: list[AdapterFile] = field(default_factory=list)

    @property
    def base_missing(self) -> bool:
        return self.base is None

    def to_json(self, full: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["base_missing"] = self.base_missing
        if not full:
            d.pop("lineage", None)
            d.pop("files", None)
        return d
