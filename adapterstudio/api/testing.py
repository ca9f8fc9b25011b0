"""The contract test kit every hub provider must pass (shipped as a pytest plugin).

Installing AdapterStudio registers this module with pytest (entry point ``pytest11``),
so its fixtures are available in any test suite. To test a provider, subclass
:class:`ProviderContract` and give it a ``provider`` fixture that builds the provider
against a fresh, disposable back-end (a test server, a temporary folder), already
authenticated for writing::

    import pytest
    from adapterstudio.api.testing import ProviderContract

    class TestMyHub(ProviderContract):
        namespace = "alice"            # the owner part of repository ids pushed in the tests

        @pytest.fixture
        def provider(self, tmp_path):
            return make_provider(ProviderConfig(root=str(tmp_path)))

The tests push small synthetic adapters (a LoRA config and random safetensors weights;
no torch needed), then search, show, pull, re-push and delete them, checking the
behaviour the hub service relies on: byte-identical round trips, immutable revisions,
search by base model, pickle refused by default, clear errors for missing things, and
no partial files.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapterstudio.api import (
    AuthStatus,
    HubProvider,
    PickleRefused,
    ProviderCapabilities,
    PullResult,
    PushResult,
    RemoteDetail,
    UserError,
)
from adapterstudio.api.registry import check_provider
from adapterstudio.core.errors import NotFound


def write_adapter_folder(folder: Path, *, base_model: str = "contract-org/tiny-base", seed: int = 0,
                         pickle_only: bool = False, card: bool = True) -> Path:
    """A small PEFT-shaped LoRA adapter folder (synthetic weights) with a model card."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
           "base_model_name_or_path": base_model}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    rng = np.random.default_rng(seed)
    tensors = {f"base_model.model.layer.{i}.query.lora_{ab}.weight": rng.standard_normal((4, 16) if ab == "A" else (16, 4)).astype("float32")
               for i in range(2) for ab in "AB"}
    if pickle_only:
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04 not really a pickle " + bytes(rng.integers(0, 255, 64, dtype="uint8")))
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(folder / "adapter_model.safetensors"))
    if card:
        (folder / "README.md").write_text(
            f"---\nlibrary_name: peft\nbase_model: {base_model}\ntags:\n- peft\n- lora\n- base_model:adapter:{base_model}\n"
            f"---\n\n# Contract adapter {seed}\n", encoding="utf-8")
    return folder


