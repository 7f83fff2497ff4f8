"""The cap table at a block, read from the ledger: split-adjusted balances, exact shares, compliance state.

Readers open their own read-only connection (WAL), so queries never block the daemon.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import apsw
from eth_hash.auto import keccak

from indexer.amounts import multiplier_in_force, scale, share
from indexer.errors import UsageError
from indexer.store import POS_BITS, TOKEN_FIELDS

_CHECKSUM_CACHE: dict[str, str] = {}


def to_checksum(address: str) -> str:
    """EIP-55 mixed-case address (EVM). Solana base58 addresses pass through unchanged."""
    if not (address.startswith("0x") and len(address) == 42):
        return address
    cached = _CHECKSUM_CACHE.get(address)
    if cached is not None:
        return cached
    body = address[2:].lower()
    digest = keccak(body.encode()).hex()
    # upper-case a letter where the hash's nibble at the same position is >= 8
    out = "0x" + "".join([c.upper() if h in "89abcdef" else c for c, h in zip(body, digest)])
    if len(_CHECKSUM_CACHE) < 1_000_000:
        _CHECKSUM_CACHE[address] = out
    return out


@dataclass(frozen=True)
class IndexedRange:
    first: int
    last: int
    last_hash: str


def indexed_range(conn: apsw.Connection, chain: str) -> IndexedRange | None:
    row = conn.execute("SELECT first_block, block_number, block_hash FROM cursor WHERE chain=?", (chain,)).fetchall()
    return IndexedRange(*row[0]) if row else None


def block_at(conn: apsw.Connection, chain: str, number: int) -> tuple[str | None, int | None]:
    """(hash, timestamp) of block `number` if stored; else (None, timestamp of the nearest stored block below)."""
    row = conn.execute("SELECT hash, timestamp FROM blocks WHERE chain=? AND number=?", (chain, number)).fetchall()
    if row:
        return row[0][0], row[0][1]
    row = conn.execute("SELECT timestamp FROM blocks WHERE chain=? AND number<? ORDER BY number DESC LIMIT 1",
                       (chain, number)).fetchall()
    return None, row[0][0] if row else None


def token_state_at(conn: apsw.Connection, chain: str, token: str, number: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT " + ", ".join(TOKEN_FIELDS) + " FROM token_state_history WHERE chain=? AND token=? "
                       "AND block_number<=? ORDER BY block_number DESC LIMIT 1", (chain, token, number)).fetchall()
    return dict(zip(TOKEN_FIELDS, row[0])) if row else None


def holders_at(conn: apsw.Connection, chain: str, token: str, number: int) -> list[tuple]:
    """(address, balance, frozen, frozen_amount, registered) of every holder with a non-zero balance at
    `number`, largest first. One statement: SQLite seeks the ledger index once per holder."""
    bound = ((number + 1) << POS_BITS) << 1
    return conn.execute(
        """
        SELECT address, bal, fz, fa, reg FROM (
          SELECT b.address AS address,
                 (SELECT l.balance FROM balance_ledger l
                   WHERE l.token = b.token AND l.holder = b.address AND l.id < :bound
                   ORDER BY l.id DESC LIMIT 1) AS bal,
                 h.frozen AS fz, h.frozen_amount AS fa, h.registered AS reg
          FROM balances b
          LEFT JOIN holder_state_history h
            ON h.chain = b.chain AND h.token = b.token AND h.address = b.address
           AND h.block_number = (SELECT max(h2.block_number) FROM holder_state_history h2
                                  WHERE h2.chain = b.chain AND h2.token = b.token AND h2.address = b.address
                                    AND h2.block_number <= :n)
          WHERE b.chain = :chain AND b.token = :token
        ) WHERE bal IS NOT NULL AND ltrim(bal, '0') != ''
        ORDER BY bal DESC, address
        """, {"bound": bound, "n": number, "chain": chain, "token": token}).fetchall()


def captable(conn: apsw.Connection, chain: str, token: str, at_block: int | None = None) -> dict[str, Any]:
    rng = indexed_range(conn, chain)
    if rng is None:
        raise UsageError("nothing is indexed yet", hint="run `indexer run` or `indexer backfill` first")
    n = rng.last if at_block is None else at_block
    if n > rng.last:
        raise UsageError(f"block {n} is not indexed yet (indexed up to {rng.last})")
    if n < rng.first:
        raise UsageError(f"block {n} is before the first indexed block {rng.first}")
    block_hash, timestamp = block_at(conn, chain, n)
    state = token_state_at(conn, chain, token, n)
    if state is None:
        state = {f: None for f in TOKEN_FIELDS}
        state.update(multiplier="1", paused=0, total_supply="0")
    multiplier = multiplier_in_force(state["multiplier"], state["multiplier_next"], state["multiplier_effective_at"],
                                     timestamp or 0)
    total = int(state["total_supply"])
    holders = []
    for address, bal, fz, fa, reg in holders_at(conn, chain, token, n):
        raw = int(bal)
        holders.append({
            "address": to_checksum(address),
            "balance": str(raw),
            "adjusted_balance": str(scale(raw, multiplier)),
            "ownership": share(raw, total),
            "frozen": bool(fz),
            "frozen_amount": fa or "0",
            "registered": None if reg is None else bool(reg),
        })
    return {
        "chain": chain,
        "token": to_checksum(token),
        "block_number": n,
        "block_hash": block_hash,
        "block_timestamp": timestamp,
        "name": state["name"],
        "symbol": state["symbol"],
        "decimals": state["decimals"],
        "multiplier": multiplier,
        "pending_multiplier": (None if state["multiplier_next"] is None or multiplier == state["multiplier_next"]
                               else {"multiplier": state["multiplier_next"],
                                     "effective_at": state["multiplier_effective_at"]}),
        "paused": bool(state["paused"]),
        "total_supply": str(total),
        "adjusted_total_supply": str(scale(total, multiplier)),
        "holder_count": len(holders),
        "holders": holders,
    }


def render(table: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(table, separators=(",", ":")) + "\n"  # compact: the C encoder (indent is pure Python)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["address", "balance", "adjusted_balance", "ownership", "frozen", "frozen_amount", "registered"])
        for h in table["holders"]:
            w.writerow([h["address"], h["balance"], h["adjusted_balance"], h["ownership"], h["frozen"],
                        h["frozen_amount"], h["registered"]])
        return out.getvalue()
    lines = [
        f"{table['name'] or '?'} ({table['symbol'] or '?'}) {table['token']} on {table['chain']}",
        f"block {table['block_number']} {table['block_hash'] or '(hash not stored: block had no events)'}",
        f"decimals {table['decimals']}  multiplier {table['multiplier']}  paused {table['paused']}  "
        f"total supply {table['total_supply']}  holders {table['holder_count']}",
    ]
    if table.get("pending_multiplier"):
        p = table["pending_multiplier"]
        lines.append(f"scheduled multiplier {p['multiplier']} from unix time {p['effective_at']}")
    lines.append("")
    header = f"{'address':<44} {'balance':>26} {'adjusted':>26} {'ownership':>22}  frozen"
    lines.append(header)
    lines.append("-" * len(header))
    for h in table["holders"]:
        frozen = "wallet" if h["frozen"] else (h["frozen_amount"] if h["frozen_amount"] != "0" else "")
        lines.append(f"{h['address']:<44} {h['balance']:>26} {h['adjusted_balance']:>26} {h['ownership']:>22}  {frozen}")
    return "\n".join(lines) + "\n"
