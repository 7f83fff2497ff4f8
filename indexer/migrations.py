"""Schema versions. A new database gets schema.sql whole; an older one is upgraded step by step.

`PRAGMA user_version` holds the version. Each step upgrades from version k to k+1 and runs in the same
transaction as the version bump, so an interrupted upgrade leaves the old version intact.
"""

from __future__ import annotations

import re

import apsw

from indexer.errors import DatabaseError

# version -> SQL that upgrades a database of version (version - 1) to `version`
STEPS: dict[int, str] = {
    # 2: self-audit results are kept
    2: """
    CREATE TABLE IF NOT EXISTS verify_runs (
        id              INTEGER PRIMARY KEY,
        chain           TEXT NOT NULL,
        block_number    INTEGER NOT NULL,
        holders_checked INTEGER NOT NULL,
        mismatches      INTEGER NOT NULL,
        details         TEXT NOT NULL DEFAULT '[]',
        finished_at     REAL NOT NULL
    ) STRICT;
    """,
}


def latest_version(schema: str) -> int:
    m = re.search(r"PRAGMA\s+user_version\s*=\s*(\d+)", schema)
    if not m:
        raise RuntimeError("schema.sql does not set PRAGMA user_version")
    return int(m.group(1))


def current_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchall()[0][0]


def migrate(conn: apsw.Connection, schema: str, path: str = "") -> tuple[int, int]:
    """Bring the database to the latest version. Returns (from_version, to_version)."""
    target = latest_version(schema)
    version = current_version(conn)
    if version > target:
        raise DatabaseError(f"database {path} has schema version {version}, this indexer knows up to {target}",
                            hint="upgrade the indexer; never open a database with an older release")
    if version == target:
        return version, version
    with conn:
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchall()[0][0]
            if tables:
                raise DatabaseError(f"database {path} has tables but no indexer schema version",
                                    hint="point database.path at an indexer database or a new file")
            conn.execute(schema)
        else:
            for step in range(version + 1, target + 1):
                if step not in STEPS:
                    raise DatabaseError(f"no migration from schema version {step - 1} to {step}")
                conn.execute(STEPS[step])
                conn.execute(f"PRAGMA user_version = {step}")
    return version, target
