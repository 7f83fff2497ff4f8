"""source -> decode -> store, for history and for the head, with reorg detection and rollback.

One pipeline for every chain: a chain brings a source (heads, headers), a fetcher (blocks linked to
their parents near the head, blocks by range for deep history) and a decoder. Backfill and following
are the same loop fed from two ends: `advance(target)` indexes everything from the stored cursor up to
`target`. Blocks deeper than max_reorg_depth (or finalized) come by adaptive ranges fetched ahead
concurrently and committed strictly in order; blocks near the head come with their headers, each
checked to link to its parent, so a reorg shows as a parent-hash mismatch and is rolled back to the
common ancestor. Reconnecting is "advance again from the cursor", which is why no reconnect leaves a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

from indexer.backoff import request_delay, retry_on_connection, retry_session, session_delay
from indexer.config import Config
from indexer.decoders.evm import T, Binding, EvmDecoder
from indexer.errors import (ChainMismatchError, NodeStalled, ReorgTooDeepError, RpcInconsistent, RpcRangeTooLarge,
                            RpcTransportError, UsageError)
from indexer.logs import log_context
from indexer.models import BlockRef, DecodedBlock, RawBlock
from indexer.store import Store
from indexer.worker import StoreWorker

log = logging.getLogger(__name__)

TAIL_WINDOW = 64          # blocks fetched with headers per step near the head
BACKFILL_ATTEMPTS = 5     # `backfill` gives up after this many failed attempts in a row without progress
COMMIT_ITEMS = 25_000     # deep history: logs (or blocks) gathered before one commit
BULK_AFTER_ITEMS = 100_000  # a backfill this long drops random-access indexes until it ends
FINALIZED_REFRESH = 5.0   # seconds between `finalized` look-ups


class Rebind(Exception):
    """Decoding found a contract to watch that the fetch did not include: fetch again."""


@dataclass
class Progress:
    blocks: int = 0
    events: int = 0
    started: float = 0.0


class Pipeline(ABC):
    def __init__(self, cfg: Config, source, fetcher, store: Store, worker: StoreWorker, metrics=None,
                 heartbeat: Callable[[], None] | None = None, on_progress: Callable[["Pipeline"], None] | None = None):
        self.cfg = cfg
        self.chain = cfg.chain
        self.source = source
        self.fetcher = fetcher
        self.store = store
        self.worker = worker
        self.metrics = metrics
        self.heartbeat = heartbeat or (lambda: None)
        if metrics is not None:
            # heads move the head metric as they arrive, so /readyz sees a daemon stuck behind
            source.on_head = metrics.set_chain_head
        self.on_progress = on_progress or (lambda p: None)
        self.cursor: BlockRef | None = None
        self.first_block: int | None = None
        # highest block number known to be scanned (on Solana, skipped slots after the cursor)
        self.scanned: int = -1
        self.head: int = -1
        self.finalized: int | None = None
        self._finalized_at = 0.0
        self.range_size = cfg.chain.initial_getlogs_range
        self.progress = Progress(started=time.monotonic())
        self.start_block = cfg.chain.start_block
        self._prepared = False
        self._healthy_session = False
        self._calibrated = False
        # set by SIGTERM/SIGINT: the block in hand is finished (or abandoned) atomically, then we return
        self.stop = asyncio.Event()
        # seconds between heartbeats while idle; the daemon lowers it below a short watchdog period
        self.idle_tick = 1.0

    # ---- chain-specific hooks ------------------------------------------------------------------

    async def check_chain(self) -> None:
        """Refuse a node or database of another chain (called once per process)."""

    async def load_extra_state(self) -> None:
        """Rebuild decoder state from the database (watched contracts, token context)."""

    def fetch_args(self) -> tuple:
        return ()

    @abstractmethod
    async def decode(self, raws: list[RawBlock]) -> list[DecodedBlock]:
        """Raw blocks -> decoded blocks (each chain's pipeline brings its decoder)."""

    # ---- setup ---------------------------------------------------------------------------------

    async def _db(self, fn, *args):
        return await self.worker.call(fn, *args)

    async def _load_state(self) -> None:
        """(Re)build everything derived from the database."""
        self.cursor = await self._db(self.store.cursor)
        self.first_block = await self._db(self.store.first_block)
        self.scanned = self.cursor.number if self.cursor else -1
        await self.load_extra_state()
        if self.metrics and self.cursor:
            self.metrics.set_indexed(self.cursor.number, self.cursor.timestamp)

    async def prepare(self) -> None:
        await self.check_chain()
        await self._load_state()
        self._prepared = True

    # ---- retries on a live connection ----------------------------------------------------------

    async def _request(self, fn, *args):
        attempt = 0
        while True:
            try:
                return await fn(*args)
            except Exception as exc:
                if not retry_on_connection(exc) or self.stop.is_set():
                    raise
                attempt += 1
                delay = request_delay(attempt, exc)
                log.warning("%s (attempt %d, retrying in %.1fs)", exc, attempt, delay)
                await self._sleep(delay, self.stop)

    async def refresh_head(self) -> int:
        self.head = await self._request(self.source.head_number)
        if self.metrics:
            self.metrics.set_chain_head(self.head)
        await self._refresh_finalized(force=True)
        return self.head

    async def _refresh_finalized(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._finalized_at < FINALIZED_REFRESH:
            return
        self._finalized_at = now
        self.finalized = await self._request(self.source.finalized_number)
        if self.metrics and self.finalized is not None:
            self.metrics.set_finalized(self.finalized)

    # ---- the main loop -------------------------------------------------------------------------

    def next_block(self) -> int:
        if self.cursor is None:
            return max(self.start_block, self.scanned + 1)
        return max(self.cursor.number, self.scanned) + 1

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
        """Is the stored cursor still on the node's chain? If not, walk back."""
        if self.cursor is None:
            return
        node = (await self._request(self.source.block_refs, [self.cursor.number])).get(self.cursor.number)
        if node is None or node.hash != self.cursor.hash:
            await self._reorg(reason=f"stored block {self.cursor.number} {self.cursor.hash} is "
                                     f"{'missing' if node is None else node.hash} on the node")

    # ---- near the head: every block, checked to link to its parent -----------------------------

    async def _tail_mode(self, a: int, b: int) -> None:
        while True:
            raws = await self._request(self.fetcher.fetch_linked, a, b, *self.fetch_args())
            if not raws:
                if self._all_skipped_below(b):
                    self.scanned = b
                return
            first = raws[0].ref
            if self.cursor is not None and first.parent_hash != self.cursor.hash:
                await self._reorg(reason=f"block {first.number} {first.hash} has parent {first.parent_hash}, "
                                         f"stored block {self.cursor.number} is {self.cursor.hash}")
                return
            for prev, cur in zip(raws, raws[1:]):
                if cur.ref.parent_hash != prev.ref.hash:
                    log.warning("block %d does not link to block %d: the node reorganised while answering; "
                                "fetching again", cur.ref.number, prev.ref.number)
                    await asyncio.sleep(0.2)
                    break
            else:
                try:
                    await self._commit(raws)
                except Rebind:
                    continue
                if self._all_skipped_below(b):
                    self.scanned = max(self.scanned, b)
                return

    def _all_skipped_below(self, b: int) -> bool:
        """Chains with empty slots (Solana) know [a, b] is scanned when the answer ends before b."""
        return getattr(self.fetcher, "slots_may_be_empty", False) and b <= self.head

    # ---- deep history: adaptive ranges fetched ahead -------------------------------------------

    async def _fetch_chunk(self, a: int, b: int, args: tuple) -> tuple[int, int, list[RawBlock]]:
        t0 = time.monotonic()
        raws, items = await self._get_range(a, b, args)
        self._adapt_range(items, time.monotonic() - t0, b - a + 1)
        return a, b, raws

    def _adapt_range(self, n_items: int, seconds: float, span: int) -> None:
        """Aim each answer at `target_items` (memory and latency stay flat whatever the density):
        grow at most 2x per answer, shrink at once; slow answers shrink too."""
        self._calibrated = True
        target = getattr(self.fetcher, "target_items", 10_000)
        density = n_items / max(1, span)
        ideal = int(target / density) if density > 0 else self.chain.max_getlogs_range
        if seconds > 10.0:
            ideal = min(ideal, max(1, span // 2))
        if ideal > self.range_size:
            if span < self.range_size:
                return  # a shortened last chunk says little about growth
            ideal = min(ideal, self.range_size * 2)
        self.range_size = max(1, min(self.chain.max_getlogs_range, ideal))

    async def _get_range(self, a: int, b: int, args: tuple) -> tuple[list[RawBlock], int]:
        """One range; a range error splits it (at the provider's hint when it gives one), never a 429."""
        try:
            raws, items = await self._request(self.fetcher.fetch_range, a, b, *args)
            if self.metrics:
                self.metrics.observe_getlogs_range(b - a + 1)
            return raws, items
        except RpcRangeTooLarge as exc:
            if a == b:
                raise
            hint = exc.suggested_to
            mid = hint if hint is not None and a <= hint < b else (a + b) // 2
            self.range_size = max(1, min(self.range_size, mid - a + 1))
            log.info("range [%d, %d] too large (%s): splitting at %d, range now %d blocks", a, b, exc, mid,
                     self.range_size)
            left, n_left = await self._get_range(a, mid, args)
            right, n_right = await self._get_range(mid + 1, b, args)
            return left + right, n_left + n_right

    async def _range_mode(self, start: int, end: int) -> None:
        args = self.fetch_args()
        window = max(1, self.chain.fetch_concurrency)
        tasks: deque[asyncio.Task] = deque()
        pending: list[tuple[int, int, list[RawBlock]]] = []  # fetched ranges waiting to share a commit
        pending_items = 0
        committed = 0
        bulk = False
        nxt = start

        async def flush() -> None:
            nonlocal pending_items, committed
            raws = [r for _, _, rs in pending for r in rs]
            b = pending[-1][1]
            await self._commit(raws, batch=True)
            self.scanned = max(self.scanned, b)
            committed += pending_items
            pending.clear()
            pending_items = 0

        try:
            while nxt <= end or tasks or pending:
                # fetch ahead only once an answer has told us the density (one blind range at a time)
                ahead = window + 1 if self._calibrated else 1
                while len(tasks) < ahead and nxt <= end:
                    b = min(end, nxt + self.range_size - 1)
                    tasks.append(asyncio.create_task(self._fetch_chunk(nxt, b, args)))
                    nxt = b + 1
                if tasks:
                    a, b, raws = await tasks.popleft()
                    pending.append((a, b, raws))
                    pending_items += sum(len(r.logs) for r in raws) + 1
                self.heartbeat()
                if self.stop.is_set():
                    return
                # several ranges share one transaction: fewer, larger commits (blocks stay whole)
                if pending and (pending_items >= COMMIT_ITEMS or not tasks):
                    try:
                        await flush()
                    except Rebind:
                        # a new contract to watch: everything fetched from the first pending range missed it
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                        tasks.clear()
                        nxt = pending[0][0]
                        pending.clear()
                        pending_items = 0
                        args = self.fetch_args()
                        continue
                    if not bulk and committed >= BULK_AFTER_ITEMS and end - self.scanned > 10 * self.range_size:
                        bulk = True
                        await self._db(self.store.begin_bulk)
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if bulk and not self.stop.is_set():
                # a stopped daemon leaves this to its next start (every open rebuilds missing indexes)
                await self._db(self.store.end_bulk)

    # ---- decode, commit --------------------------------------------------------------------------

    async def _commit(self, raws: list[RawBlock], batch: bool = False) -> None:
        decoded = await self.decode(raws)
        if batch and len(decoded) > 1:
            # deep history: only blocks with something to say, and the last one (the new cursor)
            decoded = [d for d in decoded[:-1] if d.events or d.skipped or d.token_info or d.new_watched] + decoded[-1:]
        if not decoded:
            return
        t0 = time.perf_counter()
        limit = self.cfg.database.batch_blocks if batch else len(decoded)
        for i in range(0, len(decoded), max(1, limit)):
            group = decoded[i:i + limit]
            with log_context(chain=self.chain.name, block_number=group[-1].ref.number):
                try:
                    await self._db(self.store.commit_blocks, group)
                except BaseException:
                    # decoder state may have learnt from blocks that were not written
                    await self._load_state()
                    raise
            self.cursor = group[-1].ref
            self.scanned = max(self.scanned, self.cursor.number)
            if self.first_block is None:
                self.first_block = group[0].ref.number
        seconds = time.perf_counter() - t0
        self.progress.events += sum(len(d.events) for d in decoded)
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

    # ---- reorgs ----------------------------------------------------------------------------------

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
        if self.finalized is not None and ancestor.number < self.finalized <= cur.number:
            old = next((b for b in stored if b.number == self.finalized), None)
            if old is not None and self.finalized in node and node[self.finalized].hash != old.hash:
                raise ReorgTooDeepError(f"finalized block {self.finalized} changed hash ({reason})",
                                        hint="the node is misbehaving; the cap table was not changed")
        new_at_cur = node.get(cur.number)
        log.warning("reorg: rolling back %d block(s) to %d %s (%s); old block %d %s, node now has %s", depth,
                    ancestor.number, ancestor.hash or "(before the first block)", reason, cur.number, cur.hash,
                    new_at_cur.hash if new_at_cur else "nothing",
                    extra={"chain": self.chain.name, "block_number": cur.number, "depth": depth})
        stats = await self._db(self.store.rollback_to, ancestor)
        log.info("reorg rollback removed %s", stats, extra={"chain": self.chain.name})
        if self.metrics:
            self.metrics.observe_reorg(depth)
        await self._load_state()

    # ---- following the head ----------------------------------------------------------------------

    async def follow_once(self, stop: asyncio.Event) -> None:
        """One connected session: subscribe, catch up, follow until the socket dies or `stop` is set."""
        await self.source.connect()
        try:
            await self._request(self.source.subscribe_heads)
            if not self._prepared:
                await self.prepare()
            else:
                await self._load_state()
            await self.refresh_head()
            await self.advance(self.head - self.chain.confirmations, check_cursor=True)
            self._healthy_session = True  # connected, subscribed and caught up: backoff starts afresh
            last_progress = time.monotonic()
            stall_warned = False
            while not stop.is_set():
                self.heartbeat()
                woke = await wait_any(self.source.head_event, stop, self.source.closed, timeout=self.idle_tick)
                if stop.is_set():
                    return
                if self.source.closed.is_set():
                    raise RpcTransportError(f"WebSocket to {self.source.display_url} closed: "
                                            f"{self.source.close_reason}")
                if woke:
                    self.source.head_event.clear()
                    self.head = await self._request(self.source.wake_head)
                    if self.metrics:
                        self.metrics.set_chain_head(self.head)
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
                        raise NodeStalled(f"no new head for {self.chain.stall_timeout:.0f}s while the node moved "
                                          f"from block {before} to {self.head}: the subscription is stale, "
                                          "reconnecting")
                    if not stall_warned:
                        log.warning("node has produced no block for %.0fs (head %d)",
                                    time.monotonic() - last_progress, self.head,
                                    extra={"chain": self.chain.name, "block_number": self.head})
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
            self._healthy_session = False
            try:
                if sessions and self.metrics:
                    self.metrics.count_websocket_reconnect()
                sessions += 1
                await self.follow_once(stop)
                return
            except Exception as exc:
                if not retry_session(exc):
                    raise
                if stop.is_set():
                    return
                progressed = (self.cursor.number if self.cursor else None) != before
                failures = 1 if progressed or self._healthy_session else failures + 1
                delay = session_delay(failures, exc)
                log.warning("connection problem: %s; reconnecting in %.1fs (attempt %d)", exc, delay, failures,
                            extra={"chain": self.chain.name})
                await self._sleep(delay, stop)

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Back off without looking hung: the watchdog keeps being fed while we wait on purpose."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            self.heartbeat()
            await wait_any(stop, timeout=min(self.idle_tick, max(0.0, deadline - time.monotonic())))

    async def backfill(self, start: int, end: int, stop: asyncio.Event | None = None) -> None:
        """Index [start, end] (already indexed blocks are left as they are), then return."""
        stop = stop or asyncio.Event()
        self.stop = stop
        failures = 0
        while True:
            attempt_from = self.cursor.number if self.cursor else None
            try:
                await self.source.connect()
                if not self._prepared:
                    await self.prepare()
                else:
                    await self._load_state()
                await self.refresh_head()
                safe = self.head - self.chain.confirmations
                if end > safe:
                    raise UsageError(f"--to {end} is beyond the node's head {self.head}"
                                     + (f" minus {self.chain.confirmations} confirmations"
                                        if self.chain.confirmations else ""), hint=f"use --to {safe} or less")
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
                if not retry_session(exc):
                    raise
                if stop.is_set():
                    return
                progressed = self.cursor is not None and self.cursor.number != attempt_from
                failures = 1 if progressed else failures + 1
                if failures > BACKFILL_ATTEMPTS:
                    # a one-shot command: say what is wrong rather than wait for ever (`run` does wait)
                    raise
                delay = session_delay(failures, exc)
                log.warning("backfill interrupted: %s; resuming from block %s in %.1fs", exc, self.next_block(),
                            delay)
                await self._sleep(delay, stop)
            finally:
                await self.source.close()


class EvmPipeline(Pipeline):
    """EVM: contracts to watch (tokens, and registries they bind), and eth_calls for what logs cannot carry."""

    def __init__(self, cfg: Config, source, store: Store, worker: StoreWorker, metrics=None, **kw):
        from indexer.sources.evm import EvmFetcher
        super().__init__(cfg, source, EvmFetcher(source), store, worker, metrics, **kw)
        self.decoder = EvmDecoder({})
        self.known_tokens: set[str] = set()

    async def check_chain(self) -> None:
        chain_id = await self._request(self.source.chain_id)
        if self.chain.chain_id is not None and chain_id != self.chain.chain_id:
            raise ChainMismatchError(f"the node at {self.source.display_url} serves chain id {chain_id}, "
                                     f"config says chain.chain_id = {self.chain.chain_id}",
                                     hint="point chain.ws_url at the right network or fix chain.chain_id")
        genesis = (await self._request(self.source.block_refs, [0])).get(0)
        if genesis is not None:
            await self._db(self.store.check_genesis, genesis.hash)

    async def load_extra_state(self) -> None:
        bindings: dict[str, list[Binding]] = {}
        for t in self.cfg.tokens:
            addr = t.address.lower()
            bindings.setdefault(addr, []).append(Binding(addr, "token", t.profiles))
            if t.identity_registry:
                bindings.setdefault(t.identity_registry.lower(), []).append(Binding(addr, "identity_registry", ()))
        for address, token, role, _from in await self._db(self.store.watched_contracts):
            bindings.setdefault(address, []).append(Binding(token, role, ()))
        self.decoder = EvmDecoder(bindings)
        self.known_tokens = await self._db(self.store.known_tokens)

    def fetch_args(self) -> tuple:
        return (self.decoder.addresses(),)

    async def _hashed_strings(self, raw: RawBlock) -> RawBlock:
        """UpdatedTokenInformation carries name/symbol only as hashes: read candidates with eth_call."""
        calls: dict[tuple[str, str], Any] = {}
        n = raw.ref.number
        for lg in raw.logs:
            if lg.topics and lg.topics[0] == T["UpdatedTokenInformation"] and (lg.address, "name") not in calls:
                for fn in ("name", "symbol"):
                    # at this block, at the one before (two updates in one block), and now (no archive state)
                    calls[(lg.address, fn)] = [
                        await self._request(self.source.token_string, lg.address, fn, n),
                        await self._request(self.source.token_string, lg.address, fn, max(0, n - 1)),
                        await self._request(self.source.token_string, lg.address, fn, "latest"),
                    ]
        return replace(raw, calls=calls) if calls else raw

    async def _token_info(self, token: str, n: int) -> dict[str, Any]:
        return {"name": await self._request(self.source.token_string, token, "name", n),
                "symbol": await self._request(self.source.token_string, token, "symbol", n),
                "decimals": await self._request(self.source.token_decimals, token, n)}

    async def decode(self, raws: list[RawBlock]) -> list[DecodedBlock]:
        out = []
        for raw in raws:
            if any(lg.topics and lg.topics[0] == T["UpdatedTokenInformation"] for lg in raw.logs):
                raw = await self._hashed_strings(raw)
            decoded = self.decoder.decode(raw)
            rebind = False
            for address, token, role in decoded.new_watched:
                if address not in self.decoder.addresses():
                    rebind = True
                self.decoder.bind(address, Binding(token, role, ()))
            if rebind:
                log.info("token binds contract(s) %s at block %d: fetching again with them",
                         [w[0] for w in decoded.new_watched], raw.ref.number)
                raise Rebind()
            fresh = {ev.token for ev in decoded.events} - self.known_tokens
            if fresh:
                infos = []
                for token in sorted(fresh):
                    infos.append((token, await self._token_info(token, raw.ref.number)))
                    self.known_tokens.add(token)
                decoded = replace(decoded, token_info=tuple(infos))
            out.append(decoded)
        return out


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
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
