"""The self-check behind ``adapterstudio doctor`` and the app's first run.

Each check returns a status (ok / warning / error), what was found, and advice a user
can act on. Nothing here raises: a broken environment is exactly what it reports.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, ERROR = "ok", "warning", "error"

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    status: str
    detail: str
    advice: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_frozen() -> bool:
    """True in the one-folder application built by PyInstaller (no pip, no separate python)."""
    return bool(getattr(sys, "frozen", False))


def _gui_version() -> str | None:
    """PySide6's version, from its metadata or (in a frozen app, which may lack it) the module."""
    v = _version("PySide6-Essentials") or _version("PySide6")
    if v or importlib.util.find_spec("PySide6") is None:
        return v
    try:
        return str(importlib.import_module("PySide6").__version__)
    except Exception as exc:  # noqa: BLE001  (a broken Qt install reads as absent, whose advice reinstalls it; logged)
        log.warning("PySide6 is installed but cannot be imported (%s: %s)", type(exc).__name__, exc)
        return None


def check_python() -> Check:
    v = sys.version_info
    where = "bundled in the application" if is_frozen() else sys.executable
    detail = f"Python {platform.python_version()} ({where})"
    if v < (3, 11):
        return Check("python", ERROR, detail, "AdapterStudio needs Python 3.11 or newer.")
    return Check("python", OK, detail)


def check_torch() -> list[Check]:
    out: list[Check] = []
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return [Check("torch", ERROR, f"torch cannot be imported: {exc}",
                      "Install PyTorch: pip install torch (see https://pytorch.org for the CUDA build for your GPU).")]
    out.append(Check("torch", OK, f"torch {torch.__version__}"))
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        mem = []
        for i in range(len(names)):
            free, total = torch.cuda.mem_get_info(i)
            mem.append(f"{names[i]} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)")
        bf16 = torch.cuda.is_bf16_supported()
        out.append(Check("cuda", OK, f"CUDA {torch.version.cuda}: " + "; ".join(mem) + f"; bf16 {'yes' if bf16 else 'no'}"))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append(Check("accelerator", OK, "Apple MPS is available"))
    else:
        cuda_build = torch.version.cuda is not None
        if cuda_build:
            advice = "This torch is a CUDA build but no GPU is visible: check the NVIDIA driver (nvidia-smi)."
        elif is_frozen():
            advice = ("Training and inference will run on the CPU. This application was built with a CPU-only torch; "
                      "for an NVIDIA GPU use a CUDA build of AdapterStudio (packaging/README.md).")
        else:
            advice = ("Training and inference will run on the CPU. For an NVIDIA GPU install a CUDA build of torch, "
                      "e.g. pip install torch --index-url https://download.pytorch.org/whl/cu124")
        out.append(Check("accelerator", WARN, "no GPU available (CPU only)", advice))
    return out


def check_libraries() -> list[Check]:
    out = []
    for dist, need in (("transformers", "4.45"), ("peft", "0.13"), ("accelerate", "1.0"), ("safetensors", "0.4"),
                       ("huggingface_hub", "0.34")):
        v = _version(dist)
        if v is None:
            out.append(Check(dist, ERROR, f"{dist} is not installed", f"pip install '{dist}>={need}'"))
        else:
            out.append(Check(dist, OK, f"{dist} {v}"))
    gui = _gui_version()
    advice = ("This application was built without the GUI: rebuild it with packaging/build_app.sh "
              "(which installs the gui extra)." if is_frozen() else
              "The desktop app needs: pip install 'adapterstudio[gui]'")
    out.append(Check("gui", OK if gui else WARN, f"PySide6 {gui}" if gui else "PySide6 is not installed",
                     "" if gui else advice))
    return out


