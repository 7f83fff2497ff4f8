"""A database created by the previous schema version is upgraded in place, its data intact."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from indexer import migrations
from indexer.errors import DatabaseError
from indexer.models import ZERO_ADDRESS, BlockRef, DecodedBlock, Event
from indexer.store import Store, schema_sql

V1 = Path(__file__).parent / "data" / "schema" / "schema_v1.sql"
TOKEN = "0x" + "11" * 20
HOLDER = "0x" + "aa" * 20


def make_v1_database(path: Path) -> None:
    """A v1 database with real content, written the way release 1 wrote it."""
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(V1.read_text())
    conn.execute("INSERT INTO meta VALUES ('chain','devchain'), ('kind','evm')")
    conn.execute("INSERT INTO cursor VALUES ('devchain', 5, '0x05', 1005, 0, 0)")
    conn.execute("INSERT INTO blocks VALUES ('devchain', 5, '0x05', '0x04', 1005, 1)")
    conn.execute("INSERT INTO events (pos, chain, token, block_number, block_hash, transaction_hash, log_index, "
                 "event_type, from_address, to_address, amount, data, timestamp) VALUES "
                 "(?, 'devchain', ?, 5, '0x05', '0xt', 0, 'mint', ?, ?, '1000', '{}', 1005)",
                 (5 << 24, TOKEN, ZERO_ADDRESS, HOLDER))
    conn.execute("INSERT INTO balance_ledger VALUES (?, 'devchain', ?, ?, 5, 0, '1000', ?)",
                 ((5 << 24) << 1 | 1, TOKEN, HOLDER, "1000".rjust(78, "0")))
    conn.execute("INSERT INTO balances VALUES ('devchain', ?, ?, ?, 5, 1005)", (TOKEN, HOLDER, "1000".rjust(78, "0")))
    conn.execute("INSERT INTO token_state (chain, token, name, symbol, decimals, total_supply, last_updated_block) "
                 "VALUES ('devchain', ?, 'Old Co', 'OLD', 0, '1000', 5)", (TOKEN,))
    conn.close()


def test_v1_database_is_upgraded_with_its_data(tmp_path):
    db = tmp_path / "old.db"
    make_v1_database(db)
    assert migrations.latest_version(V1.read_text()) == 1
    store = Store(str(db), chain="devchain").open()
    try:
        assert migrations.current_version(store.conn) == migrations.latest_version(schema_sql()) == 2
        assert store.conn.execute("SELECT count(*) FROM verify_runs").fetchall() == [(0,)]
        assert store.cursor().number == 5
        # the upgraded database keeps working: the next block builds on the old balances
        store.commit_blocks([DecodedBlock(BlockRef(6, "0x06", "0x05", 1006), (
            Event(TOKEN, "burn", "0xt2", 0, HOLDER, ZERO_ADDRESS, 400, moves_balance=True),))])
        bal = store.conn.execute("SELECT balance FROM holder_balances").fetchall()
        assert bal == [("600",)]
    finally:
        store.close()


def test_upgrade_is_atomic(tmp_path, monkeypatch):
    db = tmp_path / "old.db"
    make_v1_database(db)
    monkeypatch.setitem(migrations.STEPS, 2, migrations.STEPS[2] + "\nTHIS IS NOT SQL;")
    with pytest.raises(DatabaseError):
        Store(str(db), chain="devchain").open()
    conn = apsw.Connection(str(db))
    assert migrations.current_version(conn) == 1
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name='verify_runs'").fetchall()
    conn.close()


def test_cli_db_migrate_reports_versions(tmp_path):
    from helpers import cli_json, write_config
    db = tmp_path / "old.db"
    make_v1_database(db)
    cfg = write_config(tmp_path / "c.toml", ws_url="ws://127.0.0.1:1", http_url=None,
                       tokens=[{"address": TOKEN}], db=db)
    out = cli_json(cfg, "db", "migrate")
    assert (out["from_version"], out["to_version"], out["created"]) == (1, 2, False)
