"""Faults between the daemon and the node, through a proxy in front of a real anvil: dropped
connections, delayed frames, 429/503, range errors, timeouts, garbage, answers of another block hash,
a stale subscription and a node that goes away. Each run ends in the database a fault-free backfill
builds, table by table, and `indexer verify` is clean."""

from __future__ import annotations

import json
import threading
import time

import apsw

import devchain
from faultproxy import FaultProxy
from helpers import (Daemon, Load, assert_same_db, cli, free_port, metric_value, sample_tokens, scrape,
                     write_config)


def equals_fault_free_backfill(anvil, w3, db, tmp_path):
    ref = write_config(tmp_path / "ref.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "ref.db")
    cli(ref, "backfill", "--from", "0", "--to", str(w3.eth.block_number))
    assert_same_db(db, tmp_path / "ref.db")
    assert json.loads(cli(ref, "verify", "--format", "json").stdout)["mismatches"] == []


def proxied_config(tmp_path, proxy, **chain):
    port = free_port()
    cfg = write_config(tmp_path / "run.toml", ws_url=proxy.ws_url, http_url=proxy.http_url, tokens=sample_tokens(),
                       db=tmp_path / "run.db", metrics_listen=f"127.0.0.1:{port}",
                       chain={"request_timeout": 3, "stall_timeout": 3, "initial_getlogs_range": 8,
                              "max_getlogs_range": 32, **chain})
    return cfg, f"http://127.0.0.1:{port}/metrics"


def wait_cursor_hash(db_daemon: Daemon, w3, timeout: float = 60.0) -> None:
    """Caught up: the daemon's cursor is the node's head, by number and hash."""
    from helpers import dump
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = w3.eth.get_block("latest")
        try:
            cur = dump(db_daemon.config_db())["cursor"] if db_daemon.config_db().exists() else None
        except apsw.Error:  # created a moment ago, schema not there yet
            cur = None
        if cur and cur[0][1] == head.number and cur[0][2] == head.hash.to_0x_hex():
            return
        if db_daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {db_daemon.proc.returncode}:\n{db_daemon.log_tail()}")
        time.sleep(0.1)
    raise AssertionError(f"daemon did not catch up:\n{db_daemon.log_tail()}")


def test_chaos_on_every_request_type_ends_in_the_fault_free_database(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=21)
    load.blocks(40, per_block=10)  # history, so catch-up runs through the faults too
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=5) as proxy:
        cfg, metrics_url = proxied_config(tmp_path, proxy)
        proxy.set_delay(0, 15)
        # wave 1, armed before the daemon starts so its catch-up over ranges meets them: bad answers to
        # history and head requests
        proxy.inject("limit_exceeded", method="eth_getLogs", count=3)
        proxy.inject("range_error", method="eth_getLogs", count=2)
        proxy.inject("foreign_block_hash", method="eth_getLogs", count=2)
        proxy.inject("header_not_found", method="eth_getBlockByNumber", count=2)
        proxy.inject("rate_limited", count=3, retry_after=0.2)
        proxy.inject("invalid_json", count=2)
        proxy.inject("truncated_json", count=2)
        proxy.inject("wrong_id", count=2)
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            stop = threading.Event()

            def live():
                live_load = Load(w3, d, seed=22)
                while not stop.is_set():
                    live_load.blocks(1, per_block=5)
                    time.sleep(0.15)

            t = threading.Thread(target=live, daemon=True)
            t.start()
            try:
                for kind in ("limit_exceeded", "range_error", "foreign_block_hash", "header_not_found",
                             "rate_limited", "invalid_json", "truncated_json", "wrong_id"):
                    try:
                        proxy.wait_counter(kind, timeout=60)
                    except TimeoutError:
                        raise AssertionError(f"{kind} never fired: {proxy.counters()}\n{daemon.log_tail()}")
                # wave 2: the connection itself: 503s, requests never answered, random drops, a mass drop
                proxy.inject("unavailable", count=2)
                proxy.inject("timeout", count=2, seconds=5)
                proxy.set_drop_rate(0.02)
                for kind in ("unavailable", "timeout"):
                    try:
                        proxy.wait_counter(kind, timeout=60)
                    except TimeoutError:
                        raise AssertionError(f"{kind} never fired: {proxy.counters()}\n{daemon.log_tail()}")
                time.sleep(3)
                proxy.drop_connections()
                time.sleep(2)
            finally:
                stop.set()
                t.join(30)
            counters = proxy.counters()
            proxy.reset()
            wait_cursor_hash(daemon, w3, timeout=90)
            text = scrape(metrics_url)
            assert daemon.terminate() == 0
        assert metric_value(text, "indexer_websocket_reconnects_total") >= 1
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log
        assert counters.get("delayed", 0) > 10
    equals_fault_free_backfill(anvil, w3, tmp_path / "run.db", tmp_path)


def test_stale_subscription_is_detected_and_reconnected(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=31)
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=6) as proxy:
        cfg, metrics_url = proxied_config(tmp_path, proxy, stall_timeout=2)
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            wait_cursor_hash(daemon, w3)
            proxy.stall(True)  # socket open, requests answered, no heads
            load.blocks(3, per_block=4)
            deadline = time.monotonic() + 20
            while "subscription is stale" not in daemon.log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "subscription is stale" in daemon.log_path.read_text(), daemon.log_tail()
            wait_cursor_hash(daemon, w3, timeout=30)  # caught up through the reconnect's catch-up
            proxy.stall(False)
            load.blocks(2, per_block=4)
            wait_cursor_hash(daemon, w3)
            assert metric_value(scrape(metrics_url), "indexer_websocket_reconnects_total") >= 1
            assert daemon.terminate() == 0
    equals_fault_free_backfill(anvil, w3, tmp_path / "run.db", tmp_path)


def test_node_gone_then_back_resumes_without_a_gap(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=41)
    port = free_port()
    proxy = FaultProxy(anvil.http_url, anvil.ws_url, port=port, seed=7).start()
    cfg, _ = proxied_config(tmp_path, proxy)
    try:
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            wait_cursor_hash(daemon, w3)
            proxy.stop()  # the node disappears: connections refused
            load.blocks(5, per_block=6)  # ...while the chain moves on
            time.sleep(4)
            assert daemon.proc.poll() is None, "the daemon must keep retrying, not exit"
            text = daemon.log_path.read_text()
            assert "reconnecting in" in text and "cannot connect" in text
            proxy = FaultProxy(anvil.http_url, anvil.ws_url, port=port, seed=8).start()
            wait_cursor_hash(daemon, w3, timeout=60)
            assert daemon.terminate() == 0
    finally:
        proxy.stop()
    equals_fault_free_backfill(anvil, w3, tmp_path / "run.db", tmp_path)
