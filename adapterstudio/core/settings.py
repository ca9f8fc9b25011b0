"""One typed, versioned settings file.

Location: ``$ADAPTERSTUDIO_CONFIG`` if set; else ``settings.json`` inside
``$ADAPTERSTUDIO_HOME`` if that is set (so a test or a portable library is
self-contained); else the platform's config folder (platformdirs).

The library (catalogue database and stored files) lives in ``library_dir``, overridden
by ``--home DIR`` on the command line or ``$ADAPTERSTUDIO_HOME``, e.g. for a library on
another drive.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.fsutil import atomic_write_text

SETTINGS_VERSION = 1
APP_NAME = "AdapterStudio"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # a model's weights: this setting, a training spec, the CLI's --precision
THEMES = ("system", "light", "dark")


def default_library_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def settings_path() -> Path:
    env = os.environ.get("ADAPTERSTUDIO_CONFIG")
    if env:
        return Path(env)
    home = os.environ.get("ADAPTERSTUDIO_HOME")
    if home:
        return Path(home) / "settings.json"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "settings.json"


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    library_dir: str = ""  # empty: the platform default
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    allow_pickle: bool = False
    trust_remote_code: bool = False
    theme: str = "system"  # system | light | dark
    default_hub_provider: str = "huggingface"
    hub_endpoint: str = ""  # empty: HF_ENDPOINT or the public Hub
    shared_folder: str = ""  # the shared-folder hub provider's root (a NAS path); empty: $ADAPTERSTUDIO_SHARED_FOLDER
    disabled_plugins: list[str] = field(default_factory=list)
    max_resident_adapters: int = 8
    max_host_adapters: int = 64

    _CHOICES = {
        "device": None,
        "precision": PRECISIONS,
        "theme": THEMES,
    }

    def validate(self, source: str = "settings") -> None:
        for name, choices in self._CHOICES.items():
            if choices and getattr(self, name) not in choices:
                raise InvalidInput(f"{source}: {name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}.")
        if not (self.device in ("auto", "cpu", "mps", "cuda") or self.device.startswith("cuda:")):
            raise InvalidInput(f"{source}: device must be auto, cpu, mps, cuda or cuda:N, not {self.device!r}.")
        for name in ("max_resident_adapters", "max_host_adapters"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{source}: {name} must be at least 1.")

    def resolved_library_dir(self, override: str | os.PathLike[str] | None = None) -> Path:
        if override:
            return Path(override).expanduser().resolve()
        env = os.environ.get("ADAPTERSTUDIO_HOME")
        if env:
            return Path(env).expanduser().resolve()
        if self.library_dir:
            return Path(self.library_dir).expanduser().resolve()
        return default_library_dir()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    # Version 1 is the first; future versions upgrade older files here, step by step.
    data["version"] = SETTINGS_VERSION
    return data


def load_settings(path: Path | None = None) -> Settings:
    path = path or settings_path()
    if not path.exists():
        return Settings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError
    except (ValueError, OSError):
        raise InvalidInput(f"{path} is not a valid settings file (expected a JSON object); fix or delete it.") from None
    version = data.get("version", 1)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise InvalidInput(f"{path} was written by a newer AdapterStudio (settings version {version}); upgrade the app.")
    data = _migrate(data)
    known = {f.name: f for f in fields(Settings) if not f.name.startswith("_")}
    kwargs: dict[str, Any] = {}
    defaults = Settings()
    for key, value in data.items():
        if key not in known:
            continue  # unknown keys from plugins or newer minor versions are ignored
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise InvalidInput(f"{path}: {key} must be {expected.__name__}, not {type(value).__name__}.")
        kwargs[key] = value
    s = Settings(**kwargs)
    s.validate(str(path))
    return s


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    settings.validate()
    path = path or settings_path()
    data = {k: v for k, v in settings.to_dict().items() if not k.startswith("_")}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
