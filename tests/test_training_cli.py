"""The training CLI: MiniLM on real data, kill -9 and resume, errors, the queue.

Commands run in this process (``cli_main``), the training child on a thread of it
(``child_in_process_unless_slow``). The real processes run in two ``slow`` tests: ``adapterstudio
train`` with its ``accelerate launch`` child to exit 0, and a kill -9 of both mid-run, then resume.
The MiniLM quality test is ``slow`` for its minutes of training (in this process too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterstudio.core import jsonl
from tests.training_helpers import child_in_process_unless_slow, sentiment_rows, tiny_with_tokenizer, workers_in_process  # noqa: F401


def vader_words(out: Path, n: int = 600, seed: int = 0) -> Path:
    """Real labelled data: words from VADER's lexicon (MIT licence) with their human-rated
    mean sentiment, written by the same script the README's walkthrough uses."""
    pytest.importorskip("vaderSentiment")
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "vader_words.py"
    spec = importlib.util.spec_from_file_location("vader_words_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vader_words(out, n, seed)


def _json(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.slow  # (minutes of MiniLM training; the commands and the worker run in this process)
def test_lora_beats_head_on_minilm_with_real_data(cli_main, home, minilm_path, tmp_path, monkeypatch):
    data = vader_words(tmp_path / "vader.csv", 600)
    _json(cli_main("base", "add", str(minilm_path), "--name", "minilm", "--json"))
    with workers_in_process(monkeypatch):
        rows = _json(cli_main("compare", "--base", "minilm", "--data", str(data), "--strategies", "head,lora",
                              "--epochs", "3", "--test-fraction", "0.2", "--name", "vader", "--json"))
    by = {r["strategy"]: r for r in rows}
    assert by["head"]["status"] == by["lora"]["status"] == "succeeded"
    assert by["head"]["trainable_params"] < by["lora"]["trainable_params"]
    assert by["head"]["test_metrics"]["n"] == by["lora"]["test_metrics"]["n"] == 120  # the same held-out split
    # held-out test accuracy: LoRA clearly beats the frozen-backbone baseline
    assert by["lora"]["test"] > by["head"]["test"] + 0.05, rows
    # and the frozen-feature probe fitted beside the run: its row, and LoRA's gain over it on the same test split
    assert by["probe"]["test"] is not None and by["probe"]["metric"] == by["lora"]["metric"]
    assert by["lora"]["gain_over_baseline"] == pytest.approx(by["lora"]["test"] - by["probe"]["test"]), rows
    assert by["lora"]["gain_over_baseline"] > 0, rows
    # both are catalogued adapters with lineage; eval reproduces the metrics on a file
    shown = _json(cli_main("adapter", "show", "vader-lora", "--json"))
    assert shown["source"] == "train" and shown["lineage"]["labels"] == ["negative", "positive"]
    ev = _json(cli_main("eval", "vader-lora", "--data", str(data), "--json"))
    assert set(ev) >= {"accuracy", "macro_f1", "n"} and ev["n"] == 600 and ev["accuracy"] > by["head"]["test"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return tiny_with_tokenizer("bert", tmp_path_factory.mktemp("tiny") / "tinybert")


@pytest.fixture
def tiny_cli(cli_main, home, tmp_path, tiny_bert):
    _json(cli_main("base", "add", str(tiny_bert), "--name", "tb", "--json"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(80)))
    return data


@pytest.mark.slow
def test_train_cli_exit_zero_only_when_catalogued(cli, cli_main, tiny_cli):
    """The one end-to-end run: the real command, its real ``accelerate launch`` child, exit 0 once catalogued."""
    res = cli("train", "--base", "tb", "--data", str(tiny_cli), "--task", "seq-cls", "--strategy", "lora",
              "--name", "cli-lora", "--epochs", "1", "--batch-size", "8", "--cpu", "--json")
    out = _json(res)
    assert out["adapter"] == "cli-lora" and out["world_size"] == 1 and set(out["final"]) >= {"accuracy", "macro_f1"}
    assert _json(cli_main("adapter", "show", "cli-lora", "--json"))["run_id"] == out["run"]["id"]
    runs = _json(cli_main("runs", "list", "--json"))
    assert [r["status"] for r in runs] == ["succeeded"]
    shown = _json(cli_main("runs", "show", out["run"]["id"][:12], "--json"))
    assert shown["world_size"] == 1 and shown["last_checkpoint"] and shown["duration_s"] > 0
    assert shown["spec"]["strategy"] == "lora" and shown["metrics"]["history"]
    text = cli_main("runs", "show", out["run"]["id"])
    assert "succeeded" in text.stdout and "world_size: 1" in text.stdout


def test_train_from_a_spec_file_with_flags_over_it(cli_main, tiny_cli, tmp_path):
    """A spec file, with --name over it; the same name again is refused before any training."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: tb\ndata: {tiny_cli}\nstrategy: head\nepochs: 1\nbatch_size: 8\ncpu: true\nlr: 0.01\n")
    out = _json(cli_main("train", "--config", str(spec), "--name", "from-yaml", "--json"))
    a = _json(cli_main("adapter", "show", "from-yaml", "--json"))
    assert a["lineage"]["spec"]["lr"] == 0.01 and a["lineage"]["strategy"] == "head" and out["adapter"] == "from-yaml"
    assert a["run_id"] == out["run"]["id"] and out["run"]["status"] == "succeeded"
    again = cli_main("train", "--config", str(spec), "--name", "from-yaml")
    assert again.returncode == 1 and "already in the catalogue" in again.stderr and "Traceback" not in again.stderr
    assert len(_json(cli_main("runs", "list", "--json"))) == 1


def test_bad_data_is_one_line_error(cli_main, tiny_cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,pos\n,neg\nfine,pos\n")
    res = cli_main("train", "--base", "tb", "--data", str(bad), "--name", "x", "--cpu")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: {bad}: row 2, column 'text' is empty." in res.stderr
    res = cli_main("train", "--base", "tb", "--data", str(tiny_cli), "--name", "x", "--lr", "3", "--json")
    assert res.returncode == 1 and "lr must be between 0 and 1" in json.loads(res.stdout)["error"]
    assert _json(cli_main("runs", "list", "--json")) == []


def test_queue_commands(cli_main, tiny_cli):
    q1 = _json(cli_main("queue", "add", "--base", "tb", "--data", str(tiny_cli), "--strategy", "head", "--name", "qa",
                        "--max-steps", "2", "--batch-size", "8", "--cpu", "--json"))
    q2 = _json(cli_main("queue", "add", "--base", "tb", "--data", str(tiny_cli), "--strategy", "head", "--name", "qb",
                        "--max-steps", "2", "--batch-size", "8", "--cpu", "--json"))
    assert [r["id"] for r in _json(cli_main("queue", "list", "--json"))] == [q1["id"], q2["id"]]
    _json(cli_main("queue", "remove", q1["id"], "--json"))
    done = _json(cli_main("queue", "run", "--json"))
    assert [d["name"] for d in done] == ["qb"] and done[0]["status"] == "succeeded"
    assert _json(cli_main("queue", "list", "--json")) == []


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_to_completion(home, tiny_cli):
    env = {**os.environ, "ADAPTERSTUDIO_HOME": str(home)}
    cmd = [sys.executable, "-m", "adapterstudio", "train", "--base", "tb", "--data", str(tiny_cli), "--strategy", "lora",
           "--name", "killed", "--epochs", "15", "--batch-size", "8", "--save-every", "3", "--cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    events_file = None
    worker_pid = None
    checkpoints = 0
    while time.time() < deadline and checkpoints < 2:
        time.sleep(0.2)
        found = list((home / "runs").glob("*/events.jsonl"))
        if not found:
            continue
        events_file = found[0]
        evs = jsonl.read(events_file, skip_bad=True)
        worker_pid = next((e["pid"] for e in evs if e["event"] == "start"), None)
        checkpoints = sum(e["event"] == "checkpoint" for e in evs)
    assert checkpoints >= 2 and worker_pid, "the run never checkpointed"
    # kill -9 the training process and the CLI supervising it, mid-run
    os.kill(worker_pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    run_id = events_file.parent.name
    from tests.conftest import run_cli

    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted" and shown["last_checkpoint"]
    killed_at = int(Path(shown["last_checkpoint"]).name.split("-")[1])
    assert 0 < killed_at < 120  # 15 epochs of 8 steps: killed after its second checkpoint (step 6), long before the end
    res = run_cli("train", "--resume", run_id, "--json", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["adapter"] == "killed" and out["run"]["status"] == "succeeded"
    evs = jsonl.read(events_file, skip_bad=True)
    starts = [e for e in evs if e["event"] == "start"]
    assert starts[-1]["resumed_from"] is not None and starts[-1]["step"] >= killed_at
    assert evs[-1]["event"] == "done" and evs[-1]["steps"] == 120
