"""Fixtures for the GUI tests: a main window on a fresh library, errors collected instead of shown."""

from __future__ import annotations

import pytest

# No module-level importorskip here: a skip raised while loading a conftest is an error.
# Every test module starts with pytest.importorskip("PySide6"), so without Qt nothing here runs.


@pytest.fixture
def errors_shown(monkeypatch):
    """Errors the app would show in a dialog, as (title, message); dialogs are not opened."""
    from adapterstudio.ui import errors

    monkeypatch.setattr(errors, "INTERACTIVE", False)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(errors, "shown", shown)
    return shown


@pytest.fixture
def window(qtbot, home, errors_shown):
    """The main window on an empty library (light theme: see _app), after the library has opened."""
    import gc

    from adapterstudio.ui.main_window import MainWindow

    # Earlier tests' windows and models are collected here, on the GUI thread, not during this test's
    # measurements (StallMeter) nor from a worker thread; what survives (modules, session fixtures) is
    # frozen out of later passes, as app.main() does after start-up: a full pass over torch's objects
    # takes most of a second, and the teardown's pass then only walks this test's objects.
    gc.collect()
    gc.freeze()
    w = MainWindow(open_library=False)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.pages["library"].loaded, timeout=20000):
        w.session.open()
    yield w
    w.close()  # pages stop their timers, the playground unloads its model, tasks are cancelled
    w.runner.cancel_all()
    w.runner.wait(60000)
    qtbot.wait(50)  # deliver the finished tasks' last signals
    if w.session.lib is not None:
        w.session.lib.close()
    gc.collect()  # so one test's models and plots are not collected during the next one's measurements


def wait_worker(qtbot, worker, timeout: int = 60000):
    """Wait until a Worker's signals have all reached the GUI thread; re-raise its error, return its result."""
    qtbot.waitUntil(lambda: worker.delivered, timeout=timeout)
    if worker.exception is not None:
        raise worker.exception
    return worker.value


def wait_loaded(qtbot, page, worker=None, timeout: int = 60000):
    """Wait for the worker (if any), then for the Library page's next reload."""
    with qtbot.waitSignal(page.loaded, timeout=timeout):
        result = wait_worker(qtbot, worker, timeout) if worker is not None else None
    return result


@pytest.fixture(autouse=True)
def _app(request):
    """Every GUI test has the QApplication (icons and pixmaps need it), with our light theme.

    Applied again only after a test switched it: applying restyles every widget still alive and
    empties the icon cache (a third of a second per test, and the icons drawn again)."""
    qapp = request.getfixturevalue("qapp")
    from adapterstudio.ui import theme

    if theme.current() != "light" or not qapp.styleSheet():
        theme.apply(qapp, "light")
    return qapp
