"""The installer files: the icon set in resources/, the Linux .desktop file and AppStream metainfo."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RES = REPO / "resources"
LINUX = REPO / "packaging" / "linux"
APP_ID = "io.adapterstudio.AdapterStudio"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("size", [16, 32, 48, 64, 128, 256, 512])
def test_png_icons_have_their_size(size):
    assert _png_size(RES / f"adapterstudio-{size}.png") == (size, size)


def test_ico_holds_every_windows_size():
    data = (RES / "adapterstudio.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind) == (0, 1)  # an icon resource
    sizes = {(data[6 + 16 * i] or 256) for i in range(count)}  # 0 in the directory means 256
    assert {16, 32, 48, 256} <= sizes, sizes


def test_icns_is_an_icns_file():
    data = (RES / "adapterstudio.icns").read_bytes()
    assert data[:4] == b"icns" and struct.unpack(">I", data[4:8])[0] == len(data)


def test_svg_is_the_guis_logo():
    logo = REPO / "adapterstudio" / "resources" / "icons" / "logo.svg"
    if not logo.exists():
        pytest.skip("the GUI's icons are not in this checkout yet")
    assert (RES / "adapterstudio.svg").read_bytes() == logo.read_bytes(), \
        "resources/adapterstudio.svg differs from the GUI's logo.svg: copy it and run packaging/render_icons.py"


def test_desktop_file_names_the_icon_and_the_command():
    text = (LINUX / f"{APP_ID}.desktop").read_text()
    entries = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert entries["Icon"] == APP_ID and entries["Exec"].split()[0] == "adapterstudio"
    meta = (LINUX / f"{APP_ID}.metainfo.xml").read_text()
    assert f"<id>{APP_ID}</id>" in meta and f'<launchable type="desktop-id">{APP_ID}.desktop</launchable>' in meta


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_desktop_file_validates():
    r = subprocess.run(["desktop-file-validate", str(LINUX / f"{APP_ID}.desktop")], capture_output=True, text=True)
    assert r.returncode == 0 and "error" not in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstream not installed")
def test_metainfo_validates():
    r = subprocess.run(["appstreamcli", "validate", "--no-net", str(LINUX / f"{APP_ID}.metainfo.xml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
