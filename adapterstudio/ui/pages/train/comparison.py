"""The Train page's strategy comparison: several strategies trained on the same split, side by side.

The comparison itself is :func:`adapterstudio.services.training.compare`, run on the
accelerator slot with the form's settings; this panel picks the strategies and shows the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QModelIndex, QObject, QPersistentModelIndex, Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QPushButton, QTableView, QVBoxLayout, QWidget

from adapterstudio.core.context import Context
from adapterstudio.core.training.spec import STRATEGIES, TrainingSpec
from adapterstudio.ui.icons import icon
from adapterstudio.ui.models import RowTableModel, human_count, human_size
from adapterstudio.ui.runner import ACCEL, Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted

Index = QModelIndex | QPersistentModelIndex
CHECKED_FIRST = ("head", "lora", "full")  # the baseline head, an adapter and full fine-tuning


def t_compare(ctx: Context, lib: Any, spec_dict: dict[str, Any], strategies: list[str]) -> list[dict[str, Any]]:
    from adapterstudio.services import training

    return training.compare(lib, TrainingSpec.from_dict(spec_dict), strategies, ctx)


class CompareModel(RowTableModel):
    """The playbook's table: one row per strategy with its metric, parameters, time and memory."""

    COLUMNS = ("Strategy", "Status", "Validation", "Test", "Trainable params", "Share", "Time", "Peak memory")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []
        self._display: list[tuple[str, ...]] = []

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self._display = [self._fmt(r) for r in self._rows]
        self.endResetModel()

    @staticmethod
    def _fmt(r: dict[str, Any]) -> tuple[str, ...]:
        def num(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, (int, float)) else "–"

        tp, total = r.get("trainable_params"), r.get("total_params")
        share = f"{100 * tp / total:.2f}%" if tp and total else "–"
        t = r.get("train_time_s")
        return (r.get("strategy", "?"), r.get("status", "?") if not r.get("error") else "failed",
                num(r.get("val")), num(r.get("test")), human_count(tp), share,
                f"{t:.0f} s" if isinstance(t, (int, float)) else "–", human_size(r.get("peak_memory")))

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not self._row_index_ok(index):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[index.row()][index.column()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._rows[index.row()].get("error") or None
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() >= 2:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ComparisonPanel(QWidget):
    """Strategy check boxes, a Run button and the comparison table."""

    log = Signal(str)  # a line of the comparison's log

    def __init__(self, session: Session, spec: Callable[[], dict[str, Any] | None]) -> None:
        """*spec*: the settings to compare with (the form's), or None when they cannot be read (it says why)."""
        super().__init__()
        self.session = session
        self._spec = spec
        cv = QVBoxLayout(self)
        cv.addWidget(muted("Train several strategies on the same split of the form's dataset and compare them: "
                           "the baseline head, partial unfreezing, LoRA and full fine-tuning side by side."))
        boxes = QHBoxLayout()
        self.boxes: dict[str, QCheckBox] = {}
        for s in STRATEGIES:
            cb = QCheckBox(s)
            cb.setChecked(s in CHECKED_FIRST)
            self.boxes[s] = cb
            boxes.addWidget(cb)
        boxes.addStretch(1)
        cv.addLayout(boxes)
        self.run_btn = QPushButton(icon("compare"), "Run comparison")
        self.run_btn.clicked.connect(self.compare)
        cv.addWidget(self.run_btn, 0, Qt.AlignmentFlag.AlignLeft)
        self.model = CompareModel(self)
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.verticalHeader().hide()
        self.view.horizontalHeader().setStretchLastSection(True)
        cv.addWidget(self.view, 1)

    def compare(self) -> Worker | None:
        strategies = [s for s, cb in self.boxes.items() if cb.isChecked()]
        spec = self._spec()
        if spec is None:
            return None
        w = self.session.run(t_compare, spec, strategies, pool=ACCEL, label="compare strategies", changes=True)
        w.signals.log.connect(self.log)
        w.signals.result.connect(self.model.set_rows)
        return w
