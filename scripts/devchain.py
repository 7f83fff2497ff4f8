#!/usr/bin/env python3
"""Local EVM development chain for the indexer: a real anvil node, the sample security token, a real
T-REX (ERC-3643) suite, and scripted activity that exercises every event the indexer decodes.

Importable (tests put ``scripts/`` on ``sys.path``) and runnable::

    python scripts/devchain.py anvil [--port P] [-- EXTRA ANVIL ARGS]
    python scripts/devchain.py deploy-sample --rpc URL
    python scripts/devchain.py drive-sample  --rpc URL [--token ADDR] [--registry ADDR]
    python scripts/devchain.py deploy-trex   --rpc URL
    python scripts/devchain.py drive-trex    --rpc URL [--token ADDR]

Everything is deterministic on a fresh anvil (default mnemonic, chain id 31337): each deployer is a
different default account, so deploying the sample token and the T-REX suite in either order gives
the same addresses (SAMPLE_* and TREX_* constants below, checked by tests/test_devchain.py).
Each transaction is mined in its own block (we wait for its receipt before sending the next one).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from web3 import Web3
from web3.logs import DISCARD

EVM_DIR = Path(__file__).resolve().parent / "evm"
NODE_MODULES = EVM_DIR / "node_modules"
ARTIFACTS_DIR = EVM_DIR / "artifacts"
ANVIL_BIN = NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
TREX_ARTIFACTS = NODE_MODULES / "@tokenysolutions" / "t-rex" / "artifacts"
ONCHAINID_ARTIFACTS = NODE_MODULES / "@onchain-id" / "solidity" / "artifacts"

ANVIL_CHAIN_ID = 31337
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
TX_TIMEOUT_S = 30.0
NPM_TIMEOUT_S = 300.0

# Default-account roles (anvil's default mnemonic funds accounts 0..9).
TREX_DEPLOYER_INDEX = 0  # owner + agent of the T-REX suite (reproduces the reference addresses)
SAMPLE_AGENT_INDEX = 1  # owner + agent of the sample token and registry
SAMPLE_COMPLIANCE_INDEX = 2  # recorded as the sample token's compliance address; never transacts
TREX_INVESTOR_INDEXES = {"alice": 5, "bob": 6, "charlie": 7, "dave": 8}

# Addresses on a fresh anvil (nonce 0 and 1 of account 1; CREATE2 proxies of the T-REX factory).
SAMPLE_REGISTRY_ADDRESS = "0x8464135c8F25Da09e49BC8782676a84730C318bC"
SAMPLE_TOKEN_ADDRESS = "0x71C95911E9a5D330f4D621842EC243EE1343292e"
TREX_TOKEN_ADDRESS = "0x8BcE7E2F3405FEd779f0E9eA9012bC95e4a50eA3"
TREX_IDENTITY_REGISTRY_ADDRESS = "0x76e9360c596C15f94b3382D5073918346693b451"

SAMPLE_NAME = "Sample Equity Inc"
SAMPLE_SYMBOL = "SEQ"
SAMPLE_NEW_SYMBOL = "SEQA"
SAMPLE_DECIMALS = 18
SAMPLE_INVESTOR_COUNT = 50
SPLIT_MULTIPLIER = 7 * 10**18  # ERC-8056: 1e18 = 1.0, so 7e18 = a 7-for-1 split
UNIT = 10**SAMPLE_DECIMALS
COUNTRIES = (840, 826, 276, 250, 756, 702, 392)  # ISO 3166 numeric: US GB DE FR CH SG JP
HOLDER_GAS_FUNDING_WEI = 10**18


class DevchainError(RuntimeError):
    """Anything that stops the dev chain tooling; the message says what to do."""


# --------------------------------------------------------------------------- node packages


def ensure_node_packages(evm_dir: Path = EVM_DIR) -> Path:
    """Install scripts/evm's npm packages if node_modules is missing; return the anvil binary path."""
    anvil = evm_dir / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if not (evm_dir / "node_modules").is_dir():
        # `npm ci` installs exactly the lock file; without a lock only `npm install` can work.
        verb = "ci" if (evm_dir / "package-lock.json").is_file() else "install"
        cmd = ["npm", verb, "--no-audit", "--no-fund"]
        try:
            subprocess.run(cmd, cwd=evm_dir, check=True, timeout=NPM_TIMEOUT_S, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise DevchainError("npm not found: install Node.js >= 18 with npm") from exc
        except subprocess.CalledProcessError as exc:
            raise DevchainError(f"`{' '.join(cmd)}` failed in {evm_dir}:\n{exc.stderr[-2000:]}") from exc
    if not anvil.is_file():
        raise DevchainError(f"anvil binary missing at {anvil}: delete {evm_dir / 'node_modules'} and retry")
    return anvil


# --------------------------------------------------------------------------- anvil process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # loaded here, in the parent, so the forked child only makes a plain foreign call (no dlopen)
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM anvil if its parent dies, so a crashed or
    SIGKILLed test run cannot leave a node behind. Linux ties this to the *thread* that started the
    child: start Anvil from a thread that outlives it (the main thread, a pytest fixture)."""
    if _LIBC is not None:  # not glibc Linux: stop() and the context manager remain the safety net
        _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def rpc_call(url: str, method: str, params: list | None = None, timeout: float = 5.0) -> Any:
    """One JSON-RPC request over HTTP with the standard library (used before web3 is wired up)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise DevchainError(f"{method} failed: {reply['error']}")
    return reply["result"]


class Anvil:
    """A real anvil node on 127.0.0.1 and a free port; use as a context manager.

    ``extra_args`` go straight to anvil (e.g. ``["--block-time", "1"]``, ``["--load-state", path]``,
    ``["--silent"]``). Output goes to ``log_path`` (default: a temporary file removed by stop()),
    never to a pipe nobody reads.
    """

    def __init__(
        self,
        port: int | None = None,
        extra_args: Iterable[str] = (),
        log_path: str | os.PathLike | None = None,
        start_timeout: float = START_TIMEOUT_S,
        binary: Path | None = None,
    ) -> None:
        self._requested_port = port
        self.extra_args = list(extra_args)
        self._log_path = Path(log_path) if log_path else None
        self._owns_log = log_path is None
        self.start_timeout = start_timeout
        self._binary = binary
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DevchainError("anvil is not running")
        return self._proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> Anvil:
        if self._proc is not None:
            raise DevchainError("anvil already started")
        binary = self._binary or ensure_node_packages()
        # Another process may grab a port between our probe and anvil's bind: retry on a new one.
        attempts = 1 if self._requested_port else 3
        last_error = ""
        for _ in range(attempts):
            self.port = self._requested_port or _free_port()
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except BaseException as exc:  # includes KeyboardInterrupt: never leak the child
                last_error = str(exc)
                self.stop()
                if not isinstance(exc, DevchainError):
                    raise
        raise DevchainError(f"anvil did not start on 127.0.0.1: {last_error}")

    def _spawn(self, binary: Path) -> None:
        if self._owns_log:
            fd, name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        cmd = [str(binary), "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        with open(self._log_path, "ab") as log:
            # Own session: a terminal Ctrl-C reaches only us, and we stop anvil in order (CLI `anvil`).
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise DevchainError(f"anvil exited with code {self._proc.returncode}: {self._log_tail()}")
            try:
                if int(rpc_call(self.http_url, "eth_chainId", timeout=1.0), 16) > 0:
                    return
            except (OSError, urllib.error.URLError, ValueError, DevchainError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise DevchainError(f"anvil not answering eth_chainId after {self.start_timeout}s: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-1500:].strip() or "(no output)"
        except (OSError, AttributeError):
            return "(no log)"

    def poll(self) -> int | None:
        """None while anvil runs, else its exit code."""
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S, then reap. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT_S)
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def connect(rpc_url: str, timeout: float = TX_TIMEOUT_S) -> Web3:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    if not w3.is_connected():
        raise DevchainError(f"no JSON-RPC node answering at {rpc_url}")
    return w3


# --------------------------------------------------------------------------- contracts and transactions


def load_artifact(name: str, artifacts_dir: Path = ARTIFACTS_DIR) -> dict:
    """A committed artifact of scripts/evm/contracts: {contractName, abi, bytecode, solcVersion}."""
    path = artifacts_dir / f"{name}.json"
    if not path.is_file():
        raise DevchainError(f"artifact {path} missing: run `node scripts/evm/compile.js`")
    return json.loads(path.read_text())


def _hardhat_artifact(root: Path, relative: str) -> dict:
    path = root / relative
    if not path.is_file():
        raise DevchainError(f"{path} missing: run ensure_node_packages() (npm ci in scripts/evm)")
    return json.loads(path.read_text())


def _accounts(w3: Web3) -> list[str]:
    accounts = w3.eth.accounts
    if len(accounts) < 10:
        raise DevchainError("expected anvil's 10 unlocked default accounts; start anvil without --accounts < 10")
    return accounts


def _send(w3: Web3, call: Any, sender: str) -> dict:
    """Send one transaction and wait for it to be mined; a revert raises with the reason."""
    tx_hash = call.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=TX_TIMEOUT_S, poll_latency=0.01)
    if receipt["status"] != 1:
        raise DevchainError(f"transaction {tx_hash.to_0x_hex()} reverted")
    return receipt


def _deploy(w3: Web3, artifact: dict, sender: str, *args: Any) -> tuple[Any, dict]:
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = _send(w3, factory.constructor(*args), sender)
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"]), receipt


def _impersonate(w3: Web3, address: str) -> None:
    """Let an address without a key send transactions (anvil cheatcodes; no block is mined)."""
    w3.provider.make_request("anvil_impersonateAccount", [address])
    if w3.eth.get_balance(address) < HOLDER_GAS_FUNDING_WEI // 10:
        w3.provider.make_request("anvil_setBalance", [address, hex(HOLDER_GAS_FUNDING_WEI)])


def derived_address(label: str) -> str:
    """A fixed, keyless address for a label (investor wallets, identities)."""
    return Web3.to_checksum_address(Web3.keccak(text=f"indexer-devchain/{label}")[12:])


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """A named piece of activity: ``transactions()`` yields (contract call, sender) pairs lazily, so
    a later transaction can depend on chain state left by an earlier one."""

    name: str
    description: str
    transactions: Callable[[], Iterator[tuple[Any, str]]]


@dataclass(frozen=True)
class StepResult:
    name: str
    description: str
    blocks: tuple[int, ...]
    tx_hashes: tuple[str, ...]


def run_step(w3: Web3, step: Step) -> StepResult:
    blocks, hashes = [], []
    for call, sender in step.transactions():
        receipt = _send(w3, call, sender)
        blocks.append(receipt["blockNumber"])
        hashes.append(receipt["transactionHash"].to_0x_hex())
    return StepResult(step.name, step.description, tuple(blocks), tuple(hashes))


def run_steps(w3: Web3, steps: Iterable[Step]) -> Iterator[StepResult]:
    for step in steps:
        yield run_step(w3, step)


def _txs(*pairs: tuple[Any, str]) -> Callable[[], Iterator[tuple[Any, str]]]:
    """Step.transactions for calls whose arguments are known when the step list is built."""
    return lambda: iter(pairs)


# --------------------------------------------------------------------------- sample token


@dataclass(frozen=True)
class SampleDeployment:
    registry: str
    token: str
    agent: str
    compliance: str
    investors: tuple[str, ...]
    identities: tuple[str, ...]
    recovery_wallet: str  # the new wallet of the investor whose wallet is "lost" in the recovery step
    deploy_block: int  # block of the registry deployment: the first block with a sample log (0 = unknown)


def sample_investors(count: int = SAMPLE_INVESTOR_COUNT) -> tuple[tuple[str, ...], tuple[str, ...]]:
    wallets = tuple(derived_address(f"sample/investor/{i}") for i in range(count))
    identities = tuple(derived_address(f"sample/identity/{i}") for i in range(count))
    return wallets, identities


def issue_amount(i: int) -> int:
    """Raw amount issued to investor i (18 decimals; large enough to overflow SQLite INTEGER)."""
    return (1_000 + 250 * i) * UNIT


def investor_country(i: int) -> int:
    return COUNTRIES[i % len(COUNTRIES)]


def deploy_sample(w3: Web3) -> SampleDeployment:
    """Deploy SampleIdentityRegistry and SampleSecurityToken from default account 1 and make the
    token an agent of the registry (needed for wallet recovery). Three transactions."""
    accounts = _accounts(w3)
    agent, compliance = accounts[SAMPLE_AGENT_INDEX], accounts[SAMPLE_COMPLIANCE_INDEX]
    registry, receipt = _deploy(w3, load_artifact("SampleIdentityRegistry"), agent)
    token, _ = _deploy(
        w3, load_artifact("SampleSecurityToken"), agent,
        SAMPLE_NAME, SAMPLE_SYMBOL, SAMPLE_DECIMALS, registry.address, compliance,
    )
    _send(w3, registry.functions.addAgent(token.address), agent)
    investors, identities = sample_investors()
    return SampleDeployment(
        registry=registry.address,
        token=token.address,
        agent=agent,
        compliance=compliance,
        investors=investors,
        identities=identities,
        recovery_wallet=derived_address("sample/investor/5/recovered"),
        deploy_block=receipt["blockNumber"],
    )


def sample_from_chain(w3: Web3, token: str = SAMPLE_TOKEN_ADDRESS, registry: str | None = None) -> SampleDeployment:
    """Rebuild a SampleDeployment from an already deployed token (for the CLI's drive-sample)."""
    token_c = w3.eth.contract(address=Web3.to_checksum_address(token), abi=load_artifact("SampleSecurityToken")["abi"])
    if not w3.eth.get_code(token_c.address):
        raise DevchainError(f"--token {token}: no contract there; run deploy-sample first")
    chain_registry = token_c.functions.identityRegistry().call()
    if registry is not None and Web3.to_checksum_address(registry) != chain_registry:
        raise DevchainError(f"--registry {registry} is not the token's registry {chain_registry}")
    investors, identities = sample_investors()
    return SampleDeployment(
        registry=chain_registry,
        token=token_c.address,
        agent=token_c.functions.owner().call(),
        compliance=token_c.functions.compliance().call(),
        investors=investors,
        identities=identities,
        recovery_wallet=derived_address("sample/investor/5/recovered"),
        deploy_block=0,
    )


def sample_contracts(w3: Web3, d: SampleDeployment) -> tuple[Any, Any]:
    token = w3.eth.contract(address=d.token, abi=load_artifact("SampleSecurityToken")["abi"])
    registry = w3.eth.contract(address=d.registry, abi=load_artifact("SampleIdentityRegistry")["abi"])
    return token, registry


def sample_steps(w3: Web3, d: SampleDeployment) -> list[Step]:
    """The scripted sample activity, in order. Investor 5's wallet is later "lost" and recovered;
    investor 49 sells out and is de-registered at the end."""
    token, registry = sample_contracts(w3, d)
    agent, inv = d.agent, d.investors
    t, r = token.functions, registry.functions

    def holder(address: str, call: Any) -> tuple[Any, str]:
        _impersonate(w3, address)
        return call, address

    def register() -> Iterator:
        for i, wallet in enumerate(inv):
            yield r.registerIdentity(wallet, d.identities[i], investor_country(i)), agent

    def issue() -> Iterator:
        for i, wallet in enumerate(inv):
            yield t.mint(wallet, issue_amount(i)), agent

    def holder_transfers() -> Iterator:
        yield holder(inv[0], t.transfer(inv[1], 100 * UNIT))
        yield holder(inv[2], t.transfer(inv[3], 250 * UNIT))
        yield holder(inv[4], t.transfer(inv[0], 75 * UNIT))
        yield holder(inv[11], t.transfer(inv[12], 500 * UNIT))
        yield holder(inv[49], t.transfer(inv[48], token.functions.balanceOf(inv[49]).call()))

    def allowance_transfer() -> Iterator:
        yield holder(inv[1], t.approve(inv[2], 300 * UNIT))
        yield holder(inv[2], t.transferFrom(inv[1], inv[13], 300 * UNIT))

    def stock_split() -> Iterator:
        # Effective immediately: the latest block's timestamp is already in the past for the next block.
        yield t.setUIMultiplier(SPLIT_MULTIPLIER, w3.eth.get_block("latest")["timestamp"]), agent

    return [
        Step("register_investors", f"registerIdentity for {len(inv)} investors", register),
        Step("issue", f"mint (issuance) to {len(inv)} investors", issue),
        Step("holder_transfers", "5 holder transfers; investor 49 sells out to 48", holder_transfers),
        Step("allowance_transfer", "approve + transferFrom (OZ v5: no Approval on transferFrom)",
             allowance_transfer),
        Step("partial_freeze", "freeze 400 of investor 5", _txs((t.freezePartialTokens(inv[5], 400 * UNIT), agent))),
        Step("partial_unfreeze", "unfreeze 150 of investor 5",
             _txs((t.unfreezePartialTokens(inv[5], 150 * UNIT), agent))),
        Step("wallet_freeze", "freeze investor 6's wallet", _txs((t.setAddressFrozen(inv[6], True), agent))),
        Step("wallet_unfreeze", "unfreeze investor 6's wallet", _txs((t.setAddressFrozen(inv[6], False), agent))),
        Step("pause", "pause all holder transfers", _txs((t.pause(), agent))),
        Step("unpause", "resume holder transfers", _txs((t.unpause(), agent))),
        Step("forced_transfer", "forcedTransfer 2100 of investor 5 (2000 free) to 7: TokensUnfrozen 100 + Transfer",
             _txs((t.forcedTransfer(inv[5], inv[7], 2_100 * UNIT), agent))),
        Step("stock_split", "ERC-8056 7-for-1 split (multiplier 7e18), effective immediately", stock_split),
        Step("post_split_transfer", "raw transfer of 700 from investor 7 to 8 after the split",
             lambda: iter([holder(inv[7], t.transfer(inv[8], 700 * UNIT))])),
        Step("symbol_change", f"setSymbol({SAMPLE_NEW_SYMBOL!r})", _txs((t.setSymbol(SAMPLE_NEW_SYMBOL), agent))),
        Step("redemption", "burn 1000 of investor 8", _txs((t.burn(inv[8], 1_000 * UNIT), agent))),
        Step("recovery", "recoveryAddress: investor 5's lost wallet -> new wallet (150 frozen carried over)",
             _txs((t.recoveryAddress(inv[5], d.recovery_wallet, d.identities[5]), agent))),
        Step("country_update", "investor 10 moves to GB (826)", _txs((r.updateCountry(inv[10], 826), agent))),
        Step("identity_removal", "deleteIdentity of investor 49 (no balance left)",
             _txs((r.deleteIdentity(inv[49]), agent))),
    ]


def iter_sample_steps(w3: Web3, deployment: SampleDeployment) -> Iterator[StepResult]:
    """Run the sample steps one at a time; each result arrives after its blocks are mined."""
    return run_steps(w3, sample_steps(w3, deployment))


def drive_sample_activity(w3: Web3, deployment: SampleDeployment) -> list[StepResult]:
    return list(iter_sample_steps(w3, deployment))


# --------------------------------------------------------------------------- T-REX suite


@dataclass(frozen=True)
class TrexSuite:
    token: str  # TokenProxy: every token log comes from here
    identity_registry: str  # IdentityRegistryProxy
    identity_registry_storage: str
    trusted_issuers_registry: str
    claim_topics_registry: str
    modular_compliance: str
    trex_factory: str
    id_factory: str
    deployer: str  # owner and agent of token and registry
    investors: dict[str, str]  # alice, bob, charlie, dave -> wallet
    deploy_block: int  # block of deployTREXSuite: the proxies' first logs


_TREX_IMPLEMENTATIONS = {  # TREXImplementationAuthority.TREXContracts field -> artifact
    "token": "contracts/token/Token.sol/Token.json",
    "ctr": "contracts/registry/implementation/ClaimTopicsRegistry.sol/ClaimTopicsRegistry.json",
    "ir": "contracts/registry/implementation/IdentityRegistry.sol/IdentityRegistry.json",
    "irs": "contracts/registry/implementation/IdentityRegistryStorage.sol/IdentityRegistryStorage.json",
    "tir": "contracts/registry/implementation/TrustedIssuersRegistry.sol/TrustedIssuersRegistry.json",
    "mc": "contracts/compliance/modular/ModularCompliance.sol/ModularCompliance.json",
}


def _trex(name: str) -> dict:
    paths = {
        **_TREX_IMPLEMENTATIONS,
        "authority": "contracts/proxy/authority/TREXImplementationAuthority.sol/TREXImplementationAuthority.json",
        "factory": "contracts/factory/TREXFactory.sol/TREXFactory.json",
    }
    return _hardhat_artifact(TREX_ARTIFACTS, paths[name])


def _onchainid(name: str) -> dict:
    paths = {
        "Identity": "contracts/Identity.sol/Identity.json",
        "ImplementationAuthority": "contracts/proxy/ImplementationAuthority.sol/ImplementationAuthority.json",
        "IdFactory": "contracts/factory/IdFactory.sol/IdFactory.json",
    }
    return _hardhat_artifact(ONCHAINID_ARTIFACTS, paths[name])


def deploy_trex(w3: Web3) -> TrexSuite:
    """Deploy a real T-REX 4.1.6 suite exactly as in evm-events.md Part 2.2 (14 transactions from
    default account 0): implementations, implementation authority, ONCHAINID factory, TREXFactory,
    deployTREXSuite. The token starts paused (T-REX init)."""
    accounts = _accounts(w3)
    deployer = accounts[TREX_DEPLOYER_INDEX]
    impl = {key: _deploy(w3, _trex(key), deployer)[0].address for key in _TREX_IMPLEMENTATIONS}
    zero = "0x" + "00" * 20
    authority, _ = _deploy(w3, _trex("authority"), deployer, True, zero, zero)
    _send(w3, authority.functions.addAndUseTREXVersion(
        (4, 0, 0), (impl["token"], impl["ctr"], impl["ir"], impl["irs"], impl["tir"], impl["mc"])
    ), deployer)
    identity_lib, _ = _deploy(w3, _onchainid("Identity"), deployer, deployer, True)
    id_authority, _ = _deploy(w3, _onchainid("ImplementationAuthority"), deployer, identity_lib.address)
    id_factory, _ = _deploy(w3, _onchainid("IdFactory"), deployer, id_authority.address)
    factory, _ = _deploy(w3, _trex("factory"), deployer, authority.address, id_factory.address)
    # Without this the factory cannot create the token's ONCHAINID and deployTREXSuite reverts.
    _send(w3, id_factory.functions.addTokenFactory(factory.address), deployer)
    # (owner, name, symbol, decimals, irs, ONCHAINID, irAgents, tokenAgents, modules, settings)
    token_details = (deployer, "Acme Equity", "ACME", 0, zero, zero, [deployer], [deployer], [], [])
    claim_details = ([], [], [])  # no claim topics: any registered identity is verified
    receipt = _send(w3, factory.functions.deployTREXSuite("acme-salt-1", token_details, claim_details), deployer)
    # DISCARD: the receipt also holds the other contracts' logs, which this ABI cannot decode.
    (event,) = factory.events.TREXSuiteDeployed().process_receipt(receipt, errors=DISCARD)
    args = event["args"]
    return TrexSuite(
        token=args["_token"],
        identity_registry=args["_ir"],
        identity_registry_storage=args["_irs"],
        trusted_issuers_registry=args["_tir"],
        claim_topics_registry=args["_ctr"],
        modular_compliance=args["_mc"],
        trex_factory=factory.address,
        id_factory=id_factory.address,
        deployer=deployer,
        investors={name: accounts[i] for name, i in TREX_INVESTOR_INDEXES.items()},
        deploy_block=receipt["blockNumber"],
    )


def trex_from_chain(w3: Web3, token: str = TREX_TOKEN_ADDRESS) -> TrexSuite:
    """Rebuild a TrexSuite from an already deployed token proxy: the factory's TREXSuiteDeployed log
    (token in topic1) names the factory, the factory names the ONCHAINID factory."""
    token_c = w3.eth.contract(address=Web3.to_checksum_address(token), abi=_trex("token")["abi"])
    if not w3.eth.get_code(token_c.address):
        raise DevchainError(f"--token {token}: no contract there; run deploy-trex first")
    factory_abi = _trex("factory")["abi"]
    topic0 = w3.eth.contract(abi=factory_abi).events.TREXSuiteDeployed.topic
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest",
                            "topics": [topic0, "0x" + "00" * 12 + token_c.address[2:].lower()]})
    if not logs:
        raise DevchainError(f"--token {token}: no TREXSuiteDeployed log names it; not a T-REX factory suite")
    factory = w3.eth.contract(address=logs[0]["address"], abi=factory_abi)
    event = factory.events.TREXSuiteDeployed().process_log(logs[0])
    args = event["args"]
    accounts = _accounts(w3)
    return TrexSuite(
        token=token_c.address,
        identity_registry=args["_ir"],
        identity_registry_storage=args["_irs"],
        trusted_issuers_registry=args["_tir"],
        claim_topics_registry=args["_ctr"],
        modular_compliance=args["_mc"],
        trex_factory=factory.address,
        id_factory=factory.functions.getIdFactory().call(),
        deployer=token_c.functions.owner().call(),
        investors={name: accounts[i] for name, i in TREX_INVESTOR_INDEXES.items()},
        deploy_block=logs[0]["blockNumber"],
    )


