"""Render the application icon set for installers from resources/adapterstudio.svg.

    QT_QPA_PLATFORM=offscreen python packaging/render_icons.py

Writes resources/adapterstudio-<N>.png (16-512 px), resources/adapterstudio.ico
(Windows: 16-256 px in one file) and resources/adapterstudio.icns (macOS). Needs PySide6
(QSvgRenderer) and Pillow (for .ico/.icns); both are build-time tools only.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

SIZES = (16, 32, 48, 64, 128, 256, 512)
RES = Path(__file__).resolve().parents[1] / "resources"


def render_png(svg: bytes, size: int) -> bytes:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(QByteArray(svg))
    if not renderer.isValid():
        raise SystemExit("error: resources/adapterstudio.svg is not a valid SVG")
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    return bytes(buf.data())


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (Qt needs one)
    svg = (RES / "adapterstudio.svg").read_bytes()
    images = {}
    for size in SIZES:
        data = render_png(svg, size)
        (RES / f"adapterstudio-{size}.png").write_bytes(data)
        images[size] = Image.open(io.BytesIO(data)).convert("RGBA")
    # .ico: every size up to 256 (the format's maximum), each rendered from the SVG
    ico_sizes = [s for s in SIZES if s <= 256]
    images[256].save(RES / "adapterstudio.ico", format="ICO", sizes=[(s, s) for s in ico_sizes],
                     append_images=[images[s] for s in ico_sizes if s != 256])
    # .icns: up to 1024 px (512@2x), so Retina sizes are rendered rather than upscaled
    big = Image.open(io.BytesIO(render_png(svg, 1024))).convert("RGBA")
    big.save(RES / "adapterstudio.icns", format="ICNS", append_images=[images[s] for s in SIZES])
    print("wrote", ", ".join(sorted(p.name for p in RES.glob("adapterstudio*") if p.suffix != ".svg")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
