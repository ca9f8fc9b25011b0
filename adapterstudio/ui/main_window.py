"""The main window: a sidebar of pages, a status bar with running tasks, shortcuts."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QStackedWidget,
    QStatusBar,
    QVBoxLayout,
    QWidget,
)

from adapterstudio import __version__
from adapterstudio.ui import errors, icons, state, theme
from adapterstudio.ui.runner import Runner
from adapterstudio.ui.session import Session
from adapterstudio.ui.widgets import TaskIndicator

PAGES = (
    ("library", "Library", "library"),
    ("train", "Train", "train"),
    ("playground", "Playground", "playground"),
    ("share", "Share", "share"),
    ("settings", "Settings", "settings"),
)


def _make_page(key: str, session: Session) -> QWidget:
    if key == "library":
        from adapterstudio.ui.pages.library import LibraryPage

        return LibraryPage(session)
    if key == "train":
        from adapterstudio.ui.pages.train.page import TrainPage

        return TrainPage(session)
    if key == "playground":
        from adapterstudio.ui.pages.playground.page import PlaygroundPage

        return PlaygroundPage(session)
    if key == "share":
        from adapterstudio.ui.pages.share import SharePage

        return SharePage(session)
    from adapterstudio.ui.pages.settings import SettingsPage

    return SettingsPage(session)


class MainWindow(QMainWindow):
    def __init__(self, runner: Runner | None = None, home: str | None = None, open_library: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("AdapterStudio")
        self.setWindowIcon(icons.app_icon())
        self.runner = runner or Runner(self)
        self.session = Session(self.runner, self)
        self.runner.unhandled_error.connect(lambda exc, tb: errors.show_error(self, exc, tb))
        self.session.navigate.connect(self._navigate)

        central = QWidget()
        lay = QHBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.sidebar = self._build_sidebar()
        lay.addWidget(self.sidebar)
        self.stack = QStackedWidget()
        self.stack.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.pages: dict[str, QWidget] = {}
        for key, title, icon_name in PAGES:
            page = _make_page(key, self.session)
            page.setObjectName(f"page-{key}")
            self.pages[key] = page
            self.stack.addWidget(page)
            item = QListWidgetItem(icons.icon(icon_name, "text"), title)
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setToolTip(f"{title} (Ctrl+{len(self.pages)})")
            self.nav.addItem(item)
        self.nav.currentRowChanged.connect(self._page_changed)

        status = QStatusBar()
        self.setStatusBar(status)
        self.library_label = QLabel("Opening library…")
        self.library_label.setObjectName("Muted")
        status.addWidget(self.library_label, 1)
        self.tasks = TaskIndicator(self.runner)
        status.addPermanentWidget(self.tasks)
        self.session.opened.connect(lambda lib: self.library_label.setText(f"Library: {lib.root}"))

        self._build_actions()
        self.resize(1280, 800)
        self._restore_state()
        self.nav.setCurrentRow(0)
        if open_library:
            self.session.open(home)

    # -- layout ----------------------------------------------------------------------
    def _build_sidebar(self) -> QWidget:
        side = QWidget()
        side.setObjectName("Sidebar")
        side.setFixedWidth(196)
        v = QVBoxLayout(side)
        v.setContentsMargins(0, 16, 0, 12)
        v.setSpacing(10)
        head = QHBoxLayout()
        head.setContentsMargins(16, 0, 12, 6)
        logo = QLabel()
        logo.setPixmap(icons.app_icon().pixmap(28, 28))
        head.addWidget(logo)
        name = QLabel("AdapterStudio")
        name.setObjectName("AppTitle")
        head.addWidget(name)
        head.addStretch(1)
        v.addLayout(head)
        self.nav = QListWidget()
        self.nav.setObjectName("SidebarList")
        self.nav.setIconSize(icons.size(20))
        self.nav.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        v.addWidget(self.nav, 1)
        ver = QLabel(f"v{__version__}")
        ver.setObjectName("Muted")
        ver.setContentsMargins(18, 0, 0, 0)
        v.addWidget(ver)
        return side

    def _build_actions(self) -> None:
        for i, (key, title, _icon) in enumerate(PAGES):
            a = QAction(title, self)
            a.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            a.triggered.connect(lambda _=False, k=key: self.show_page(k))
            self.addAction(a)
        a = QAction("Settings", self)
        a.setShortcut(QKeySequence.StandardKey.Preferences)
        a.triggered.connect(lambda: self.show_page("settings"))
        self.addAction(a)
        a = QAction("Quit", self)
        a.setShortcut(QKeySequence.StandardKey.Quit)
        a.triggered.connect(self.close)
        self.addAction(a)
        a = QAction("Toggle dark theme", self)
        a.setShortcut(QKeySequence("Ctrl+Shift+T"))
        a.triggered.connect(self.toggle_theme)
        self.addAction(a)

    # -- navigation ----------------------------------------------------------------------
    def show_page(self, key: str) -> None:
        for i in range(self.nav.count()):
            if self.nav.item(i).data(Qt.ItemDataRole.UserRole) == key:
                self.nav.setCurrentRow(i)
                return

    def current_page(self) -> str:
        item = self.nav.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item else ""

    def _page_changed(self, row: int) -> None:
        if row < 0:
            return
        self.stack.setCurrentIndex(row)
        page = self.stack.widget(row)
        if page is not None and hasattr(page, "activated"):
            page.activated()

    def _navigate(self, key: str, arg: object) -> None:
        self.show_page(key)
        page = self.pages.get(key)
        if page is not None and hasattr(page, "focus_item") and arg is not None:
            page.focus_item(arg)

    # -- theme -------------------------------------------------------------------------
    def apply_theme(self, name: str) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply(app, name)
        from adapterstudio.ui.models import reset_icon_cache

        reset_icon_cache()
        for i, (_key, _title, icon_name) in enumerate(PAGES):
            self.nav.item(i).setIcon(icons.icon(icon_name, "text"))
        for page in self.pages.values():
            if hasattr(page, "retheme"):
                page.retheme()

    def toggle_theme(self) -> None:
        self.apply_theme("light" if theme.current() == "dark" else "dark")

    # -- state ---------------------------------------------------------------------------
    def _restore_state(self) -> None:
        geo = state.load_bytes("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        st = state.load_bytes("window/state")
        if st is not None:
            self.restoreState(st)
        for key, page in self.pages.items():
            if hasattr(page, "restore_state"):
                data = state.load_bytes(f"pages/{key}")
                if data is not None:
                    page.restore_state(data)

    def save_state(self) -> None:
        state.save("window/geometry", self.saveGeometry())
        state.save("window/state", self.saveState())
        for key, page in self.pages.items():
            if hasattr(page, "save_state"):
                data = page.save_state()
                if isinstance(data, QByteArray):
                    state.save(f"pages/{key}", data)

    def busy_pages(self) -> list[str]:
        """Pages with long work under way that closing would stop (a running training queue)."""
        return [k for k, p in self.pages.items() if getattr(p, "keeps_running", lambda: False)()]

    def _tray(self):
        from PySide6.QtWidgets import QMenu, QSystemTrayIcon

        if getattr(self, "tray", None) is None:
            self.tray = QSystemTrayIcon(icons.app_icon(), self)
            menu = QMenu(self)
            menu.addAction("Show AdapterStudio", self._show_again)
            menu.addAction("Quit", self.quit_for_real)
            self.tray.setContextMenu(menu)
            self.tray.activated.connect(lambda _reason: self._show_again())
        return self.tray

    def _show_again(self) -> None:
        self.show()
        self.raise_()
        self.activateWindow()

    def quit_for_real(self) -> None:
        self._quitting = True
        self.close()
        QApplication.quit()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        from PySide6.QtWidgets import QSystemTrayIcon

        self.save_state()
        if self.busy_pages() and not getattr(self, "_quitting", False) and QSystemTrayIcon.isSystemTrayAvailable():
            # Training keeps going: the window hides to the tray and comes back from there.
            QApplication.setQuitOnLastWindowClosed(False)
            tray = self._tray()
            tray.show()
            tray.showMessage("AdapterStudio", "Training continues in the background; click here to reopen the window.",
                             QSystemTrayIcon.MessageIcon.Information, 8000)
            self.hide()
            event.ignore()
            return
        for page in self.pages.values():
            if hasattr(page, "shutdown"):
                page.shutdown()
        # Imports and transfers are cancelled cooperatively; training jobs run in their
        # own processes and keep going (the Train page reattaches when reopened).
        self.runner.cancel_all()
        super().closeEvent(event)