@pytest.fixture
def make_adapter_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_adapter_folder(base_model=..., seed=..., pickle_only=...)`` -> a fresh adapter folder."""

    def make(**kwargs: Any) -> Path:
        return write_adapter_folder(tmp_path_factory.mktemp("contract-adapter") / "adapter", **kwargs)

    return make


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


class ProviderContract:
    """Subclass in your tests and provide a ``provider`` fixture; set ``namespace`` if needed."""

    namespace = "contract-user"

    def repo_id(self, label: str = "adapter") -> str:
        return f"{self.namespace}/{label}-{uuid.uuid4().hex[:8]}"

    # -- identity ----------------------------------------------------------------
    def test_implements_the_protocol(self, provider: HubProvider) -> None:
        assert check_provider(provider) == ""
        assert isinstance(provider, HubProvider)
        assert isinstance(provider.name, str) and provider.name
        assert isinstance(provider.display_name, str) and provider.display_name
        assert isinstance(provider.capabilities, ProviderCapabilities)
        assert isinstance(provider.describe(), str)

    def test_auth_status(self, provider: HubProvider) -> None:
        status = provider.auth_status()
        assert isinstance(status, AuthStatus)
        assert status.logged_in, "the provider fixture must be authenticated for writing"

    # -- round trips ---------------------------------------------------------------
    def test_push_show_pull_is_byte_identical(self, provider: HubProvider, make_adapter_folder: Callable[..., Path], tmp_path: Path) -> None:
        src = make_adapter_folder()
        rid = self.repo_id()
        pushed = provider.push(src, rid, message="first upload")
        assert isinstance(pushed, PushResult) and pushed.id == rid and pushed.revision
        detail = provider.show(rid)
        assert isinstance(detail, RemoteDetail)
        assert detail.adapter.id == rid
        sizes = {f.path: f.size for f in detail.files}
        for rel, data in _files(src).items():
            assert sizes.get(rel) == len(data), rel
        assert detail.card is not None and "library_name: peft" in detail.card
        assert detail.card_data.get("base_model") == "contract-org/tiny-base"
        result = provider.pull(rid, tmp_path / "pulled")
        assert isinstance(result, PullResult)
        assert result.revision == pushed.revision or pushed.revision.startswith(result.revision) \
            or result.revision.startswith(pushed.revision)
        assert _files(tmp_path / "pulled") == _files(src)

    def test_new_revision_keeps_the_old_one(self, provider: HubProvider, make_adapter_folder: Callable[..., Path], tmp_path: Path) -> None:
        rid = self.repo_id()
        first = provider.push(make_adapter_folder(seed=1), rid, message="v1")
        second_src = make_adapter_folder(seed=2)
        second = provider.push(second_src, rid, message="v2")
        assert second.revision != first.revision
        provider.pull(rid, tmp_path / "latest")
        assert _files(tmp_path / "latest") == _files(second_src)
        if provider.capabilities.revisions:
            provider.pull(rid, tmp_path / "old", revision=first.revision)
            old = _files(tmp_path / "old")
            assert old["adapter_model.safetensors"] != _files(second_src)["adapter_model.safetensors"]

    def test_search_by_query_and_by_base(self, provider: HubProvider, make_adapter_folder: Callable[..., Path]) -> None:
        if not provider.capabilities.search:
            pytest.skip("provider cannot search")
        base_a, base_b = f"org-a/base-{uuid.uuid4().hex[:6]}", f"org-b/base-{uuid.uuid4().hex[:6]}"
        rid_a, rid_b = self.repo_id("for-a"), self.repo_id("for-b")
        provider.push(make_adapter_folder(base_model=base_a), rid_a)
        provider.push(make_adapter_folder(base_model=base_b), rid_b)
        assert rid_a in [h.id for h in provider.search(rid_a.split("/")[1])]
        hits = provider.search("", base_model=base_a)
        assert [h.id for h in hits] == [rid_a]
        assert hits[0].base_model == base_a

    # -- refusals and errors -------------------------------------------------------
    def test_missing_adapter_is_not_found(self, provider: HubProvider, tmp_path: Path) -> None:
        rid = self.repo_id("missing")
        with pytest.raises(NotFound):
            provider.show(rid)
        with pytest.raises(NotFound):
            provider.pull(rid, tmp_path / "x")
        assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())

    def test_missing_revision_is_not_found(self, provider: HubProvider, make_adapter_folder: Callable[..., Path], tmp_path: Path) -> None:
        rid = self.repo_id()
        provider.push(make_adapter_folder(), rid)
        with pytest.raises(NotFound):
            provider.pull(rid, tmp_path / "x", revision="0" * 40)

    def test_pickle_only_is_refused_unless_allowed(self, provider: HubProvider, make_adapter_folder: Callable[..., Path], tmp_path: Path) -> None:
        rid = self.repo_id("pickle")
        provider.push(make_adapter_folder(pickle_only=True), rid)
        with pytest.raises(PickleRefused):
            provider.pull(rid, tmp_path / "refused")
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
        provider.pull(rid, tmp_path / "allowed", allow_pickle=True)
        assert (tmp_path / "allowed" / "adapter_model.bin").is_file()

    def test_pull_into_a_non_empty_folder_is_refused(self, provider: HubProvider, make_adapter_folder: Callable[..., Path], tmp_path: Path) -> None:
        rid = self.repo_id()
        provider.push(make_adapter_folder(), rid)
        dest = tmp_path / "busy"
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
        with pytest.raises(UserError):
            provider.pull(rid, dest)
        assert [p.name for p in dest.iterdir()] == ["keep.txt"]

    def test_delete(self, provider: HubProvider, make_adapter_folder: Callable[..., Path]) -> None:
        if not provider.capabilities.delete:
            pytest.skip("provider cannot delete")
        rid = self.repo_id("doomed")
        provider.push(make_adapter_folder(), rid)
        provider.delete(rid)
        with pytest.raises(NotFound):
            provider.show(rid)
        with pytest.raises(NotFound):
            provider.delete(rid)

    def test_validate_card_returns_a_list(self, provider: HubProvider) -> None:
        errors = provider.validate_card("---\nlibrary_name: peft\nbase_model: org/base\n---\n\n# ok\n")
        assert errors == []
