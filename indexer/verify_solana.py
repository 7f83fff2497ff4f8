"""Self-audit on Solana: every owner's indexed balance and the total supply against the node's own account
state (getTokenAccountsByOwner with a mint filter, summed; getTokenSupply), in raw units.

Solana RPC has no historical account reads: accounts are answered as of the node's newest slot at the
commitment. So the audit runs only at the indexed head, and only when that head *is* the node's slot at
the commitment; every answer's context slot is checked to be that same slot.
"""

from __future__ import annotations

from typing import Any

from indexer.captable import indexed_range, token_state_at
from indexer.errors import RpcError, UsageError
from indexer.sources.solana import gather_bounded
from indexer.store import connect
from indexer.verify import indexed_balances

CONCURRENCY = 8
INVALID_PARAMS = -32602


class ChainMoved(Exception):
    """The node answered at another slot than the indexed head (it moved on during the audit)."""


async def verify(cfg, source, at_block: int | None = None, tokens: list[str] | None = None,
                 attempts: int = 3) -> dict[str, Any]:
    conn = connect(cfg.database.path, readonly=True)
    try:
        last_error = ""
        for _ in range(max(1, attempts)):
            rng = indexed_range(conn, cfg.chain.name)
            if rng is None:
                raise UsageError("nothing is indexed yet: nothing to verify")
            n = rng.last
            if at_block is not None and at_block != n:
                raise UsageError(f"cannot verify Solana at slot {at_block}: RPC nodes answer account reads only "
                                 f"for their newest slot, so verify runs at the indexed head ({n})",
                                 hint="run `indexer verify` without --at-block")
            node_slot = await source.head_number()
            if node_slot != n:
                raise UsageError(f"the indexed head is slot {n} but the node's {source.commitment} slot is "
                                 f"{node_slot}: Solana account reads are answered only at the node's newest slot, "
                                 "so balances can be compared only when both are the same",
                                 hint="run verify when the indexer has caught up and the chain is quiet, or "
                                      "against a node paused at the indexed slot")
            try:
                return await _compare(cfg, conn, source, n, tokens or cfg.token_addresses())
            except ChainMoved as exc:
                last_error = str(exc)
        raise UsageError(f"the chain kept moving during verification ({last_error})",
                         hint="retry when the chain is quieter")
    finally:
        conn.close()


async def _compare(cfg, conn, source, n: int, tokens: list[str]) -> dict[str, Any]:
    mismatches = []
    checked = 0

    def at_n(slot: int, what: str) -> None:
        if slot != n:
            raise ChainMoved(f"{what} was answered at slot {slot}, the indexed head is {n}")

    for token in tokens:
        indexed = indexed_balances(conn, cfg.chain.name, token, n)
        owners = sorted(indexed)
        answers = await gather_bounded([lambda o=o: source.owner_balance(o, token) for o in owners], CONCURRENCY)
        for owner, (slot, on_chain) in zip(owners, answers):
            at_n(slot, f"getTokenAccountsByOwner {owner}")
            checked += 1
            if on_chain != indexed[owner]:
                mismatches.append({"token": token, "holder": owner, "kind": "balance",
                                   "indexed": str(indexed[owner]), "chain": str(on_chain)})
        try:
            slot, supply = await source.token_supply(token)
            at_n(slot, f"getTokenSupply {token}")
        except RpcError as exc:
            if exc.code != INVALID_PARAMS:
                raise
            supply = 0  # "Invalid param: not a Token mint": the mint does not exist (yet) on this chain
        state = token_state_at(conn, cfg.chain.name, token, n)
        indexed_supply = int(state["total_supply"]) if state else 0
        if supply != indexed_supply:
            mismatches.append({"token": token, "holder": None, "kind": "total_supply",
                               "indexed": str(indexed_supply), "chain": str(supply)})
    return {"chain": cfg.chain.name, "block_number": n, "holders_checked": checked, "mismatches": mismatches,
            "ok": not mismatches}
