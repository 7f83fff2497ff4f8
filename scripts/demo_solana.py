"""The product on Solana: the local node (LiteSVM with the real Token-2022 program), the daemon, a security.

Run with the project's venv: `.venv/bin/python scripts/demo_solana.py`. Starts scripts/solana_localnet on
free ports (a subprocess), starts `indexer run` with scripts/configs/solana-localnet.toml (URLs passed through
INDEXER_SOLANA_WS_URL / INDEXER_SOLANA_HTTP_URL) before any activity, drives the Token-2022 security story step
by step (issuance, transfers, a freeze, a scheduled 2-for-1 split, a symbol change, a pause), prints the cap
table and the metrics URL, then keeps the node producing slots and the daemon following until Ctrl-C, which
stops both by their PIDs.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from demo import free_port, wait_indexed  # the EVM demo's helpers (scripts/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "scripts" / "configs" / "solana-localnet.toml"
INDEXER = [sys.executable, "-m", "indexer", "--config", str(CONFIG)]
SPLIT_DELAY = 30  # seconds between scheduling the split and its effective time (the demo then jumps the clock)


def start_node() -> tuple[subprocess.Popen, dict]:
    """`python -m solana_localnet` on free ports; its first stdout line says where it listens."""
    node = subprocess.Popen([sys.executable, "-m", "solana_localnet", "--http-port", "0", "--ws-port", "0"],
                            cwd=ROOT / "scripts", stdout=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(node.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=30) or node.poll() is not None:
        stop(node, "local Solana node")
        raise SystemExit("demo: the local Solana node did not start within 30 s")
    return node, json.loads(node.stdout.readline())


def rpc(url: str, method: str, *params: object) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise SystemExit(f"demo: {method} failed: {reply['error']}")
    return reply["result"]


def stop(proc: subprocess.Popen | None, name: str) -> None:
    """SIGTERM by PID, SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} (pid {proc.pid}) ignored SIGTERM; killing it")
        proc.kill()
        proc.wait(timeout=10)


def story(effective_delay: int) -> list[tuple[str, dict, str]]:
    return [
        ("setup", {}, "fund payer, issuer and compliance from the faucet"),
        ("create_mint", {}, "Token-2022 mint: metadata, permanent delegate, scaled UI amount, pausable"),
        ("create_holders", {"holders": ["alice", "bob", "carol"]}, "associated token accounts"),
        ("issue", {"holder": "alice", "amount": 1_000_000_000}, "issuance: 1000 shares to alice"),
        ("issue", {"holder": "bob", "amount": 200_000_000}, "issuance: 200 shares to bob"),
        ("transfer", {"from": "alice", "to": "bob", "amount": 250_000_000}, "alice -> bob 250"),
        ("transfer", {"from": "alice", "to": "carol", "amount": 100_000_000}, "alice -> carol 100"),
        ("freeze", {"holder": "bob"}, "compliance freezes bob's account"),
        ("transfer", {"from": "bob", "to": "carol", "amount": 1_000_000}, "bob -> carol while frozen (fails)"),
        ("thaw", {"holder": "bob"}, "bob's account thawed"),
        ("schedule_multiplier", {"multiplier": 2.0, "delaySeconds": effective_delay},
         f"2-for-1 split scheduled {effective_delay} s ahead (ScaledUiAmount)"),
        ("update_metadata", {"field": "symbol", "value": "ACMEx2"}, "symbol change ACMEx -> ACMEx2"),
        ("pause", {}, "compliance pauses the token"),
        ("transfer", {"from": "carol", "to": "alice", "amount": 5}, "carol -> alice while paused (fails)"),
        ("resume", {}, "token resumed"),
        ("transfer", {"from": "carol", "to": "alice", "amount": 10_000_000}, "carol -> alice 10"),
    ]


def main() -> int:
    cfg = tomllib.loads(CONFIG.read_text())
    mint = cfg["tokens"][0]["address"]
    db = ROOT / "data" / "solana-demo.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)  # a new local chain needs a new database
    metrics_port = free_port()
    node = daemon = None
    try:
        node, urls = start_node()
        http = urls["http"]
        print(f"local Solana node: pid {node.pid}, RPC {http}, WebSocket {urls['ws']}")
        env = dict(os.environ, INDEXER_SOLANA_WS_URL=urls["ws"], INDEXER_SOLANA_HTTP_URL=http, INDEXER_DB=str(db),
                   INDEXER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        described = rpc(http, "localnet_scenario", "describe", {})
        if described["mint"] != mint:
            raise SystemExit(f"demo: the node's security mint is {described['mint']}, {CONFIG} lists {mint}")
        daemon = subprocess.Popen(INDEXER + ["--log-format", "text", "run"], env=env)
        print(f"indexer: pid {daemon.pid}, following at commitment {cfg['chain']['commitment']!r}")
        effective = None
        for name, args, what in story(SPLIT_DELAY):
            result = rpc(http, "localnet_scenario", name, args)
            outcome = "ok" if result["err"] is None else f"FAILED on-chain: {json.dumps(result['err'])}"
            print(f"  slot {result['slot']:>4}  {name:<20} {what:<62} {outcome}")
            effective = result.get("effectiveTimestamp", effective)
            if daemon.poll() is not None:
                raise SystemExit(f"demo: the indexer exited with code {daemon.returncode}")
        # the split takes effect by time alone: move the node's clock past it, then produce a slot there
        rpc(http, "localnet_setClock", {"unixTimestamp": effective + 1})
        produced = rpc(http, "localnet_produceBlock", {"count": 3})["slots"]
        what = f"clock moved: the split is in force from unix time {effective}"
        print(f"  slot {produced[0]:>4}  {'(clock)':<20} {what:<62} ok")
        confirmed = rpc(http, "localnet_status")["confirmed"]
        wait_indexed(env, confirmed, indexer=INDEXER, unit="slot")
        table = subprocess.run(INDEXER + ["captable", "--token", mint], env=env, capture_output=True, text=True,
                               timeout=60)
        print()
        print(table.stdout or table.stderr)
        print(f"metrics: http://127.0.0.1:{metrics_port}/metrics   health: /healthz   readiness: /readyz")
        print(f"database: {db}")
        print(f"try: INDEXER_SOLANA_HTTP_URL={http} INDEXER_SOLANA_WS_URL={urls['ws']} INDEXER_DB={db} \\\n"
              f"       .venv/bin/indexer --config {CONFIG.relative_to(ROOT)} verify")
        rpc(http, "localnet_startAutoProduce", {"intervalMs": 400})
        print("the node now produces a slot every 400 ms and the indexer follows; press Ctrl-C to stop")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while daemon.poll() is None and node.poll() is None:
            time.sleep(0.5)
        return daemon.returncode or node.returncode or 0
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        stop(daemon, "indexer")
        stop(node, "local Solana node")


if __name__ == "__main__":
    sys.exit(main())
