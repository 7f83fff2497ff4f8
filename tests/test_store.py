"""Store on real SQLite files: whole blocks or nothing, exact uint256, rollback to an ancestor, open-time checks."""

from __future__ import annotations

import hashlib
import os

import apsw
import pytest

from indexer import migrations
from indexer.amounts import U256_MAX, pad_u256
from indexer.errors import ChainMismatchError, DatabaseError, DatabaseLockedError
from indexer.models import ZERO_ADDRESS, BlockRef, DecodedBlock, Event, SkippedLog
from indexer.store import IntegrityError, Store, schema_sql

CHAIN = "testchain"
TOKEN = "0x" + "a1" * 20
TOKEN2 = "0x" + "a2" * 20
REGISTRY = "0x" + "e1" * 20
A, B, C, D, E = ("0x" + c * 40 for c in "abcde")


def bhash(n: int, fork: str = "") -> str:
    return "0x" + hashlib.sha256(f"{fork}{n}".encode()).hexdigest()


def ref(n: int, fork: str = "", ts: int | None = None) -> BlockRef:
    return BlockRef(n, bhash(n, fork), bhash(n - 1, fork if fork else ""), 1_000 + 12 * n if ts is None else ts)


def tx(n: int, i: int, fork: str = "") -> str:
    return "0x" + hashlib.sha256(f"tx{fork}{n}.{i}".encode()).hexdigest()


def move(frm: str | None, to: str | None, amount: int, li: int, token: str = TOKEN, n: int = 0) -> Event:
    kind = "mint" if frm in (None, ZERO_ADDRESS) else "burn" if to in (None, ZERO_ADDRESS) else "transfer"
    return Event(token, kind, tx(n, li), li, frm or ZERO_ADDRESS, to or ZERO_ADDRESS, amount, moves_balance=True)


def label(event_type: str, li: int, token: str = TOKEN, **kw) -> Event:
    return Event(token, event_type, tx(0, li), li, **kw)


def block(n: int, *events: Event, fork: str = "", ts: int | None = None, **kw) -> DecodedBlock:
    return DecodedBlock(ref(n, fork, ts), tuple(events), **kw)


def open_store(path, *, chain: str = CHAIN, chain_id: int | None = 1, kind: str = "evm") -> Store:
    return Store(str(path), chain=chain, kind=kind, chain_id=chain_id).open()


def dump(store: Store) -> dict[str, list]:
    """Every table's rows, sorted; the cursor without its wall-clock commit time."""
    conn = store.conn
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    out = {}
    for t in tables:
        cols = [c[1] for c in conn.execute(f"PRAGMA table_info({t})") if not (t == "cursor" and c[1] == "updated_at")]
        out[t] = sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall(), key=repr)
    return out


def balances(store: Store, token: str = TOKEN) -> dict[str, int]:
    return {a: int(b) for a, b in store.conn.execute(
        "SELECT address, balance FROM holder_balances WHERE token=? AND balance != '0'", (token,))}


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "db" / "index.db")
    yield s
    s.close()


# ---- schema versions ------------------------------------------------------------------------------

def test_migrate_new_database_sets_user_version(tmp_path):
    conn = apsw.Connection(str(tmp_path / "new.db"))
    target = migrations.latest_version(schema_sql())
    assert target >= 1
    assert migrations.migrate(conn, schema_sql(), "new.db") == (0, target)
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == target
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}
    assert {"meta", "cursor", "blocks", "events", "balance_ledger", "balances", "corporate_actions", "token_state",
            "token_state_history", "holder_state", "holder_state_history", "watched_contracts", "skipped_logs",
            "holder_balances"} <= names
    assert migrations.migrate(conn, schema_sql(), "new.db") == (target, target)  # idempotent


def test_migrate_refuses_foreign_database(tmp_path):
    conn = apsw.Connection(str(tmp_path / "other.db"))
    conn.execute("CREATE TABLE something (x)")
    with pytest.raises(DatabaseError, match="no indexer schema version"):
        migrations.migrate(conn, schema_sql(), "other.db")


