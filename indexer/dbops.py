"""Online backup and integrity checks of the database file (never through the writer's connection)."""

from __future__ import annotations

import os
import time

import apsw

from indexer.errors import DatabaseError, UsageError
from indexer.store import connect


def backup(src_path: str, dest_path: str) -> dict:
    if not os.path.exists(src_path):
        raise UsageError(f"database {src_path} does not exist")
    if os.path.abspath(src_path) == os.path.abspath(dest_path):
        raise UsageError("backup destination is the database itself")
    tmp = dest_path + ".partial"
    t0 = time.monotonic()
    src = connect(src_path, readonly=True)
    try:
        dest = apsw.Connection(tmp)
        try:
            with dest.backup("main", src, "main") as b:
                while not b.done:
                    b.step(1024)  # pages per step: the writer is never blocked for long
            # a self-contained copy: no -wal file to carry along
            dest.execute("PRAGMA journal_mode=DELETE")
        finally:
            dest.close()
    except apsw.Error as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise DatabaseError(f"backup of {src_path} to {dest_path} failed: {exc}",
                            hint="check free space and permissions at the destination") from None
    finally:
        src.close()
    os.replace(tmp, dest_path)
    return {"source": src_path, "backup": dest_path, "bytes": os.path.getsize(dest_path),
            "seconds": round(time.monotonic() - t0, 3)}


def check(path: str, chain: str) -> dict:
    if not os.path.exists(path):
        raise UsageError(f"database {path} does not exist")
    conn = connect(path, readonly=True)
    problems: list[str] = []
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if integrity != ["ok"]:
            problems.extend(integrity[:20])
        # current balances must equal the last ledger row of each holder
        bad = conn.execute(
            "SELECT count(*) FROM balances b WHERE b.balance != (SELECT l.balance FROM balance_ledger l "
            "WHERE l.token=b.token AND l.holder=b.address ORDER BY l.id DESC LIMIT 1)").fetchall()[0][0]
        if bad:
            problems.append(f"{bad} balance(s) differ from their ledger")
        neg = conn.execute("SELECT count(*) FROM balance_ledger WHERE balance LIKE '-%'").fetchall()[0][0]
        if neg:
            problems.append(f"{neg} negative ledger balance(s)")
        cur = conn.execute("SELECT block_number FROM cursor WHERE chain=?", (chain,)).fetchall()
        if cur:
            above = conn.execute("SELECT count(*) FROM events WHERE block_number > ?", (cur[0][0],)).fetchall()[0][0]
            if above:
                problems.append(f"{above} event(s) above the cursor block {cur[0][0]}")
        version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    except apsw.Error as exc:
        problems.append(f"SQLite error: {exc}")
        version = None
    finally:
        conn.close()
    return {"database": path, "schema_version": version, "ok": not problems, "problems": problems}
