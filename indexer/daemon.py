"""Wiring: config -> logging/redaction -> store -> metrics/health -> source -> pipeline; signals.

Kept apart from the click commands so tests and the demo can assemble the same pieces.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from indexer import __version__
from indexer.config import Config
from indexer.httpserver import MetricsServer, loop_health
from indexer.logs import setup_logging
from indexer.metrics import Metrics
from indexer.redact import Redactor
from indexer.rpc import RpcStats
from indexer.store import Store
from indexer.systemd import Notifier, Watchdog
from indexer.worker import StoreWorker

log = logging.getLogger("indexer")


def make_redactor(cfg: Config) -> Redactor:
    urls = [u for u in (cfg.chain.ws_url, cfg.chain.http_url) if u]
    return Redactor(urls=urls, secrets=cfg.secrets)


def configure_logging(cfg: Config | None, level: str | None, fmt: str | None, redactor: Redactor | None) -> None:
    setup_logging(level or (cfg.logging.level if cfg else "INFO"), fmt or (cfg.logging.format if cfg else "auto"),
                  redactor=redactor)


@dataclass
class Runtime:
    cfg: Config
    redactor: Redactor
    metrics: Metrics
    store: Store
    worker: StoreWorker
    notifier: Notifier = field(default_factory=Notifier)
    watchdog: Watchdog | None = None
    server: MetricsServer | None = None

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.stop()
        if self.server:
            self.server.stop()
        try:
            self.worker.run_sync(self.store.close)
        finally:
            self.worker.shutdown()


def open_runtime(cfg: Config, redactor: Redactor, *, serve_metrics: bool) -> Runtime:
    metrics = Metrics(chain=cfg.chain.name, chain_kind=cfg.chain.kind)
    worker = StoreWorker()
    store = Store(cfg.database.path, chain=cfg.chain.name, kind=cfg.chain.kind, chain_id=cfg.chain.chain_id,
                  synchronous=cfg.database.synchronous)
    try:
        worker.run_sync(store.open)
    except BaseException:
        worker.shutdown()
        raise
    metrics.track_database_file(cfg.database.path)
    rt = Runtime(cfg, redactor, metrics, store, worker)
    rt.watchdog = Watchdog(rt.notifier)
    if serve_metrics and cfg.metrics.enabled:
        try:
            rt.server = MetricsServer(
                metrics.registry, cfg.metrics.listen,
                health=loop_health(rt.watchdog.seconds_since_progress, max_silence=max(60.0, cfg.chain.request_timeout * 2)),
                ready=lambda: metrics.readiness(cfg.metrics.ready_max_lag_blocks, cfg.metrics.ready_max_lag_seconds),
            ).start()
        except OSError as exc:
            rt.close()
            from indexer.errors import ConfigError
            raise ConfigError(f"metrics.listen {cfg.metrics.listen}: cannot listen ({exc.strerror})",
                              hint="pick a free port, or set metrics.enabled = false") from None
    return rt


def rpc_stats(metrics: Metrics) -> RpcStats:
    return RpcStats(lambda method, outcome, seconds: metrics.observe_rpc(method, outcome, seconds))


def make_source(cfg: Config, redactor: Redactor, metrics: Metrics):
    if cfg.chain.kind == "evm":
        from indexer.sources.evm import EvmSource
        return EvmSource(cfg.chain.ws_url, cfg.chain.http_url, timeout=cfg.chain.request_timeout,
                         stats=rpc_stats(metrics), redact=redactor.scrub)
    from indexer.sources.solana import SolanaSource
    return SolanaSource(cfg.chain, stats=rpc_stats(metrics), redact=redactor.scrub)


def make_pipeline(rt: Runtime, source, on_progress: Callable | None = None):
    heartbeat = rt.watchdog.progress if rt.watchdog else None
    if rt.cfg.chain.kind == "evm":
        from indexer.pipeline import EvmPipeline
        pipeline = EvmPipeline(rt.cfg, source, rt.store, rt.worker, rt.metrics, heartbeat=heartbeat,
                               on_progress=on_progress)
    else:
        from indexer.pipeline_solana import SolanaPipeline
        pipeline = SolanaPipeline(rt.cfg, source, rt.store, rt.worker, rt.metrics, heartbeat=heartbeat,
                                  on_progress=on_progress)
    if rt.watchdog and rt.watchdog.period:
        pipeline.idle_tick = min(1.0, rt.watchdog.period / 2)
    return pipeline


# SIGTERM/SIGINT that arrive while starting up (before the event loop runs) are remembered here, so a
# service manager stopping us early still gets a clean exit 0 rather than death by the default action.
EARLY_STOP = threading.Event()


def install_early_signal_handlers() -> None:
    def remember(signum, _frame) -> None:
        EARLY_STOP.set()

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    if EARLY_STOP.is_set():
        log.info("stop requested during start-up")
        stop.set()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            return
        log.info("received %s: finishing the block in hand, then stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def run_daemon(rt: Runtime) -> None:
    """`indexer run`: follow the chain until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    source = make_source(rt.cfg, rt.redactor, rt.metrics)
    last_status = [0.0]

    def on_progress(p) -> None:
        now = time.monotonic()
        if now - last_status[0] >= 2.0 and p.cursor is not None:
            last_status[0] = now
            rt.notifier.status(f"indexed block {p.cursor.number}, head {p.head}")

    pipeline = make_pipeline(rt, source, on_progress)
    verify_task = None
    if rt.cfg.chain.verify_interval > 0 and rt.cfg.chain.kind == "evm":
        from indexer.verify import periodic_verify
        verify_task = asyncio.create_task(periodic_verify(rt, stop))
    rt.watchdog.start()
    ready_sent = False

    async def announce_ready() -> None:
        nonlocal ready_sent
        # READY once the database is open and the first catch-up reached the head
        while not stop.is_set() and not ready_sent:
            if pipeline.cursor is not None and pipeline.head >= 0 and \
                    pipeline.cursor.number >= pipeline.head - rt.cfg.chain.confirmations - 1:
                rt.notifier.ready(status=f"following the chain at block {pipeline.cursor.number}")
                ready_sent = True
                log.info("caught up at block %d: following the chain", pipeline.cursor.number,
                         extra={"chain": rt.cfg.chain.name, "block_number": pipeline.cursor.number})
                return
            await asyncio.sleep(0.2)

    ready_task = asyncio.create_task(announce_ready())
    log.info("indexer %s starting on %s (%s), database %s", __version__, rt.cfg.chain.name,
             rt.redactor.scrub(rt.cfg.chain.ws_url), rt.cfg.database.path, extra={"chain": rt.cfg.chain.name})
    try:
        await pipeline.run(stop)
    finally:
        rt.notifier.stopping(status="stopping")
        ready_task.cancel()
        if verify_task:
            verify_task.cancel()
            await asyncio.gather(verify_task, return_exceptions=True)
        log.info("stopped at block %s", pipeline.cursor.number if pipeline.cursor else None,
                 extra={"chain": rt.cfg.chain.name})


def exit_with(exc: BaseException, redactor: Redactor | None) -> None:
    from indexer.errors import IndexerError
    text = str(exc)
    if redactor:
        text = redactor.scrub(text)
    print(f"error: {text}", file=sys.stderr)
    sys.exit(exc.exit_code if isinstance(exc, IndexerError) else 1)
