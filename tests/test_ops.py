"""Operating it like a production service, proven on the real daemon process and a real anvil:
sd_notify (READY, WATCHDOG, STATUS, STOPPING) over a real AF_UNIX datagram socket, a frozen main loop
that stops the watchdog pings, SIGTERM in the middle of a backfill, /readyz and /healthz under a node
that answers too slowly, promtool on a live scrape, secrets that never leave the process, and an online
backup taken while the daemon writes.

Faults come from tests/faultproxy.py (a real proxy on 127.0.0.1 between the daemon and anvil)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import apsw
import pytest

import devchain
from faultproxy import FaultProxy
from helpers import (INDEXER, ROOT, Daemon, Load, assert_same_db, cli, cli_json, db_cursor, free_port, scrape,
                     write_config)

WATCHDOG_USEC = 1_000_000
WATCHDOG_PERIOD = WATCHDOG_USEC / 1e6 / 2  # the daemon pings at half the interval (sd_watchdog_enabled(3))


# --------------------------------------------------------------------------- chain and activity


def rpc_batch(url: str, calls: list[tuple[str, list]], timeout: float = 30.0) -> list:
    """One JSON-RPC batch over HTTP; every element must succeed."""
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)])
    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        replies = json.loads(resp.read())
    errors = [r for r in replies if "error" in r]
    assert not errors, errors[:3]
    return [r["result"] for r in sorted(replies, key=lambda r: r["id"])]


def mine_activity(url: str, load: Load, blocks: int, per_block: int) -> None:
    """`blocks` blocks of `per_block` token transactions each (mints and forced transfers by the agent).

    helpers.Load sends one transaction per HTTP round trip through web3 (~15 ms each); a few thousand
    events that way would take a minute, so the same transactions go out as one JSON-RPC batch per
    block, with explicit nonces and gas, followed by evm_mine in the same batch (anvil runs a batch in
    order)."""
    w3 = load.w3
    nonce = w3.eth.get_transaction_count(load.d.agent, "pending")
    # not eth_gasPrice: anvil suggests from recent transactions' prices, so doubling it every call compounds
    gas_price = hex(2 * w3.eth.get_block("latest")["baseFeePerGas"] + 10**9)
    rpc_batch(url, [("evm_setAutomine", [False])])
    try:
        for _ in range(blocks):
            calls = []
            for _ in range(per_block):
                tx = load.tx()
                calls.append(("eth_sendTransaction", [{"from": tx["from"], "to": tx["to"], "data": tx["data"],
                                                       "gas": hex(tx["gas"]), "gasPrice": gas_price,
                                                       "nonce": hex(nonce)}]))
                nonce += 1
            calls.append(("evm_mine", []))
            rpc_batch(url, calls)
    finally:
        rpc_batch(url, [("evm_setAutomine", [True])])


def mine_empty(url: str, n: int) -> None:
    rpc_batch(url, [("anvil_mine", [hex(n)])])


@pytest.fixture(scope="module")
def chain():
    """anvil with the sample token, 50 registered and issued investors, then 3,000 token events in
    100 blocks (the long range that backfills are interrupted in)."""
    with devchain.Anvil() as anvil:
        w3 = devchain.connect(anvil.http_url)
        d = devchain.deploy_sample(w3)
        steps = devchain.sample_steps(w3, d)
        for _ in devchain.run_steps(w3, [s for s in steps if s.name in ("register_investors", "issue")]):
            pass
        load = Load(w3, d, seed=11)
        mine_activity(anvil.http_url, load, blocks=100, per_block=30)
        yield {"anvil": anvil, "w3": w3, "deployment": d, "load": load}


def tokens() -> list[dict]:
    return [{"address": devchain.SAMPLE_TOKEN_ADDRESS, "profile": "erc3643", "label": "sample"}]


def ops_config(path: Path, *, ws_url: str, http_url: str | None, db: Path, metrics_port: int | None = None,
               chain: dict | None = None, metrics: dict | None = None, level: str = "INFO",
               token_list: list[dict] | None = None) -> Path:
    """helpers.write_config plus [metrics] keys and a log level."""
    listen = f"127.0.0.1:{metrics_port}" if metrics_port else "127.0.0.1:0"
    cfg = write_config(path, ws_url=ws_url, http_url=http_url, tokens=token_list or tokens(), db=db, chain=chain,
                       metrics_listen=listen)
    text = cfg.read_text()
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (metrics or {}).items())
    text = text.replace("[metrics]\n", "[metrics]\n" + extra, 1).replace('level = "INFO"', f'level = "{level}"', 1)
    cfg.write_text(text)
    return cfg


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail()}")
        time.sleep(interval)


def head(w3) -> int:
    return w3.eth.block_number


def fresh_backfill(chain, tmp_path: Path, name: str, upto: int) -> Path:
    """A fault-free backfill of blocks 0..upto straight from anvil: the reference database."""
    anvil = chain["anvil"]
    cfg = ops_config(tmp_path / f"{name}.toml", ws_url=anvil.ws_url, http_url=anvil.http_url,
                     db=tmp_path / f"{name}.db")
    out = cli_json(cfg, "backfill", "--from", "0", "--to", str(upto))
    assert out["indexed_to"] == upto
    return tmp_path / f"{name}.db"


# --------------------------------------------------------------------------- sd_notify listener


class NotifyListener:
    """Stands in for systemd's notify socket: a bound AF_UNIX datagram socket in tmp_path, read by a
    thread that timestamps every datagram (monotonic clock, same as the test's)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self._messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.monotonic(), data.decode()))

    def messages(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._messages)

    def pings(self, after: float = 0.0, before: float = float("inf")) -> list[float]:
        return [t for t, m in self.messages() if m == "WATCHDOG=1" and after <= t <= before]

    def wait_for(self, prefix: str, timeout: float) -> tuple[float, str]:
        return wait_until(lambda: next(((t, m) for t, m in self.messages() if m.startswith(prefix)), None), timeout,
                          f"a {prefix!r} datagram; got {[m for _, m in self.messages()][-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def notify_env(listener: NotifyListener, monkeypatch) -> dict:
    # WATCHDOG_PID stays unset (systemd sets it to the service's main pid, which we can't know before
    # starting the daemon); one inherited from whatever runs the tests would disable the watchdog.
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


# --------------------------------------------------------------------------- 1. sd_notify


def test_systemd_notify_ready_watchdog_status_stopping(chain, tmp_path, monkeypatch):
    anvil, w3 = chain["anvil"], chain["w3"]
    start_head = head(w3)
    cfg = ops_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, db=tmp_path / "run.db")
    listener = NotifyListener(tmp_path / "notify")
    try:
        with Daemon(cfg, tmp_path / "daemon.log", env=notify_env(listener, monkeypatch)) as daemon:
            t_ready, ready = listener.wait_for("READY=1", timeout=60)
            # READY only once the first catch-up reached the head (it names the block it is at)
            following_at = int(ready.rsplit(" ", 1)[1])
            assert ready.startswith("READY=1\nSTATUS=following the chain at block ")
            assert following_at >= start_head - 1, ready
            assert (daemon.cursor() or 0) >= start_head - 1
            # some activity while following, then a few seconds of idle watchdog pings
            for _ in range(3):
                mine_activity(anvil.http_url, chain["load"], blocks=1, per_block=5)
                time.sleep(1.0)
            daemon.wait_for_block(head(w3), timeout=30)
            t_idle = time.monotonic()
            time.sleep(3.0)
            t_term = time.monotonic()
            assert daemon.terminate() == 0
            log_text = daemon.log_path.read_text()
    finally:
        time.sleep(0.2)  # datagrams sent just before exit are already queued in our socket
        listener.close()
    msgs = listener.messages()
    texts = [m for _, m in msgs]
    assert [m for m in texts if m.startswith("READY=1")] == [ready], texts
    assert sum(m.startswith("STOPPING=1") for m in texts) == 1, texts
    t_stop, stopping = next((t, m) for t, m in msgs if m.startswith("STOPPING=1"))
    assert t_ready < t_stop and t_stop >= t_term
    between = [m for t, m in msgs if t_ready < t < t_stop]
    assert between.count("WATCHDOG=1") >= 5, texts
    # progress lines for `systemctl status`, during catch-up and while following
    status = [m for m in texts if m.startswith("STATUS=indexed block ")]
    assert status, texts
    assert any(t > t_ready for t, m in msgs if m.startswith("STATUS=indexed block ")), texts
    assert all("\n" not in m for m in status)
    # the order systemd sees: READY, then pings and STATUS lines, then STOPPING last of all but pings
    # that the watchdog thread may still send while the process winds down
    assert texts.index(ready) < texts.index(stopping)
    assert all(m == "WATCHDOG=1" for t, m in msgs if t > t_stop), texts
    # systemd kills the service when WATCHDOG_USEC passes without a ping; sd_watchdog_enabled(3) asks
    # for a ping every half of it. A healthy idle daemon stays within that (plus scheduling slack).
    idle = listener.pings(after=t_idle, before=t_term)
    assert len(idle) >= 3
    assert max_gap(idle) <= 0.75 * WATCHDOG_USEC / 1e6, (
        f"healthy idle daemon left {max_gap(idle):.2f}s between WATCHDOG=1 pings with WATCHDOG_USEC="
        f"{WATCHDOG_USEC}: it should ping every {WATCHDOG_PERIOD}s, and systemd kills it after 1s without; "
        f"pings at {[round(t - t_idle, 2) for t in idle]}")
    assert "Traceback" not in log_text


# --------------------------------------------------------------------------- 2. frozen main loop


def test_watchdog_pings_stop_while_the_main_loop_is_blocked_and_resume(chain, tmp_path, monkeypatch):
    anvil, w3 = chain["anvil"], chain["w3"]
    listener = NotifyListener(tmp_path / "notify")
    try:
        with FaultProxy(anvil.http_url, anvil.ws_url, seed=2) as proxy:
            cfg = ops_config(tmp_path / "run.toml", ws_url=proxy.ws_url, http_url=proxy.http_url,
                             db=tmp_path / "run.db")
            with Daemon(cfg, tmp_path / "daemon.log", env=notify_env(listener, monkeypatch)) as daemon:
                listener.wait_for("READY=1", timeout=60)
                daemon.wait_for_block(head(w3), timeout=30)
                time.sleep(1.5)
                assert len(listener.pings(after=time.monotonic() - 1.5)) >= 1
                # every request is held for 6 s, then its connection dropped (a node that hangs)
                proxy.inject("timeout", seconds=6.0)
                mine_activity(anvil.http_url, chain["load"], blocks=1, per_block=3)
                target = head(w3)
                proxy.wait_counter("timeout", 1, timeout=15)
                t_hold = time.monotonic()
                time.sleep(4.0)
                frozen = listener.pings(after=t_hold + 2 * WATCHDOG_PERIOD, before=time.monotonic())
                assert frozen == [], f"WATCHDOG=1 sent while the main loop was blocked on the node: {frozen}"
                proxy.clear_injections()
                t_lift = time.monotonic()
                daemon.wait_for_block(target, timeout=30)
                wait_until(lambda: len(listener.pings(after=t_lift)) >= 3, 15, "watchdog pings to resume")
                assert daemon.terminate() == 0
    finally:
        listener.close()
    # one last ping may still follow the progress made just before the request that hung; then
    # silence far longer than the watchdog interval (systemd would restart us), then pings again
    around = listener.pings(after=t_hold - 1.0)
    assert len(around) >= 4 and max_gap(around) > 3.0 > 2 * WATCHDOG_PERIOD, [round(t - t_hold, 2) for t in around]


# --------------------------------------------------------------------------- 3. SIGTERM during backfill


def test_sigterm_during_a_long_backfill_stops_at_a_block_boundary(chain, tmp_path):
    anvil, w3 = chain["anvil"], chain["w3"]
    end = head(w3)
    db = tmp_path / "idx.db"
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=3) as proxy:
        # small ranges, each request delayed: a backfill of ~100 s of work at 3 blocks per request
        proxy.set_delay(30)
        cfg = ops_config(tmp_path / "slow.toml", ws_url=proxy.ws_url, http_url=proxy.http_url, db=db,
                         chain={"initial_getlogs_range": 3, "max_getlogs_range": 3, "fetch_concurrency": 1,
                                "max_reorg_depth": 2})
        cfg.write_text(cfg.read_text().replace("[database]\n", "[database]\nbatch_blocks = 3\n", 1))
        log = open(tmp_path / "backfill.log", "wb")
        proc = subprocess.Popen(INDEXER + ["--config", str(cfg), "backfill", "--from", "0", "--to", str(end)],
                                stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        try:
            # interrupt inside the token activity (blocks 104..), well before the end
            wait_until(lambda: (db_cursor(db) or 0) >= 130 or proc.poll() is not None, 60, "backfill progress",
                       interval=0.02)
            assert proc.poll() is None, "backfill finished before it could be interrupted"
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
    log_text = (tmp_path / "backfill.log").read_text()
    assert proc.returncode == 0, log_text[-3000:]
    cursor = db_cursor(db)
    assert 130 <= cursor < end
    assert json.loads(out)["indexed_to"] == cursor
    assert "Traceback" not in log_text
    check = cli_json(cfg, "db", "check")
    assert check["ok"] and check["problems"] == []
    # the database holds whole blocks up to the cursor: the same as a fault-free backfill up to it
    assert_same_db(db, fresh_backfill(chain, tmp_path, "upto", cursor))
    # and a second backfill completes the rest
    direct = ops_config(tmp_path / "direct.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, db=db)
    assert cli_json(direct, "backfill", "--from", str(cursor + 1), "--to", str(end))["indexed_to"] == end
    assert_same_db(db, fresh_backfill(chain, tmp_path, "full", end))
    assert cli_json(direct, "db", "check")["ok"]


# --------------------------------------------------------------------------- 4. /readyz and /healthz


def test_readyz_reports_lag_while_held_back_and_healthz_stays_up(chain, tmp_path):
    anvil, w3 = chain["anvil"], chain["w3"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=4) as proxy:
        cfg = ops_config(tmp_path / "run.toml", ws_url=proxy.ws_url, http_url=proxy.http_url, db=tmp_path / "run.db",
                         metrics_port=port, metrics={"ready_max_lag_blocks": 5})
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            daemon.wait_for_block(head(w3), timeout=60)
            wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 10, "/readyz 200 once caught up")
            # the node refuses logs (HTTP 429) while its head moves on block by block, announced by newHeads
            proxy.inject("rate_limited", method="eth_getLogs", retry_after=1)
            for _ in range(25):
                mine_empty(anvil.http_url, 1)
                time.sleep(0.1)
            assert proxy.counters()["notifications"] >= 25
            target = head(w3)
            last: list = []
            status, body = wait_until(lambda: (r := http_get(f"{base}/readyz"), last.append(r))[0][0] == 503 and r,
                                      10, "/readyz 503 while 25 blocks behind",
                                      detail=lambda: f"; last answer {last[-1]}, daemon at {daemon.cursor()}, head "
                                                     f"{head(w3)}: the chain head it knows is stale")
            assert "lag" in body and "> max 5" in body, body
            for _ in range(3):
                code, text = http_get(f"{base}/healthz")
                assert code == 200 and text.strip() == "ok", (code, text)
                assert http_get(f"{base}/readyz")[0] == 503
                time.sleep(1.0)
            assert (daemon.cursor() or 0) < target - 5
            assert proxy.counters().get("rate_limited", 0) >= 2
            proxy.clear_injections()
            daemon.wait_for_block(target, timeout=40)
            code, body = wait_until(lambda: (r := http_get(f"{base}/readyz"))[0] == 200 and r, 10, "/readyz 200 again")
            assert body.strip() == "lag 0 blocks", body
            assert http_get(f"{base}/healthz") == (200, "ok\n")
            assert daemon.terminate() == 0


def test_sigterm_while_the_node_rate_limits_exits_promptly(chain, tmp_path):
    """A provider answering 429 for minutes must not make the daemon deaf to SIGTERM: systemd would
    SIGKILL it after TimeoutStopSec."""
    anvil, w3 = chain["anvil"], chain["w3"]
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=44) as proxy:
        cfg = ops_config(tmp_path / "run.toml", ws_url=proxy.ws_url, http_url=proxy.http_url, db=tmp_path / "run.db")
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            daemon.wait_for_block(head(w3), timeout=60)
            proxy.inject("rate_limited", method="eth_getLogs", retry_after=1)
            mine_empty(anvil.http_url, 3)
            proxy.wait_counter("rate_limited", 5, timeout=20)  # backing off by now
            t0 = time.monotonic()
            assert daemon.terminate(timeout=5) == 0
            assert time.monotonic() - t0 < 5
            assert "Traceback" not in daemon.log_path.read_text()


