"""The Share page: pick a provider, see the login state, search remote adapters as cards,
pull one with progress, and push one after reviewing the card that will be uploaded.

Every call goes to :mod:`adapterstudio.services.hub` through the runner's I/O pool.
A token typed into the login dialog is handed to the provider and never kept or logged.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.ui import theme
from adapterstudio.ui.icons import icon
from adapterstudio.ui.models import NameRole, RecordRole
from adapterstudio.ui.runner import Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import PagePlaceholder, muted, primary, title_label

Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()


def hub_available() -> bool:
    try:
        import adapterstudio.services.hub  # noqa: F401
    except ImportError:
        return False
    return True


# -- tasks: service calls shaped fn(ctx, lib, ...) -------------------------------------------------
def t_providers(ctx, lib) -> list[Any]:
    from adapterstudio.services import hub

    return hub.list_providers(lib)


def t_whoami(ctx, lib, provider: str):
    from adapterstudio.services import hub

    return hub.whoami(lib, provider=provider)


def t_login(ctx, lib, provider: str, token: str):
    from adapterstudio.services import hub

    return hub.login(lib, token, provider=provider)


def t_logout(ctx, lib, provider: str):
    from adapterstudio.services import hub

    hub.logout(lib, provider=provider)
    return hub.whoami(lib, provider=provider)


def t_search(ctx, lib, provider: str, query: str, base: str | None):
    from adapterstudio.services import hub

    return hub.search(lib, query, base=base or None, provider=provider)


def t_show(ctx, lib, provider: str, repo_id: str):
    from adapterstudio.services import hub

    return hub.show(lib, repo_id, provider=provider)


def t_pull(ctx, lib, provider: str, repo_id: str, name: str | None):
    from adapterstudio.services import hub

    return hub.pull_adapter(lib, repo_id, name=name or None, provider=provider, ctx=ctx)


def t_card(ctx, lib, adapter: str, repo_id: str):
    """The model card a push would upload (generated from the adapter's record and lineage)."""
    from adapterstudio.services import hub

    rec = lib.catalogue.get_adapter(adapter)
    base_model = hub.resolve_base_model(lib, rec)
    return {"card": hub.make_card(lib, rec, base_model, repo_id or None), "base_model": base_model}


def t_push(ctx, lib, provider: str, adapter: str, repo_id: str, private: bool):
    from adapterstudio.services import hub

    return hub.push_adapter(lib, adapter, repo_id, provider=provider, private=private, ctx=ctx)


# -- search results ----------------------------------------------------------------------------------
class RemoteAdapterModel(QAbstractListModel):
    """Search results (RemoteAdapter records) for the card view."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._items: list[Any] = []
        self._subtitle: list[str] = []

    def set_items(self, items: list[Any]) -> None:
        self.beginResetModel()
        self._items = list(items)
        self._subtitle = [self._sub(a) for a in self._items]
        self.endResetModel()

    def items(self) -> list[Any]:
        return list(self._items)

    @staticmethod
    def _sub(a: Any) -> str:
        parts = []
        if a.base_model:
            parts.append(f"for {a.base_model}")
        if a.pipeline_tag:
            parts.append(a.pipeline_tag)
        if a.downloads is not None:
            parts.append(f"{a.downloads} downloads")
        if a.last_modified:
            parts.append(str(a.last_modified)[:10])
        if a.private:
            parts.append("private")
        return " · ".join(parts)

    def rowCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not (0 <= index.row() < len(self._items)):
            return None
        a = self._items[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, NameRole):
            return a.id
        if role == RecordRole:
            return a
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._subtitle[index.row()]
        if role == CardDelegate.SubtitleRole:
            return self._subtitle[index.row()]
        if role == CardDelegate.TagsRole:
            return [t for t in a.tags if not t.startswith("base_model:")][:6]
        return None


class CardDelegate(QStyledItemDelegate):
    """Paints each search result as a card: id, base and task, tags."""

    SubtitleRole = Qt.ItemDataRole.UserRole + 40
    TagsRole = Qt.ItemDataRole.UserRole + 41
    HEIGHT = 78

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:  # noqa: N802
        return QSize(option.rect.width() or 400, self.HEIGHT)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        p.save()
        r = option.rect.adjusted(4, 4, -4, -4)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QColor(theme.color("highlight") if selected else theme.color("border")))
        p.setBrush(QColor(theme.color("card")))
        p.drawRoundedRect(r, 8, 8)
        icon("adapter").paint(p, QRect(r.left() + 12, r.top() + 12, 22, 22))
        f = QFont(option.font)
        f.setBold(True)
        p.setFont(f)
        p.setPen(QColor(theme.color("text")))
        p.drawText(QRect(r.left() + 44, r.top() + 8, r.width() - 56, 22), Qt.AlignmentFlag.AlignVCenter,
                   index.data(Qt.ItemDataRole.DisplayRole))
        p.setFont(option.font)
        p.setPen(QColor(theme.color("muted")))
        p.drawText(QRect(r.left() + 44, r.top() + 30, r.width() - 56, 18), Qt.AlignmentFlag.AlignVCenter,
                   index.data(self.SubtitleRole) or "")
        x = r.left() + 44
        for tag in index.data(self.TagsRole) or []:
            w = option.fontMetrics.horizontalAdvance(tag) + 14
            if x + w > r.right() - 8:
                break
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(theme.color("alt")))
            p.drawRoundedRect(QRect(x, r.top() + 50, w, 18), 9, 9)
            p.setPen(QColor(theme.color("muted")))
            p.drawText(QRect(x, r.top() + 50, w, 18), Qt.AlignmentFlag.AlignCenter, tag)
            x += w + 6
        p.restore()


# -- the push dialog -----------------------------------------------------------------------------------
class PushDialog(QDialog):
    """Choose the adapter and repository, review the generated card, then push."""

    def __init__(self, page: SharePage, adapters: list[str], adapter: str | None = None) -> None:
        super().__init__(page)
        self.page = page
        self.setWindowTitle("Push an adapter")
        self.resize(720, 620)
        v = QVBoxLayout(self)
        f = QFormLayout()
        self.adapter = QComboBox()
        self.adapter.addItems(adapters)
        if adapter:
            self.adapter.setCurrentText(adapter)
        f.addRow("Adapter", self.adapter)
        self.repo = QLineEdit()
        self.repo.setPlaceholderText("owner/name")
        user = page.auth_user()
        if user and self.adapter.currentText():
            self.repo.setText(f"{user}/{self.adapter.currentText()}")
        f.addRow("Repository", self.repo)
        self.private = QCheckBox("Private repository")
        f.addRow("", self.private)
        v.addLayout(f)
        v.addWidget(muted("This model card is generated from the adapter's record and lineage and uploaded with it "
                          "(README.md). Check it before pushing."))
        self.tabs = QTabWidget()
        self.rendered = QTextBrowser()
        self.raw = QPlainTextEdit()
        self.raw.setReadOnly(True)
        self.tabs.addTab(self.rendered, "Card")
        self.tabs.addTab(self.raw, "README.md")
        v.addWidget(self.tabs, 1)
        self.status = muted("")
        v.addWidget(self.status)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.push_btn = primary(QPushButton(icon("upload", "#ffffff"), "Push"))
        self.buttons.addButton(self.push_btn, QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.rejected.connect(self.reject)
        self.push_btn.clicked.connect(self.accept)
        v.addWidget(self.buttons)
        self.card_text = ""
        self.adapter.currentTextChanged.connect(lambda _t: self.refresh_card())
        self.repo.editingFinished.connect(self.refresh_card)
        self.refresh_card()

    def refresh_card(self) -> Worker | None:
        name = self.adapter.currentText()
        if not name or self.page.session.lib is None:
            return None
        self.status.setText("Generating the card…")
        self.push_btn.setEnabled(False)
        return self.page.session.run(t_card, name, self.repo.text().strip(), label="generate card",
                                     on_result=self._card, on_error=self._card_failed)

    def _card(self, res: dict[str, Any]) -> None:
        self.card_text = res["card"]
        self.raw.setPlainText(res["card"])
        body = res["card"]
        if body.startswith("---"):
            end = body.find("\n---", 3)
            body = body[end + 4:] if end != -1 else body
        self.rendered.setMarkdown(body)
        self.status.setText(f"base_model: {res['base_model']}")
        self.push_btn.setEnabled(True)

    def _card_failed(self, exc: BaseException) -> None:
        self.card_text = ""
        self.status.setText(f"<span style='color:{theme.color('bad')}'>{exc}</span>")
        self.push_btn.setEnabled(False)


# -- the page -----------------------------------------------------------------------------------------
class SharePage(QWidget):
    providers_loaded = Signal()
    searched = Signal(list)
    pulled = Signal(dict)
    pushed = Signal(dict)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        lay = QVBoxLayout(self)
        if not hub_available():
            self.available = False
            lay.addWidget(PagePlaceholder("Share", "This page appears once the sharing service is part of this build.",
                                          "share"))
            return
        self.available = True
        self.auth: Any = None
        lay.setContentsMargins(24, 20, 24, 12)
        head = QHBoxLayout()
        head.addWidget(title_label("Share"))
        head.addSpacing(16)
        head.addWidget(muted("Provider", wrap=False))
        self.provider = QComboBox()
        self.provider.setMinimumWidth(160)
        self.provider.currentIndexChanged.connect(lambda _i: self.refresh_auth())
        head.addWidget(self.provider)
        self.auth_label = muted("", wrap=False)
        self.auth_label.setTextFormat(Qt.TextFormat.RichText)
        head.addWidget(self.auth_label)
        head.addStretch(1)
        self.login_btn = QPushButton(icon("user"), "Log in…")
        self.login_btn.clicked.connect(self._ask_login)
        head.addWidget(self.login_btn)
        self.logout_btn = QPushButton("Log out")
        self.logout_btn.clicked.connect(self.logout)
        head.addWidget(self.logout_btn)
        self.push_btn = primary(QPushButton(icon("upload", "#ffffff"), "Push adapter…"))
        self.push_btn.clicked.connect(lambda: self.open_push_dialog())
        head.addWidget(self.push_btn)
        lay.addLayout(head)

        row = QHBoxLayout()
        self.query = QLineEdit()
        self.query.setPlaceholderText("Search adapters…")
        self.query.setClearButtonEnabled(True)
        self.query.addAction(icon("search"), QLineEdit.ActionPosition.LeadingPosition)
        self.query.returnPressed.connect(self.search)
        row.addWidget(self.query, 1)
        row.addWidget(muted("for base", wrap=False))
        self.base = QComboBox()
        self.base.setMinimumWidth(180)
        row.addWidget(self.base)
        self.search_btn = QPushButton(icon("search"), "Search")
        self.search_btn.clicked.connect(self.search)
        row.addWidget(self.search_btn)
        lay.addLayout(row)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.results_model = RemoteAdapterModel(self)
        self.results = QListView()
        self.results.setModel(self.results_model)
        self.results.setItemDelegate(CardDelegate(self.results))
        self.results.setUniformItemSizes(True)
        self.results.setSpacing(2)
        self.results.selectionModel().currentChanged.connect(lambda cur, _p: self._selected(cur))
        self.results.doubleClicked.connect(lambda _i: self.pull_selected())
        split.addWidget(self.results)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(8, 0, 0, 0)
        self.detail = QTextBrowser()
        self.detail.setPlaceholderText("Select a result to read its card.")
        rv.addWidget(self.detail, 1)
        pr = QHBoxLayout()
        self.pull_name = QLineEdit()
        self.pull_name.setPlaceholderText("name in the library (default: the repo name)")
        pr.addWidget(self.pull_name, 1)
        self.pull_btn = QPushButton(icon("download"), "Pull")
        self.pull_btn.clicked.connect(lambda: self.pull_selected())
        pr.addWidget(self.pull_btn)
        rv.addLayout(pr)
        self.pull_progress = QProgressBar()
        self.pull_progress.setRange(0, 1000)
        self.pull_progress.setVisible(False)
        rv.addWidget(self.pull_progress)
        self.pull_status = muted("")
        rv.addWidget(self.pull_status)
        split.addWidget(right)
        split.setSizes([560, 480])
        lay.addWidget(split, 1)
        self.empty = muted("Search to list the adapters a provider offers; pick a base to see the adapters made for it.")
        lay.addWidget(self.empty)
        self.setEnabled(False)
        session.opened.connect(lambda _lib: self.refresh_providers())
        session.catalogue_changed.connect(self._refresh_bases)
        session.settings_changed.connect(lambda _s: self.refresh_providers())

    # -- providers and login -------------------------------------------------------------------
    def refresh_providers(self) -> Worker | None:
        if self.session.lib is None:
            return None
        self._refresh_bases()
        return self.session.run(t_providers, label="list providers", quiet=True, on_result=self._providers)

    def _providers(self, entries: list[Any]) -> None:
        self.setEnabled(True)
        current = self.provider.currentData()
        self.provider.blockSignals(True)
        self.provider.clear()
        default = self.session.lib.settings.default_hub_provider
        for e in entries:
            label = e.name + ("" if e.ok else (" (disabled)" if e.disabled else " (broken)"))
            self.provider.addItem(label, e.name)
            i = self.provider.count() - 1
            self.provider.setItemData(i, e.error or (f"{e.distribution} {e.version}" if e.distribution else e.value),
                                      Qt.ItemDataRole.ToolTipRole)
            model = self.provider.model()
            if not e.ok and isinstance(model, QStandardItemModel):  # (a combo box's own model)
                model.item(i).setEnabled(False)
        i = self.provider.findData(current or default)
        self.provider.setCurrentIndex(max(0, i))
        self.provider.blockSignals(False)
        self.providers_loaded.emit()
        self.refresh_auth()

    def provider_name(self) -> str:
        return self.provider.currentData() or ""

    def _refresh_bases(self) -> None:
        if self.session.lib is None or not self.available:
            return
        self.session.run(lambda ctx, lib: lib.list_bases(), label="list bases", quiet=True, on_result=self._set_bases)

    def _set_bases(self, bases: list[Any]) -> None:
        current = self.base.currentData()
        self.base.clear()
        self.base.addItem("any base", "")
        for b in bases:
            self.base.addItem(b.name + (f" ({b.hub_id})" if b.hub_id and b.hub_id != b.name else ""), b.name)
        self.base.setCurrentIndex(max(0, self.base.findData(current)))

    def refresh_auth(self) -> Worker | None:
        if not self.provider_name():
            return None
        self.auth_label.setText("checking login…")
        return self.session.run(t_whoami, self.provider_name(), label="login state", quiet=True,
                                on_result=self._auth, on_error=self._auth_failed)

    def _auth(self, status: Any) -> None:
        self.auth = status
        if status.logged_in:
            self.auth_label.setText(f"<span style='color:{theme.color('good')}'>●</span> logged in as "
                                    f"<b>{status.user or '?'}</b>")
        else:
            self.auth_label.setText(f"<span style='color:{theme.color('muted')}'>○</span> not logged in"
                                    + (f" · {status.detail}" if status.detail else ""))
        self.login_btn.setVisible(not status.logged_in)
        self.logout_btn.setVisible(status.logged_in and status.method == "stored")

    def _auth_failed(self, exc: BaseException) -> None:
        self.auth = None
        self.auth_label.setText(f"<span style='color:{theme.color('bad')}'>●</span> {exc}")
        self.login_btn.setVisible(True)
        self.logout_btn.setVisible(False)

    def auth_user(self) -> str | None:
        return self.auth.user if self.auth is not None and self.auth.logged_in else None

    def _ask_login(self) -> None:
        token, ok = QInputDialog.getText(self, "Log in", f"Access token for {self.provider.currentText()}:",
                                         QLineEdit.EchoMode.Password)
        if ok and token.strip():
            self.login(token.strip())

    def login(self, token: str) -> Worker:
        w = self.session.run(t_login, self.provider_name(), token, label="log in", on_result=self._auth)
        del token  # not kept: the provider stores it where its own tools look for it
        return w

    def logout(self) -> Worker:
        return self.session.run(t_logout, self.provider_name(), label="log out", on_result=self._auth)

    # -- search and pull ------------------------------------------------------------------------
    def search(self) -> Worker | None:
        if not self.provider_name():
            return None
        self.empty.setText("Searching…")
        w = self.session.run(t_search, self.provider_name(), self.query.text().strip(), self.base.currentData(),
                             label="search", on_result=self._results)
        w.signals.error.connect(lambda _e: self.empty.setText(""))
        return w

    def _results(self, items: list[Any]) -> None:
        self.results_model.set_items(items)
        self.empty.setText(f"{len(items)} adapters found." if items else "No adapters match.")
        if items:
            self.results.setCurrentIndex(self.results_model.index(0, 0))
        self.searched.emit(items)

    def _selected(self, index: QModelIndex) -> Worker | None:
        a = index.data(RecordRole)
        if a is None:
            return None
        self.detail.setHtml(f"<h3>{a.id}</h3><p style='color:{theme.color('muted')}'>Loading the card…</p>")
        return self.session.run(t_show, self.provider_name(), a.id, label="read card", quiet=True,
                                on_result=self._shown, on_error=lambda exc: self.detail.setPlainText(str(exc)))

    def _shown(self, detail: Any) -> None:
        card = detail.card or ""
        if card.startswith("---"):
            end = card.find("\n---", 3)
            card = card[end + 4:] if end != -1 else card
        files = "".join(f"<li>{f.path} ({f.size or 0:,} bytes)</li>" for f in detail.files[:30])
        self.detail.setMarkdown(card or f"# {detail.adapter.id}\n\n(no model card)")
        self.detail.append(f"<h4>Files</h4><ul>{files}</ul>")

    def selected_remote(self) -> Any | None:
        idx = self.results.currentIndex()
        return idx.data(RecordRole) if idx.isValid() else None

    def pull_selected(self) -> Worker | None:
        a = self.selected_remote()
        if a is None:
            return None
        return self.pull(a.id, self.pull_name.text().strip() or None)

    def pull(self, repo_id: str, name: str | None = None) -> Worker:
        self.pull_progress.setValue(0)
        self.pull_progress.setVisible(True)
        self.pull_status.setText(f"Pulling {repo_id}…")
        w = self.session.run(t_pull, self.provider_name(), repo_id, name, label=f"pull {repo_id}", changes=True,
                             on_progress=self._pull_progress)
        w.signals.result.connect(self._pulled)
        w.signals.error.connect(lambda _e: self._transfer_ended(""))
        w.signals.cancelled.connect(lambda: self._transfer_ended("Cancelled."))
        return w

    def _transfer_ended(self, status: str) -> None:
        """A pull or push that did not finish: hide its progress and say *status*."""
        self.pull_progress.setVisible(False)
        self.pull_status.setText(status)

    def _pull_progress(self, done: float, total: float | None, message: str) -> None:
        if total:
            self.pull_progress.setValue(int(1000 * min(1.0, done / total)))
        if message:
            self.pull_status.setText(message[:100])

    def _pulled(self, res: dict[str, Any]) -> None:
        self.pull_progress.setValue(1000)
        text = f"Pulled as {res['adapter']}" + (f" (revision {str(res.get('revision'))[:10]})" if res.get("revision") else "")
        if res.get("hint"):
            text += f". {res['hint']}"
        self.pull_status.setText(text)
        self.pulled.emit(res)

    # -- push -------------------------------------------------------------------------------------
    def open_push_dialog(self, adapter: str | None = None, exec_: bool = True) -> PushDialog | None:
        if self.session.lib is None:
            return None
        dlg = PushDialog(self, self._adapter_names(), adapter)
        if not exec_:
            return dlg
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.push(dlg.adapter.currentText(), dlg.repo.text().strip(), dlg.private.isChecked())
        return dlg

    def _adapter_names(self) -> list[str]:
        """The adapters the Library page last listed (no catalogue query on the GUI thread)."""
        lib_page = getattr(self.window(), "pages", {}).get("library")  # (the main window's pages)
        if lib_page is not None:
            return [a.name for a in lib_page.snapshot["adapters"]]
        return []

    def push(self, adapter: str, repo_id: str, private: bool = False) -> Worker:
        self.pull_status.setText(f"Pushing {adapter} to {repo_id}…")
        self.pull_progress.setVisible(True)
        self.pull_progress.setValue(0)
        w = self.session.run(t_push, self.provider_name(), adapter, repo_id, private, label=f"push {adapter}",
                             on_progress=self._pull_progress)
        w.signals.result.connect(self._pushed)
        w.signals.error.connect(lambda _e: self._transfer_ended(""))
        return w

    def _pushed(self, res: dict[str, Any]) -> None:
        self.pull_progress.setValue(1000)
        self.pull_status.setText(f"Pushed {res['adapter']} to {res.get('id')}" +
                                 (f" ({res['url']})" if res.get("url") else ""))
        self.pushed.emit(res)

    def activated(self) -> None:
        if self.available and self.session.lib is not None and self.provider.count() == 0:
            self.refresh_providers()


__all__ = ["SharePage", "QLabel"]
