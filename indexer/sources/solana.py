"""The Solana node as a block source: slots, blocks and the few account reads the pipeline needs.

The only module that knows Solana JSON-RPC shapes (agave `rpc/src/rpc.rs`; see shared/reference/solana.md
Part 1). Which slots hold blocks comes from `getBlocks` at the configured commitment, never from stepping
slot by slot and reading errors as gaps; each block comes from `getBlock` (jsonParsed, full details,
maxSupportedTransactionVersion). The WebSocket carries the wake-up subscription (slotSubscribe at
`confirmed`, rootSubscribe at `finalized`); every request goes over HTTP (`http_url`, required): a Solana
node's PubSub WebSocket serves subscriptions only (agave `rpc_pubsub.rs`), unlike an EVM node's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable

from indexer.errors import BlockNotAvailable, ConfigError, RpcError, RpcFatal, RpcGarbage, RpcInconsistent
from indexer.models import BlockRef, RawBlock
from indexer.rpc import HttpRpc, RpcStats, WsRpc

log = logging.getLogger(__name__)

# agave rpc-client-types custom_error.rs
BLOCK_CLEANED_UP = -32001
BLOCK_NOT_AVAILABLE = -32004
SLOT_SKIPPED = -32007
LONG_TERM_STORAGE_SLOT_SKIPPED = -32009
UNSUPPORTED_TRANSACTION_VERSION = -32015
SKIPPED = (SLOT_SKIPPED, LONG_TERM_STORAGE_SLOT_SKIPPED)

MAX_GET_BLOCKS_RANGE = 500_000  # agave MAX_GET_CONFIRMED_BLOCKS_RANGE
DEFAULT_PREVIOUS_BLOCKHASH = "11111111111111111111111111111111"  # parent cleaned up from the ledger


def parse_block_ref(slot: int, block: Any) -> BlockRef:
    """(slot, blockhash, previousBlockhash, blockTime) of a getBlock result; blockTime may be null (0)."""
    if not isinstance(block, dict):
        raise RpcGarbage(f"getBlock {slot}: result is {type(block).__name__}, expected an object")
    blockhash, previous, block_time = block.get("blockhash"), block.get("previousBlockhash"), block.get("blockTime")
    if not isinstance(blockhash, str) or not blockhash or not isinstance(previous, str) or not previous:
        raise RpcGarbage(f"getBlock {slot}: blockhash/previousBlockhash missing or not strings")
    if block_time is not None and (isinstance(block_time, bool) or not isinstance(block_time, int)):
        raise RpcGarbage(f"getBlock {slot}: blockTime {block_time!r} is not an integer")
    return BlockRef(slot, blockhash, previous, block_time or 0)


def _slot_list(result: Any, a: int, b: int) -> list[int]:
    if not isinstance(result, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in result):
        raise RpcGarbage(f"getBlocks [{a}, {b}]: result is not a list of slots")
    if any(not a <= s <= b for s in result) or any(x >= y for x, y in zip(result, result[1:])):
        raise RpcInconsistent(f"getBlocks [{a}, {b}] returned slots outside the range or out of order")
    return result


async def gather_bounded(factories: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the calls with at most `limit` in flight; results in input order. The first failure cancels
    the rest (a half-fetched range is fetched again as a whole)."""
    sem = asyncio.Semaphore(max(1, limit))

    async def one(factory):
        async with sem:
            return await factory()

    tasks = [asyncio.create_task(one(f)) for f in factories]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class SolanaSource:
    """Duck-typed like EvmSource for the shared pipeline: connect/close, heads, block refs, plus Solana reads."""

    request_concurrency = 8  # getBlock calls in flight per range (the HTTP pool holds 4 connections)

    def __init__(self, chain_cfg, stats: RpcStats | None = None, redact: Callable[[str], str] = lambda s: s):
        self.cfg = chain_cfg
        self.commitment: str = chain_cfg.commitment or "finalized"
        self.max_version: int = chain_cfg.max_supported_transaction_version
        if not chain_cfg.http_url:
            raise ConfigError("chain.http_url is required for kind = \"solana\": a Solana node's WebSocket "
                              "(PubSub) serves only subscriptions, JSON-RPC requests need its HTTP endpoint",
                              hint="set chain.http_url, e.g. https://api.devnet.solana.com next to "
                                   "ws_url = wss://api.devnet.solana.com")
        timeout = chain_cfg.request_timeout
        self.ws = WsRpc(chain_cfg.ws_url, timeout=timeout, stats=stats, display_url=redact(chain_cfg.ws_url))
        self.http = HttpRpc(chain_cfg.http_url, timeout=timeout, stats=stats, display_url=redact(chain_cfg.http_url))
        self.head_event = asyncio.Event()
        self.on_head: Callable[[int], None] = lambda slot: None

    @property
    def rpc(self) -> HttpRpc:
        return self.http

    # ---- connection --------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.ws.connect()

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()  # idle connections only: the next session opens fresh ones

    @property
    def closed(self) -> asyncio.Event:
        return self.ws.closed

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason

    @property
    def display_url(self) -> str:
        return self.ws.display_url

    async def subscribe_heads(self) -> None:
        """A wake-up per processed slot (confirmed) or per new root (finalized); the cursor is the truth, so a
        notification only says "look again", and notifications of abandoned forks do no harm."""
        def wake(result: Any) -> None:
            slot = result.get("slot") if isinstance(result, dict) else result
            if isinstance(slot, int) and not isinstance(slot, bool):
                self.on_head(slot)  # the newest slot seen, for the head metric and /readyz
            self.head_event.set()

        if self.commitment == "finalized":
            await self.ws.subscribe("rootSubscribe", [], wake)
        else:
            await self.ws.subscribe("slotSubscribe", [], wake)

    # ---- heads -------------------------------------------------------------------------------------

    async def _get_slot(self, commitment: str) -> int:
        slot = await self.rpc.request("getSlot", [{"commitment": commitment}])
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            raise RpcGarbage(f"getSlot returned {slot!r}, expected a slot number")
        return slot

    async def head_number(self) -> int:
        """The newest slot at the configured commitment: the pipeline's head."""
        return await self._get_slot(self.commitment)

    async def wake_head(self) -> int:
        # slotNotification carries a *processed* slot: ask for the one at our commitment
        return await self._get_slot(self.commitment)

    async def finalized_number(self) -> int:
        return await self._get_slot("finalized")

    async def genesis_hash(self) -> str:
        value = await self.rpc.request("getGenesisHash", [])
        if not isinstance(value, str) or not value:
            raise RpcGarbage(f"getGenesisHash returned {value!r}")
        return value

    # ---- blocks ------------------------------------------------------------------------------------

    def _block_config(self, details: str) -> dict:
        return {"commitment": self.commitment, "encoding": "jsonParsed" if details == "full" else "json",
                "transactionDetails": details, "rewards": False, "maxSupportedTransactionVersion": self.max_version}

    def _fatal(self, exc: RpcError, slot: int) -> RpcError | None:
        """Solana answers a retry cannot fix, as fatal errors that say what to change."""
        if exc.code == BLOCK_CLEANED_UP:
            return RpcFatal(f"slot {slot} is no longer stored by the node at {self.display_url} ({exc})",
                            method="getBlock", code=exc.code,
                            hint="use an RPC node with full ledger history for this range, "
                                 "or raise chain.start_block")
        if exc.code == UNSUPPORTED_TRANSACTION_VERSION:
            return RpcFatal(f"slot {slot} holds a transaction version above "
                            f"chain.max_supported_transaction_version = {self.max_version} ({exc})",
                            method="getBlock", code=exc.code,
                            hint="raise chain.max_supported_transaction_version in the config")
        return None

    async def block_refs(self, numbers: Iterable[int]) -> dict[int, BlockRef]:
        """Blockhash and parent of the given slots on the node's chain at our commitment. A skipped slot
        (-32007/-32009) is absent, and so is a slot the node does not have at the commitment (-32004) although
        its commitment slot is past it: that block left the chain (an abandoned fork). A -32004 above the
        node's commitment slot only means the node is behind (another node behind a load balancer): that is
        retried, never taken for a reorganisation."""
        numbers = list(numbers)

        async def ref_of(n: int) -> BlockRef | int | None:
            """The slot's BlockRef; None when skipped; the slot number itself when not available."""
            try:
                block = await self.rpc.request("getBlock", [n, self._block_config("none")])
            except RpcError as exc:
                if exc.code in SKIPPED:
                    return None
                if exc.code == BLOCK_NOT_AVAILABLE:
                    return n
                raise self._fatal(exc, n) or exc
            return n if block is None else parse_block_ref(n, block)

        answers = await gather_bounded([lambda n=n: ref_of(n) for n in numbers], self.request_concurrency)
        unavailable = [a for a in answers if isinstance(a, int)]
        if unavailable:
            node_slot = await self.head_number()
            if max(unavailable) > node_slot:
                raise BlockNotAvailable(f"the node's {self.commitment} slot {node_slot} is behind slot "
                                        f"{max(unavailable)}: waiting for it to catch up", method="getBlock")
        return {a.number: a for a in answers if isinstance(a, BlockRef)}

    async def produced_slots(self, a: int, b: int) -> list[int]:
        """Slots in [a, b] that hold a block on the chain at our commitment (getBlocks, within its limit)."""
        out: list[int] = []
        start = a
        while start <= b:
            end = min(b, start + MAX_GET_BLOCKS_RANGE - 1)
            result = await self.rpc.request("getBlocks", [start, end, {"commitment": self.commitment}])
            out.extend(_slot_list(result, start, end))
            start = end + 1
        return out

    async def block(self, slot: int) -> RawBlock:
        """One produced slot with its transactions (jsonParsed), as the decoder reads it."""
        try:
            block = await self.rpc.request("getBlock", [slot, self._block_config("full")])
        except RpcError as exc:
            fatal = self._fatal(exc, slot)
            if fatal is not None:
                raise fatal from None
            if exc.code in SKIPPED:
                raise RpcInconsistent(f"getBlocks listed slot {slot} but getBlock says it was skipped: the node "
                                      "switched forks while we asked; fetching again", method="getBlock",
                                      code=exc.code) from None
            raise
        if block is None:
            raise BlockNotAvailable(f"getBlock {slot}: no block yet", method="getBlock")
        ref = parse_block_ref(slot, block)
        if not isinstance(block.get("transactions"), list):
            raise RpcGarbage(f"getBlock {slot}: no transactions list (transactionDetails full was asked)")
        return RawBlock(ref, payload=block)

    async def blocks(self, slots: list[int]) -> list[RawBlock]:
        return await gather_bounded([lambda s=s: self.block(s) for s in slots], self.request_concurrency)

    # ---- account reads (first-seen token metadata, verify) --------------------------------------------

    async def account_parsed(self, address: str) -> tuple[int, dict | None]:
        """(context slot, getAccountInfo value with jsonParsed data, or None when the account does not exist)."""
        reply = await self.rpc.request("getAccountInfo", [address, {"encoding": "jsonParsed",
                                                                    "commitment": self.commitment}])
        slot, value = _context_value(reply, "getAccountInfo")
        if value is not None and not isinstance(value, dict):
            raise RpcGarbage(f"getAccountInfo {address}: value is not an object")
        return slot, value

    async def owner_balance(self, owner: str, mint: str) -> tuple[int, int]:
        """(context slot, sum of the raw amounts of every token account of `mint` owned by `owner`)."""
        reply = await self.rpc.request("getTokenAccountsByOwner", [owner, {"mint": mint},
                                                                    {"encoding": "jsonParsed",
                                                                     "commitment": self.commitment}])
        slot, value = _context_value(reply, "getTokenAccountsByOwner")
        if not isinstance(value, list):
            raise RpcGarbage(f"getTokenAccountsByOwner {owner}: value is not a list")
        total = 0
        for item in value:
            try:
                info = item["account"]["data"]["parsed"]["info"]
                if info["mint"] != mint or info["owner"] != owner:
                    raise RpcInconsistent(f"getTokenAccountsByOwner {owner} {{mint: {mint}}} returned account "
                                          f"{item.get('pubkey')} of mint {info['mint']} owned by {info['owner']}")
                total += _raw(info["tokenAmount"]["amount"], "tokenAmount.amount")
            except (KeyError, TypeError) as exc:
                raise RpcGarbage(f"getTokenAccountsByOwner {owner}: token account without parsed amount "
                                 f"({type(exc).__name__}: {exc})") from None
        return slot, total

    async def token_supply(self, mint: str) -> tuple[int, int]:
        """(context slot, raw total supply of `mint`)."""
        reply = await self.rpc.request("getTokenSupply", [mint, {"commitment": self.commitment}])
        slot, value = _context_value(reply, "getTokenSupply")
        try:
            return slot, _raw(value["amount"], "amount")
        except (KeyError, TypeError):
            raise RpcGarbage(f"getTokenSupply {mint}: value has no raw amount") from None