# --------------------------------------------------------------------------- 5. promtool


def test_promtool_accepts_a_live_scrape_after_real_activity(chain, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package 'prometheus' (apt-get install prometheus)"
    anvil, w3 = chain["anvil"], chain["w3"]
    port = free_port()
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=5) as proxy:
        cfg = ops_config(tmp_path / "run.toml", ws_url=proxy.ws_url, http_url=proxy.http_url, db=tmp_path / "run.db",
                         metrics_port=port)
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            daemon.wait_for_block(head(w3), timeout=60)
            # a retried request, a reconnect and a reorg, so error-labelled series and histograms have samples
            proxy.inject("rate_limited", method="eth_getLogs", count=1)
            mine_activity(anvil.http_url, chain["load"], blocks=2, per_block=10)
            daemon.wait_for_block(head(w3), timeout=30)
            proxy.drop_connections()
            chain["load"].reorg(1, txs=3)
            mine_activity(anvil.http_url, chain["load"], blocks=1, per_block=5)
            daemon.wait_for_block(head(w3), timeout=30)
            wait_until(lambda: daemon.cursor() == head(w3), 10, "the daemon at the head")
            text = scrape(f"http://127.0.0.1:{port}/metrics")
            assert daemon.terminate() == 0
    for family in ("indexer_blocks_processed_total", "indexer_events_processed_total", "indexer_rpc_requests_total",
                   "indexer_reorgs_total", "indexer_reorg_depth_blocks_bucket", "indexer_websocket_reconnects_total"):
        assert f"\n{family}{{" in text, family
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        f"promtool check metrics: exit {result.returncode}\n{result.stdout}\n{result.stderr}")


