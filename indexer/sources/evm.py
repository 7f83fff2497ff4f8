"""The EVM node as a block source: heads, headers, logs and the few eth_calls decoding needs.

This is the only module that knows EVM JSON-RPC shapes. History and calls go over HTTP when
`http_url` is given (providers meter WebSocket and HTTP alike, and HTTP survives proxies better),
otherwise over the WebSocket, which always carries the newHeads subscription.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from indexer.decoders.abi import AbiShapeError, decode_string_result, decode_uint_result, encode_address_arg, selector
from indexer.errors import RpcError, RpcGarbage, RpcInconsistent
from indexer.models import BlockRef, RawLog
from indexer.rpc import HttpRpc, RpcStats, WsRpc

log = logging.getLogger(__name__)

SEL_NAME = selector("name()")
SEL_SYMBOL = selector("symbol()")
SEL_DECIMALS = selector("decimals()")
SEL_TOTAL_SUPPLY = selector("totalSupply()")
SEL_BALANCE_OF = selector("balanceOf(address)")


def parse_header(h: dict) -> BlockRef:
    try:
        return BlockRef(int(h["number"], 16), h["hash"].lower(), h["parentHash"].lower(), int(h["timestamp"], 16))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RpcGarbage(f"malformed block header ({type(exc).__name__}: {exc})") from None


def parse_log(d: dict) -> RawLog:
    """One log object as returned by eth_getLogs (shape checked: a garbled answer is retried, not decoded)."""
    try:
        return RawLog(d["address"].lower(), tuple(t.lower() for t in d["topics"]), d["data"].lower(),
                      int(d["blockNumber"], 16), d["blockHash"].lower(), d["transactionHash"].lower(),
                      int(d["transactionIndex"], 16), int(d["logIndex"], 16))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RpcGarbage(f"malformed log object ({type(exc).__name__}: {exc})") from None


def _is_lower(d: dict) -> bool:
    return all(v == v.lower() for v in (d["address"], d["data"], d["blockHash"], d["transactionHash"],
                                          *d["topics"]))


def parse_logs(items: Any) -> list[RawLog]:
    """eth_getLogs answer -> RawLogs. Nodes write hex in lower case (geth, erigon, nethermind, reth, anvil);
    checked on the first log of each answer (one serializer does not mix cases), else every log is lowered."""
    if not isinstance(items, list):
        raise RpcGarbage(f"eth_getLogs returned {type(items).__name__}, expected a list")
    if not items:
        return []
    try:
        if not _is_lower(items[0]):
            out = [parse_log(d) for d in items]
            if any(d.get("removed") for d in items):
                raise RpcInconsistent("eth_getLogs returned a removed log: the chain reorganised during the query")
            return out
        out = []
        append = out.append
        for d in items:
            if d.get("removed"):
                raise RpcInconsistent("eth_getLogs returned a removed log: the chain reorganised during the query")
            append(RawLog(d["address"], tuple(d["topics"]), d["data"], int(d["blockNumber"], 16), d["blockHash"],
                          d["transactionHash"], int(d["transactionIndex"], 16), int(d["logIndex"], 16)))
        return out
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RpcGarbage(f"malformed log object ({type(exc).__name__}: {exc})") from None


class EvmSource:
    def __init__(self, ws_url: str, http_url: str | None = None, *, timeout: float = 30.0,
                 stats: RpcStats | None = None, redact: Callable[[str], str] = lambda s: s):
        self.ws = WsRpc(ws_url, timeout=timeout, stats=stats, display_url=redact(ws_url))
        self.http = HttpRpc(http_url, timeout=timeout, stats=stats, display_url=redact(http_url)) if http_url else None
        self.head_event = asyncio.Event()
        self.latest_head: BlockRef | None = None
        self.on_head: Callable[[int], None] = lambda number: None  # e.g. the chain-head metric

    @property
    def history(self):
        return self.http or self.ws

    async def connect(self) -> None:
        await self.ws.connect()

    async def close(self) -> None:
        await self.ws.close()
        if self.http:
            await self.http.close()

    @property
    def closed(self) -> asyncio.Event:
        return self.ws.closed

    async def subscribe_heads(self) -> None:
        def on_head(result: Any) -> None:
            try:
                ref = parse_header(result)
            except RpcError:
                log.warning("ignored a malformed newHeads notification")
                return
            if self.latest_head is None or ref.number >= self.latest_head.number or ref.hash != self.latest_head.hash:
                self.latest_head = ref
            self.on_head(ref.number)
            self.head_event.set()

        await self.ws.subscribe("eth_subscribe", ["newHeads"], on_head)

    @property
    def display_url(self) -> str:
        return self.ws.display_url

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason

    async def wake_head(self) -> int:
        """The head after a wake-up: the newHeads notification carries it."""
        if self.latest_head is not None:
            return self.latest_head.number
        return await self.head_number()

    async def chain_id(self) -> int:
        return int(await self.history.request("eth_chainId"), 16)

    async def head_number(self) -> int:
        return int(await self.history.request("eth_blockNumber"), 16)

    async def finalized_number(self) -> int | None:
        """The node's `finalized` block, or None where the node does not know the tag."""
        try:
            h = await self.history.request("eth_getBlockByNumber", ["finalized", False])
        except RpcError as exc:
            if exc.retryable and not exc.code:
                raise
            return None
        return parse_header(h).number if h else None

    async def block_ref(self, number: int | str) -> BlockRef | None:
        tag = hex(number) if isinstance(number, int) else number
        h = await self.history.request("eth_getBlockByNumber", [tag, False])
        return parse_header(h) if h else None

    async def block_refs(self, numbers: Iterable[int]) -> dict[int, BlockRef]:
        numbers = list(numbers)
        out: dict[int, BlockRef] = {}
        for i in range(0, len(numbers), 500):
            chunk = numbers[i:i + 500]
            results = await self.history.batch([("eth_getBlockByNumber", [hex(n), False]) for n in chunk])
            for n, h in zip(chunk, results):
                if h is None:
                    continue  # not (yet) known to this node
                ref = parse_header(h)
                if ref.number != n:
                    raise RpcInconsistent(f"asked for block {n}, node answered block {ref.number}")
                out[n] = ref
        return out

    async def logs_range(self, start: int, end: int, addresses: list[str]) -> list[RawLog]:
        items = await self.history.request("eth_getLogs", [{"fromBlock": hex(start), "toBlock": hex(end),
                                                            "address": addresses}])
        logs = parse_logs(items)
        for lg in logs:
            if not start <= lg.block_number <= end:
                raise RpcInconsistent(f"eth_getLogs [{start}, {end}] returned a log of block {lg.block_number}")
        return logs

    async def logs_by_hash(self, block_hash: str, addresses: list[str]) -> list[RawLog]:
        items = await self.history.request("eth_getLogs", [{"blockHash": block_hash, "address": addresses}])
        logs = parse_logs(items)
        for lg in logs:
            if lg.block_hash != block_hash:
                raise RpcInconsistent(f"eth_getLogs for block {block_hash} returned a log of block {lg.block_hash}")
        return logs

    # ---- eth_call helpers (token metadata, hashed strings, self-audit) ---------------------------

    async def _call(self, to: str, data: str, block: int | str) -> str:
        tag = hex(block) if isinstance(block, int) else block
        return await self.history.request("eth_call", [{"to": to, "data": data}, tag])

    async def token_string(self, token: str, fn: str, block: int | str) -> str | None:
        """name()/symbol() at a block; None when the contract has no such function or the node no such state."""
        sel = SEL_NAME if fn == "name" else SEL_SYMBOL
        try:
            return decode_string_result(await self._call(token, sel, block))
        except (RpcError, AbiShapeError) as exc:
            if isinstance(exc, RpcError) and exc.retryable and exc.code is None:
                raise  # transport trouble: let the caller retry
            log.info("%s() of %s at block %s unavailable: %s", fn, token, block, exc)
            return None

    async def token_decimals(self, token: str, block: int | str) -> int | None:
        try:
            value = decode_uint_result(await self._call(token, SEL_DECIMALS, block))
        except (RpcError, AbiShapeError) as exc:
            if isinstance(exc, RpcError) and exc.retryable and exc.code is None:
                raise
            return None
        return value if value <= 255 else None

    async def balances_of(self, token: str, holders: list[str], block: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(holders), 200):
            chunk = holders[i:i + 200]
            results = await self.history.batch(
                [("eth_call", [{"to": token, "data": SEL_BALANCE_OF + encode_address_arg(h)}, hex(block)])
                 for h in chunk])
            for h, r in zip(chunk, results):
                out[h] = decode_uint_result(r)
        return out

    async def total_supply(self, token: str, block: int) -> int:
        return decode_uint_result(await self._call(token, SEL_TOTAL_SUPPLY, block))


