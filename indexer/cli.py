"""Command line: `indexer [--config PATH] COMMAND`. Exit codes: 0 ok, 1 verify found mismatches or an
unexpected error, 2 bad usage or config, 3 database unusable, 4 reorg deeper than allowed, 5 data integrity."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

import click

from indexer import __version__
from indexer.config import Config, load_config
from indexer.errors import IndexerError, UsageError

log = logging.getLogger("indexer")


class Ctx:
    def __init__(self, config_path: str | None, log_level: str | None, log_format: str | None):
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format
        self._cfg: Config | None = None
        self.redactor = None

    def cfg(self) -> Config:
        if self._cfg is None:
            from indexer.daemon import configure_logging, make_redactor
            self._cfg = load_config(self.config_path)
            self.redactor = make_redactor(self._cfg)
            configure_logging(self._cfg, self.log_level, self.log_format, self.redactor)
        return self._cfg


def _fail(exc: BaseException, ctx: Ctx | None) -> None:
    from indexer.daemon import exit_with
    exit_with(exc, ctx.redactor if ctx else None)


def guarded(fn):
    """Turn IndexerErrors into one clear line on stderr and the documented exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context().find_object(Ctx)
        try:
            return fn(*args, **kwargs)
        except IndexerError as exc:
            _fail(exc, ctx)
        except KeyboardInterrupt:
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="INDEXER_CONFIG", default=None, metavar="PATH",
              help="config file (default: $INDEXER_CONFIG or ./config.toml)")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help="overrides [logging] level")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default=None,
              help="json lines, readable text, or auto (text on a terminal)")
@click.version_option(__version__, prog_name="indexer")
@click.pass_context
def main(click_ctx: click.Context, config_path, log_level, log_format) -> None:
    """Cap-table indexer for tokenized securities (EVM and Solana) into SQLite."""
    if click_ctx.invoked_subcommand in ("run", "backfill"):
        from indexer.daemon import install_early_signal_handlers
        install_early_signal_handlers()  # as early as we can: a stop during start-up still exits 0
    click_ctx.obj = Ctx(config_path, log_level.upper() if log_level else None, log_format)


@main.command()
@click.pass_obj
@guarded
def run(ctx: Ctx) -> None:
    """Catch up from the stored cursor, then follow the chain head until SIGTERM/SIGINT."""
    from indexer.daemon import install_early_signal_handlers, open_runtime, run_daemon
    install_early_signal_handlers()
    cfg = ctx.cfg()
    rt = open_runtime(cfg, ctx.redactor, serve_metrics=True)
    if rt.server:
        log.info("metrics on %s/metrics", rt.server.url)
    try:
        asyncio.run(run_daemon(rt))
    finally:
        rt.close()


