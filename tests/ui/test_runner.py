"""The worker runner: results, progress, errors, cancellation and the serial accelerator pool."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from adapterstudio.core.errors import InvalidInput  # noqa: E402
from tests.ui.conftest import wait_worker  # noqa: E402


@pytest.fixture
def runner(qtbot):
    from adapterstudio.ui.runner import Runner

    r = Runner()
    yield r
    r.cancel_all()
    r.wait(10000)


def test_result_and_progress_arrive_on_the_gui_thread(qtbot, runner):
    from PySide6.QtCore import QThread

    gui = QThread.currentThread()
    seen = {"progress": [], "threads": set(), "logs": []}

    def work(ctx, n):
        for i in range(n + 1):
            ctx.progress(i, n, f"step {i}")
        ctx.log("done counting")
        return threading.current_thread() is threading.main_thread()

    def on_progress(done, total, msg):
        seen["progress"].append((done, total))
        seen["threads"].add(QThread.currentThread() is gui)

    w = runner.submit(work, 50, on_progress=on_progress, on_log=seen["logs"].append)
    assert wait_worker(qtbot, w) is False  # the work ran off the main thread
    assert seen["threads"] == {True}  # ...and its signals were delivered on the GUI thread
    assert seen["progress"][-1] == (50.0, 50.0)  # the final progress is never throttled away
    assert len(seen["progress"]) < 51  # intermediate ones are throttled
    assert seen["logs"] == ["done counting"]
    assert w.state == "done"


def test_user_error_goes_to_on_error_with_traceback(qtbot, runner):
    def bad(ctx):
        raise InvalidInput("/x/adapter_config.json is not valid JSON.")

    got = []
    w = runner.submit(bad, on_error=got.append)
    with pytest.raises(InvalidInput):
        wait_worker(qtbot, w)
    assert w.state == "failed"
    assert isinstance(got[0], InvalidInput)
    assert "Traceback" in w.traceback and "bad" in w.traceback


def test_error_without_handler_is_reported_not_swallowed(qtbot, runner):
    def boom(ctx):
        return 1 / 0

    with qtbot.waitSignal(runner.unhandled_error, timeout=10000) as blocker:
        runner.submit(boom)
    exc, tb = blocker.args
    assert isinstance(exc, ZeroDivisionError)
    assert "ZeroDivisionError" in tb


def test_cancel_is_cooperative(qtbot, runner):
    started = threading.Event()

    def long(ctx):
        started.set()
        for _ in range(1000):
            ctx.check_cancelled()
            time.sleep(0.005)
        return "finished"

    cancelled = []
    w = runner.submit(long, on_cancelled=lambda: cancelled.append(True))
    qtbot.waitUntil(started.is_set, timeout=10000)
    w.cancel()
    assert wait_worker(qtbot, w) is None
    assert w.state == "cancelled" and cancelled == [True]


def test_accelerator_pool_runs_one_job_at_a_time(qtbot, runner):
    from adapterstudio.ui.runner import ACCEL, IO

    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    def job(ctx):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.05)
        with lock:
            active["now"] -= 1

    workers = [runner.submit(job, pool=ACCEL) for _ in range(4)]
    for w in workers:
        wait_worker(qtbot, w)
    assert active["max"] == 1
    active["max"] = 0
    barrier = threading.Barrier(2, timeout=10)  # two I/O jobs must overlap to pass the barrier

    def io_job(ctx):
        barrier.wait()
        return True

    ws = [runner.submit(io_job, pool=IO) for _ in range(2)]
    assert [wait_worker(qtbot, w) for w in ws] == [True, True]


def test_busy_signal_and_live_workers(qtbot, runner):
    ev = threading.Event()
    with qtbot.waitSignal(runner.busy_changed, timeout=5000) as blocker:
        w = runner.submit(lambda ctx: ev.wait(10))
    assert blocker.args == [True]
    assert runner.workers == [w]
    with qtbot.waitSignal(runner.busy_changed, timeout=10000) as blocker:
        ev.set()
    assert blocker.args == [False]
    assert runner.workers == []
