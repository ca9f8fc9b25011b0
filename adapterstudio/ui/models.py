"""Thin Qt item models over catalogue records.

They adapt, they do not own: each holds the list of records the catalogue last handed
out (loaded off the GUI thread) plus precomputed display strings, so ``data()`` is a
tuple lookup. Named role constants give views and tests the raw values.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QAbstractListModel,
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor

from adapterstudio.core.fmt import human_size as _human_size
from adapterstudio.core.records import AdapterRecord, BaseRecord

Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()

# -- role constants --------------------------------------------------------------------------
RecordRole = Qt.ItemDataRole.UserRole + 1  # the AdapterRecord / BaseRecord (None for a group row)
NameRole = Qt.ItemDataRole.UserRole + 2  # catalogue name
KindRole = Qt.ItemDataRole.UserRole + 3  # "base" | "adapter" | "group"
SortRole = Qt.ItemDataRole.UserRole + 4  # a value that sorts naturally (numbers as numbers)
TagsRole = Qt.ItemDataRole.UserRole + 5  # list[str]
BaseNameRole = Qt.ItemDataRole.UserRole + 6  # the adapter's base name ("" when missing)
TaskRole = Qt.ItemDataRole.UserRole + 7  # task type ("" when unknown)
PeftTypeRole = Qt.ItemDataRole.UserRole + 8  # PEFT type


def human_size(n: int | None) -> str:
    return _human_size(n, missing="–")


def human_count(n: int | None) -> str:
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def human_time(ts: float | None) -> str:
    if not ts:
        return "–"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def task_label(task: str | None) -> str:
    return {
        "SEQ_CLS": "classification", "CAUSAL_LM": "causal LM", "TOKEN_CLS": "token classification",
        "SEQ_2_SEQ_LM": "seq2seq LM", "FEATURE_EXTRACTION": "features", "QUESTION_ANS": "question answering",
    }.get(task or "", (task or "–").lower())


_icons: dict[str, Any] = {}


def _icon(name: str):
    # Resolved lazily (and cached) so data() stays a lookup.
    if name not in _icons:
        from adapterstudio.ui.icons import icon

        _icons[name] = icon(name)
    return _icons[name]


def reset_icon_cache() -> None:
    _icons.clear()


# -- adapters as a table -------------------------------------------------------------------
class RowTableModel(QAbstractTableModel):
    """A flat table over a Python list of rows: ``COLUMNS`` names the columns and
    ``_rows`` (a list the subclass fills) holds one item per row."""

    COLUMNS: tuple[str, ...] = ()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Any] = []

    def rowCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(self.COLUMNS):
            return self.COLUMNS[section]
        return None

    def _row_index_ok(self, index: Index) -> bool:
        return index.isValid() and 0 <= index.row() < len(self._rows)


ADAPTER_ROLES = (TagsRole, BaseNameRole, TaskRole, PeftTypeRole)


def adapter_role(rec: AdapterRecord, role: int) -> Any:
    """The filter roles of an adapter row (the table and the tree answer them alike)."""
    if role == TagsRole:
        return list(rec.tags)
    if role == BaseNameRole:
        return rec.base or ""
    if role == TaskRole:
        return rec.task_type or ""
    return rec.peft_type


class AdapterTableModel(RowTableModel):
    COLUMNS = ("Name", "Base", "Type", "Task", "Rank", "Size", "Tags", "Source", "Created")
    NAME, BASE, TYPE, TASK, RANK, SIZE, TAGS, SOURCE, CREATED = range(9)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._rows: list[AdapterRecord] = []
        self._display: list[tuple[str, ...]] = []
        self._sort: list[tuple[Any, ...]] = []

    # content
    def set_records(self, records: Sequence[AdapterRecord]) -> None:
        self.beginResetModel()
        self._rows = list(records)
        self._display = [self._display_row(r) for r in self._rows]
        self._sort = [self._sort_row(r) for r in self._rows]
        self.endResetModel()

    def update_record(self, rec: AdapterRecord) -> None:
        """Replace the record with the same id (after rename, tag, notes)."""
        for i, r in enumerate(self._rows):
            if r.id == rec.id:
                self._rows[i] = rec
                self._display[i] = self._display_row(rec)
                self._sort[i] = self._sort_row(rec)
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(self.COLUMNS) - 1))
                return

    def records(self) -> list[AdapterRecord]:
        return list(self._rows)

    def row_of(self, name: str) -> int:
        for i, r in enumerate(self._rows):
            if r.name.lower() == name.lower():
                return i
        return -1

    @staticmethod
    def _display_row(r: AdapterRecord) -> tuple[str, ...]:
        return (r.name, r.base or f"{r.base_ref or '?'} (missing)", r.peft_type, task_label(r.task_type),
                "–" if r.rank is None else str(r.rank), human_size(r.size_bytes), ", ".join(r.tags),
                r.source, human_time(r.created_at))

    @staticmethod
    def _sort_row(r: AdapterRecord) -> tuple[Any, ...]:
        return (r.name.lower(), (r.base or "~").lower(), r.peft_type, r.task_type or "", r.rank or 0,
                r.size_bytes, ", ".join(r.tags).lower(), r.source, r.created_at)

    # Qt interface (rowCount, columnCount, headerData: RowTableModel)
    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not (0 <= index.row() < len(self._rows)):
            return None
        row, col = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[row][col]
        rec = self._rows[row]
        if role == SortRole:
            return self._sort[row][col]
        if role == RecordRole:
            return rec
        if role == NameRole:
            return rec.name
        if role == KindRole:
            return "adapter"
        if role in ADAPTER_ROLES:
            return adapter_role(rec, role)
        if role == Qt.ItemDataRole.DecorationRole and col == self.NAME:
            return _icon("adapter")
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == self.BASE:
                if rec.base is None:
                    return f"The base it names ({rec.base_ref}) is not in the catalogue."
                if rec.compatible is False:
                    return f"Incompatible: {rec.compat_reason}"
                return rec.compat_reason or "Fits this base."
            if col == self.NAME and rec.notes:
                return rec.notes
        if role == Qt.ItemDataRole.ForegroundRole and col == self.BASE and (rec.base is None or rec.compatible is False):
            return QColor("#d0403a")
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (self.RANK, self.SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


# -- bases and their adapters as a tree -------------------------------------------------------
MISSING_GROUP = "Base not in catalogue"


class LibraryTreeModel(QAbstractItemModel):
    """Bases at the top level, each with its adapters; orphans under a group row.

    An index's internalId is 0 for a top-level row and ``parent row + 1`` for a child,
    so no Python objects are kept behind Qt's back.
    """

    COLUMNS = ("Name", "Details", "Size")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._tops: list[BaseRecord | None] = []  # None: the "missing base" group
        self._children: list[list[AdapterRecord]] = []
        self._top_display: list[tuple[str, str, str]] = []
        self._child_display: list[list[tuple[str, str, str]]] = []

    def set_records(self, bases: Sequence[BaseRecord], adapters: Sequence[AdapterRecord]) -> None:
        self.beginResetModel()
        by_base: dict[str, list[AdapterRecord]] = {b.name.lower(): [] for b in bases}
        orphans: list[AdapterRecord] = []
        for a in adapters:
            if a.base and a.base.lower() in by_base:
                by_base[a.base.lower()].append(a)
            else:
                orphans.append(a)
        self._tops = list(bases)
        self._children = [by_base[b.name.lower()] for b in bases]
        if orphans:
            self._tops.append(None)
            self._children.append(orphans)
        self._top_display = []
        for b, kids in zip(self._tops, self._children, strict=True):
            if b is None:
                self._top_display.append((MISSING_GROUP, f"{len(kids)} adapters", ""))
            else:
                details = " · ".join(x for x in (b.architecture or b.model_type or b.source,
                                                  human_count(b.num_parameters) + " params" if b.num_parameters else "",
                                                  f"{len(kids)} adapters") if x)
                if not b.available:
                    details += " · not available"
                self._top_display.append((b.name, details, human_size(b.size_bytes)))
        self._child_display = [[(a.name, f"{a.peft_type} · {task_label(a.task_type)}" + (f" · r={a.rank}" if a.rank else ""),
                                 human_size(a.size_bytes)) for a in kids] for kids in self._children]
        self.endResetModel()

    def _is_child(self, index: Index) -> bool:
        return index.internalId() != 0

    def index(self, row: int, column: int, parent: Index = _ROOT) -> QModelIndex:
        if column < 0 or column >= len(self.COLUMNS) or row < 0:
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0) if row < len(self._tops) else QModelIndex()
        if self._is_child(parent) or parent.row() >= len(self._tops):
            return QModelIndex()
        if row >= len(self._children[parent.row()]):
            return QModelIndex()
        return self.createIndex(row, column, parent.row() + 1)

    # the stubs type QObject.parent() and QAbstractItemModel.parent(index) as one method; Qt has both
    def parent(self, index: Index = _ROOT) -> QModelIndex:  # type: ignore[override]
        if not index.isValid() or not self._is_child(index):
            return QModelIndex()
        return self.createIndex(int(index.internalId()) - 1, 0, 0)

    def rowCount(self, parent: Index = _ROOT) -> int:
        if not parent.isValid():
            return len(self._tops)
        if self._is_child(parent) or parent.column() != 0:
            return 0
        return len(self._children[parent.row()]) if parent.row() < len(self._children) else 0

    def columnCount(self, parent: Index = _ROOT) -> int:
        return len(self.COLUMNS)

    def hasChildren(self, parent: Index = _ROOT) -> bool:
        return self.rowCount(parent) > 0

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(self.COLUMNS):
            return self.COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        col = index.column()
        if self._is_child(index):
            top = int(index.internalId()) - 1
            rec: Any = self._children[top][index.row()]
            display = self._child_display[top][index.row()]
            kind = "adapter"
        else:
            rec = self._tops[index.row()]
            display = self._top_display[index.row()]
            kind = "group" if rec is None else "base"
        if role == Qt.ItemDataRole.DisplayRole:
            return display[col]
        if role == SortRole:
            if col == 2:
                return (rec.size_bytes or 0) if rec is not None else 0
            return display[col].lower()
        if role == RecordRole:
            return rec
        if role == KindRole:
            return kind
        if role == NameRole:
            return "" if rec is None else rec.name
        if kind == "adapter" and role in ADAPTER_ROLES:
            return adapter_role(rec, role)
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return _icon({"adapter": "adapter", "base": "base", "group": "warning"}[kind])
        if role == Qt.ItemDataRole.ToolTipRole and kind == "base" and col == 0:
            return rec.path or rec.hub_id or ""
        if role == Qt.ItemDataRole.ForegroundRole and kind == "base" and not rec.available:
            return QColor("#8a8fa3")
        return None


# -- bases as a list (pickers) ------------------------------------------------------------------
class BaseListModel(QAbstractListModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._records: list[BaseRecord] = []
        self._display: list[str] = []

    def set_records(self, bases: Sequence[BaseRecord]) -> None:
        self.beginResetModel()
        self._records = list(bases)
        self._display = [b.name + ("" if b.available else " (not downloaded)") for b in self._records]
        self.endResetModel()

    def records(self) -> list[BaseRecord]:
        return list(self._records)

    def row_of(self, name: str) -> int:
        for i, b in enumerate(self._records):
            if b.name == name:
                return i
        return -1

    def rowCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._records)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not (0 <= index.row() < len(self._records)):
            return None
        b = self._records[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display[index.row()]
        if role == RecordRole:
            return b
        if role == NameRole:
            return b.name
        if role == KindRole:
            return "base"
        if role == SortRole:
            return b.name.lower()
        if role == Qt.ItemDataRole.DecorationRole:
            return _icon("base")
        if role == Qt.ItemDataRole.ToolTipRole:
            return " · ".join(x for x in (b.architecture, human_count(b.num_parameters) + " params", b.path or b.hub_id) if x)
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        b = self._records[index.row()]
        f = Qt.ItemFlag.ItemIsSelectable
        if b.available:
            f |= Qt.ItemFlag.ItemIsEnabled
        return f


# -- search and filters ---------------------------------------------------------------------------
class AdapterFilterProxy(QSortFilterProxyModel):
    """Search text plus base / task / PEFT type / tag filters, over the table or the tree."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = ""
        self.base = ""
        self.task = ""
        self.peft_type = ""
        self.tag = ""
        self.setSortRole(SortRole)
        self.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(False)

    def set_filters(self, *, text: str | None = None, base: str | None = None, task: str | None = None,
                    peft_type: str | None = None, tag: str | None = None) -> None:
        staged = hasattr(self, "beginFilterChange")  # Qt >= 6.9; invalidateFilter() is deprecated there
        if staged:
            self.beginFilterChange()
        if text is not None:
            self.text = text.strip().lower()
        if base is not None:
            self.base = base
        if task is not None:
            self.task = task
        if peft_type is not None:
            self.peft_type = peft_type
        if tag is not None:
            self.tag = tag
        if staged:
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.invalidateFilter()

    def _adapter_filters(self) -> bool:
        return bool(self.base or self.task or self.peft_type or self.tag)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        m = self.sourceModel()
        idx = m.index(source_row, 0, source_parent)
        kind = m.data(idx, KindRole)
        name = (m.data(idx, NameRole) or "").lower()
        if kind != "adapter":
            # A base (or group) row shows by itself only when no adapter filter is set;
            # otherwise it shows because one of its adapters matches (recursive filtering).
            if self._adapter_filters():
                return False
            return not self.text or self.text in name
        if self.base and (m.data(idx, BaseNameRole) or "") != self.base:
            return False
        if self.task and (m.data(idx, TaskRole) or "") != self.task:
            return False
        if self.peft_type and m.data(idx, PeftTypeRole) != self.peft_type:
            return False
        tags = [t.lower() for t in (m.data(idx, TagsRole) or [])]
        if self.tag and self.tag.lower() not in tags:
            return False
        if self.text:
            rec = m.data(idx, RecordRole)
            hay = [name, (m.data(idx, BaseNameRole) or "").lower(), *tags]
            if rec is not None:
                hay += [(rec.notes or "").lower(), (rec.base_ref or "").lower()]
            return any(self.text in h for h in hay)
        return True