@main.command()
@click.option("--from", "start", type=click.IntRange(min=0), required=True, help="first block (slot)")
@click.option("--to", "end", type=click.IntRange(min=0), required=True, help="last block (slot), inclusive")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: on a terminal)")
@click.pass_obj
@guarded
def backfill(ctx: Ctx, start: int, end: int, progress: bool | None) -> None:
    """Index blocks START..END. Idempotent: already indexed blocks are left unchanged."""
    from indexer.daemon import install_early_signal_handlers, install_signal_handlers, make_pipeline, make_source, open_runtime
    install_early_signal_handlers()
    if end < start:
        raise UsageError(f"--to {end} is before --from {start}")
    cfg = ctx.cfg()
    rt = open_runtime(cfg, ctx.redactor, serve_metrics=False)
    show_bar = sys.stderr.isatty() if progress is None else progress
    t0 = time.monotonic()
    state = {"last": 0.0, "first": None}

    def on_progress(p) -> None:
        now = time.monotonic()
        if p.cursor is None or now - state["last"] < (0.2 if show_bar else 5.0):
            return
        state["last"] = now
        if state["first"] is None:
            state["first"] = p.cursor.number
        total = max(1, end - start + 1)
        done = min(total, max(0, p.cursor.number - start + 1))
        rate = p.progress.events / max(1e-6, now - t0)
        brate = done / max(1e-6, now - t0)
        eta = (total - done) / brate if brate > 0 else float("inf")
        rt.metrics.set_backfill_progress(done, total)
        if show_bar:
            width = 30
            fill = int(width * done / total)
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] block {p.cursor.number}/{end} "
                             f"{100 * done / total:5.1f}%  {rate:,.0f} events/s  ETA {eta:,.0f}s   ")
            sys.stderr.flush()
        else:
            log.info("backfill at block %d of %d (%.1f%%), %d events, %.0f events/s, ETA %.0fs", p.cursor.number,
                     end, 100 * done / total, p.progress.events, rate, eta,
                     extra={"chain": cfg.chain.name, "block_number": p.cursor.number})

    async def go():
        stop = asyncio.Event()
        install_signal_handlers(stop)
        source = make_source(cfg, ctx.redactor, rt.metrics)
        pipeline = make_pipeline(rt, source, on_progress)
        await pipeline.backfill(start, end, stop)
        return pipeline

    try:
        pipeline = asyncio.run(go())
    finally:
        rt.close()
    if show_bar:
        sys.stderr.write("\n")
    elapsed = time.monotonic() - t0
    cursor = pipeline.cursor.number if pipeline.cursor else None
    click.echo(json.dumps({"indexed_to": cursor, "events": pipeline.progress.events,
                           "seconds": round(elapsed, 3),
                           "events_per_second": round(pipeline.progress.events / max(elapsed, 1e-9))}))


def _read_conn(cfg: Config):
    from indexer.store import connect
    if not os.path.exists(cfg.database.path):
        raise UsageError(f"database {cfg.database.path} does not exist yet",
                         hint="run `indexer run` or `indexer backfill` first")
    return connect(cfg.database.path, readonly=True)


