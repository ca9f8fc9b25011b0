"""The Library's detail pane: an adapter's card, lineage with metric curves, compatibility and files."""

from __future__ import annotations

import html
import json
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core.records import AdapterRecord, BaseRecord
from adapterstudio.ui import tasks, theme
from adapterstudio.ui.icons import icon
from adapterstudio.ui.models import human_count, human_size, human_time, task_label
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted, tool_button

LOSS_KEYS = ("train_loss", "eval_loss", "loss", "val_loss", "validation_loss")
SKIP_KEYS = ("epoch", "step", "global_step", "learning_rate", "lr", "grad_norm", "time", "elapsed", "throughput",
             "n", "eval_n", "test_n")


def metric_series(history: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{metric: (x, y)} from lineage["metrics"]["history"], x = step (or row number)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(history or []):
        if not isinstance(row, dict):
            continue
        x = row.get("step", row.get("global_step", row.get("epoch", i)))
        for k, v in row.items():
            if k in SKIP_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or not isinstance(x, (int, float)):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(float(x))
            ys.append(float(v))
    return series


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><td style='padding:2px 14px 2px 0; color:{theme.color('muted')}'>{html.escape(k)}</td>"
        f"<td style='padding:2px 0'>{html.escape('–' if v in (None, '') else str(v))}</td></tr>"
        for k, v in rows)
    return f"<table cellspacing='0'>{cells}</table>"


class MetricsPlot(QWidget):
    """Loss curves on the left, other metrics (accuracy, F1...) on the right, with pyqtgraph."""

    PALETTE = ("#6d5dfc", "#22b5c9", "#f08c2e", "#1e9e5a", "#d0403a", "#a05be0")

    def __init__(self) -> None:
        super().__init__()
        import pyqtgraph as pg

        self.pg = pg
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.loss = pg.PlotWidget(title="loss")
        self.other = pg.PlotWidget(title="metrics")
        for p, where in ((self.loss, (-10, 10)), (self.other, (10, -10))):  # losses fall, metrics rise
            p.showGrid(x=True, y=True, alpha=0.2)
            p.addLegend(offset=where)
            p.setLabel("bottom", "step")
            p.setMinimumHeight(180)
            lay.addWidget(p)
        self.other.setXLink(self.loss)  # one step axis for both
        self.curves: dict[str, Any] = {}
        self.retheme()

    def retheme(self) -> None:
        for p in (self.loss, self.other):
            p.setBackground(theme.color("base"))
            for axis in ("left", "bottom"):
                p.getAxis(axis).setPen(theme.color("muted"))
                p.getAxis(axis).setTextPen(theme.color("muted"))

    def clear(self) -> None:
        for p in (self.loss, self.other):
            p.clear()
        self.curves.clear()

    def set_series(self, series: dict[str, tuple[list[float], list[float]]]) -> None:
        """Show *series*; curves already on the plot are updated in place (cheap for live runs)."""
        for name in set(self.curves) - set(series):
            curve = self.curves.pop(name)
            for p in (self.loss, self.other):
                if curve in p.listDataItems():
                    p.removeItem(curve)
        for i, (name, (xs, ys)) in enumerate(sorted(series.items())):
            # Markers only where points are few (evaluations): pyqtgraph's scatter items are
            # costly to rebuild, and a per-step training curve reads fine as a line.
            symbol = "o" if len(xs) <= 12 and not name.startswith("train") else None
            curve = self.curves.get(name)
            if curve is not None:
                if curve.opts.get("symbol") != symbol:
                    curve.setSymbol(symbol)
                curve.setData(xs, ys)
                continue
            target = self.loss if ("loss" in name or name in LOSS_KEYS) else self.other
            pen = self.pg.mkPen(self.PALETTE[i % len(self.PALETTE)], width=2)
            self.curves[name] = target.plot(xs, ys, pen=pen, name=name, symbol=symbol,
                                            symbolSize=6, symbolBrush=self.PALETTE[i % len(self.PALETTE)])
        # accuracy-like metrics read best on their natural 0..1 scale
        other = [y for n, (_x, ys) in series.items() if n not in LOSS_KEYS and "loss" not in n for y in ys]
        if other and all(0.0 <= y <= 1.0 for y in other):
            self.other.setYRange(0.0, 1.0, padding=0.02)
        else:
            self.other.enableAutoRange(axis="y")


def _title_row() -> tuple[QHBoxLayout, QLabel, QLabel]:
    """A detail pane's header: icon and a large, selectable name (actions are added after)."""
    head = QHBoxLayout()
    icon_label = QLabel()
    head.addWidget(icon_label)
    name_label = QLabel()
    name_label.setStyleSheet("font-size: 17px; font-weight: 600;")
    name_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    head.addWidget(name_label, 1)
    return head, icon_label, name_label