class EvmFetcher:
    """What the shared pipeline asks of a chain, for EVM: blocks with their logs, linked or by range."""

    target_items = 10_000  # eth_getLogs answer size (logs) the range adapts towards

    def __init__(self, source: EvmSource):
        self.source = source

    async def fetch_linked(self, a: int, b: int, addresses: list[str]) -> list:
        """Every block in [a, b] (the contiguous run the node has), with headers, so the pipeline can check
        each block links to its parent. A single new head comes by hash: one atomic request."""
        from indexer.models import RawBlock
        head = self.source.latest_head
        if a == b and head is not None and head.number == a:
            headers = {a: head}
        else:
            headers = await self.source.block_refs(range(a, b + 1))
        end = a - 1
        while end + 1 <= b and end + 1 in headers:
            end += 1
        if end < a:
            return []
        if a == end:
            logs = await self.source.logs_by_hash(headers[a].hash, addresses)
        else:
            logs = await self.source.logs_range(a, end, addresses)
            _check_hashes(logs, headers)
        by_block: dict[int, list[RawLog]] = {}
        for lg in logs:
            by_block.setdefault(lg.block_number, []).append(lg)
        return [RawBlock(headers[n], tuple(by_block.get(n, ()))) for n in range(a, end + 1)]

    async def fetch_range(self, a: int, b: int, addresses: list[str]) -> tuple[list, int]:
        """Blocks in [a, b] that have logs of the watched contracts, plus block b (the new cursor).
        Returns (blocks, number of logs). Raises RpcRangeTooLarge for the pipeline to split."""
        from indexer.models import RawBlock
        logs = await self.source.logs_range(a, b, addresses)
        numbers = sorted({lg.block_number for lg in logs} | {b})
        headers = await self.source.block_refs(numbers)
        if b not in headers:
            raise RpcInconsistent(f"node has no header for block {b} although it answered logs up to it")
        _check_hashes(logs, headers)
        by_block: dict[int, list[RawLog]] = {}
        for lg in logs:
            by_block.setdefault(lg.block_number, []).append(lg)
        return [RawBlock(headers[n], tuple(by_block.get(n, ()))) for n in numbers], len(logs)


def _check_hashes(logs: list[RawLog], headers: dict[int, BlockRef]) -> None:
    for lg in logs:
        h = headers.get(lg.block_number)
        if h is None or h.hash != lg.block_hash:
            raise RpcInconsistent(f"log {lg.log_index} of block {lg.block_number} carries hash {lg.block_hash}, "
                                  f"the header says {h.hash if h else 'nothing'}: the chain changed while we asked")
