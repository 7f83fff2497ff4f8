"""Self-audit: every holder's indexed balance and the total supply at block N against the chain's
balanceOf/totalSupply called at N (batched eth_call). A wrong cap table is found, named and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from indexer.captable import indexed_range, to_checksum, token_state_at
from indexer.errors import UsageError
from indexer.store import POS_BITS, connect

log = logging.getLogger(__name__)


def indexed_balances(conn, chain: str, token: str, number: int) -> dict[str, int]:
    """Every address ever holding the token, with its indexed balance at `number` (0 included)."""
    bound = ((number + 1) << POS_BITS) << 1
    rows = conn.execute(
        "SELECT b.address, (SELECT l.balance FROM balance_ledger l WHERE l.token=b.token AND l.holder=b.address "
        "AND l.id < ? ORDER BY l.id DESC LIMIT 1) FROM balances b WHERE b.chain=? AND b.token=?",
        (bound, chain, token)).fetchall()
    return {a: int(b) if b else 0 for a, b in rows}


async def verify(cfg, source, at_block: int | None = None, tokens: list[str] | None = None) -> dict[str, Any]:
    conn = connect(cfg.database.path, readonly=True)
    try:
        rng = indexed_range(conn, cfg.chain.name)
        if rng is None:
            raise UsageError("nothing is indexed yet: nothing to verify")
        n = rng.last if at_block is None else at_block
        if not rng.first <= n <= rng.last:
            raise UsageError(f"block {n} is outside the indexed range {rng.first}..{rng.last}")
        mismatches = []
        checked = 0
        for token in tokens or cfg.token_addresses():
            indexed = indexed_balances(conn, cfg.chain.name, token, n)
            state = token_state_at(conn, cfg.chain.name, token, n)
            on_chain = await source.balances_of(token, sorted(indexed), n)
            for holder, value in sorted(indexed.items()):
                checked += 1
                if on_chain[holder] != value:
                    mismatches.append({"token": to_checksum(token), "holder": to_checksum(holder), "kind": "balance",
                                       "indexed": str(value), "chain": str(on_chain[holder])})
            supply = await source.total_supply(token, n)
            indexed_supply = int(state["total_supply"]) if state else 0
            if supply != indexed_supply:
                mismatches.append({"token": to_checksum(token), "holder": None, "kind": "total_supply",
                                   "indexed": str(indexed_supply), "chain": str(supply)})
        return {"chain": cfg.chain.name, "block_number": n, "holders_checked": checked, "mismatches": mismatches,
                "ok": not mismatches}
    finally:
        conn.close()


async def periodic_verify(rt, stop: asyncio.Event) -> None:
    """The daemon's own audit every `verify_interval` seconds (its own connection: never the writer's)."""
    from indexer.daemon import make_source
    interval = rt.cfg.chain.verify_interval
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except asyncio.TimeoutError:
            pass
        source = make_source(rt.cfg, rt.redactor, rt.metrics)
        try:
            await source.connect()
            result = await verify(rt.cfg, source)
            rt.metrics.set_verify_result(len(result["mismatches"]), time.time())
            await rt.worker.call(rt.store.record_verify, result)
            if result["mismatches"]:
                log.error("verify at block %d: %d mismatch(es), first: %s", result["block_number"],
                          len(result["mismatches"]), result["mismatches"][0],
                          extra={"chain": rt.cfg.chain.name, "block_number": result["block_number"]})
            else:
                log.info("verify at block %d: %d holders match the chain", result["block_number"],
                         result["holders_checked"], extra={"chain": rt.cfg.chain.name})
        except Exception as exc:  # an audit that cannot run is reported, never fatal to indexing
            log.warning("periodic verify failed: %s", exc)
        finally:
            await source.close()
