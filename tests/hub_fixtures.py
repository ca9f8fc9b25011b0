"""Fixtures for the hub tests: a loopback Hub per mode, and clients pointed at it."""

from __future__ import annotations

import time

import pytest

from tests.hubserver import HubServer

TOKEN = "hf_testTOKEN_aQ7xK29sLmN4pR8vW3yZ"  # a made-up token; the tests assert it is never printed
USER = "alice"


class NoWait:
    """The time module, but sleep returns at once and records the wait it was asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture(params=["regular", "lfs"])
def hub(request, monkeypatch):
    """A fresh Hub-compatible server; 'lfs' serves weights through LFS (the client runs without Xet).

    The client in this process retries broken transfers at once: huggingface_hub waits 1 s before
    resuming a download and backs off up to 8 s between upload attempts, which against a loopback
    server only adds up (25 s for one test). The retries themselves, and their number, are unchanged.
    """
    import huggingface_hub.constants as hfc
    import huggingface_hub.file_download as hf_download
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)  # conftest makes tests offline; this server is loopback
    monkeypatch.setattr(hfc, "HF_HUB_DISABLE_XET", True)  # a server without Xet (HUB-PROTOCOL.md)
    no_wait = NoWait()
    monkeypatch.setattr(hf_download, "time", no_wait)  # raises if huggingface_hub stops importing time there
    monkeypatch.setattr(hf_http, "time", no_wait)
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