class AdapterDetail(QWidget):
    """One adapter: header with actions, tabs for overview, lineage, files and card."""

    rename_requested = Signal(str)
    tags_requested = Signal(str)
    export_requested = Signal(str)
    remove_requested = Signal(str)
    use_requested = Signal(str)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.record: AdapterRecord | None = None
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        head, self.icon_label, self.name_label = _title_row()
        self.buttons = {}
        for key, ic, tip in (("use", "playground", "Open in the Playground"), ("rename", "rename", "Rename"),
                             ("tags", "tag", "Edit tags"), ("export", "export", "Export a copy"),
                             ("remove", "remove", "Remove from the library")):
            b = tool_button(ic, tip)
            b.clicked.connect(lambda _=False, k=key: self._action(k))
            self.buttons[key] = b
            head.addWidget(b)
        v.addLayout(head)
        self.subtitle = muted("")
        v.addWidget(self.subtitle)

        self.tabs = QTabWidget()
        v.addWidget(self.tabs, 1)
        # overview
        ov = QWidget()
        ol = QVBoxLayout(ov)
        self.overview = QTextBrowser()
        self.overview.setOpenExternalLinks(False)
        ol.addWidget(self.overview, 3)
        ol.addWidget(QLabel("Notes"))
        self.notes = QPlainTextEdit()
        self.notes.setPlaceholderText("What is this adapter for? What did you learn from it?")
        self.notes.setMaximumHeight(110)
        ol.addWidget(self.notes)
        nb = QHBoxLayout()
        nb.addStretch(1)
        self.notes_btn = QPushButton("Save notes")
        self.notes_btn.clicked.connect(self.save_notes)
        nb.addWidget(self.notes_btn)
        ol.addLayout(nb)
        self.tabs.addTab(ov, "Overview")
        # lineage
        ln = QWidget()
        ll = QVBoxLayout(ln)
        self.lineage = QTextBrowser()
        ll.addWidget(self.lineage, 2)
        self.plot = MetricsPlot()
        ll.addWidget(self.plot, 3)
        self.no_metrics = muted("No metrics history was recorded for this adapter (it was imported, not trained here).")
        ll.addWidget(self.no_metrics)
        self.tabs.addTab(ln, "Lineage")
        # compatibility
        cp = QWidget()
        cl = QVBoxLayout(cp)
        self.compat = QTextBrowser()
        cl.addWidget(self.compat, 1)
        row = QHBoxLayout()
        row.addWidget(QLabel("Check against"))
        self.check_base = QComboBox()
        row.addWidget(self.check_base, 1)
        self.check_btn = QPushButton("Check")
        self.check_btn.clicked.connect(self.run_check)
        row.addWidget(self.check_btn)
        cl.addLayout(row)
        self.check_result = muted("")
        cl.addWidget(self.check_result)
        self.tabs.addTab(cp, "Compatibility")
        # files
        self.files = QTableWidget(0, 3)
        self.files.setHorizontalHeaderLabels(["File", "Size", "SHA-256"])
        self.files.horizontalHeader().setStretchLastSection(True)
        self.files.verticalHeader().hide()
        self.files.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.tabs.addTab(self.files, "Files")
        # card
        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(True)
        self.tabs.addTab(self.card, "Card")

    def _action(self, key: str) -> None:
        if self.record is None:
            return
        {"rename": self.rename_requested, "tags": self.tags_requested, "export": self.export_requested,
         "remove": self.remove_requested, "use": self.use_requested}[key].emit(self.record.name)

    def set_details(self, details: dict[str, Any], bases: list[BaseRecord]) -> None:
        a: AdapterRecord = details["record"]
        self.record = a
        self.icon_label.setPixmap(icon("adapter").pixmap(24, 24))
        self.name_label.setText(a.name)
        self.subtitle.setText(f"{a.peft_type} · {task_label(a.task_type)} · {human_size(a.size_bytes)} · "
                              f"from {a.source}" + (f" ({a.source_ref})" if a.source_ref else ""))
        cfg = details.get("config") or {}
        rows = [("Base", a.base or f"{a.base_ref} (not in the catalogue)"), ("PEFT type", a.peft_type),
                ("Task", task_label(a.task_type)), ("Rank", a.rank), ("Alpha", cfg.get("lora_alpha")),
                ("Dropout", cfg.get("lora_dropout")), ("Target modules", ", ".join(a.target_modules)),
                ("Tags", ", ".join(a.tags)), ("Weights", a.weights_format), ("Size", human_size(a.size_bytes)),
                ("Created", human_time(a.created_at)), ("Updated", human_time(a.updated_at)),
                ("Parent", a.parent), ("Run", a.run_id), ("Stored at", a.path)]
        self.overview.setHtml(f"<h3>{html.escape(a.name)}</h3>" + _kv_table(rows))
        self.notes.setPlainText(a.notes)
        self._set_lineage(a.lineage or {}, details.get("run_series") or {})
        self._set_compat(a, bases)
        self.files.setRowCount(len(a.files))
        for i, f in enumerate(a.files):
            for j, text in enumerate((f.relpath, human_size(f.size), f.sha256)):
                item = QTableWidgetItem(text)
                if j == 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.files.setItem(i, j, item)
        self.files.resizeColumnsToContents()
        card = details.get("card") or ""
        if card:
            self.card.setMarkdown(_strip_front_matter(card))
        else:
            self.card.setHtml(f"<p style='color:{theme.color('muted')}'>This adapter has no README.md model card. "
                              "One is generated when it is pushed from the Share page.</p>")

    def _set_lineage(self, lin: dict[str, Any], run_series: dict[str, Any] | None = None) -> None:
        if not lin:
            self.lineage.setHtml(f"<p style='color:{theme.color('muted')}'>No lineage: this adapter was imported, "
                                 "so its dataset and settings are unknown.</p>")
        else:
            ds = lin.get("dataset") or {}
            base = lin.get("base") or {}
            rows = [("Run", lin.get("run_id")), ("Task", lin.get("task")), ("Strategy", lin.get("strategy")),
                    ("Base", base.get("name")), ("Base Hub id", base.get("hub_id")), ("Base revision", base.get("revision")),
                    ("Base hash", base.get("content_hash")), ("Dataset", ds.get("name") or ds.get("path")),
                    ("Dataset rows", ds.get("rows")), ("Dataset SHA-256", ds.get("sha256")),
                    ("Text column", lin.get("text_column")), ("Label column", lin.get("label_column")),
                    ("Labels", ", ".join(map(str, lin.get("labels") or [])) or None), ("Seed", lin.get("seed")),
                    ("Duration", f"{lin['duration_s']:.0f} s" if isinstance(lin.get("duration_s"), (int, float)) else None),
                    ("Processes", lin.get("world_size"))]
            spec = lin.get("spec") or {}
            final = (lin.get("metrics") or {}).get("final") or {}
            test = (lin.get("metrics") or {}).get("test") or {}
            parts = ["<h4>Run</h4>", _kv_table(rows)]
            if final or test:
                parts += ["<h4>Results</h4>", _kv_table([(f"final {k}", _fmt(v)) for k, v in final.items()] +
                                                        [(f"test {k}", _fmt(v)) for k, v in test.items()])]
            if spec:
                parts += ["<h4>Settings</h4>", _kv_table([(k, json.dumps(v) if isinstance(v, (dict, list)) else v)
                                                          for k, v in sorted(spec.items())])]
            self.lineage.setHtml("".join(parts))
        history = ((lin.get("metrics") or {}).get("history")) or []
        series = metric_series(history)
        if run_series and sum(len(x) for x, _y in run_series.values()) > sum(len(x) for x, _y in series.values()):
            series = run_series  # the run's own events: every logged step, not only the evaluations
        self.plot.setVisible(bool(series))
        self.no_metrics.setVisible(not series)
        if series:
            self.plot.set_series(series)
        else:
            self.plot.clear()

    def _set_compat(self, a: AdapterRecord, bases: list[BaseRecord]) -> None:
        good, bad = theme.color("good"), theme.color("bad")
        if a.base is None:
            text = (f"<p style='color:{bad}'><b>Base not in the catalogue.</b> The adapter names "
                    f"<code>{html.escape(str(a.base_ref))}</code>; add that model on the Library page and it is "
                    "linked and checked automatically.</p>")
        elif a.compatible is False:
            text = f"<p style='color:{bad}'><b>Does not fit {html.escape(a.base)}</b>: {html.escape(a.compat_reason)}</p>"
        else:
            text = (f"<p style='color:{good}'><b>Fits {html.escape(a.base)}.</b> "
                    f"{html.escape(a.compat_reason or 'Every target module and tensor shape matches the base.')}</p>")
        lin_base = (a.lineage or {}).get("base") or {}
        if lin_base.get("content_hash"):
            text += f"<p>Trained on base hash <code>{html.escape(lin_base['content_hash'])}</code>.</p>"
        self.compat.setHtml(text)
        self.check_base.clear()
        self.check_base.addItems([b.name for b in bases])
        if a.base:
            self.check_base.setCurrentText(a.base)
        self.check_result.setText("")

    def run_check(self):
        if self.record is None or not self.check_base.currentText():
            return None
        base = self.check_base.currentText()
        self.check_result.setText(f"Checking against {base}…")
        return self.session.run(tasks.check_adapter, self.record.name, base, label="check compatibility",
                                on_result=lambda r, b=base: self._checked(r, b))

    def _checked(self, report, base: str) -> None:
        if report.compatible:
            self.check_result.setText(f"✔ Fits {base}." + (f" {report.reason}" if report.reason else ""))
        else:
            self.check_result.setText(f"✘ Does not fit {base}: {report.reason}")

    def save_notes(self):
        if self.record is None:
            return None
        name = self.record.name
        return self.session.run(tasks.set_notes, name, self.notes.toPlainText(), label="save notes",
                                on_result=self.session.adapter_changed.emit)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _strip_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[end + 4:].lstrip()
    return text