def test_migrate_without_a_step_fails_and_keeps_the_old_version(tmp_path):
    conn = apsw.Connection(str(tmp_path / "v1.db"))
    migrations.migrate(conn, schema_sql())
    current = migrations.current_version(conn)
    future = f"PRAGMA user_version = {current + 1};"
    with pytest.raises(DatabaseError, match=f"no migration from schema version {current} to {current + 1}"):
        migrations.migrate(conn, future)
    assert migrations.current_version(conn) == current


def test_schema_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "newer.db"
    open_store(path).close()
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(DatabaseError, match="schema version 99") as info:
        open_store(path)
    assert info.value.hint and "upgrade" in info.value.hint
    # the failed open released its lock: the next error is the same, not "locked"
    with pytest.raises(DatabaseError, match="schema version 99"):
        open_store(path)


# ---- open-time checks ------------------------------------------------------------------------------

def test_second_open_of_the_same_file_is_locked(tmp_path):
    path = tmp_path / "index.db"
    first = open_store(path)
    try:
        with pytest.raises(DatabaseLockedError, match=f"pid {os.getpid()}") as info:
            open_store(path)
        assert info.value.hint
    finally:
        first.close()
    open_store(path).close()  # released on close


def test_corrupt_file_is_a_database_error_with_hint(tmp_path):
    path = tmp_path / "corrupt.db"
    junk = os.urandom(16384)
    path.write_bytes(b"\x00not sqlite\x00" + junk)
    for _ in range(2):  # the failed open must not leave its lock behind
        with pytest.raises(DatabaseError) as info:
            open_store(path)
        assert not isinstance(info.value, DatabaseLockedError)
        assert "corrupt" in str(info.value) and str(path) in str(info.value)
        assert info.value.hint and "backup" in info.value.hint
        assert info.value.exit_code == 3
    assert path.read_bytes()[12:] == junk  # left as it was for inspection


@pytest.mark.parametrize(("kw", "field"), [({"chain": "otherchain"}, "chain"), ({"chain_id": 5}, "chain_id"),
                                           ({"kind": "solana"}, "kind")])
def test_chain_mismatch(tmp_path, kw, field):
    path = tmp_path / "index.db"
    open_store(path).close()
    with pytest.raises(ChainMismatchError, match=field) as info:
        open_store(path, **kw)
    assert info.value.hint
    open_store(path).close()  # the right chain still opens (and the lock was released)


def test_genesis_mismatch(store):
    store.check_genesis("0x" + "01" * 32)
    store.check_genesis("0x" + "01" * 32)
    with pytest.raises(ChainMismatchError, match="genesis"):
        store.check_genesis("0x" + "02" * 32)


def test_data_survives_reopen(tmp_path):
    path = tmp_path / "index.db"
    s = open_store(path)
    s.commit_blocks([block(1, move(None, A, 100, 0))])
    s.close()
    s = open_store(path)
    try:
        assert s.cursor() == ref(1)
        assert s.first_block() == 1
        s.commit_blocks([block(2, move(A, B, 60, 0))])
        assert balances(s) == {A: 40, B: 60}
    finally:
        s.close()


# ---- writes: whole blocks, exact numbers -----------------------------------------------------------

def test_cursor_and_counts_after_commit(store):
    assert store.cursor() is None
    store.commit_blocks([block(5, move(None, A, 10, 0)), block(6), block(7, move(A, B, 3, 2))])
    assert store.cursor() == ref(7)
    assert store.first_block() == 5
    assert store.stored_blocks(5, 7) == [ref(7), ref(6), ref(5)]
    assert store.counts() == {"events": 2, "balance_ledger": 3, "corporate_actions": 1, "blocks": 3,
                              "skipped_logs": 0, "holders": 2}


def test_block_at_or_below_cursor_is_refused(store):
    store.commit_blocks([block(5, move(None, A, 10, 0))])
    before = dump(store)
    for bad in ([block(5, move(None, A, 10, 0))], [block(4)], [block(6), block(6)], [block(8), block(7)]):
        with pytest.raises(IntegrityError, match="not above the cursor"):
            store.commit_blocks(bad)
    assert dump(store) == before


