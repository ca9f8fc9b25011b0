"""The Playground's Blend tab: weighted blends of the base's LoRA adapters, applied without merging.

"Use this blend" activates it (``Inference.use_blend``); once a blend is active, moving a
slider changes its weights live (``Inference.set_blend_weights``, debounced).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFormLayout, QHBoxLayout, QPushButton, QSlider, QVBoxLayout, QWidget

from adapterstudio.core.context import Context
from adapterstudio.ui.icons import icon
from adapterstudio.ui.pages.playground.compare import Loaded
from adapterstudio.ui.runner import ACCEL, Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted

MAX_SLIDERS = 6


def t_blend(ctx: Context, lib: Any, inf: Any, weights: dict[str, float], live: bool) -> dict[str, Any]:
    if live:
        inf.set_blend_weights(weights)
    else:
        inf.use_blend(weights)
    return {"weights": weights, "task": inf.active.task}


class BlendTab(QWidget):
    blended = Signal(dict)  # {"weights": {adapter: weight}, "task"}, once the blend is active

    def __init__(self, session: Session, host: Loaded) -> None:
        super().__init__()
        self.session = session
        self.host = host
        v = QVBoxLayout(self)
        v.addWidget(muted("Weighted blends of LoRA adapters, applied without merging. Move a slider: the blend "
                          "updates live, then try it on the Try tab or here."))
        self.form = QFormLayout()
        holder = QWidget()
        holder.setLayout(self.form)
        v.addWidget(holder)
        row = QHBoxLayout()
        self.use_btn = QPushButton(icon("blend"), "Use this blend")
        self.use_btn.clicked.connect(lambda: self.apply(live=False))
        row.addWidget(self.use_btn)
        self.status = muted("", wrap=False)
        row.addWidget(self.status, 1)
        v.addLayout(row)
        v.addStretch(1)
        self.sliders: dict[str, QSlider] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(120)
        self._timer.timeout.connect(lambda: self.apply(live=True))
        self.active = False  # a blend is the active model (sliders then apply live)

    def set_adapters(self, names: list[str]) -> None:
        """A slider (at 0) for each of the first LoRA adapters *names*."""
        while self.form.rowCount():
            self.form.removeRow(0)
        self.sliders = {}
        for name in names[:MAX_SLIDERS]:
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(0, 100)
            s.setValue(0)
            s.valueChanged.connect(self._moved)
            self.sliders[name] = s
            self.form.addRow(name, s)
        if not names:
            self.form.addRow(muted("Blends need LoRA adapters of this base."))

    def weights(self) -> dict[str, float]:
        return {n: s.value() / 100.0 for n, s in self.sliders.items() if s.value() > 0}

    def _moved(self, _v: int) -> None:
        w = self.weights()
        self.status.setText(", ".join(f"{n} {x:.2f}" for n, x in w.items()) or "all sliders at 0")
        if self.active:
            self._timer.start()

    def apply(self, live: bool = False) -> Worker | None:
        """Activate the blend the sliders set (*live*: only change the weights of the active blend)."""
        weights = self.weights()
        if self.host.inf is None or not weights:
            return None
        if live and not self.active:
            return None
        w = self.session.run(t_blend, self.host.inf, weights, live, pool=ACCEL, label="blend", quiet=live)
        w.signals.result.connect(self._blended)
        return w

    def _blended(self, res: dict[str, Any]) -> None:
        self.active = True
        self.blended.emit(res)
        self.status.setText("active: " + blend_text(res["weights"]))


def blend_text(weights: dict[str, float]) -> str:
    """A blend as the page writes it: ``0.70·poet + 0.30·pirate``."""
    return " + ".join(f"{w:.2f}·{n}" for n, w in weights.items())
