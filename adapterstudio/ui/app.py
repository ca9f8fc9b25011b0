"""The desktop application's entry point: ``adapterstudio`` with no command, or ``main()``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtWidgets import QApplication


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication, with our name, icon and theme (created once)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    existing = QApplication.instance()
    if existing is None:
        QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(argv if argv is not None else sys.argv[:1])
    elif isinstance(existing, QApplication):
        app = existing
    else:
        raise RuntimeError("a QCoreApplication without widgets already runs in this process; the desktop app "
                           "needs a QApplication")
    app.setApplicationName("AdapterStudio")
    app.setOrganizationName("AdapterStudio")
    app.setApplicationDisplayName("AdapterStudio")
    app.setDesktopFileName("io.adapterstudio.AdapterStudio")  # matches packaging/linux/*.desktop (Wayland icon)
    from adapterstudio.ui import icons, theme

    theme_name = "system"
    try:
        from adapterstudio.core.settings import load_settings

        theme_name = load_settings().theme
    except Exception:  # noqa: BLE001, S110  (a broken settings file is reported when the library opens; default theme)
        pass
    theme.apply(app, theme_name)
    app.setWindowIcon(icons.app_icon())
    return app


def log_folder() -> Path:
    try:
        from adapterstudio.core.settings import load_settings

        return load_settings().resolved_library_dir() / "logs"
    except Exception:  # noqa: BLE001  (a broken settings file is reported when the library opens; log to temp)
        import tempfile

        return Path(tempfile.gettempdir()) / "adapterstudio-logs"


def main(argv: list[str] | None = None) -> int:
    """Open the main window and run the event loop; returns the exit status."""
    app = create_app(argv)
    from adapterstudio.ui import errors
    from adapterstudio.ui.main_window import MainWindow

    errors.setup_logging(log_folder())
    window: list = []
    hook = errors.ExceptionHook(lambda: window[0] if window else None)
    hook.install()
    try:
        w = MainWindow(home=os.environ.get("ADAPTERSTUDIO_HOME"))
        window.append(w)
        w.show()
        # Objects alive after start-up (Qt wrappers, modules) move out of the collector's way, so
        # its full passes stay short and do not pause the event loop.
        import gc

        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, gc.freeze)
        rc = app.exec()
        w.runner.wait(5000)
        return int(rc)
    finally:
        hook.uninstall()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
