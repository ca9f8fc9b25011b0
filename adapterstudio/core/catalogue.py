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
"""

from __future__ import annotations

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

from adapterstudio.core.errors import AlreadyExists, InvalidInput, NotFound
from adapterstudio.core.fsutil import atomic_output, fsync_dir
from adapterstudio.core.records import AdapterFile, AdapterRecord, BaseRecord

SCHEMA_VERSION = 2

# Each entry upgrades the schema from version i to i+1. Never edit a released entry.
MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE bases (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        source TEXT NOT NULL,
        path TEXT,
        hub_id TEXT,
        revision TEXT,
        content_hash TEXT,
        architecture TEXT,
        model_type TEXT,
        num_parameters INTEGER,
        dtype TEXT,
        size_bytes INTEGER,
        target_modules TEXT NOT NULL DEFAULT '[]',
        module_shapes TEXT NOT NULL DEFAULT '{}',
        config TEXT NOT NULL DEFAULT '{}',
        notes TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE adapters (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        base_id INTEGER REFERENCES bases(id) ON DELETE SET NULL,
        base_ref TEXT,
        peft_type TEXT NOT NULL,
        task_type TEXT,
        rank INTEGER,
        target_modules TEXT NOT NULL DEFAULT '[]',
        size_bytes INTEGER NOT NULL,
        compatible INTEGER,
        compat_reason TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        source_ref TEXT,
        run_id TEXT,
        parent_id INTEGER REFERENCES adapters(id) ON DELETE SET NULL,
        weights_format TEXT NOT NULL DEFAULT 'safetensors',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        -- large JSON last: listing never reads past the small columns
        config TEXT NOT NULL DEFAULT '{}',
        lineage TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX adapters_base ON adapters(base_id);
    CREATE INDEX adapters_peft ON adapters(peft_type);
    CREATE INDEX adapters_task ON adapters(task_type);
    CREATE TABLE adapter_tags (
        adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
        tag TEXT NOT NULL COLLATE NOCASE,
        PRIMARY KEY (adapter_id, tag)
    );
    CREATE INDEX adapter_tags_tag ON adapter_tags(tag);
    CREATE TABLE adapter_files (
        adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
        relpath TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (adapter_id, relpath)
    );
    CREATE INDEX adapter_files_sha ON adapter_files(sha256);
    """,
    # 1 -> 2: training runs and the persistent job queue
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        spec TEXT NOT NULL DEFAULT '{}',
        base_id INTEGER REFERENCES bases(id) ON DELETE SET NULL,
        adapter_id INTEGER REFERENCES adapters(id) ON DELETE SET NULL,
        run_dir TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        world_size INTEGER,
        last_checkpoint TEXT,
        error TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        queue_position REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX runs_status ON runs(status);
    """,
]


def _now() -> float:
    return time.time()


class Catalogue:
    """The library index. One instance may be shared by threads (one connection each)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.db_path = self.root / "catalogue.db"
        self.blobs_dir = self.root / "blobs"
        self.adapters_dir = self.root / "adapters"
        self.runs_dir = self.root / "runs"
        self._local = threading.local()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in (self.blobs_dir, self.adapters_dir, self.runs_dir):
                d.mkdir(exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"The library folder {self.root} cannot be created: {exc.strerror or exc}.") from None
        self._migrate()

    # -- connection handling -------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise InvalidInput(f"The catalogue {self.db_path} cannot be opened: {exc}.") from None
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA busy_timeout = 30000")
            try:
                c.execute("PRAGMA journal_mode = WAL")
            except sqlite3.DatabaseError as exc:
                raise InvalidInput(f"{self.db_path} is not a valid catalogue database ({exc}).") from None
            c.execute("PRAGMA synchronous = NORMAL")
            c.execute("PRAGMA foreign_keys = ON")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InvalidInput(
                    f"The catalogue {self.db_path} was written by a newer AdapterStudio (schema {version}); upgrade the app."
                )
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
        return self.get_base(values["name"])

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

    def put_blob(self, src: Path, sha256: str) -> Path:
        """Store *src* under its hash (once); returns the blob path."""
        dst = self.blob_path(sha256)
        if dst.exists() and dst.stat().st_size == src.stat().st_size:
            return dst
        with atomic_output(dst, "wb") as out, src.open("rb") as fh:
            shutil.copyfileobj(fh, out, 4 * 1024 * 1024)
        try:
            os.chmod(dst, 0o444)
        except OSError:
            pass
        return dst

    def stage_adapter_folder(self, files: list[tuple[str, str]]) -> tuple[str, Path]:
        """Build ``adapters/<uid>`` from blobs ``[(relpath, sha256)]``; hard links where possible."""
        uid = uuid.uuid4().hex
        staging = self.adapters_dir / f".staging-{uid}"
        staging.mkdir(parents=True)
        try:
            for rel, sha in files:
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                blob = self.blob_path(sha)
                try:
                    os.link(blob, dst)
                except OSError:
                    shutil.copyfile(blob, dst)
            final = self.adapters_dir / uid
            os.replace(staging, final)
            fsync_dir(self.adapters_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return uid, final

    # -- adapters --------------------------------------------------------------
    # Columns for listing: everything but the large JSON blobs (config, lineage), with the
    # tags folded in, so listing 10,000 adapters is one query and no per-row lookups.
    _LIST_COLS = (
        "a.id, a.uid, a.name, b.name, a.base_ref, a.peft_type, a.task_type, a.rank, a.target_modules,"
        " a.size_bytes, a.compatible, a.compat_reason, a.notes, a.source, a.source_ref, a.run_id, p.name,"
        " a.weights_format, a.created_at, a.updated_at,"
        " (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM adapter_tags t WHERE t.adapter_id = a.id ORDER BY tag))"
    )
    _FROM = " FROM adapters a LEFT JOIN bases b ON b.id = a.base_id LEFT JOIN adapters p ON p.id = a.parent_id"

    def _adapter_from_tuple(self, r: tuple, _targets: dict[str, list[str]] | None = None) -> AdapterRecord:
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
            compat_reason=r[11], path=self._adapters_prefix + r[1], tags=r[20].split("\x1f") if r[20] else [],
            notes=r[12], source=r[13], source_ref=r[14], run_id=r[15], parent=r[16], weights_format=r[17],
            created_at=r[18], updated_at=r[19],
        )

    def _select(self, where: str, args: list | tuple, order: str = "", limit: str = "") -> list[tuple]:
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
        try:
            with self.transaction() as c:
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
        return json.loads(r["config"])

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
        return self.conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0]

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
        a = self.get_adapter(name, full=False)
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO adapter_tags (adapter_id, tag) VALUES (?, ?)", [(a.id, t) for t in add])
            c.executemany("DELETE FROM adapter_tags WHERE adapter_id = ? AND tag = ?", [(a.id, t) for t in remove])
            c.execute("UPDATE adapters SET updated_at = ? WHERE id = ?", (_now(), a.id))
        return self.get_adapter(name)

    def list_tags(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self.conn.execute("SELECT tag, COUNT(*) FROM adapter_tags GROUP BY tag ORDER BY tag")]

    def remove_adapter(self, name: str) -> AdapterRecord:
        """Delete the entry, then its folder, then blobs no other entry refers to."""
        a = self.get_adapter(name)
        with self.transaction() as c:
            c.execute("DELETE FROM adapters WHERE id = ?", (a.id,))
        shutil.rmtree(self.adapters_dir / a.uid, ignore_errors=True)
        for f in a.files:
            self._drop_blob_if_unused(f.sha256)
        return a

    def _drop_blob_if_unused(self, sha: str) -> None:
        used = self.conn.execute("SELECT 1 FROM adapter_files WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()
        if not used:
            p = self.blob_path(sha)
            try:
                os.chmod(p, 0o644)
                p.unlink()
            except OSError:
                pass

    # -- health ----------------------------------------------------------------
    def check(self, fix: bool = False, grace_seconds: float = 600.0) -> dict[str, Any]:
        """Integrity check plus orphaned files (left by a kill between write and commit)."""
        integrity = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
        fk = self.conn.execute("PRAGMA foreign_key_check").fetchall()
        uids = {r[0] for r in self.conn.execute("SELECT uid FROM adapters")}
        shas = {r[0] for r in self.conn.execute("SELECT DISTINCT sha256 FROM adapter_files")}
        now = time.time()
        orphan_dirs, orphan_blobs, missing = [], [], []
        for p in self.adapters_dir.iterdir():
            name = p.name.removeprefix(".staging-")
            if name not in uids and now - p.stat().st_mtime > grace_seconds:
                orphan_dirs.append(p)
        for sub in self.blobs_dir.iterdir():
            if sub.is_dir():
                for b in sub.iterdir():
                    if b.name not in shas and not b.name.startswith(".") and now - b.stat().st_mtime > grace_seconds:
                        orphan_blobs.append(b)
                    elif b.name.startswith(".") and now - b.stat().st_mtime > grace_seconds:
                        orphan_blobs.append(b)  # an interrupted temp file
        for uid in uids:
            if not (self.adapters_dir / uid).is_dir():
                missing.append(uid)
        if fix:
            for p in orphan_dirs:
                shutil.rmtree(p, ignore_errors=True)
            for b in orphan_blobs:
                try:
                    os.chmod(b, 0o644)
                    b.unlink()
                except OSError:
                    pass
        return {
            "integrity": integrity,
            "foreign_key_violations": len(fk),
            "orphan_folders": len(orphan_dirs),
            "orphan_blobs": len(orphan_blobs),
            "missing_folders": missing,
            "fixed": fix,
            "ok": integrity == "ok" and not fk and not missing,
        }