def _context_value(reply: Any, method: str) -> tuple[int, Any]:
    try:
        slot = reply["context"]["slot"]
        value = reply["value"]
    except (KeyError, TypeError):
        raise RpcGarbage(f"{method}: reply is not {{context, value}}", method=method) from None
    if isinstance(slot, bool) or not isinstance(slot, int):
        raise RpcGarbage(f"{method}: context.slot is not a slot number", method=method)
    return slot, value


def _raw(value: Any, field: str) -> int:
    """Raw token amounts are decimal strings (u64): never parsed through a float."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise RpcGarbage(f"{field} {value!r} is not a decimal string of raw units")


class SolanaFetcher:
    """What the shared pipeline asks of a chain, for Solana: produced slots with their blocks."""

    slots_may_be_empty = True  # a range without blocks is normal: skipped slots
    target_items = 100         # blocks per range the adaptive range aims at (full blocks are large)

    def __init__(self, source: SolanaSource):
        self.source = source

    async def fetch_linked(self, a: int, b: int) -> list[RawBlock]:
        """Every produced slot in [a, b] at our commitment, in order; the pipeline checks each block's
        previousBlockhash against its predecessor (and the first against the cursor)."""
        slots = await self.source.produced_slots(a, b)
        return await self.source.blocks(slots)

    async def fetch_range(self, a: int, b: int) -> tuple[list[RawBlock], int]:
        """Deep history: the produced slots in [a, b] with their blocks; (blocks, number of blocks). The range is
        in slots; the pipeline adapts it towards `target_items` blocks (SolanaPipeline bounds it)."""
        slots = await self.source.produced_slots(a, b)
        return await self.source.blocks(slots), len(slots)
