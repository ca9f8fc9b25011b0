"""The library under stress: concurrent import/remove/check, read-only folders, full disks, hostile names."""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from adapterstudio.api.testing import write_adapter_folder
from tests.cli_runner import CliResult

REPO = Path(__file__).resolve().parent.parent


# -- 1. concurrent import / remove / check of the same content -----------------------------
def _churn(home: str, src: str, tag: str, seconds: float, out) -> None:
    """Import then remove the same adapter content over and over; report every failure."""
    from adapterstudio.services.library import open_library

    lib = open_library(home)
    errors, n = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = f"{tag}-{n}"
        try:
            lib.import_adapter(src, name)
            lib.remove_adapter(name)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on by the test
            errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        n += 1
    lib.close()
    out.put((tag, n, errors))


def _check_loop(home: str, seconds: float, out) -> None:
    """Run the integrity check while others write; a healthy library must always pass."""
    from adapterstudio.services.library import open_library

    lib = open_library(home)
    errors, n = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            res = lib.catalogue.check()
            if not res["ok"]:
                errors.append(f"check reported a healthy library as broken: {res}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted on by the test
            errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        n += 1
        time.sleep(0.002)  # often, but leave the shared CPUs to the writers
    lib.close()
    out.put(("check", n, errors))


@pytest.mark.slow
def test_concurrent_import_remove_and_check_of_the_same_content(home, tmp_path):
    from adapterstudio.services.library import open_library

    src = write_adapter_folder(tmp_path / "same-content")
    open_library().close()  # create the library before the workers race to
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    seconds = 8.0
    procs = [ctx.Process(target=_churn, args=(str(home), str(src), f"w{i}", seconds, out)) for i in range(2)]
    procs.append(ctx.Process(target=_check_loop, args=(str(home), seconds, out)))
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    counts = {tag: n for tag, n, _ in results}
    errors = [e for _, _, errs in results for e in errs]
    assert not errors, f"{len(errors)} failures in {counts}; first:\n{errors[0]}"
    assert all(n >= 5 for n in counts.values()), counts  # the loops really ran concurrently
    lib = open_library()
    final = lib.catalogue.check(grace_seconds=0)
    assert final["ok"] and final["orphan_blobs"] == 0 and final["orphan_folders"] == 0, final
    assert lib.list_adapters() == []
    # every adapter was removed, so no stored file may remain
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    assert list((home / "adapters").iterdir()) == []


def test_an_import_that_loses_its_blob_to_a_remove_links_it_back(lib, tmp_path, monkeypatch):
    """The race made deterministic: a remove deletes the shared blob after the import stored it."""
    from adapterstudio.core import catalogue as catmod

    src = write_adapter_folder(tmp_path / "same")
    lib.import_adapter(src, "first")
    real_stage = catmod.Catalogue.stage_adapter_folder

    def stage_after_a_remove(self, files):
        lib.remove_adapter("first")  # the last user of these blobs goes: they are deleted
        assert not any(self.blob_path(f[1]).exists() for f in files)
        return real_stage(self, files)

    monkeypatch.setattr(catmod.Catalogue, "stage_adapter_folder", stage_after_a_remove)
    rec = lib.import_adapter(src, "second")
    monkeypatch.undo()
    assert [a.name for a in lib.list_adapters()] == ["second"]
    for f in rec.files:  # the store is whole again: blob and folder, same file
        blob = lib.catalogue.blob_path(f.sha256)
        assert blob.read_bytes() == (src / f.relpath).read_bytes()
        assert os.path.samefile(blob, Path(rec.path) / f.relpath)
    report = lib.catalogue.check(grace_seconds=0)
    assert report["ok"] and report["missing_blobs"] == [] and report["orphan_blobs"] == 0, report


def test_check_links_back_blobs_lost_by_older_versions(lib, tmp_path):
    src = write_adapter_folder(tmp_path / "a")
    rec = lib.import_adapter(src, "a")
    lost = lib.catalogue.blob_path(rec.files[0].sha256)
    os.chmod(lost, 0o644)
    lost.unlink()  # what the old race left: the folder has the file, the store does not
    report = lib.catalogue.check()
    assert report["ok"] and report["missing_blobs"] == [rec.files[0].sha256]
    lib.catalogue.check(fix=True)
    assert lost.read_bytes() == (src / rec.files[0].relpath).read_bytes()
    assert lib.catalogue.check()["missing_blobs"] == []


# -- 2. a library the user may not write ---------------------------------------------------
def _as_reader() -> list[str]:
    """A command prefix that runs as a user without write access (root ignores file modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to be a user who cannot write")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*prefix, sys.executable, "-c", "import adapterstudio"], capture_output=True,
                      env={**os.environ, "PYTHONPATH": str(REPO)}).returncode != 0:
        pytest.skip("the unprivileged user cannot run this Python")
    return prefix


@pytest.fixture
def shared_dir():
    """A folder in the system temp folder (pytest's own is private to its user), cleaned up after."""
    d = Path(tempfile.mkdtemp(prefix="adapterstudio-ro-"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def _freeze(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o555 if p.is_dir() else 0o444)


def _state(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but SQLite's shared-memory index and log (any reader may touch those)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("catalogue.db-")}


def test_a_read_only_library_can_be_read_and_refuses_writes_in_one_sentence(shared_dir):
    prefix = _as_reader()
    from adapterstudio.services.library import open_library

    home = shared_dir / "lib"
    src = write_adapter_folder(shared_dir / "src" / "mine")
    lib = open_library(home)
    lib.add_base("someone/base")
    lib.import_adapter(src, "mine", tags=["keep"])
    lib.close()
    _freeze(home)
    for p in src.iterdir():
        p.chmod(0o644)  # the source stays readable: the refusal must come from the library
    before = _state(home)
    out = shared_dir / "exports"
    out.mkdir()
    out.chmod(0o777)
    env = {**os.environ, "ADAPTERSTUDIO_HOME": str(home), "HOME": str(shared_dir), "PYTHONPATH": str(REPO)}
    env.pop("ADAPTERSTUDIO_CONFIG", None)
    reads = [("adapter", "list", "--json"), ("adapter", "show", "mine"), ("base", "list"),
             ("catalogue", "check", "--json"), ("adapter", "export", "mine", str(out / "copy"))]
    writes = [("adapter", "tag", "mine", "new"), ("adapter", "remove", "mine"), ("adapter", "rename", "mine", "x"),
              ("adapter", "note", "mine", "hello"), ("adapter", "import", str(src), "--name", "again"),
              ("base", "add", "other/base"), ("catalogue", "check", "--fix")]
    # every command as the user who cannot write, one after the other in one interpreter (cli.main each)
    driver = ("import dataclasses, json, sys\nfrom tests.cli_runner import run_cli_main\n"
              "for args in json.load(sys.stdin):\n"
              "    print(json.dumps(dataclasses.asdict(run_cli_main(*args))), flush=True)\n")
    res = subprocess.run([*prefix, sys.executable, "-c", driver], input=json.dumps(reads + writes), capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    results = iter(CliResult(**json.loads(line)) for line in res.stdout.splitlines())

    r = next(results)
    assert r.returncode == 0, r.stderr
    assert [(a["name"], a["tags"]) for a in json.loads(r.stdout)] == [("mine", ["keep"])]
    assert next(results).returncode == 0
    assert next(results).returncode == 0
    r = next(results)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr
    r = next(results)
    assert r.returncode == 0, r.stderr
    assert _state(out / "copy") == _state(src)
    for args in writes:
        r = next(results)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.splitlines()[0] == f"error: The library at {home} is read-only.", (args, r.stderr)
        assert "Traceback" not in r.stderr and "Internal error" not in r.stderr
    assert _state(home) == before  # nothing written, not even SQLite's side files


def test_a_read_only_catalogue_opened_through_the_api(shared_dir, monkeypatch):
    """In-process (no second user): a library opened read-only lists, and every write says so."""
    from adapterstudio.core.catalogue import Catalogue
    from adapterstudio.core.errors import ReadOnlyLibrary
    from adapterstudio.services.library import Library, open_library

    home = shared_dir / "lib"
    src = write_adapter_folder(shared_dir / "src" / "mine")
    lib = open_library(home)
    lib.import_adapter(src, "mine")
    lib.close()
    before = _state(home)
    ro = Library(lib.settings, Catalogue(home, readonly=True))
    assert ro.readonly and [a.name for a in ro.list_adapters()] == ["mine"]
    for write in (lambda: ro.import_adapter(src, "b"), lambda: ro.tag_adapter("mine", add=["x"]),
                  lambda: ro.remove_adapter("mine"), lambda: ro.add_base("o/b"), lambda: ro.catalogue.check(fix=True)):
        with pytest.raises(ReadOnlyLibrary, match=r"^The library at .* is read-only\.$"):
            write()
    ro.close()
    assert _state(home) == before


# -- 3. a full disk --------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_import_is_one_sentence_and_changes_nothing(lib, home, tmp_path, monkeypatch):
    from adapterstudio.core import catalogue as catmod
    from adapterstudio.core.errors import DiskFull

    src = write_adapter_folder(tmp_path / "a")
    before = _state(home)
    monkeypatch.setattr(catmod.shutil, "copyfileobj", _enospc)
    with pytest.raises(DiskFull) as info:
        lib.import_adapter(src, "a")
    size = sum(p.stat().st_size for p in src.iterdir())
    assert re.fullmatch(rf"The disk holding {re.escape(str(home))} is full \([\d.,]+ MB free, about 0\.1 MB needed\)\.",
                        str(info.value)), str(info.value)
    assert info.value.needed <= size
    monkeypatch.undo()
    assert _state(home) == before and lib.list_adapters() == []


def test_the_cli_says_disk_full_wherever_it_happens(home, tmp_path, monkeypatch, capsys):
    from adapterstudio.cli import main
    from adapterstudio.core import catalogue as catmod
    from adapterstudio.services.library import Library

    src = write_adapter_folder(tmp_path / "a")
    monkeypatch.setattr(catmod.shutil, "copyfileobj", _enospc)
    assert main(["adapter", "import", str(src)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: The disk holding {home} is full (") and "Internal error" not in err
    monkeypatch.undo()
    main(["adapter", "import", str(src)])
    capsys.readouterr()

    # A raw ENOSPC from a place that does not know about disks, raised while handling another error
    # (a quota, EDQUOT, reads the same), names the file it was writing.
    def export(self, name, dest, ctx=None):
        try:
            raise ValueError("first")
        except ValueError:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "out" / "x.bin")) from None

    monkeypatch.setattr(Library, "export_adapter", export)
    assert main(["adapter", "export", "a", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: The disk holding {tmp_path / 'out' / 'x.bin'} is full (") and "Traceback" not in err


def test_a_crash_log_that_cannot_be_written_does_not_bury_the_error(home, tmp_path, monkeypatch, capsys):
    from adapterstudio.cli import _common

    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").write_text("a file where the logs folder should be")
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(home / "logs" / "tmp"))

    def bug(args):
        raise RuntimeError("boom")

    rc = _common.run_command(bug, argparse.Namespace())
    err = capsys.readouterr().err
    assert rc == 70
    assert err.startswith("error: Internal error: RuntimeError: boom. The details could not be saved (")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _can_mount_privately() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                                            capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_privately(), reason="needs a private mount namespace (unshare -m) for a tiny tmpfs")
def test_a_really_full_disk(tmp_path):
    """A 1 MB tmpfs, filled up: writes to the catalogue and imports say the disk is full, in one sentence."""
    home = tmp_path / "lib"
    home.mkdir()
    src = write_adapter_folder(tmp_path / "a")
    script = (
        "set -e; mount -t tmpfs -o size=1m tmpfs \"$ADAPTERSTUDIO_HOME\"\n"
        "python -m adapterstudio base add some/one >/dev/null\n"
        # fill the disk to the last byte
        "python -c 'import os,sys\nf=open(sys.argv[1],\"wb\")\ntry:\n while True: f.write(b\"x\"*4096); f.flush()\n"
        "except OSError: pass' \"$ADAPTERSTUDIO_HOME/filler\"\n"
        "set +e\n"
        "python -m adapterstudio adapter import \"$SRC\"; echo \"rc=$?\"\n"
        "python -m adapterstudio base add some/two; echo \"rc=$?\"\n"
        "python -m adapterstudio base list --json\n"
    )
    env = {**os.environ, "ADAPTERSTUDIO_HOME": str(home), "SRC": str(src), "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ADAPTERSTUDIO_CONFIG", None)
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert r.stdout.count("rc=1") == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(re.fullmatch(rf"error: The disk holding {re.escape(str(home))}\S* is full "
                                                 r"\([\d.]+ MB free(, about [\d.]+ MB needed)?\)\.", e) for e in errors), r.stderr
    assert "Traceback" not in r.stderr
    assert [b["name"] for b in json.loads(r.stdout.split("rc=1\n")[-1])] == ["some/one"]


# -- 4. names, tags and notes --------------------------------------------------------------
HIDDEN = ["\x1b[31m", "\x1f", "\x7f", "\x85", "\u202e", "\u2066", "\u200b", "\u200d", "\u2060", "\ufeff", "\u2028",
          "\udcff"]


@pytest.mark.parametrize("bad", HIDDEN)
def test_names_and_tags_with_hidden_characters_are_refused(bad):
    from adapterstudio.core.errors import InvalidInput
    from adapterstudio.core.names import validate_name, validate_notes, validate_tag

    with pytest.raises(InvalidInput, match=r"^.* is not a valid adapter name: it contains U\+[0-9A-F]{4}"):
        validate_name(f"my{bad}adapter")
    with pytest.raises(InvalidInput, match="base model name"):
        validate_name(f"my{bad}base", "base model")
    with pytest.raises(InvalidInput, match=r"^The tag .* contains U\+"):
        validate_tag(f"t{bad}g")
    if bad[0] < " " or "\x7f" <= bad[0] <= "\x9f" or bad == "\udcff":
        with pytest.raises(InvalidInput, match="notes contain"):
            validate_notes(f"a{bad}b")


def test_the_name_rules():
    from adapterstudio.core.errors import InvalidInput
    from adapterstudio.core.names import validate_name, validate_notes

    for ok in ("lora-v2", "Ünïcode 名前", "team/sentiment", "emoji 🎉", "  padded  "):
        assert validate_name(ok) == ok.strip()
    for bad in ("", "   ", ".", "..", "a:b", "a\\b", "x" * 201):
        with pytest.raises(InvalidInput, match="is not a valid adapter name"):
            validate_name(bad)
    assert validate_notes("line one\r\nline two\twith a tab") == "line one\nline two\twith a tab"


def test_the_library_applies_the_rules_before_writing(lib, home, tmp_path):
    from adapterstudio.core.errors import InvalidInput

    src = write_adapter_folder(tmp_path / "a")
    before = _state(home)
    for kwargs in ({"name": "evil\u202egpj.exe"}, {"tags": ["ok", "t\x1fx"]}, {"notes": "\x1b]0;pwned\x07"}):
        with pytest.raises(InvalidInput):
            lib.import_adapter(src, **{"name": "fine", **kwargs})
    assert _state(home) == before
    lib.import_adapter(src, "fine", tags=["ok"], notes="two\nlines")
    with pytest.raises(InvalidInput):
        lib.rename_adapter("fine", "zero\u200bwidth")
    with pytest.raises(InvalidInput):
        lib.tag_adapter("fine", add=["\u2066x"])
    with pytest.raises(InvalidInput):
        lib.set_notes("fine", "bell\x07")
    with pytest.raises(InvalidInput):
        lib.add_base("org/model", name="org\u202e/model")
    a = lib.catalogue.get_adapter("fine")
    assert a.name == "fine" and a.tags == ["ok"] and a.notes == "two\nlines"


def test_tags_stored_by_older_versions_show_whole_and_can_be_removed(lib, home, tmp_path, cli_main):
    src = write_adapter_folder(tmp_path / "a")
    rec = lib.import_adapter(src, "a", tags=["plain"])
    # what an older version let in: a tag with the old list separator, one with a bidi override
    with sqlite3.connect(home / "catalogue.db") as con:
        con.executemany("INSERT INTO adapter_tags (adapter_id, tag) VALUES (?, ?)",
                        [(rec.id, "two\x1fparts"), (rec.id, "rev\u202eersed")])
    assert sorted(lib.catalogue.get_adapter("a").tags) == ["plain", "rev\u202eersed", "two\x1fparts"]
    assert lib.list_adapters(tag="two\x1fparts")[0].name == "a"
    r = cli_main("adapter", "show", "a")
    tags_line = next(line for line in r.stdout.splitlines() if line.startswith("tags:"))
    assert "two\\x1fparts" in tags_line and "rev\\u202eersed" in tags_line and "\x1f" not in tags_line
    # removed as shown (escaped) or as a terminal shows it (hidden characters left out)
    r = cli_main("adapter", "tag", "a", "two\\x1fparts", "--remove")
    assert r.returncode == 0, r.stderr
    r = cli_main("adapter", "tag", "a", "reversed", "--remove")
    assert r.returncode == 0, r.stderr
    assert lib.catalogue.get_adapter("a").tags == ["plain"]
