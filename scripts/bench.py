#!/usr/bin/env python3
"""Benchmark of the indexer near the machine's limit, against a real anvil and a cached dataset.

    scripts/bench [--quick] [--rebuild] [--profile] [--follow-blocks N] [--raw-range N] [--keep]

What it does, in one run:
  1. Dataset. A deterministic chain built once on anvil and cached under .bench/dataset-<key>/ with
     `anvil --dump-state` (key: hash of the generator parameters, the BenchToken artifact, the anvil
     version and GENERATOR_VERSION). BenchToken (scripts/evm/contracts) emits only the standard ERC-20
     Transfer; its operator mints to every holder first, then moves balances among holders, ~200 moves
     per transaction, one transaction per block. A second BenchToken ("noise") is active in the same
     blocks and must be filtered out by the indexer.
  2. A fresh anvil loads the cached state (`--load-state`, `--no-mining`) on a free 127.0.0.1 port, then:
     - the raw ceiling: eth_getLogs of the same address over the dataset in fixed ranges, JSON-decoded,
       with 1 and with 2 concurrent keep-alive HTTP connections;
     - backfill of the whole dataset by the real CLI (`indexer backfill`) as a subprocess: wall time,
       events/s and peak RSS (wait4 rusage of that very process);
     - cap table at a past block: `indexer captable ... --format json` (wall time of the CLI, and of the
       in-process `indexer.captable.captable()` call), checked against the generator's own balances;
     - follow latency: `indexer run` on the database at the head, then N new blocks of ~200 transfers;
       per block, from the newHeads notification at the bench's own WebSocket subscription to the
       `cursor.updated_at` the daemon writes in the block's transaction;
     - correctness: indexed Transfer count == logs on the node; every holder's balance == balanceOf at
       the indexed head (batched eth_call); total supply == totalSupply().
  3. --profile: one more backfill into a fresh database under cProfile in *every* thread (plain
     `python -m cProfile` sees only the main thread, and the store commits in its own worker thread);
     prints the top 25 by cumulative and by own time, and keeps the .prof files.

Output: one table with the targets next to the numbers, and a line `BENCH_JSON {...}` with the same
numbers. Processes it starts are stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
CACHE = ROOT / ".bench"
INDEXER = [sys.executable, "-m", "indexer"]

GENERATOR_VERSION = 1           # bump when the generator's logic changes: invalidates cached datasets
BASE_TIMESTAMP = 1_700_000_000  # genesis time; block n gets BASE_TIMESTAMP + 12 n (hashes are reproducible)
BLOCK_SECONDS = 12
CHAIN = "bench"
TARGET_ITEMS = 10_000           # indexer.sources.evm.EvmFetcher.target_items: where the adaptive range heads

TARGETS = {
    "backfill_events_per_s": 50_000,
    "backfill_events_per_s_stretch": 80_000,
    "backfill_vs_raw_max_factor": 3.0,
    "peak_rss_mb": 300,
    "follow_p99_ms": 50,
    "captable_s": 0.5,
}

# bounded waits (seconds)
GEN_ANVIL_EXIT_TIMEOUT = 900    # anvil writes the whole state file on SIGTERM
LOAD_TIMEOUT = 900              # anvil parses the state file before it answers
BACKFILL_TIMEOUT = 3600
CLI_TIMEOUT = 600
FOLLOW_READY_TIMEOUT = 120
FOLLOW_BLOCK_TIMEOUT = 30
DAEMON_STOP_TIMEOUT = 30


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Everything the dataset depends on (hashed into the cache key)."""

    events: int          # BenchToken Transfer logs: `holders` mints, then moves
    holders: int
    per_tx: int          # transfers per batch transaction (one transaction per block)
    noise_holders: int
    noise_every: int     # a noise batchMove in every n-th block
    noise_per_tx: int
    seed: int

    @property
    def mint_blocks(self) -> int:
        return -(-self.holders // self.per_tx)

    @property
    def moves(self) -> int:
        return self.events - self.holders

    @property
    def move_blocks(self) -> int:
        return -(-self.moves // self.per_tx)

    @property
    def head(self) -> int:
        return 1 + self.mint_blocks + self.move_blocks  # block 1 deploys both tokens


FULL = Params(events=1_000_000, holders=20_000, per_tx=200, noise_holders=200, noise_every=4, noise_per_tx=50,
              seed=20240601)
QUICK = Params(events=50_000, holders=2_000, per_tx=100, noise_holders=200, noise_every=4, noise_per_tx=50,
               seed=20240601)


# --------------------------------------------------------------------------- JSON-RPC over HTTP


class Rpc:
    """Minimal JSON-RPC client on one keep-alive http.client connection (one per thread)."""

    def __init__(self, url: str, timeout: float = 300.0):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.ids = itertools.count(1)

    def post(self, body: bytes) -> bytes:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.status != 200:
                raise BenchError(f"HTTP {resp.status} from anvil: {data[:300]!r}")
            return data
        raise AssertionError("unreachable")

    def call(self, method: str, params: list | None = None) -> Any:
        reply = json.loads(self.post(json.dumps({"jsonrpc": "2.0", "id": next(self.ids), "method": method,
                                                 "params": params or []}).encode()))
        if "error" in reply:
            raise BenchError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, list]]) -> list[Any]:
        if not calls:
            return []
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        replies = json.loads(self.post(json.dumps(payload).encode()))
        by_id = {r["id"]: r for r in replies}
        out = []
        for i, (m, _) in enumerate(calls):
            r = by_id[i]
            if "error" in r:
                raise BenchError(f"{m} (batch item {i}) failed: {r['error']}")
            out.append(r["result"])
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------- ABI (hand-rolled: fast)