def trex_steps(w3: Web3, suite: TrexSuite) -> list[Step]:
    """The activity of evm-events.md Part 2.2, chosen so the final state is the documented one:
    alice 0, bob 100 (100 frozen), charlie 250, dave 1140 (40 frozen), totalSupply 1490."""
    token = w3.eth.contract(address=suite.token, abi=_trex("token")["abi"])
    ir = w3.eth.contract(address=suite.identity_registry, abi=_trex("ir")["abi"])
    id_factory = w3.eth.contract(address=suite.id_factory, abi=_onchainid("IdFactory")["abi"])
    agent = suite.deployer
    alice, bob, charlie, dave = (suite.investors[n] for n in ("alice", "bob", "charlie", "dave"))
    t = token.functions
    countries = {alice: 840, bob: 250, charlie: 276}

    def create_identities() -> Iterator:
        for name, wallet in (("alice", alice), ("bob", bob), ("charlie", charlie)):
            yield id_factory.functions.createIdentity(wallet, f"{name}-salt"), agent

    def register_identities() -> Iterator:
        for wallet, country in countries.items():
            identity = id_factory.functions.getIdentity(wallet).call()
            yield ir.functions.registerIdentity(wallet, identity, country), agent

    def recovery() -> Iterator:
        # The investor first adds the new wallet as a management key of its ONCHAINID.
        identity_addr = ir.functions.identity(alice).call()
        identity = w3.eth.contract(address=identity_addr, abi=_onchainid("Identity")["abi"])
        yield identity.functions.addKey(Web3.keccak(abi_encode(["address"], [dave])), 1, 1), alice
        yield t.recoveryAddress(alice, dave, identity_addr), agent

    return [
        Step("create_identities", "IdFactory.createIdentity for alice, bob, charlie", create_identities),
        Step("register_identities", "IdentityRegistry.registerIdentity x3", register_identities),
        Step("unpause", "T-REX tokens start paused", _txs((t.unpause(), agent))),
        Step("mint", "mint alice 1000, bob 400, charlie 400",
             _txs((t.mint(alice, 1000), agent), (t.mint(bob, 400), agent), (t.mint(charlie, 400), agent))),
        Step("transfers", "alice->bob 100, charlie->alice 150",
             _txs((t.transfer(bob, 100), alice), (t.transfer(alice, 150), charlie))),
        Step("transfer_from", "bob approves alice 50; alice transferFrom bob->alice 50 (emits Approval 0)",
             _txs((t.approve(alice, 50), bob), (t.transferFrom(bob, alice, 50), alice))),
        Step("partial_freeze_unfreeze", "freeze 60 then unfreeze 20 of alice",
             _txs((t.freezePartialTokens(alice, 60), agent), (t.unfreezePartialTokens(alice, 20), agent))),
        Step("wallet_freeze_unfreeze", "setAddressFrozen(charlie) true then false",
             _txs((t.setAddressFrozen(charlie, True), agent), (t.setAddressFrozen(charlie, False), agent))),
        Step("forced_transfer", "forcedTransfer bob->alice 200 within free balance",
             _txs((t.forcedTransfer(bob, alice, 200), agent))),
        Step("burn", "burn 310 of alice", _txs((t.burn(alice, 310), agent))),
        Step("pause_unpause", "pause then unpause", _txs((t.pause(), agent), (t.unpause(), agent))),
        Step("rename", "setName + setSymbol",
             _txs((t.setName("Acme Equity Class A"), agent), (t.setSymbol("ACMEA"), agent))),
        Step("country_update", "bob moves to GB (826)", _txs((ir.functions.updateCountry(bob, 826), agent))),
        Step("forced_transfer_over_frozen", "freeze 150 of bob, forcedTransfer 150 bob->alice (unfreezes 50)",
             _txs((t.freezePartialTokens(bob, 150), agent), (t.forcedTransfer(bob, alice, 150), agent))),
        Step("recovery", "alice adds dave as management key; recoveryAddress alice->dave", recovery),
    ]


