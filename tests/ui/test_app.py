"""The main window: every page constructs, navigation, shortcuts, themes, icons, settings, errors, state."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtGui import QPalette  # noqa: E402

from tests.ui.conftest import wait_worker  # noqa: E402


def test_every_page_constructs_and_shows(qtbot, window):
    from adapterstudio.ui.main_window import PAGES

    window.show()
    qtbot.waitExposed(window)
    assert [k for k, _t, _i in PAGES] == ["library", "train", "playground", "share", "settings"]
    for key, _title, _icon in PAGES:
        window.show_page(key)
        assert window.current_page() == key
        assert window.stack.currentWidget() is window.pages[key]
        assert window.pages[key].isVisible()


def test_shortcuts_switch_pages(qtbot, window):
    from PySide6.QtGui import QKeySequence

    def press(seq: str) -> None:
        # The offscreen platform has no keyboard focus to deliver key events to, so trigger
        # the window action bound to the sequence, as the shortcut map would.
        matches = [a for a in window.actions() if a.shortcut() == QKeySequence(seq)]
        assert len(matches) == 1, seq
        matches[0].trigger()

    press("Ctrl+3")
    assert window.current_page() == "playground"
    press("Ctrl+5")
    assert window.current_page() == "settings"
    press("Ctrl+1")
    assert window.current_page() == "library"
    lib_actions = {a.text(): a.shortcut().toString() for a in window.pages["library"].actions()}
    assert lib_actions["Import adapter…"] == "Ctrl+I" and lib_actions["Rename…"] == "F2"


def test_themes_switch_palette(qtbot, window, qapp):
    from adapterstudio.ui import theme

    window.apply_theme("dark")
    dark = qapp.palette().color(QPalette.ColorRole.Window).lightness()
    window.apply_theme("light")
    light = qapp.palette().color(QPalette.ColorRole.Window).lightness()
    assert dark < 60 < 200 < light
    window.toggle_theme()
    assert theme.current() == "dark"
    assert theme.resolve("system") in ("light", "dark")


def test_icons_are_package_data_and_render(qapp):
    from adapterstudio.ui import icons

    names = icons.icon_names()
    for needed in ("library", "train", "playground", "share", "settings", "logo", "import", "export"):
        assert needed in names
    for name in names:
        px = icons.render(name, 24, "#000000", 2.0)
        assert px.width() == 48 and px.devicePixelRatio() == 2.0
        img = px.toImage()
        assert any(img.pixelColor(x, y).alpha() > 0 for x in range(48) for y in range(48)), name
    assert not icons.icon("adapter").isNull()


def test_settings_page_saves_the_settings_file(qtbot, window, home):
    page = window.pages["settings"]
    qtbot.waitUntil(lambda: page.isEnabled(), timeout=10000)
    assert page.device.currentText() == "auto"
    page.device.setCurrentText("cpu")
    page.precision.setCurrentText("fp32")
    page.allow_pickle.setChecked(True)
    page.max_resident.setValue(3)
    with qtbot.waitSignal(window.session.settings_changed, timeout=10000):
        wait_worker(qtbot, page.save())
    data = json.loads((home / "settings.json").read_text())
    assert (data["device"], data["precision"], data["allow_pickle"], data["max_resident_adapters"]) == ("cpu", "fp32", True, 3)
    assert window.session.lib.settings.device == "cpu"
    page.device.setCurrentText("tpu")  # not a device: a readable error, nothing written
    with pytest.raises(Exception) as exc_info:
        wait_worker(qtbot, page.save())
    assert "device must be" in str(exc_info.value)
    assert json.loads((home / "settings.json").read_text())["device"] == "cpu"


def test_exception_hook_shows_and_logs_unexpected_errors(qtbot, window, errors_shown, tmp_path):
    import logging
    import sys

    from adapterstudio.ui import errors

    errors.setup_logging(tmp_path / "logs")
    hook = errors.ExceptionHook(lambda: window)
    hook.install()
    try:
        try:
            raise RuntimeError("a bug in a slot")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: len(errors_shown) == 1)
    finally:
        hook.uninstall()
        for h in list(logging.getLogger("adapterstudio").handlers):
            if isinstance(h, logging.FileHandler):
                h.close()
                logging.getLogger("adapterstudio").removeHandler(h)
    title, message = errors_shown[0]
    assert title == "Unexpected error" and "RuntimeError: a bug in a slot" in message
    assert "a bug in a slot" in (tmp_path / "logs" / "gui.log").read_text()


def test_user_error_dialog_has_details_on_demand(qtbot, window, monkeypatch):
    from adapterstudio.core.errors import InvalidInput
    from adapterstudio.ui import errors

    monkeypatch.setattr(errors, "INTERACTIVE", True)
    box = errors.show_error(window, InvalidInput("x.json is not valid JSON.", hint="Fix the file."), "the details")
    try:
        assert box.text() == "x.json is not valid JSON.\n\nFix the file."
        assert box.detailedText() == "the details"
        assert box.windowTitle() == "Cannot do that"
    finally:
        box.close()


def test_window_state_is_remembered(qtbot, window, home):
    window.resize(701, 533)
    window.pages["library"].splitter.setSizes([500, 300])
    window.close()
    assert (home / "window-state.ini").exists()
    from adapterstudio.ui.main_window import MainWindow

    again = MainWindow(open_library=False)
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == (701, 533)


def test_main_entry_point_runs_and_exits(home, tmp_path):
    """``adapterstudio`` with no command calls ui.app.main(): the window opens, logs to the library,
    and the loop exits with 0 when the window closes. In a subprocess: main() owns the event loop."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run_main.py"
    script.write_text(
        "from PySide6.QtCore import QTimer\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from adapterstudio.ui import app\n"
        "qapp = app.create_app()\n"
        "import time\n"
        "deadline = time.monotonic() + 60\n"
        "def close():\n"
        "    wins = [w for w in QApplication.topLevelWidgets() if hasattr(w, 'pages') and w.isVisible()]\n"
        "    if not (wins and wins[0].session.lib is not None) and time.monotonic() < deadline:\n"
        "        return  # not shown, or the library not opened yet: look again at the next tick\n"
        "    timer.stop()\n"
        "    print('windows', len(wins), wins[0].windowTitle() if wins else '')\n"
        "    for w in wins:\n"
        "        w.close()\n"
        "timer = QTimer()\n"
        "timer.timeout.connect(close)\n"
        "timer.start(50)\n"
        "raise SystemExit(app.main())\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "windows 1 AdapterStudio" in res.stdout
    assert (home / "logs" / "gui.log").exists()
