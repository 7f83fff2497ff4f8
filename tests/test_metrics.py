"""Metrics and the /metrics, /healthz, /readyz server, scraped over real HTTP and linted by promtool."""

from __future__ import annotations

import http.client
import math
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from indexer.httpserver import MetricsServer, loop_health, parse_listen
from indexer.metrics import Metrics

EXPECTED_FAMILIES = {
    # name in the exposition (counters without _total): type
    "indexer_chain_head_block": "gauge",
    "indexer_indexed_block": "gauge",
    "indexer_finalized_block": "gauge",
    "indexer_lag_blocks": "gauge",
    "indexer_lag_seconds": "gauge",
    "indexer_last_block_timestamp_seconds": "gauge",
    "indexer_blocks_processed": "counter",
    "indexer_events_processed": "counter",
    "indexer_skipped_logs": "counter",
    "indexer_reorgs": "counter",
    "indexer_reorg_depth_blocks": "histogram",
    "indexer_rpc_requests": "counter",
    "indexer_rpc_request_duration_seconds": "histogram",
    "indexer_websocket_reconnects": "counter",
    "indexer_commit_duration_seconds": "histogram",
    "indexer_getlogs_range_blocks": "histogram",
    "indexer_verify_mismatches": "gauge",
    "indexer_verify_last_run_timestamp_seconds": "gauge",
    "indexer_database_size_bytes": "gauge",
    "indexer_backfill_progress_ratio": "gauge",
    "indexer_info": "gauge",  # an Info metric is a gauge of 1 in the text format
}


