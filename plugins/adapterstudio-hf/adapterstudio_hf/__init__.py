"""AdapterStudio hub provider for the Hugging Face Hub, through ``huggingface_hub``.

Endpoint: ``ProviderConfig.endpoint`` (AdapterStudio's ``hub_endpoint`` setting), else
``HF_ENDPOINT``, else the public Hub; always passed explicitly to ``HfApi`` so mirrors and
private hubs work. Token: ``ProviderConfig.token`` if given, else whatever
``huggingface_hub`` finds (``HF_TOKEN``, then the login stored under ``HF_HOME``). The
token is never put into a message, a log line or a return value.

Pulls download into a hidden ``.hf-download`` folder inside the destination, so a pull
broken off by the network resumes where it stopped when it is run again with the same
destination (``huggingface_hub``'s downloader also retries and resumes within one run); files become
visible in the destination only once every one of them is verified against the Hub's
SHA-256 (LFS) or git blob id (regular files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapterstudio.api import (
    NULL_CONTEXT,
    AlreadyExists,
    AuthError,
    AuthStatus,
    InvalidInput,
    NetworkError,
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
from adapterstudio.api.files import git_blob_oid, is_pickle, sha256_of, wanted

STAGING = ".hf-download"


def make_provider(config: ProviderConfig) -> HuggingFaceProvider:
    return HuggingFaceProvider(config)


def _quiet() -> None:
    """No tqdm bars or retry chatter on the console: AdapterStudio reports progress and errors itself."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    disable_progress_bars()
    if not os.environ.get("ADAPTERSTUDIO_DEBUG"):
        hf_logging.set_verbosity_error()


def _network_cause(exc: BaseException | None) -> BaseException | None:
    """The network failure behind *exc* (itself, or a cause: huggingface_hub wraps some in RuntimeError)."""
    seen = 0
    while exc is not None and seen < 10:
        mod = type(exc).__module__.split(".")[0]
        if mod in ("httpx", "httpx2", "httpcore", "requests", "urllib3") or isinstance(exc, (ConnectionError, TimeoutError)):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _hf():
    import huggingface_hub

    return huggingface_hub


