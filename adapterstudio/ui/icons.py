"""Icons: our own SVGs, shipped as package data and tinted to the current palette.

The SVG files live in ``adapterstudio/resources/icons/`` (the one copy; there is no
top-level ``resources/`` folder to keep in sync) and are read with
:mod:`importlib.resources`, so they are found from an installed wheel as well as from
a checkout. Each icon is drawn with ``stroke="currentColor"``; :func:`icon` replaces it
with the palette's text colour and renders crisp pixmaps at 1x and 2x of the usual
sizes, so icons stay sharp on high-DPI screens.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from PySide6.QtCore import QByteArray, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

SIZES = (16, 20, 24, 32, 48, 64)


def icon_names() -> list[str]:
    folder = resources.files("adapterstudio").joinpath("resources", "icons")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".svg"))


@cache
def svg_bytes(name: str) -> bytes:
    path = resources.files("adapterstudio").joinpath("resources", "icons", f"{name}.svg")
    return path.read_bytes()


def render(name: str, size: int, color: str | None = None, ratio: float = 1.0) -> QPixmap:
    data = svg_bytes(name)
    if color:
        data = data.replace(b"currentColor", color.encode())
    renderer = QSvgRenderer(QByteArray(data))
    px = QPixmap(int(size * ratio), int(size * ratio))
    px.fill(Qt.GlobalColor.transparent)
    p = QPainter(px)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(p, QRectF(0, 0, px.width(), px.height()))
    p.end()
    px.setDevicePixelRatio(ratio)
    return px


_cache: dict[tuple[str, str], QIcon] = {}


NEUTRAL = "#7d8295"  # reads on the light and the dark palette alike


def icon(name: str, color: str | QColor | None = None) -> QIcon:
    """An icon tinted *color*; by default a neutral grey that suits both themes, so icons made
    before a theme switch stay legible. ``color="text"`` uses the palette's text colour."""
    if color is None:
        color = NEUTRAL
    elif color == "text":
        from PySide6.QtWidgets import QApplication

        color = (QApplication.palette().windowText().color().name() if isinstance(QApplication.instance(), QApplication)
                 else "#333333")
    elif isinstance(color, QColor):
        color = color.name()
    key = (name, color)
    if key not in _cache:
        ic = QIcon()
        for s in SIZES:
            for ratio in (1.0, 2.0):
                ic.addPixmap(render(name, s, color, ratio))
        _cache[key] = ic
    return _cache[key]


def app_icon() -> QIcon:
    ic = QIcon()
    for s in (16, 24, 32, 48, 64, 128, 256):
        ic.addPixmap(render("logo", s))
    return ic


def clear_cache() -> None:
    """Forget tinted icons (after a theme change)."""
    _cache.clear()


def size(n: int) -> QSize:
    return QSize(n, n)