def test_uint256_max_is_stored_exactly(store):
    store.commit_blocks([block(1, move(None, A, U256_MAX, 0))])
    row = store.conn.execute("SELECT balance FROM balances WHERE address=?", (A,)).fetchall()[0][0]
    assert row == str(U256_MAX) and len(row) == 78
    store.commit_blocks([block(2, move(A, B, U256_MAX - 1, 0))])
    assert balances(store) == {A: 1, B: U256_MAX - 1}
    assert store.conn.execute("SELECT amount FROM events WHERE block_number=2").fetchall() == [(str(U256_MAX - 1),)]
    deltas = store.conn.execute("SELECT holder, delta FROM balance_ledger WHERE block_number=2 ORDER BY id").fetchall()
    assert deltas == [(A, f"-{U256_MAX - 1}"), (B, str(U256_MAX - 1))]
    assert store.conn.execute("SELECT total_supply FROM token_state").fetchall() == [(str(U256_MAX),)]


def test_balances_sort_numerically_with_plain_order_by(store):
    amounts = {A: 9, B: 10, C: 100, D: 2**200, E: 2**200 + 1}
    store.commit_blocks([block(1, *(move(None, h, v, i) for i, (h, v) in enumerate(amounts.items())))])
    store.commit_blocks([block(2, move(B, A, 10, 0))])  # B drops to 0: kept as a zero row
    order = [r[0] for r in store.conn.execute("SELECT address FROM balances ORDER BY balance")]
    assert order == [B, A, C, D, E]
    desc = [int(r[0]) for r in store.conn.execute("SELECT balance FROM balances ORDER BY balance DESC")]
    assert desc == sorted(desc, reverse=True) and desc[-1] == 0


def test_negative_balance_is_an_integrity_error(store):
    store.commit_blocks([block(1, move(None, A, 10, 0))])
    before = dump(store)
    with pytest.raises(IntegrityError) as info:
        store.commit_blocks([block(2, move(A, B, 4, 0), move(A, C, 7, 1))])
    msg = str(info.value)
    assert A in msg and "block 2" in msg and tx(0, 1) in msg and "holds 6" in msg
    assert info.value.exit_code == 5 and info.value.hint
    assert dump(store) == before
    store.commit_blocks([block(2, move(A, B, 4, 0))])
    assert balances(store) == {A: 6, B: 4}


def test_token_update_with_unknown_field_leaves_nothing_of_the_block(store):
    store.commit_blocks([block(1, move(None, A, 100, 0))])
    before = dump(store)
    bad = block(2, move(A, B, 30, 0), label("renamed", 1, token_update={"name": "X"}),
                label("frozen", 2, holder=A, holder_update={"frozen": True}),
                label("weird", 3, token_update={"no_such_field": 1}),
                skipped=(SkippedLog(tx(2, 9), 9, TOKEN, "unknown_event"),),
                new_watched=((REGISTRY, TOKEN, "identity_registry"),))
    with pytest.raises(ValueError, match="no_such_field"):
        store.commit_blocks([bad])
    assert dump(store) == before
    assert store.cursor() == ref(1)
    # caches were dropped with the transaction: the next good block starts from what is stored
    store.commit_blocks([block(2, move(A, B, 30, 0))])
    assert balances(store) == {A: 70, B: 30}
    state = store.conn.execute("SELECT name, total_supply FROM token_state").fetchall()
    assert state == [(None, "100")]
    assert store.conn.execute("SELECT count(*) FROM holder_state").fetchall() == [(0,)]


def test_holder_update_with_unknown_field_leaves_nothing(store):
    store.commit_blocks([block(1, move(None, A, 100, 0))])
    before = dump(store)
    with pytest.raises(ValueError, match="bogus"):
        store.commit_blocks([block(2, move(A, B, 1, 0), label("x", 1, holder=A, holder_update={"bogus": 1}))])
    assert dump(store) == before


def test_failure_after_rows_were_written_rolls_back_the_whole_batch(store, monkeypatch):
    store.commit_blocks([block(1, move(None, A, 100, 0))])
    before = dump(store)
    real = Store._token_row
    calls = {"n": 0}

    def failing(s):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 history rows built in _apply_block, the 3rd is the token_state write
            raise RuntimeError("simulated crash in the middle of the write")
        return real(s)

    monkeypatch.setattr(Store, "_token_row", staticmethod(failing))
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.commit_blocks([block(2, move(None, B, 5, 0)), block(3, move(A, C, 50, 0), move(None, D, 1, 1))])
    assert calls["n"] == 3
    assert dump(store) == before
    monkeypatch.setattr(Store, "_token_row", staticmethod(real))
    store.commit_blocks([block(2, move(None, B, 5, 0)), block(3, move(A, C, 50, 0))])
    assert balances(store) == {A: 50, B: 5, C: 50}
    assert store.conn.execute("SELECT total_supply FROM token_state").fetchall() == [("105",)]


