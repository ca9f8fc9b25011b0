"""The library use cases: register bases, import/export adapters, check compatibility.

Everything takes a :class:`~adapterstudio.core.context.TaskContext` where it may take a
while (hashing, copying), and validates all input before it writes anything, so a
refused input leaves the catalogue exactly as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterstudio.core.catalogue import Catalogue
from adapterstudio.core.compat import CompatReport, check_compatibility
from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import AlreadyExists, Incompatible, InvalidInput, NotFound
from adapterstudio.core.fsutil import (
    copy_atomic,
    iter_files,
    new_output_folder,
    publish_folder,
    require_space,
    sha256_file,
)
from adapterstudio.core.model_info import inspect_model_folder
from adapterstudio.core.names import validate_name, validate_notes, validate_tag
from adapterstudio.core.peft_format import HUB_ID, AdapterConfig, find_weights, is_pickle, read_adapter_config
from adapterstudio.core.records import AdapterRecord, BaseRecord
from adapterstudio.core.safetensors_header import read_header
from adapterstudio.core.settings import Settings, load_settings

# Key in a base's module shapes recording that loaded-model names were added already.
_LOADED_NAMES_MARK = "__loaded_module_names__"

log = logging.getLogger(__name__)

_check_name = validate_name  # the one rule for names lives in core.names


@dataclass
class Library:
    """An opened library: settings plus the catalogue. The entry point of the Python API.

    >>> lib = open_library()                       # doctest: +SKIP
    >>> lib.add_base("/models/MiniLM", name="minilm")
    >>> lib.import_adapter("./my-lora")
    """

    settings: Settings
    catalogue: Catalogue

    @property
    def root(self) -> Path:
        return self.catalogue.root

    @property
    def readonly(self) -> bool:
        """Whether the library could only be opened for reading (no write permission, or a full disk)."""
        return self.catalogue.readonly

    def _require_writable(self) -> None:
        self.catalogue.require_writable()

    # -- bases -----------------------------------------------------------------
    def add_base(
        self, source: str | os.PathLike[str], name: str | None = None, *, compute_hash: bool = True,
        hub_id: str | None = None, ctx: TaskContext = NULL_CONTEXT,
    ) -> BaseRecord:
        """Register a local model folder, or a Hub id (found in the HF cache, else to fetch later).

        *hub_id* records which Hub repository a local folder is a copy of; sharing uses it
        as the adapter card's ``base_model`` (a local path never goes on a card).
        """
        self._require_writable()  # before hashing, which can take minutes
        src = str(source)
        path = Path(src).expanduser()
        if hub_id is not None and not HUB_ID.match(hub_id):
            raise InvalidInput(f"{hub_id!r} is not a Hub id of the form owner/name.")
        if path.exists():
            return self._add_local_base(path.resolve(), name, compute_hash, ctx, hub_id=hub_id)
        if HUB_ID.match(src) and not src.startswith("."):
            cached = find_in_hf_cache(src)
            if cached is not None:
                snapshot, revision = cached
                return self._add_local_base(snapshot, name or src, False, ctx, source="hf-cache", hub_id=src, revision=revision)
            name = _check_name(name or src, "base model")
            return self.catalogue.add_base(name=name, source="hub", hub_id=src, notes="")
        raise InvalidInput(f"{src} does not exist (and is not a Hub id of the form owner/name).")

    def _add_local_base(
        self, path: Path, name: str | None, compute_hash: bool, ctx: TaskContext, *, source: str = "local",
        hub_id: str | None = None, revision: str | None = None,
    ) -> BaseRecord:
        info = inspect_model_folder(path, allow_pickle=self.settings.allow_pickle)
        name = _check_name(name or _default_base_name(path, info.config), "base model")
        if self.catalogue.find_base(name) is not None:
            raise AlreadyExists(f"A base model named {name!r} is already in the catalogue; choose another name with --name.")
        content_hash = None
        if compute_hash:
            content_hash = hash_model_folder(path, ctx)
        base = self.catalogue.add_base(
            name=name, source=source, path=str(path), hub_id=hub_id,
            revision=revision, content_hash=content_hash, architecture=info.architecture,
            model_type=info.model_type, num_parameters=info.num_parameters, dtype=info.dtype,
            size_bytes=info.size_bytes, target_modules=info.target_modules, module_shapes=info.module_shapes,
            config=info.config,
        )
        self._relink_orphans(base)
        return base

    def _relink_orphans(self, base: BaseRecord) -> None:
        """Adapters kept as 'base missing' that name this base get linked and checked."""
        for a in self.catalogue.list_adapters(base_missing=True):
            match = self.catalogue.match_base(a.base_ref)
            if match is not None and match.id == base.id:
                report = self.check_adapter(a.name, base.name)
                self.catalogue.update_adapter(a.name, base_id=base.id, compatible=report.compatible,
                                              compat_reason=report.reason)

    def scan_hf_cache(self, cache_dir: str | os.PathLike[str] | None = None, ctx: TaskContext = NULL_CONTEXT) -> dict[str, list]:
        """Register every model in the Hugging Face cache (in place: nothing is copied)."""
        added, skipped = [], []
        repos = list(iter_hf_cache_models(cache_dir))
        for i, (repo_id, snapshot, revision) in enumerate(repos):
            ctx.progress(i, len(repos), f"scanning {repo_id}")
            ctx.check_cancelled()
            existing = [b for b in self.catalogue.list_bases() if b.path == str(snapshot) or b.name == repo_id]
            if existing:
                skipped.append({"name": repo_id, "reason": f"already registered as {existing[0].name!r}"})
                continue
            try:
                b = self._add_local_base(snapshot, repo_id, False, ctx, source="hf-cache", hub_id=repo_id, revision=revision)
                added.append(b)
            except InvalidInput as exc:
                skipped.append({"name": repo_id, "reason": str(exc)})
        ctx.progress(len(repos), len(repos), "done")
        return {"added": added, "skipped": skipped}

    def remove_base(self, name: str) -> BaseRecord:
        return self.catalogue.remove_base(name)

    # -- adapters -------------------------------------------------------------
    def import_adapter(
        self, path: str | os.PathLike[str], name: str | None = None, *, base: str | None = None,
        allow_pickle: bool | None = None, tags: list[str] | tuple[str, ...] = (), notes: str = "",
        source: str = "import", source_ref: str | None = None, run_id: str | None = None,
        parent: str | None = None, lineage: dict[str, Any] | None = None, ctx: TaskContext = NULL_CONTEXT,
    ) -> AdapterRecord:
        """Import a PEFT adapter folder. Validates everything before writing anything."""
        allow_pickle = self.settings.allow_pickle if allow_pickle is None else allow_pickle
        folder = Path(path).expanduser()
        if not folder.exists():
            raise InvalidInput(f"{folder} does not exist.")
        if folder.is_file():
            if folder.name == "adapter_config.json" or folder.suffix == ".safetensors":
                folder = folder.parent
            else:
                raise InvalidInput(f"{folder} is a file; an adapter is a folder with adapter_config.json and adapter_model.safetensors.")
        folder = folder.resolve()
        cfg = read_adapter_config(folder)
        weights = find_weights(folder, allow_pickle)
        tensors = read_header(weights).tensors if weights.suffix == ".safetensors" else None
        name = _check_name(name or folder.name, "adapter")
        tags = [validate_tag(t) for t in tags if t.strip()]
        notes = validate_notes(notes)
        if self.catalogue.find_adapter(name) is not None:
            raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; choose another name with --name.")
        parent_rec = self.catalogue.get_adapter(parent, full=False) if parent else None

        base_rec: BaseRecord | None
        if base is not None:
            base_rec = self.catalogue.get_base(base)
        else:
            base_rec = self.catalogue.match_base(cfg.base_model)
        compatible: bool | None = None
        reason = ""
        if base_rec is not None:
            report = self._report(cfg, tensors, base_rec.name)
            if not report.compatible:
                raise Incompatible(f"{folder} does not fit base model {base_rec.name!r}: {report.reason}.")
            compatible, reason = True, ("" if tensors is not None else "tensor shapes not checked (pickle weights)")

        files = [p for p in iter_files(folder) if allow_pickle or not is_pickle(p) or p == weights]
        total = sum(p.stat().st_size for p in files)
        self._require_writable()  # before hashing, which can take minutes
        done = 0
        hashed: list[tuple[Path, str, int]] = []
        for p in files:
            ctx.check_cancelled()
            size = p.stat().st_size
            hashed.append((p, sha256_file(p, ctx, done, total), size))
            done += size
        # Only content the library does not hold yet takes space (plus a hard-linked folder, which takes none).
        require_space(self.root, sum(size for p, sha, size in hashed if not self.catalogue.blob_path(sha).is_file()))
        stored: list[tuple[str, str, int]] = []
        sources: list[tuple[str, str, Path]] = []
        for p, sha, size in hashed:
            ctx.check_cancelled()
            self.catalogue.put_blob(p, sha)
            rel = p.relative_to(folder).as_posix()
            stored.append((rel, sha, size))
            sources.append((rel, sha, p))
        # the sources stand in for any blob a concurrent remove deletes before this import commits
        uid, final = self.catalogue.stage_adapter_folder(sources)
        try:
            return self.catalogue.insert_adapter(
                uid=uid, name=name, base_id=base_rec.id if base_rec else None,
                base_ref=cfg.base_model or (base_rec.hub_id if base_rec else None), peft_type=cfg.peft_type,
                task_type=cfg.task_type, rank=cfg.rank, target_modules=cfg.target_modules, size_bytes=total,
                compatible=compatible, compat_reason=reason, files=stored, source=source, source_ref=source_ref,
                run_id=run_id, parent_id=parent_rec.id if parent_rec else None, lineage=lineage, config=cfg.raw,
                weights_format="safetensors" if tensors is not None else "pickle", tags=tags, notes=notes,
            )
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise

    def _report(self, cfg: AdapterConfig, tensors: dict | None, base_name: str) -> CompatReport:
        base = self.catalogue.get_base(base_name)
        if base.source == "hub" and not base.path:
            # Not downloaded: only the config-level check is possible.
            return CompatReport(True, [], 0)
        shapes, base_config = self.catalogue.base_details(base_name)
        report = check_compatibility(cfg, tensors, shapes, base_config)
        if not report.compatible and base.path and any("does not exist" in p for p in report.problems) \
                and not shapes.get(_LOADED_NAMES_MARK):
            # The checkpoint's module names may differ from the loaded model's (transformers
            # renames some architectures' modules on load; PEFT names follow the latter).
            # Learn the loaded names once, from a weightless meta-device build, and keep them.
            try:
                from adapterstudio.ml.model_meta import loaded_module_shapes

                loaded = loaded_module_shapes(base.path)
            except Exception as exc:  # noqa: BLE001  (no torch, remote code...: the header verdict stands; logged)
                log.warning("the module names of %s as loaded could not be learnt (%s: %s); the compatibility check "
                            "goes by the checkpoint's names only", base_name, type(exc).__name__, exc)
                return report
            merged = {**loaded, **shapes, _LOADED_NAMES_MARK: []}
            self.catalogue.update_base(base_name, module_shapes=merged)
            report = check_compatibility(cfg, tensors, merged, base_config)
        return report

    def check_adapter(self, name: str, base: str | None = None) -> CompatReport:
        """Re-check an adapter against its base (or another base) from headers only."""
        a = self.catalogue.get_adapter(name, full=False)
        target = base or a.base
        if target is None:
            raise NotFound(f"Adapter {name!r} has no base in the catalogue (it names {a.base_ref!r}); pass --base NAME.")
        folder = Path(a.path)
        cfg = read_adapter_config(folder)
        st = folder / "adapter_model.safetensors"
        tensors = read_header(st).tensors if st.is_file() else None
        return self._report(cfg, tensors, target)

    def require_compatible(self, adapter: str, base: str) -> AdapterRecord:
        """Raise :class:`Incompatible` with the reason if *adapter* does not fit *base*."""
        report = self.check_adapter(adapter, base)
        if not report.compatible:
            raise Incompatible(f"Adapter {adapter!r} does not fit base model {base!r}: {report.reason}.")
        return self.catalogue.get_adapter(adapter)

    def export_adapter(self, name: str, dest: str | os.PathLike[str], ctx: TaskContext = NULL_CONTEXT) -> Path:
        """Copy an adapter's files to *dest* (created; must be empty if it exists), byte-identical."""
        a = self.catalogue.get_adapter(name)
        out, tmp = new_output_folder(dest, needed=sum(f.size for f in a.files))
        try:
            total = sum(f.size for f in a.files)
            done = 0
            for f in a.files:
                src = Path(a.path) / f.relpath
                if not src.is_file():
                    src = self.catalogue.blob_path(f.sha256)
                dst = tmp / f.relpath
                dst.parent.mkdir(parents=True, exist_ok=True)
                copy_atomic(src, dst, ctx)
                os.chmod(dst, 0o644)
                done += f.size
                ctx.progress(done, total, f"exporting {f.relpath}")
            publish_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def rename_adapter(self, name: str, new_name: str) -> AdapterRecord:
        return self.catalogue.update_adapter(name, name=_check_name(new_name, "adapter"))

    def set_notes(self, name: str, notes: str) -> AdapterRecord:
        return self.catalogue.update_adapter(name, notes=validate_notes(notes))

    def tag_adapter(self, name: str, add: list[str] = (), remove: list[str] = ()) -> AdapterRecord:  # type: ignore[assignment]
        """Add and remove tags; a tag to remove may be typed as shown (tags stored by older versions
        with hidden characters included, see :func:`adapterstudio.core.names.printable`)."""
        return self.catalogue.set_tags(name, add=[validate_tag(t) for t in add if t.strip()],
                                       remove=[t.strip() for t in remove if t.strip()])

    def remove_adapter(self, name: str) -> AdapterRecord:
        return self.catalogue.remove_adapter(name)

    def list_adapters(self, **filters: Any) -> list[AdapterRecord]:
        return self.catalogue.list_adapters(**filters)

    def list_bases(self) -> list[BaseRecord]:
        return self.catalogue.list_bases()

    def close(self) -> None:
        self.catalogue.close()