class HuggingFaceProvider:
    name = "huggingface"
    display_name = "Hugging Face Hub"
    capabilities = ProviderCapabilities(search=True, push=True, delete=True, private_repos=True, revisions=True,
                                        login=True, card_validation=True)

    def __init__(self, config: ProviderConfig | None = None) -> None:
        config = config or ProviderConfig()
        endpoint = config.endpoint or os.environ.get("HF_ENDPOINT") or None
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self.__token = config.token or None  # never exposed
        _quiet()

    def __repr__(self) -> str:
        return f"HuggingFaceProvider(endpoint={self.endpoint!r})"

    # -- plumbing ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self._endpoint or _hf().constants.ENDPOINT.rstrip("/")

    def _api(self, token: str | None = None):
        from adapterstudio import __version__

        return _hf().HfApi(endpoint=self.endpoint, token=token or self.__token, library_name="adapterstudio",
                           library_version=__version__)

    def _token(self) -> tuple[str | None, str]:
        if self.__token:
            return self.__token, "token"
        token = _hf().get_token()
        if not token:
            return None, "none"
        return token, ("env" if os.environ.get("HF_TOKEN") == token else "stored")

    def _clean(self, text: str) -> str:
        """Remove anything that looks like the token from an error message (defence in depth)."""
        for secret in {self.__token, os.environ.get("HF_TOKEN"), self._stored_token()} - {None, ""}:
            text = text.replace(secret, "***")  # type: ignore[arg-type]
        first = text.strip().splitlines()
        return first[0] if first else ""

    def _stored_token(self) -> str | None:
        try:
            return _hf().get_token()
        except Exception:  # noqa: BLE001  (an unreadable token store: no stored token to redact)
            return None

    @contextlib.contextmanager
    def _errors(self, what: str, repo_id: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub / HTTP exceptions into one-sentence UserErrors."""
        import huggingface_hub.errors as errors
        where = f"{repo_id} on {self.endpoint}" if repo_id else self.endpoint
        try:
            yield
        except UserError:
            raise
        except errors.OfflineModeIsEnabled:
            raise NetworkError(f"Cannot {what}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); "
                               f"unset it to reach {self.endpoint}.") from None
        except errors.RevisionNotFoundError:
            raise RemoteNotFound(f"{where} has no such revision.") from None
        except errors.RepositoryNotFoundError:
            raise RemoteNotFound(f"There is no adapter {repo_id} on {self.endpoint} "
                                 f"(or it is private and you are not logged in as its owner).") from None
        except getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError):
            raise RemoteNotFound(f"A file of {where} is missing on the server.") from None
        except errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 401:
                raise AuthError(f"{self.endpoint} rejected the token (401 Unauthorized); log in again with "
                                f"'adapterstudio hub login' or fix HF_TOKEN.") from None
            if status == 403:
                raise AuthError(f"Your token may not {what} {repo_id or ''} on {self.endpoint} (403 Forbidden); "
                                f"use a token with write access to that namespace.".replace("  ", " ")) from None
            raise NetworkError(f"Could not {what} {where}: {self._clean(str(exc))}.") from None
        except (FileNotFoundError, getattr(errors, "LocalEntryNotFoundError", FileNotFoundError)) as exc:
            if "local cache" in str(exc) or "trying to locate" in str(exc):
                raise NetworkError(f"Could not {what} {where}: the connection failed ({self._clean(str(exc))}).") from None
            raise
        except Exception as exc:
            net = _network_cause(exc)
            if net is not None:
                raise NetworkError(f"Could not {what} {where}: the connection failed "
                                   f"({type(net).__name__}: {self._clean(str(net))}); nothing was changed, try again.") from None
            raise

    def _check_id(self, repo_id: str) -> None:
        if not HUB_ID.match(repo_id or ""):
            raise InvalidInput(f"{repo_id!r} is not a Hub repository id of the form owner/name.")

    def _remote(self, info: Any) -> RemoteAdapter:
        card = getattr(info, "card_data", None) or getattr(info, "cardData", None) or {}
        card = card.to_dict() if hasattr(card, "to_dict") else dict(card)
        tags = list(getattr(info, "tags", None) or [])
        base = card.get("base_model")
        if isinstance(base, list):
            base = base[0] if base else None
        if not base:
            base = next((t.split(":", 2)[2] for t in tags if t.startswith("base_model:adapter:")), None)
        lm = getattr(info, "last_modified", None)
        return RemoteAdapter(
            id=info.id, provider=self.name, revision=getattr(info, "sha", None), base_model=base,
            library_name=getattr(info, "library_name", None) or card.get("library_name"),
            pipeline_tag=getattr(info, "pipeline_tag", None) or card.get("pipeline_tag"), tags=tags,
            private=bool(getattr(info, "private", False)), last_modified=lm.isoformat() if hasattr(lm, "isoformat") else lm,
            downloads=getattr(info, "downloads", None), url=f"{self.endpoint}/{info.id}",
        )

    # -- the API -----------------------------------------------------------------------
    def describe(self) -> str:
        return self.endpoint

    def auth_status(self) -> AuthStatus:
        token, method = self._token()
        if token is None:
            return AuthStatus(False, None, "none", f"Not logged in to {self.endpoint}: run 'adapterstudio hub login' or set HF_TOKEN.")
        try:
            with self._errors("check the login with"):
                info = self._api(token).whoami(token=token)
        except AuthError as exc:
            return AuthStatus(False, None, method, str(exc))
        return AuthStatus(True, info.get("name"), method, f"Logged in to {self.endpoint} as {info.get('name')}.")

    def login(self, token: str) -> AuthStatus:
        token = (token or "").strip()
        if not token:
            raise InvalidInput("The token is empty; paste an access token from the Hub's settings page.")
        with self._errors("log in to"):
            info = self._api(token).whoami(token=token)
        user = info.get("name")
        display = ((info.get("auth") or {}).get("accessToken") or {}).get("displayName") or f"adapterstudio-{user}"
        self._store_token(token, display)
        return AuthStatus(True, user, "stored", f"Logged in to {self.endpoint} as {user}.")

    def _store_token(self, token: str, token_name: str) -> None:
        """Save the token with huggingface_hub's own mechanism (stored tokens + the active token file)."""
        try:
            from huggingface_hub._login import _save_token, _set_active_token  # the functions login() uses

            _save_token(token=token, token_name=token_name)
            _set_active_token(token_name=token_name, add_to_git_credential=False)
        except (ImportError, TypeError):  # an older/newer huggingface_hub: the public call (checks the token again)
            import logging

            logging.getLogger("huggingface_hub").disabled = True
            try:
                _hf().login(token=token, add_to_git_credential=False)
            finally:
                logging.getLogger("huggingface_hub").disabled = False

    def logout(self) -> None:
        import logging

        hf_logger = logging.getLogger("huggingface_hub")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)
        try:
            _hf().logout()
        except Exception:  # noqa: BLE001, S110  (not logged in: nothing to do; huggingface_hub's type varies by version)
            pass
        finally:
            hf_logger.setLevel(level)

    def validate_card(self, text: str) -> list[str]:
        from huggingface_hub.utils import build_hf_headers, get_session

        token, _ = self._token()
        with self._errors("validate the model card with"):
            resp = get_session().post(f"{self.endpoint}/api/validate-yaml", json={"repoType": "model", "content": text},
                                      headers=build_hf_headers(token=token or False))
        try:
            data = resp.json()
        except ValueError:
            return []  # a mirror without card validation
        if not isinstance(data, dict):
            return []
        out = []
        for e in data.get("errors") or []:
            out.append(str(e.get("message", e)) if isinstance(e, dict) else str(e))
        if not out and resp.status_code == 400 and data.get("error"):
            out.append(str(data["error"]))
        return out

    def search(self, query: str = "", *, base_model: str | None = None, author: str | None = None,
               limit: int = 50) -> list[RemoteAdapter]:
        filters = ["peft"]
        if base_model:
            filters.append(f"base_model:adapter:{base_model}")
        with self._errors("search"):
            models = list(self._api().list_models(search=query or None, author=author, filter=filters, limit=limit,
                                                  cardData=True))
        return [self._remote(m) for m in models]

    def _files(self, repo_id: str, sha: str) -> list[RemoteFile]:
        out = []
        for item in self._api().list_repo_tree(repo_id, revision=sha, recursive=True):
            if not hasattr(item, "size") or getattr(item, "blob_id", None) is None:
                continue  # a folder
            lfs = getattr(item, "lfs", None)
            sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
            out.append(RemoteFile(path=item.path, size=item.size, sha256=sha256, git_oid=item.blob_id, lfs=lfs is not None))
        return out

    def show(self, repo_id: str, revision: str | None = None) -> RemoteDetail:
        self._check_id(repo_id)
        api = self._api()
        with self._errors("read", repo_id):
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            files = self._files(repo_id, info.sha)
            card = None
            if any(f.path == "README.md" for f in files):
                with tempfile.TemporaryDirectory() as tmp:
                    path = api.hf_hub_download(repo_id, "README.md", revision=info.sha, local_dir=tmp)
                    card = Path(path).read_text(encoding="utf-8", errors="replace")
        meta, _ = parse_card(card)
        return RemoteDetail(adapter=self._remote(info), card=card, card_data=meta, files=files)

    def pull(self, repo_id: str, dest: Path, *, revision: str | None = None, allow_pickle: bool = False,
             ctx: TaskContext = NULL_CONTEXT) -> PullResult:
        self._check_id(repo_id)
        dest = Path(dest)
        if dest.exists() and any(not p.name.startswith(".") for p in dest.iterdir()):
            raise AlreadyExists(f"{dest} is not empty; pull into a new folder.")
        api = self._api()
        with self._errors("read", repo_id):
            info = api.model_info(repo_id, revision=revision)
            sha = info.sha
            files = self._files(repo_id, sha)
        take = [f for f in files if wanted(f.path, allow_pickle)]
        skipped = [f.path for f in files if not wanted(f.path, allow_pickle)]
        if not any(f.path.endswith(".safetensors") for f in take) and any(is_pickle(p) for p in skipped):
            raise PickleRefused(f"{repo_id} has only pickle weights ({', '.join(p for p in skipped if is_pickle(p))}), "
                                f"which can run code when loaded; pass --allow-pickle if you trust it.")
        staging = dest / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        total = sum(f.size or 0 for f in take)
        done = 0
        _quiet()
        for f in take:
            ctx.check_cancelled()
            ctx.progress(done, total, f"downloading {f.path}")
            with self._errors("download from", repo_id):
                self._download(api, repo_id, sha, f, staging)
            done += f.size or 0
            self._verify(staging / f.path, f, repo_id, sha)
        ctx.progress(total, total, "verified")
        for f in take:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f.path, target)
        shutil.rmtree(staging, ignore_errors=True)
        return PullResult(id=repo_id, revision=sha, folder=dest, files=take, skipped=skipped)

    def _download(self, api: Any, repo_id: str, sha: str, f: RemoteFile, staging: Path) -> None:
        """Download one file into *staging*, continuing a ``.part`` file a broken-off earlier run left.

        Uses huggingface_hub's own HTTP download (``http_get``: Range requests, retries that
        resume within a run); the ``.part`` file carries the resume across runs, which the
        cache-based ``hf_hub_download`` does not.
        """
        target = staging / f.path
        if target.is_file() and target.stat().st_size == f.size:
            return  # finished by an earlier run; verified below
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            from huggingface_hub import hf_hub_url
            from huggingface_hub.file_download import http_get
            from huggingface_hub.utils import build_hf_headers
        except ImportError:  # a huggingface_hub without these helpers: download whole files
            api.hf_hub_download(repo_id, f.path, revision=sha, local_dir=str(staging))
            return
        part = target.with_name(target.name + ".part")
        if part.exists() and f.size is not None and part.stat().st_size > f.size:
            part.unlink()
        url = hf_hub_url(repo_id, f.path, revision=sha, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.__token, library_name="adapterstudio")
        with open(part, "ab") as fh:
            http_get(url, fh, resume_size=fh.tell(), headers=headers, expected_size=f.size)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, target)

    def _verify(self, path: Path, f: RemoteFile, repo_id: str, sha: str) -> None:
        ok = path.is_file() and (f.size is None or path.stat().st_size == f.size)
        if ok and f.sha256:
            ok = sha256_of(path) == f.sha256
        elif ok and f.git_oid:
            ok = git_blob_oid(path) == f.git_oid
        if not ok:
            path.unlink(missing_ok=True)
            raise UserError(f"{f.path} of {repo_id}@{sha[:12]} does not match the hash the Hub reports; "
                            f"the download was damaged and nothing was imported, try again.")

    def push(self, folder: Path, repo_id: str, *, private: bool = False, message: str = "",
             ctx: TaskContext = NULL_CONTEXT) -> PushResult:
        self._check_id(repo_id)
        folder = Path(folder)
        if not folder.is_dir():
            raise InvalidInput(f"{folder} is not a folder.")
        token, _ = self._token()
        if token is None:
            raise AuthError(f"Not logged in to {self.endpoint}: run 'adapterstudio hub login' or set HF_TOKEN before pushing.")
        api = self._api()
        _quiet()
        ctx.progress(0, None, f"creating {repo_id}")
        with self._errors("create", repo_id):
            created = not api.repo_exists(repo_id)
            api.create_repo(repo_id, private=private, exist_ok=True)
        ctx.check_cancelled()
        ctx.progress(0, None, f"uploading to {repo_id}")
        with self._errors("upload to", repo_id):
            commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                       commit_message=message or "Upload adapter with AdapterStudio")
        return PushResult(id=repo_id, revision=commit.oid, url=f"{self.endpoint}/{repo_id}", created=created)

    def delete(self, repo_id: str) -> None:
        self._check_id(repo_id)
        with self._errors("delete", repo_id):
            self._api().delete_repo(repo_id)
