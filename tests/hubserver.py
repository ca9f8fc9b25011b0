"""A Hugging Face Hub-compatible test server on 127.0.0.1 (stdlib only, real sockets).

It answers what the unmodified ``huggingface_hub`` client sends for model repositories
(see shared/design/HUB-PROTOCOL.md): whoami, create/delete repo, model info, list
models (search, author, filter), tree, resolve (HEAD/GET with Range), validate-yaml,
preupload, NDJSON commit, and the LFS batch API with its upload PUT. Everything is kept
in memory; commits are applied only once their whole body has arrived.

Switches:
    HubServer(upload_mode="regular")  every file is a regular git blob
    HubServer(upload_mode="lfs")      weights (*.safetensors, *.bin ...) go through LFS (client: HF_HUB_DISABLE_XET=1)
    server.faults.drop_download = N   the next N downloads of a weights file break off half-way
    server.faults.drop_upload = N     the next N uploads (commit or LFS PUT) break off half-way

Run it by hand: ``python tests/hubserver.py --mode lfs --user alice:hf_secret`` prints its URL.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack")


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    message: str
    parent: str | None
    at: float


@dataclass
class Repo:
    id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, rev: str) -> Commit | None:
        if rev in ("main", "HEAD", "refs/heads/main"):
            return self.head
        for c in self.commits:
            if c.sha == rev or (len(rev) >= 7 and c.sha.startswith(rev)):
                return c
        return None


@dataclass
class Faults:
    drop_download: int = 0
    drop_upload: int = 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _card(commit: Commit) -> dict[str, Any]:
    readme = commit.files.get("README.md")
    if readme is None:
        return {}
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", readme.data.decode("utf-8", "replace"), re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _tags(card: dict[str, Any]) -> list[str]:
    tags = [str(t) for t in card.get("tags") or []]
    lib = card.get("library_name")
    if lib:
        tags.append(str(lib))
    bases = card.get("base_model")
    for b in [bases] if isinstance(bases, str) else bases or []:
        tags.append(f"base_model:{b}")
        if lib == "peft" or card.get("base_model_relation") == "adapter":
            tags.append(f"base_model:adapter:{b}")
    if card.get("pipeline_tag"):
        tags.append(str(card["pipeline_tag"]))
    return list(dict.fromkeys(tags))


class HubState:
    def __init__(self, upload_mode: str) -> None:
        self.upload_mode = upload_mode
        self.tokens: dict[str, str] = {}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.faults = Faults()
        self.card_rules: list[str] = []  # extra card errors validate-yaml reports (a stricter Hub)
        self.requests: list[dict[str, Any]] = []  # method, path, range, status (never headers' secrets)
        self.lock = threading.RLock()


class HubServer:
    def __init__(self, upload_mode: str = "regular", host: str = "127.0.0.1", port: int = 0) -> None:
        if upload_mode not in ("regular", "lfs"):
            raise ValueError(upload_mode)
        self.state = HubState(upload_mode)
        handler = type("BoundHandler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        # polled every 50 ms, not 0.5 s: stop() waits for the next poll
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="hubserver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.state.requests

    def add_user(self, name: str, token: str) -> None:
        self.state.tokens[token] = name

    def repo(self, repo_id: str) -> Repo | None:
        return self.state.repos.get(repo_id)

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Abort(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; requests are recorded instead
        return

    # -- plumbing ----------------------------------------------------------------------
    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self, drop: bool = False) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if drop:
                    self._drop()
            data = b"".join(chunks)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            if drop:
                self.rfile.read(n // 2)
                self._drop()
            data = self.rfile.read(n)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        return data

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()
        raise _Abort()

    def _json_body(self) -> Any:
        raw = self._body()
        return json.loads(raw or b"{}")

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None, body: bytes | None = None,
              error_code: str | None = None) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", str((payload or {}).get("error", error_code)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status)

    def _error(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        self._send(status, {"error": message, **extra}, error_code=code)

    def _record(self, status: int) -> None:
        with self.state.lock:
            self.state.requests.append({"method": self.command, "path": urlsplit(self.path).path, "status": status,
                                        "range": self.headers.get("Range"),
                                        "authorized": bool(self.headers.get("Authorization"))})

    def _user(self) -> str | None:
        """The authenticated user; raises (after answering 401) for a token the hub does not know."""
        auth = self.headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            self._error(401, "Invalid credentials in Authorization header")
            raise _Abort()
        return user

    def _repo_for_read(self, repo_id: str, user: str | None) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.id.split("/")[0]):
            self._error(404, "Repository not found", "RepoNotFound")
            raise _Abort()
        return repo

    def _repo_for_write(self, repo_id: str, user: str | None) -> Repo:
        if user is None:
            self._error(401, "You must be authenticated to write")
            raise _Abort()
        repo = self._repo_for_read(repo_id, user)
        if repo.id.split("/")[0] != user:
            self._error(403, f"You don't have the rights to write to {repo_id}")
            raise _Abort()
        return repo

    def _commit_at(self, repo: Repo, rev: str) -> Commit:
        if not repo.commits:
            self._error(404, f"Revision Not Found for url {self.path}.", "RevisionNotFound")
            raise _Abort()
        c = repo.at(unquote(rev))
        if c is None:
            self._error(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
            raise _Abort()
        return c

    # -- dispatch ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        try:
            user = self._user()
            routes = [
                ("GET", r"/api/whoami-v2", self.whoami),
                ("POST", r"/api/repos/create", self.create_repo),
                ("DELETE", r"/api/repos/delete", self.delete_repo),
                ("POST", r"/api/validate-yaml", self.validate_yaml),
                ("GET", r"/api/models", self.list_models),
                ("GET", r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", self.tree),
                ("POST", r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", self.preupload),
                ("POST", r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", self.commit),
                ("GET", r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", self.model_info),
                ("GET", r"/api/models/([^/]+/[^/]+)", self.model_info),
                ("POST", r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
                ("PUT", r"/lfs-upload/([0-9a-f]{64})", self.lfs_put),
                ("GET", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.resolve),
                ("HEAD", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.resolve),
            ]
            for method, pattern, fn in routes:
                m = re.fullmatch(pattern, path)
                if m and method == self.command:
                    fn(user, query, *[unquote(g) if g is not None else None for g in m.groups()])
                    return
            self._error(404, f"Not found: {self.command} {path}")
        except _Abort:
            return

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # -- endpoints -----------------------------------------------------------------------
    def whoami(self, user: str | None, query: dict) -> None:
        if user is None:
            self._error(401, "Invalid username or password.")
            return
        self._send(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}}})

    def create_repo(self, user: str | None, query: dict) -> None:
        body = self._json_body()
        if user is None:
            self._error(401, "You must be authenticated to create a repository")
            return
        ns = body.get("organization") or user
        if ns != user:
            self._error(403, f"You don't have the rights to create a model under the namespace {ns!r}")
            return
        if body.get("type", "model") not in (None, "model"):
            self._error(400, "Only model repositories are supported by this test hub")
            return
        repo_id = f"{ns}/{body['name']}"
        url = f"{self.base}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            private = bool(body.get("private")) or body.get("visibility") == "private"
            self.state.repos[repo_id] = Repo(id=repo_id, private=private)
            self._commit(self.state.repos[repo_id], {".gitattributes": Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)},
                         "initial commit")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, user: str | None, query: dict) -> None:
        body = self._json_body()
        repo_id = f"{body.get('organization') or user}/{body.get('name')}"
        self._repo_for_write(repo_id, user)
        with self.state.lock:
            del self.state.repos[repo_id]
        self._send(200, {})

    def validate_yaml(self, user: str | None, query: dict) -> None:
        body = self._json_body()
        content = body.get("content") or ""
        errors = []
        m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", content, re.S)
        meta: Any = {}
        if m:
            try:
                meta = yaml.safe_load(m.group(1)) or {}
            except yaml.YAMLError as exc:
                errors.append({"message": f"Invalid YAML: {exc}"})
        bases = meta.get("base_model") if isinstance(meta, dict) else None
        for b in [bases] if isinstance(bases, str) else bases or []:
            if not isinstance(b, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", b) or b.startswith("."):
                errors.append({"message": f'"base_model" with value "{b}" is not valid. Use a model id from the Hub.'})
        errors += [{"message": rule} for rule in self.state.card_rules]
        if errors:
            self._send(400, {"error": errors[0]["message"], "errors": errors, "warnings": []})
        else:
            self._send(200, {"errors": [], "warnings": []})

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> dict[str, Any]:
        card = _card(commit)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update({"size": blob.size, "blobId": blob.git_oid})
                if blob.lfs:
                    s["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": 134}
            siblings.append(s)
        return {
            "_id": hashlib.md5(repo.id.encode()).hexdigest()[:24], "id": repo.id, "modelId": repo.id,
            "author": repo.id.split("/")[0], "sha": commit.sha, "lastModified": _iso(commit.at),
            "createdAt": _iso(repo.created_at), "private": repo.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": _tags(card), "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"), "cardData": card, "siblings": siblings,
        }

    def model_info(self, user: str | None, query: dict, repo_id: str, rev: str = "main") -> None:
        repo = self._repo_for_read(repo_id, user)
        commit = self._commit_at(repo, rev)
        self._send(200, self._info(repo, commit, blobs=query.get("blobs", ["false"])[0] == "true"))

    def list_models(self, user: str | None, query: dict) -> None:
        search = (query.get("search") or [""])[0].lower()
        author = (query.get("author") or [None])[0]
        filters = query.get("filter") or []
        limit = int((query.get("limit") or ["1000"])[0])
        out = []
        with self.state.lock:
            repos = list(self.state.repos.values())
        for repo in repos:
            if repo.private and repo.id.split("/")[0] != user:
                continue
            if search and search not in repo.id.lower():
                continue
            if author and repo.id.split("/")[0] != author:
                continue
            info = self._info(repo, repo.head, blobs=False)
            tags = set(info["tags"])
            if any(f not in tags for f in filters):
                continue
            if not ("cardData" in query.get("expand", []) or (query.get("cardData") or query.get("full") or ["false"])[0] in ("true", "True", "1")):
                info.pop("cardData", None)
            out.append(info)
        self._send(200, out[:limit])

    def tree(self, user: str | None, query: dict, repo_id: str, rev: str, sub: str | None) -> None:
        repo = self._repo_for_read(repo_id, user)
        commit = self._commit_at(repo, rev)
        recursive = (query.get("recursive") or ["false"])[0] in ("true", "True", "1")
        prefix = (sub.strip("/") + "/") if sub else ""
        items, dirs = [], set()
        for path, blob in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    dirs.add(prefix + "/".join(parts[:i]))
            item: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
            if blob.lfs:
                item["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": 134}
            items.append(item)
        if sub and not items and not dirs:
            self._error(404, f"Entry not found: {sub}", "EntryNotFound")
            return
        items = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                 for d in sorted(dirs)] + items
        self._send(200, items)

    def preupload(self, user: str | None, query: dict, repo_id: str, rev: str) -> None:
        body = self._json_body()
        self._repo_for_write(repo_id, user)
        files = []
        for f in body.get("files", []):
            lfs = self.state.upload_mode == "lfs" and f["path"].lower().endswith(LFS_SUFFIXES)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._send(200, {"files": files, "commitOid": None})

    def _commit(self, repo: Repo, changes: dict[str, Blob | None], message: str) -> Commit:
        files = dict(repo.commits[-1].files) if repo.commits else {}
        for path, blob in changes.items():
            if blob is None:
                for p in [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del files[p]
            else:
                files[path] = blob
        parent = repo.commits[-1].sha if repo.commits else None
        sha = hashlib.sha1(f"{parent}{message}{time.time()}{uuid.uuid4()}".encode()).hexdigest()
        c = Commit(sha=sha, files=files, message=message, parent=parent, at=time.time())
        repo.commits.append(c)
        return c

    def commit(self, user: str | None, query: dict, repo_id: str, rev: str) -> None:
        repo = self._repo_for_write(repo_id, user)
        with self.state.lock:
            drop = self.state.faults.drop_upload > 0
            if drop:
                self.state.faults.drop_upload -= 1
        if drop:
            self._record(0)
        raw = self._body(drop=drop)
        if rev not in ("main",):
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return
        changes: dict[str, Blob | None] = {}
        message = ""
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and repo.commits and parent != repo.head.sha:
                    self._error(412, "A commit has happened since. Please refresh and try again.")
                    return
            elif key == "file":
                changes[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    self._error(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                    return
                changes[value["path"]] = Blob(data, True)
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
        with self.state.lock:
            c = self._commit(repo, changes, message)
        self._send(200, {"success": True, "commitOid": c.sha, "commitUrl": f"{self.base}/{repo_id}/commit/{c.sha}",
                         "commitMessage": message, "pullRequestUrl": None, "hookOutput": ""})

    def lfs_batch(self, user: str | None, query: dict, repo_id: str) -> None:
        body = self._json_body()
        self._repo_for_write(repo_id, user)
        objects = []
        for o in body.get("objects", []):
            obj: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.state.lfs:
                obj["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{o['oid']}", "header": {}}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, user: str | None, query: dict, oid: str) -> None:
        with self.state.lock:
            drop = self.state.faults.drop_upload > 0
            if drop:
                self.state.faults.drop_upload -= 1
        if drop:
            self._record(0)
        data = self._body(drop=drop)
        if hashlib.sha256(data).hexdigest() != oid:
            self._error(400, "The uploaded content does not match its SHA-256")
            return
        with self.state.lock:
            self.state.lfs[oid] = data
        self._send(200, {})

    def resolve(self, user: str | None, query: dict, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo_for_read(repo_id, user)
        commit = self._commit_at(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            self._error(404, f"Entry not found: {path}", "EntryNotFound")
            return
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
            headers["ETag"] = f'"{blob.sha256}"'
        else:
            headers["ETag"] = f'"{blob.git_oid}"'
        data, status = blob.data, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= blob.size:
                self._send(416, {"error": "Range not satisfiable"}, headers={"Content-Range": f"bytes */{blob.size}"})
                return
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else blob.size - 1
            data, status = blob.data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        drop = False
        if self.command == "GET" and path.lower().endswith(LFS_SUFFIXES) and len(data) > 1:
            with self.state.lock:
                drop = self.state.faults.drop_download > 0
                if drop:
                    self.state.faults.drop_download -= 1
        if not drop:
            self._send(status, body=data, headers=headers)
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self._record(-status)
        self._drop()


def main() -> None:  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", choices=["regular", "lfs"], default="regular")
    ap.add_argument("--user", action="append", default=[], metavar="NAME:TOKEN")
    a = ap.parse_args()
    srv = HubServer(a.mode, port=a.port)
    for spec in a.user:
        name, token = spec.split(":", 1)
        srv.add_user(name, token)
    print(srv.url, flush=True)
    srv.httpd.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