def test_interrupt_during_write_leaves_nothing(store, monkeypatch):
    store.commit_blocks([block(1, move(None, A, 100, 0))])
    before = dump(store)

    def interrupted(self, ev):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_apply_holder_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.commit_blocks([block(2, move(A, B, 60, 0), label("f", 1, holder=B, holder_update={"frozen": True}))])
    monkeypatch.undo()
    assert dump(store) == before
    store.commit_blocks([block(2, move(A, B, 60, 0))])
    assert balances(store) == {A: 40, B: 60}


def test_balance_cache_limit_never_loses_pending_balances(store):
    # The balance cache is trimmed when it grows past CACHE_LIMIT. Trimming it while a batch is being
    # applied forgets balances that are not written yet; a small limit shows it with a handful of holders.
    store.CACHE_LIMIT = 2
    store.commit_blocks([block(1, move(None, A, 100, 0))])
    # A's pending 110 is forgotten when loading D trims the cache; A is then re-read as the stored 100
    store.commit_blocks([block(2, move(None, A, 10, 0), move(None, B, 1, 1), move(None, C, 1, 2), move(None, D, 1, 3),
                               move(None, A, 5, 4))])
    assert balances(store) == {A: 115, B: 1, C: 1, D: 1}
    ledger = store.conn.execute("SELECT delta, balance FROM balance_ledger WHERE holder=? ORDER BY id", (A,)).fetchall()
    assert [(d, int(b)) for d, b in ledger] == [("100", 100), ("10", 110), ("5", 115)]


def test_holder_cache_limit_never_loses_pending_holder_state(store):
    store.CACHE_LIMIT = 1
    store.commit_blocks([block(1, *(label("frozen", i, holder=h, holder_update={"frozen": True})
                                    for i, h in enumerate((A, B, C))))])
    rows = store.conn.execute("SELECT address, frozen FROM holder_state ORDER BY address").fetchall()
    assert rows == [(A, 1), (B, 1), (C, 1)]


def test_state_derived_corporate_actions(store):
    store.commit_blocks([block(1, move(None, A, 100, 0), token_info=((TOKEN, {"name": "Acme", "symbol": "ACME",
                                                                                "decimals": 0}),))])
    store.commit_blocks([block(2, label("renamed", 0, token_update={"name": "Acme Class A"}),
                               label("paused", 1, token_update={"paused": True}),
                               label("paused", 2, token_update={"paused": True}),  # no change: no action
                               move(A, None, 40, 3))])
    actions = store.conn.execute("SELECT block_number, action_type, old_value, new_value FROM corporate_actions "
                                 "ORDER BY block_number, log_index").fetchall()
    assert actions == [(1, "issuance", "0", "100"), (2, "name_change", "Acme", "Acme Class A"),
                       (2, "pause", "false", "true"), (2, "redemption", "100", "60")]
    # token_info fills only unknown fields
    store.commit_blocks([block(3, token_info=((TOKEN, {"name": "Ignored", "decimals": 6}),))])
    assert store.conn.execute("SELECT name, symbol, decimals FROM token_state").fetchall() == \
        [("Acme Class A", "ACME", 0)]


# ---- rollback ----------------------------------------------------------------------------------------

