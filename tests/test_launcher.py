"""packaging/pyinstaller/launcher.py: the frozen executable's entry script, run here with python.

Frozen, it is the program behind sys.executable; training's child processes call it as
python (``-m module``, ``script.py``, torchrun's ``-u -m module``). These tests run the same
file with the real interpreter, so the dispatch is checked without a 5-minute build
(packaging/build_app.sh checks the built application).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "packaging" / "pyinstaller" / "launcher.py"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_without_python_arguments_it_is_the_cli():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("adapterstudio ")


def test_dash_m_runs_a_module_as_main_with_its_arguments_and_exit_code(tmp_path):
    (tmp_path / "probe_mod.py").write_text(
        "import sys\nif __name__ == '__main__':\n    print('argv', sys.argv[1:])\n    sys.exit(3)\n")
    r = run("-m", "probe_mod", "a", "--b", cwd=tmp_path)  # found in the current folder, as with python -m
    assert r.returncode == 3 and "argv ['a', '--b']" in r.stdout, r.stderr


def test_torchrun_style_flags_before_dash_m(tmp_path):
    (tmp_path / "probe_mod.py").write_text("import sys\nprint('ran', sys.argv[1:])\n")
    r = run("-u", "-X", "utf8", "-m", "probe_mod", "x", cwd=tmp_path)
    assert r.returncode == 0 and "ran ['x']" in r.stdout, r.stderr


def test_script_runs_with_its_folder_on_the_path(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    script = tmp_path / "job.py"
    script.write_text("import sys, helper_mod\nprint(__name__, helper_mod.VALUE, sys.argv)\n")
    r = run(str(script), "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert f"__main__ 42 ['{script}', '--epochs', '1']" in r.stdout


def test_dash_c_runs_code():
    r = run("-c", "import sys; print('c', sys.argv)", "arg")
    assert r.returncode == 0 and "c ['-c', 'arg']" in r.stdout, r.stderr


def test_an_unknown_command_is_the_clis_error_not_python():
    r = run("no-such-command")
    assert r.returncode == 2 and "invalid choice" in r.stderr