def _keccak(data: bytes) -> bytes:
    from eth_hash.auto import keccak
    return keccak(data)


def selector(signature: str) -> bytes:
    return _keccak(signature.encode())[:4]


SEL_BATCH_MINT = selector("batchMint(address[],uint256[])")
SEL_BATCH_MOVE = selector("batchMove(address[],address[],uint256[])")
SEL_BALANCE_OF = selector("balanceOf(address)")
SEL_TOTAL_SUPPLY = selector("totalSupply()")
TRANSFER_TOPIC = "0x" + _keccak(b"Transfer(address,address,uint256)").hex()


def encode_arrays(sel: bytes, *arrays: list[int]) -> str:
    """Calldata of f(T1[], T2[], ...) for static 32-byte element types (address, uint256)."""
    out = bytearray(sel)
    offset = 32 * len(arrays)
    for arr in arrays:
        out += offset.to_bytes(32, "big")
        offset += 32 * (1 + len(arr))
    for arr in arrays:
        out += len(arr).to_bytes(32, "big")
        for v in arr:
            out += v.to_bytes(32, "big")
    return "0x" + out.hex()


def derived_addresses(label: str, n: int) -> list[int]:
    """Fixed, keyless addresses (as ints) for holder i of a label."""
    return [int.from_bytes(_keccak(f"indexer-bench/{label}/{i}".encode())[12:], "big") for i in range(n)]


def addr_hex(a: int) -> str:
    return f"0x{a:040x}"


# --------------------------------------------------------------------------- the dataset plan (pure)


@dataclass
class Op:
    kind: str                 # "mint" | "move"
    frm: list[int]            # holder indexes (empty for mint)
    to: list[int]
    amounts: list[int]


