"""The EVM dev chain tooling against a real anvil: artifacts, deployments, scripted activity, the
events they emit, historical calls and reorgs (which the indexer relies on), and process hygiene."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web3 import Web3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import devchain as dc  # noqa: E402

# topic0 values copied from shared/reference/evm-events.md (catalog table, Part 1.4), which were
# cross-checked there against logs of a real T-REX suite. Kept here so the test runs anywhere.
REFERENCE_TOPIC0 = {
    "Transfer(address,address,uint256)": "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
    "Approval(address,address,uint256)": "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925",
    "Paused(address)": "0x62e78cea01bee320cd4e420270b5ea74000d11b0c9f74754ebdbfc544b05a258",
    "Unpaused(address)": "0x5db9ee0a495bf2e6ff9c91a7834c1ba4fdd244a5e8aa4e537bd38aeae4b073aa",
    "AddressFrozen(address,bool,address)": "0x7fa523c84ab8d7fc5b72f08b9e46dbbf10c39e119a075b3e317002d14bc9f436",
    "TokensFrozen(address,uint256)": "0xa065e63c631c86f1b9f66a4a2f63f2093bf1c2168d23290259dbd969e0222a45",
    "TokensUnfrozen(address,uint256)": "0x9bed35cb62ad0dba04f9d5bfee4b5bc91443e77da8a65c4c84834c51bb08b0d6",
    "RecoverySuccess(address,address,address)": "0xf0c9129a94f30f1caaceb63e44b9811d0a3edf1d6c23757f346093af5553fed0",
    "UpdatedTokenInformation(string,string,uint8,string,address)":
        "0x6a1105ac8148a3c319adbc369f9072573e8a11d3a3d195e067e7c40767ec54d1",
    "IdentityRegistryAdded(address)": "0xd2be862d755bca7e0d39772b2cab3a5578da9c285f69199f4c063c2294a7f36c",
    "ComplianceAdded(address)": "0x7f3a888862559648ec01d97deb7b5012bff86dc91e654a1de397170db40e35b6",
    "AgentAdded(address)": "0xf68e73cec97f2d70aa641fb26e87a4383686e2efacb648f2165aeb02ac562ec5",
    "IdentityRegistered(address,address)": "0x6ae73635c50d24a45af6fbd5e016ac4bed179addbc8bf24e04ff0fcc6d33af19",
    "IdentityRemoved(address,address)": "0x59d6590e225b81befe259af056324092801080acbb7feab310eb34678871f327",
    "CountryUpdated(address,uint16)": "0x04ed3b726495c2dca1ff1215d9ca54e1a4030abb5e82b0f6ce55702416cee853",
    "UIMultiplierUpdated(uint256,uint256,uint256)": "0x2205df4534432b2f60654a3fdb48737ffdaf3e9edb1a498bd985bc026b15b055",
    "IdentityStored(address,address)": "0x0030dea7e9c9afaa2e3c9810f2fc9b5181f1bad74ca5a8db85f746a33585e747",
    "IdentityUnstored(address,address)": "0xca6a4c3370b859312246e7f086284076e557997e10d856b716c23ab67067790b",
    "CountryModified(address,uint16)": "0x20965fcdc6eed7ae398065b40ece4e732ba667992ca819fc54e80e9f2047c4cf",
    "TREXSuiteDeployed(address,address,address,address,address,address,string)":
        "0x057adae5fa3e9caa8a0d584edff60f61558d33f073412ec2d66d558b739e0a41",
    "Initialized(uint8)": "0x7f26b83ff96e1f2b6a682f133852f6798a09c465da95921460cefb3847402498",
    "OwnershipTransferred(address,address)": "0x8be0079c531659141344cd1fd0a4f28419497f9722a3daafe3b4186f6b6457e0",
    "ImplementationAuthoritySet(address)": "0x3b1074392ed8e8424715d0dda2197eede67080b377fc8370e26f3e882207f6b8",
    "IdentityRegistryBound(address)": "0x500c250171aa20e861b680f93502547b9d436eda7d4c537fc360db6e0c6eedfb",
    "TokenBound(address)": "0x2de35142b19ed5a07796cf30791959c592018f70b1d2d7c460eef8ffe713692b",
    "ClaimTopicsRegistrySet(address)": "0x7170bf15b246e880b2369cd7c67d057760d8a35149e8c64dde91efa22bcc76d0",
    "TrustedIssuersRegistrySet(address)": "0x1b98cb79e6f73020175fe87333f1b91ad6a881519c0afe30340c2599b2b4bde0",
    "IdentityStorageSet(address)": "0x2fa8b95c1db7afe99e3398f3792f008135cedc1fa26b0bb2ecd2352cd166d53c",
}
TOPIC_NAME = {topic: sig.split("(")[0] for sig, topic in REFERENCE_TOPIC0.items()}

SAMPLE_EVENTS = {  # everything the sample contracts may emit, all from the reference catalog
    "Transfer", "Approval", "Paused", "Unpaused", "AddressFrozen", "TokensFrozen", "TokensUnfrozen",
    "RecoverySuccess", "UpdatedTokenInformation", "IdentityRegistryAdded", "ComplianceAdded", "AgentAdded",
    "IdentityRegistered", "IdentityRemoved", "CountryUpdated", "UIMultiplierUpdated",
}
TREX_TOKEN_ABI = dc.TREX_ARTIFACTS / "contracts/token/Token.sol/Token.json"
TREX_IR_ABI = dc.TREX_ARTIFACTS / "contracts/registry/implementation/IdentityRegistry.sol/IdentityRegistry.json"
UNIT = 10**dc.SAMPLE_DECIMALS


def event_signature(entry: dict) -> str:
    return f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"


def topic_names(logs: list) -> list[str]:
    return [TOPIC_NAME.get(log["topics"][0].to_0x_hex(), "?") for log in logs]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def chain():
    """One anvil with the sample token and the T-REX suite deployed and driven."""
    dc.ensure_node_packages()
    with dc.Anvil(extra_args=["--silent"]) as node:
        w3 = dc.connect(node.http_url)
        started = time.monotonic()
        sample = dc.deploy_sample(w3)
        sample_steps = dc.drive_sample_activity(w3, sample)
        suite = dc.deploy_trex(w3)
        trex_steps = dc.drive_trex_activity(w3, suite)
        seconds = time.monotonic() - started
        yield w3, sample, sample_steps, suite, trex_steps, seconds


# ------------------------------------------------------------------ artifacts and ABIs


def test_compile_reproduces_committed_artifacts(tmp_path):
    dc.ensure_node_packages()
    subprocess.run(
        ["node", str(dc.EVM_DIR / "compile.js"), "--out", str(tmp_path)],
        check=True, timeout=120, capture_output=True,
    )
    committed = sorted(p.name for p in dc.ARTIFACTS_DIR.glob("*.json"))
    assert sorted(p.name for p in tmp_path.glob("*.json")) == committed == [
        "BenchToken.json", "SampleIdentityRegistry.json", "SampleSecurityToken.json",
    ]
    for name in committed:
        rebuilt = json.loads((tmp_path / name).read_text())
        stored = json.loads((dc.ARTIFACTS_DIR / name).read_text())
        assert rebuilt["abi"] == stored["abi"], name
        assert rebuilt["bytecode"] == stored["bytecode"], f"{name}: commit the rebuilt artifact"
        assert stored["solcVersion"].startswith("0.8.37+")


def test_sample_events_are_reference_events_with_trex_layout():
    trex_events = {
        e["name"]: e
        for path in (TREX_TOKEN_ABI, TREX_IR_ABI)
        for e in json.loads(path.read_text())["abi"]
        if e["type"] == "event"
    }
    seen = set()
    for artifact in ("SampleSecurityToken", "SampleIdentityRegistry"):
        for entry in dc.load_artifact(artifact)["abi"]:
            if entry["type"] != "event":
                continue
            signature = event_signature(entry)
            assert Web3.keccak(text=signature).to_0x_hex() == REFERENCE_TOPIC0[signature], signature
            # Decoding depends on types and indexed-ness (parameter names only differ for Paused/Unpaused,
            # which come from OpenZeppelin's Pausable: `account` where T-REX says `_userAddress`).
            layout = [(i["type"], i["indexed"]) for i in entry["inputs"]]
            if entry["name"] == "UIMultiplierUpdated":  # ERC-8056, not part of T-REX: nothing indexed
                assert layout == [("uint256", False)] * 3
            else:  # same layout as the real ERC-3643 contracts
                assert layout == [(i["type"], i["indexed"]) for i in trex_events[entry["name"]]["inputs"]], signature
            seen.add(entry["name"])
    assert seen == SAMPLE_EVENTS


# ------------------------------------------------------------------ sample token


def test_deployments_land_on_the_documented_addresses(chain):
    _, sample, _, suite, _, _ = chain
    assert (sample.token, sample.registry) == (dc.SAMPLE_TOKEN_ADDRESS, dc.SAMPLE_REGISTRY_ADDRESS)
    assert (suite.token, suite.identity_registry) == (dc.TREX_TOKEN_ADDRESS, dc.TREX_IDENTITY_REGISTRY_ADDRESS)


def test_sample_steps_mine_one_transaction_per_block(chain):
    _, sample, steps, _, _, seconds = chain
    assert [s.name for s in steps] == [
        "register_investors", "issue", "holder_transfers", "allowance_transfer", "partial_freeze",
        "partial_unfreeze", "wallet_freeze", "wallet_unfreeze", "pause", "unpause", "forced_transfer",
        "stock_split", "post_split_transfer", "symbol_change", "redemption", "recovery", "country_update",
        "identity_removal",
    ]
    blocks = [b for s in steps for b in s.blocks]
    assert blocks == list(range(blocks[0], blocks[0] + len(blocks)))  # consecutive, one tx each
    assert blocks[0] > sample.deploy_block
    assert len(steps[0].blocks) == len(steps[1].blocks) == dc.SAMPLE_INVESTOR_COUNT
    print(f"deploy + drive of both tokens: {seconds:.2f} s")


def expected_sample_balances(sample) -> dict[str, int]:
    """Replay the scripted activity on plain integers."""
    inv = sample.investors
    balances = {w: dc.issue_amount(i) for i, w in enumerate(inv)}

    def move(src, dst, amount):
        balances[src] -= amount
        balances[dst] = balances.get(dst, 0) + amount

    move(inv[0], inv[1], 100 * UNIT)
    move(inv[2], inv[3], 250 * UNIT)
    move(inv[4], inv[0], 75 * UNIT)
    move(inv[11], inv[12], 500 * UNIT)
    move(inv[49], inv[48], balances[inv[49]])
    move(inv[1], inv[13], 300 * UNIT)
    move(inv[5], inv[7], 2_100 * UNIT)
    move(inv[7], inv[8], 700 * UNIT)
    balances[inv[8]] -= 1_000 * UNIT
    move(inv[5], sample.recovery_wallet, balances[inv[5]])
    return balances


def test_sample_final_state_on_chain(chain):
    w3, sample, _, _, _, _ = chain
    token, registry = dc.sample_contracts(w3, sample)
    expected = expected_sample_balances(sample)
    for wallet, amount in expected.items():
        assert token.functions.balanceOf(wallet).call() == amount, wallet
    total = token.functions.totalSupply().call()
    assert total == sum(dc.issue_amount(i) for i in range(dc.SAMPLE_INVESTOR_COUNT)) - 1_000 * UNIT
    assert total == sum(expected.values())
    inv = sample.investors
    # Investor 5: 400 frozen, 150 unfrozen, 100 eaten by the forced transfer, 150 carried over on recovery.
    assert token.functions.getFrozenTokens(inv[5]).call() == 0
    assert token.functions.getFrozenTokens(sample.recovery_wallet).call() == 150 * UNIT
    assert not token.functions.isFrozen(inv[6]).call() and not token.functions.paused().call()
    assert token.functions.uiMultiplier().call() == dc.SPLIT_MULTIPLIER
    assert token.functions.balanceOfUI(inv[0]).call() == expected[inv[0]] * 7  # balanceOf itself stays raw
    assert (token.functions.name().call(), token.functions.symbol().call()) == (dc.SAMPLE_NAME, dc.SAMPLE_NEW_SYMBOL)
    assert token.functions.decimals().call() == dc.SAMPLE_DECIMALS
    assert registry.functions.identity(sample.recovery_wallet).call() == sample.identities[5]
    assert not registry.functions.isVerified(inv[5]).call()
    assert not registry.functions.isVerified(inv[49]).call()
    assert registry.functions.investorCountry(inv[10]).call() == 826


def test_sample_logs_cover_every_sample_event(chain):
    w3, sample, steps, _, _, _ = chain
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": [sample.token, sample.registry]})
    names = topic_names(logs)
    assert "?" not in names
    assert set(names) == SAMPLE_EVENTS
    by_step = {s.name: s for s in steps}

    def receipt_events(step_name):
        receipt = w3.eth.get_transaction_receipt(by_step[step_name].tx_hashes[0])
        return topic_names(receipt["logs"])

    assert receipt_events("recovery") == [
        "IdentityRegistered", "TokensUnfrozen", "Transfer", "TokensFrozen", "IdentityRemoved", "RecoverySuccess",
    ]
    assert receipt_events("forced_transfer") == ["TokensUnfrozen", "Transfer"]
    assert receipt_events("redemption") == ["Transfer"]
    (split_log,) = w3.eth.get_transaction_receipt(by_step["stock_split"].tx_hashes[0])["logs"]
    assert len(split_log["topics"]) == 1 and len(split_log["data"]) == 96
    old, new, _effective_at = (int.from_bytes(split_log["data"][i : i + 32], "big") for i in (0, 32, 64))
    assert (old, new) == (10**18, dc.SPLIT_MULTIPLIER)


def test_historical_eth_call_sees_past_state(chain):
    """The indexer reads balanceOf/name/symbol at past block numbers."""
    w3, sample, steps, _, _, _ = chain
    token, _ = dc.sample_contracts(w3, sample)
    by_step = {s.name: s for s in steps}
    issued = by_step["issue"].blocks[-1]
    assert token.functions.balanceOf(sample.investors[0]).call(block_identifier=issued) == dc.issue_amount(0)
    assert token.functions.balanceOf(sample.investors[0]).call(block_identifier=by_step["issue"].blocks[0] - 1) == 0
    split = by_step["stock_split"].blocks[0]
    assert token.functions.uiMultiplier().call(block_identifier=split - 1) == 10**18
    assert token.functions.uiMultiplier().call(block_identifier=split) == dc.SPLIT_MULTIPLIER
    renamed = by_step["symbol_change"].blocks[0]
    assert token.functions.symbol().call(block_identifier=renamed - 1) == dc.SAMPLE_SYMBOL
    assert token.functions.symbol().call(block_identifier=renamed) == dc.SAMPLE_NEW_SYMBOL


# ------------------------------------------------------------------ T-REX suite


def test_trex_final_state_matches_reference(chain):
    w3, _, _, suite, steps, _ = chain
    token = w3.eth.contract(address=suite.token, abi=json.loads(TREX_TOKEN_ABI.read_text())["abi"])
    inv = suite.investors
    balances = {name: token.functions.balanceOf(inv[name]).call() for name in inv}
    assert balances == {"alice": 0, "bob": 100, "charlie": 250, "dave": 1140}
    frozen = {name: token.functions.getFrozenTokens(inv[name]).call() for name in inv}
    assert frozen == {"alice": 0, "bob": 100, "charlie": 0, "dave": 40}
    assert token.functions.totalSupply().call() == 1490
    assert (token.functions.name().call(), token.functions.symbol().call()) == ("Acme Equity Class A", "ACMEA")
    recovery_logs = w3.eth.get_transaction_receipt(steps[-1].tx_hashes[-1])["logs"]
    assert topic_names(recovery_logs) == [
        "IdentityStored", "IdentityRegistered", "TokensUnfrozen", "Transfer", "TokensFrozen",
        "IdentityUnstored", "IdentityRemoved", "RecoverySuccess",
    ]


def test_trex_logs_cover_the_erc3643_catalog(chain):
    w3, sample, _, suite, _, _ = chain
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
    logs = [log for log in logs if log["address"] not in (sample.token, sample.registry)]
    seen = {log["topics"][0].to_0x_hex() for log in logs if log["topics"]}
    missing = {sig for sig, topic in REFERENCE_TOPIC0.items()
               if sig != "UIMultiplierUpdated(uint256,uint256,uint256)" and topic not in seen}
    assert missing == set()


# ------------------------------------------------------------------ node behaviour the indexer relies on


def test_anvil_reorg_replaces_the_block_and_drops_its_logs():
    with dc.Anvil(extra_args=["--silent"]) as node:
        w3 = dc.connect(node.http_url)
        sample = dc.deploy_sample(w3)  # last tx: registry.addAgent(token) -> AgentAdded
        head = w3.eth.get_block("latest")
        assert topic_names(w3.eth.get_logs({"blockHash": head["hash"]})) == ["AgentAdded"]
        w3.provider.make_request("anvil_reorg", [1, []])
        replaced = w3.eth.get_block(head["number"])
        assert replaced["hash"] != head["hash"] and replaced["parentHash"] == head["parentHash"]
        assert w3.eth.get_logs({"fromBlock": head["number"], "toBlock": head["number"]}) == []
        _, registry = dc.sample_contracts(w3, sample)
        assert registry.functions.isAgent(sample.token).call() is False


def test_stop_leaves_no_process_even_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with dc.Anvil(extra_args=["--silent"]) as node:
            pid, log_path = node.pid, node.log_path
            assert pid_alive(pid) and int(dc.rpc_call(node.http_url, "eth_chainId"), 16) == dc.ANVIL_CHAIN_ID
            raise RuntimeError("boom")
    assert not pid_alive(pid)
    assert not log_path.exists()
    node.stop()  # idempotent


def test_start_failure_is_reported_and_cleaned_up():
    with pytest.raises(dc.DevchainError, match="anvil exited"):
        dc.Anvil(extra_args=["--no-such-anvil-flag"]).start()


def test_cli_runs_anvil_deploys_and_drives_both_tokens():
    script = str(ROOT / "scripts" / "devchain.py")
    proc = subprocess.Popen([sys.executable, script, "anvil", "--", "--silent"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the JSON block ends with a lone "}"
            line = proc.stdout.readline()
            assert line, "devchain.py anvil exited early"
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["ws_url"] == f"ws://127.0.0.1:{info['port']}" and pid_alive(info["pid"])

        def run(*args):
            out = subprocess.run([sys.executable, script, *args, "--rpc", info["http_url"]],
                                 check=True, timeout=120, capture_output=True, text=True)
            return json.loads(out.stdout)

        assert run("deploy-sample")["token"] == dc.SAMPLE_TOKEN_ADDRESS
        driven = run("drive-sample")
        assert driven["registry"] == dc.SAMPLE_REGISTRY_ADDRESS
        assert [s["name"] for s in driven["steps"]][-1] == "identity_removal"
        assert run("deploy-trex")["token"] == dc.TREX_TOKEN_ADDRESS
        trex = run("drive-trex")
        assert trex["identity_registry"] == dc.TREX_IDENTITY_REGISTRY_ADDRESS
        assert trex["steps"][-1]["name"] == "recovery"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert not pid_alive(info["pid"])
