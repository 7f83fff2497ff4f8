"""Shared test helpers: configs, the real CLI and daemon as subprocesses, database comparison."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import apsw

ROOT = Path(__file__).resolve().parent.parent
INDEXER = [sys.executable, "-m", "indexer"]

# tables that must be identical between two databases of the same chain; `blocks` is left out on
# purpose (a hash cache whose rows depend on how blocks were fetched) and `cursor` is compared without
# its wall-clock `updated_at`
COMPARED_TABLES = {
    "events": "pos",
    "balance_ledger": "id",
    "balances": "token, address",
    "corporate_actions": "block_number, log_index, action_type, token",
    "token_state": "token",
    "token_state_history": "token, block_number",
    "holder_state": "token, address",
    "holder_state_history": "token, address, block_number",
    "watched_contracts": "address, token",
    "skipped_logs": "block_number, log_index",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, *, ws_url: str, http_url: str | None, tokens: list[dict], db: Path,
                 chain: dict | None = None, metrics_listen: str = "127.0.0.1:0", extra: str = "") -> Path:
    chain = {"kind": "evm", "name": "devchain", "chain_id": 31337, "ws_url": ws_url, **(chain or {})}
    if http_url:
        chain["http_url"] = http_url
    lines = ["[database]", f"path = {json.dumps(str(db))}", "", "[chain]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in chain.items() if v is not None]
    for t in tokens:
        lines += ["", "[[tokens]]"] + [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    lines += ["", "[metrics]", f"listen = {json.dumps(metrics_listen)}", "", "[logging]", 'level = "INFO"',
              'format = "json"', extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str, timeout: float = 120, check: bool = True, env: dict | None = None):
    proc = subprocess.run(INDEXER + ["--config", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"indexer {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n"
                             f"stderr: {proc.stderr[-5000:]}")
    return proc


def cli_json(config: Path, *args: str, **kw) -> dict:
    return json.loads(cli(config, *args, **kw).stdout)


class Daemon:
    """`indexer run` as a real subprocess; stopped by its PID."""

    def __init__(self, config: Path, log_path: Path, env: dict | None = None):
        self.config = config
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(INDEXER + ["--config", str(config), "run"], stdout=self._log, stderr=self._log,
                                     cwd=ROOT, env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cursor(self) -> int | None:
        return db_cursor(self.config_db())

    def config_db(self) -> Path:
        import tomllib
        return Path(tomllib.loads(self.config.read_text())["database"]["path"])

    def wait_for_block(self, number: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            cur = self.cursor()
            if cur is not None and cur >= number:
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon did not reach block {number} within {timeout}s (at {self.cursor()}):\n"
                             f"{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_started(self, timeout: float = 20.0) -> None:
        """Until the daemon logged its start (its signal handlers are in place by then) or exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            self._log.flush()
            if "starting on" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            # a signal in the first milliseconds of the interpreter meets Python's default handler
            self.wait_started()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_tail()}")
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def db_cursor(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.setbusytimeout(2000)
        rows = conn.execute("SELECT block_number FROM cursor").fetchall() if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name='cursor'").fetchall() else []
        conn.close()
    except apsw.Error:
        return None
    return rows[0][0] if rows else None


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every compared table, ordered by its natural key, plus the cursor without its wall-clock time."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall() for t, key in COMPARED_TABLES.items()}
        out["cursor"] = conn.execute("SELECT chain, block_number, block_hash, block_timestamp FROM cursor").fetchall()
        return out
    finally:
        conn.close()


def assert_same_db(a: Path, b: Path) -> None:
    da, db_ = dump(a), dump(b)
    for table in da:
        assert da[table] == db_[table], (f"table {table} differs: {len(da[table])} vs {len(db_[table])} rows; first "
                                         f"difference: {next(((x, y) for x, y in zip(da[table], db_[table]) if x != y), None)}")


class Load:
    """Deterministic token activity on the sample token: agent mints and forced transfers among the
    registered investors, `per_block` transactions mined together (automine off while sending)."""

    def __init__(self, w3, deployment, seed: int = 7):
        import random

        import devchain
        self.w3 = w3
        self.d = deployment
        self.rng = random.Random(seed)
        abi = devchain.load_artifact("SampleSecurityToken")["abi"]
        self.token = w3.eth.contract(address=deployment.token, abi=abi)
        self.investors = list(devchain.sample_investors()[0])

    def tx(self) -> dict:
        """One transaction that cannot revert: a small mint, or a small forced transfer."""
        a, b = self.rng.sample(self.investors, 2)
        amount = self.rng.randint(1, 10**15)
        if self.rng.random() < 0.3:
            call = self.token.functions.mint(a, amount)
        else:
            call = self.token.functions.forcedTransfer(a, b, amount)
        return {"from": self.d.agent, "to": self.d.token, "data": call._encode_transaction_data(), "gas": 300_000}

    def blocks(self, n: int, per_block: int = 10) -> None:
        w3 = self.w3
        w3.provider.make_request("evm_setAutomine", [False])
        try:
            for _ in range(n):
                for _ in range(per_block):
                    w3.eth.send_transaction(self.tx())
                w3.provider.make_request("evm_mine", [])
        finally:
            w3.provider.make_request("evm_setAutomine", [True])

    def reorg(self, depth: int, txs: int = 3) -> None:
        """Replace the last `depth` blocks by a branch whose first block holds other balance changes."""
        pairs = [[self.tx(), 0] for _ in range(txs)]
        reply = self.w3.provider.make_request("anvil_reorg", [depth, pairs])
        assert "error" not in reply, reply


def scrape(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metric_value(text: str, name: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"metric {name} not in scrape")
    return total


def sample_tokens() -> list[dict]:
    import devchain
    return [{"address": devchain.SAMPLE_TOKEN_ADDRESS, "profile": "erc3643"}]


def funded_sample(w3):
    """The sample token deployed, its investors registered and issued to; returns the deployment."""
    import devchain
    d = devchain.deploy_sample(w3)
    steps = devchain.sample_steps(w3, d)
    for _ in devchain.run_steps(w3, [s for s in steps if s.name in ("register_investors", "issue")]):
        pass
    return d
