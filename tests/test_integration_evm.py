"""End to end on a real anvil: the sample security token and a real T-REX (ERC-3643) suite, indexed by the
real CLI and daemon processes, compared with the chain's own balanceOf/totalSupply at past blocks."""

from __future__ import annotations

import json
import re
import shutil

import apsw
import pytest
from web3 import Web3

import devchain
from helpers import Daemon, assert_same_db, cli, cli_json, dump, write_config

ERC20_ABI = [
    {"name": "balanceOf", "type": "function", "stateMutability": "view", "inputs": [{"name": "a", "type": "address"}],
     "outputs": [{"name": "", "type": "uint256"}]},
    {"name": "totalSupply", "type": "function", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "uint256"}]},
]
TRANSFER = "0x" + Web3.keccak(text="Transfer(address,address,uint256)").hex().removeprefix("0x")


def tokens_config(sample: str, trex: str) -> list[dict]:
    return [{"address": sample, "profile": "erc3643", "label": "sample"},
            {"address": trex, "profile": "erc3643", "label": "trex"}]


@pytest.fixture(scope="module")
def chain():
    """One anvil with both tokens deployed and driven; block numbers of the interesting moments."""
    with devchain.Anvil() as anvil:
        w3 = devchain.connect(anvil.http_url)
        sample = devchain.deploy_sample(w3)
        marks = {}
        for result in devchain.run_steps(w3, devchain.sample_steps(w3, sample)):
            marks[result.name] = result.blocks[-1]
        suite = devchain.deploy_trex(w3)
        trex_marks = {r.name: r.blocks[-1] for r in devchain.drive_trex_activity(w3, suite) if r.blocks}
        yield {"anvil": anvil, "w3": w3, "sample": sample.token, "trex": suite.token, "marks": marks,
               "trex_marks": trex_marks, "head": w3.eth.block_number}


def holders_on_chain(w3: Web3, token: str, upto: int) -> set[str]:
    """Every address a Transfer of `token` ever touched, from the node's own logs."""
    out = set()
    for lg in w3.eth.get_logs({"fromBlock": 0, "toBlock": upto, "address": Web3.to_checksum_address(token),
                               "topics": [TRANSFER]}):
        for topic in lg["topics"][1:3]:
            out.add(Web3.to_checksum_address("0x" + topic.hex()[-40:]))
    out.discard("0x0000000000000000000000000000000000000000")
    return out


def assert_captable_matches_chain(config, w3: Web3, token: str, block: int) -> dict:
    table = cli_json(config, "captable", "--token", token, "--at-block", str(block), "--format", "json")
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=ERC20_ABI)
    indexed = {h["address"]: int(h["balance"]) for h in table["holders"]}
    for address in holders_on_chain(w3, token, block):
        on_chain = contract.functions.balanceOf(address).call(block_identifier=block)
        assert indexed.get(address, 0) == on_chain, f"{address} at block {block}: indexed {indexed.get(address)}, chain {on_chain}"
    assert all(v > 0 for v in indexed.values())
    assert int(table["total_supply"]) == contract.functions.totalSupply().call(block_identifier=block)
    assert table["block_number"] == block
    return table