def check_resources(library: Path) -> list[Check]:
    out = []
    probe = library if library.exists() else library.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    gib = free / 2**30
    status = OK if gib >= 20 else WARN if gib >= 5 else ERROR
    out.append(Check("disk", status, f"{gib:.1f} GiB free at {probe}",
                     "" if status == OK else "Models and checkpoints need space: free some, or move the library "
                     "to a larger drive (Settings, or --home / ADAPTERSTUDIO_HOME)."))
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, avail = vm.total, vm.available
    except Exception:  # noqa: BLE001  (no psutil, or it cannot read this system: the same numbers from sysconf below)
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = avail = 0
    if total:
        status = OK if avail >= 8 * 2**30 else WARN
        out.append(Check("memory", status, f"{avail / 2**30:.1f} of {total / 2**30:.1f} GiB available",
                         "" if status == OK else "Little free memory: close other programs or use smaller models."))
    out.append(Check("cpu", OK, f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"))
    return out


def check_catalogue(home: str | os.PathLike[str] | None) -> list[Check]:
    from adapterstudio.core.errors import UserError
    from adapterstudio.services.library import open_library

    try:
        lib = open_library(home)
    except UserError as exc:
        return [Check("catalogue", ERROR, str(exc), "Fix or move the file named above; your adapters' files are untouched.")]
    try:
        rep = lib.catalogue.check()
        n_a, n_b = lib.catalogue.count_adapters(), len(lib.list_bases())
        missing_bases = [b.name for b in lib.list_bases() if not b.available and b.source != "hub"]
        out = []
        if rep["ok"]:
            out.append(Check("catalogue", OK, f"{lib.root}: {n_b} base models, {n_a} adapters, integrity ok"))
        else:
            out.append(Check("catalogue", ERROR, f"{lib.root}: integrity {rep['integrity']}, "
                             f"{len(rep['missing_folders'])} adapter folders missing",
                             "Run 'adapterstudio catalogue check --fix' and restore the library from a backup if needed."))
        if rep["orphan_folders"] or rep["orphan_blobs"]:
            out.append(Check("leftovers", WARN, f"{rep['orphan_folders']} folders and {rep['orphan_blobs']} files left by "
                             "an interrupted import", "Run 'adapterstudio catalogue check --fix' to remove them."))
        if missing_bases:
            out.append(Check("bases", WARN, f"base model folders not found: {', '.join(missing_bases)}",
                             "Reconnect the drive they are on, or register them again."))
        return out
    finally:
        lib.close()


def check_settings() -> Check:
    from adapterstudio.core.errors import UserError
    from adapterstudio.core.settings import load_settings, settings_path

    try:
        s = load_settings()
    except UserError as exc:
        return Check("settings", ERROR, str(exc), "Fix the file, or delete it to start from the defaults.")
    return Check("settings", OK, f"{settings_path()} (device {s.device}, precision {s.precision})")


def check_hub() -> Check:
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    token = bool(os.environ.get("HF_TOKEN"))
    if not token:
        hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        token = (hf_home / "token").is_file()
    # never print the token itself: only whether one is configured
    return Check("hub", OK, f"endpoint {endpoint}; token {'configured' if token else 'not configured'}",
                 "" if token else "To push adapters, run 'adapterstudio hub login'.")


def check_plugins() -> list[Check]:
    try:
        registry = importlib.import_module("adapterstudio.api.registry")
    except ImportError:
        return []
    out = []
    try:
        entries = registry.discover_providers()
    except Exception as exc:  # noqa: BLE001  (whatever discovery raises is the finding: reported as an error check)
        return [Check("plugins", ERROR, f"plugin discovery failed: {exc}")]
    for e in entries:
        name = getattr(e, "name", "?")
        error = getattr(e, "error", None)
        out.append(Check(f"plugin:{name}", ERROR if error else OK, error or f"{name} loaded",
                         "Reinstall or uninstall this plugin." if error else ""))
    return out


def run_checks(home: str | os.PathLike[str] | None = None, include_torch: bool = True) -> list[Check]:
    from adapterstudio.core.settings import Settings, load_settings

    checks = [check_python(), check_settings()]
    try:
        library = load_settings().resolved_library_dir(home)
    except Exception:  # noqa: BLE001 - a broken settings file is reported above
        library = Settings().resolved_library_dir(home)
    checks += check_libraries()
    if include_torch:
        checks += check_torch()
    checks += check_resources(library)
    checks += check_catalogue(home)
    checks.append(check_hub())
    checks += check_plugins()
    return checks