def iter_trex_steps(w3: Web3, suite: TrexSuite) -> Iterator[StepResult]:
    return run_steps(w3, trex_steps(w3, suite))


def drive_trex_activity(w3: Web3, suite: TrexSuite) -> list[StepResult]:
    return list(iter_trex_steps(w3, suite))


# --------------------------------------------------------------------------- CLI


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _address_arg(value: str) -> str:
    """argparse type: a clear "argument --token: ..." error instead of a traceback."""
    if not Web3.is_address(value):
        raise argparse.ArgumentTypeError(f"not a 20-byte hex address: {value!r}")
    return Web3.to_checksum_address(value)


def _cmd_anvil(args: argparse.Namespace) -> int:
    stop_requested = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Anvil(port=args.port, extra_args=args.anvil_args, log_path=args.log) as node:
        _print_json({"http_url": node.http_url, "ws_url": node.ws_url, "port": node.port, "pid": node.pid,
                     "chain_id": ANVIL_CHAIN_ID})
        sys.stdout.flush()
        while not stop_requested:
            if node.poll() is not None:
                print(f"anvil exited on its own with code {node.poll()}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    return 0


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, round(time.monotonic() - start, 3)


def _cmd_deploy_sample(args: argparse.Namespace) -> int:
    deployment, seconds = _timed(lambda: deploy_sample(connect(args.rpc)))
    _print_json({**asdict(deployment), "seconds": seconds})
    return 0


def _cmd_drive_sample(args: argparse.Namespace) -> int:
    w3 = connect(args.rpc)
    deployment = sample_from_chain(w3, args.token, args.registry)
    steps, seconds = _timed(lambda: drive_sample_activity(w3, deployment))
    _print_json({"token": deployment.token, "registry": deployment.registry,
                 "steps": [asdict(s) for s in steps], "seconds": seconds})
    return 0


def _cmd_deploy_trex(args: argparse.Namespace) -> int:
    suite, seconds = _timed(lambda: deploy_trex(connect(args.rpc)))
    _print_json({**asdict(suite), "seconds": seconds})
    return 0


def _cmd_drive_trex(args: argparse.Namespace) -> int:
    w3 = connect(args.rpc)
    suite = trex_from_chain(w3, args.token)
    steps, seconds = _timed(lambda: drive_trex_activity(w3, suite))
    _print_json({"token": suite.token, "identity_registry": suite.identity_registry,
                 "steps": [asdict(s) for s in steps], "seconds": seconds})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devchain.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("anvil", help="run anvil on 127.0.0.1 until SIGINT/SIGTERM; prints urls and pid as JSON")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--log", default=None, help="anvil output file (default: temporary, deleted on exit)")
    p.add_argument("anvil_args", nargs=argparse.REMAINDER, help="extra anvil arguments after --")
    p.set_defaults(func=_cmd_anvil)
    for name, func, help_text in (
        ("deploy-sample", _cmd_deploy_sample, "deploy the sample registry + token"),
        ("drive-sample", _cmd_drive_sample, "run the sample activity steps"),
        ("deploy-trex", _cmd_deploy_trex, "deploy a T-REX 4.1.6 suite"),
        ("drive-trex", _cmd_drive_trex, "run the T-REX activity steps"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--rpc", required=True, help="HTTP JSON-RPC url, e.g. http://127.0.0.1:8545")
        p.set_defaults(func=func)
        if name == "drive-sample":
            p.add_argument("--token", type=_address_arg, default=SAMPLE_TOKEN_ADDRESS)
            p.add_argument("--registry", type=_address_arg, default=None,
                           help="default: the token's identityRegistry()")
        if name == "drive-trex":
            p.add_argument("--token", type=_address_arg, default=TREX_TOKEN_ADDRESS, help="the T-REX token proxy")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "anvil_args", None) and args.anvil_args[0] == "--":
        args.anvil_args = args.anvil_args[1:]
    try:
        return args.func(args)
    except DevchainError as exc:
        print(f"devchain: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
