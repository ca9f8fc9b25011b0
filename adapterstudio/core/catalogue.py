"""The catalogue store: SQLite (WAL) index plus content-addressed files on disk.

Layout of a library folder::

    catalogue.db          SQLite index (WAL mode)
    blobs/ab/abcdef...    every stored file once, named by its SHA-256, read-only
    adapters/<uid>/...    one folder per adapter, hard links to blobs (PEFT loads it)

Crash safety: files are written (atomically) before the index row that refers to them
is committed in one transaction, so a kill at any moment leaves either no entry or a
complete one; what a kill can leave behind is unreferenced files, which
:meth:`Catalogue.check` reports and removes. Several processes (GUI and CLI) may use
one library at once: SQLite's WAL and a busy timeout serialise the writers.

Shared blobs under concurrency: an import copies and links blobs without holding the
write lock (copying can take minutes), so a concurrent remove may delete a blob the
import is about to use. The rule that keeps the store whole is: *a blob is deleted
only under the write lock, when no committed row refers to it; an import makes sure
each of its blobs exists under the same lock, just before it commits the rows that
refer to them*. So every committed ``adapter_files`` row has its blob, and an import
that lost a blob to a remove links it back from its own staged copy (or copies its
source) instead of failing.

A library that cannot be written (permissions, a read-only drive) opens read-only:
reading works, and every write says :class:`ReadOnlyLibrary`.

Why one ~800-line class: the index rows and the files they refer to are kept whole by the
rules above, and every part here takes part in them: the connection and transaction code
maps SQLite's errors to a read-only library or a full disk; blob storage, adapter folders,
inserts, removals and the health check each rely on "files before rows" and "blobs deleted
only under the write lock" and on that one transaction. Split across modules, each rule
would be half in one file and half in another. What stands apart, the schema and its
migrations, is in :mod:`adapterstudio.core.catalogue_schema`.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapterstudio.core.catalogue_schema import MIGRATIONS, SCHEMA_VERSION, refuse_newer
from adapterstudio.core.errors import (
    AlreadyExists,
    DiskFull,
    InvalidInput,
    NotFound,
    ReadOnlyLibrary,
    UserError,
    free_bytes,
    is_disk_full,
)
from adapterstudio.core.fsutil import CHUNK, atomic_output, fsync_dir
from adapterstudio.core.names import same_text
from adapterstudio.core.records import AdapterFile, AdapterRecord, BaseRecord


def _now() -> float:
    return time.time()


# SQLite primary result codes (the low byte of an extended code).
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_SQLITE_IOERR = 10
# Free bytes below which a SQLite I/O error is taken for a full disk.
_NEARLY_FULL = 1_000_000
# errno values that mean "you may not write here".
_NO_WRITE = frozenset(e for e in (errno.EACCES, errno.EPERM, errno.EROFS) if e is not None)


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _tags(js: str | None) -> list[str]:
    """The tags from SQLite's ``json_group_array``; without escapes the JSON is split directly (fast)."""
    if not js or js == "[]":
        return []
    if "\\" not in js:  # no escaped quote, backslash or control character: '["a","b"]'
        return js[2:-2].split('","')
    return [str(t) for t in json.loads(js)]


def _unlink_stored(p: Path) -> None:
    """Delete a stored (read-only) file; a file already gone is fine."""
    try:
        os.chmod(p, 0o644)  # Windows refuses to delete read-only files
        p.unlink()
    except FileNotFoundError:
        pass  # removed meanwhile by another process: the goal is reached