def open_library(home: str | os.PathLike[str] | None = None, settings: Settings | None = None) -> Library:
    """Open (creating if needed) the library at *home*, ``$ADAPTERSTUDIO_HOME`` or the default."""
    settings = settings or load_settings()
    root = settings.resolved_library_dir(home)
    return Library(settings, Catalogue(root))


# -- helpers ---------------------------------------------------------------------
def _default_base_name(path: Path, config: dict[str, Any]) -> str:
    name = path.name
    if name in ("model", "models", "weights") or re.fullmatch(r"[0-9a-f]{40}", name):
        # a package's 'model' folder, or an HF-cache snapshot: use a more telling name
        parent = path.parent
        if parent.name == "snapshots":
            return parent.parent.name.removeprefix("models--").replace("--", "/")
        return parent.name
    return name


def hash_model_folder(path: Path, ctx: TaskContext = NULL_CONTEXT) -> str:
    """A content hash of a model: SHA-256 over each config and weights file's own SHA-256."""
    import hashlib

    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".json")))
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    done = 0
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p, ctx, done, total).encode() + b"\n")
        done += p.stat().st_size
    return "sha256:" + h.hexdigest()


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "hub"


def iter_hf_cache_models(cache_dir: str | os.PathLike[str] | None = None):
    """(repo_id, snapshot folder, revision) for each model in the HF cache with weights.

    Reads the cache's documented layout directly (models--org--name/refs, snapshots), so
    scanning is instant and works without network or huggingface_hub.
    """
    root = hf_cache_dir(cache_dir)
    if not root.is_dir():
        return
    for repo in sorted(root.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            continue
        revision = None
        ref = repo / "refs" / "main"
        if ref.is_file():
            revision = ref.read_text().strip()
        candidates = [snaps / revision] if revision and (snaps / revision).is_dir() else sorted(
            (p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in candidates:
            if (snap / "config.json").exists() and (any(snap.glob("*.safetensors")) or any(snap.glob("*.bin"))):
                yield repo_id, snap, snap.name
                break


def find_in_hf_cache(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str] | None:
    for rid, snap, rev in iter_hf_cache_models(cache_dir):
        if rid == repo_id:
            return snap, rev
    return None


def record_json(rec: Any, full: bool = True) -> dict[str, Any]:
    if isinstance(rec, AdapterRecord):
        return rec.to_json(full)
    return rec.to_json()


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
