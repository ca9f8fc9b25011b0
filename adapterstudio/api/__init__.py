"""The public plugin API for hub providers.

A *hub provider* shares adapter folders with other people: the Hugging Face Hub, a
shared folder on a NAS, a company model registry. AdapterStudio's own providers live in
``plugins/`` and use nothing but this module, exactly as a third party's would.

Writing a provider
------------------
1. Write a class that satisfies :class:`HubProvider` (a :class:`typing.Protocol`; no
   base class needed). Providers work on *folders*: ``pull`` writes a revision of a
   remote adapter into a local folder and ``push`` publishes a local folder. They never
   touch AdapterStudio's catalogue; the hub service does that.
2. Expose a factory ``make_provider(config: ProviderConfig) -> HubProvider`` (a class
   whose ``__init__`` takes the config works too) through an entry point in the group
   ``adapterstudio.hub_providers``::

       [project.entry-points."adapterstudio.hub_providers"]
       myhub = "adapterstudio_myhub:make_provider"

3. Run the contract test kit against it (see :mod:`adapterstudio.api.testing`).

Errors the user can fix are raised as :class:`adapterstudio.core.errors.UserError`
subclasses (re-exported here) with one clear sentence; tokens never appear in messages,
logs or return values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from adapterstudio.core.context import NULL_CONTEXT, TaskContext
from adapterstudio.core.errors import AlreadyExists, InvalidInput, NotFound, PickleRefused, UserError

API_VERSION = 1
ENTRY_POINT_GROUP = "adapterstudio.hub_providers"

__all__ = [
    "API_VERSION", "ENTRY_POINT_GROUP", "AuthError", "AuthStatus", "HubProvider", "NetworkError",
    "ProviderCapabilities", "ProviderConfig", "PullResult", "PushResult", "RemoteAdapter", "RemoteDetail",
    "RemoteFile", "RemoteNotFound", "UserError", "NotFound", "AlreadyExists", "InvalidInput", "PickleRefused",
    "TaskContext", "NULL_CONTEXT",
]


# -- errors ------------------------------------------------------------------------
class AuthError(UserError):
    """Not logged in, or the back-end refused the credentials (never includes the token)."""


class RemoteNotFound(NotFound):
    """The remote adapter, revision or file does not exist (or is not visible to this user)."""


class NetworkError(UserError):
    """The back-end could not be reached or the transfer broke off; nothing was published or imported."""


# -- records -----------------------------------------------------------------------
@dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider can do; the CLI and GUI hide what it cannot."""

    search: bool = True
    push: bool = True
    delete: bool = True
    private_repos: bool = False  # push(private=True) is meaningful
    revisions: bool = True  # pull(revision=...) of older revisions
    login: bool = False  # needs (and supports) login/logout
    card_validation: bool = False  # validate_card() asks the back-end

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProviderConfig:
    """How a provider is built. Unknown keys go in *options*; providers ignore what they do not use."""

    endpoint: str | None = None  # URL-based back-ends (None: the provider's own default/environment)
    token: str | None = None  # an explicit token; None: the provider's stored login or environment
    root: str | None = None  # folder-based back-ends
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuthStatus:
    logged_in: bool
    user: str | None = None
    method: str = "none"  # "token" | "env" | "stored" | "filesystem" | "none"
    detail: str = ""  # one sentence for people; never the token

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoteFile:
    path: str
    size: int | None = None
    sha256: str | None = None  # known for LFS / folder files
    git_oid: str | None = None  # git blob id for regular files on git-based hubs
    lfs: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoteAdapter:
    """A search hit: a remote adapter repository."""

    id: str
    provider: str
    revision: str | None = None
    base_model: str | None = None
    library_name: str | None = None
    pipeline_tag: str | None = None
    tags: list[str] = field(default_factory=list)
    private: bool = False
    last_modified: str | None = None
    downloads: int | None = None
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoteDetail:
    """One remote adapter at one revision: its card and its files."""

    adapter: RemoteAdapter
    card: str | None  # the model card's text (README.md), front matter included
    card_data: dict[str, Any] = field(default_factory=dict)  # the card's parsed front matter
    files: list[RemoteFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"adapter": self.adapter.to_json(), "card": self.card, "card_data": self.card_data,
                "files": [f.to_json() for f in self.files]}


@dataclass
class PullResult:
    id: str
    revision: str  # the immutable revision actually downloaded
    folder: Path
    files: list[RemoteFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # remote files not downloaded (pickle, unrelated)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, "folder": str(self.folder),
                "files": [f.to_json() for f in self.files], "skipped": self.skipped}


@dataclass
class PushResult:
    id: str
    revision: str  # the new immutable revision
    url: str | None = None
    created: bool = False  # a new repository was created

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the protocol ------------------------------------------------------------------
@runtime_checkable
class HubProvider(Protocol):
    """What every hub provider implements. Ids are ``owner/name`` strings.

    Weights policy: ``pull`` downloads safetensors, JSON and text files only; pickle
    weights (``.bin``, ``.pt`` ...) only when ``allow_pickle`` is true, otherwise it
    raises :class:`PickleRefused` when they are the only weights. Every downloaded file
    is verified (size and hash) before ``pull`` returns; on any failure *dest* is left
    without a partial file.
    """

    name: str  # the entry point name, e.g. "huggingface"
    display_name: str
    capabilities: ProviderCapabilities

    def describe(self) -> str:
        """One line: where this provider points (an endpoint URL, a folder)."""
        ...

    def auth_status(self) -> AuthStatus: ...

    def login(self, token: str) -> AuthStatus:
        """Check *token* with the back-end and store it by the back-end's own mechanism."""
        ...

    def logout(self) -> None: ...

    def search(self, query: str = "", *, base_model: str | None = None, author: str | None = None,
               limit: int = 50) -> list[RemoteAdapter]:
        """Adapters matching *query*; with *base_model* (a Hub id) only adapters of that base."""
        ...

    def show(self, repo_id: str, revision: str | None = None) -> RemoteDetail: ...

    def pull(self, repo_id: str, dest: Path, *, revision: str | None = None, allow_pickle: bool = False,
             ctx: TaskContext = NULL_CONTEXT) -> PullResult:
        """Download *repo_id* at *revision* (default: the latest) into *dest* (created; must be empty)."""
        ...

    def push(self, folder: Path, repo_id: str, *, private: bool = False, message: str = "",
             ctx: TaskContext = NULL_CONTEXT) -> PushResult:
        """Publish the files of *folder* as a new revision of *repo_id* (created when missing)."""
        ...

    def delete(self, repo_id: str) -> None: ...

    def validate_card(self, text: str) -> list[str]:
        """Errors the back-end finds in a model card (empty list: valid; [] when not supported)."""
        ...