def history(fork: str = "") -> list[DecodedBlock]:
    """Six blocks touching every kind of state; blocks 4-6 differ on a fork."""
    far = 10**10
    common = [
        block(1, move(None, A, 1000, 0), move(None, B, 500, 1),
              label("identity_registry_added", 2, to_address=REGISTRY, token_update={"identity_registry": REGISTRY}),
              label("identity_registered", 3, holder=A, holder_update={"registered": True, "identity": E}),
              token_info=((TOKEN, {"name": "Acme", "symbol": "ACME", "decimals": 0}),),
              new_watched=((REGISTRY, TOKEN, "identity_registry"),)),
        block(2, move(A, C, 100, 0), label("tokens_frozen", 1, holder=B, amount=50, holder_update={"frozen_delta": 50}),
              skipped=(SkippedLog(tx(2, 5), 5, TOKEN, "erc721_transfer", {"topics": [], "data": "0x"}),)),
        block(3, label("paused", 0, token_update={"paused": True}),
              label("multiplier_updated", 1, token_update={"multiplier": ("1", "2", far)})),
    ]
    if fork:
        return common + [block(4, move(A, D, 1, 0), fork=fork), block(5, fork=fork)]
    return common + [
        block(4, move(C, D, 40, 0), move(B, None, 100, 1),
              label("renamed", 2, token_update={"name": "Acme Class A", "symbol": "ACMEA"}),
              label("address_frozen", 3, holder=B, holder_update={"frozen": True}),
              label("country_updated", 4, holder=A, holder_update={"country": 826}),
              label("recovery", 5, from_address=A, to_address=D, action=("recovery", A, D)),
              move(None, A, 7, 6, token=TOKEN2),
              label("tokens_unfrozen", 7, holder=B, amount=20, holder_update={"frozen_delta": -20}),
              skipped=(SkippedLog(tx(4, 9), 9, TOKEN, "malformed", {"detail": "x"}),),
              new_watched=(("0x" + "e2" * 20, TOKEN2, "identity_registry"),)),
        block(5, label("multiplier_updated", 0, token_update={"multiplier": ("2", "3", far + 1)}),
              label("unpaused", 1, token_update={"paused": False}), move(D, E, 40, 2),
              token_info=((TOKEN2, {"name": "Second", "symbol": "TWO", "decimals": 18}),)),
        block(6, label("identity_registered", 0, holder=E, holder_update={"registered": True}),
              move(None, A, 1, 1), label("meta", 2, token_update={"meta:uri": "ipfs://x"})),
    ]


def test_rollback_restores_everything_exactly(tmp_path):
    only3 = open_store(tmp_path / "a.db")
    full = open_store(tmp_path / "b.db")
    try:
        blocks = history()
        only3.commit_blocks(blocks[:3])
        full.commit_blocks(blocks[:2])
        for b in blocks[2:]:
            full.commit_blocks([b])
        assert dump(full) != dump(only3)
        stats = full.rollback_to(ref(3))
        assert stats["blocks"] == 3 and stats["events"] > 0 and stats["ledger"] > 0
        assert full.cursor() == ref(3)
        assert dump(full) == dump(only3)
        # the caches are consistent after the rollback: the fork's blocks give identical databases
        fork = history("fork")[3:]
        only3.commit_blocks(fork)
        full.commit_blocks(fork)
        assert dump(full) == dump(only3)
        assert balances(full) == {A: 899, B: 500, C: 100, D: 1}
    finally:
        only3.close()
        full.close()


def test_rollback_below_the_first_block_empties_the_store(tmp_path):
    fresh = open_store(tmp_path / "fresh.db")
    s = open_store(tmp_path / "s.db")
    try:
        s.commit_blocks([block(10, move(None, A, 5, 0), token_info=((TOKEN, {"name": "N"}),)),
                         block(11, move(A, B, 2, 0), label("f", 1, holder=A, holder_update={"frozen": True}))])
        s.rollback_to(ref(9))
        assert s.cursor() is None
        assert dump(s) == dump(fresh)
        s.commit_blocks([block(20, move(None, C, 1, 0))])
        assert s.first_block() == 20 and balances(s) == {C: 1}
    finally:
        fresh.close()
        s.close()


def test_rollback_to_the_cursor_changes_nothing(store):
    store.commit_blocks(history()[:3])
    before = dump(store)
    store.rollback_to(ref(3))
    assert dump(store) == before


def test_pad_u256_bounds():
    assert pad_u256(0) == "0" * 78 and pad_u256(U256_MAX) == str(U256_MAX)
    with pytest.raises(ValueError):
        pad_u256(-1)
    with pytest.raises(ValueError):
        pad_u256(U256_MAX + 1)