class Ledger:
    """Balances of one token by holder index, and the deterministic choice of moves that never underflow."""

    def __init__(self, n: int, rng: random.Random):
        self.bal = [0] * n
        self.rng = rng
        self.supply = 0

    def mint_op(self, indexes: list[int]) -> Op:
        amounts = [self.rng.randint(1_000, 1_000_000) * 10**18 + self.rng.randrange(10**18) for _ in indexes]
        for i, a in zip(indexes, amounts):
            self.bal[i] += a
            self.supply += a
        return Op("mint", [], list(indexes), amounts)

    def move_op(self, count: int) -> Op:
        rng, bal, n = self.rng, self.bal, len(self.bal)
        frm, to, amounts = [], [], []
        for _ in range(count):
            while True:
                f = rng.randrange(n)
                if bal[f] >= 3:
                    break
            t = int(n * rng.random() ** 2)  # skewed receivers: a few large holders, a long tail
            if t == f:
                t = (t + 1) % n
            a = rng.randint(1, bal[f] // 3)
            bal[f] -= a
            bal[t] += a
            frm.append(f)
            to.append(t)
            amounts.append(a)
        return Op("move", frm, to, amounts)


@dataclass
class PlannedBlock:
    number: int
    timestamp: int
    bench: Op
    noise: Op | None


class Plan:
    """The whole dataset as a deterministic sequence of blocks (block 1 deploys; blocks 2.. carry ops).
    Generation sends it to anvil; the run replays it without a node to know every balance at any block."""

    def __init__(self, p: Params):
        self.p = p
        self.bench = Ledger(p.holders, random.Random(p.seed))
        self.noise = Ledger(p.noise_holders, random.Random(p.seed ^ 0x5EED))

    def blocks(self) -> Iterator[PlannedBlock]:
        p = self.p
        n = 2
        for start in range(0, p.holders, p.per_tx):
            noise = self.noise.mint_op(list(range(p.noise_holders))) if n == 2 else self._noise(n)
            yield PlannedBlock(n, block_time(n), self.bench.mint_op(list(range(start, min(p.holders, start + p.per_tx)))),
                               noise)
            n += 1
        left = p.moves
        while left > 0:
            k = min(p.per_tx, left)
            yield PlannedBlock(n, block_time(n), self.bench.move_op(k), self._noise(n))
            left -= k
            n += 1

    def _noise(self, n: int) -> Op | None:
        return self.noise.move_op(self.p.noise_per_tx) if n % self.p.noise_every == 0 else None


def block_time(n: int) -> int:
    return BASE_TIMESTAMP + BLOCK_SECONDS * n


# --------------------------------------------------------------------------- dataset build and cache


def anvil_version() -> str:
    import devchain
    out = subprocess.run([str(devchain.ensure_node_packages()), "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.splitlines()[0].strip()


def dataset_key(p: Params) -> str:
    import devchain
    h = hashlib.sha256()
    h.update(json.dumps({"params": asdict(p), "generator": GENERATOR_VERSION, "base_ts": BASE_TIMESTAMP,
                         "block_s": BLOCK_SECONDS}, sort_keys=True).encode())
    h.update((devchain.ARTIFACTS_DIR / "BenchToken.json").read_bytes())
    h.update(anvil_version().encode())
    return h.hexdigest()[:16]


def _deploy_data(name: str, symbol: str) -> str:
    import devchain
    from eth_abi import encode
    art = devchain.load_artifact("BenchToken")
    return art["bytecode"] + encode(["string", "string"], [name, symbol]).hex()


def _op_calldata(op: Op, addrs: list[int]) -> str:
    if op.kind == "mint":
        return encode_arrays(SEL_BATCH_MINT, [addrs[i] for i in op.to], op.amounts)
    return encode_arrays(SEL_BATCH_MOVE, [addrs[i] for i in op.frm], [addrs[i] for i in op.to], op.amounts)


def _op_gas(op: Op) -> int:
    # measured: ~25k per first mint of a holder, ~15k per move; generous so no tx runs out of gas
    return 150_000 + 40_000 * len(op.amounts)


def build_dataset(p: Params, out_dir: Path) -> dict:
    """Drive a fresh anvil through the plan, then let it dump its state on SIGTERM."""
    import devchain
    out_dir.mkdir(parents=True, exist_ok=True)
    state_tmp = out_dir / "state.json.partial"
    state_tmp.unlink(missing_ok=True)
    gas_limit = max(30_000_000, 2 * (_op_gas(Op("move", [], [], [0] * p.per_tx))
                                      + _op_gas(Op("mint", [], [], [0] * max(p.noise_holders, p.noise_per_tx)))))
    node = devchain.Anvil(extra_args=["--timestamp", str(BASE_TIMESTAMP), "--no-mining", "--prune-history",
                                      "--quiet", "--gas-limit", str(gas_limit), "--dump-state", str(state_tmp)],
                          log_path=out_dir / "anvil-generate.log", start_timeout=60)
    t0 = time.monotonic()
    node.start()
    try:
        rpc = Rpc(node.http_url)
        accounts = rpc.call("eth_accounts")
        bench_op, noise_op = accounts[0], accounts[1]
        h1 = rpc.call("eth_sendTransaction", [{"from": bench_op, "data": _deploy_data("Bench Token", "BENCH"),
                                               "gas": hex(3_000_000)}])
        h2 = rpc.call("eth_sendTransaction", [{"from": noise_op, "data": _deploy_data("Noise Token", "NOISE"),
                                               "gas": hex(3_000_000)}])
        rpc.call("evm_mine", [block_time(1)])
        r1, r2 = rpc.batch([("eth_getTransactionReceipt", [h1]), ("eth_getTransactionReceipt", [h2])])
        if not (r1 and r2 and r1["status"] == "0x1" and r2["status"] == "0x1"):
            raise BenchError("deploying the bench tokens failed")
        token, noise = r1["contractAddress"].lower(), r2["contractAddress"].lower()
        holders = derived_addresses("holder", p.holders)
        noise_holders = derived_addresses("noise", p.noise_holders)
        plan = Plan(p)
        pending: list[tuple[int, str, int]] = []  # (block, tx hash, expected logs)
        noise_logs = 0
        last_log = time.monotonic()

        def check_receipts() -> None:
            receipts = rpc.batch([("eth_getTransactionReceipt", [h]) for _, h, _ in pending])
            for (n, h, want), r in zip(pending, receipts):
                if r is None or r["status"] != "0x1" or int(r["blockNumber"], 16) != n or len(r["logs"]) != want:
                    raise BenchError(f"block {n}: transaction {h} failed or landed elsewhere: "
                                     f"{None if r is None else (r['status'], r['blockNumber'], len(r['logs']))}")
            pending.clear()

        for blk in plan.blocks():
            h = rpc.call("eth_sendTransaction", [{"from": bench_op, "to": token, "gas": hex(_op_gas(blk.bench)),
                                                  "data": _op_calldata(blk.bench, holders)}])
            pending.append((blk.number, h, len(blk.bench.amounts)))
            if blk.noise is not None:
                hn = rpc.call("eth_sendTransaction", [{"from": noise_op, "to": noise, "gas": hex(_op_gas(blk.noise)),
                                                       "data": _op_calldata(blk.noise, noise_holders)}])
                pending.append((blk.number, hn, len(blk.noise.amounts)))
                noise_logs += len(blk.noise.amounts)
            rpc.call("evm_mine", [blk.timestamp])
            if len(pending) >= 100:
                check_receipts()
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log(f"generating: block {blk.number}/{p.head} ({time.monotonic() - t0:.0f}s)")
        check_receipts()
        head = int(rpc.call("eth_blockNumber"), 16)
        if head != p.head:
            raise BenchError(f"generated chain ends at block {head}, the plan says {p.head}")
        supply = int(rpc.call("eth_call", [{"to": token, "data": "0x" + SEL_TOTAL_SUPPLY.hex()}, "latest"]), 16)
        if supply != plan.bench.supply:
            raise BenchError(f"totalSupply on chain {supply} != planned {plan.bench.supply}")
        head_block = rpc.call("eth_getBlockByNumber", [hex(head), False])
        generate_s = time.monotonic() - t0
        rpc.close()
        # anvil writes --dump-state when it exits: SIGTERM by PID and wait (bounded) for the file
        t1 = time.monotonic()
        os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + GEN_ANVIL_EXIT_TIMEOUT
        while node.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"anvil did not finish dumping its state within {GEN_ANVIL_EXIT_TIMEOUT}s")
            time.sleep(0.2)
        dump_s = time.monotonic() - t1
    finally:
        node.stop()
    if not state_tmp.is_file() or state_tmp.stat().st_size == 0:
        raise BenchError(f"anvil wrote no state to {state_tmp} (see {out_dir / 'anvil-generate.log'})")
    state_tmp.rename(out_dir / "state.json")
    meta = {"params": asdict(p), "token": token, "noise_token": noise, "head": head,
            "head_hash": head_block["hash"], "bench_events": p.events, "noise_events": noise_logs,
            "total_supply": str(plan.bench.supply), "generate_seconds": round(generate_s, 2),
            "dump_seconds": round(dump_s, 2), "state_bytes": (out_dir / "state.json").stat().st_size,
            "anvil": anvil_version(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # meta.json last: its presence marks a complete dataset
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_dataset(p: Params, rebuild: bool) -> tuple[Path, dict, bool]:
    key = dataset_key(p)
    d = CACHE / f"dataset-{key}"
    meta_path = d / "meta.json"
    if meta_path.is_file() and (d / "state.json").is_file() and not rebuild:
        return d, json.loads(meta_path.read_text()), True
    if d.exists():
        shutil.rmtree(d)
    log(f"building dataset {key}: {p.events:,} transfers in {p.head:,} blocks among {p.holders:,} holders "
        "(once; cached under .bench/)")
    meta = build_dataset(p, d)
    log(f"dataset built in {meta['generate_seconds']}s (+{meta['dump_seconds']}s state dump, "
        f"{meta['state_bytes'] / 1e6:.0f} MB)")
    return d, meta, False


# --------------------------------------------------------------------------- measurements


def ranges(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(end, a + size - 1)) for a in range(start, end + 1, size)]


def raw_ceiling(url: str, token: str, rngs: list[tuple[int, int]], concurrency: int) -> dict:
    """eth_getLogs of the token over the ranges, JSON-decoded, on `concurrency` keep-alive connections."""
    it = iter(rngs)
    lock = threading.Lock()
    totals = {"logs": 0, "bytes": 0}
    errors: list[BaseException] = []

    def worker() -> None:
        rpc = Rpc(url)
        try:
            while True:
                with lock:
                    r = next(it, None)
                if r is None:
                    return
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs",
                                   "params": [{"fromBlock": hex(r[0]), "toBlock": hex(r[1]), "address": [token]}]})
                raw = rpc.post(body.encode())
                logs = json.loads(raw)["result"]
                with lock:
                    totals["logs"] += len(logs)
                    totals["bytes"] += len(raw)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            rpc.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"raw-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BACKFILL_TIMEOUT)
        if t.is_alive():
            raise BenchError("raw eth_getLogs client did not finish in time")
    if errors:
        raise BenchError(f"raw eth_getLogs failed: {errors[0]}")
    s = time.perf_counter() - t0
    return {"concurrency": concurrency, "seconds": round(s, 3), "logs": totals["logs"],
            "mb": round(totals["bytes"] / 1e6, 1), "events_per_s": round(totals["logs"] / s)}


def write_config(path: Path, anvil, token: str, db: Path) -> Path:
    path.write_text("\n".join([
        "[database]", f"path = {json.dumps(str(db))}", "",
        "[chain]", 'kind = "evm"', f'name = "{CHAIN}"', "chain_id = 31337",
        f"ws_url = {json.dumps(anvil.ws_url)}", f"http_url = {json.dumps(anvil.http_url)}", "",
        "[[tokens]]", f'address = "{token}"', 'profile = "erc20"', 'label = "BenchToken"', "",
        "[metrics]", "enabled = false", 'listen = "127.0.0.1:0"', "",
        "[logging]", 'level = "INFO"', 'format = "json"', "",
    ]))
    return path


def wait_child(pid: int, timeout: float, what: str) -> tuple[int, int]:
    """Reap one child with wait4: (exit code, peak RSS in KiB of that process)."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            raise BenchError(f"{what} did not finish within {timeout:.0f}s (killed pid {pid})")
        time.sleep(0.02)


def run_backfill(cfg: Path, head: int, workdir: Path, tag: str, prefix: list[str] | None = None) -> dict:
    """`indexer backfill --from 0 --to head` as a subprocess: wall time, its own JSON line, peak RSS."""
    out_path, err_path = workdir / f"backfill-{tag}.out", workdir / f"backfill-{tag}.log"
    cmd = (prefix or INDEXER) + ["--config", str(cfg), "backfill", "--from", "0", "--to", str(head), "--no-progress"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
        code, rss_kib = wait_child(proc.pid, BACKFILL_TIMEOUT, "indexer backfill")
        wall = time.perf_counter() - t0
        proc.returncode = code  # reaped by wait4 above
    if code != 0:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"indexer backfill exited {code}:\n{tail}")
    lines = [ln for ln in out_path.read_text().splitlines() if ln.startswith("{")]
    cli_out = json.loads(lines[-1]) if lines else {}
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(rss_kib / 1024, 1), "cli": cli_out}


def db_scalar(db: Path, sql: str, args: tuple = ()) -> Any:
    import apsw
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.setbusytimeout(5000)
        rows = conn.execute(sql, args).fetchall()
        return rows[0][0] if rows else None
    finally:
        conn.close()


def measure_captable(cfg: Path, db: Path, token: str, at_block: int, expected: dict[int, int]) -> dict:
    import apsw

    from indexer.captable import captable, render

    t0 = time.perf_counter()
    subprocess.run(INDEXER + ["--version"], capture_output=True, timeout=CLI_TIMEOUT, check=True, cwd=ROOT)
    startup = time.perf_counter() - t0

    t0 = time.perf_counter()
    proc = subprocess.run(INDEXER + ["--config", str(cfg), "captable", "--token", token, "--at-block", str(at_block),
                                     "--format", "json"], capture_output=True, timeout=CLI_TIMEOUT, cwd=ROOT)
    cli_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"indexer captable exited {proc.returncode}: {proc.stderr[-2000:]!r}")
    cli_table = json.loads(proc.stdout)

    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        t0 = time.perf_counter()
        table = captable(conn, CHAIN, token, at_block)
        inproc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        render(table, "json")
        render_s = time.perf_counter() - t0
    finally:
        conn.close()
    got = {h["address"].lower(): int(h["balance"]) for h in cli_table["holders"]}
    want = {addr_hex(a): v for a, v in expected.items() if v}
    wrong = [a for a in set(got) | set(want) if got.get(a) != want.get(a)]
    return {"at_block": at_block, "holders": cli_table["holder_count"], "cli_s": round(cli_s, 3),
            "inproc_s": round(inproc_s, 3), "render_json_s": round(render_s, 3),
            "python_startup_s": round(startup, 3), "matches_generator": not wrong and table["holder_count"] == len(want),
            "mismatches": len(wrong)}


class HeadWatcher:
    """The bench's own newHeads subscription: arrival time (unix) of every head, by block number."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect
        self._connect = connect(ws_url, open_timeout=10, close_timeout=2, max_size=None, compression=None,
                                proxy=None)
        self.ws = self._connect.__enter__()
        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
        reply = json.loads(self.ws.recv(timeout=10))
        if "result" not in reply:
            raise BenchError(f"eth_subscribe newHeads failed: {reply}")
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, name="heads", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            for frame in self.ws:
                t = time.time()
                msg = json.loads(frame)
                head = (msg.get("params") or {}).get("result")
                if head:
                    with self.cond:
                        self.arrived.setdefault(int(head["number"], 16), t)
                        self.cond.notify_all()
        except ConnectionClosed:
            pass

    def close(self) -> None:
        self._connect.__exit__(None, None, None)
        self.thread.join(5)


def start_daemon(cfg: Path, log_path: Path) -> subprocess.Popen:
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(INDEXER + ["--config", str(cfg), "run"], stdout=logf, stderr=logf,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    finally:
        logf.close()  # the child holds its own descriptor


def stop_daemon(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def measure_follow(anvil, cfg: Path, db: Path, workdir: Path, token: str, plan: Plan, n_blocks: int,
                   per_block: int, holders: list[int]) -> dict:
    """`indexer run` at the head; n new blocks; newHeads arrival (bench) -> cursor.updated_at (daemon)."""
    import apsw
    rpc = Rpc(anvil.http_url)
    operator = rpc.call("eth_accounts")[0]
    watcher = HeadWatcher(anvil.ws_url)
    log_path = workdir / "daemon.log"
    daemon = start_daemon(cfg, log_path)
    conn = None
    samples: list[dict] = []
    try:
        deadline = time.monotonic() + FOLLOW_READY_TIMEOUT
        while b"caught up" not in log_path.read_bytes():
            if daemon.poll() is not None:
                raise BenchError(f"indexer run exited {daemon.returncode}: {log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"indexer run did not report 'caught up' within {FOLLOW_READY_TIMEOUT}s")
            time.sleep(0.05)
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        conn.setbusytimeout(5000)
        for _ in range(n_blocks):
            op = plan.bench.move_op(per_block)
            rpc.call("eth_sendTransaction", [{"from": operator, "to": token, "gas": hex(_op_gas(op)),
                                              "data": _op_calldata(op, holders)}])
            rpc.call("evm_mine", [])
            n = int(rpc.call("eth_blockNumber"), 16)
            # wait for the daemon's commit of block n (the next block is mined only after it: one block
            # per transaction, so the cursor row we read is block n's own commit)
            deadline = time.monotonic() + FOLLOW_BLOCK_TIMEOUT
            while True:
                row = conn.execute("SELECT block_number, updated_at FROM cursor WHERE chain=?", (CHAIN,)).fetchall()
                if row and row[0][0] >= n:
                    break
                if daemon.poll() is not None:
                    raise BenchError(f"indexer run exited {daemon.returncode}: {log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise BenchError(f"block {n} not committed within {FOLLOW_BLOCK_TIMEOUT}s")
                time.sleep(0.002)
            with watcher.cond:
                watcher.cond.wait_for(lambda: n in watcher.arrived, timeout=5)
            t_head = watcher.arrived.get(n)
            if t_head is None:
                raise BenchError(f"the bench's newHeads subscription never saw block {n}")
            samples.append({"block": n, "committed_block": row[0][0], "latency_ms": (row[0][1] - t_head) * 1000})
            time.sleep(0.05)
    finally:
        if conn is not None:
            conn.close()
        code = stop_daemon(daemon)
        watcher.close()
        rpc.close()
    lat = sorted(s["latency_ms"] for s in samples)
    return {"blocks": len(samples), "transfers_per_block": per_block, "p50_ms": round(percentile(lat, 50), 1),
            "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(lat[-1], 1), "mean_ms": round(statistics.fmean(lat), 1),
            "min_ms": round(lat[0], 1), "daemon_exit": code,
            "batched_commits": sum(1 for s in samples if s["committed_block"] != s["block"])}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * q // 100) - 1))
    return sorted_values[int(k)]


def check_correctness(url: str, db: Path, token: str, holders: list[int], expected_events: int,
                      node_logs: int) -> dict:
    """Indexed state vs the node at the indexed head: event count, every balance, total supply."""
    import apsw
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        cursor = conn.execute("SELECT block_number FROM cursor WHERE chain=?", (CHAIN,)).fetchall()[0][0]
        indexed_events = conn.execute("SELECT count(*) FROM events WHERE token=?", (token,)).fetchall()[0][0]
        other_events = conn.execute("SELECT count(*) FROM events WHERE token!=?", (token,)).fetchall()[0][0]
        indexed = {a: int(b) for a, b in conn.execute("SELECT address, balance FROM balances WHERE chain=? AND token=?",
                                                      (CHAIN, token))}
        supply_row = conn.execute("SELECT total_supply FROM token_state WHERE chain=? AND token=?",
                                  (CHAIN, token)).fetchall()
    finally:
        conn.close()
    rpc = Rpc(url)
    try:
        node_transfers = 0
        for a, b in ranges(0, cursor, 250):
            node_transfers += len(rpc.call("eth_getLogs", [{"fromBlock": hex(a), "toBlock": hex(b), "address": [token],
                                                            "topics": [TRANSFER_TOPIC]}]))
        addresses = sorted(set(indexed) | {addr_hex(h) for h in holders})
        t0 = time.perf_counter()
        chain_bal: dict[str, int] = {}
        for i in range(0, len(addresses), 1000):
            chunk = addresses[i:i + 1000]
            results = rpc.batch([("eth_call", [{"to": token, "data": "0x" + SEL_BALANCE_OF.hex() + "00" * 12 + a[2:]},
                                               hex(cursor)]) for a in chunk])
            for a, r in zip(chunk, results):
                chain_bal[a] = int(r, 16)
        calls_s = time.perf_counter() - t0
        supply = int(rpc.call("eth_call", [{"to": token, "data": "0x" + SEL_TOTAL_SUPPLY.hex()}, hex(cursor)]), 16)
    finally:
        rpc.close()
    mismatches = [a for a in addresses if indexed.get(a, 0) != chain_bal[a]]
    indexed_supply = int(supply_row[0][0]) if supply_row else None
    return {"at_block": cursor, "indexed_events": indexed_events, "node_transfer_logs": node_transfers,
            "backfill_logs_on_node": node_logs, "expected_backfill_events": expected_events,
            "events_ok": indexed_events == node_transfers and other_events == 0,
            "holders_checked": len(addresses), "balance_mismatches": len(mismatches),
            "mismatch_examples": [{"holder": a, "indexed": str(indexed.get(a, 0)), "chain": str(chain_bal[a])}
                                  for a in mismatches[:5]],
            "balances_ok": not mismatches, "total_supply_ok": indexed_supply == supply,
            "balance_calls_s": round(calls_s, 2)}


# --------------------------------------------------------------------------- profiling (every thread)


def profile_child(prefix: str, argv: list[str]) -> None:
    """Run the indexer CLI with one cProfile.Profile per thread (cProfile hooks only the thread that
    enables it; the store worker and the HTTP threads would be invisible to `python -m cProfile`)."""
    import cProfile
    profiles: list[tuple[str, cProfile.Profile]] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def run(self) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            original_run(self)
        finally:
            prof.disable()
            with lock:
                profiles.append((self.name, prof))

    threading.Thread.run = run
    main_prof = cProfile.Profile()
    code: Any = 0
    from indexer.cli import main
    main_prof.enable()
    try:
        main(args=argv, prog_name="indexer")
    except SystemExit as exc:
        code = exc.code
    finally:
        main_prof.disable()
        main_prof.dump_stats(f"{prefix}.main.prof")
        with lock:
            groups: dict[str, list[cProfile.Profile]] = {}
            for name, prof in profiles:
                # "store_0" -> store, "asyncio_1" -> asyncio (HTTP requests via to_thread), "Thread-3 (x)" -> Thread
                group = name.split(" ")[0].rstrip("-_0123456789") or "thread"
                groups.setdefault(group, []).append(prof)
        for name, profs in groups.items():
            import pstats
            st = pstats.Stats(profs[0])
            for p in profs[1:]:
                st.add(p)
            st.dump_stats(f"{prefix}.thread-{name}.prof")
    sys.exit(code)


# waits of an idle thread (a worker waiting for work, the event loop waiting for sockets): they say
# nothing about where the work goes, so the merged listing leaves them out
_IDLE = ("'_queue.SimpleQueue' objects", "'select.epoll' objects", "'_thread.lock' objects")


def _is_idle(key: tuple) -> bool:
    return key[0] == "~" and any(s in key[2] for s in _IDLE)


def print_profiles(prefix: Path) -> dict:
    import pstats
    files = sorted(prefix.parent.glob(prefix.name + ".*.prof"))
    main_file = Path(f"{prefix}.main.prof")
    summary = {}
    print("\n=== profile: seconds per thread group (own time of every function; busy = without idle waits) ===")
    for f in files:
        st = pstats.Stats(str(f))
        idle = sum(v[2] for k, v in st.stats.items() if _is_idle(k))
        name = f.name.split(".", 1)[1].removesuffix(".prof")
        summary[name] = {"total_s": round(st.total_tt, 2), "busy_s": round(st.total_tt - idle, 2)}
        print(f"  {name:<20} total {st.total_tt:>8.2f} s   busy {st.total_tt - idle:>8.2f} s")
    every = pstats.Stats(str(main_file))
    for f in files:
        if f != main_file:
            every.add(str(f))
    for key in [k for k in every.stats if _is_idle(k)]:
        del every.stats[key]
    listings = [("main thread (what `python -m cProfile` shows)", pstats.Stats(str(main_file)), ("cumulative", "tottime")),
                ("every thread merged, idle waits left out", every, ("cumulative", "tottime"))]
    for f in files:
        if "thread-store" in f.name:
            listings.append(("store worker thread", pstats.Stats(str(f)), ("tottime",)))
    for title, st, orders in listings:
        for order in orders:
            print(f"\n=== profile, {title}: top 25 by {order} ===")
            buf = io.StringIO()
            st.stream = buf
            st.sort_stats(order).print_stats(25)
            print(_trim_profile(buf.getvalue()))
    return summary


def _trim_profile(text: str) -> str:
    """Drop pstats' preamble lines and shorten site-packages/project paths."""
    out = []
    started = False
    for line in text.splitlines():
        if "ncalls" in line:
            started = True
        if started and line.strip():
            lib = f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/"
            out.append(line.replace(str(ROOT) + "/", "").replace(sys.prefix + lib + "site-packages/", "")
                       .replace(sys.base_prefix + lib, ""))
    return "\n".join(out)


# --------------------------------------------------------------------------- report


def report(res: dict) -> None:
    t = TARGETS
    ds, bf, raw1, raw2 = res["dataset"], res["backfill"], res["raw"]["c1"], res["raw"]["c2"]
    fo, ct, co = res.get("follow"), res["captable"], res["correctness"]
    best_raw = max(raw1["events_per_s"], raw2["events_per_s"])

    def ok(flag: bool) -> str:
        return "ok" if flag else "MISSED"

    rows = [
        ("dataset", f"{ds['events']:,} transfers, {ds['head']:,} blocks, {ds['holders']:,} holders, "
                    f"{ds['noise_events']:,} noise logs", "", ""),
        ("generation (once, cached)", f"{ds['generate_seconds']:.1f} s (+ {ds['dump_seconds']:.1f} s dump, "
                                      f"{ds['state_mb']:.0f} MB){' [cached]' if ds['cached'] else ''}", "", ""),
        ("anvil --load-state", f"{ds['load_seconds']:.1f} s", "", ""),
        ("raw eth_getLogs, 1 conn", f"{raw1['events_per_s']:,} ev/s ({raw1['seconds']:.1f} s, {raw1['mb']} MB)",
         f"range {res['raw']['range_blocks']} blocks", ""),
        ("raw eth_getLogs, 2 conns", f"{raw2['events_per_s']:,} ev/s ({raw2['seconds']:.1f} s)", "", ""),
        ("backfill (CLI, end to end)", f"{bf['events_per_s']:,} ev/s ({bf['wall_s']:.1f} s wall)",
         f">= {t['backfill_events_per_s']:,} (stretch {t['backfill_events_per_s_stretch']:,})",
         ok(bf["events_per_s"] >= t["backfill_events_per_s"])),
        ("backfill vs raw ceiling", f"{best_raw / max(1, bf['events_per_s']):.2f}x slower",
         f"<= {t['backfill_vs_raw_max_factor']:.0f}x", ok(best_raw / max(1, bf["events_per_s"]) <= t["backfill_vs_raw_max_factor"])),
        ("backfill peak RSS", f"{bf['peak_rss_mb']:.0f} MB", f"<= {t['peak_rss_mb']} MB", ok(bf["peak_rss_mb"] <= t["peak_rss_mb"])),
    ]
    if fo:
        rows += [("follow latency p50 / p99", f"{fo['p50_ms']:.1f} / {fo['p99_ms']:.1f} ms (max {fo['max_ms']:.1f}, "
                                              f"{fo['blocks']} blocks x {fo['transfers_per_block']})",
                  f"p99 <= {t['follow_p99_ms']} ms", ok(fo["p99_ms"] <= t["follow_p99_ms"]))]
    rows += [
        ("captable CLI (json)", f"{ct['cli_s']:.3f} s ({ct['holders']:,} holders @ block {ct['at_block']})",
         f"<= {t['captable_s']} s", ok(ct["cli_s"] <= t["captable_s"])),
        ("  of which python startup", f"{ct['python_startup_s']:.3f} s (`indexer --version`)", "", ""),
        ("captable in-process", f"{ct['inproc_s']:.3f} s (+ {ct['render_json_s']:.3f} s render json)",
         f"<= {t['captable_s']} s", ok(ct["inproc_s"] <= t["captable_s"])),
        ("correct: captable vs generator", f"{ct['holders']:,} holders, {ct['mismatches']} mismatches", "",
         ok(ct["matches_generator"])),
        ("correct: event count", f"{co['indexed_events']:,} indexed / {co['node_transfer_logs']:,} on node", "",
         ok(co["events_ok"])),
        ("correct: balances at head", f"{co['holders_checked']:,} holders, {co['balance_mismatches']} mismatches "
                                      f"@ block {co['at_block']}", "", ok(co["balances_ok"])),
        ("correct: total supply", "equal" if co["total_supply_ok"] else "DIFFERENT", "", ok(co["total_supply_ok"])),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"{'measure':<{w0}}  {'measured':<{w1}}  {'target':<{w2}}  verdict")
    print("-" * (w0 + w1 + w2 + 14))
    for a, b, c, d in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}")
    print()
    print("BENCH_JSON " + json.dumps(res, separators=(",", ":"), sort_keys=True))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_profile-child"]:
        profile_child(argv[1], argv[2:])
        return 0
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"small dataset ({QUICK.events:,} transfers, "
                                                          f"{QUICK.head} blocks, {QUICK.holders:,} holders)")
    ap.add_argument("--rebuild", action="store_true", help="ignore the cached dataset and build it again")
    ap.add_argument("--profile", action="store_true", help="also profile one backfill (every thread)")
    ap.add_argument("--follow-blocks", type=int, default=50, help="new blocks in the follow test (default 50)")
    ap.add_argument("--follow-per-block", type=int, default=200, help="transfers per follow block (default 200)")
    ap.add_argument("--raw-range", type=int, default=None,
                    help=f"blocks per raw eth_getLogs (default: ~{TARGET_ITEMS:,} logs, where the indexer's "
                         "adaptive range heads)")
    ap.add_argument("--keep", action="store_true", help="keep the run's work directory (databases, logs)")
    ap.add_argument("--dataset-only", action="store_true", help="build (or find) the cached dataset, then stop")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(SCRIPTS))
    import devchain

    p = QUICK if args.quick else FULL
    devchain.ensure_node_packages()
    CACHE.mkdir(exist_ok=True)
    ds_dir, meta, cached = ensure_dataset(p, args.rebuild)
    if args.dataset_only:
        print(json.dumps({"dataset": str(ds_dir), "cached": cached, **meta}, indent=2))
        return 0
    token, head = meta["token"], meta["head"]
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    log(f"work directory {workdir}")
    res: dict[str, Any] = {"quick": args.quick, "machine": {"cpus": os.cpu_count()}, "targets": TARGETS}
    res["dataset"] = {"key": ds_dir.name, "events": p.events, "holders": p.holders, "head": head,
                      "per_tx": p.per_tx, "noise_events": meta["noise_events"], "cached": cached,
                      "generate_seconds": meta["generate_seconds"], "dump_seconds": meta["dump_seconds"],
                      "state_mb": meta["state_bytes"] / 1e6}

    # the plan, replayed without a node: balances at the cap-table block, and the head's model for follow
    at_block = head // 2
    plan = Plan(p)
    at_balances: dict[int, int] = {}
    holders = derived_addresses("holder", p.holders)
    for blk in plan.blocks():
        if blk.number == at_block:
            at_balances = {holders[i]: b for i, b in enumerate(plan.bench.bal)}
    plan.bench.rng = random.Random(p.seed + 1)  # follow moves continue from the final balances
    if not at_balances:
        raise BenchError(f"block {at_block} is not in the plan")

    log("starting anvil with the cached state")
    t0 = time.monotonic()
    anvil = devchain.Anvil(extra_args=["--load-state", str(ds_dir / "state.json"), "--no-mining", "--quiet"],
                           log_path=workdir / "anvil.log", start_timeout=LOAD_TIMEOUT)
    anvil.start()
    try:
        res["dataset"]["load_seconds"] = round(time.monotonic() - t0, 2)
        rpc = Rpc(anvil.http_url)
        node_head = int(rpc.call("eth_blockNumber"), 16)
        node_hash = rpc.call("eth_getBlockByNumber", [hex(head), False])["hash"]
        rpc.close()
        if node_head != head or node_hash != meta["head_hash"]:
            raise BenchError(f"loaded chain head {node_head} {node_hash} != cached {head} {meta['head_hash']}")

        raw_range = args.raw_range or max(1, TARGET_ITEMS // p.per_tx)
        rngs = ranges(0, head, raw_range)
        log(f"raw ceiling: eth_getLogs in {len(rngs)} ranges of {raw_range} blocks")
        res["raw"] = {"range_blocks": raw_range, "c1": raw_ceiling(anvil.http_url, token, rngs, 1),
                      "c2": raw_ceiling(anvil.http_url, token, rngs, 2)}
        node_logs = res["raw"]["c1"]["logs"]
        if node_logs != p.events or res["raw"]["c2"]["logs"] != p.events:
            raise BenchError(f"node returned {node_logs} BenchToken logs, the dataset has {p.events}")

        db = workdir / "bench.db"
        cfg = write_config(workdir / "config.toml", anvil, token, db)
        log(f"backfill of blocks 0..{head} by the CLI")
        bf = run_backfill(cfg, head, workdir, "main")
        bf["events_per_s"] = round(p.events / bf["wall_s"])
        res["backfill"] = bf
        log(f"backfill: {bf['wall_s']} s, {bf['events_per_s']:,} events/s, peak RSS {bf['peak_rss_mb']} MB")

        log(f"cap table at block {at_block}")
        res["captable"] = measure_captable(cfg, db, token, at_block, at_balances)

        log(f"follow: indexer run + {args.follow_blocks} new blocks of {args.follow_per_block} transfers")
        res["follow"] = measure_follow(anvil, cfg, db, workdir, token, plan, args.follow_blocks,
                                       args.follow_per_block, holders)

        log("correctness at the indexed head")
        res["correctness"] = check_correctness(anvil.http_url, db, token, holders, p.events, node_logs)

        if args.profile:
            pdb = workdir / "profile.db"
            pcfg = write_config(workdir / "config-profile.toml", anvil, token, pdb)
            prof_dir = CACHE / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
            prof_dir.mkdir()
            prefix = prof_dir / "backfill"
            log(f"profiled backfill (every thread) into {prof_dir}")
            pb = run_backfill(pcfg, head, workdir, "profile",
                              prefix=[sys.executable, str(Path(__file__).resolve()), "_profile-child", str(prefix)])
            res["profile"] = {"dir": str(prof_dir), "wall_s": pb["wall_s"],
                              "events_per_s": round(p.events / pb["wall_s"])}
            res["profile"]["thread_seconds"] = print_profiles(prefix)
    finally:
        anvil.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(res)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