class FakeClock:
    """Wall clock under test control (only for lag_seconds arithmetic)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _promtool() -> str:
    path = shutil.which("promtool")
    # Not a skip: the exposition must be checked. Debian: `apt-get install prometheus` (see .ci/run).
    assert path, "promtool not found: install the Debian package 'prometheus' (see .ci/run)"
    return path


def _get(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def _exercise(m: Metrics) -> None:
    """Touch every metric the way the pipeline will."""
    m.set_chain_head(19_000_010)
    m.set_finalized(19_000_000)
    m.set_indexed(19_000_000, timestamp=1_700_000_000)
    m.block_committed(19_000_001, timestamp=1_700_000_012, commit_seconds=0.004)
    m.count_events("Transfer", 3)
    m.count_events("Mint")
    m.count_skipped_log("unexpected_topic_count")
    m.observe_reorg(2)
    m.observe_rpc("eth_getLogs", "ok", 0.12)
    m.observe_rpc("eth_getBlockByHash", "rate_limited", 0.03)
    m.count_websocket_reconnect()
    m.observe_getlogs_range(2_000)
    m.set_verify_result(0, finished_at=1_700_000_100)
    m.set_database_size(4096)
    m.set_backfill_progress(250, 1_000)


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer, dict]]:
    clock = FakeClock(1_700_000_030)
    metrics = Metrics(registry=CollectorRegistry(), chain="devchain", chain_kind="evm", version="9.9.9", clock=clock)
    state = {"health": (True, "ok"), "clock": clock}
    server = MetricsServer(
        metrics.registry, "127.0.0.1:0",
        health=lambda: state["health"], ready=lambda: metrics.readiness(max_lag_blocks=5, max_lag_seconds=60),
    )
    server.start()
    yield metrics, server, state
    server.stop()


def test_scrape_over_http_passes_promtool_lint(served) -> None:
    metrics, server, _ = served
    _exercise(metrics)
    status, headers, body = _get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    proc = subprocess.run([_promtool(), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_promtool_lint_is_not_vacuous() -> None:
    # A badly named counter must be reported, or the check above proves nothing.
    bad = b"# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n"
    proc = subprocess.run([_promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=30)
    assert proc.returncode != 0 and b"_total" in proc.stdout + proc.stderr


def test_every_metric_is_exposed_with_help_and_chain_label(served) -> None:
    metrics, server, _ = served
    _exercise(metrics)
    body = _get(server.url + "/metrics")[2].decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    indexer_families = {name: f.type for name, f in families.items() if name.startswith("indexer")}
    # _created companions of counters/histograms are gauges added by prometheus_client
    indexer_families = {n: t for n, t in indexer_families.items() if not n.endswith("_created")}
    assert indexer_families == EXPECTED_FAMILIES
    for name in EXPECTED_FAMILIES:
        family = families[name]
        assert len(family.documentation) > 20, name
        assert family.samples and all(s.labels["chain"] == "devchain" for s in family.samples), name


def test_values_reflect_the_pipeline_calls(served) -> None:
    metrics, server, _ = served
    _exercise(metrics)
    body = _get(server.url + "/metrics")[2].decode()
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "chain"))): s.value
        for f in text_string_to_metric_families(body) for s in f.samples
    }
    assert samples[("indexer_chain_head_block", ())] == 19_000_010
    assert samples[("indexer_indexed_block", ())] == 19_000_001
    assert samples[("indexer_lag_blocks", ())] == 9
    assert samples[("indexer_lag_seconds", ())] == 18  # clock 1_700_000_030 - block ts 1_700_000_012
    assert samples[("indexer_blocks_processed_total", ())] == 1  # set_indexed doesn't count
    assert samples[("indexer_events_processed_total", (("event_type", "Transfer"),))] == 3
    assert samples[("indexer_events_processed_total", (("event_type", "Mint"),))] == 1
    assert samples[("indexer_skipped_logs_total", (("reason", "unexpected_topic_count"),))] == 1
    assert samples[("indexer_reorgs_total", ())] == 1
    assert samples[("indexer_reorg_depth_blocks_bucket", (("le", "1.0"),))] == 0
    assert samples[("indexer_reorg_depth_blocks_bucket", (("le", "2.0"),))] == 1
    assert samples[("indexer_rpc_requests_total", (("method", "eth_getBlockByHash"), ("outcome", "rate_limited")))] == 1
    assert samples[("indexer_rpc_request_duration_seconds_count", (("method", "eth_getLogs"),))] == 1
    assert samples[("indexer_commit_duration_seconds_sum", ())] == pytest.approx(0.004)
    assert samples[("indexer_getlogs_range_blocks_sum", ())] == 2_000
    assert samples[("indexer_verify_last_run_timestamp_seconds", ())] == 1_700_000_100
    assert samples[("indexer_backfill_progress_ratio", ())] == 0.25
    assert samples[("indexer_info", (("chain_kind", "evm"), ("version", "9.9.9")))] == 1


def test_lag_seconds_is_nan_before_the_first_block_and_grows_while_stuck() -> None:
    clock = FakeClock(1_000)
    m = Metrics(chain="c", clock=clock)
    assert math.isnan(m.lag_seconds())
    assert m.lag_blocks() is None
    m.block_committed(5, timestamp=990)
    assert m.lag_seconds() == 10
    clock.now = 1_500
    assert m.lag_seconds() == 510
    m.set_chain_head(3)  # a head behind the cursor (lagging node) is lag 0, not negative
    assert m.lag_blocks() == 0


def test_readiness_reasons() -> None:
    clock = FakeClock(2_000)
    m = Metrics(chain="c", clock=clock)
    assert m.readiness(5, 60) == (False, "no block indexed yet")
    m.block_committed(100, timestamp=1_990)
    assert m.readiness(5, 60) == (False, "chain head not known yet")
    m.set_chain_head(112)
    assert m.readiness(5, 60) == (False, "lag 12 blocks > max 5")
    m.set_chain_head(103)
    assert m.readiness(5, 60) == (True, "lag 3 blocks")
    clock.now = 2_100
    assert m.readiness(5, 60) == (False, "lag 110s > max 60s")
    # caught up: old block timestamps just mean a quiet chain
    m.set_chain_head(100)
    assert m.readiness(5, 60) == (True, "lag 0 blocks")


def test_healthz_and_readyz_follow_their_checks(served) -> None:
    metrics, server, state = served
    assert _get(server.url + "/readyz")[::2] == (503, b"no block indexed yet\n")
    metrics.set_chain_head(110)
    metrics.block_committed(100, timestamp=1_700_000_000)
    assert _get(server.url + "/readyz")[::2] == (503, b"lag 10 blocks > max 5\n")
    metrics.block_committed(108, timestamp=1_700_000_020)
    assert _get(server.url + "/readyz")[::2] == (200, b"lag 2 blocks\n")

    assert _get(server.url + "/healthz")[::2] == (200, b"ok\n")
    state["health"] = (False, "main loop silent for 95s > max 60s")
    assert _get(server.url + "/healthz")[::2] == (503, b"main loop silent for 95s > max 60s\n")


def test_a_raising_check_answers_503_with_the_error() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("store closed")

    with MetricsServer(CollectorRegistry(), "127.0.0.1:0", health=broken) as server:
        status, _, body = _get(server.url + "/healthz")
        assert (status, body) == (503, b"healthz check raised RuntimeError: store closed\n")
        assert _get(server.url + "/readyz")[::2] == (200, b"ok\n")  # no ready() given: always ready


def test_unknown_paths_head_requests_and_openmetrics(served) -> None:
    metrics, server, _ = served
    assert _get(server.url + "/")[0] == 404
    assert _get(server.url + "/metrics/extra")[0] == 404
    status, headers, body = _get(server.url + "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, headers, body = _get(
        server.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_port_zero_binds_a_free_port_and_stop_releases_it() -> None:
    server = MetricsServer(CollectorRegistry(), ("127.0.0.1", 0)).start()
    port = server.port
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    assert _get(server.url + "/healthz")[0] == 200
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(RuntimeError, match="not started"):
        server.port  # noqa: B018


def test_a_taken_port_fails_loudly() -> None:
    with MetricsServer(CollectorRegistry(), "127.0.0.1:0") as first:
        second = MetricsServer(CollectorRegistry(), f"127.0.0.1:{first.port}")
        with pytest.raises(OSError):
            second.start()


def test_ipv6_loopback() -> None:
    with MetricsServer(CollectorRegistry(), "[::1]:0") as server:
        assert server.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", server.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


def test_parse_listen_errors_name_the_setting() -> None:
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    for bad in ("9108", "127.0.0.1:", ":9108", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="metrics listen address"):
            parse_listen(bad)


def test_concurrent_scrapes_while_metrics_change(served) -> None:
    metrics, server, _ = served
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            for _ in range(10):
                assert _get(server.url + "/metrics")[0] == 200
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(500):
        metrics.block_committed(n, timestamp=1_700_000_000 + n, commit_seconds=0.001)
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)


def test_label_values_stay_bounded(caplog) -> None:
    m = Metrics(chain="c")
    m.count_events("0x" + "ab" * 20)  # an address where an event type belongs
    m.observe_rpc("eth_call", "0x" + "cd" * 32)  # a hash as outcome
    m.count_skipped_log("7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU")  # a Solana pubkey
    for i in range(40):  # more distinct values than any real code has
        m.count_events(f"Event{i}")
    body = m.registry.collect()
    values = {
        (s.name, s.labels.get("event_type") or s.labels.get("outcome") or s.labels.get("reason"))
        for f in body for s in f.samples if s.name.endswith("_total")
    }
    assert ("indexer_events_processed_total", "other") in values
    assert ("indexer_rpc_requests_total", "other") in values
    assert ("indexer_skipped_logs_total", "other") in values
    assert not any(v and (v.startswith("0x") or v.startswith("7xK")) for _, v in values)
    event_types = {v for n, v in values if n == "indexer_events_processed_total"}
    assert len(event_types) == 33  # 32 distinct + "other"
    assert any("folded into 'other'" in r.getMessage() for r in caplog.records)


def test_database_size_is_read_at_scrape_time(tmp_path: Path) -> None:
    db = tmp_path / "indexer.db"
    m = Metrics(chain="c")
    m.track_database_file(db)

    def scraped() -> float:
        return m.registry.get_sample_value("indexer_database_size_bytes", {"chain": "c"})

    assert scraped() == 0  # not created yet
    con = apsw.Connection(str(db))
    con.execute("pragma journal_mode=wal")
    con.execute("create table t(x blob) strict")
    with con:
        con.execute("insert into t values (zeroblob(200000))")
    on_disk = db.stat().st_size + (Path(str(db) + "-wal").stat().st_size if Path(str(db) + "-wal").exists() else 0)
    assert scraped() == on_disk and on_disk > 200_000
    con.close()


def test_two_instances_use_separate_registries() -> None:
    a, b = Metrics(chain="a"), Metrics(chain="b")
    a.count_websocket_reconnect()
    assert a.registry.get_sample_value("indexer_websocket_reconnects_total", {"chain": "a"}) == 1
    assert b.registry.get_sample_value("indexer_websocket_reconnects_total", {"chain": "b"}) == 0
    shared = CollectorRegistry()
    Metrics(registry=shared, chain="x")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry=shared, chain="y")  # one Metrics per registry, by design


def test_loop_health_reports_silence() -> None:
    silent = {"s": 3.0}
    check = loop_health(lambda: silent["s"], max_silence=60)
    assert check() == (True, "ok")
    silent["s"] = 95.4
    assert check() == (False, "main loop silent for 95s > max 60s")


def test_metric_names_follow_conventions() -> None:
    m = Metrics(chain="c")
    for family in m.registry.collect():
        assert re.fullmatch(r"indexer(_[a-z0-9]+)*", family.name), family.name
