"""The hub commands drive the unmodified huggingface_hub client against the loopback Hub
(tests/hubserver.py): login, push, search, pull, faults.

The commands run in this process (``cli_main``, with the environment a subprocess would get);
the round trip runs once more through the real command in subprocesses (marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hub_fixtures import TOKEN, USER, hub, hub_env  # noqa: F401  (fixture)

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def catalogue(lib, minilm_path, peft_adapters):
    """A library with MiniLM (recorded with its Hub id) and a PEFT LoRA adapter for it."""
    lib.add_base(minilm_path, name="minilm", hub_id=BASE_ID, compute_hash=False)
    lib.import_adapter(peft_adapters["lora"], "sent-lora", base="minilm")
    return lib


def run(cli, server, tmp_path, *args, token=TOKEN, input=None):
    """A hub command with the environment hub_env gives it; *cli* is cli_main or the subprocess cli."""
    from huggingface_hub.utils import disable_progress_bars

    with disable_progress_bars():  # what HF_HUB_DISABLE_PROGRESS_BARS does for a subprocess: read only at import
        res = cli(*args, env=hub_env(server, tmp_path, token=token), input=input)
    for secret in (TOKEN, "hf_wrongTOKEN"):
        assert secret not in res.stdout and secret not in res.stderr, "a token was printed"
    return res


def ok_json(res):
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def no_token_in_files(*roots: Path) -> None:
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and p.suffix in (".log", ".txt", ".json", ".md", "") and p.stat().st_size < 5_000_000:
                if "token" in p.name or "stored_tokens" in p.name:
                    continue  # huggingface_hub's own token store (that is where it belongs)
                assert TOKEN.encode() not in p.read_bytes(), f"token written to {p}"


def test_login_push_search_pull_round_trip(cli_main, catalogue, hub, tmp_path):
    _round_trip(cli_main, catalogue, hub, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_the_real_command_round_trip(cli, catalogue, hub, tmp_path):
    """The same round trip through ``python -m adapterstudio`` subprocesses: the token read from the
    real stdin, exit codes, JSON on stdout, a one-line error on stderr."""
    _round_trip(cli, catalogue, hub, tmp_path)


def _round_trip(cli, catalogue, hub, tmp_path):
    lib = catalogue
    # login: the token goes to huggingface_hub's store under HF_HOME, never to the output
    res = run(cli, hub, tmp_path, "hub", "login", "--token-stdin", "--json", token=None, input=TOKEN + "\n")
    assert ok_json(res)["user"] == USER
    stored = (tmp_path / "hf-home" / "token").read_text().strip()
    assert stored == TOKEN
    assert ok_json(run(cli, hub, tmp_path, "hub", "whoami", "--json", token=None))["user"] == USER

    # push (authenticated by the stored login)
    res = run(cli, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/minilm-sent-lora", "--message",
              "first version", "--json", token=None)
    pushed = ok_json(res)
    assert pushed["base_model"] == BASE_ID and pushed["created"] is True
    repo = hub.repo(f"{USER}/minilm-sent-lora")
    files = repo.head.files
    assert repo.head.message == "first version"
    card = files["README.md"].data.decode()
    assert card.startswith("---\n") and "library_name: peft" in card and f"base_model: {BASE_ID}" in card
    assert f"base_model:adapter:{BASE_ID}" in card and "pipeline_tag: text-classification" in card
    assert "## How to use" in card and str(Path.home()) not in card.split("---")[1]
    assert files["adapter_model.safetensors"].lfs is (hub.state.upload_mode == "lfs")

    # search: by text and as the adapters of a base
    hits = ok_json(run(cli, hub, tmp_path, "hub", "search", "minilm", "--json", token=None))
    assert [h["id"] for h in hits] == [f"{USER}/minilm-sent-lora"]
    hits = ok_json(run(cli, hub, tmp_path, "hub", "search", "--base", "minilm", "--json", token=None))
    assert [h["id"] for h in hits] == [f"{USER}/minilm-sent-lora"] and hits[0]["base_model"] == BASE_ID
    assert ok_json(run(cli, hub, tmp_path, "hub", "search", "--base", "other/base", "--json", token=None)) == []

    # show
    shown = ok_json(run(cli, hub, tmp_path, "hub", "show", f"{USER}/minilm-sent-lora", "--json", token=None))
    assert shown["card_data"]["library_name"] == "peft"

    # pull back: byte-identical adapter, linked to the catalogued base, compatibility checked
    res = run(cli, hub, tmp_path, "hub", "pull", f"{USER}/minilm-sent-lora", "--name", "pulled", "--json", token=None)
    pulled = ok_json(res)
    assert pulled["base"] == "minilm" and pulled["compatible"] is True and pulled["revision"] == pushed["revision"]
    a, b = lib.catalogue.get_adapter("sent-lora"), lib.catalogue.get_adapter("pulled")
    for fname in ("adapter_config.json", "adapter_model.safetensors"):
        assert (Path(a.path) / fname).read_bytes() == (Path(b.path) / fname).read_bytes()
    assert b.source == "hub:huggingface" and b.source_ref == f"{USER}/minilm-sent-lora@{pushed['revision']}"
    assert not any((lib.root / "downloads").rglob("*.safetensors"))

    # a second push is a new revision of the same repository
    res = run(cli, hub, tmp_path, "hub", "push", "pulled", "--repo", f"{USER}/minilm-sent-lora", "--json", token=None)
    again = ok_json(res)
    assert again["created"] is False and again["revision"] != pushed["revision"]
    res = run(cli, hub, tmp_path, "hub", "pull", f"{USER}/minilm-sent-lora", "--revision", pushed["revision"],
              "--name", "first", "--json", token=None)
    assert ok_json(res)["revision"] == pushed["revision"]
    assert lib.catalogue.get_adapter("first").source_ref.endswith("@" + pushed["revision"])

    # logout forgets the stored token
    ok_json(run(cli, hub, tmp_path, "hub", "logout", "--json", token=None))
    res = run(cli, hub, tmp_path, "hub", "whoami", token=None)
    assert res.returncode == 1 and "Not logged in" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    no_token_in_files(lib.root, tmp_path / "hf-home")


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_a_wrong_token_is_reported_in_one_sentence(cli_main, lib, hub, tmp_path):
    wrong = "hf_wrongTOKEN_123456"
    res = run(cli_main, hub, tmp_path, "hub", "whoami", token=wrong)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rejected the token (401 Unauthorized)" in lines[0]
    res = run(cli_main, hub, tmp_path, "hub", "login", "--token-stdin", token=None, input=wrong + "\n")
    assert res.returncode == 1 and "rejected the token" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hf-home" / "token").exists()


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_push_refuses_a_base_without_hub_id(cli_main, lib, minilm_path, peft_adapters, hub, tmp_path):
    lib.add_base(minilm_path, name="minilm", compute_hash=False)  # no --hub-id
    lib.import_adapter(peft_adapters["lora"], "sent-lora", base="minilm")
    res = run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/x")
    assert res.returncode == 1
    assert "--base-model" in res.stderr and "--hub-id" in res.stderr and "base add" in res.stderr
    assert hub.repo(f"{USER}/x") is None
    res = run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/x", "--base-model", "/tmp/minilm")
    assert res.returncode == 1 and "Hub model id" in res.stderr
    res = run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/x", "--base-model", BASE_ID, "--json")
    assert ok_json(res)["base_model"] == BASE_ID
    assert f"base_model: {BASE_ID}" in hub.repo(f"{USER}/x").head.files["README.md"].data.decode()


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_dropped_downloads_leave_nothing_imported_then_resume(cli_main, catalogue, hub, tmp_path):
    ok_json(run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/flaky", "--json"))
    hub.faults.drop_download = 100  # every attempt breaks off half-way (more than the client's retries)
    res = run(cli_main, hub, tmp_path, "hub", "pull", f"{USER}/flaky", "--name", "flaky")
    assert res.returncode == 1
    assert "connection failed" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert catalogue.catalogue.find_adapter("flaky") is None
    assert catalogue.catalogue.check()["ok"]
    hub.faults.drop_download = 0
    pulled = ok_json(run(cli_main, hub, tmp_path, "hub", "pull", f"{USER}/flaky", "--name", "flaky", "--json"))
    assert pulled["adapter"] == "flaky"
    a, b = catalogue.catalogue.get_adapter("sent-lora"), catalogue.catalogue.get_adapter("flaky")
    assert (Path(a.path) / "adapter_model.safetensors").read_bytes() == (Path(b.path) / "adapter_model.safetensors").read_bytes()


def _dropped_upload_publishes_nothing(cli_main, hub, tmp_path):
    hub.faults.drop_upload = 100  # every upload request breaks off half-way
    res = run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/dropped")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: Could not upload to alice/dropped") and "connection failed" in res.stderr
    repo = hub.repo(f"{USER}/dropped")
    assert repo is None or "adapter_model.safetensors" not in repo.head.files
    hub.faults.drop_upload = 0
    ok_json(run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/dropped", "--json"))
    assert "adapter_model.safetensors" in hub.repo(f"{USER}/dropped").head.files


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_a_dropped_upload_publishes_nothing(cli_main, catalogue, hub, tmp_path):
    _dropped_upload_publishes_nothing(cli_main, hub, tmp_path)


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_a_dropped_lfs_upload_publishes_nothing(cli_main, catalogue, hub, tmp_path):
    _dropped_upload_publishes_nothing(cli_main, hub, tmp_path)


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_a_dropped_lfs_upload_is_retried_and_arrives_intact(cli_main, catalogue, hub, tmp_path):
    hub.faults.drop_upload = 1
    ok_json(run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/retried", "--json"))
    puts = [r for r in hub.requests if r["method"] == "PUT"]
    assert puts[0]["status"] == 0 and puts[-1]["status"] == 200  # the first broke off, the retry landed
    sent = Path(catalogue.catalogue.get_adapter("sent-lora").path) / "adapter_model.safetensors"
    assert hub.repo(f"{USER}/retried").head.files["adapter_model.safetensors"].data == sent.read_bytes()


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_pull_refuses_pickle_and_incompatible_adapters_without_importing(cli_main, catalogue, hub, tmp_path):
    from adapterstudio.api import ProviderConfig
    from adapterstudio.api.registry import load_provider
    from adapterstudio.api.testing import write_adapter_folder

    p = load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN))
    p.push(write_adapter_folder(tmp_path / "pk", base_model=BASE_ID, pickle_only=True), f"{USER}/pickled")
    p.push(write_adapter_folder(tmp_path / "wrong", base_model=BASE_ID), f"{USER}/misfit")
    before = [a.name for a in catalogue.list_adapters()]
    res = run(cli_main, hub, tmp_path, "hub", "pull", f"{USER}/pickled")
    assert res.returncode == 1 and "pickle" in res.stderr and "--allow-pickle" in res.stderr
    res = run(cli_main, hub, tmp_path, "hub", "pull", f"{USER}/misfit")
    assert res.returncode == 1 and "does not fit base model 'minilm'" in res.stderr, res.stderr
    assert [a.name for a in catalogue.list_adapters()] == before
    assert not [q for q in (catalogue.root / "downloads").rglob("*") if q.is_file()]


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_pull_without_the_base_says_how_to_add_it(cli_main, lib, peft_adapters, hub, tmp_path):
    from adapterstudio.api import ProviderConfig
    from adapterstudio.api.registry import load_provider

    src = tmp_path / "src"
    import shutil

    shutil.copytree(peft_adapters["lora"], src)
    (src / "README.md").write_text(f"---\nlibrary_name: peft\nbase_model: {BASE_ID}\n---\n")
    load_provider("huggingface", ProviderConfig(endpoint=hub.url, token=TOKEN)).push(src, f"{USER}/orphan")
    res = run(cli_main, hub, tmp_path, "hub", "pull", f"{USER}/orphan")
    assert res.returncode == 0, res.stderr
    assert f"adapterstudio base add {BASE_ID}" in res.stdout
    assert lib.catalogue.get_adapter("orphan").base is None


def test_a_broken_provider_plugin_is_listed_with_its_error(cli_main, lib, tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "broken_hub_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-hub-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[adapterstudio.hub_providers]\nbroken = broken_hub_plugin_missing:make_provider\n")
    monkeypatch.syspath_prepend(str(site))  # installed, as far as importlib.metadata can tell
    res = cli_main("hub", "providers", "--json")
    assert res.returncode == 0, res.stderr
    entries = {e["name"]: e for e in json.loads(res.stdout)}
    assert entries["broken"]["ok"] is False and "broken_hub_plugin_missing" in entries["broken"]["error"]
    assert entries["huggingface"]["ok"] and entries["folder"]["ok"]
    res = cli_main("hub", "search", "x", "--provider", "broken")
    assert res.returncode == 1 and "is broken" in res.stderr
    res = cli_main("hub", "providers")
    assert "broken: ModuleNotFoundError" in res.stdout


def test_folder_provider_through_the_cli(cli_main, catalogue, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    env = {"ADAPTERSTUDIO_SHARED_FOLDER": str(nas)}
    res = cli_main("hub", "push", "sent-lora", "--repo", "team/sent-lora", "--provider", "folder", "--json", env=env)
    assert res.returncode == 0, res.stderr
    res = cli_main("hub", "search", "--base", "minilm", "--provider", "folder", "--json", env=env)
    assert [h["id"] for h in json.loads(res.stdout)] == ["team/sent-lora"]
    res = cli_main("hub", "pull", "team/sent-lora", "--name", "from-nas", "--provider", "folder", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["base"] == "minilm"
    a, b = catalogue.catalogue.get_adapter("sent-lora"), catalogue.catalogue.get_adapter("from-nas")
    assert (Path(a.path) / "adapter_model.safetensors").read_bytes() == (Path(b.path) / "adapter_model.safetensors").read_bytes()
    assert b.source == "hub:folder"
    res = cli_main("hub", "delete", "team/sent-lora", "--provider", "folder", env=env)
    assert res.returncode == 1 and "--yes" in res.stderr
    assert cli_main("hub", "delete", "team/sent-lora", "--provider", "folder", "--yes", env=env).returncode == 0
    res = cli_main("hub", "show", "team/sent-lora", "--provider", "folder", env=env)
    assert res.returncode == 1 and "no adapter 'team/sent-lora'" in res.stderr


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_base_fetch_downloads_a_base_registered_by_hub_id(cli_main, lib, hub, tmp_path):
    from huggingface_hub import HfApi

    from tests.helpers import tiny_model

    model = tiny_model("bert", tmp_path / "tiny-bert")
    (model / "pytorch_model.bin").write_bytes(b"pickle weights that must not be downloaded")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(f"{USER}/tiny-bert")
    api.upload_folder(folder_path=str(model), repo_id=f"{USER}/tiny-bert")
    lib.add_base(f"{USER}/tiny-bert", name="tiny-bert")
    assert lib.catalogue.get_base("tiny-bert").available is False
    res = run(cli_main, hub, tmp_path, "base", "fetch", "tiny-bert", "--json")
    rec = ok_json(res)
    assert rec["available"] and rec["architecture"] == "BertForSequenceClassification"
    assert rec["revision"] == hub.repo(f"{USER}/tiny-bert").head.sha
    folder = Path(rec["path"])
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    assert str(tmp_path / "hf-home") in rec["path"]


@pytest.mark.parametrize("hub", ["lfs"], indirect=True)
def test_a_pull_broken_off_resumes_on_the_next_run(lib, hub, tmp_path, monkeypatch):
    """A big adapter: huggingface_hub resumes with Range within a run, and the staged partial
    file lets the next run continue where the last one stopped; the catalogue only changes at the end."""
    import numpy as np
    from safetensors.numpy import save_file

    from adapterstudio.api import NetworkError
    from adapterstudio.api.testing import write_adapter_folder
    from adapterstudio.services import hub as hub_service

    src = write_adapter_folder(tmp_path / "big")
    rng = np.random.default_rng(0)
    save_file({"base_model.model.layer.0.query.lora_A.weight": rng.standard_normal((6, 1_000_000)).astype("float32")},
              str(src / "adapter_model.safetensors"))  # 24 MB: more than the client's 10 MB read chunk
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    lib.settings.hub_endpoint = hub.url
    hub_service.get_provider(lib).push(src, f"{USER}/big")
    hub.faults.drop_download = 100
    with pytest.raises(NetworkError, match="connection failed"):
        hub_service.pull_adapter(lib, f"{USER}/big")
    assert lib.catalogue.find_adapter("big") is None
    gets = [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith(".safetensors")]
    assert any(r["range"] for r in gets)  # resumed within the run
    hub.faults.drop_download = 0
    n = len(hub.requests)
    res = hub_service.pull_adapter(lib, f"{USER}/big")
    last = [r for r in hub.requests[n:] if r["method"] == "GET" and r["path"].endswith(".safetensors")]
    assert len(last) == 1 and last[0]["range"] and last[0]["status"] == 206  # continued, not restarted
    stored = Path(lib.catalogue.get_adapter(res["adapter"]).path) / "adapter_model.safetensors"
    assert stored.read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    assert not (lib.root / "downloads").exists() or not any((lib.root / "downloads").iterdir())


@pytest.mark.parametrize("hub", ["regular"], indirect=True)
def test_a_card_the_hub_rejects_stops_the_push_before_upload(cli_main, catalogue, hub, tmp_path):
    hub.state.card_rules = ['"license" is required by this hub']
    res = run(cli_main, hub, tmp_path, "hub", "push", "sent-lora", "--repo", f"{USER}/strict")
    assert res.returncode == 1 and "model card" in res.stderr and "license" in res.stderr
    assert hub.repo(f"{USER}/strict") is None
    assert not [r for r in hub.requests if r["path"].startswith("/api/repos/create")]