# --------------------------------------------------------------------------- 6. secrets


PATH_KEY = "SuperSecretKey123456789abc"
QUERY_KEY = "AnotherSecret987654321"
ENV_SECRET = "hunter2hunter2x"  # short and lower-case: only its ${VAR} origin marks it as a secret
USER, PASSWORD = "opsuser", "PassWordSecret4242"
SECRETS = [PATH_KEY, QUERY_KEY, ENV_SECRET, PASSWORD, f"{USER}:{PASSWORD}",
           base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]  # what an Authorization header carries
SECRET_ENV = {"OPS_RPC_TOKEN": ENV_SECRET}


def key_urls(port: int) -> tuple[str, str]:
    return (f"ws://127.0.0.1:{port}/v2/{PATH_KEY}?apikey={QUERY_KEY}",
            f"http://127.0.0.1:{port}/rpc/${{OPS_RPC_TOKEN}}?apikey={QUERY_KEY}")


def userinfo_urls(port: int) -> tuple[str, str]:
    return f"ws://{USER}:{PASSWORD}@127.0.0.1:{port}/", f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/"


class Leaks:
    """Collects everything an operator could see and names any secret found in it."""

    def __init__(self):
        self.seen: list[tuple[str, bytes]] = []

    def add(self, where: str, data: str | bytes) -> None:
        self.seen.append((where, data.encode() if isinstance(data, str) else data))

    def command(self, cfg: Path, *args: str, expect: int | None = 0,
                timeout: float = 60) -> subprocess.CompletedProcess:
        proc = cli(cfg, *args, check=False, env=SECRET_ENV, timeout=timeout)
        self.add(f"stdout of {' '.join(args)}", proc.stdout)
        self.add(f"stderr of {' '.join(args)}", proc.stderr)
        if expect is not None:
            assert proc.returncode == expect, f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        return proc

    def interrupted(self, cfg: Path, *args: str, after: float) -> int:
        """A command that would retry for ever (a node that is down): SIGTERM it after `after` s."""
        proc = subprocess.Popen(INDEXER + ["--config", str(cfg), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=ROOT, env={**os.environ, **SECRET_ENV})
        try:
            time.sleep(after)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.add(f"stdout of {' '.join(args)}", out)
        self.add(f"stderr of {' '.join(args)}", err)
        return proc.returncode

    def files(self, *paths: Path) -> None:
        for p in paths:
            for f in (p, Path(f"{p}-wal")):
                if f.exists():
                    self.add(f"file {f.name}", f.read_bytes())

    def assert_clean(self) -> None:
        found = [(where, s) for where, data in self.seen for s in SECRETS if s.encode() in data]
        assert not found, "secrets leaked: " + "; ".join(f"{s!r} in {where}" for where, s in found)


def run_briefly(leaks: Leaks, cfg: Path, log: Path, port: int, until) -> None:
    with Daemon(cfg, log, env=SECRET_ENV) as daemon:
        until(daemon)
        for path in ("/metrics", "/healthz", "/readyz"):
            leaks.add(f"GET {path}", http_get(f"http://127.0.0.1:{port}{path}")[1])
        assert daemon.terminate() == 0, daemon.log_tail()
    leaks.add(f"log of run ({log.name})", log.read_bytes())


def every_command(leaks: Leaks, cfg: Path, db: Path, tmp_path: Path, w3, name: str) -> None:
    sample = devchain.SAMPLE_TOKEN_ADDRESS
    leaks.command(cfg, "db", "migrate")
    leaks.command(cfg, "backfill", "--from", "0", "--to", str(head(w3)))
    for fmt in ("table", "csv", "json"):
        leaks.command(cfg, "captable", "--token", sample, "--format", fmt)
    bad = leaks.command(cfg, "captable", "--token", "0x" + "12" * 20, expect=2)
    assert "not configured" in bad.stderr
    leaks.command(cfg, "status")
    status = json.loads(leaks.command(cfg, "status", "--format", "json").stdout)
    assert "***" in status["ws_url"] and status["head"] is not None
    leaks.command(cfg, "verify")
    leaks.command(cfg, "verify", "--format", "json")
    leaks.command(cfg, "db", "check")
    leaks.command(cfg, "db", "backup", str(tmp_path / f"{name}-backup.db"))
    leaks.files(db, tmp_path / f"{name}-backup.db")


def test_secrets_never_leave_the_process(chain, tmp_path):
    anvil, w3 = chain["anvil"], chain["w3"]
    leaks = Leaks()
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=6) as proxy:
        # API keys in the path, in the query string and from the environment (DEBUG logs: the most talkative)
        for name, (ws, http) in (("keys", key_urls(proxy.port)), ("userinfo", userinfo_urls(proxy.port))):
            port = free_port()
            db = tmp_path / f"{name}.db"
            cfg = ops_config(tmp_path / f"{name}.toml", ws_url=ws, http_url=http, db=db, metrics_port=port,
                             level="DEBUG")
            every_command(leaks, cfg, db, tmp_path, w3, name)

            def follow_two_blocks(daemon):
                daemon.wait_for_block(head(w3), timeout=30)
                mine_activity(anvil.http_url, chain["load"], blocks=2, per_block=5)
                daemon.wait_for_block(head(w3), timeout=30)

            run_briefly(leaks, cfg, tmp_path / f"{name}-run.log", port, follow_two_blocks)
            leaks.files(db)
        assert proxy.counters().get("ws_connections", 0) >= 4  # the commands really went through the proxy
    # a node that is down: every command that needs it fails (or retries) and says so, without the keys
    dead = free_port()
    for name, (ws, http) in (("down-keys", key_urls(dead)), ("down-userinfo", userinfo_urls(dead))):
        port = free_port()
        db = tmp_path / f"{name}.db"
        cfg = ops_config(tmp_path / f"{name}.toml", ws_url=ws, http_url=http, db=db, metrics_port=port, level="DEBUG")
        leaks.command(cfg, "db", "migrate")
        status = json.loads(leaks.command(cfg, "status", "--format", "json").stdout)
        assert status["head"] is None and status["node_error"]
        leaks.command(cfg, "status")
        assert leaks.command(cfg, "verify", expect=None).returncode != 0
        leaks.command(cfg, "captable", "--token", devchain.SAMPLE_TOKEN_ADDRESS, expect=None)
        leaks.interrupted(cfg, "backfill", "--from", "0", "--to", "10", after=2.5)
        leaks.command(cfg, "db", "check")
        leaks.command(cfg, "db", "backup", str(tmp_path / f"{name}-backup.db"))

        def retries(daemon):
            wait_until(lambda: "connection problem" in daemon.log_path.read_text(), 15, "a reconnect attempt")

        run_briefly(leaks, cfg, tmp_path / f"{name}-run.log", port, retries)
        leaks.files(db)
        text = (tmp_path / f"{name}-run.log").read_text()
        assert "127.0.0.1" in text and "***" in text  # the endpoint is still named, its secrets masked
    # configs that are refused: an invalid token address, a WebSocket URL with the wrong scheme
    ws, http = key_urls(free_port())
    bad_token = ops_config(tmp_path / "bad-token.toml", ws_url=ws, http_url=http, db=tmp_path / "bad.db",
                           token_list=[{"address": "0xnot-an-address", "profile": "erc3643"}])
    assert "tokens[0].address" in leaks.command(bad_token, "status", expect=2).stderr
    bad_scheme = ops_config(tmp_path / "bad-scheme.toml", ws_url=ws, http_url=http, db=tmp_path / "bad.db")
    bad_scheme.write_text(bad_scheme.read_text().replace('"ws://', '"https://', 1))
    for args in (("run",), ("backfill", "--from", "0", "--to", "1"), ("status", "--format", "json")):
        assert "chain.ws_url" in leaks.command(bad_scheme, *args, expect=2).stderr
    no_var = ops_config(tmp_path / "no-var.toml", ws_url=ws, http_url=http.replace("OPS_RPC_TOKEN", "OPS_UNSET_VAR"),
                        db=tmp_path / "bad.db")
    assert "OPS_UNSET_VAR" in leaks.command(no_var, "run", expect=2).stderr
    assert len(leaks.seen) > 80
    leaks.assert_clean()


