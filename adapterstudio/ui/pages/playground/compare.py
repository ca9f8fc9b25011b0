"""The Playground's side-by-side tabs: the same prompt through 2–4 adapters, and a saved prompt set across them.

Both run on the accelerator slot through the loaded base's
:class:`~adapterstudio.services.inference.Inference` (``compare`` leaves the last compared
adapter active, so both tell the page when they are done).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.core.context import Context
from adapterstudio.ui.icons import icon
from adapterstudio.ui.runner import ACCEL, Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted

BASE_ITEM = "Base model only (adapters off)"
PROMPTS_FILE = "playground-prompts.json"


class Loaded(Protocol):
    """What the tabs read from the page: the loaded base and the generation settings."""

    inf: Any  # the loaded base's Inference; None until one is loaded
    task: str  # the active model's task type ("CAUSAL_LM" chats)

    def params(self) -> dict[str, Any]: ...


# -- tasks: service calls shaped fn(ctx, lib, ...) --------------------------------------------------
def t_compare(ctx: Context, lib: Any, inf: Any, prompt: str | list[dict[str, str]], adapters: list[str | None],
              params: dict[str, Any]) -> dict[str, Any]:
    return inf.compare(prompt, adapters, **params)


def t_prompt_set(ctx: Context, lib: Any, inf: Any, prompts: list[str], adapters: list[str | None],
                 params: dict[str, Any]) -> dict[str, Any]:
    """Each prompt through each adapter: {prompt: {adapter or 'base': output}}."""
    out: dict[str, Any] = {}
    for i, p in enumerate(prompts):
        ctx.check_cancelled()
        ctx.progress(i, len(prompts), p[:40])
        prompt = p if inf.active.task != "CAUSAL_LM" else [{"role": "user", "content": p}]
        out[p] = inf.compare(prompt, adapters, **params)
    ctx.progress(len(prompts), len(prompts), "done")
    return out


def t_read_prompts(ctx: Context, lib: Any) -> list[str]:
    p = Path(lib.root) / PROMPTS_FILE
    if not p.is_file():
        return []
    data = json.loads(p.read_text(encoding="utf-8"))
    return [str(x) for x in data.get("prompts", [])]


def t_save_prompts(ctx: Context, lib: Any, prompts: list[str]) -> Path:
    from adapterstudio.core.fsutil import atomic_write_text

    p = Path(lib.root) / PROMPTS_FILE
    atomic_write_text(p, json.dumps({"version": 1, "prompts": prompts}, indent=2) + "\n")
    return p


def summary(result: Any) -> str:
    """One line for a compare/prompt-set cell: generated text, or the top label with its probability."""
    if isinstance(result, str):
        return result.strip()
    if isinstance(result, dict) and "label" in result:
        p = (result.get("probabilities") or {}).get(result["label"])
        return f"{result['label']}" + (f" ({p:.2f})" if isinstance(p, float) else "")
    return str(result)


class CompareTab(QWidget):
    """Check 2–4 entries (adapters and the base) and run one prompt through each, side by side."""

    compared = Signal(dict)  # {adapter or "base": output}
    notice = Signal(str)  # why nothing ran

    def __init__(self, session: Session, host: Loaded) -> None:
        super().__init__()
        self.session = session
        self.host = host
        v = QVBoxLayout(self)
        v.addWidget(muted("Check 2–4 adapters (and the base) and run the same prompt through each, side by side."))
        self.checks = QListWidget()
        self.checks.setMaximumHeight(130)
        v.addWidget(self.checks)
        row = QHBoxLayout()
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("Prompt")
        self.prompt.returnPressed.connect(lambda: self.compare())
        row.addWidget(self.prompt, 1)
        self.compare_btn = QPushButton(icon("compare"), "Compare")
        self.compare_btn.clicked.connect(lambda: self.compare())
        row.addWidget(self.compare_btn)
        v.addLayout(row)
        self.grid = QGridLayout()
        holder = QWidget()
        holder.setLayout(self.grid)
        v.addWidget(holder, 1)
        self.views: list[QTextBrowser] = []

    def set_adapters(self, names: list[str]) -> None:
        """The entries to choose from: the base alone, then *names* (all unchecked)."""
        self.checks.clear()
        for name in [None, *names]:
            it = QListWidgetItem(BASE_ITEM if name is None else name)
            it.setData(Qt.ItemDataRole.UserRole, name)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Unchecked)
            self.checks.addItem(it)

    def checked_adapters(self) -> list[str | None]:
        out = []
        for i in range(self.checks.count()):
            it = self.checks.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                out.append(it.data(Qt.ItemDataRole.UserRole))
        return out

    def set_checked(self, names: list[str | None]) -> None:
        for i in range(self.checks.count()):
            it = self.checks.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.data(Qt.ItemDataRole.UserRole) in names
                             else Qt.CheckState.Unchecked)

    def compare(self, prompt: str | None = None) -> Worker | None:
        adapters = self.checked_adapters()
        prompt = (prompt if prompt is not None else self.prompt.text()).strip()
        if self.host.inf is None or not prompt:
            return None
        if not 1 <= len(adapters) <= 4:
            self.notice.emit("Check between one and four entries to compare.")
            return None
        chat = self.host.task == "CAUSAL_LM"
        msg: str | list[dict[str, str]] = [{"role": "user", "content": prompt}] if chat else prompt
        w = self.session.run(t_compare, self.host.inf, msg, adapters, self.host.params() if chat else {},
                             pool=ACCEL, label="compare")
        w.signals.result.connect(self._compared)
        return w

    def _compared(self, res: dict[str, Any]) -> None:
        for v in self.views:
            v.setParent(None)
        self.views = []
        for col, (name, out) in enumerate(res.items()):
            view = QTextBrowser()
            if isinstance(out, dict) and "probabilities" in out:
                rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td align='right'>{p:.3f}</td></tr>"
                               for k, p in sorted(out["probabilities"].items(), key=lambda kv: -kv[1]))
                body = f"<p><b>{html.escape(str(out['label']))}</b></p><table>{rows}</table>"
            else:
                body = f"<p>{html.escape(summary(out)).replace(chr(10), '<br>')}</p>"
            view.setHtml(f"<h4>{html.escape(name)}</h4>{body}")
            self.grid.addWidget(view, 0, col)
            self.views.append(view)
        self.compared.emit(res)


class PromptSetTab(QWidget):
    """A saved set of prompts (kept in the library) run through the adapters checked on the Compare tab."""

    ran = Signal(dict)  # {prompt: {adapter or "base": output}}
    notice = Signal(str)  # why nothing ran

    def __init__(self, session: Session, host: Loaded, adapters: Callable[[], list[str | None]]) -> None:
        """*adapters*: the entries to run the prompts through (the Compare tab's checked ones)."""
        super().__init__()
        self.session = session
        self.host = host
        self._adapters = adapters
        v = QVBoxLayout(self)
        v.addWidget(muted("A saved set of prompts (one per line, kept in the library) run through the adapters "
                          "checked on the Compare tab."))
        self.editor = QPlainTextEdit()
        self.editor.setMaximumHeight(120)
        v.addWidget(self.editor)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save set")
        self.save_btn.clicked.connect(lambda: self.save())
        self.run_btn = QPushButton(icon("play"), "Run set")
        self.run_btn.clicked.connect(lambda: self.run())
        row.addWidget(self.save_btn)
        row.addWidget(self.run_btn)
        row.addStretch(1)
        v.addLayout(row)
        self.table = QTableWidget(0, 0)
        self.table.verticalHeader().setDefaultSectionSize(44)
        self.table.setWordWrap(True)
        v.addWidget(self.table, 1)

    def prompts(self) -> list[str]:
        return [p.strip() for p in self.editor.toPlainText().splitlines() if p.strip()]

    def read_saved(self) -> None:
        """Fill the editor with the library's saved set, unless it already holds prompts."""
        if self.session.lib is not None and not self.editor.toPlainText().strip():
            self.session.run(t_read_prompts, label="read prompts", quiet=True, on_result=self._read)

    def _read(self, prompts: list[str]) -> None:
        if prompts:
            self.editor.setPlainText("\n".join(prompts))

    def save(self) -> Worker | None:
        if self.session.lib is None:
            return None
        return self.session.run(t_save_prompts, self.prompts(), label="save prompts")

    def run(self) -> Worker | None:
        adapters = self._adapters()
        if self.host.inf is None or not self.prompts() or not adapters:
            self.notice.emit("Write prompts and check adapters on the Compare tab first.")
            return None
        params = self.host.params() if self.host.task == "CAUSAL_LM" else {}
        w = self.session.run(t_prompt_set, self.host.inf, self.prompts(), adapters, params, pool=ACCEL,
                             label="run prompt set")
        w.signals.result.connect(self._show)
        return w

    def _show(self, res: dict[str, Any]) -> None:
        prompts = list(res)
        cols = list(next(iter(res.values())).keys()) if res else []
        self.table.clear()
        self.table.setRowCount(len(prompts))
        self.table.setColumnCount(len(cols))
        self.table.setHorizontalHeaderLabels(cols)
        self.table.setVerticalHeaderLabels([p[:30] for p in prompts])
        for i, p in enumerate(prompts):
            for j, c in enumerate(cols):
                self.table.setItem(i, j, QTableWidgetItem(summary(res[p][c])))
        self.table.resizeColumnsToContents()
        self.ran.emit(res)
