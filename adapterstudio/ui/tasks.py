"""Adapters from service calls to the runner's ``fn(ctx, ...)`` shape. No logic lives here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def open_library(ctx, home: str | None = None):
    from adapterstudio.services.library import open_library as _open

    ctx.progress(0, 1, "opening the library")
    lib = _open(home)
    lib.catalogue.count_adapters()  # touch the database on this thread
    ctx.progress(1, 1, "library open")
    return lib


def snapshot(ctx, lib) -> dict[str, Any]:
    """Everything the Library page lists: bases, adapters (without files/lineage), tags."""
    return {"bases": lib.list_bases(), "adapters": lib.list_adapters(), "tags": lib.catalogue.list_tags()}


def adapter_details(ctx, lib, name: str) -> dict[str, Any]:
    """The full record (files, lineage), its config and its model card text."""
    from pathlib import Path

    rec = lib.catalogue.get_adapter(name)
    card = ""
    readme = Path(rec.path) / "README.md"
    if readme.is_file():
        card = readme.read_text(encoding="utf-8", errors="replace")[:200_000]
    return {"record": rec, "config": lib.catalogue.adapter_config(name), "card": card,
            "run_series": run_series(lib, rec.run_id) if rec.run_id else {}}


def run_series(lib, run_id: str) -> dict[str, tuple[list[float], list[float]]]:
    """The curves of a training run from its events (every logged step), when the run is still on disk."""
    from adapterstudio.core import events as run_events
    from adapterstudio.core.errors import NotFound

    try:
        from adapterstudio.services import training
    except ImportError:
        return {}
    try:
        run = training.runs(lib).get(run_id)
    except NotFound:  # the run was removed: the lineage's history is all there is
        return {}
    return run_events.series(run.run_dir)


def base_details(ctx, lib, name: str) -> dict[str, Any]:
    rec = lib.catalogue.get_base(name)
    _shapes, config = lib.catalogue.base_details(name)
    adapters = lib.list_adapters(base=name)
    return {"record": rec, "config": config, "adapters": adapters}


def check_adapter(ctx, lib, name: str, base: str | None = None):
    return lib.check_adapter(name, base)


def import_adapter(ctx, lib, path: str, name: str | None = None, **kwargs: Any):
    return lib.import_adapter(path, name, ctx=ctx, **kwargs)


def add_base(ctx, lib, source: str, name: str | None = None, **kwargs: Any):
    return lib.add_base(source, name, ctx=ctx, **kwargs)


def scan_hf_cache(ctx, lib, cache_dir: str | None = None):
    return lib.scan_hf_cache(cache_dir, ctx=ctx)


def export_adapter(ctx, lib, name: str, dest: str):
    return lib.export_adapter(name, dest, ctx=ctx)


def rename_adapter(ctx, lib, name: str, new_name: str):
    return lib.rename_adapter(name, new_name)


def tag_adapter(ctx, lib, name: str, add: Sequence[str] = (), remove: Sequence[str] = ()):
    return lib.tag_adapter(name, add=list(add), remove=list(remove))


def set_notes(ctx, lib, name: str, notes: str):
    return lib.set_notes(name, notes)


def remove_adapter(ctx, lib, name: str):
    return lib.remove_adapter(name)


def remove_base(ctx, lib, name: str):
    return lib.remove_base(name)


def save_settings(ctx, lib, settings) -> Any:
    from adapterstudio.core.settings import save_settings as _save

    settings.validate()
    _save(settings)
    lib.settings = settings
    return settings


def self_check(ctx, lib) -> list:
    """The first-run self-check: the checks of `adapterstudio doctor` for this library."""
    from adapterstudio.services.doctor import run_checks

    return run_checks(lib.root)