# --------------------------------------------------------------------------- 7. online backup


def test_backup_while_the_daemon_writes_is_a_consistent_snapshot(chain, tmp_path):
    anvil, w3 = chain["anvil"], chain["w3"]
    cfg = ops_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, db=tmp_path / "run.db")
    backup = tmp_path / "backup.db"
    stop = threading.Event()
    errors: list[BaseException] = []

    def activity():
        try:
            while not stop.is_set():
                mine_activity(anvil.http_url, chain["load"], blocks=1, per_block=20)
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_block(head(w3), timeout=60)
        writer = threading.Thread(target=activity, name="activity", daemon=True)
        writer.start()
        try:
            daemon.wait_for_block(daemon.cursor() + 5, timeout=30)
            before = daemon.cursor()
            out = cli_json(cfg, "db", "backup", str(backup))
            daemon.wait_for_block(daemon.cursor() + 5, timeout=30)
        finally:
            stop.set()
            writer.join(30)
            assert not errors, errors
        daemon.wait_for_block(head(w3), timeout=30)
        final = daemon.cursor()
        assert daemon.terminate() == 0
    assert out["backup"] == str(backup) and out["bytes"] == backup.stat().st_size
    assert not Path(f"{backup}.partial").exists() and not Path(f"{backup}-wal").exists()
    conn = apsw.Connection(str(backup), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    cursor = db_cursor(backup)
    assert cursor is not None and before <= cursor < final
    assert_same_db(backup, fresh_backfill(chain, tmp_path, "ref", cursor))
