"""The catalogue's SQLite schema: its version and the migrations that reach it.

:class:`~adapterstudio.core.catalogue.Catalogue` applies the entries a library lacks, in
one transaction, when it opens the library for writing; a library written by a newer
version (a higher ``user_version``) is refused.
"""

from __future__ import annotations

from pathlib import Path

from adapterstudio.core.errors import InvalidInput

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


def refuse_newer(version: int, db_path: Path) -> None:
    """Refuse a catalogue at schema *version* if a newer AdapterStudio wrote it (this one cannot know its tables)."""
    if version > SCHEMA_VERSION:
        raise InvalidInput(f"The catalogue {db_path} was written by a newer AdapterStudio (schema {version}); "
                           "upgrade the app.")
