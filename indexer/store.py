"""SQLite store: the only writer of the database.

One SQLite transaction holds one or more *whole* blocks together with the cursor, so a block is in the
database wholly or not at all (`kill -9` at any instant leaves the last committed block as the cursor).
Balances are an append-only ledger plus a materialised current table; token and holder state keep a
snapshot per block in which they changed; a rollback deletes everything above the common ancestor and
restores the current tables from the history.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import apsw

from indexer import migrations
from indexer.amounts import PAD, U256_MAX, multiplier_in_force, pad_u256
from indexer.errors import ChainMismatchError, DatabaseError, DatabaseLockedError
from indexer.models import ZERO_ADDRESS, BlockRef, DecodedBlock, Event

log = logging.getLogger(__name__)

POS_BITS = 24  # pos = block << 24 | log_index << 4 | sub: 1,048,576 logs per block, 16 events per log


class IntegrityError(DatabaseError):
    """The data would make the cap table wrong (e.g. a negative balance): stop rather than write it."""

    exit_code = 5


TOKEN_FIELDS = ("name", "symbol", "decimals", "multiplier", "multiplier_next", "multiplier_effective_at",
                "paused", "total_supply", "identity_registry", "compliance", "metadata")
HOLDER_FIELDS = ("frozen", "frozen_amount", "registered", "country", "identity")
_ACTION_FOR_FIELD = {"name": "name_change", "symbol": "symbol_change", "decimals": "decimals_change",
                     "identity_registry": "identity_registry_change", "compliance": "compliance_change"}


# Secondary indexes whose random-order inserts dominate a long backfill: dropped while bulk-loading and
# built once at the end by a sort (their definitions come from schema.sql, never repeated here).
BULK_INDEXES = ("ledger_by_holder", "events_by_tx", "events_by_token")


def index_definitions(schema: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in
            re.finditer(r"CREATE INDEX IF NOT EXISTS (\w+) ON [^;]+;", schema)}


def schema_sql() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schema.sql", here / "schema.sql"):
        if candidate.is_file():
            return candidate.read_text()
    return resources.files("indexer").joinpath("schema.sql").read_text()


def _db_error(exc: Exception, path: str, action: str) -> DatabaseError:
    """Translate SQLite's exceptions into messages that say what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DatabaseError(f"cannot write {path}: {exc.strerror} ({action})",
                             hint="the database directory must be writable by the indexer's user "
                                  "(under systemd: its StateDirectory)")
    if isinstance(exc, apsw.FullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return DatabaseError(f"disk full while {action} {path}; the block in hand was rolled back",
                             hint="free disk space and restart; nothing partial was written")
    if isinstance(exc, (apsw.NotADBError, apsw.CorruptError)):
        return DatabaseError(f"database {path} is corrupt or not an indexer database ({exc})",
                             hint="restore the last `indexer db backup` or move the file away and re-index")
    if isinstance(exc, (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError)):
        return DatabaseError(f"cannot write database {path} ({exc})",
                             hint="check that the directory exists and is writable by this user")
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        return DatabaseLockedError(f"database {path} is locked by another process ({exc})",
                                   hint="stop the other writer; readers never block the daemon")
    if isinstance(exc, apsw.IOError):
        return DatabaseError(f"I/O error while {action} {path} ({exc})", hint="check the disk and free space")
    return DatabaseError(f"database error while {action} {path}: {exc}")


def connect(path: str, *, readonly: bool = False) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(path, flags=flags)
        conn.setbusytimeout(5000)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # surfaces NotADB/corruption now
    except apsw.Error as exc:
        raise _db_error(exc, path, "opening") from None
    return conn


@dataclass
class _Rows:
    events: list
    ledger: list
    actions: list
    blocks: list
    skipped: list
    watched: list
    token_history: list
    holder_history: list

    @classmethod
    def empty(cls) -> "_Rows":
        return cls([], [], [], [], [], [], [], [])


class Store:
    """Single-writer store. Not thread-safe: use it from one thread (the pipeline's store worker)."""

    CACHE_LIMIT = 500_000

    def __init__(self, path: str, *, chain: str, kind: str = "evm", chain_id: int | None = None,
                 synchronous: str = "normal"):
        self.path = str(path)
        self.chain = chain
        self.kind = kind
        self.chain_id = chain_id
        self.synchronous = synchronous
        self.conn: apsw.Connection | None = None
        self._lock_fd: int | None = None
        self._balances: dict[tuple[str, str], int] = {}
        self._tokens: dict[str, dict] = {}
        self._holders: dict[tuple[str, str], dict] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    def open(self) -> "Store":
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _db_error(exc, self.path, "creating the directory of") from None
        self._acquire_lock()
        try:
            self.conn = connect(self.path)
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if mode.lower() != "wal":
                raise DatabaseError(f"cannot enable WAL on {self.path} (journal mode {mode})",
                                    hint="put the database on a local filesystem")
            self.conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            self.conn.execute("PRAGMA cache_size=-32768")  # 32 MiB page cache: appends need little; RSS target 300 MB
            migrations.migrate(self.conn, schema_sql(), self.path)
            self._check_meta()
            self.end_bulk()  # a bulk load cut short (kill -9) gets its indexes back now
        except apsw.Error as exc:
            self.close()
            raise _db_error(exc, self.path, "opening") from None
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except apsw.Error:
                pass
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _acquire_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _db_error(exc, self.path, "creating the lock file of") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = os.pread(fd, 32, 0).decode().strip() or "?"
            except OSError:
                other = "?"
            os.close(fd)
            raise DatabaseLockedError(
                f"another indexer process (pid {other}) is writing {self.path}",
                hint="run one daemon per database; stop the other one first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_meta(self) -> None:
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        expected = {"chain": self.chain, "kind": self.kind}
        if self.chain_id is not None:
            expected["chain_id"] = str(self.chain_id)
        with self.conn:
            for key, value in expected.items():
                if key not in meta:
                    self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, value))
                elif meta[key] != value:
                    raise ChainMismatchError(
                        f"database {self.path} belongs to {key} {meta[key]!r}, config says {value!r}",
                        hint="point database.path at another file, one database per chain")

    def check_genesis(self, genesis_hash: str) -> None:
        """Remember the chain's first block hash; refuse a database made on another chain (e.g. a new anvil)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='genesis_hash'").fetchall()
        if not row:
            with self.conn:
                self.conn.execute("INSERT INTO meta(key, value) VALUES ('genesis_hash', ?)", (genesis_hash,))
        elif row[0][0] != genesis_hash:
            raise ChainMismatchError(
                f"database {self.path} was built on a chain whose genesis is {row[0][0]}, the node's is {genesis_hash}",
                hint="the node was reset or is another network: use a new database file")

    # ---- reads for the pipeline -----------------------------------------------------------------

    def cursor(self) -> BlockRef | None:
        row = self.conn.execute("SELECT block_number, block_hash, block_timestamp FROM cursor WHERE chain=?",
                                (self.chain,)).fetchall()
        if not row:
            return None
        n, h, ts = row[0]
        parent = self.conn.execute("SELECT parent_hash FROM blocks WHERE chain=? AND number=?",
                                   (self.chain, n)).fetchall()
        return BlockRef(n, h, parent[0][0] if parent else "", ts)

    def first_block(self) -> int | None:
        row = self.conn.execute("SELECT first_block FROM cursor WHERE chain=?", (self.chain,)).fetchall()
        return row[0][0] if row else None

    def stored_blocks(self, low: int, high: int) -> list[BlockRef]:
        """Stored blocks with low <= number <= high, newest first."""
        rows = self.conn.execute(
            "SELECT number, hash, parent_hash, timestamp FROM blocks WHERE chain=? AND number BETWEEN ? AND ? "
            "ORDER BY number DESC", (self.chain, low, high)).fetchall()
        return [BlockRef(*r) for r in rows]

    def watched_contracts(self) -> list[tuple[str, str, str, int]]:
        return self.conn.execute("SELECT address, token, role, from_block FROM watched_contracts WHERE chain=? "
                                 "ORDER BY from_block, address", (self.chain,)).fetchall()

    def known_tokens(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT token FROM token_state WHERE chain=? AND name IS NOT NULL",
                                                (self.chain,))}

    def counts(self) -> dict[str, int]:
        out = {}
        for table in ("events", "balance_ledger", "corporate_actions", "blocks", "skipped_logs"):
            out[table] = self.conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        out["holders"] = self.conn.execute(
            "SELECT count(*) FROM balances WHERE balance != ?", (pad_u256(0),)).fetchall()[0][0]
        return out

    # ---- writes ----------------------------------------------------------------------------------

    def commit_blocks(self, blocks: Sequence[DecodedBlock]) -> None:
        """Commit whole blocks in order, in one transaction, and move the cursor to the last one."""
        if not blocks:
            return
        cur = self.cursor()
        prev = cur.number if cur else None
        for b in blocks:
            if prev is not None and b.ref.number <= prev:
                raise IntegrityError(f"block {b.ref.number} is not above the cursor {prev}: refusing to write it twice")
            prev = b.ref.number
        self._trim_caches()
        try:
            with self.conn:
                self._write(blocks, first=None if cur else blocks[0].ref.number)
        except apsw.Error as exc:
            self._drop_caches()
            raise _db_error(exc, self.path, "writing") from None
        except BaseException:
            self._drop_caches()
            raise

    def _prefetch_balances(self, blocks: Sequence[DecodedBlock]) -> None:
        """Load every balance the batch moves and the cache lacks, a few hundred per query.

        One query per holder would release and re-take the GIL each time, waiting on the decoding thread
        (measured: 0.3 ms per lookup, 6 s per million transfers)."""
        balances = self._balances
        wanted: dict[str, set[str]] = {}
        for b in blocks:
            for ev in b.events:
                if ev.moves_balance:
                    for who in (ev.from_address, ev.to_address):
                        if who is not None and who != ZERO_ADDRESS and (ev.token, who) not in balances:
                            wanted.setdefault(ev.token, set()).add(who)
        for token, holders in wanted.items():
            holders = list(holders)
            for i in range(0, len(holders), 500):
                chunk = holders[i:i + 500]
                found = dict(self.conn.execute(
                    "SELECT address, balance FROM balances WHERE chain=? AND token=? AND address IN ("
                    + ",".join("?" * len(chunk)) + ")", (self.chain, token, *chunk)).fetchall())
                for h in chunk:
                    balances[(token, h)] = int(found[h]) if h in found else 0

    def _write(self, blocks: Sequence[DecodedBlock], first: int | None) -> None:
        self._prefetch_balances(blocks)
        rows = _Rows.empty()
        dirty_balances: dict[tuple[str, str], tuple[int, int, int]] = {}
        dirty_tokens: dict[str, int] = {}
        dirty_holders: dict[tuple[str, str], int] = {}
        for b in blocks:
            self._apply_block(b, rows, dirty_balances, dirty_tokens, dirty_holders)
        c = self.conn
        ch = self.chain
        if rows.events:
            c.executemany("INSERT INTO events (pos, chain, token, block_number, block_hash, transaction_hash, "
                          "log_index, event_type, from_address, to_address, amount, data, timestamp) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows.events)
        if rows.ledger:
            c.executemany("INSERT INTO balance_ledger (id, chain, token, holder, block_number, log_index, delta, "
                          "balance) VALUES (?,?,?,?,?,?,?,?)", rows.ledger)
        if rows.actions:
            c.executemany("INSERT INTO corporate_actions (chain, token, action_type, block_number, block_hash, "
                          "transaction_hash, log_index, old_value, new_value, data, timestamp) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows.actions)
        if rows.skipped:
            c.executemany("INSERT OR REPLACE INTO skipped_logs (chain, block_number, block_hash, transaction_hash, "
                          "log_index, address, reason, raw) VALUES (?,?,?,?,?,?,?,?)", rows.skipped)
        if rows.watched:
            c.executemany("INSERT OR IGNORE INTO watched_contracts (chain, address, token, role, from_block) "
                          "VALUES (?,?,?,?,?)", rows.watched)
        c.executemany("INSERT OR REPLACE INTO blocks (chain, number, hash, parent_hash, timestamp, event_count) "
                      "VALUES (?,?,?,?,?,?)", rows.blocks)
        if dirty_balances:
            c.executemany(
                "INSERT INTO balances (chain, token, address, balance, last_updated_block, last_updated_timestamp) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (chain, token, address) DO UPDATE SET balance=excluded.balance, "
                "last_updated_block=excluded.last_updated_block, last_updated_timestamp=excluded.last_updated_timestamp",
                [(ch, t, h, pad_u256(v), n, ts) for (t, h), (v, n, ts) in dirty_balances.items()])
        if rows.token_history:
            c.executemany("INSERT OR REPLACE INTO token_state_history (chain, token, block_number, "
                          + ", ".join(TOKEN_FIELDS) + ") VALUES (?,?,?" + ",?" * len(TOKEN_FIELDS) + ")",
                          rows.token_history)
        for token, n in dirty_tokens.items():
            s = self._tokens[token]
            c.execute("INSERT OR REPLACE INTO token_state (chain, token, " + ", ".join(TOKEN_FIELDS)
                      + ", last_updated_block) VALUES (?,?" + ",?" * len(TOKEN_FIELDS) + ",?)",
                      (ch, token, *self._token_row(s), n))
        if rows.holder_history:
            c.executemany("INSERT OR REPLACE INTO holder_state_history (chain, token, address, block_number, "
                          + ", ".join(HOLDER_FIELDS) + ") VALUES (?,?,?,?" + ",?" * len(HOLDER_FIELDS) + ")",
                          rows.holder_history)
        if dirty_holders:
            c.executemany("INSERT OR REPLACE INTO holder_state (chain, token, address, " + ", ".join(HOLDER_FIELDS)
                          + ", last_updated_block) VALUES (?,?,?" + ",?" * len(HOLDER_FIELDS) + ",?)",
                          [(ch, t, h, *self._holder_row(self._holders[(t, h)]), n)
                           for (t, h), n in dirty_holders.items()])
        last = blocks[-1].ref
        if first is None:
            c.execute("UPDATE cursor SET block_number=?, block_hash=?, block_timestamp=?, updated_at=? WHERE chain=?",
                      (last.number, last.hash, last.timestamp, time.time(), ch))
        else:
            c.execute("INSERT INTO cursor (chain, block_number, block_hash, block_timestamp, first_block, updated_at) "
                      "VALUES (?,?,?,?,?,?)", (ch, last.number, last.hash, last.timestamp, first, time.time()))

    def _apply_block(self, b: DecodedBlock, rows: _Rows, dirty_balances, dirty_tokens, dirty_holders) -> None:
        ref = b.ref
        n, bh, ts, ch = ref.number, ref.hash, ref.timestamp, self.chain
        base = n << POS_BITS
        rows.blocks.append((ch, n, bh, ref.parent_hash, ts, len(b.events)))
        block_tokens: set[str] = set()
        block_holders: set[tuple[str, str]] = set()
        balances = self._balances
        for token, info in b.token_info:
            state = self._token(token)
            for field, value in info.items():
                if state.get(field) is None and value is not None:
                    state[field] = value
            block_tokens.add(token)
        # the hot loop: names bound locally, each amount turned into text once
        events_append = rows.events.append
        ledger_append = rows.ledger.append
        load_balance = self._load_balance
        dumps = json.dumps
        for ev in b.events:
            token = ev.token
            li = ev.log_index
            pos = base | li << 4 | ev.sub
            amount = ev.amount
            amount_text = None if amount is None else str(amount)
            data = ev.data
            events_append((pos, ch, token, n, bh, ev.transaction_hash, li, ev.event_type, ev.from_address,
                           ev.to_address, amount_text, dumps(data, separators=(",", ":")) if data else "{}", ts))
            if ev.moves_balance:
                frm, to = ev.from_address, ev.to_address
                minted = frm is None or frm == ZERO_ADDRESS
                burned = to is None or to == ZERO_ADDRESS
                if not minted:
                    key = (token, frm)
                    old = balances.get(key)
                    if old is None:
                        old = load_balance(key)
                    new = old - amount
                    if new < 0:
                        raise IntegrityError(
                            f"balance of {frm} in token {token} would become negative at block {n} "
                            f"(tx {ev.transaction_hash}, log {li}): holds {old}, moves {amount}",
                            hint="start_block must be at or before the token's deployment; a rebasing token "
                                 "needs its own profile")
                    balances[key] = new
                    dirty_balances[key] = (new, n, ts)
                    ledger_append((pos << 1, ch, token, frm, n, li, "-" + amount_text, str(new).zfill(PAD)))
                if not burned:
                    key = (token, to)
                    old = balances.get(key)
                    if old is None:
                        old = load_balance(key)
                    new = old + amount
                    if new > U256_MAX:
                        raise IntegrityError(f"balance of {to} in token {token} would exceed uint256 at block {n}")
                    balances[key] = new
                    dirty_balances[key] = (new, n, ts)
                    ledger_append((pos << 1 | 1, ch, token, to, n, li, amount_text, str(new).zfill(PAD)))
                if minted != burned and not ev.external:
                    state = self._token(token)
                    before = state["total_supply"]
                    after = before + amount if minted else before - amount
                    if after < 0:
                        raise IntegrityError(f"total supply of {token} would become negative at block {n}")
                    state["total_supply"] = after
                    block_tokens.add(token)
                    rows.actions.append((ch, token, "issuance" if minted else "redemption", n, bh, ev.transaction_hash,
                                         li, str(before), str(after),
                                         dumps({"holder": to if minted else frm, "amount": amount_text}), ts))
            if ev.token_update:
                self._apply_token_update(ev, ref, rows)
                block_tokens.add(token)
            if ev.holder_update:
                self._apply_holder_update(ev)
                block_holders.add((token, ev.holder))
            if ev.action:
                kind, old_v, new_v = ev.action
                rows.actions.append((ch, token, kind, n, bh, ev.transaction_hash, ev.log_index, old_v, new_v,
                                     json.dumps(dict(ev.data), separators=(",", ":")), ts))
        for s in b.skipped:
            rows.skipped.append((ch, n, bh, s.transaction_hash, s.log_index, s.address, s.reason,
                                 json.dumps(dict(s.raw), separators=(",", ":"))))
        for address, token, role in b.new_watched:
            rows.watched.append((ch, address, token, role, n))
        for token in block_tokens:
            rows.token_history.append((ch, token, n, *self._token_row(self._tokens[token])))
            dirty_tokens[token] = n
        for key in block_holders:
            rows.holder_history.append((ch, key[0], key[1], n, *self._holder_row(self._holders[key])))
            dirty_holders[key] = n

    def _apply_token_update(self, ev: Event, ref: BlockRef, rows: _Rows) -> None:
        state = self._token(ev.token)
        ch, n = self.chain, ref.number
        for field, value in ev.token_update.items():
            if field == "multiplier":
                base, next_, eff = value
                old = multiplier_in_force(state["multiplier"], state["multiplier_next"],
                                          state["multiplier_effective_at"], ref.timestamp)
                state["multiplier"], state["multiplier_next"], state["multiplier_effective_at"] = base, next_, eff
                new = next_ if next_ is not None else base
                if old == new and next_ is None:
                    continue  # e.g. a multiplier initialised to what it already was
                rows.actions.append((ch, ev.token, "split", n, ref.hash, ev.transaction_hash, ev.log_index, old, new,
                                     json.dumps({"effective_at": eff if eff is not None else ref.timestamp,
                                                 "event": ev.event_type}), ref.timestamp))
            elif field == "multiplier_schedule":
                # Token-2022 ScaledUiAmount UpdateMultiplier: promote a matured pending multiplier, then
                # schedule the new one (in force at once when its time has come)
                new, eff = value
                ts = ref.timestamp
                old = multiplier_in_force(state["multiplier"], state["multiplier_next"],
                                          state["multiplier_effective_at"], ts)
                state["multiplier"] = new if ts >= eff else old
                state["multiplier_next"], state["multiplier_effective_at"] = new, eff
                rows.actions.append((ch, ev.token, "split", n, ref.hash, ev.transaction_hash, ev.log_index, old, new,
                                     json.dumps({"effective_at": eff, "event": ev.event_type}), ts))
            elif field.startswith("meta:"):
                key = field[5:]
                meta = json.loads(state["metadata"]) if state["metadata"] else {}
                old = meta.get(key)
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
                state["metadata"] = json.dumps(meta, sort_keys=True, separators=(",", ":")) if meta else None
                if old != value:
                    rows.actions.append((ch, ev.token, "metadata_change", n, ref.hash, ev.transaction_hash,
                                         ev.log_index, old, value, json.dumps({"field": key}), ref.timestamp))
            elif field == "paused":
                old = bool(state["paused"])
                state["paused"] = bool(value)
                if old != bool(value):
                    rows.actions.append((ch, ev.token, "pause" if value else "unpause", n, ref.hash,
                                         ev.transaction_hash, ev.log_index, str(old).lower(), str(bool(value)).lower(),
                                         "{}", ref.timestamp))
            elif field in _ACTION_FOR_FIELD:
                old = state[field]
                state[field] = value
                if old is not None and old != value:
                    rows.actions.append((ch, ev.token, _ACTION_FOR_FIELD[field], n, ref.hash, ev.transaction_hash,
                                         ev.log_index, None if old is None else str(old),
                                         None if value is None else str(value), "{}", ref.timestamp))
            else:
                raise ValueError(f"unknown token state field {field!r} from event {ev.event_type}")

    def _apply_holder_update(self, ev: Event) -> None:
        key = (ev.token, ev.holder)
        state = self._holder(key)
        for field, value in ev.holder_update.items():
            if field == "frozen_delta":
                state["frozen_amount"] = max(0, state["frozen_amount"] + value)
            elif field in HOLDER_FIELDS:
                state[field] = value
            else:
                raise ValueError(f"unknown holder state field {field!r} from event {ev.event_type}")

    # ---- bulk loading ----------------------------------------------------------------------------

    def in_bulk(self) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM meta WHERE key='bulk_load'").fetchall())

    def begin_bulk(self) -> None:
        """Drop the random-access secondary indexes for a long backfill (queries stay correct, slower)."""
        if self.in_bulk():
            return
        try:
            with self.conn:
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('bulk_load', ?)", (str(time.time()),))
                for name in BULK_INDEXES:
                    self.conn.execute(f"DROP INDEX IF EXISTS {name}")
            # fewer, larger checkpoints while bulk-loading (80 MB of WAL instead of 4 MB)
            self.conn.execute("PRAGMA wal_autocheckpoint=20000")
        except apsw.Error as exc:
            raise _db_error(exc, self.path, "writing") from None
        log.info("bulk load: secondary indexes dropped until the backfill ends")

    def end_bulk(self) -> None:
        """(Re)build every index the schema defines; a no-op when all exist."""
        defs = index_definitions(schema_sql())
        have = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        missing = [n for n in defs if n not in have]
        if not missing and not self.in_bulk():
            return
        t0 = time.monotonic()
        try:
            with self.conn:
                for name in missing:
                    self.conn.execute(defs[name])
                self.conn.execute("DELETE FROM meta WHERE key='bulk_load'")
            self.conn.execute("PRAGMA wal_autocheckpoint=1000")
        except apsw.Error as exc:
            raise _db_error(exc, self.path, "building indexes of") from None
        if missing:
            log.info("built index(es) %s in %.1fs", ", ".join(missing), time.monotonic() - t0)

    def record_verify(self, result: dict) -> None:
        """Keep the outcome of a self-audit (the daemon's periodic verify)."""
        try:
            with self.conn:
                self.conn.execute("INSERT INTO verify_runs (chain, block_number, holders_checked, mismatches, details, "
                                  "finished_at) VALUES (?,?,?,?,?,?)",
                                  (self.chain, result["block_number"], result["holders_checked"],
                                   len(result["mismatches"]), json.dumps(result["mismatches"][:100]), time.time()))
        except apsw.Error as exc:
            raise _db_error(exc, self.path, "writing") from None

    # ---- caches (dropped on any failed transaction or rollback) ---------------------------------

    def _drop_caches(self) -> None:
        self._balances.clear()
        self._tokens.clear()
        self._holders.clear()

    def _trim_caches(self) -> None:
        """Bound memory. Only between transactions: a write in progress holds unwritten values here."""
        if len(self._balances) > self.CACHE_LIMIT:
            self._balances.clear()
        if len(self._holders) > self.CACHE_LIMIT:
            self._holders.clear()

    def _load_balance(self, key: tuple[str, str]) -> int:
        row = self.conn.execute("SELECT balance FROM balances WHERE chain=? AND token=? AND address=?",
                                (self.chain, *key)).fetchall()
        value = int(row[0][0]) if row else 0
        self._balances[key] = value
        return value

    def _token(self, token: str) -> dict:
        state = self._tokens.get(token)
        if state is None:
            row = self.conn.execute("SELECT " + ", ".join(TOKEN_FIELDS) + " FROM token_state WHERE chain=? AND token=?",
                                    (self.chain, token)).fetchall()
            if row:
                state = dict(zip(TOKEN_FIELDS, row[0]))
                state["total_supply"] = int(state["total_supply"])
                state["paused"] = bool(state["paused"])
            else:
                state = {f: None for f in TOKEN_FIELDS}
                state.update(multiplier="1", paused=False, total_supply=0)
            self._tokens[token] = state
        return state

    @staticmethod
    def _token_row(s: dict) -> tuple:
        return (s["name"], s["symbol"], s["decimals"], s["multiplier"], s["multiplier_next"],
                s["multiplier_effective_at"], int(bool(s["paused"])), str(s["total_supply"]),
                s["identity_registry"], s["compliance"], s["metadata"])

    def _holder(self, key: tuple[str, str]) -> dict:
        state = self._holders.get(key)
        if state is None:
            row = self.conn.execute("SELECT " + ", ".join(HOLDER_FIELDS) + " FROM holder_state WHERE chain=? AND "
                                    "token=? AND address=?", (self.chain, *key)).fetchall()
            if row:
                state = dict(zip(HOLDER_FIELDS, row[0]))
                state["frozen_amount"] = int(state["frozen_amount"])
                state["frozen"] = bool(state["frozen"])
            else:
                state = {"frozen": False, "frozen_amount": 0, "registered": None, "country": None, "identity": None}
            self._holders[key] = state
        return state

    @staticmethod
    def _holder_row(s: dict) -> tuple:
        reg = s["registered"]
        return (int(bool(s["frozen"])), str(s["frozen_amount"]), None if reg is None else int(bool(reg)),
                s["country"], s["identity"])

    # ---- rollback --------------------------------------------------------------------------------

    def _delete(self, sql: str, args: tuple) -> int:
        self.conn.execute(sql, args)
        return self.conn.changes()

    def rollback_to(self, ancestor: BlockRef) -> dict[str, int]:
        """Delete everything above `ancestor` and restore current state as of it, in one transaction."""
        n = ancestor.number
        bound = (n + 1) << POS_BITS
        c = self.conn
        ch = self.chain
        stats: dict[str, int] = {}
        try:
            with c:
                affected = c.execute("SELECT DISTINCT token, holder FROM balance_ledger WHERE id >= ?",
                                     (bound << 1,)).fetchall()
                stats["ledger"] = self._delete("DELETE FROM balance_ledger WHERE id >= ?", (bound << 1,))
                for token, holder in affected:
                    row = c.execute("SELECT l.id, l.block_number, l.balance FROM balance_ledger l WHERE token=? AND "
                                    "holder=? ORDER BY id DESC LIMIT 1", (token, holder)).fetchall()
                    if row:
                        pos = row[0][0] >> 1
                        ts = c.execute("SELECT timestamp FROM events WHERE pos=?", (pos,)).fetchall()
                        c.execute("UPDATE balances SET balance=?, last_updated_block=?, last_updated_timestamp=? "
                                  "WHERE chain=? AND token=? AND address=?",
                                  (row[0][2], row[0][1], ts[0][0] if ts else 0, ch, token, holder))
                    else:
                        c.execute("DELETE FROM balances WHERE chain=? AND token=? AND address=?", (ch, token, holder))
                stats["events"] = self._delete("DELETE FROM events WHERE pos >= ?", (bound,))
                stats["corporate_actions"] = self._delete("DELETE FROM corporate_actions WHERE block_number > ?", (n,))
                for (token,) in c.execute("SELECT DISTINCT token FROM token_state_history WHERE chain=? AND "
                                          "block_number > ?", (ch, n)).fetchall():
                    c.execute("DELETE FROM token_state_history WHERE chain=? AND token=? AND block_number > ?",
                              (ch, token, n))
                    prev = c.execute("SELECT block_number, " + ", ".join(TOKEN_FIELDS) + " FROM token_state_history "
                                     "WHERE chain=? AND token=? ORDER BY block_number DESC LIMIT 1",
                                     (ch, token)).fetchall()
                    if prev:
                        c.execute("INSERT OR REPLACE INTO token_state (chain, token, " + ", ".join(TOKEN_FIELDS)
                                  + ", last_updated_block) VALUES (?,?" + ",?" * len(TOKEN_FIELDS) + ",?)",
                                  (ch, token, *prev[0][1:], prev[0][0]))
                    else:
                        c.execute("DELETE FROM token_state WHERE chain=? AND token=?", (ch, token))
                for token, holder in c.execute("SELECT DISTINCT token, address FROM holder_state_history WHERE "
                                               "block_number > ?", (n,)).fetchall():
                    c.execute("DELETE FROM holder_state_history WHERE chain=? AND token=? AND address=? AND "
                              "block_number > ?", (ch, token, holder, n))
                    prev = c.execute("SELECT block_number, " + ", ".join(HOLDER_FIELDS) + " FROM holder_state_history "
                                     "WHERE chain=? AND token=? AND address=? ORDER BY block_number DESC LIMIT 1",
                                     (ch, token, holder)).fetchall()
                    if prev:
                        c.execute("INSERT OR REPLACE INTO holder_state (chain, token, address, "
                                  + ", ".join(HOLDER_FIELDS) + ", last_updated_block) VALUES (?,?,?"
                                  + ",?" * len(HOLDER_FIELDS) + ",?)", (ch, token, holder, *prev[0][1:], prev[0][0]))
                    else:
                        c.execute("DELETE FROM holder_state WHERE chain=? AND token=? AND address=?",
                                  (ch, token, holder))
                stats["blocks"] = self._delete("DELETE FROM blocks WHERE chain=? AND number > ?", (ch, n))
                c.execute("DELETE FROM watched_contracts WHERE chain=? AND from_block > ?", (ch, n))
                c.execute("DELETE FROM skipped_logs WHERE chain=? AND block_number > ?", (ch, n))
                first = self.first_block()
                if first is not None and n < first:
                    c.execute("DELETE FROM cursor WHERE chain=?", (ch,))
                else:
                    c.execute("INSERT OR IGNORE INTO blocks (chain, number, hash, parent_hash, timestamp, "
                              "event_count) VALUES (?,?,?,?,?, (SELECT count(*) FROM events WHERE pos >= ? AND pos < ?))",
                              (ch, n, ancestor.hash, ancestor.parent_hash, ancestor.timestamp,
                               n << POS_BITS, bound))
                    c.execute("UPDATE cursor SET block_number=?, block_hash=?, block_timestamp=?, updated_at=? "
                              "WHERE chain=?", (n, ancestor.hash, ancestor.timestamp, time.time(), ch))
        except apsw.Error as exc:
            raise _db_error(exc, self.path, "rolling back") from None
        finally:
            self._drop_caches()
        return stats
