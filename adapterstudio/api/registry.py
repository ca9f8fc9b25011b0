"""Discovering hub providers through entry points, without ever crashing.

Each entry point in the group ``adapterstudio.hub_providers`` names a factory that takes
a :class:`~adapterstudio.api.ProviderConfig` and returns a provider. A plugin that fails
to import, to build, or that does not satisfy :class:`~adapterstudio.api.HubProvider`
is listed with its error instead of stopping the app.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from adapterstudio.api import ENTRY_POINT_GROUP, HubProvider, ProviderConfig
from adapterstudio.core.errors import NotFound, UserError, one_line

log = logging.getLogger(__name__)


@dataclass
class ProviderEntry:
    name: str
    value: str  # "module:attr"
    distribution: str | None
    version: str | None
    factory: Callable[[ProviderConfig], Any] | None = None
    error: str | None = None  # one line: why the plugin cannot be used
    disabled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disabled

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "distribution": self.distribution, "version": self.version,
                "ok": self.ok, "error": self.error, "disabled": self.disabled}


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    try:
        return list(metadata.entry_points(group=group))
    except Exception as exc:  # noqa: BLE001  (a broken distribution's metadata must not stop discovery: logged)
        log.warning("the installed packages' entry points for %s could not be read (%s: %s); no providers from them",
                    group, type(exc).__name__, exc)
        return []


def discover(group: str = ENTRY_POINT_GROUP, disabled: list[str] | tuple[str, ...] = ()) -> list[ProviderEntry]:
    """All providers registered in *group*, loaded; broken ones carry their error."""
    entries: dict[str, ProviderEntry] = {}
    for ep in _entry_points(group):
        dist = getattr(ep, "dist", None)
        entry = ProviderEntry(name=ep.name, value=ep.value, distribution=getattr(dist, "name", None),
                              version=getattr(dist, "version", None), disabled=ep.name in disabled)
        if ep.name in entries:  # the same name twice: keep the first, say why the second is ignored
            first = entries[ep.name]
            if first.value != ep.value:
                entry.error = f"another plugin ({first.distribution}) already provides {ep.name!r}"
                entries[f"{ep.name} ({entry.distribution})"] = entry
            continue
        if not entry.disabled:
            try:
                factory = ep.load()
                if not callable(factory):
                    raise TypeError(f"{ep.value} is not callable")
                entry.factory = factory
            except BaseException as exc:  # a plugin may raise anything, even SystemExit (recorded as its error)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                entry.error = one_line(exc)
        entries[ep.name] = entry
    return sorted(entries.values(), key=lambda e: e.name)


def load_provider(name: str, config: ProviderConfig | None = None, *, group: str = ENTRY_POINT_GROUP,
                  disabled: list[str] | tuple[str, ...] = ()) -> HubProvider:
    """Build the provider registered as *name*; a clear :class:`UserError` if it is missing or broken."""
    entries = discover(group, disabled)
    found = next((e for e in entries if e.name == name), None)
    if found is None:
        names = ", ".join(e.name for e in entries if e.ok) or "none"
        raise NotFound(f"No hub provider named {name!r} is installed (available: {names}); "
                       f"install its plugin, e.g. pip install ./plugins/adapterstudio-hf.")
    if found.disabled:
        raise UserError(f"The hub provider {name!r} is disabled in the settings (disabled_plugins).")
    if found.error:
        raise UserError(f"The hub provider {name!r} ({found.value}) is broken: {found.error}.")
    try:
        provider: HubProvider = found.factory(config or ProviderConfig())  # type: ignore[misc]
    except UserError:
        raise
    except Exception as exc:  # a plugin may raise anything: re-raised as a UserError sentence
        raise UserError(f"The hub provider {name!r} could not start: {one_line(exc)}.") from exc
    problems = check_provider(provider)
    if problems:
        raise UserError(f"The hub provider {name!r} does not implement the plugin API: {problems}.")
    return provider


def check_provider(provider: Any) -> str:
    """Empty when *provider* satisfies :class:`HubProvider`, else what is missing."""
    missing = [m for m in ("name", "display_name", "capabilities", "describe", "auth_status", "login", "logout",
                           "search", "show", "pull", "push", "delete", "validate_card") if not hasattr(provider, m)]
    return f"missing {', '.join(missing)}" if missing else ""


def format_traceback(exc: BaseException) -> str:  # pragma: no cover - debugging aid
    return "".join(traceback.format_exception(exc))


def discover_providers(disabled: list[str] | tuple[str, ...] = ()) -> list[ProviderEntry]:
    """All hub providers in the ``adapterstudio.hub_providers`` group (used by ``adapterstudio doctor``)."""
    return discover(ENTRY_POINT_GROUP, disabled)