@pytest.fixture(scope="module")
def backfilled(chain, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backfill")
    cfg = write_config(tmp / "config.toml", ws_url=chain["anvil"].ws_url, http_url=chain["anvil"].http_url,
                       tokens=tokens_config(chain["sample"], chain["trex"]), db=tmp / "idx.db")
    out = cli_json(cfg, "backfill", "--from", "0", "--to", str(chain["head"]))
    assert out["indexed_to"] == chain["head"]
    return cfg


def test_backfill_captable_matches_balanceof_at_several_blocks(chain, backfilled):
    w3 = chain["w3"]
    checked = 0
    for token, marks in ((chain["sample"], chain["marks"]), (chain["trex"], chain["trex_marks"])):
        for block in sorted(set(marks.values()) | {chain["head"]}):
            assert_captable_matches_chain(backfilled, w3, token, block)
            checked += 1
    assert checked >= 20


def test_sample_token_corporate_actions_and_state(chain, backfilled):
    marks = chain["marks"]
    head = cli_json(backfilled, "captable", "--token", chain["sample"], "--format", "json")
    assert head["name"] == devchain.SAMPLE_NAME and head["symbol"] == devchain.SAMPLE_NEW_SYMBOL
    assert head["decimals"] == 18 and head["multiplier"] == "7" and head["paused"] is False
    assert head["token"] == Web3.to_checksum_address(chain["sample"])
    assert len(head["block_hash"]) == 66
    for h in head["holders"]:
        assert int(h["adjusted_balance"]) == 7 * int(h["balance"])
    # shares are exact decimals that add up to one
    from decimal import Decimal
    assert abs(sum(Decimal(h["ownership"]) for h in head["holders"]) - 1) < Decimal(len(head["holders"])) / 10**18
    conn = apsw.Connection(json.loads(json.dumps(str(backfilled.parent / "idx.db"))), flags=apsw.SQLITE_OPEN_READONLY)
    actions = conn.execute("SELECT action_type, old_value, new_value, block_number FROM corporate_actions WHERE token=? "
                           "ORDER BY block_number, log_index", (chain["sample"].lower(),)).fetchall()
    kinds = [a[0] for a in actions]
    for kind in ("issuance", "redemption", "split", "symbol_change", "pause", "unpause", "recovery"):
        assert kind in kinds, f"{kind} missing from {sorted(set(kinds))}"
    split = [a for a in actions if a[0] == "split"]
    assert split[0][1:3] == ("1", "7")
    symbol = [a for a in actions if a[0] == "symbol_change"][0]
    assert symbol[1:3] == (devchain.SAMPLE_SYMBOL, devchain.SAMPLE_NEW_SYMBOL)
    # before the split the multiplier was 1; before the symbol change the old symbol
    names = sorted(marks, key=marks.get)
    before_split = marks[names[names.index(next(n for n in names if "split" in n)) - 1]]
    early = cli_json(backfilled, "captable", "--token", chain["sample"], "--at-block", str(before_split), "--format", "json")
    assert early["multiplier"] == "1"
    assert early["symbol"] == devchain.SAMPLE_SYMBOL
    registered = conn.execute("SELECT count(*) FROM holder_state WHERE token=? AND registered=1",
                              (chain["sample"].lower(),)).fetchall()[0][0]
    assert registered >= 45
    countries = conn.execute("SELECT count(*) FROM holder_state WHERE token=? AND country IS NOT NULL",
                             (chain["sample"].lower(),)).fetchall()[0][0]
    assert countries == 1  # registerIdentity emits no country; only the one updateCountry does
    assert conn.execute("SELECT count(*) FROM skipped_logs WHERE reason != 'unknown_event'").fetchall()[0][0] == 0
    conn.close()


def test_trex_state_matches_reference_scenario(chain, backfilled):
    table = cli_json(backfilled, "captable", "--token", chain["trex"], "--format", "json")
    assert (table["name"], table["symbol"]) == ("Acme Equity Class A", "ACMEA")
    assert table["decimals"] == 0
    w3 = chain["w3"]
    contract = w3.eth.contract(address=Web3.to_checksum_address(chain["trex"]), abi=ERC20_ABI + [
        {"name": "getFrozenTokens", "type": "function", "stateMutability": "view",
         "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
        {"name": "isFrozen", "type": "function", "stateMutability": "view",
         "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "bool"}]}])
    for h in table["holders"]:
        assert int(h["frozen_amount"]) == contract.functions.getFrozenTokens(h["address"]).call()
        assert h["frozen"] == contract.functions.isFrozen(h["address"]).call()
    assert any(int(h["frozen_amount"]) > 0 for h in table["holders"])


def test_verify_is_clean_and_catches_an_edited_balance(chain, backfilled, tmp_path):
    out = cli(backfilled, "verify", "--format", "json")
    result = json.loads(out.stdout)
    assert result["mismatches"] == [] and result["holders_checked"] > 50
    # a deliberately wrong balance in a copy of the database
    db = tmp_path / "bad.db"
    shutil.copy(backfilled.parent / "idx.db", db)
    cfg = write_config(tmp_path / "bad.toml", ws_url=chain["anvil"].ws_url, http_url=chain["anvil"].http_url,
                       tokens=tokens_config(chain["sample"], chain["trex"]), db=db)
    conn = apsw.Connection(str(db))
    holder = conn.execute("SELECT holder, id FROM balance_ledger WHERE token=? ORDER BY id DESC LIMIT 1",
                          (chain["sample"].lower(),)).fetchall()[0]
    conn.execute("UPDATE balance_ledger SET balance=? WHERE id=?", ("0" * 70 + "12345678", holder[1]))
    conn.close()
    bad = cli(cfg, "verify", check=False)
    assert bad.returncode == 1
    assert Web3.to_checksum_address(holder[0]) in bad.stdout


def test_backfill_is_idempotent_and_resumable(chain, backfilled, tmp_path):
    head = chain["head"]
    before = dump(backfilled.parent / "idx.db")
    cli(backfilled, "backfill", "--from", "0", "--to", str(head))
    cli(backfilled, "backfill", "--from", "10", "--to", str(head - 5))
    assert dump(backfilled.parent / "idx.db") == before
    # the same chain indexed in two pieces ends in the same database
    cfg = write_config(tmp_path / "c.toml", ws_url=chain["anvil"].ws_url, http_url=chain["anvil"].http_url,
                       tokens=tokens_config(chain["sample"], chain["trex"]), db=tmp_path / "two.db")
    cli(cfg, "backfill", "--from", "0", "--to", str(head // 2))
    gap = cli(cfg, "backfill", "--from", str(head // 2 + 5), "--to", str(head), check=False)
    assert gap.returncode == 2 and "gap" in gap.stderr
    cli(cfg, "backfill", "--from", str(head // 3), "--to", str(head))
    assert_same_db(backfilled.parent / "idx.db", tmp_path / "two.db")
    beyond = cli(cfg, "backfill", "--from", "0", "--to", str(head + 1000), check=False)
    assert beyond.returncode == 2 and "beyond" in beyond.stderr


def test_status_reports_cursor_head_and_counts(chain, backfilled):
    status = cli_json(backfilled, "status", "--format", "json")
    assert status["cursor"]["block_number"] == chain["head"]
    assert status["head"] >= chain["head"] and status["lag_blocks"] >= 0
    assert status["counts"]["events"] > 100 and status["holders"] > 40


def test_run_started_before_activity_equals_backfill(tmp_path):
    """The daemon follows a chain from before the tokens exist; a later backfill of the same blocks
    must produce the very same database."""
    with devchain.Anvil() as anvil:
        tokens = tokens_config(devchain.SAMPLE_TOKEN_ADDRESS, devchain.TREX_TOKEN_ADDRESS)
        cfg = write_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=tokens,
                           db=tmp_path / "run.db")
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            w3 = devchain.connect(anvil.http_url)
            daemon.wait_for_block(0, timeout=30)
            sample = devchain.deploy_sample(w3)
            assert sample.token == devchain.SAMPLE_TOKEN_ADDRESS
            for _ in devchain.run_steps(w3, devchain.sample_steps(w3, sample)):
                pass
            suite = devchain.deploy_trex(w3)
            devchain.drive_trex_activity(w3, suite)
            head = w3.eth.block_number
            daemon.wait_for_block(head, timeout=60)
            assert daemon.terminate() == 0
            log_text = daemon.log_path.read_text()
            assert "Traceback" not in log_text
        back = write_config(tmp_path / "back.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=tokens,
                            db=tmp_path / "back.db")
        cli(back, "backfill", "--from", "0", "--to", str(head))
        assert_same_db(tmp_path / "run.db", tmp_path / "back.db")
        assert json.loads(cli(cfg, "verify", "--format", "json").stdout)["mismatches"] == []


def test_daemon_audits_itself_every_verify_interval(tmp_path):
    from helpers import free_port, metric_value, scrape
    with devchain.Anvil() as anvil:
        w3 = devchain.connect(anvil.http_url)
        sample = devchain.deploy_sample(w3)
        for _ in devchain.run_steps(w3, devchain.sample_steps(w3, sample)[:3]):
            pass
        port = free_port()
        cfg = write_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url,
                           tokens=[{"address": sample.token, "profile": "erc3643"}], db=tmp_path / "run.db",
                           chain={"verify_interval": 1}, metrics_listen=f"127.0.0.1:{port}")
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            daemon.wait_for_block(w3.eth.block_number)
            import time
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = scrape(f"http://127.0.0.1:{port}/metrics")
                if metric_value(text, "indexer_verify_last_run_timestamp_seconds") > 0:
                    break
                time.sleep(0.3)
            assert metric_value(text, "indexer_verify_last_run_timestamp_seconds") > 0, daemon.log_tail()
            assert metric_value(text, "indexer_verify_mismatches") == 0
            assert daemon.terminate() == 0
        conn = apsw.Connection(str(tmp_path / "run.db"), flags=apsw.SQLITE_OPEN_READONLY)
        runs = conn.execute("SELECT block_number, holders_checked, mismatches FROM verify_runs").fetchall()
        conn.close()
        assert runs and all(r[2] == 0 and r[1] >= 50 for r in runs)


def test_backfill_progress_bar_on_a_terminal_log_lines_otherwise(chain, tmp_path):
    tokens = tokens_config(chain["sample"], chain["trex"])
    head = str(chain["head"])
    bar_cfg = write_config(tmp_path / "bar.toml", ws_url=chain["anvil"].ws_url, http_url=chain["anvil"].http_url,
                           tokens=tokens, db=tmp_path / "bar.db")
    bar = cli(bar_cfg, "backfill", "--from", "0", "--to", head, "--progress")
    # (text mode turns the bar's carriage returns into newlines)
    assert re.search(r"\[[#.]{30}\] block \d+/" + head + r" .*events/s  ETA", bar.stderr), bar.stderr
    log_cfg = write_config(tmp_path / "log.toml", ws_url=chain["anvil"].ws_url, http_url=chain["anvil"].http_url,
                           tokens=tokens, db=tmp_path / "log.db")
    plain = cli(log_cfg, "backfill", "--from", "0", "--to", head, "--no-progress")
    lines = [json.loads(line) for line in plain.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["msg"].startswith("backfill at block")]
    assert progress and "events/s" in progress[0]["msg"] and "ETA" in progress[0]["msg"]
    assert progress[0]["chain"] == "devchain" and "block_number" in progress[0]
    assert not re.search(r"\[[#.]{30}\]", plain.stderr)
    summary = json.loads(plain.stdout)
    assert summary["indexed_to"] == chain["head"] and summary["events"] > 100
