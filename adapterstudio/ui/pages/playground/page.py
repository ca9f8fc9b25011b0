"""The Playground: load a base once (in the background), switch its adapters instantly, chat with
streaming output (causal LMs) or see label probabilities (classifiers), compare 2–4 adapters on the
same prompt, blend adapters with live sliders, and run a saved prompt set across adapters.

Everything runs on the accelerator slot through :mod:`adapterstudio.services.inference`; the
page keeps one :class:`~adapterstudio.services.inference.Inference` per loaded base. This
module holds the page, the adapter list and the Try tab; the Compare and Prompt set tabs
are in :mod:`.compare`, the Blend tab in :mod:`.blend`.
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import QByteArray, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core.context import Context
from adapterstudio.ui import theme
from adapterstudio.ui.icons import icon
from adapterstudio.ui.pages.playground.blend import BlendTab, blend_text
from adapterstudio.ui.pages.playground.compare import BASE_ITEM, CompareTab, PromptSetTab
from adapterstudio.ui.runner import ACCEL, Worker, WorkerContext
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder, muted, primary, title_label


def inference_available() -> bool:
    try:
        import adapterstudio.services.inference  # noqa: F401
    except ImportError:
        return False
    return True


# -- tasks: service calls shaped fn(ctx, lib, ...) --------------------------------------------------
def t_load(ctx: Context, lib: Any, base: str, first_adapter: str | None = None) -> dict[str, Any]:
    """Open the base and load its weights once (progress from the session)."""
    from adapterstudio.services.inference import open_inference

    inf = open_inference(lib, base, ctx=ctx)
    try:
        if first_adapter:
            inf.use(first_adapter, ctx)
        else:
            inf.session(ctx=ctx)
    except BaseException:
        inf.close()
        raise
    return {"inference": inf, **_mode(inf)}


def _mode(inf: Any) -> dict[str, Any]:
    sess = inf.active
    return {"task": sess.task}


def t_use(ctx: Context, lib: Any, inf: Any, adapter: str | None) -> dict[str, Any]:
    t = time.perf_counter()
    inf.use(adapter, ctx)
    return {"adapter": adapter, "ms": (time.perf_counter() - t) * 1000.0, **_mode(inf)}


def t_classify(ctx: Context, lib: Any, inf: Any, texts: list[str],
               adapters: list[str | None] | None = None) -> list[dict[str, Any]]:
    return inf.classify(texts, adapters)


def t_generate(ctx: WorkerContext, lib: Any, inf: Any, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """Stream the reply: each piece is posted as an event; cancel stops the generation."""
    out = []
    for piece in inf.generate(messages, stream=True, **params):
        out.append(piece)
        ctx.emit(piece)
        if ctx.cancelled:
            inf.stop()
            break
    return "".join(out)


def t_list_models(ctx: Context, lib: Any) -> dict[str, Any]:
    return {"bases": lib.list_bases(), "adapters": lib.list_adapters()}


def t_close(ctx: Context, lib: Any, inf: Any) -> None:
    inf.close()


class PlaygroundPage(QWidget):
    loaded = Signal(str)  # base name, once its weights are in memory
    switched = Signal(object)  # {"adapter", "ms", "task"}
    reply_done = Signal(str)
    classified = Signal(list)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        if not inference_available():
            self.available = False
            lay.addWidget(PagePlaceholder("Playground", "This page appears once the inference service is part of "
                                          "this build.", "playground"))
            return
        self.available = True
        self.inf: Any = None
        self.base_name = ""
        self.task = ""
        self.active: str | None = None
        self.adapters_by_base: dict[str, list[Any]] = {}
        self.messages: list[dict[str, str]] = []
        self.gen_worker: Worker | None = None
        self._pending_focus: str | None = None

        lay.setContentsMargins(24, 20, 24, 12)
        head = QHBoxLayout()
        head.addWidget(title_label("Playground"))
        head.addSpacing(16)
        head.addWidget(muted("Base", wrap=False))
        self.base = QComboBox()
        self.base.setMinimumWidth(220)
        head.addWidget(self.base)
        self.load_btn = primary(QPushButton(icon("play", "#ffffff"), "Load"))
        self.load_btn.clicked.connect(lambda: self.load())
        head.addWidget(self.load_btn)
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 1000)
        self.load_progress.setMaximumWidth(200)
        self.load_progress.setVisible(False)
        head.addWidget(self.load_progress)
        self.status = muted("Pick a base and load it: its weights stay in memory while you switch adapters.",
                            wrap=False)
        head.addWidget(self.status, 1)
        lay.addLayout(head)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.splitter = split
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 8, 0)
        lv.addWidget(QLabel("Adapters"))
        self.adapter_list = QListWidget()
        self.adapter_list.currentItemChanged.connect(lambda cur, _p: self._switch_to_item(cur))
        lv.addWidget(self.adapter_list, 1)
        self.switch_label = muted("")
        lv.addWidget(self.switch_label)
        split.addWidget(left)

        self.compare_tab = CompareTab(session, self)
        self.compare_tab.compared.connect(self._active_after_compare)
        self.compare_tab.notice.connect(self.status.setText)
        self.blend_tab = BlendTab(session, self)
        self.blend_tab.blended.connect(self._blended)
        self.prompt_set_tab = PromptSetTab(session, self, self.compare_tab.checked_adapters)
        self.prompt_set_tab.ran.connect(self._active_after_compare)
        self.prompt_set_tab.notice.connect(self.status.setText)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_try(), icon("playground"), "Try")
        self.tabs.addTab(self.compare_tab, icon("compare"), "Compare")
        self.tabs.addTab(self.blend_tab, icon("blend"), "Blend")
        self.tabs.addTab(self.prompt_set_tab, icon("notes"), "Prompt set")
        split.addWidget(self.tabs)
        split.setSizes([260, 820])
        lay.addWidget(split, 1)
        self._set_loaded(False)
        self.setEnabled(False)
        session.opened.connect(lambda _lib: self._refresh())
        session.catalogue_changed.connect(self._refresh)

    # -- building ------------------------------------------------------------------------------
    def _build_try(self) -> QWidget:
        w = QWidget()
        v = QVBoxLayout(w)
        self.transcript = QTextBrowser()
        self.transcript.setPlaceholderText("Load a base, pick an adapter, then write a prompt.")
        v.addWidget(self.transcript, 3)
        self.probs_title = QLabel("")
        self.probs_title.setWordWrap(True)
        self.probs_title.setStyleSheet("font-size: 14px;")
        v.addWidget(self.probs_title)
        self.probs = QTableWidget(0, 3)
        self.probs.setHorizontalHeaderLabels(["Label", "Probability", ""])
        self.probs.verticalHeader().hide()
        self.probs.horizontalHeader().setStretchLastSection(True)
        self.probs.setVisible(False)
        v.addWidget(self.probs, 2)
        row = QHBoxLayout()
        self.prompt = QPlainTextEdit()
        self.prompt.setMaximumHeight(80)
        self.prompt.setPlaceholderText("Write a message (Ctrl+Return sends)")
        row.addWidget(self.prompt, 1)
        col = QVBoxLayout()
        self.send_btn = primary(QPushButton(icon("send", "#ffffff"), "Send"))
        self.send_btn.setShortcut("Ctrl+Return")
        self.send_btn.clicked.connect(lambda: self.send())
        self.stop_btn = QPushButton(icon("stop"), "Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.stop_btn.setEnabled(False)
        self.clear_btn = QPushButton("Clear")
        self.clear_btn.clicked.connect(self.clear_chat)
        for b in (self.send_btn, self.stop_btn, self.clear_btn):
            col.addWidget(b)
        row.addLayout(col)
        v.addLayout(row)
        self.params_row = QWidget()
        params = QHBoxLayout(self.params_row)
        params.setContentsMargins(0, 0, 0, 0)
        params.addWidget(muted("Max new tokens", wrap=False))
        self.max_new = QSpinBox()
        self.max_new.setRange(1, 8192)
        self.max_new.setValue(64)
        params.addWidget(self.max_new)
        params.addWidget(muted("Temperature", wrap=False))
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0, 2)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(0.7)
        params.addWidget(self.temperature)
        params.addStretch(1)
        v.addWidget(self.params_row)
        return w

    # -- the catalogue side ------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self.session.lib is None:
            return
        self.session.run(t_list_models, label="list models", quiet=True, on_result=self._listed)
        self.prompt_set_tab.read_saved()

    def _listed(self, snap: dict[str, Any]) -> None:
        self.setEnabled(True)
        current = self.base.currentText()
        self.base.blockSignals(True)
        self.base.clear()
        for b in snap["bases"]:
            if b.available:
                self.base.addItem(icon("base"), b.name)
        self.base.setCurrentIndex(max(0, self.base.findText(current)))
        self.base.blockSignals(False)
        self.adapters_by_base = {}
        for a in snap["adapters"]:
            if a.base and a.compatible is not False and a.weights_format == "safetensors":
                self.adapters_by_base.setdefault(a.base, []).append(a)
        if self.base_name:
            self._fill_adapters()
        if self._pending_focus:
            self.focus_item(self._pending_focus)

    def _fill_adapters(self) -> None:
        adapters = self.adapters_by_base.get(self.base_name, [])
        self.adapter_list.blockSignals(True)
        self.adapter_list.clear()
        item = QListWidgetItem(icon("base"), BASE_ITEM)
        item.setData(Qt.ItemDataRole.UserRole, None)
        self.adapter_list.addItem(item)
        for a in adapters:
            it = QListWidgetItem(icon("adapter"), a.name)
            it.setData(Qt.ItemDataRole.UserRole, a.name)
            it.setToolTip(f"{a.peft_type} · {a.task_type or 'task unknown'}" + (f" · r={a.rank}" if a.rank else ""))
            self.adapter_list.addItem(it)
            if a.name == self.active:
                self.adapter_list.setCurrentItem(it)
        if self.active is None:
            self.adapter_list.setCurrentRow(0)
        self.adapter_list.blockSignals(False)
        self.compare_tab.set_adapters([a.name for a in adapters])
        self.blend_tab.set_adapters([a.name for a in adapters if a.peft_type == "LORA"])

    def focus_item(self, name: Any) -> None:
        """Open an adapter from elsewhere (Library's "Open in Playground"): load its base, then switch."""
        if not isinstance(name, str):
            return
        base = next((b for b, ads in self.adapters_by_base.items() if any(a.name == name for a in ads)), None)
        if base is None:
            self._pending_focus = name
            return
        self._pending_focus = None
        if self.base_name == base and self.inf is not None:
            self.switch(name)
        else:
            self.base.setCurrentText(base)
            self.load(base, first_adapter=name)

    # -- loading and switching -------------------------------------------------------------------
    def _set_loaded(self, loaded: bool) -> None:
        for w in (self.adapter_list, self.send_btn, self.compare_tab.compare_btn, self.blend_tab.use_btn,
                  self.prompt_set_tab.run_btn):
            w.setEnabled(loaded)

    def load(self, base: str | None = None, first_adapter: str | None = None) -> Worker | None:
        base = base or self.base.currentText()
        if not base or self.session.lib is None:
            return None
        if self.inf is not None:
            old, self.inf = self.inf, None
            self.session.run(t_close, old, pool=ACCEL, label="unload base", quiet=True)
        self._set_loaded(False)
        self.load_progress.setVisible(True)
        self.load_progress.setValue(0)
        self.status.setText(f"Loading {base}…")
        w = self.session.run(t_load, base, first_adapter, pool=ACCEL, label=f"load {base}",
                             on_progress=self._load_progress, on_error=self._load_failed)
        w.signals.result.connect(lambda res, b=base, a=first_adapter: self._loaded(b, res, a))
        return w

    def _load_progress(self, done: float, total: float | None, message: str) -> None:
        if total:
            self.load_progress.setValue(int(1000 * min(1.0, done / total)))
        if message:
            self.status.setText(message[:80])

    def _load_failed(self, exc: BaseException) -> None:
        self.load_progress.setVisible(False)
        self.status.setText("")
        self.session.runner.unhandled_error.emit(exc, getattr(exc, "__adapterstudio_traceback__", ""))

    def _loaded(self, base: str, res: dict[str, Any], adapter: str | None) -> None:
        self.inf = res["inference"]
        self.base_name = base
        self.active = adapter
        self.load_progress.setVisible(False)
        self._set_mode(res["task"])
        self.status.setText(f"{base} is loaded ({res['task'] or 'base model'}).")
        self._set_loaded(True)
        self._fill_adapters()
        self.loaded.emit(base)

    def _set_mode(self, task: str) -> None:
        self.task = task or ""
        chat = self.task == "CAUSAL_LM"
        self.transcript.setVisible(chat)
        self.probs.setVisible(not chat)
        self.probs_title.setVisible(not chat)
        self.stop_btn.setVisible(chat)
        self.clear_btn.setVisible(chat)
        self.params_row.setVisible(chat)
        self.send_btn.setText("Send" if chat else "Classify")

    def _switch_to_item(self, item: QListWidgetItem | None) -> None:
        if item is not None and self.inf is not None:
            self.switch(item.data(Qt.ItemDataRole.UserRole))

    def switch(self, adapter: str | None) -> Worker | None:
        """Activate *adapter* (None: the base alone). The base stays loaded."""
        if self.inf is None:
            return None
        self.switch_label.setText("switching…")
        w = self.session.run(t_use, self.inf, adapter, pool=ACCEL, label="switch adapter", quiet=True)
        w.signals.result.connect(self._switched)
        w.signals.error.connect(lambda _e: self.switch_label.setText(""))
        return w

    def _switched(self, res: dict[str, Any]) -> None:
        self.active = res["adapter"]
        self.blend_tab.active = False
        self._set_mode(res["task"])
        self.switch_label.setText(f"{res['adapter'] or 'base only'} active · switched in {res['ms']:.1f} ms")
        for i in range(self.adapter_list.count()):
            it = self.adapter_list.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == res["adapter"] and self.adapter_list.currentItem() is not it:
                self.adapter_list.blockSignals(True)
                self.adapter_list.setCurrentItem(it)
                self.adapter_list.blockSignals(False)
        self.switched.emit(res)

    # -- try: chat or classify -----------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new.value(), "temperature": self.temperature.value()}

    def send(self, text: str | None = None) -> Worker | None:
        if self.inf is None:
            return None
        text = (text if text is not None else self.prompt.toPlainText()).strip()
        if not text:
            return None
        self.prompt.clear()
        if self.task == "CAUSAL_LM":
            return self._chat(text)
        w = self.session.run(t_classify, self.inf, [text], pool=ACCEL, label="classify", quiet=True)
        w.signals.result.connect(self._show_probs)
        return w

    def _chat(self, text: str) -> Worker:
        self.messages.append({"role": "user", "content": text})
        self.messages.append({"role": "assistant", "content": ""})
        self._render_chat()
        self.send_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.gen_worker = self.session.run(t_generate, self.inf, self.messages[:-1], self.params(), pool=ACCEL,
                                           label="generate", quiet=True, on_event=self._piece)
        self.gen_worker.signals.finished.connect(self._chat_done)
        return self.gen_worker

    def _piece(self, piece: str) -> None:
        self.messages[-1]["content"] += piece
        self._render_chat()

    def _chat_done(self) -> None:
        self.send_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
        w = self.gen_worker
        if w is not None and w.value is not None:
            self.messages[-1]["content"] = w.value
            self._render_chat()
        self.reply_done.emit(self.messages[-1]["content"] if self.messages else "")

    def _render_chat(self) -> None:
        who = {"user": "You", "assistant": self.active or "base"}
        parts = []
        for m in self.messages:
            color = theme.color("highlight") if m["role"] == "user" else theme.color("good")
            parts.append(f"<p><b style='color:{color}'>{html.escape(who.get(m['role'], m['role']))}</b><br>"
                         f"{html.escape(m['content']).replace(chr(10), '<br>')}</p>")
        self.transcript.setHtml("".join(parts))
        sb = self.transcript.verticalScrollBar()
        sb.setValue(sb.maximum())

    def stop(self) -> None:
        if self.gen_worker is not None:
            self.gen_worker.cancel()
        if self.inf is not None:
            self.inf.stop()  # thread-safe: ends the running generation at its next token

    def clear_chat(self) -> None:
        self.messages = []
        self.transcript.clear()

    def _show_probs(self, results: list[dict[str, Any]]) -> None:
        r = results[0]
        self.probs_title.setText(f"“{html.escape(str(r.get('input', '')))}” → <b>{html.escape(str(r.get('label')))}</b>"
                                 f" <span style='color:{theme.color('muted')}'>with {self.active or 'the base alone'}</span>")
        probs = sorted((results[0].get("probabilities") or {}).items(), key=lambda kv: -kv[1])
        self.probs.setRowCount(len(probs))
        for i, (label, p) in enumerate(probs):
            self.probs.setItem(i, 0, QTableWidgetItem(str(label)))
            item = QTableWidgetItem(f"{p:.3f}")
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.probs.setItem(i, 1, item)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(int(1000 * p))
            bar.setTextVisible(False)
            self.probs.setCellWidget(i, 2, bar)
        self.classified.emit(results)

    # -- after the other tabs ------------------------------------------------------------------
    def _active_after_compare(self, _res: dict[str, Any]) -> None:
        # compare() leaves the last compared adapter active; say so rather than pretend otherwise
        self.switch_label.setText("after comparing, pick an adapter to continue")

    def _blended(self, res: dict[str, Any]) -> None:
        self.active = "blend"
        self._set_mode(res["task"])
        self.switch_label.setText(f"blend active: {blend_text(res['weights'])}")

    # -- lifecycle --------------------------------------------------------------------------------------
    def save_state(self) -> QByteArray | None:
        return self.splitter.saveState() if self.available else None

    def restore_state(self, data: QByteArray) -> None:
        if self.available:
            self.splitter.restoreState(data)

    def shutdown(self) -> None:
        """Stop a generation and unload the model (on the accelerator slot, after what is queued)."""
        if self.available and self.inf is not None:
            self.stop()
            inf, self.inf = self.inf, None
            self.session.run(t_close, inf, pool=ACCEL, label="unload base", quiet=True)
