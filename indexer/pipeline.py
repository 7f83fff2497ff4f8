"""source -> decode -> store, for history and for the head, with reorg detection and rollback.

Backfill and live following are one loop fed from two ends: `advance(target)` indexes everything from
the stored cursor up to `target`. Blocks deeper than max_reorg_depth (or finalized) come by adaptive
eth_getLogs ranges, fetched ahead concurrently and committed strictly in order; blocks near the head come
with their headers, each checked to link to its parent, so a reorg is seen as a parent-hash mismatch and
rolled back to the common ancestor. Reconnecting is simply "advance again from the cursor", which is why
no reconnect can leave a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

from indexer.backoff import request_delay, retry_on_connection, retry_session, session_delay
from indexer.config import Config
from indexer.decoders.evm import T, Binding, EvmDecoder
from indexer.errors import (ChainMismatchError, NodeStalled, ReorgTooDeepError, RpcError, RpcInconsistent,
                            RpcRangeTooLarge, RpcTransportError, UsageError)
from indexer.logs import log_context
from indexer.models import BlockRef, DecodedBlock, RawBlock, RawLog
from indexer.sources.evm import EvmSource
from indexer.store import Store
from indexer.worker import StoreWorker

log = logging.getLogger(__name__)

TAIL_WINDOW = 64          # blocks fetched with headers per step near the head
TARGET_LOGS = 10_000      # eth_getLogs answer size the range adapts towards
FINALIZED_REFRESH = 5.0   # seconds between `finalized` look-ups


class _Rebind(Exception):
    """Decoding found a contract to watch (an identity registry) that the fetch did not include."""


@dataclass
class Progress:
    blocks: int = 0
    events: int = 0
    started: float = 0.0


class EvmPipeline:
    def __init__(self, cfg: Config, source: EvmSource, store: Store, worker: StoreWorker, metrics=None,
                 heartbeat: Callable[[], None] | None = None, on_progress: Callable[["EvmPipeline"], None] | None = None):
        self.cfg = cfg
        self.chain = cfg.chain
        self.source = source
        self.store = store
        self.worker = worker
        self.metrics = metrics
        self.heartbeat = heartbeat or (lambda: None)
        self.on_progress = on_progress or (lambda p: None)
        self.cursor: BlockRef | None = None
        self.first_block: int | None = None
        self.head: int = -1
        self.finalized: int | None = None
        self._finalized_at = 0.0
        self.range_size = cfg.chain.initial_getlogs_range
        self.known_tokens: set[str] = set()
        self.decoder = EvmDecoder({})
        self.progress = Progress(started=time.monotonic())
        self.start_block = cfg.chain.start_block
        self._prepared = False
        # set by SIGTERM/SIGINT: the block in hand is finished (or abandoned) atomically, then we return
        self.stop = asyncio.Event()

    # ---- setup -----------------------------------------------------------------------------------

    async def _db(self, fn, *args):
        return await self.worker.call(fn, *args)

    async def _load_state(self) -> None:
        """(Re)build everything derived from the database: cursor, watched contracts, known tokens."""
        self.cursor = await self._db(self.store.cursor)
        self.first_block = await self._db(self.store.first_block)
        bindings: dict[str, list[Binding]] = {}
        for t in self.cfg.tokens:
            addr = t.address.lower()
            bindings.setdefault(addr, []).append(Binding(addr, "token", t.profiles))
            if t.identity_registry:
                bindings.setdefault(t.identity_registry.lower(), []).append(
                    Binding(addr, "identity_registry", ()))
        for address, token, role, _from in await self._db(self.store.watched_contracts):
            bindings.setdefault(address, []).append(Binding(token, role, ()))
        self.decoder = EvmDecoder(bindings)
        self.known_tokens = await self._db(self.store.known_tokens)
        if self.metrics and self.cursor:
            self.metrics.set_indexed(self.cursor.number, self.cursor.timestamp)

    async def prepare(self) -> None:
        """Check that node, config and database describe the same chain."""
        chain_id = await self._request(self.source.chain_id)
        if self.chain.chain_id is not None and chain_id != self.chain.chain_id:
            raise ChainMismatchError(f"the node at {self.source.ws.display_url} serves chain id {chain_id}, "
                                     f"config says chain.chain_id = {self.chain.chain_id}",
                                     hint="point chain.ws_url at the right network or fix chain.chain_id")
        genesis = await self._request(self.source.block_ref, 0)
        if genesis is not None:
            await self._db(self.store.check_genesis, genesis.hash)
        await self._load_state()
        self._prepared = True

    # ---- retries on a live connection ------------------------------------------------------------

    async def _request(self, fn, *args):
        attempt = 0
        while True:
            try:
                return await fn(*args)
            except Exception as exc:
                if not retry_on_connection(exc):
                    raise
                attempt += 1
                delay = request_delay(attempt, exc)
                log.warning("%s (attempt %d, retrying in %.1fs)", exc, attempt, delay)
                await asyncio.sleep(delay)

    async def refresh_head(self) -> int:
        self.head = await self._request(self.source.head_number)
        if self.metrics:
            self.metrics.set_chain_head(self.head)
        await self._refresh_finalized()
        return self.head

    async def _refresh_finalized(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._finalized_at < FINALIZED_REFRESH:
            return
        self._finalized_at = now
        self.finalized = await self._request(self.source.finalized_number)
        if self.metrics and self.finalized is not None:
            self.metrics.set_finalized(self.finalized)

    # ---- the main loop ---------------------------------------------------------------------------

    def next_block(self) -> int:
        return self.cursor.number + 1 if self.cursor else self.start_block

    async def advance(self, target: int, check_cursor: bool = False) -> None:
        """Index every block from the cursor up to `target` (inclusive).

        The cursor is checked against the node on request (session start) and whenever the head does not
        move past it: a reorg to the same or a lower height shows no new parent to compare."""
        if check_cursor or (self.cursor is not None and target <= self.cursor.number):
            await self.check_cursor()
        while self.next_block() <= target and not self.stop.is_set():
            self.heartbeat()
            nxt = self.next_block()
            deep = max(self.head - self.chain.max_reorg_depth, self.finalized if self.finalized is not None else -1)
            if nxt <= deep:
                await self._range_mode(nxt, min(target, deep))
            else:
                await self._tail_mode(nxt, min(target, nxt + TAIL_WINDOW - 1))

    async def check_cursor(self) -> None:
        """On (re)start: is the stored cursor still on the node's chain? If not, walk back."""
        if self.cursor is None:
            return
        node = await self._request(self.source.block_ref, self.cursor.number)
        if node is None or node.hash != self.cursor.hash:
            await self._reorg(reason=f"stored block {self.cursor.number} {self.cursor.hash} is "
                                     f"{'missing' if node is None else node.hash} on the node")

    # ---- near the head: headers checked block by block -------------------------------------------

    async def _tail_mode(self, a: int, b: int) -> None:
        while True:
            head = self.source.latest_head
            if a == b and head is not None and head.number == a:
                headers = {a: head}
            else:
                headers = await self._request(self.source.block_refs, range(a, b + 1))
            # use the contiguous run the node has (it may lag behind its own head notification)
            end = a - 1
            while end + 1 <= b and end + 1 in headers:
                end += 1
            if end < a:
                return
            first = headers[a]
            if self.cursor is not None and first.parent_hash != self.cursor.hash:
                await self._reorg(reason=f"block {a} {first.hash} has parent {first.parent_hash}, "
                                         f"stored block {self.cursor.number} is {self.cursor.hash}")
                return
            for n in range(a + 1, end + 1):
                if headers[n].parent_hash != headers[n - 1].hash:
                    raise RpcInconsistent(f"block {n} does not link to block {n - 1}: the node reorganised "
                                          "while answering")
            addresses = self.decoder.addresses()
            try:
                if a == end:
                    logs = await self._request(self.source.logs_by_hash, first.hash, addresses)
                else:
                    logs = await self._request(self.source.logs_range, a, end, addresses)
                    for lg in logs:
                        if lg.block_hash != headers[lg.block_number].hash:
                            raise RpcInconsistent(f"log of block {lg.block_number} has hash {lg.block_hash}, "
                                                  f"header says {headers[lg.block_number].hash}")
            except RpcInconsistent as exc:
                log.warning("%s: fetching again", exc)
                continue
            by_block: dict[int, list[RawLog]] = {}
            for lg in logs:
                by_block.setdefault(lg.block_number, []).append(lg)
            raws = [RawBlock(headers[n], tuple(by_block.get(n, ()))) for n in range(a, end + 1)]
            try:
                await self._commit(raws)
            except _Rebind:
                continue
            return

    # ---- deep history: adaptive ranges fetched ahead -----------------------------------------------

    async def _fetch_chunk(self, a: int, b: int, addresses: list[str]) -> tuple[int, int, list[RawBlock]]:
        while True:
            t0 = time.monotonic()
            logs = await self._get_logs(a, b, addresses)
            numbers = sorted({lg.block_number for lg in logs} | {b})
            headers = await self._request(self.source.block_refs, numbers)
            if b not in headers:
                raise RpcInconsistent(f"node has no header for block {b} it returned logs up to")
            bad = [lg for lg in logs if headers[lg.block_number].hash != lg.block_hash]
            if bad:
                log.warning("logs of block %d carry hash %s, its header %s: fetching [%d, %d] again",
                            bad[0].block_number, bad[0].block_hash, headers[bad[0].block_number].hash, a, b)
                await asyncio.sleep(0.2)
                continue
            self._adapt_range(len(logs), time.monotonic() - t0, b - a + 1)
            by_block: dict[int, list[RawLog]] = {}
            for lg in logs:
                by_block.setdefault(lg.block_number, []).append(lg)
            raws = [RawBlock(headers[n], tuple(by_block.get(n, ()))) for n in numbers]
            return a, b, raws

    def _adapt_range(self, n_logs: int, seconds: float, span: int) -> None:
        if span < self.range_size:
            return  # a shortened last chunk says nothing about the range
        if n_logs < TARGET_LOGS // 2 and seconds < 2.0:
            self.range_size = min(self.chain.max_getlogs_range, self.range_size * 2)
        elif n_logs > TARGET_LOGS * 2:
            self.range_size = max(1, self.range_size // 2)

    async def _get_logs(self, a: int, b: int, addresses: list[str]) -> list[RawLog]:
        """eth_getLogs over [a, b]; a range error splits it (at the provider's hint when it gives one)."""
        try:
            logs = await self._request(self.source.logs_range, a, b, addresses)
            if self.metrics:
                self.metrics.observe_getlogs_range(b - a + 1)
            return logs
        except RpcRangeTooLarge as exc:
            if a == b:
                raise
            hint = exc.suggested_to
            mid = hint if hint is not None and a <= hint < b else (a + b) // 2
            self.range_size = max(1, min(self.range_size, mid - a + 1))
            log.info("eth_getLogs [%d, %d] too large (%s): splitting at %d, range now %d blocks", a, b, exc, mid,
                     self.range_size)
            left = await self._get_logs(a, mid, addresses)
            return left + await self._get_logs(mid + 1, b, addresses)

    async def _range_mode(self, start: int, end: int) -> None:
        addresses = self.decoder.addresses()
        window = max(1, self.chain.fetch_concurrency)
        tasks: deque[asyncio.Task] = deque()
        nxt = start
        try:
            while nxt <= end or tasks:
                while len(tasks) < window + 1 and nxt <= end:
                    b = min(end, nxt + self.range_size - 1)
                    tasks.append(asyncio.create_task(self._fetch_chunk(nxt, b, addresses)))
                    nxt = b + 1
                a, b, raws = await tasks.popleft()
                self.heartbeat()
                if self.stop.is_set():
                    return
                try:
                    await self._commit(raws, batch=True)
                except _Rebind:
                    # a new contract to watch: everything fetched from `a` on missed its logs
                    for t in tasks:
                        t.cancel()
                    tasks.clear()
                    addresses = self.decoder.addresses()
                    nxt = a
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    # ---- decode, enrich, commit ------------------------------------------------------------------

    async def _enrich(self, raw: RawBlock) -> RawBlock:
        """eth_calls for what logs cannot carry: names/symbols behind hashed indexed strings."""
        calls: dict[tuple[str, str], Any] = {}
        n = raw.ref.number
        for lg in raw.logs:
            if lg.topics and lg.topics[0] == T["UpdatedTokenInformation"] and (lg.address, "name") not in calls:
                for fn in ("name", "symbol"):
                    # the value at this block, and at the one before (two updates in one block)
                    calls[(lg.address, fn)] = [
                        await self._request(self.source.token_string, lg.address, fn, n),
                        await self._request(self.source.token_string, lg.address, fn, max(0, n - 1)),
                        await self._request(self.source.token_string, lg.address, fn, "latest"),
                    ]
        return replace(raw, calls=calls) if calls else raw

    async def _token_info(self, token: str, n: int) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for fn in ("name", "symbol"):
            value = await self._request(self.source.token_string, token, fn, n)
            info[fn] = value
        info["decimals"] = await self._request(self.source.token_decimals, token, n)
        return info

    async def _decode(self, raws: list[RawBlock]) -> list[DecodedBlock]:
        out = []
        for raw in raws:
            if any(lg.topics and lg.topics[0] == T["UpdatedTokenInformation"] for lg in raw.logs):
                raw = await self._enrich(raw)
            decoded = self.decoder.decode(raw)
            rebind = False
            for address, token, role in decoded.new_watched:
                if address not in self.decoder.addresses():
                    rebind = True
                self.decoder.bind(address, Binding(token, role, ()))
            if rebind:
                log.info("token binds contract(s) %s at block %d: fetching again with them",
                         [w[0] for w in decoded.new_watched], raw.ref.number)
                raise _Rebind()
            fresh = {ev.token for ev in decoded.events} - self.known_tokens
            if fresh:
                infos = []
                for token in sorted(fresh):
                    infos.append((token, await self._token_info(token, raw.ref.number)))
                    self.known_tokens.add(token)
                decoded = replace(decoded, token_info=tuple(infos))
            out.append(decoded)
        return out

    async def _commit(self, raws: list[RawBlock], batch: bool = False) -> None:
        decoded = await self._decode(raws)
        t0 = time.perf_counter()
        limit = self.cfg.database.batch_blocks if batch else len(decoded)
        for i in range(0, len(decoded), max(1, limit)):
            group = decoded[i:i + limit]
            with log_context(chain=self.chain.name, block_number=group[-1].ref.number):
                try:
                    await self._db(self.store.commit_blocks, group)
                except BaseException:
                    # the decoder may have learnt bindings from blocks that were not written
                    await self._load_state()
                    raise
            self.cursor = group[-1].ref
            if self.first_block is None:
                self.first_block = group[0].ref.number
        seconds = time.perf_counter() - t0
        n_events = sum(len(d.events) for d in decoded)
        self.progress.events += n_events
        self.progress.blocks = self.cursor.number - (self.first_block or 0) + 1
        if self.metrics:
            self.metrics.block_committed(self.cursor.number, self.cursor.timestamp, commit_seconds=seconds)
            counts: dict[str, int] = {}
            for d in decoded:
                for ev in d.events:
                    counts[ev.event_type] = counts.get(ev.event_type, 0) + 1
                for s in d.skipped:
                    self.metrics.count_skipped_log(s.reason)
            for k, v in counts.items():
                self.metrics.count_events(k, v)
        self.on_progress(self)

    # ---- reorgs ------------------------------------------------------------------------------------

    async def _reorg(self, reason: str) -> None:
        cur = self.cursor
        depth_limit = self.chain.max_reorg_depth
        first = self.first_block if self.first_block is not None else cur.number
        low = max(first, cur.number - depth_limit)
        stored = await self._db(self.store.stored_blocks, low, cur.number)
        node = await self._request(self.source.block_refs, [b.number for b in stored])
        ancestor = next((b for b in stored if b.number in node and node[b.number].hash == b.hash), None)
        if ancestor is None:
            if low > first:
                raise ReorgTooDeepError(
                    f"chain reorganisation deeper than max_reorg_depth={depth_limit}: stored blocks "
                    f"{low}..{cur.number} all differ from the node ({reason})",
                    hint="the cap table was not changed; investigate the node, raise max_reorg_depth if this "
                         "chain reorganises that deep, then restart")
            ancestor = BlockRef(first - 1, "", "", 0)
        depth = cur.number - ancestor.number
        if depth > depth_limit:
            raise ReorgTooDeepError(f"chain reorganisation of depth {depth} > max_reorg_depth={depth_limit} "
                                    f"({reason})", hint="the cap table was not changed; see the logs")
        if self.finalized is not None and ancestor.number < self.finalized and cur.number >= self.finalized:
            old = next((b for b in stored if b.number == self.finalized), None)
            if old is not None and self.finalized in node and node[self.finalized].hash != old.hash:
                raise ReorgTooDeepError(f"finalized block {self.finalized} changed hash ({reason})",
                                        hint="the node is misbehaving; the cap table was not changed")
        log.warning("reorg: rolling back %d block(s) to %d %s (%s); old head %s, node now has %s at %d",
                    depth, ancestor.number, ancestor.hash or "(before the first block)", reason, cur.hash,
                    node.get(cur.number).hash if cur.number in node else "nothing", cur.number,
                    extra={"chain": self.chain.name, "block_number": cur.number, "depth": depth})
        stats = await self._db(self.store.rollback_to, ancestor)
        log.info("reorg rollback removed %s", stats)
        if self.metrics:
            self.metrics.observe_reorg(depth)
        await self._load_state()

    # ---- following the head ------------------------------------------------------------------------

    async def follow_once(self, stop: asyncio.Event) -> None:
        """One connected session: subscribe, catch up, follow until the socket dies or `stop` is set."""
        await self.source.connect()
        try:
            await self.source.subscribe_heads()
            if not self._prepared:
                await self.prepare()
            else:
                await self._load_state()
            await self.refresh_head()
            await self.advance(self.head - self.chain.confirmations, check_cursor=True)
            last_progress = time.monotonic()
            stall_warned = False
            while not stop.is_set():
                self.heartbeat()
                woke = await _wait_any(self.source.head_event, stop, self.source.closed, timeout=1.0)
                if stop.is_set():
                    return
                if self.source.closed.is_set():
                    raise RpcTransportError(f"WebSocket to {self.source.ws.display_url} closed: "
                                            f"{self.source.ws.close_reason}")
                if woke:
                    self.source.head_event.clear()
                    head = self.source.latest_head
                    if head is not None:
                        self.head = head.number
                        if self.metrics:
                            self.metrics.set_chain_head(head.number)
                    await self._refresh_finalized()
                    await self.advance(self.head - self.chain.confirmations)
                    last_progress = time.monotonic()
                    stall_warned = False
                    continue
                if time.monotonic() - last_progress >= self.chain.stall_timeout:
                    # no head for stall_timeout: is the socket stale, or has the node stopped?
                    before = self.head
                    await self.refresh_head()
                    if self.head > before:
                        raise NodeStalled(f"no newHeads for {self.chain.stall_timeout:.0f}s while the node moved "
                                          f"from block {before} to {self.head}: the subscription is stale, "
                                          "reconnecting")
                    if not stall_warned:
                        log.warning("node has produced no block for %.0fs (head %d)", time.monotonic() - last_progress,
                                    self.head, extra={"chain": self.chain.name, "block_number": self.head})
                        stall_warned = True
                    last_progress = time.monotonic()
        finally:
            await self.source.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow forever; reconnect with jittered backoff on anything retryable."""
        self.stop = stop
        failures = 0
        sessions = 0
        while not stop.is_set():
            before = self.cursor.number if self.cursor else None
            try:
                if sessions and self.metrics:
                    self.metrics.count_websocket_reconnect()
                sessions += 1
                await self.follow_once(stop)
                return
            except Exception as exc:
                if not retry_session(exc):
                    raise
                progressed = (self.cursor.number if self.cursor else None) != before
                failures = 1 if progressed else failures + 1
                delay = session_delay(failures, exc)
                log.warning("connection problem: %s; reconnecting in %.1fs (attempt %d)", exc, delay, failures,
                            extra={"chain": self.chain.name})
                await _wait_any(stop, timeout=delay)

    async def backfill(self, start: int, end: int, stop: asyncio.Event | None = None) -> None:
        """Index [start, end] (already indexed blocks are left as they are), then return."""
        stop = stop or asyncio.Event()
        self.stop = stop
        failures = 0
        while True:
            await self.source.connect()
            try:
                if not self._prepared:
                    await self.prepare()
                else:
                    await self._load_state()
                await self.refresh_head()
                safe = self.head - self.chain.confirmations
                if end > safe:
                    raise UsageError(f"--to {end} is beyond the node's head {self.head}"
                                     + (f" minus {self.chain.confirmations} confirmations" if self.chain.confirmations else ""),
                                     hint=f"use --to {safe} or less")
                if self.cursor is None:
                    if start > self.chain.start_block:
                        raise UsageError(f"the database is empty: backfill must start at chain.start_block "
                                         f"({self.chain.start_block}) or before, not {start}",
                                         hint="balances are sums of every transfer since the token began")
                    self.start_block = start
                elif start > self.cursor.number + 1:
                    raise UsageError(f"--from {start} would leave a gap: blocks are indexed up to "
                                     f"{self.cursor.number}", hint=f"use --from {self.cursor.number + 1} or less")
                await self.advance(end, check_cursor=True)
                return
            except Exception as exc:
                if not retry_session(exc) or stop.is_set():
                    raise
                failures += 1
                delay = session_delay(failures, exc)
                log.warning("backfill interrupted: %s; resuming from block %s in %.1fs", exc,
                            self.next_block(), delay)
                await _wait_any(stop, timeout=delay)
            finally:
                await self.source.close()


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until one of the events is set (True) or the timeout passes (False)."""
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()
