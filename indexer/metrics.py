"""Prometheus metrics of one indexer process, on an injectable registry.

Every series carries a `chain` label (one value per process, so it is free) so several indexers
can be scraped into one Prometheus without relabelling. Other labels take only values from small
fixed sets that our own code chooses (event types, skip reasons, RPC method names, outcomes):
never addresses, hashes or signatures, which would create a series per holder. `_BoundedLabel`
enforces that at run time by folding anything suspicious into "other".

The pipeline calls the intention-revealing helpers (`block_committed`, `observe_rpc`, ...);
the metric objects are also public attributes for anything the helpers don't cover.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from indexer import __version__

log = logging.getLogger(__name__)

OTHER = "other"

# Suggested `outcome` values for observe_rpc (any identifier is accepted).
RPC_OUTCOMES = ("ok", "rpc_error", "rate_limited", "timeout", "transport_error", "invalid_response")

_REORG_DEPTH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_RPC_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_GETLOGS_RANGE_BUCKETS = (1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000)

# An identifier as our code writes them ("eth_getLogs", "unexpected_topic_count", "Transfer").
# Addresses and hashes (0x..., base58 of 32+ chars) fail the pattern or the length.
_LABEL_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
_MAX_LABEL_VALUES = 32


class _BoundedLabel:
    """Keeps one label's value set small: bad-looking or too many distinct values -> "other"."""

    def __init__(self, name: str, max_values: int = _MAX_LABEL_VALUES) -> None:
        self.name = name
        self.max_values = max_values
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if _LABEL_VALUE.fullmatch(value) and len(self._seen) < self.max_values:
                self._seen.add(value)
                return value
            if not self._warned:
                self._warned = True
                log.warning(
                    "metric label %s: value %r folded into %r (label values must be short identifiers, "
                    "at most %d distinct)", self.name, value[:40], OTHER, self.max_values,
                )
            return OTHER


