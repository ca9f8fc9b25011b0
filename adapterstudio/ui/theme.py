"""Light and dark themes (Fusion style with our palettes) and "system", which follows the OS."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#6d5dfc"

_COLORS = {
    "light": {
        "window": "#f4f5f8", "base": "#ffffff", "alt": "#f7f7fb", "text": "#1d2030", "muted": "#6b7085",
        "button": "#ffffff", "border": "#d9dbe5", "sidebar": "#eceef4", "highlight": ACCENT,
        "highlight_text": "#ffffff", "card": "#ffffff", "link": "#4b3fd9", "good": "#1e9e5a", "bad": "#d0403a",
    },
    "dark": {
        "window": "#1c1e26", "base": "#23252f", "alt": "#282b36", "text": "#e6e7ee", "muted": "#9a9db0",
        "button": "#2b2e3a", "border": "#383b4a", "sidebar": "#16171d", "highlight": "#7c6dff",
        "highlight_text": "#ffffff", "card": "#262833", "link": "#a79dff", "good": "#4cc38a", "bad": "#ff6b61",
    },
}

_current = "light"


def resolve(name: str) -> str:
    """'light' or 'dark' for a setting value of light, dark or system."""
    if name in ("light", "dark"):
        return name
    if not isinstance(QApplication.instance(), QApplication):
        return "light"
    try:
        if QApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark:
            return "dark"
    except AttributeError:  # Qt before 6.5 has no colour scheme hint
        pass
    return "light"


def current() -> str:
    return _current


def color(key: str) -> str:
    return _COLORS[_current][key]


def apply(app: QApplication, name: str = "system") -> str:
    """Apply a theme; returns the resolved 'light' or 'dark'."""
    global _current
    _current = resolve(name)
    c = _COLORS[_current]
    app.setStyle("Fusion")
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: c["window"], QPalette.ColorRole.WindowText: c["text"],
        QPalette.ColorRole.Base: c["base"], QPalette.ColorRole.AlternateBase: c["alt"],
        QPalette.ColorRole.ToolTipBase: c["card"], QPalette.ColorRole.ToolTipText: c["text"],
        QPalette.ColorRole.Text: c["text"], QPalette.ColorRole.Button: c["button"],
        QPalette.ColorRole.ButtonText: c["text"], QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: c["highlight"], QPalette.ColorRole.HighlightedText: c["highlight_text"],
        QPalette.ColorRole.Link: c["link"], QPalette.ColorRole.PlaceholderText: c["muted"],
        QPalette.ColorRole.Mid: c["border"], QPalette.ColorRole.Midlight: c["alt"],
    }
    for role, value in roles.items():
        pal.setColor(role, QColor(value))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(c["muted"]))
    app.setPalette(pal)
    app.setStyleSheet(stylesheet(c))
    from adapterstudio.ui import icons

    icons.clear_cache()
    return _current


def stylesheet(c: dict[str, str]) -> str:
    return f"""
    QWidget#Sidebar {{ background: {c['sidebar']}; border-right: 1px solid {c['border']}; }}
    QListWidget#SidebarList {{ background: transparent; border: none; outline: 0; font-size: 13px; }}
    QListWidget#SidebarList::item {{ padding: 9px 12px; margin: 2px 8px; border-radius: 8px; color: {c['text']}; }}
    QListWidget#SidebarList::item:selected {{ background: {c['highlight']}; color: {c['highlight_text']}; }}
    QListWidget#SidebarList::item:hover:!selected {{ background: {c['alt']}; }}
    QLabel#AppTitle {{ font-size: 15px; font-weight: 600; color: {c['text']}; }}
    QLabel#PageTitle {{ font-size: 20px; font-weight: 600; }}
    QLabel#Muted, QLabel[muted="true"] {{ color: {c['muted']}; }}
    QFrame#Card {{ background: {c['card']}; border: 1px solid {c['border']}; border-radius: 10px; }}
    QFrame#DropZone {{ border: 2px dashed {c['border']}; border-radius: 12px; }}
    QFrame#DropZone[active="true"] {{ border-color: {c['highlight']}; background: {c['alt']}; }}
    QLineEdit, QComboBox, QPlainTextEdit, QTextEdit, QTextBrowser {{
        border: 1px solid {c['border']}; border-radius: 6px; padding: 4px 6px; background: {c['base']}; }}
    QLineEdit:focus, QComboBox:focus, QPlainTextEdit:focus, QTextEdit:focus {{ border-color: {c['highlight']}; }}
    QAbstractSpinBox {{ padding: 3px 4px; }}
    QPushButton {{ border: 1px solid {c['border']}; border-radius: 6px; padding: 5px 12px; background: {c['button']}; }}
    QPushButton:hover {{ border-color: {c['highlight']}; }}
    QPushButton:disabled {{ color: {c['muted']}; }}
    QPushButton[primary="true"] {{ background: {c['highlight']}; color: {c['highlight_text']}; border-color: {c['highlight']}; font-weight: 600; }}
    QToolButton {{ border: 1px solid transparent; border-radius: 6px; padding: 4px; }}
    QToolButton:hover {{ border-color: {c['border']}; background: {c['alt']}; }}
    QToolButton:checked {{ background: {c['alt']}; border-color: {c['highlight']}; }}
    QTableView, QTreeView, QListView {{ border: 1px solid {c['border']}; border-radius: 8px; background: {c['base']};
        alternate-background-color: {c['alt']}; gridline-color: {c['border']}; }}
    QTableView::item, QTreeView::item {{ padding: 3px; }}
    QHeaderView::section {{ background: {c['window']}; border: none; border-bottom: 1px solid {c['border']};
        padding: 5px 6px; font-weight: 600; color: {c['muted']}; }}
    QTabWidget::pane {{ border: 1px solid {c['border']}; border-radius: 8px; top: -1px; background: {c['base']}; }}
    QTabBar::tab {{ padding: 6px 12px; border: none; color: {c['muted']}; }}
    QTabBar::tab:selected {{ color: {c['text']}; border-bottom: 2px solid {c['highlight']}; }}
    QProgressBar {{ border: 1px solid {c['border']}; border-radius: 5px; text-align: center; background: {c['base']}; height: 14px; }}
    QProgressBar::chunk {{ background: {c['highlight']}; border-radius: 4px; }}
    QGroupBox {{ border: 1px solid {c['border']}; border-radius: 8px; margin-top: 14px; padding-top: 8px; }}
    QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; font-weight: 600; }}
    QSplitter::handle {{ background: transparent; }}
    QStatusBar {{ border-top: 1px solid {c['border']}; }}
    """
