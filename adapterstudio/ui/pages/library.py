"""The Library page: bases and adapters with search, filters, a detail pane and every catalogue action.

The detail pane is :mod:`.detail`; the screen shown while the library is empty is :mod:`.first_run`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QDragEnterEvent, QDragLeaveEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableView,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from adapterstudio.ui import errors, tasks
from adapterstudio.ui.icons import icon
from adapterstudio.ui.models import (
    AdapterFilterProxy,
    AdapterTableModel,
    KindRole,
    LibraryTreeModel,
    NameRole,
    task_label,
)
from adapterstudio.ui.pages.detail import DetailPane
from adapterstudio.ui.pages.first_run import FirstRun
from adapterstudio.ui.runner import Worker
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import muted, primary, show_status, title_label, tool_button


class LibraryPage(QWidget):
    """Lists bases and adapters, shows details, and runs every library action through the runner."""

    loaded = Signal()  # after each refresh has filled the models
    imported = Signal(object)  # AdapterRecord
    ALL = "All"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.setAcceptDrops(True)
        self.snapshot: dict[str, Any] = {"bases": [], "adapters": [], "tags": []}
        self._first_run_dismissed = False
        self._focus_after_load: str | None = None

        outer = QVBoxLayout(self)
        outer.setContentsMargins(24, 20, 24, 12)
        top = QHBoxLayout()
        top.addWidget(title_label("Library"))
        top.addSpacing(16)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search names, notes, tags, bases…  (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.addAction(icon("search"), QLineEdit.ActionPosition.LeadingPosition)
        self.search.textChanged.connect(lambda t: self._set_filter(text=t))
        top.addWidget(self.search, 1)
        self.add_base_btn = QPushButton(icon("base"), "Add base")
        self.add_base_btn.clicked.connect(self.show_first_run)
        top.addWidget(self.add_base_btn)
        self.import_btn = primary(QPushButton(icon("import", "#ffffff"), "Import adapter"))
        self.import_btn.setToolTip("Import a PEFT adapter folder (Ctrl+I), or drop it on this page")
        self.import_btn.clicked.connect(self._pick_import)
        top.addWidget(self.import_btn)
        self.refresh_btn = tool_button("refresh", "Refresh", "F5")
        self.refresh_btn.clicked.connect(self.refresh)
        top.addWidget(self.refresh_btn)
        outer.addLayout(top)

        filters = QHBoxLayout()
        filters.setSpacing(8)
        fl = QLabel()
        fl.setPixmap(icon("filter").pixmap(16, 16))
        filters.addWidget(fl)
        self.filter_boxes: dict[str, QComboBox] = {}
        for key, label in (("base", "Base"), ("task", "Task"), ("peft_type", "Type"), ("tag", "Tag")):
            filters.addWidget(muted(label, wrap=False))
            box = QComboBox()
            box.setMinimumWidth(120)
            box.addItem(self.ALL, "")
            box.currentIndexChanged.connect(lambda _i, k=key, b=box: self._set_filter(**{k: b.currentData() or ""}))
            self.filter_boxes[key] = box
            filters.addWidget(box)
        filters.addStretch(1)
        self.count_label = muted("", wrap=False)
        filters.addWidget(self.count_label)
        self.view_group = QButtonGroup(self)
        self.table_btn = QToolButton()
        self.table_btn.setText("Table")
        self.tree_btn = QToolButton()
        self.tree_btn.setText("By base")
        for i, b in enumerate((self.table_btn, self.tree_btn)):
            b.setCheckable(True)
            self.view_group.addButton(b, i)
            filters.addWidget(b)
        self.table_btn.setChecked(True)
        self.view_group.idClicked.connect(self.set_view)
        outer.addLayout(filters)

        # models and views
        self.table_model = AdapterTableModel(self)
        self.table_proxy = AdapterFilterProxy(self)
        self.table_proxy.setSourceModel(self.table_model)
        self.table = QTableView()
        self.table.setModel(self.table_proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(AdapterTableModel.NAME, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(28)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for col, width in enumerate((190, 140, 60, 105, 50, 80, 150, 70, 130)):
            self.table.setColumnWidth(col, width)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _prev: self._selected(cur))

        self.tree_model = LibraryTreeModel(self)
        self.tree_proxy = AdapterFilterProxy(self)
        self.tree_proxy.setSourceModel(self.tree_model)
        self.tree = QTreeView()
        self.tree.setModel(self.tree_proxy)
        self.tree.setSortingEnabled(True)
        self.tree.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setColumnWidth(0, 260)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.tree.selectionModel().currentRowChanged.connect(lambda cur, _prev: self._selected(cur))

        self.views = QStackedWidget()
        self.views.addWidget(self.table)
        self.views.addWidget(self.tree)
        self.detail = DetailPane(session)
        self.detail.adapter.rename_requested.connect(self._ask_rename)
        self.detail.adapter.tags_requested.connect(self._ask_tags)
        self.detail.adapter.export_requested.connect(self._ask_export)
        self.detail.adapter.remove_requested.connect(self._ask_remove)
        self.detail.adapter.use_requested.connect(lambda n: self.session.navigate.emit("playground", n))
        self.detail.base.remove_requested.connect(self._ask_remove_base)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.views)
        self.splitter.addWidget(self.detail)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([640, 460])

        self.drop_overlay = QFrame()
        self.drop_overlay.setObjectName("DropZone")

        self.first_run = FirstRun(self)
        self.body = QStackedWidget()
        self.body.addWidget(self.splitter)
        self.body.addWidget(self.first_run)
        outer.addWidget(self.body, 1)

        self._build_actions()
        session.opened.connect(lambda _lib: self.refresh())
        session.catalogue_changed.connect(self.refresh)
        session.adapter_changed.connect(self._adapter_updated)
        self.setEnabled(False)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(50)
        self._refresh_timer.timeout.connect(self._do_refresh)

    def _build_actions(self) -> None:
        def act(text: str, icon_name: str, slot, shortcut: str | QKeySequence.StandardKey | None = None,
                views: bool = True) -> QAction:
            a = QAction(icon(icon_name), text, self)
            if shortcut is not None:
                a.setShortcut(QKeySequence(shortcut))
                a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            a.triggered.connect(slot)
            self.addAction(a)
            if views:
                self.table.addAction(a)
                self.tree.addAction(a)
            return a

        self.actions_ = {
            "open": act("Open in Playground", "playground", lambda: self._with_selected(
                lambda n: self.session.navigate.emit("playground", n))),
            "rename": act("Rename…", "rename", lambda: self._with_selected(self._ask_rename), "F2"),
            "tags": act("Edit tags…", "tag", lambda: self._with_selected(self._ask_tags), "Ctrl+T"),
            "export": act("Export…", "export", lambda: self._with_selected(self._ask_export), "Ctrl+E"),
            "remove": act("Remove", "remove", lambda: self._with_selected(self._ask_remove), QKeySequence.StandardKey.Delete),
            "import": act("Import adapter…", "import", self._pick_import, "Ctrl+I", views=False),
            "find": act("Search", "search", self._focus_search, "Ctrl+F", views=False),
            "refresh": act("Refresh", "refresh", self.refresh, "F5", views=False),
        }

    # -- loading ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the lists from the catalogue (coalesced; runs on the I/O pool)."""
        if self.session.lib is not None:
            self._refresh_timer.start()

    def _do_refresh(self) -> Worker:
        return self.session.run(tasks.snapshot, label="load library", quiet=True, on_result=self._loaded)

    def _loaded(self, snap: dict[str, Any]) -> None:
        self.setEnabled(True)
        selected = self.selected_name()
        self.snapshot = snap
        self.detail.bases = snap["bases"]
        self.table_model.set_records(snap["adapters"])
        self.tree_model.set_records(snap["bases"], snap["adapters"])
        self.tree.expandAll()
        self._fill_filters(snap)
        self._update_count()
        if not snap["bases"] and not snap["adapters"] and not self._first_run_dismissed:
            self.body.setCurrentWidget(self.first_run)
        else:
            self.body.setCurrentWidget(self.splitter)
        target = self._focus_after_load or selected
        self._focus_after_load = None
        if target:
            self.select(target)
        elif not snap["adapters"]:
            self.detail.clear()
        self.loaded.emit()

    def _fill_filters(self, snap: dict[str, Any]) -> None:
        values = {
            "base": sorted({a.base for a in snap["adapters"] if a.base} | {b.name for b in snap["bases"]}, key=str.lower),
            "task": sorted({a.task_type for a in snap["adapters"] if a.task_type}),
            "peft_type": sorted({a.peft_type for a in snap["adapters"]}),
            "tag": [t for t, _n in snap["tags"]],
        }
        for key, box in self.filter_boxes.items():
            current = box.currentData() or ""
            box.blockSignals(True)
            box.clear()
            box.addItem(self.ALL, "")
            for v in values[key]:
                box.addItem(task_label(v) if key == "task" else v, v)
            i = box.findData(current)
            box.setCurrentIndex(max(0, i))
            box.blockSignals(False)
            if i < 0 and current:
                self._set_filter(**{key: ""})

    def _set_filter(self, **kw: str) -> None:
        self.table_proxy.set_filters(**kw)
        self.tree_proxy.set_filters(**kw)
        self.tree.expandAll()
        self._update_count()

    def set_filters(self, **kw: str) -> None:
        """Set filters programmatically (base/task/peft_type/tag by value, text by string)."""
        if "text" in kw:
            self.search.setText(kw.pop("text"))
        for key, value in kw.items():
            box = self.filter_boxes[key]
            box.setCurrentIndex(max(0, box.findData(value)))

    def _update_count(self) -> None:
        n, total = self.table_proxy.rowCount(), self.table_model.rowCount()
        nb = len(self.snapshot["bases"])
        self.count_label.setText(f"{n} of {total} adapters · {nb} base{'' if nb == 1 else 's'}" if n != total else f"{total} adapters · {nb} base{'' if nb == 1 else 's'}")

    def set_view(self, which: int) -> None:
        self.views.setCurrentIndex(which)
        (self.table_btn if which == 0 else self.tree_btn).setChecked(True)

    # -- selection ---------------------------------------------------------------------
    def _current_view(self) -> QAbstractItemView:
        return self.table if self.views.currentIndex() == 0 else self.tree

    def _selected(self, index) -> None:
        if not index.isValid():
            return
        kind = index.data(KindRole)
        name = index.sibling(index.row(), 0).data(NameRole)
        if kind == "adapter":
            self.detail.show_adapter(name)
        elif kind == "base":
            self.detail.show_base(name)

    def selected_name(self) -> str | None:
        idx = self._current_view().currentIndex()
        if not idx.isValid():
            return None
        if idx.data(KindRole) != "adapter":
            return None
        return idx.data(NameRole)

    def select(self, name: str) -> bool:
        """Select an adapter by name in the visible view (clearing filters if they hide it)."""
        if self.table_model.row_of(name) < 0:
            return False
        src = self.table_model.index(self.table_model.row_of(name), 0)
        if not self.table_proxy.mapFromSource(src).isValid():
            self.set_filters(text="", base="", task="", peft_type="", tag="")
        if self.views.currentIndex() == 0:
            idx = self.table_proxy.mapFromSource(src)
            self.table.selectionModel().setCurrentIndex(
                idx, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
            self.table.scrollTo(idx)
        else:
            for r in range(self.tree_proxy.rowCount()):
                parent = self.tree_proxy.index(r, 0)
                for c in range(self.tree_proxy.rowCount(parent)):
                    idx = self.tree_proxy.index(c, 0, parent)
                    if idx.data(NameRole) == name:
                        self.tree.selectionModel().setCurrentIndex(
                            idx, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
                        self.tree.scrollTo(idx)
        return True

    def focus_item(self, name: Any) -> None:
        if isinstance(name, str) and not self.select(name):
            self._focus_after_load = name

    def _focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def _with_selected(self, fn) -> None:
        name = self.selected_name()
        if name:
            fn(name)

    def _adapter_updated(self, rec) -> None:
        self.table_model.update_record(rec)

    # -- first run -----------------------------------------------------------------------
    def show_first_run(self) -> None:
        self.body.setCurrentWidget(self.first_run)

    def dismiss_first_run(self) -> None:
        self._first_run_dismissed = True
        self.body.setCurrentWidget(self.splitter)

    # -- actions (each one service call through the runner) --------------------------------
    def add_base(self, source: str, name: str | None = None, **kwargs: Any) -> Worker:
        self.first_run.status.setText(f"Adding {source}…")
        w = self.session.run(tasks.add_base, source, name, label=f"add base {Path(source).name or source}",
                             changes=True, **kwargs)
        w.signals.result.connect(lambda b: self._base_added(b))
        w.signals.error.connect(lambda _e: self.first_run.status.setText(""))
        return w

    def _base_added(self, base) -> None:
        self.first_run.status.setText(f"Added {base.name}.")
        self._first_run_dismissed = True
        self.body.setCurrentWidget(self.splitter)

    def scan_cache(self, cache_dir: str | None = None) -> Worker:
        self.first_run.status.setText("Scanning the Hugging Face cache…")
        w = self.session.run(tasks.scan_hf_cache, cache_dir, label="scan HF cache", changes=True)
        w.signals.result.connect(self._scanned)
        return w

    def _scanned(self, res: dict[str, list]) -> None:
        added, skipped = res["added"], res["skipped"]
        text = f"Found {len(added)} new models" + (f", skipped {len(skipped)}" if skipped else "") + "."
        if not added and not skipped:
            text = "No models with safetensors weights were found in the Hugging Face cache."
        self.first_run.status.setText(text)
        if added:
            self._first_run_dismissed = True

    def import_paths(self, paths: list[str], **kwargs: Any) -> list[Worker]:
        workers = []
        for p in paths:
            w = self.session.run(tasks.import_adapter, p, label=f"import {Path(p).name}", changes=True, **kwargs)
            w.signals.result.connect(self._imported)
            workers.append(w)
        return workers

    def _imported(self, rec) -> None:
        self._first_run_dismissed = True
        self._focus_after_load = rec.name
        self.imported.emit(rec)

    def _pick_import(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Import a PEFT adapter folder", os.path.expanduser("~"))
        if d:
            self.import_paths([d])

    def rename(self, name: str, new_name: str) -> Worker:
        self._focus_after_load = new_name
        return self.session.run(tasks.rename_adapter, name, new_name, label="rename", changes=True)

    def set_tags(self, name: str, tags: list[str]) -> Worker:
        rec = next((a for a in self.snapshot["adapters"] if a.name == name), None)
        old = set(rec.tags) if rec else set()
        new = {t.strip() for t in tags if t.strip()}
        self._focus_after_load = name
        return self.session.run(tasks.tag_adapter, name, sorted(new - old), sorted(old - new), label="tag", changes=True)

    def remove(self, name: str) -> Worker:
        self.detail.clear()
        return self.session.run(tasks.remove_adapter, name, label=f"remove {name}", changes=True)

    def remove_base(self, name: str) -> Worker:
        self.detail.clear()
        return self.session.run(tasks.remove_base, name, label=f"remove base {name}", changes=True)

    def export(self, name: str, dest: str) -> Worker:
        w = self.session.run(tasks.export_adapter, name, dest, label=f"export {name}")
        w.signals.result.connect(lambda p: show_status(self, f"Exported to {p}", 8000))
        return w

    # dialogs in front of the actions
    def _ask_rename(self, name: str) -> None:
        new, ok = QInputDialog.getText(self, "Rename adapter", f"New name for {name}:", text=name)
        if ok and new.strip() and new.strip() != name:
            self.rename(name, new.strip())

    def _ask_tags(self, name: str) -> None:
        rec = next((a for a in self.snapshot["adapters"] if a.name == name), None)
        current = ", ".join(rec.tags) if rec else ""
        text, ok = QInputDialog.getText(self, "Tags", f"Tags for {name}, separated by commas:", text=current)
        if ok:
            self.set_tags(name, [t for t in text.split(",")])

    def _ask_export(self, name: str) -> None:
        d = QFileDialog.getExistingDirectory(self, f"Export {name} into a new or empty folder", os.path.expanduser("~"))
        if d:
            self.export(name, d)

    def _ask_remove(self, name: str) -> None:
        if QMessageBox.question(self, "Remove adapter", f"Remove {name} from the library? Its stored files are "
                                "deleted unless another adapter shares them.") == QMessageBox.StandardButton.Yes:
            self.remove(name)

    def _ask_remove_base(self, name: str) -> None:
        if QMessageBox.question(self, "Forget base", f"Forget the base {name}? Its files are not touched; its "
                                "adapters stay, marked as missing their base.") == QMessageBox.StandardButton.Yes:
            self.remove_base(name)

    # -- drag and drop -----------------------------------------------------------------
    @staticmethod
    def _local_paths(event) -> list[str]:
        md = event.mimeData()
        if not md.hasUrls():
            return []
        return [u.toLocalFile() for u in md.urls() if u.isLocalFile()]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if self._local_paths(event):
            event.acceptProposedAction()
            show_status(self, "Drop to import the adapter", 3000)
        else:
            event.ignore()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:  # noqa: N802
        event.accept()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        paths = self._local_paths(event)
        if paths:
            event.acceptProposedAction()
            self.import_paths(paths)

    # -- window state ----------------------------------------------------------------------
    def save_state(self) -> QByteArray:
        return self.splitter.saveState()

    def restore_state(self, data: QByteArray) -> None:
        self.splitter.restoreState(data)

    def retheme(self) -> None:
        self.detail.adapter.plot.retheme()
        self.table.viewport().update()
        self.tree.viewport().update()


__all__ = ["LibraryPage", "errors"]
