"""Command line: `python -m solana_localnet --http-port P --ws-port Q` (from scripts/), or
`python scripts/solana_localnet ...`. Prints one JSON line {"http", "ws", "pid"} when ready
and runs until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .chain import ChainConfig
from .node import start_localnet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="solana_localnet", description=__doc__)
    p.add_argument("--http-port", type=int, default=0, help="JSON-RPC HTTP port on 127.0.0.1 (0 = free port)")
    p.add_argument("--ws-port", type=int, default=0, help="PubSub WebSocket port on 127.0.0.1 (0 = free port)")
    p.add_argument("--genesis-slot", type=int, default=0)
    p.add_argument("--genesis-time", type=int, default=None, help="unix time of the genesis block (default: now)")
    p.add_argument("--slot-ms", type=int, default=400, help="blockTime advance per slot")
    p.add_argument("--confirm-lag", type=int, default=1, help="confirmed = tip minus this many blocks")
    p.add_argument("--finalize-lag", type=int, default=2, help="finalized = tip minus this many blocks")
    p.add_argument("--auto-produce-ms", type=int, default=0, help="produce a block every N ms (0 = only on demand)")
    p.add_argument("--seed", default="solana-localnet", help="seed for faucet/scenario keys and hashes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("http_port", "ws_port"):
        if not 0 <= getattr(args, name) <= 65535:
            print(f"--{name.replace('_', '-')} must be between 0 and 65535", file=sys.stderr)
            return 2
    config = ChainConfig(genesis_slot=args.genesis_slot, genesis_unix_time=args.genesis_time, slot_ms=args.slot_ms,
                         confirm_lag=args.confirm_lag, finalize_lag=args.finalize_lag, seed=args.seed)
    node = start_localnet(http_port=args.http_port, ws_port=args.ws_port, config=config,
                          auto_produce_ms=args.auto_produce_ms or None)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(json.dumps({"http": node.http_url, "ws": node.ws_url, "pid": node.pid}), flush=True)
    done.wait()
    node.stop()
    return 0
