"""Fixtures for the hub tests: a loopback Hub per mode, and clients pointed at it."""

from __future__ import annotations

import pytest

from tests.hubserver import HubServer

TOKEN = "hf_testTOKEN_aQ7xK29sLmN4pR8vW3yZ"  # a made-up token; the tests assert it is never printed
USER = "alice"


@pytest.fixture(params=["regular", "lfs"])
def hub(request, monkeypatch):
    """A fresh Hub-compatible server; 'lfs' serves weights through LFS (the client runs without Xet)."""
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)  # conftest makes tests offline; this server is loopback
    monkeypatch.setattr(hfc, "HF_HUB_DISABLE_XET", True)  # a server without Xet (HUB-PROTOCOL.md)
    server = HubServer(request.param).start()
    server.add_user(USER, TOKEN)
    yield server
    server.stop()


def hub_env(server: HubServer, tmp_path, token: str | None = TOKEN) -> dict[str, str]:
    """Environment for a CLI subprocess talking to *server*."""
    env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if token:
        env["HF_TOKEN"] = token
    return env
