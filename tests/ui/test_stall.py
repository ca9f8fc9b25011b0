"""The GUI thread never stalls: a 10 ms timer records the gaps between its ticks while the
app registers a base (hashing 90 MB), imports adapters and lists the library.

The issue asks for no gap above 100 ms; the p99 is printed (run with -s to see it).
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from tests.ui.conftest import wait_loaded  # noqa: E402


class StallMeter:
    def __init__(self, runner=None) -> None:
        from PySide6.QtCore import QTimer

        self.runner = runner
        self.slow: list[tuple[int, list[str]]] = []  # (gap ms, tasks running) for gaps over 50 ms
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000.0
        self.gaps.append(gap)
        if gap > 50 and self.runner is not None:
            self.slow.append((round(gap), [w.name for w in self.runner.workers]))
        self._last = now

    def __enter__(self):
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()

    def summary(self) -> dict[str, float]:
        g = sorted(self.gaps)
        return {"ticks": len(g), "p50_ms": g[len(g) // 2], "p99_ms": g[min(len(g) - 1, int(len(g) * 0.99))],
                "max_ms": g[-1]}


def report(name: str, s: dict[str, float]) -> None:
    print(f"\nevent-loop gaps during {name}: {s['ticks']} ticks, p50 {s['p50_ms']:.1f} ms, "
          f"p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms")


def test_no_stall_while_registering_and_importing(qtbot, window, minilm_path, peft_adapters):
    page = window.pages["library"]
    window.show()
    qtbot.waitExposed(window)
    with StallMeter() as meter:
        wait_loaded(qtbot, page, page.add_base(str(minilm_path), "minilm"))  # hashes the 87 MB weights
        for k in ("lora", "dora", "ia3", "loha", "lokr"):
            wait_loaded(qtbot, page, page.import_paths([str(peft_adapters[k])])[0])
        page.select("minilm-lora")
        qtbot.waitUntil(lambda: page.detail.adapter.record is not None, timeout=20000)
    s = meter.summary()
    report("base registration + 5 imports", s)
    assert page.table_model.rowCount() == 5
    assert s["ticks"] > 20
    assert s["max_ms"] < 100, s
