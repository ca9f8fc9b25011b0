"""A hub provider for teams without a hub: any mounted folder (a NAS, a network drive).

Layout under the shared root (all plain files; any number of readers and writers)::

    <owner>/<name>/repo.json                      {"id", "private", "created_at"}
    <owner>/<name>/refs/main                      the latest revision id (replaced atomically)
    <owner>/<name>/revisions/<rev>/manifest.json  {"id", "revision", "parent", "message", "created_at",
                                                   "files": [{"path", "size", "sha256"}]}
    <owner>/<name>/revisions/<rev>/files/...      the adapter's files, never modified once published

Publishing is atomic: a revision is written into a hidden temporary folder beside its
final place, fsynced, then renamed into ``revisions/``; ``refs/main`` is replaced last.
A reader therefore sees either the old revision or the complete new one, and a crash
mid-push leaves only a hidden ``.tmp-*`` folder that later pushes ignore. Pulls verify
every file against the manifest's SHA-256.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from adapterstudio.api import (
    NULL_CONTEXT,
    AlreadyExists,
    AuthStatus,
    InvalidInput,
    PickleRefused,
    ProviderCapabilities,
    ProviderConfig,
    PullResult,
    PushResult,
    RemoteAdapter,
    RemoteDetail,
    RemoteFile,
    RemoteNotFound,
    TaskContext,
    UserError,
)
from adapterstudio.api.cards import HUB_ID, parse_card
from adapterstudio.api.files import atomic_write_bytes, fsync_dir, is_pickle, wanted

ROOT_ENV = "ADAPTERSTUDIO_SHARED_FOLDER"
CHUNK = 1 << 20


def make_provider(config: ProviderConfig) -> FolderProvider:
    return FolderProvider(config)


def _copy_hashing(src: Path, dst: Path, ctx: TaskContext, done: int, total: int) -> tuple[str, int]:
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            ctx.progress(done, total, src.name)
            ctx.check_cancelled()
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), done


class FolderProvider:
    name = "folder"
    display_name = "Shared folder"
    capabilities = ProviderCapabilities(search=True, push=True, delete=True, private_repos=False, revisions=True,
                                        login=False, card_validation=False)

    def __init__(self, config: ProviderConfig | None = None) -> None:
        config = config or ProviderConfig()
        root = config.root or config.options.get("root") or os.environ.get(ROOT_ENV)
        self._root = Path(root).expanduser() if root else None

    # -- helpers ------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._root is None:
            raise UserError(f"The shared-folder provider needs a folder: set {ROOT_ENV} or the shared_folder setting "
                            f"(adapterstudio settings), e.g. a mounted NAS path.")
        if not self._root.is_dir():
            raise UserError(f"The shared folder {self._root} does not exist or is not mounted.")
        return self._root

    def _repo_dir(self, repo_id: str) -> Path:
        if not HUB_ID.match(repo_id) or ".." in repo_id:
            raise InvalidInput(f"{repo_id!r} is not a repository id of the form owner/name.")
        return self.root / repo_id

    def _head(self, repo: Path) -> str | None:
        try:
            return (repo / "refs" / "main").read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def _resolve(self, repo_id: str, revision: str | None) -> tuple[Path, str, dict[str, Any]]:
        repo = self._repo_dir(repo_id)
        if not (repo / "repo.json").is_file():
            raise RemoteNotFound(f"There is no adapter {repo_id!r} in the shared folder {self.root}.")
        rev = revision if revision not in (None, "", "main") else self._head(repo)
        revs = repo / "revisions"
        if rev and not (revs / rev).is_dir() and revs.is_dir():
            matches = [p.name for p in revs.iterdir() if p.name.startswith(rev) and not p.name.startswith(".")]
            rev = matches[0] if len(matches) == 1 else rev
        if not rev or not (revs / rev / "manifest.json").is_file():
            raise RemoteNotFound(f"Adapter {repo_id!r} has no revision {revision or 'main'!r} in {self.root}.")
        manifest = json.loads((revs / rev / "manifest.json").read_text(encoding="utf-8"))
        return revs / rev, rev, manifest

    def _summary(self, repo_id: str, rev_dir: Path, rev: str, manifest: dict[str, Any]) -> tuple[RemoteAdapter, str | None, dict]:
        readme = rev_dir / "files" / "README.md"
        card = readme.read_text(encoding="utf-8") if readme.is_file() else None
        meta, _ = parse_card(card)
        base = meta.get("base_model")
        base = base[0] if isinstance(base, list) and base else base
        tags = [str(t) for t in meta.get("tags") or []]
        lib = meta.get("library_name")
        if lib and lib not in tags:
            tags.append(str(lib))
        info = {}
        try:
            info = json.loads((rev_dir.parent.parent / "repo.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        adapter = RemoteAdapter(
            id=repo_id, provider=self.name, revision=rev, base_model=base if isinstance(base, str) else None,
            library_name=lib, pipeline_tag=meta.get("pipeline_tag"), tags=tags, private=bool(info.get("private")),
            last_modified=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(manifest.get("created_at", 0))),
            url=str(rev_dir.parent.parent),
        )
        return adapter, card, meta

    # -- the API ------------------------------------------------------------------
    def describe(self) -> str:
        return f"shared folder {self._root}" if self._root else f"shared folder (not set: {ROOT_ENV})"

    def auth_status(self) -> AuthStatus:
        root = self.root
        writable = os.access(root, os.W_OK)
        return AuthStatus(logged_in=True, user=getpass.getuser(), method="filesystem",
                          detail=f"file permissions of {root} apply ({'read-write' if writable else 'read-only'}).")

    def login(self, token: str) -> AuthStatus:
        raise UserError("The shared-folder provider has no login; access follows the folder's file permissions.")

    def logout(self) -> None:
        return None

    def validate_card(self, text: str) -> list[str]:
        return []

    def _iter_repos(self):
        root = self.root
        for owner in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for repo in sorted(p for p in owner.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (repo / "repo.json").is_file():
                    yield f"{owner.name}/{repo.name}"

    def search(self, query: str = "", *, base_model: str | None = None, author: str | None = None,
               limit: int = 50) -> list[RemoteAdapter]:
        hits: list[RemoteAdapter] = []
        q = (query or "").lower()
        for repo_id in self._iter_repos():
            if author and repo_id.split("/")[0] != author:
                continue
            if q and q not in repo_id.lower():
                continue
            try:
                rev_dir, rev, manifest = self._resolve(repo_id, None)
            except RemoteNotFound:
                continue
            adapter, _, _ = self._summary(repo_id, rev_dir, rev, manifest)
            if base_model and not (adapter.base_model == base_model or f"base_model:adapter:{base_model}" in adapter.tags):
                continue
            hits.append(adapter)
            if len(hits) >= limit:
                break
        return hits

    def show(self, repo_id: str, revision: str | None = None) -> RemoteDetail:
        rev_dir, rev, manifest = self._resolve(repo_id, revision)
        adapter, card, meta = self._summary(repo_id, rev_dir, rev, manifest)
        files = [RemoteFile(path=f["path"], size=f["size"], sha256=f["sha256"]) for f in manifest["files"]]
        return RemoteDetail(adapter=adapter, card=card, card_data=meta, files=files)

    def pull(self, repo_id: str, dest: Path, *, revision: str | None = None, allow_pickle: bool = False,
             ctx: TaskContext = NULL_CONTEXT) -> PullResult:
        rev_dir, rev, manifest = self._resolve(repo_id, revision)
        files = [f for f in manifest["files"] if wanted(f["path"], allow_pickle)]
        skipped = [f["path"] for f in manifest["files"] if not wanted(f["path"], allow_pickle)]
        if not any(f["path"].endswith(".safetensors") for f in files) and any(is_pickle(p) for p in skipped):
            raise PickleRefused(f"{repo_id} has only pickle weights ({', '.join(p for p in skipped if is_pickle(p))}), "
                                f"which can run code when loaded; pass --allow-pickle if you trust it.")
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise AlreadyExists(f"{dest} is not empty; pull into a new folder.")
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".partial-{uuid.uuid4().hex}"
        total = sum(int(f["size"]) for f in files)
        done = 0
        try:
            for f in files:
                src = rev_dir / "files" / f["path"]
                if not src.is_file():
                    raise UserError(f"{repo_id}@{rev[:12]} is damaged in the shared folder: {f['path']} is missing.")
                sha, done = _copy_hashing(src, tmp / f["path"], ctx, done, total)
                if sha != f["sha256"] or (tmp / f["path"]).stat().st_size != f["size"]:
                    raise UserError(f"{f['path']} of {repo_id}@{rev[:12]} does not match its manifest "
                                    f"(SHA-256 differs): the shared copy is damaged; nothing was pulled.")
            for item in tmp.iterdir():
                os.replace(item, dest / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return PullResult(id=repo_id, revision=rev, folder=dest,
                          files=[RemoteFile(path=f["path"], size=f["size"], sha256=f["sha256"]) for f in files],
                          skipped=skipped)

    def push(self, folder: Path, repo_id: str, *, private: bool = False, message: str = "",
             ctx: TaskContext = NULL_CONTEXT) -> PushResult:
        folder = Path(folder)
        if not folder.is_dir():
            raise InvalidInput(f"{folder} is not a folder.")
        repo = self._repo_dir(repo_id)
        created = False
        if not (repo / "repo.json").is_file():
            (repo / "revisions").mkdir(parents=True, exist_ok=True)
            (repo / "refs").mkdir(exist_ok=True)
            info = {"id": repo_id, "private": bool(private), "created_at": time.time(), "created_by": getpass.getuser()}
            atomic_write_bytes(repo / "repo.json", json.dumps(info, indent=2).encode())
            created = True
        sources = sorted(p for p in folder.rglob("*") if p.is_file()
                         and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not sources:
            raise InvalidInput(f"{folder} has no files to publish.")
        tmp = repo / "revisions" / f".tmp-{uuid.uuid4().hex}"
        total = sum(p.stat().st_size for p in sources)
        done = 0
        try:
            entries = []
            for p in sources:
                rel = p.relative_to(folder).as_posix()
                sha, done = _copy_hashing(p, tmp / "files" / rel, ctx, done, total)
                entries.append({"path": rel, "size": p.stat().st_size, "sha256": sha})
            parent = self._head(repo)
            manifest = {"id": repo_id, "parent": parent, "message": message or "Upload adapter",
                        "created_at": time.time(), "created_by": getpass.getuser(), "files": entries}
            rev = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
            manifest["revision"] = rev
            atomic_write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
            fsync_dir(tmp / "files")
            os.rename(tmp, repo / "revisions" / rev)
            fsync_dir(repo / "revisions")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_bytes(repo / "refs" / "main", (rev + "\n").encode())
        return PushResult(id=repo_id, revision=rev, url=str(repo), created=created)

    def delete(self, repo_id: str) -> None:
        repo = self._repo_dir(repo_id)
        if not (repo / "repo.json").is_file():
            raise RemoteNotFound(f"There is no adapter {repo_id!r} in the shared folder {self.root}.")
        trash = repo.parent / f".deleted-{repo.name}-{uuid.uuid4().hex}"
        os.rename(repo, trash)  # disappears atomically for readers
        shutil.rmtree(trash, ignore_errors=True)
