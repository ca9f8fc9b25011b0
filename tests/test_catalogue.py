"""The catalogue: registering bases, importing PEFT adapters, compatibility, export."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from adapterstudio.core.errors import AlreadyExists, Incompatible, InvalidInput, NotFound, PickleRefused


def snapshot(home: Path) -> dict:
    """Everything observable about a library: DB rows and files on disk."""
    con = sqlite3.connect(home / "catalogue.db")
    rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("bases", "adapters", "adapter_files", "adapter_tags", "runs")}
    con.close()
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*")
                   if p.is_file() and not p.name.startswith("catalogue.db"))
    return {"rows": rows, "files": files}


def test_minilm_registers_with_its_facts(lib, minilm_path):
    b = lib.add_base(minilm_path, "minilm")
    assert b.architecture == "BertModel" and b.model_type == "bert"
    assert b.num_parameters == 22_713_728  # all-MiniLM-L6-v2: 22.7M parameters
    assert b.dtype == "float32"
    assert b.size_bytes == (minilm_path / "model.safetensors").stat().st_size
    assert b.content_hash and b.content_hash.startswith("sha256:")
    assert {"query", "key", "value", "dense"} <= set(b.target_modules)
    assert b.path == str(minilm_path.resolve())
    assert [x.name for x in lib.list_bases()] == ["minilm"]


def test_base_name_taken_and_missing_path(lib, minilm_path, tmp_path):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    with pytest.raises(AlreadyExists, match="minilm"):
        lib.add_base(minilm_path, "minilm", compute_hash=False)
    with pytest.raises(InvalidInput, match="does not exist"):
        lib.add_base(tmp_path / "nope", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no config.json"):
        lib.add_base(tmp_path / "empty")


def test_hub_id_registers_for_later_and_cache_is_found(lib, tmp_path, minilm_path, monkeypatch):
    b = lib.add_base("someone/some-model")
    assert b.source == "hub" and not b.available and b.path is None
    # A model already in the HF cache is used in place (never copied).
    cache = tmp_path / "hf-home" / "hub"
    snap = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snap / f).symlink_to(minilm_path / f)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    cached = lib.add_base("sentence-transformers/all-MiniLM-L6-v2")
    assert cached.source == "hf-cache" and cached.revision == "a" * 40 and cached.path == str(snap)
    assert cached.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert not any(lib.root.rglob("model.safetensors"))


def test_scan_cache_registers_every_model_once(lib, tmp_path, minilm_path):
    cache = tmp_path / "cache"
    for repo in ("org--a", "org--b"):
        snap = cache / f"models--{repo}" / "snapshots" / ("b" * 40)
        snap.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            (snap / f).symlink_to(minilm_path / f)
    (cache / "models--org--noweights" / "snapshots" / "c").mkdir(parents=True)
    res = lib.scan_hf_cache(cache)
    assert sorted(b.name for b in res["added"]) == ["org/a", "org/b"]
    again = lib.scan_hf_cache(cache)
    assert again["added"] == [] and len(again["skipped"]) == 2


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "loha", "lokr", "prompt"])
def test_peft_adapters_import_compatible_and_export_identical(lib, minilm_path, peft_adapters, kind, tmp_path):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    src = peft_adapters[kind]
    a = lib.import_adapter(src, f"minilm-{kind}", base="minilm", tags=["demo"])
    assert a.compatible is True and a.base == "minilm"
    cfg = json.loads((src / "adapter_config.json").read_text())
    assert a.peft_type == cfg["peft_type"] and a.task_type == "SEQ_CLS"
    assert a.tags == ["demo"]
    out = lib.export_adapter(a.name, tmp_path / "out")
    for f in src.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert lib.check_adapter(a.name).compatible


def test_adapter_found_its_base_from_its_config(lib, minilm_path, peft_adapters):
    # adapter_config.json names the MiniLM folder as base_model_name_or_path
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    a = lib.import_adapter(peft_adapters["lora"])
    assert a.base == "minilm" and a.compatible is True and a.rank == 8
    assert a.target_modules == ["query", "value"]


def test_base_missing_is_kept_and_linked_later(lib, minilm_path, peft_adapters):
    a = lib.import_adapter(peft_adapters["lora"], "orphan")
    assert a.base is None and a.base_missing and a.compatible is None
    assert [x.name for x in lib.list_adapters(base_missing=True)] == ["orphan"]
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    a = lib.catalogue.get_adapter("orphan")
    assert a.base == "minilm" and a.compatible is True


def test_identical_files_stored_once(lib, minilm_path, peft_adapters):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    lib.import_adapter(peft_adapters["lora"], "one")
    lib.import_adapter(peft_adapters["lora"], "two")
    blobs = [p for p in (lib.root / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == len(list(peft_adapters["lora"].iterdir()))
    # removing one keeps the shared files for the other
    lib.remove_adapter("one")
    assert len([p for p in (lib.root / "blobs").rglob("*") if p.is_file()]) == len(blobs)
    assert (Path(lib.catalogue.get_adapter("two").path) / "adapter_model.safetensors").is_file()
    lib.remove_adapter("two")
    assert not [p for p in (lib.root / "blobs").rglob("*") if p.is_file()]
    assert not list((lib.root / "adapters").iterdir())


def test_search_filter_rename_tag_notes(lib, minilm_path, peft_adapters):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    lib.import_adapter(peft_adapters["lora"], "sentiment-lora", tags=["sentiment"])
    lib.import_adapter(peft_adapters["ia3"], "topic-ia3", tags=["topics"], notes="news topics")
    lib.import_adapter(peft_adapters["loha"], "orphan-loha")
    names = lambda **kw: [a.name for a in lib.list_adapters(**kw)]  # noqa: E731
    assert names(search="lora") == ["sentiment-lora"]
    assert names(search="news") == ["topic-ia3"]
    assert names(search="topics") == ["topic-ia3"]
    assert names(tag="sentiment") == ["sentiment-lora"]
    assert names(peft_type="ia3") == ["topic-ia3"]
    assert names(task_type="SEQ_CLS", base="minilm") == ["orphan-loha", "sentiment-lora", "topic-ia3"]
    assert names(search="%") == [] and names(search="lora_") == []
    lib.rename_adapter("topic-ia3", "topics-ia3")
    with pytest.raises(AlreadyExists):
        lib.rename_adapter("topics-ia3", "sentiment-lora")
    a = lib.tag_adapter("topics-ia3", add=["v2"])
    assert a.tags == ["topics", "v2"]
    assert lib.tag_adapter("topics-ia3", remove=["topics"]).tags == ["v2"]
    assert lib.set_notes("topics-ia3", "hello").notes == "hello"
    with pytest.raises(NotFound):
        lib.remove_adapter("nope")


# -- bad input: one sentence, catalogue unchanged --------------------------------------
@pytest.fixture
def populated(lib, minilm_path, peft_adapters):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    lib.import_adapter(peft_adapters["lora"], "existing")
    return lib


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _bad_inputs(tmp_path: Path, peft_adapters: dict, tiny_bert: Path) -> dict:
    lora = peft_adapters["lora"]
    cases = {}
    d = _copy(lora, tmp_path / "truncated")
    w = d / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    cases["truncated"] = (d, InvalidInput, "truncated")
    d = _copy(lora, tmp_path / "corrupt-header")
    w = d / "adapter_model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[10:20] = b"\xff" * 10
    w.write_bytes(bytes(raw))
    cases["corrupt"] = (d, InvalidInput, "not valid JSON|corrupt")
    d = _copy(lora, tmp_path / "no-config")
    (d / "adapter_config.json").unlink()
    cases["no-config"] = (d, InvalidInput, "no adapter_config.json")
    d = _copy(lora, tmp_path / "bad-config")
    (d / "adapter_config.json").write_text("{not json")
    cases["bad-config"] = (d, InvalidInput, "not valid JSON")
    d = _copy(lora, tmp_path / "no-type")
    (d / "adapter_config.json").write_text('{"r": 8}')
    cases["no-type"] = (d, InvalidInput, "no peft_type")
    d = _copy(lora, tmp_path / "pickle-only")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    cases["pickle"] = (d, PickleRefused, "pickle")
    cases["missing"] = (tmp_path / "does-not-exist", InvalidInput, "does not exist")
    cases["taken"] = (lora, AlreadyExists, "already in the catalogue")
    # a LoRA made for another BERT (hidden size 64) does not fit MiniLM (384)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    m = get_peft_model(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert)),
                       LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    m.save_pretrained(str(tmp_path / "other-bert-lora"))
    cases["shapes"] = (tmp_path / "other-bert-lora", Incompatible, "does not fit base model 'minilm'.*input size 64")
    return cases


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tests.helpers import tiny_model

    return tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


def test_bad_inputs_refused_and_catalogue_unchanged(populated, home, tmp_path, peft_adapters, tiny_bert):
    lib = populated
    for label, (path, exc, pattern) in _bad_inputs(tmp_path, peft_adapters, tiny_bert).items():
        before = snapshot(home)
        with pytest.raises(exc, match=pattern) as info:
            name = "existing" if label == "taken" else None
            lib.import_adapter(path, name, base="minilm")
        msg = str(info.value)
        assert "\n" not in msg and msg.endswith("."), (label, msg)
        assert snapshot(home) == before, label


def test_pickle_allowed_explicitly(lib, minilm_path, peft_adapters, tmp_path):
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    d = _copy(peft_adapters["lora"], tmp_path / "pk")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    a = lib.import_adapter(d, "pk", allow_pickle=True)
    assert a.weights_format == "pickle" and a.compatible is True


def test_wrong_base_with_other_architecture(lib, minilm_path, peft_adapters, tmp_path):
    from tests.helpers import tiny_model

    llama = tiny_model("llama", tmp_path / "llama")
    lib.add_base(llama, "tiny-llama", compute_hash=False)
    with pytest.raises(Incompatible, match="target module 'query' does not exist"):
        lib.import_adapter(peft_adapters["lora"], base="tiny-llama")


def test_opening_the_catalogue_does_not_import_torch(home, minilm_path, peft_adapters):
    import subprocess

    code = (
        "import sys; from adapterstudio.services.library import open_library; lib = open_library();"
        f"lib.add_base({str(minilm_path)!r}, 'm', compute_hash=False); lib.import_adapter({str(peft_adapters['lora'])!r});"
        "lib.list_adapters(search='x'); from adapterstudio.cli import build_parser; build_parser();"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'accelerate', 'PySide6') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_adapter_named_after_loaded_modules_fits(lib, tmp_path):
    """transformers 5 renames ViT's checkpoint modules on load (key -> k_proj); PEFT names
    follow the loaded model, so the check learns those names instead of refusing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    from tests.helpers import tiny_model

    vit = tiny_model("vit", tmp_path / "vit")
    lib.add_base(vit, "tiny-vit", compute_hash=False)
    model = get_peft_model(AutoModelForImageClassification.from_pretrained(str(vit)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]))
    model.save_pretrained(str(tmp_path / "vit-lora"))
    a = lib.import_adapter(tmp_path / "vit-lora", "vit-lora", base="tiny-vit")
    assert a.compatible is True
    # a LoRA for a different width is still refused
    small = tiny_model("vit", tmp_path / "vit2")
    import json

    cfg = json.loads((small / "config.json").read_text())
    cfg.update(hidden_size=32, intermediate_size=64)
    (small / "config.json").write_text(json.dumps(cfg))
    other = get_peft_model(AutoModelForImageClassification.from_config(
        AutoModelForImageClassification.from_pretrained(str(vit)).config.__class__(**{**cfg, "num_labels": 3})),
        LoraConfig(r=4, target_modules=["q_proj"]))
    other.save_pretrained(str(tmp_path / "narrow-lora"))
    with pytest.raises(Incompatible, match="input size 32"):
        lib.import_adapter(tmp_path / "narrow-lora", "narrow", base="tiny-vit")


def test_local_import_leaves_pickles_behind_unless_allowed(lib, minilm_path, peft_adapters, tmp_path):
    """Every suffix a Hub pull refuses (core.peft_format.PICKLE_SUFFIXES, .pickle included, any case) is
    left out of a local import too; --allow-pickle copies them."""
    from adapterstudio.api.files import wanted
    from adapterstudio.core.peft_format import PICKLE_SUFFIXES

    lib.add_base(minilm_path, "minilm", compute_hash=False)
    d = _copy(peft_adapters["lora"], tmp_path / "with-pickles")
    extras = [f"extra{s}" for s in PICKLE_SUFFIXES] + ["state.PICKLE"]
    for name in extras:
        (d / name).write_bytes(b"\x80\x04K\x01.")  # a real pickle of the int 1
    assert not any(wanted(name) for name in extras)  # what a pull would not download
    kept = {f.relpath for f in lib.import_adapter(d, "no-pickles").files}
    assert "adapter_model.safetensors" in kept and not kept & set(extras), kept
    kept = {f.relpath for f in lib.import_adapter(d, "pickles", allow_pickle=True).files}
    assert set(extras) <= kept, kept