class Metrics:
    """All metrics of one indexer process.

    `registry`: where to register (a fresh private CollectorRegistry if None, so tests and
    several instances never collide). `chain`: the configured chain name. `clock`: wall-clock
    seconds, injectable for lag_seconds tests.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        chain: str = "default",
        chain_kind: str = "evm",
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.chain = chain
        self._clock = clock
        self._lock = threading.Lock()
        self._head: int | None = None
        self._indexed: int | None = None
        self._last_block_ts: float | None = None
        self._event_type = _BoundedLabel("event_type")
        self._reason = _BoundedLabel("reason")
        self._method = _BoundedLabel("method")
        self._outcome = _BoundedLabel("outcome")
        r, c = self.registry, ["chain"]

        def gauge(name: str, doc: str):
            return Gauge(name, doc, c, registry=r).labels(chain=chain)

        def counter(name: str, doc: str):
            return Counter(name, doc, c, registry=r).labels(chain=chain)

        self.chain_head_block = gauge(
            "indexer_chain_head_block", "Newest block number (EVM) or slot (Solana) seen at the chain head.")
        self.indexed_block = gauge(
            "indexer_indexed_block", "Block number or slot of the newest block committed to the database.")
        self.finalized_block = gauge(
            "indexer_finalized_block", "Newest finalized block number or slot reported by the node.")
        self.lag_blocks_gauge = gauge(
            "indexer_lag_blocks", "Blocks (or slots) between the chain head and the newest indexed block.")
        self.lag_seconds_gauge = gauge(
            "indexer_lag_seconds",
            "Seconds between now and the timestamp of the newest indexed block; NaN before the first block.")
        self.last_block_timestamp = gauge(
            "indexer_last_block_timestamp_seconds", "Unix time of the newest indexed block (its header timestamp).")
        self.blocks_processed = counter(
            "indexer_blocks_processed_total",
            "Blocks committed to the database (re-committed blocks after a reorg count again).")
        self.events_processed = Counter(
            "indexer_events_processed_total", "Decoded token events committed, by event type.",
            ["chain", "event_type"], registry=r)
        self.skipped_logs = Counter(
            "indexer_skipped_logs_total", "Logs or instructions skipped as undecodable or irrelevant, by reason.",
            ["chain", "reason"], registry=r)
        self.reorgs = counter("indexer_reorgs_total", "Chain reorganisations detected and rolled back.")
        self.reorg_depth = Histogram(
            "indexer_reorg_depth_blocks", "Depth of each rolled-back reorganisation, in blocks.",
            c, buckets=_REORG_DEPTH_BUCKETS, registry=r).labels(chain=chain)
        self.rpc_requests = Counter(
            "indexer_rpc_requests_total", "JSON-RPC requests sent to the node, by method and outcome.",
            ["chain", "method", "outcome"], registry=r)
        self.rpc_duration = Histogram(
            "indexer_rpc_request_duration_seconds", "Time from sending a JSON-RPC request to its answer, by method.",
            ["chain", "method"], buckets=_RPC_SECONDS_BUCKETS, registry=r)
        self.websocket_reconnects = counter(
            "indexer_websocket_reconnects_total", "WebSocket connections to the node re-established after a drop.")
        self.commit_duration = Histogram(
            "indexer_commit_duration_seconds", "Time to commit one block's (or batch's) SQLite transaction.",
            c, buckets=_COMMIT_SECONDS_BUCKETS, registry=r).labels(chain=chain)
        self.getlogs_range = Histogram(
            "indexer_getlogs_range_blocks", "Block range size of each historical eth_getLogs request.",
            c, buckets=_GETLOGS_RANGE_BUCKETS, registry=r).labels(chain=chain)
        self.verify_mismatches = gauge(
            "indexer_verify_mismatches", "Balances that differed from the node in the last self-audit (0 = consistent).")
        self.verify_last_run = gauge(
            "indexer_verify_last_run_timestamp_seconds", "Unix time the last self-audit against the node finished.")
        self.database_size = gauge(
            "indexer_database_size_bytes", "Size of the SQLite database including its write-ahead log.")
        self.backfill_progress = gauge(
            "indexer_backfill_progress_ratio", "Fraction (0..1) of the historical range already indexed.")
        self.info = Info("indexer", "Version and chain kind of this indexer process.", c, registry=r).labels(chain=chain)
        self.info.info({"version": version, "chain_kind": chain_kind})

        self.lag_seconds_gauge.set_function(self.lag_seconds)

    # --- progress of the chain and of indexing ---------------------------------------------------

    def set_chain_head(self, number: int) -> None:
        with self._lock:
            self._head = number
            self._update_lag()
        self.chain_head_block.set(number)

    def set_finalized(self, number: int) -> None:
        self.finalized_block.set(number)

    def set_indexed(self, number: int, timestamp: float | None = None) -> None:
        """Position without counting a block: at start-up (cursor loaded) and after a rollback."""
        with self._lock:
            self._indexed = number
            if timestamp is not None:
                self._last_block_ts = float(timestamp)
            self._update_lag()
        self.indexed_block.set(number)
        if timestamp is not None:
            self.last_block_timestamp.set(timestamp)

    def block_committed(self, number: int, timestamp: float | None = None, commit_seconds: float | None = None) -> None:
        """One block is in the database: move the position, count it, time the commit."""
        self.set_indexed(number, timestamp)
        self.blocks_processed.inc()
        if commit_seconds is not None:
            self.commit_duration.observe(commit_seconds)

    def _update_lag(self) -> None:
        if self._head is not None and self._indexed is not None:
            self.lag_blocks_gauge.set(max(0, self._head - self._indexed))

    def lag_blocks(self) -> int | None:
        """Head minus indexed block (never negative), or None while either is unknown."""
        with self._lock:
            if self._head is None or self._indexed is None:
                return None
            return max(0, self._head - self._indexed)

    def lag_seconds(self) -> float:
        """Seconds since the newest indexed block's timestamp; NaN before the first block."""
        ts = self._last_block_ts
        return math.nan if ts is None else max(0.0, self._clock() - ts)

    # --- events ----------------------------------------------------------------------------------

    def count_events(self, event_type: str, n: int = 1) -> None:
        """`event_type` is the decoded kind ("Transfer", "Mint", "Split", ...), never an address."""
        self.events_processed.labels(chain=self.chain, event_type=self._event_type(event_type)).inc(n)

    def count_skipped_log(self, reason: str, n: int = 1) -> None:
        """`reason` is a fixed code such as "unexpected_topic_count" or "malformed_data"."""
        self.skipped_logs.labels(chain=self.chain, reason=self._reason(reason)).inc(n)

    def observe_reorg(self, depth: int) -> None:
        self.reorgs.inc()
        self.reorg_depth.observe(depth)

    # --- RPC -------------------------------------------------------------------------------------

    def observe_rpc(self, method: str, outcome: str, seconds: float | None = None) -> None:
        """Count one request; `outcome` is "ok" or an error class (see RPC_OUTCOMES)."""
        method = self._method(method)
        self.rpc_requests.labels(chain=self.chain, method=method, outcome=self._outcome(outcome)).inc()
        if seconds is not None:
            self.rpc_duration.labels(chain=self.chain, method=method).observe(seconds)

    def count_websocket_reconnect(self) -> None:
        self.websocket_reconnects.inc()

    def observe_getlogs_range(self, blocks: int) -> None:
        self.getlogs_range.observe(blocks)

    # --- audits, storage, backfill -----------------------------------------------------------------

    def set_verify_result(self, mismatches: int, finished_at: float | None = None) -> None:
        self.verify_mismatches.set(mismatches)
        self.verify_last_run.set(self._clock() if finished_at is None else finished_at)

    def set_database_size(self, size_bytes: int) -> None:
        self.database_size.set(size_bytes)

    def track_database_file(self, path: str | os.PathLike[str]) -> None:
        """Report the database size at scrape time: the main file plus its -wal file."""
        path = os.fspath(path)

        def size() -> float:
            total = 0
            for p in (path, path + "-wal"):
                try:
                    total += os.stat(p).st_size
                except FileNotFoundError:
                    pass
            return float(total)

        self.database_size.set_function(size)

    def set_backfill_progress(self, done_blocks: int, total_blocks: int) -> None:
        ratio = 1.0 if total_blocks <= 0 else min(1.0, max(0.0, done_blocks / total_blocks))
        self.backfill_progress.set(ratio)

    # --- readiness -------------------------------------------------------------------------------

    def readiness(self, max_lag_blocks: int, max_lag_seconds: float | None = None) -> tuple[bool, str]:
        """(ready, reason) for /readyz: caught up to within `max_lag_blocks` of the head and, when
        behind at all, the newest indexed block is at most `max_lag_seconds` old."""
        with self._lock:
            head, indexed = self._head, self._indexed
        if indexed is None:
            return False, "no block indexed yet"
        if head is None:
            return False, "chain head not known yet"
        lag = max(0, head - indexed)
        if lag > max_lag_blocks:
            return False, f"lag {lag} blocks > max {max_lag_blocks}"
        if lag > 0 and max_lag_seconds is not None:
            seconds = self.lag_seconds()
            if not math.isnan(seconds) and seconds > max_lag_seconds:
                return False, f"lag {seconds:.0f}s > max {max_lag_seconds:g}s"
        return True, f"lag {lag} blocks"
