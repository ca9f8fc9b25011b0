"""The Hugging Face provider against the loopback Hub: the contract kit, in both upload modes."""

from __future__ import annotations

import pytest

from adapterstudio.api import AuthError, NetworkError, ProviderConfig
from adapterstudio.api.registry import load_provider
from adapterstudio.api.testing import ProviderContract, make_adapter_folder  # noqa: F401  (fixture)
from tests.hub_fixtures import TOKEN, USER, hub  # noqa: F401  (fixture)


class TestHuggingFaceContract(ProviderContract):
    namespace = USER

    @pytest.fixture
    def provider(self, hub):
        return load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))


def test_weights_travel_as_lfs_only_in_lfs_mode(hub, make_adapter_folder):
    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    p.push(make_adapter_folder(), f"{USER}/modes")
    files = {f.path: f for f in p.show(f"{USER}/modes").files}
    assert files["adapter_model.safetensors"].lfs is (hub.state.upload_mode == "lfs")
    assert files["adapter_config.json"].lfs is False
    puts = [r for r in hub.requests if r["method"] == "PUT"]
    assert bool(puts) is (hub.state.upload_mode == "lfs")


def test_a_dropped_download_is_resumed_and_verified(hub, make_adapter_folder, tmp_path):
    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    src = make_adapter_folder()
    p.push(src, f"{USER}/flaky")
    hub.faults.drop_download = 1
    p.pull(f"{USER}/flaky", tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    gets = [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith("adapter_model.safetensors")]
    assert len(gets) == 2 and gets[0]["status"] < 0  # the first broke off, the second completed


def test_a_wrong_token_is_one_sentence_without_the_token(hub, make_adapter_folder):
    wrong = "hf_wrongTOKEN_zz9Kq1"
    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=wrong))
    status = p.auth_status()
    assert not status.logged_in and "rejected the token" in status.detail
    with pytest.raises(AuthError) as err:
        p.push(make_adapter_folder(), f"{USER}/nope")
    msg = str(err.value)
    assert "401" in msg and wrong not in msg and ". " not in msg and "\n" not in msg


def test_an_unreachable_hub_is_a_network_error(make_adapter_folder, monkeypatch):
    import socket

    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    p = load_provider("huggingface", ProviderConfig(endpoint=f"http://127.0.0.1:{port}", token=TOKEN))
    with pytest.raises(NetworkError, match="connection failed"):
        p.show("alice/anything")


def test_card_validation_uses_the_hub(hub):
    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    assert p.validate_card("---\nlibrary_name: peft\nbase_model: org/base\n---\n") == []
    errors = p.validate_card("---\nlibrary_name: peft\nbase_model: /home/me/models/base\n---\n")
    assert errors and "base_model" in errors[0]
    assert any(r["path"] == "/api/validate-yaml" for r in hub.requests)


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_private_repos_are_hidden_from_others(hub, make_adapter_folder, tmp_path):
    owner = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    owner.push(make_adapter_folder(), f"{USER}/secret", private=True)
    assert owner.show(f"{USER}/secret").adapter.private is True
    hub.add_user("bob", "hf_bobTOKEN_000")
    other = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token="hf_bobTOKEN_000"))
    assert f"{USER}/secret" not in [h.id for h in other.search("secret")]
    from adapterstudio.core.errors import NotFound

    with pytest.raises(NotFound, match="private"):
        other.pull(f"{USER}/secret", tmp_path / "x")


def test_the_token_never_reaches_the_logs(hub, make_adapter_folder, tmp_path, caplog):
    import logging

    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    caplog.set_level(logging.DEBUG)  # after the provider quietened huggingface_hub: log everything
    for name in ("huggingface_hub", "httpx", "httpx2", "httpcore", "adapterstudio"):
        caplog.set_level(logging.DEBUG, logger=name)  # restored after the test
    p.auth_status()
    p.push(make_adapter_folder(), f"{USER}/logged")
    p.search("logged")
    p.pull(f"{USER}/logged", tmp_path / "out")
    assert any(r.name.startswith("huggingface_hub") for r in caplog.records), "the check would prove nothing"
    assert TOKEN not in caplog.text and TOKEN not in repr(p)