class Catalogue:
    """The library index. One instance may be shared by threads (one connection each)."""

    def __init__(self, root: str | os.PathLike[str], *, readonly: bool = False) -> None:
        """Open (creating if needed) the library at *root*.

        *readonly* opens it for reading only. A library that cannot be written (its folder
        or catalogue file is read-only to this user, or on a read-only drive) is opened
        read-only by itself, so it can still be listed; writes then raise
        :class:`ReadOnlyLibrary`."""
        self.root = Path(root)
        self.db_path = self.root / "catalogue.db"
        self.blobs_dir = self.root / "blobs"
        self.adapters_dir = self.root / "adapters"
        self.runs_dir = self.root / "runs"
        self._local = threading.local()
        self.readonly = readonly
        # why writes are refused when the library could only be opened for reading
        self._refusal: UserError = ReadOnlyLibrary(self.root)
        if not readonly:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                for d in (self.blobs_dir, self.adapters_dir, self.runs_dir):
                    d.mkdir(exist_ok=True)
            except OSError as exc:
                if exc.errno in _NO_WRITE and self.db_path.is_file():
                    self.readonly = True
                elif is_disk_full(exc):
                    if not self.db_path.is_file():
                        raise DiskFull(self.root) from None
                    self.readonly, self._refusal = True, DiskFull(self.root)
                else:
                    raise InvalidInput(f"The library folder {self.root} cannot be created: {exc.strerror or exc}.") from None
        if not self.readonly:
            try:
                self._migrate()
            except (ReadOnlyLibrary, DiskFull) as exc:
                # Reading still works: SQLite cannot create its shared-memory index beside
                # the catalogue (no permission, or no space for it), so open it for reading.
                self.close()
                if not self.db_path.is_file():
                    raise  # nothing to read either: a new library cannot be made here
                self.readonly, self._refusal = True, exc
        if self.readonly:
            self._check_readable_schema()

    # -- connection handling -------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect_readonly() if self.readonly else self._connect()
            self._local.conn = c
        return c

    def _connect(self) -> sqlite3.Connection:
        try:
            c = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            mapped = self._user_error(exc)
            if mapped is not None:
                raise mapped from None
            raise InvalidInput(f"The catalogue {self.db_path} cannot be opened: {exc}.") from None
        c.row_factory = sqlite3.Row
        try:
            c.execute("PRAGMA busy_timeout = 30000")
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = NORMAL")
            c.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            c.close()
            mapped = self._user_error(exc)
            if mapped is not None:
                raise mapped from None
            raise InvalidInput(f"{self.db_path} is not a valid catalogue database ({exc}).") from None
        return c

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that never writes: ``mode=ro``, or ``immutable=1`` where SQLite cannot even
        create the WAL index beside the file (a read-only folder with no one writing)."""
        uri = self.db_path.resolve().as_uri()
        last: sqlite3.Error | None = None
        for params in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                c = sqlite3.connect(uri + params, uri=True, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                c.execute("PRAGMA busy_timeout = 30000")
                c.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                c.close()
                last = exc
                continue
            c.row_factory = sqlite3.Row
            return c
        if _sqlite_code(last) == _SQLITE_CANTOPEN:  # type: ignore[arg-type]
            raise InvalidInput(f"The catalogue {self.db_path} cannot be read ({last}).")
        raise InvalidInput(f"{self.db_path} is not a valid catalogue database ({last}).")

    def _writable(self) -> bool:
        return os.access(self.root, os.W_OK) and (not self.db_path.exists() or os.access(self.db_path, os.W_OK))

    def _user_error(self, exc: BaseException) -> UserError | None:
        """The user's reading of a SQLite or OS error: read-only library, full disk; None for others."""
        code = _sqlite_code(exc)
        if is_disk_full(exc):
            return DiskFull(self.db_path)
        if code == _SQLITE_IOERR:
            # SQLite reports a failed write of its shared-memory index or log as an I/O error
            # (the OS's ENOSPC is not passed on); with the disk (nearly) full, that is the cause.
            free = free_bytes(self.root)
            if free is not None and free < _NEARLY_FULL:
                return DiskFull(self.db_path, free=free)
        if code == _SQLITE_READONLY or (code == _SQLITE_CANTOPEN and not self._writable()):
            return ReadOnlyLibrary(self.root)
        if isinstance(exc, OSError) and exc.errno in _NO_WRITE:
            return ReadOnlyLibrary(self.root)
        return None

    def require_writable(self) -> None:
        """Raise why this library cannot be written (:class:`ReadOnlyLibrary`, :class:`DiskFull`), if it cannot."""
        if self.readonly:
            raise self._refusal

    def _check_readable_schema(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        refuse_newer(version, self.db_path)
        if version < SCHEMA_VERSION:
            raise self._refusal  # it needs an upgrade, which is a write

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception.

        A read-only library raises :class:`ReadOnlyLibrary`, a full disk :class:`DiskFull`."""
        self.require_writable()
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            mapped = self._user_error(exc)
            if mapped is not None:
                raise mapped from None
            raise
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as exc:
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back (e.g. after SQLITE_FULL); the original error matters
            mapped = self._user_error(exc) if isinstance(exc, (sqlite3.OperationalError, OSError)) else None
            if mapped is not None:
                raise mapped from exc
            raise

    def _migrate(self) -> None:
        with self.transaction() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            refuse_newer(version, self.db_path)
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
            if version != SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- bases ---------------------------------------------------------------
    _BASE_COLS = ("name", "source", "path", "hub_id", "revision", "content_hash", "architecture", "model_type",
                  "num_parameters", "dtype", "size_bytes", "target_modules", "module_shapes", "config", "notes")

    def _base_from_row(self, r: sqlite3.Row) -> BaseRecord:
        available = True
        if r["source"] == "hub" and not r["path"]:
            available = False
        elif r["path"] and not Path(r["path"]).exists():
            available = False
        return BaseRecord(
            id=r["id"], name=r["name"], source=r["source"], path=r["path"], hub_id=r["hub_id"],
            revision=r["revision"], content_hash=r["content_hash"], architecture=r["architecture"],
            model_type=r["model_type"], num_parameters=r["num_parameters"], dtype=r["dtype"],
            size_bytes=r["size_bytes"], target_modules=json.loads(r["target_modules"]), notes=r["notes"],
            created_at=r["created_at"], available=available,
        )

    def add_base(self, **fields: Any) -> BaseRecord:
        values = {k: fields.get(k) for k in self._BASE_COLS}
        for k in ("target_modules", "module_shapes", "config"):
            if not isinstance(values[k], str):
                values[k] = json.dumps(values[k] if values[k] is not None else ({} if k != "target_modules" else []))
        values["notes"] = values["notes"] or ""
        try:
            with self.transaction() as c:
                cols = ", ".join(self._BASE_COLS) + ", created_at"
                marks = ", ".join("?" for _ in self._BASE_COLS) + ", ?"
                c.execute(f"INSERT INTO bases ({cols}) VALUES ({marks})", [values[k] for k in self._BASE_COLS] + [_now()])
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"A base model named {values['name']!r} is already in the catalogue; choose another name with --name.") from None
        return self.get_base(str(values["name"]))

    def update_base(self, base_name: str, /, **fields: Any) -> BaseRecord:
        base = self.get_base(base_name)
        sets, args = [], []
        for k, v in fields.items():
            if k not in self._BASE_COLS:
                raise ValueError(k)
            if k in ("target_modules", "module_shapes", "config") and not isinstance(v, str):
                v = json.dumps(v)
            sets.append(f"{k} = ?")
            args.append(v)
        try:
            with self.transaction() as c:
                c.execute(f"UPDATE bases SET {', '.join(sets)} WHERE id = ?", args + [base.id])
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"A base model named {fields.get('name')!r} is already in the catalogue.") from None
        return self.get_base(fields.get("name", base.name))

    def get_base(self, name: str) -> BaseRecord:
        r = self.conn.execute("SELECT * FROM bases WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"No base model named {name!r} is in the catalogue (see 'adapterstudio base list').")
        return self._base_from_row(r)

    def find_base(self, name: str) -> BaseRecord | None:
        try:
            return self.get_base(name)
        except NotFound:
            return None

    def get_base_by_id(self, base_id: int) -> BaseRecord:
        r = self.conn.execute("SELECT * FROM bases WHERE id = ?", (base_id,)).fetchone()
        if r is None:
            raise NotFound(f"No base model with id {base_id}.")
        return self._base_from_row(r)

    def base_details(self, name: str) -> tuple[dict[str, list[int]], dict[str, Any]]:
        """(module shapes, config.json) of a base, for compatibility checks."""
        r = self.conn.execute("SELECT module_shapes, config FROM bases WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"No base model named {name!r} is in the catalogue.")
        return json.loads(r["module_shapes"]), json.loads(r["config"])

    def list_bases(self) -> list[BaseRecord]:
        return [self._base_from_row(r) for r in self.conn.execute("SELECT * FROM bases ORDER BY name")]

    def match_base(self, ref: str | None) -> BaseRecord | None:
        """The base an adapter's ``base_model_name_or_path`` refers to, if catalogued."""
        if not ref:
            return None
        candidates = {ref, ref.rstrip("/")}
        try:
            candidates.add(str(Path(ref).expanduser().resolve()))
        except (OSError, RuntimeError):
            pass
        marks = ", ".join("?" for _ in candidates)
        args = list(candidates)
        r = self.conn.execute(
            f"SELECT * FROM bases WHERE name IN ({marks}) OR hub_id IN ({marks}) OR path IN ({marks}) ORDER BY id LIMIT 1",
            args * 3,
        ).fetchone()
        return self._base_from_row(r) if r else None

    def remove_base(self, name: str) -> BaseRecord:
        base = self.get_base(name)
        with self.transaction() as c:
            c.execute("UPDATE adapters SET compatible = NULL, compat_reason = '', updated_at = ? WHERE base_id = ?", (_now(), base.id))
            c.execute("DELETE FROM bases WHERE id = ?", (base.id,))
        return base

    # -- blobs and adapter folders -----------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / sha256[:2] / sha256

    @contextmanager
    def _writing_files(self, needed: int | None = None) -> Iterator[None]:
        """File writes into the library: a full disk or a refusal to write, said in the user's terms."""
        self.require_writable()
        try:
            yield
        except DiskFull as exc:
            raise DiskFull(self.root, needed or exc.needed) from exc
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(self.root, needed) from exc
            if exc.errno in _NO_WRITE:
                raise ReadOnlyLibrary(self.root) from exc
            raise

    def put_blob(self, src: Path, sha256: str) -> Path:
        """Store *src* under its hash (once); returns the blob path.

        The blob may be deleted again by a concurrent remove before the import that stored
        it commits; :meth:`stage_adapter_folder` and :meth:`insert_adapter` cope with that."""
        dst = self.blob_path(sha256)
        size = src.stat().st_size
        try:
            if dst.stat().st_size == size:
                return dst
        except FileNotFoundError:
            pass  # not stored yet (or removed this instant): store it
        with src.open("rb") as fh, self._writing_files(size):  # (a source we cannot read is not the library's fault)
            with atomic_output(dst, "wb", needed=size) as out:
                shutil.copyfileobj(fh, out, CHUNK)
            try:
                os.chmod(dst, 0o444)
            except OSError:
                pass  # a blob left writable is still correct; only a guard against accidents is lost
        return dst

    def stage_adapter_folder(self, files: list[tuple[str, str]] | list[tuple[str, str, Path]]) -> tuple[str, Path]:
        """Build ``adapters/<uid>`` from blobs ``[(relpath, sha256[, source file])]``; hard links where possible.

        A blob that a concurrent remove deleted since it was stored is replaced by a copy of
        its source file (given as the third item); :meth:`insert_adapter` then links it back."""
        uid = uuid.uuid4().hex
        staging = self.adapters_dir / f".staging-{uid}"
        with self._writing_files():
            staging.mkdir(parents=True)
            try:
                for item in files:
                    rel, sha = item[0], item[1]
                    src = Path(item[2]) if len(item) > 2 else None
                    dst = staging / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    self._place(self.blob_path(sha), dst, src)
                final = self.adapters_dir / uid
                os.replace(staging, final)
                fsync_dir(self.adapters_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return uid, final

    @staticmethod
    def _place(blob: Path, dst: Path, src: Path | None) -> None:
        """Hard-link *blob* to *dst* (copy where links are not supported); from *src* if the blob is gone."""
        try:
            os.link(blob, dst)
            return
        except FileNotFoundError:
            pass  # the blob was removed meanwhile: fall back to the source below
        except OSError:
            try:
                shutil.copyfile(blob, dst)  # no hard links on this file system
                return
            except FileNotFoundError:
                pass  # removed meanwhile, as above
        if src is None:
            raise FileNotFoundError(errno.ENOENT, "stored file removed while in use", str(blob))
        shutil.copyfile(src, dst)

    def _ensure_blob(self, sha: str, staged: Path, size: int) -> None:
        """Under the write lock: make sure blob *sha* exists, linking it back from *staged* if a remove took it."""
        blob = self.blob_path(sha)
        if blob.is_file():
            return
        blob.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(staged, blob)
        except FileExistsError:
            return  # an import stored it this instant; the content is the same by its name
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            with atomic_output(blob, "wb", needed=size) as out, staged.open("rb") as fh:
                shutil.copyfileobj(fh, out, CHUNK)
        try:
            os.chmod(blob, 0o444)
        except OSError:
            pass  # as in put_blob: a writable blob is still correct

    # -- adapters --------------------------------------------------------------
    # Columns for listing: everything but the large JSON blobs (config, lineage), with the
    # tags folded in, so listing 10,000 adapters is one query and no per-row lookups.
    _LIST_COLS = (
        "a.id, a.uid, a.name, b.name, a.base_ref, a.peft_type, a.task_type, a.rank, a.target_modules,"
        " a.size_bytes, a.compatible, a.compat_reason, a.notes, a.source, a.source_ref, a.run_id, p.name,"
        " a.weights_format, a.created_at, a.updated_at,"
        # JSON, not a joined string: a tag may contain any character, even a would-be separator
        " (SELECT json_group_array(tag) FROM (SELECT tag FROM adapter_tags t WHERE t.adapter_id = a.id ORDER BY tag))"
    )
    _FROM = " FROM adapters a LEFT JOIN bases b ON b.id = a.base_id LEFT JOIN adapters p ON p.id = a.parent_id"

    def _adapter_from_tuple(self, r: tuple[Any, ...], _targets: dict[str, list[str]] | None = None) -> AdapterRecord:
        comp = r[10]
        if _targets is not None:
            targets = _targets.get(r[8])
            if targets is None:
                targets = _targets[r[8]] = json.loads(r[8])
            targets = list(targets)
        else:
            targets = json.loads(r[8])
        return AdapterRecord(
            id=r[0], uid=r[1], name=r[2], base=r[3], base_ref=r[4], peft_type=r[5], task_type=r[6], rank=r[7],
            target_modules=targets, size_bytes=r[9], compatible=None if comp is None else bool(comp),
            compat_reason=r[11], path=self._adapters_prefix + r[1], tags=_tags(r[20]),
            notes=r[12], source=r[13], source_ref=r[14], run_id=r[15], parent=r[16], weights_format=r[17],
            created_at=r[18], updated_at=r[19],
        )

    def _select(self, where: str, args: list[Any] | tuple[Any, ...], order: str = "",
                limit: str = "") -> list[tuple[Any, ...]]:
        c = self.conn
        c.row_factory = None
        try:
            return c.execute(f"SELECT {self._LIST_COLS}{self._FROM}{where}{order}{limit}", args).fetchall()
        finally:
            c.row_factory = sqlite3.Row

    @property
    def _adapters_prefix(self) -> str:
        return str(self.adapters_dir) + os.sep

    def insert_adapter(
        self, *, uid: str, name: str, base_id: int | None, base_ref: str | None, peft_type: str,
        task_type: str | None, rank: int | None, target_modules: list[str], size_bytes: int,
        compatible: bool | None, compat_reason: str, files: Iterable[tuple[str, str, int]],
        source: str, source_ref: str | None = None, run_id: str | None = None, parent_id: int | None = None,
        lineage: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
        weights_format: str = "safetensors", tags: Iterable[str] = (), notes: str = "",
    ) -> AdapterRecord:
        now = _now()
        files = list(files)
        folder = self.adapters_dir / uid
        try:
            with self.transaction() as c:
                # Under the write lock, so no remove can take a blob between this and the commit.
                for rel, sha, size in files:
                    self._ensure_blob(sha, folder / rel, size)
                cur = c.execute(
                    "INSERT INTO adapters (uid, name, base_id, base_ref, peft_type, task_type, rank, target_modules,"
                    " size_bytes, compatible, compat_reason, notes, source, source_ref, run_id, parent_id, lineage,"
                    " config, weights_format, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (uid, name, base_id, base_ref, peft_type, task_type, rank, json.dumps(target_modules), size_bytes,
                     None if compatible is None else int(compatible), compat_reason, notes, source, source_ref, run_id,
                     parent_id, json.dumps(lineage or {}), json.dumps(config or {}), weights_format, now, now),
                )
                aid = cur.lastrowid
                c.executemany("INSERT INTO adapter_files (adapter_id, relpath, sha256, size) VALUES (?,?,?,?)",
                              [(aid, rel, sha, size) for rel, sha, size in files])
                c.executemany("INSERT OR IGNORE INTO adapter_tags (adapter_id, tag) VALUES (?, ?)", [(aid, t) for t in tags])
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"An adapter named {name!r} is already in the catalogue; choose another name with --name.") from None
        return self.get_adapter(name)

    def get_adapter(self, name: str, full: bool = True) -> AdapterRecord:
        rows = self._select(" WHERE a.name = ?", (name,))
        if not rows:
            raise NotFound(f"No adapter named {name!r} is in the catalogue (see 'adapterstudio adapter list').")
        rec = self._adapter_from_tuple(rows[0])
        if full:
            rec.files = [AdapterFile(*f) for f in self.conn.execute(
                "SELECT relpath, sha256, size FROM adapter_files WHERE adapter_id = ? ORDER BY relpath", (rec.id,))]
            rec.lineage = json.loads(self.conn.execute("SELECT lineage FROM adapters WHERE id = ?", (rec.id,)).fetchone()[0])
        return rec

    def find_adapter(self, name: str) -> AdapterRecord | None:
        try:
            return self.get_adapter(name)
        except NotFound:
            return None

    def adapter_config(self, name: str) -> dict[str, Any]:
        r = self.conn.execute("SELECT config FROM adapters WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"No adapter named {name!r} is in the catalogue.")
        config: dict[str, Any] = json.loads(r["config"])
        return config

    def list_adapters(
        self, *, base: str | None = None, search: str | None = None, tag: str | None = None,
        task_type: str | None = None, peft_type: str | None = None, base_missing: bool | None = None,
        order: str = "name", limit: int | None = None, offset: int = 0,
    ) -> list[AdapterRecord]:
        where, args = [], []
        if base is not None:
            where.append("b.name = ?")
            args.append(base)
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(a.name LIKE ? ESCAPE '\\' OR a.notes LIKE ? ESCAPE '\\' OR a.base_ref LIKE ? ESCAPE '\\'"
                         " OR a.id IN (SELECT adapter_id FROM adapter_tags WHERE tag LIKE ? ESCAPE '\\'))")
            args += [like] * 4
        if tag:
            where.append("a.id IN (SELECT adapter_id FROM adapter_tags WHERE tag = ?)")
            args.append(tag)
        if task_type:
            where.append("a.task_type = ? COLLATE NOCASE")
            args.append(task_type)
        if peft_type:
            where.append("a.peft_type = ? COLLATE NOCASE")
            args.append(peft_type)
        if base_missing is not None:
            where.append("a.base_id IS NULL" if base_missing else "a.base_id IS NOT NULL")
        orders = {"name": "a.name COLLATE NOCASE", "created": "a.created_at DESC", "size": "a.size_bytes DESC"}
        rows = self._select(
            " WHERE " + " AND ".join(where) if where else "", args, f" ORDER BY {orders.get(order, orders['name'])}",
            f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else "",
        )
        conv = self._adapter_from_tuple
        cache: dict[str, list[str]] = {}
        # Building thousands of small records triggers the cyclic GC repeatedly for
        # nothing (records hold no cycles); pausing it halves the time for big lists.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return [conv(r, cache) for r in rows]
        finally:
            if was_enabled:
                gc.enable()

    def count_adapters(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0])

    def update_adapter(self, adapter_name: str, /, **fields: Any) -> AdapterRecord:
        name = adapter_name
        allowed = {"name", "notes", "base_id", "compatible", "compat_reason", "lineage", "run_id", "parent_id", "source_ref"}
        a = self.get_adapter(name, full=False)
        sets, args = [], []
        for k, v in fields.items():
            if k not in allowed:
                raise ValueError(k)
            if k == "lineage":
                v = json.dumps(v)
            if k == "compatible" and v is not None:
                v = int(v)
            sets.append(f"{k} = ?")
            args.append(v)
        sets.append("updated_at = ?")
        args.append(_now())
        try:
            with self.transaction() as c:
                c.execute(f"UPDATE adapters SET {', '.join(sets)} WHERE id = ?", args + [a.id])
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"An adapter named {fields.get('name')!r} is already in the catalogue.") from None
        return self.get_adapter(fields.get("name", a.name))

    def set_tags(self, name: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> AdapterRecord:
        """Add and remove tags. A tag to remove matches exactly, or as :func:`~adapterstudio.core.names.printable`
        shows it, or without its hidden characters, so tags stored before they were refused can go."""
        a = self.get_adapter(name, full=False)
        remove = list(remove)
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO adapter_tags (adapter_id, tag) VALUES (?, ?)", [(a.id, t) for t in add])
            if remove:
                current = [r[0] for r in c.execute("SELECT tag FROM adapter_tags WHERE adapter_id = ?", (a.id,))]
                gone = [t for t in current if any(same_text(t, r) for r in remove)]
                c.executemany("DELETE FROM adapter_tags WHERE adapter_id = ? AND tag = ?", [(a.id, t) for t in gone])
            c.execute("UPDATE adapters SET updated_at = ? WHERE id = ?", (_now(), a.id))
        return self.get_adapter(name)

    def list_tags(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self.conn.execute("SELECT tag, COUNT(*) FROM adapter_tags GROUP BY tag ORDER BY tag")]

    def remove_adapter(self, name: str) -> AdapterRecord:
        """Delete the entry, then its folder, then blobs no other entry refers to."""
        a = self.get_adapter(name)
        with self.transaction() as c:
            if c.execute("DELETE FROM adapters WHERE id = ?", (a.id,)).rowcount == 0:
                raise NotFound(f"No adapter named {name!r} is in the catalogue (it was removed meanwhile).")
        shutil.rmtree(self.adapters_dir / a.uid, ignore_errors=True)
        self._drop_unused_blobs({f.sha256 for f in a.files})
        return a

    def _drop_unused_blobs(self, shas: Iterable[str]) -> None:
        """Delete the blobs no committed row refers to, holding the write lock (see the module notes)."""
        shas = sorted(shas)
        if not shas:
            return
        with self.transaction() as c:
            for sha in shas:
                if c.execute("SELECT 1 FROM adapter_files WHERE sha256 = ? LIMIT 1", (sha,)).fetchone() is None:
                    try:
                        _unlink_stored(self.blob_path(sha))
                    except OSError:
                        pass  # cannot delete it now: an unused blob, which 'catalogue check --fix' removes later

    # -- health ----------------------------------------------------------------
    @contextmanager
    def _settled(self) -> Iterator[sqlite3.Connection]:
        """A view in which the index and the files agree: the write lock (no writer can be
        between a row and its files), or a read snapshot in a read-only library."""
        if self.readonly:
            c = self.conn
            c.execute("BEGIN")
            try:
                yield c
            finally:
                c.execute("COMMIT")
        else:
            with self.transaction() as c:
                yield c

    def check(self, fix: bool = False, grace_seconds: float = 600.0) -> dict[str, Any]:
        """Integrity check plus orphaned files (left by a kill between write and commit).

        Safe while other processes import and remove: the index is read as one snapshot,
        files that vanish while they are looked at are skipped, and anything that looks
        missing is looked at again under the write lock before it is reported (an entry
        removed meanwhile is not damage). ``missing_blobs`` are stored files whose
        adapters still have their own hard links (only sharing is lost); ``fix`` links
        them back and deletes orphans (again checked under the lock)."""
        if fix:
            self.require_writable()
        c = self.conn
        c.execute("BEGIN")  # one read snapshot for everything below
        try:
            integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
            fk = c.execute("PRAGMA foreign_key_check").fetchall()
            uids = {r[0] for r in c.execute("SELECT uid FROM adapters")}
            shas = {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM adapter_files")}
        finally:
            c.execute("COMMIT")
        now = time.time()

        def old(p: Path) -> bool:
            try:
                return now - p.stat().st_mtime > grace_seconds
            except FileNotFoundError:
                return False  # removed meanwhile: not left behind

        def entries(folder: Path) -> list[Path]:
            try:
                return list(folder.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                return []

        orphan_dirs = [p for p in entries(self.adapters_dir) if p.name.removeprefix(".staging-") not in uids and old(p)]
        orphan_blobs = []
        for sub in entries(self.blobs_dir):
            for b in entries(sub):
                # an unreferenced blob, or an interrupted temp file (".name.xxx.tmp")
                if (b.name.startswith(".") or b.name not in shas) and old(b):
                    orphan_blobs.append(b)
        missing = sorted(u for u in uids if not (self.adapters_dir / u).is_dir())
        missing_blobs = sorted(h for h in shas if not self.blob_path(h).is_file())
        if missing or missing_blobs or (fix and (orphan_dirs or orphan_blobs)):
            with self._settled() as c:
                missing, missing_blobs = self._still_missing(c, missing, missing_blobs)
                if fix and not self.readonly:
                    self._fix(c, orphan_dirs, orphan_blobs, missing_blobs)
        return {
            "integrity": integrity,
            "foreign_key_violations": len(fk),
            "orphan_folders": len(orphan_dirs),
            "orphan_blobs": len(orphan_blobs),
            "missing_folders": missing,
            "missing_blobs": missing_blobs,
            "fixed": fix,
            "ok": integrity == "ok" and not fk and not missing,
        }

    def _still_missing(self, c: sqlite3.Connection, uids: list[str], shas: list[str]) -> tuple[list[str], list[str]]:
        """Of the adapter folders and blobs that looked missing, those still referenced and still absent."""
        def present(sql: str, keys: list[str]) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                found |= {r[0] for r in c.execute(sql.format(", ".join("?" for _ in part)), part)}
            return found

        live_uids = present("SELECT uid FROM adapters WHERE uid IN ({})", uids)
        live_shas = present("SELECT DISTINCT sha256 FROM adapter_files WHERE sha256 IN ({})", shas)
        return ([u for u in uids if u in live_uids and not (self.adapters_dir / u).is_dir()],
                [h for h in shas if h in live_shas and not self.blob_path(h).is_file()])

    def _fix(self, c: sqlite3.Connection, orphan_dirs: list[Path], orphan_blobs: list[Path], missing_blobs: list[str]) -> None:
        """Under the write lock: delete what no row refers to (re-read now), link back missing blobs."""
        uids = {r[0] for r in c.execute("SELECT uid FROM adapters")}
        shas = {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM adapter_files")}
        for p in orphan_dirs:
            if p.name.removeprefix(".staging-") in uids:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass  # a stray file we may not delete: reported again next time
        for b in orphan_blobs:
            if b.name.startswith(".") or b.name not in shas:
                try:
                    _unlink_stored(b)
                except OSError:
                    pass  # as above: reported again next time
        for sha in missing_blobs:
            for uid, rel, size in c.execute(
                    "SELECT a.uid, f.relpath, f.size FROM adapter_files f JOIN adapters a ON a.id = f.adapter_id"
                    " WHERE f.sha256 = ?", (sha,)).fetchall():
                staged = self.adapters_dir / uid / rel
                if staged.is_file() and staged.stat().st_size == size:
                    self._ensure_blob(sha, staged, size)
                    break
