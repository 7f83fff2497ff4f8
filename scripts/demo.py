"""The product on its embedded default: a local dev chain, the sample security token, the daemon.

Started by `scripts/demo`. Starts anvil on a free port, deploys the sample token, starts `indexer run`
(a real subprocess, with ./config.toml) before any activity, drives the activity step by step, then
prints the live cap table and the metrics URL and keeps following until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import devchain  # noqa: E402

INDEXER = [str(ROOT / ".venv" / "bin" / "indexer"), "--config", str(ROOT / "config.toml")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_indexed(env: dict, block: int, timeout: float = 60.0, indexer: list[str] = INDEXER,
                 unit: str = "block") -> dict:
    """Until `indexer status` shows the cursor at `block` (a slot on Solana); shared by both demos."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        out = subprocess.run(indexer + ["status", "--format", "json", "--no-node"], env=env, capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0:
            status = json.loads(out.stdout)
            if (status.get("cursor") or {}).get("block_number", -1) >= block:
                return status
        time.sleep(0.3)
    raise SystemExit(f"demo: the indexer did not reach {unit} {block} within {timeout:.0f}s (status {status})")


def main() -> int:
    devchain.ensure_node_packages()
    db = ROOT / "data" / "demo.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)  # a new dev chain needs a new database
    metrics_port = free_port()
    daemon = None
    with devchain.Anvil() as anvil:
        env = dict(os.environ, INDEXER_WS_URL=anvil.ws_url, INDEXER_HTTP_URL=anvil.http_url, INDEXER_DB=str(db),
                   INDEXER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
        print(f"dev chain: anvil pid {anvil.pid} at {anvil.http_url}")
        w3 = devchain.connect(anvil.http_url)
        daemon = subprocess.Popen(INDEXER + ["--log-format", "text", "run"], env=env)
        try:
            deployment = devchain.deploy_sample(w3)
            print(f"sample security token {deployment.token} (identity registry {deployment.registry})")
            for result in devchain.run_steps(w3, devchain.sample_steps(w3, deployment)):
                print(f"  {result.name:<28} blocks {result.blocks[0]}..{result.blocks[-1]}  {result.description}")
                if daemon.poll() is not None:
                    raise SystemExit(f"demo: the indexer exited with code {daemon.returncode}")
            head = w3.eth.block_number
            wait_indexed(env, head)
            table = subprocess.run(INDEXER + ["captable", "--token", deployment.token], env=env, capture_output=True,
                                   text=True, timeout=60)
            print()
            print(table.stdout or table.stderr)
            print(f"metrics: http://127.0.0.1:{metrics_port}/metrics   health: /healthz   readiness: /readyz")
            print(f"database: {db}   try: .venv/bin/indexer --config config.toml status  (with the env above)")
            print("following the chain; press Ctrl-C to stop")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while daemon.poll() is None:
                time.sleep(0.5)
            return daemon.returncode or 0
        except KeyboardInterrupt:
            print("\nstopping")
            return 0
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()


if __name__ == "__main__":
    sys.exit(main())