@main.command()
@click.option("--token", required=True, help="token address (EVM) or mint (Solana)")
@click.option("--at-block", type=click.IntRange(min=0), default=None, help="block/slot (default: indexed head)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.pass_obj
@guarded
def captable(ctx: Ctx, token: str, at_block: int | None, fmt: str) -> None:
    """Holders with a non-zero balance at a block, with split-adjusted balances and ownership."""
    from indexer.captable import captable as build, render
    cfg = ctx.cfg()
    key = token.lower() if cfg.chain.kind == "evm" else token
    if key not in cfg.token_addresses():
        raise UsageError(f"token {token} is not configured", hint="list it under [[tokens]] in the config")
    conn = _read_conn(cfg)
    try:
        table = build(conn, cfg.chain.name, key, at_block)
    finally:
        conn.close()
    click.echo(render(table, fmt), nl=False)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--no-node", is_flag=True, help="do not ask the node for its head")
@click.pass_obj
@guarded
def status(ctx: Ctx, fmt: str, no_node: bool) -> None:
    """Cursor, node head, lag and row counts."""
    cfg = ctx.cfg()
    out: dict = {"chain": cfg.chain.name, "kind": cfg.chain.kind, "ws_url": ctx.redactor.scrub(cfg.chain.ws_url),
                 "database": cfg.database.path}
    if os.path.exists(cfg.database.path):
        from indexer.captable import indexed_range
        conn = _read_conn(cfg)
        try:
            rng = indexed_range(conn, cfg.chain.name)
            out["schema_version"] = conn.execute("PRAGMA user_version").fetchall()[0][0]
            out["cursor"] = None if rng is None else {"block_number": rng.last, "block_hash": rng.last_hash,
                                                      "first_block": rng.first}
            out["counts"] = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                             for t in ("events", "balance_ledger", "corporate_actions", "blocks", "skipped_logs")}
            out["holders"] = conn.execute("SELECT count(*) FROM holder_balances WHERE balance != '0'").fetchall()[0][0]
            row = conn.execute("SELECT updated_at FROM cursor WHERE chain=?", (cfg.chain.name,)).fetchall()
            out["last_commit_age_seconds"] = round(time.time() - row[0][0], 3) if row else None
        finally:
            conn.close()
    else:
        out["cursor"] = None
    if not no_node:
        from indexer.daemon import make_source
        from indexer.metrics import Metrics

        async def head():
            source = make_source(cfg, ctx.redactor, Metrics(chain=cfg.chain.name))
            try:
                await asyncio.wait_for(source.connect(), cfg.chain.request_timeout)
                return await asyncio.wait_for(source.head_number(), cfg.chain.request_timeout)
            finally:
                await source.close()
        try:
            out["head"] = asyncio.run(head())
            if out.get("cursor"):
                out["lag_blocks"] = max(0, out["head"] - out["cursor"]["block_number"])
        except (IndexerError, OSError, asyncio.TimeoutError) as exc:
            out["head"] = None
            out["node_error"] = ctx.redactor.scrub(str(exc))
    if fmt == "json":
        click.echo(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        click.echo(f"{k:>24}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


@main.command()
@click.option("--at-block", type=click.IntRange(min=0), default=None)
@click.option("--token", "tokens", multiple=True, help="only this token (repeatable)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@guarded
def verify(ctx: Ctx, at_block: int | None, tokens: tuple[str, ...], fmt: str) -> None:
    """Compare indexed balances and total supply at a block with the chain's own answers (exit 1 on mismatch)."""
    from indexer.daemon import make_source
    from indexer.metrics import Metrics
    from indexer.verify import verify as run_verify
    cfg = ctx.cfg()
    if cfg.chain.kind != "evm":
        from indexer.verify_solana import verify as run_verify  # noqa: F811
    _read_conn(cfg).close()

    async def go():
        source = make_source(cfg, ctx.redactor, Metrics(chain=cfg.chain.name))
        await source.connect()
        try:
            keys = [t.lower() if cfg.chain.kind == "evm" else t for t in tokens] or None
            return await run_verify(cfg, source, at_block, keys)
        finally:
            await source.close()

    result = asyncio.run(go())
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"block {result['block_number']}: {result['holders_checked']} holders checked, "
                   f"{len(result['mismatches'])} mismatch(es)")
        for m in result["mismatches"]:
            who = m["holder"] or "total supply"
            click.echo(f"  MISMATCH {m['token']} {who}: indexed {m['indexed']}, chain {m['chain']}")
    sys.exit(0 if result["ok"] else 1)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("migrate")
@click.pass_obj
@guarded
def db_migrate(ctx: Ctx) -> None:
    """Create the database or upgrade it to the current schema version."""
    import apsw

    from indexer import migrations
    from indexer.store import Store, connect, schema_sql
    cfg = ctx.cfg()
    existed = os.path.exists(cfg.database.path)
    before = 0
    if existed:
        conn = connect(cfg.database.path, readonly=True)
        before = migrations.current_version(conn)
        conn.close()
    store = Store(cfg.database.path, chain=cfg.chain.name, kind=cfg.chain.kind, chain_id=cfg.chain.chain_id)
    store.open()
    after = migrations.current_version(store.conn)
    store.close()
    click.echo(json.dumps({"database": cfg.database.path, "from_version": before, "to_version": after,
                           "created": not existed}))


@db.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.pass_obj
@guarded
def db_backup(ctx: Ctx, dest: str) -> None:
    """Consistent online copy of the database (SQLite backup API), safe while the daemon writes."""
    from indexer.dbops import backup
    cfg = ctx.cfg()
    click.echo(json.dumps(backup(cfg.database.path, dest)))


@db.command("check")
@click.pass_obj
@guarded
def db_check(ctx: Ctx) -> None:
    """SQLite integrity check plus the indexer's own consistency checks (exit 1 on any problem)."""
    from indexer.dbops import check
    cfg = ctx.cfg()
    result = check(cfg.database.path, cfg.chain.name)
    click.echo(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
