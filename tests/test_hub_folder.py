"""The shared-folder provider: the contract kit, atomic publishing, verification on pull."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterstudio.api import ProviderConfig, UserError
from adapterstudio.api.registry import load_provider
from adapterstudio.api.testing import ProviderContract, make_adapter_folder  # noqa: F401  (fixture)


class TestFolderProviderContract(ProviderContract):
    namespace = "team"

    @pytest.fixture
    def provider(self, tmp_path):
        root = tmp_path / "nas"
        root.mkdir()
        return load_provider("folder", ProviderConfig(root=str(root)))


@pytest.fixture
def nas(tmp_path) -> Path:
    root = tmp_path / "nas"
    root.mkdir()
    return root


def test_revisions_are_immutable_folders_with_a_sha256_manifest(nas, make_adapter_folder):
    p = load_provider("folder", ProviderConfig(root=str(nas)))
    res = p.push(make_adapter_folder(), "team/sentiment", message="first")
    rev_dir = nas / "team" / "sentiment" / "revisions" / res.revision
    manifest = json.loads((rev_dir / "manifest.json").read_text())
    assert manifest["message"] == "first"
    import hashlib

    for f in manifest["files"]:
        data = (rev_dir / "files" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
    assert (nas / "team" / "sentiment" / "refs" / "main").read_text().strip() == res.revision
    # nothing temporary is left behind
    assert not [q for q in (nas / "team" / "sentiment" / "revisions").iterdir() if q.name.startswith(".")]


def test_a_damaged_shared_copy_is_refused_and_nothing_is_pulled(nas, make_adapter_folder, tmp_path):
    p = load_provider("folder", ProviderConfig(root=str(nas)))
    res = p.push(make_adapter_folder(), "team/damaged")
    weights = nas / "team" / "damaged" / "revisions" / res.revision / "files" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(UserError, match="does not match its manifest"):
        p.pull("team/damaged", dest)
    assert not any(dest.iterdir())


def test_an_interrupted_push_publishes_nothing(nas, make_adapter_folder):
    from adapterstudio.core.context import Context
    from adapterstudio.core.errors import Cancelled

    p = load_provider("folder", ProviderConfig(root=str(nas)))
    good = p.push(make_adapter_folder(seed=1), "team/crashy")
    ctx = Context(on_progress=lambda done, total, msg: ctx.cancel())  # stop after the first chunk
    with pytest.raises(Cancelled):
        p.push(make_adapter_folder(seed=2), "team/crashy", ctx=ctx)
    assert p.show("team/crashy").adapter.revision == good.revision
    assert [q.name for q in (nas / "team" / "crashy" / "revisions").iterdir()] == [good.revision]


def test_without_a_folder_the_error_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv("ADAPTERSTUDIO_SHARED_FOLDER", raising=False)
    p = load_provider("folder", ProviderConfig())
    with pytest.raises(UserError, match="ADAPTERSTUDIO_SHARED_FOLDER"):
        p.search("")
