"""The inference service, CLI, OpenAI-compatible server and exports, through the real library.

Commands run in this process (``cli_main``) and the server on a thread of it; one test (marked slow)
runs ``infer`` and ``serve`` as the real command in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from adapterstudio.core.errors import Incompatible, InvalidInput  # noqa: E402
from tests.inference_helpers import one_torch_thread  # noqa: E402, F401  (a fixture: pytest finds it by name)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def built(llama_files, mini_adapters):
    base, adapters = llama_files
    return {"tiny": base, "llama": adapters, "mini": mini_adapters}


@pytest.fixture
def catalogue(lib, built, minilm_path):
    lib.add_base(built["tiny"], name="tiny")
    lib.add_base(minilm_path, name="minilm")
    for n, p in built["llama"].items():
        lib.import_adapter(p, n, base="tiny")
    lib.import_adapter(built["mini"]["lora-a"], "sentiment", base="minilm",
                       lineage={"task": "seq-cls", "labels": ["neg", "pos"]})
    return lib


def test_incompatible_adapter_is_refused_before_the_model_is_touched(catalogue):
    from adapterstudio.services.inference import open_inference

    inf = open_inference(catalogue, "minilm", device="cpu")
    sess = inf.session("SEQ_CLS", 2)
    before = {k: v.clone() for k, v in sess.model.state_dict().items()}
    with pytest.raises(Incompatible, match="chat-a"):
        inf.use("chat-a")
    assert sess.peft_model is None and not sess.adapters
    after = sess.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    inf.close()


def test_service_classify_and_compare(catalogue):
    from adapterstudio.services.inference import open_inference

    inf = open_inference(catalogue, "minilm", device="cpu")
    inf.use("sentiment")
    res = inf.classify(["what a lovely day", "this is broken"])
    assert [set(r["probabilities"]) for r in res] == [{"neg", "pos"}] * 2
    cmp = inf.compare("what a lovely day", ["sentiment", None])
    assert set(cmp) == {"sentiment", "base"}
    assert cmp["sentiment"]["probabilities"] == pytest.approx(res[0]["probabilities"], abs=1e-5)
    inf.close()


def test_cli_infer_classifier_json(catalogue, cli_main, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("what a lovely day\nthis is broken\n")
    r = cli_main("infer", "--base", "minilm", "--adapter", "sentiment", "--input", str(inputs), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["input"] for x in out["results"]] == ["what a lovely day", "this is broken"]
    for x in out["results"]:
        assert x["label"] in ("neg", "pos") and sum(x["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_cli_infer_generation_blend_and_errors(catalogue, cli_main):
    r = cli_main("infer", "--base", "tiny", "--adapter", "chat-a:0.5", "--adapter", "chat-b:0.5", "hello",
            "--max-new-tokens", "4", "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["adapters"] == {"chat-a": 0.5, "chat-b": 0.5} and isinstance(out["results"][0]["output"], str)
    r = cli_main("infer", "--base", "tiny", "--adapter", "sentiment", "hello")
    assert r.returncode == 1 and "does not fit base model 'tiny'" in r.stderr and "Traceback" not in r.stderr
    r = cli_main("infer", "--base", "tiny", "--adapter", "nope", "hello")
    assert r.returncode == 1 and "nope" in r.stderr


@contextlib.contextmanager
def _server(home: Path, base: str):
    """What ``adapterstudio serve --port 0`` runs, on threads of this process."""
    from adapterstudio.services.inference import open_inference
    from adapterstudio.services.library import open_library
    from tests.inference_helpers import serve_in_thread

    lib = open_library(home)
    inf = open_inference(lib, base)
    inf.session()
    try:
        with serve_in_thread(inf) as (url, _app):
            yield url
    finally:
        inf.close()
        lib.close()


def _start_server(home: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "ADAPTERSTUDIO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adapterstudio", "serve", "--base", "tiny", "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # printed once the base is loaded and the port is bound
    if not line:
        proc.kill()
        raise AssertionError(proc.stderr.read())
    return proc, json.loads(line)["url"]


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _models(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/models", timeout=60) as resp:
        return [m["id"] for m in json.load(resp)["data"]]


def test_serve_openai_compatible_endpoint(catalogue, home):
    with _server(home, "tiny") as url:
        ids = _models(url)
        assert ids[0] == "tiny" and {"tiny:chat-a", "tiny:chat-b", "tiny:chat-ia3"} <= set(ids)

        body = {"model": "tiny:chat-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                "temperature": 0}
        code, raw = _post(url + "/chat/completions", body)
        assert code == 200, raw
        first = json.loads(raw)
        assert first["object"] == "chat.completion" and first["choices"][0]["message"]["role"] == "assistant"
        assert first["usage"]["completion_tokens"] <= 6 and first["usage"]["prompt_tokens"] > 0
        assert first["choices"][0]["finish_reason"] == ("length" if first["usage"]["completion_tokens"] == 6 else "stop")
        # a different adapter, then back: hot-swapped per request, same answer as before
        code, other = _post(url + "/chat/completions", {**body, "model": "tiny:chat-ia3"})
        assert code == 200
        code, again = _post(url + "/chat/completions", body)
        assert json.loads(again)["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]

        code, raw = _post(url + "/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 5,
                                                 "temperature": 0, "stream": True})
        assert code == 200
        events = [ln[len("data: "):] for ln in raw.decode().split("\n\n") if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        code, plain = _post(url + "/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 5,
                                                   "temperature": 0})
        assert "".join(c["choices"][0]["text"] for c in chunks) == json.loads(plain)["choices"][0]["text"]

        code, raw = _post(url + "/chat/completions", {**body, "stream": True})
        events = [ln[len("data: "):] for ln in raw.decode().split("\n\n") if ln.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant"} and events[-1] == "[DONE]"

        # an unknown model is OpenAI's 404 model_not_found (was a 400 before the server followed the API)
        code, raw = _post(url + "/chat/completions", {**body, "model": "tiny:missing"})
        assert code == 404 and "missing" in json.loads(raw)["error"]["message"]
        assert json.loads(raw)["error"]["code"] == "model_not_found"
        code, raw = _post(url + "/chat/completions", {**body, "model": "other"})
        assert code == 404


@pytest.mark.slow
def test_the_real_commands_infer_and_serve(catalogue, cli, home, tmp_path):
    """``python -m adapterstudio infer`` and ``serve`` in subprocesses: exit codes, JSON on stdout, a one-line
    error on stderr, the address printed once the port is bound, a request answered, stopped by a signal."""
    inputs = tmp_path / "in.txt"
    inputs.write_text("what a lovely day\nthis is broken\n")
    r = cli("infer", "--base", "minilm", "--adapter", "sentiment", "--input", str(inputs), "--json")
    assert r.returncode == 0, r.stderr
    assert [x["label"] in ("neg", "pos") for x in json.loads(r.stdout)["results"]] == [True, True]
    r = cli("infer", "--base", "tiny", "--adapter", "sentiment", "hello")
    assert r.returncode == 1 and not r.stdout
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "does not fit base model 'tiny'" in r.stderr

    catalogue.close()
    proc, url = _start_server(home)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert "tiny:chat-a" in _models(url)
        code, raw = _post(url + "/chat/completions", {"model": "tiny:chat-a", "max_tokens": 3, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200 and json.loads(raw)["object"] == "chat.completion", raw
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        proc.stdout.close()
        proc.stderr.close()


def test_export_merged_loads_and_matches(catalogue, cli_main, home, tmp_path, built):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    r = cli_main("export", "chat-a", "--merged", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["merged"] == str(out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok(["hello there"], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(built["tiny"])),
                                    str(built["llama"]["chat-a"])).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, ref(**enc).logits, atol=1e-4, rtol=1e-4)
    r = cli_main("export", "chat-a", "--merged", str(out))
    assert r.returncode == 1 and "not an empty folder" in r.stderr


def test_export_merged_blend_equals_session_blend(catalogue, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterstudio.services.inference import export_merged, open_inference

    out = export_merged(catalogue, {"chat-a": 0.7, "chat-b": 0.3}, tmp_path / "blend")
    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok(["hello there"], return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()(**enc).logits
    inf = open_inference(catalogue, "tiny", device="cpu", precision="fp32")
    inf.use_blend({"chat-a": 0.7, "chat-b": 0.3})
    torch.testing.assert_close(inf.logits(["hello there"]), merged, atol=1e-4, rtol=1e-4)
    inf.close()


def test_export_gguf_is_readable_with_expected_tensors(catalogue, cli_main, tmp_path, built):
    import gguf
    from safetensors.torch import load_file

    out = tmp_path / "gguf"
    r = cli_main("export", "chat-a", "--gguf", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    reader = gguf.GGUFReader(info["gguf"])

    def field(name):
        f = reader.fields[name]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else float(v[0])

    assert field("general.type") == "adapter" and field("adapter.type") == "lora"
    assert field("general.architecture") == "llama" and field("adapter.lora.alpha") == 16.0
    tensors = {t.name: t for t in reader.tensors}
    expected = {f"blk.{i}.attn_{p}.weight.lora_{ab}" for i in range(2) for p in ("q", "v") for ab in ("a", "b")}
    assert set(tensors) == expected
    sd = load_file(str(Path(built["llama"]["chat-a"]) / "adapter_model.safetensors"))
    a = sd["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
    b = sd["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    t = tensors["blk.0.attn_v.weight.lora_a"]
    assert list(t.shape) == [a.shape[1], a.shape[0]]  # GGUF stores dims reversed
    assert torch.allclose(torch.from_numpy(t.data.copy()).reshape(a.shape), a)
    tb = tensors["blk.0.attn_v.weight.lora_b"]  # v is not permuted
    assert torch.allclose(torch.from_numpy(tb.data.copy()).reshape(b.shape), b)
    modelfile = (out / "Modelfile").read_text()
    assert f"ADAPTER ./{Path(info['gguf']).name}" in modelfile and "FROM " in modelfile
    r = cli_main("export", "sentiment", "--gguf", str(tmp_path / "g2"))
    assert r.returncode == 1 and "GGUF LoRA export supports" in r.stderr and not (tmp_path / "g2").exists()


def test_service_compare_generation_across_adapters(catalogue):
    from adapterstudio.services.inference import open_inference

    inf = open_inference(catalogue, "tiny", device="cpu")
    out = inf.compare("hello", ["chat-a", "chat-ia3", None], max_new_tokens=5, temperature=0)
    assert list(out) == ["chat-a", "chat-ia3", "base"]
    inf.use("chat-ia3")
    assert inf.generate("hello", max_new_tokens=5, temperature=0) == out["chat-ia3"]
    inf.use(None)
    assert inf.generate("hello", max_new_tokens=5, temperature=0) == out["base"]
    with pytest.raises(InvalidInput, match="Unknown generation setting"):
        inf.generate("hello", max_tokens=5)
    inf.close()