class BaseDetail(QWidget):
    remove_requested = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        head, self.icon_label, self.name_label = _title_row()
        self.remove_btn = tool_button("remove", "Forget this base (its files are not touched)")
        self.remove_btn.clicked.connect(self._remove_clicked)
        head.addWidget(self.remove_btn)
        v.addLayout(head)
        self.info = QTextBrowser()
        v.addWidget(self.info, 1)
        self.record: BaseRecord | None = None

    def _remove_clicked(self) -> None:
        if self.record is not None:
            self.remove_requested.emit(self.record.name)

    def set_details(self, details: dict[str, Any]) -> None:
        b: BaseRecord = details["record"]
        self.record = b
        self.icon_label.setPixmap(icon("base").pixmap(24, 24))
        self.name_label.setText(b.name)
        rows = [("Architecture", b.architecture), ("Model type", b.model_type),
                ("Parameters", human_count(b.num_parameters)), ("Weights dtype", b.dtype), ("Size", human_size(b.size_bytes)),
                ("Source", b.source), ("Hub id", b.hub_id), ("Revision", b.revision), ("Content hash", b.content_hash),
                ("Folder", b.path), ("Available", "yes" if b.available else "no (not downloaded, or the folder moved)"),
                ("LoRA target candidates", ", ".join(b.target_modules[:20]))]
        adapters = details.get("adapters") or []
        items = "".join(f"<li>{html.escape(a.name)} <span style='color:{theme.color('muted')}'>({a.peft_type}, "
                        f"{task_label(a.task_type)})</span></li>" for a in adapters)
        self.info.setHtml(f"<h3>{html.escape(b.name)}</h3>" + _kv_table(rows) +
                          f"<h4>{len(adapters)} adapters</h4><ul>{items}</ul>")


