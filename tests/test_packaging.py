"""The distributions: the wheel, the sdist and the plugin wheels carry what they must.

Built for real with pip / the setuptools backend from this checkout; the archives are
then opened and their file lists and metadata checked. Installing the wheel into a fresh
virtual environment and running it from another directory is done by .ci/run (it needs
torch installed there, minutes rather than seconds); the PyInstaller application is
built and smoke-checked by packaging/build_app.sh (too slow for CI).
"""

from __future__ import annotations

import configparser
import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import adapterstudio

pytestmark = pytest.mark.slow  # builds three wheels and an sdist (~15 s on 2 cores)

REPO = Path(__file__).resolve().parent.parent
PLUGINS = {"adapterstudio-hf": ("adapterstudio_hf", "huggingface"),
           "adapterstudio-folder": ("adapterstudio_folder", "folder")}


def _tracked(prefix: str) -> list[str]:
    """Files under *prefix* that git tracks (what a clean clone has); falls back to the tree."""
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", prefix], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        return [line for line in r.stdout.splitlines() if (REPO / line).is_file()]
    return [str(p.relative_to(REPO)) for p in (REPO / prefix).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    projects = [str(REPO)] + [str(REPO / "plugins" / name) for name in PLUGINS]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-q", "-w", str(out), *projects],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    found = {p.name.split("-")[0].replace("_", "-"): p for p in out.glob("*.whl")}
    assert set(found) == {"adapterstudio", *PLUGINS}, found
    return found


def _metadata(zf: zipfile.ZipFile, dist: str, name: str) -> str:
    return zf.read(f"{dist}-{adapterstudio.__version__}.dist-info/{name}").decode()


def _entry_points(text: str) -> dict[str, dict[str, str]]:
    cp = configparser.ConfigParser(delimiters=("=",))
    cp.optionxform = str  # keep the case of names
    cp.read_string(text)
    return {s: {k: v.strip() for k, v in cp[s].items()} for s in cp.sections()}



def test_wheel_holds_every_module_and_resource_and_nothing_else(wheels):
    with zipfile.ZipFile(wheels["adapterstudio"]) as zf:
        names = set(zf.namelist())
    expected = {f for f in _tracked("adapterstudio") if not f.endswith((".pyc", ".pyo"))}
    assert expected, "no package files found"
    missing = sorted(expected - names)
    assert not missing, f"files missing from the wheel: {missing}"
    assert "adapterstudio/py.typed" in names
    # runtime icons (the GUI's) ship inside the package, so an installed wheel finds them
    resources = [f for f in expected if f.startswith("adapterstudio/resources/")]
    assert all(f in names for f in resources)
    # tests, docs, benchmarks and the installer files stay out of the wheel
    tops = {n.split("/")[0] for n in names}
    assert tops == {"adapterstudio", f"adapterstudio-{adapterstudio.__version__}.dist-info"}, tops


def test_wheel_metadata_and_entry_points(wheels):
    with zipfile.ZipFile(wheels["adapterstudio"]) as zf:
        meta = email.parser.Parser().parsestr(_metadata(zf, "adapterstudio", "METADATA"))
        eps = _entry_points(_metadata(zf, "adapterstudio", "entry_points.txt"))
    assert meta["Name"] == "adapterstudio" and meta["Version"] == adapterstudio.__version__
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "Apache-2.0"
    requires = " ".join(meta.get_all("Requires-Dist"))
    for dep in ("torch", "transformers", "peft", "accelerate", "safetensors", "huggingface_hub", "psutil"):
        assert dep in requires, dep
    assert 'PySide6-Essentials>=6.6; extra == "gui"' in meta.get_all("Requires-Dist")
    assert {"gui", "data", "test"} <= set(meta.get_all("Provides-Extra"))
    assert "AdapterStudio" in meta.get_payload()  # the README is the long description
    assert eps["console_scripts"] == {"adapterstudio": "adapterstudio.cli:main"}
    assert eps["pytest11"] == {"adapterstudio_provider_kit": "adapterstudio.api.testing"}


@pytest.mark.parametrize("project", sorted(PLUGINS))
def test_plugin_wheels_register_their_hub_provider(wheels, project):
    module, provider = PLUGINS[project]
    dist = project.replace("-", "_")
    with zipfile.ZipFile(wheels[project]) as zf:
        names = set(zf.namelist())
        eps = _entry_points(_metadata(zf, dist, "entry_points.txt"))
        meta = email.parser.Parser().parsestr(_metadata(zf, dist, "METADATA"))
    assert f"{module}/__init__.py" in names
    assert {f for f in _tracked(f"plugins/{project}/{module}")} == {
        f"plugins/{project}/{n}" for n in names if n.startswith(f"{module}/")}
    assert eps["adapterstudio.hub_providers"] == {provider: f"{module}:make_provider"}
    assert "adapterstudio" in meta.get_all("Requires-Dist")


def test_sdist_carries_sources_tests_installers_and_plugins(tmp_path):
    code = ("import sys, setuptools.build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    sdist = tmp_path / r.stdout.strip().splitlines()[-1]
    prefix = f"adapterstudio-{adapterstudio.__version__}/"
    with tarfile.open(sdist) as tf:
        names = {m.name[len(prefix):] for m in tf.getmembers() if m.isfile()}
    wanted = set(_tracked("adapterstudio")) | set(_tracked("tests")) | set(_tracked("packaging")) \
        | set(_tracked("plugins")) | set(_tracked("resources")) | {"README.md", "pyproject.toml", "MANIFEST.in"}
    wanted = {f for f in wanted if not f.endswith((".pyc", ".pyo"))}
    missing = sorted(wanted - names)
    assert not missing, f"files missing from the sdist: {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("plugins/") and ".egg-info" in n]


def test_frozen_application_smoke_checks():
    """The PyInstaller app (built by packaging/build_app.sh, minutes: not in CI).

    Set ADAPTERSTUDIO_FROZEN_DIST to the folder holding AdapterStudio/ to run the smoke
    checks (version, doctor, script.py and -m child processes through a 2-step training,
    the window under Xvfb) against an existing build.
    """
    dist = os.environ.get("ADAPTERSTUDIO_FROZEN_DIST")
    if not dist:
        pytest.skip("set ADAPTERSTUDIO_FROZEN_DIST to a PyInstaller build (packaging/build_app.sh)")
    r = subprocess.run(["bash", str(REPO / "packaging" / "build_app.sh")], capture_output=True, text=True,
                       env={**os.environ, "SKIP_BUILD": "1", "DIST": dist}, timeout=900)
    assert r.returncode == 0 and "all smoke checks passed" in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]