class DetailPane(QStackedWidget):
    EMPTY, ADAPTER, BASE, LOADING = range(4)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        empty = QWidget()
        el = QVBoxLayout(empty)
        el.addStretch(1)
        m = muted("Select an adapter or a base to see its card, lineage, compatibility and files.\n\n"
                  "Drop an adapter folder anywhere on this page to import it.")
        m.setAlignment(Qt.AlignmentFlag.AlignCenter)
        el.addWidget(m)
        el.addStretch(2)
        self.addWidget(empty)
        self.adapter = AdapterDetail(session)
        self.addWidget(self.adapter)
        self.base = BaseDetail()
        self.addWidget(self.base)
        loading = QWidget()
        ll = QVBoxLayout(loading)
        ll.addWidget(muted("Loading…"), 0, Qt.AlignmentFlag.AlignCenter)
        self.addWidget(loading)
        self._pending: tuple[str, str] | None = None  # (kind, name) of the newest selection
        self.bases: list[BaseRecord] = []

    def show_adapter(self, name: str):
        self._pending = ("adapter", name)
        if self.currentIndex() != self.ADAPTER:
            self.setCurrentIndex(self.LOADING)
        return self.session.run(tasks.adapter_details, name, label="load details",
                                on_result=lambda d, n=name: self._adapter_loaded(n, d),
                                on_error=lambda exc: self._failed(exc))

    def _adapter_loaded(self, name: str, details: dict[str, Any]) -> None:
        if self._pending != ("adapter", name):
            return  # a newer selection won
        self.adapter.set_details(details, self.bases)
        self.setCurrentIndex(self.ADAPTER)

    def show_base(self, name: str):
        self._pending = ("base", name)
        self.setCurrentIndex(self.LOADING)
        return self.session.run(tasks.base_details, name, label="load details",
                                on_result=lambda d, n=name: self._base_loaded(n, d), on_error=lambda exc: self._failed(exc))

    def _base_loaded(self, name: str, details: dict[str, Any]) -> None:
        if self._pending != ("base", name):
            return
        self.base.set_details(details)
        self.setCurrentIndex(self.BASE)

    def _failed(self, exc: BaseException) -> None:
        from adapterstudio.core.errors import NotFound

        self.setCurrentIndex(self.EMPTY)
        if not isinstance(exc, NotFound):  # a removed entry simply clears the pane
            self.session.runner.unhandled_error.emit(exc, getattr(exc, "__adapterstudio_traceback__", ""))

    def clear(self) -> None:
        self._pending = None
        self.setCurrentIndex(self.EMPTY)
