"""End to end on the local Solana node (scripts/solana_localnet: real SPL Token and Token-2022 programs in
LiteSVM behind a JSON-RPC + WebSocket server on 127.0.0.1): the Token-2022 security scenario driven while
the real daemon (`python -m indexer run`, a subprocess) follows at `confirmed`, checked against the node's
own account state, against the balances recorded during the scenario, and against a fresh backfill of the
final chain after a rollback of confirmed slots, dropped WebSockets and kill -9 of the daemon."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

import apsw
import pytest

from helpers import ROOT, Daemon, assert_same_db, cli, cli_json, db_cursor

sys.path.insert(0, str(ROOT / "scripts"))
from solana_localnet import ChainConfig, start_localnet  # noqa: E402

from indexer.captable import captable  # noqa: E402

GENESIS_TIME = 1_780_000_000
CHAIN = "localnet"


# ---- the node, over its real HTTP JSON-RPC ----------------------------------------------------------


class Rpc:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, method: str, *params: object) -> object:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise AssertionError(f"{method} {params}: {reply['error']}")
        return reply["result"]


@pytest.fixture
def node():
    net = start_localnet(config=ChainConfig(genesis_unix_time=GENESIS_TIME))
    try:
        yield net, Rpc(net.http_url)
    finally:
        net.stop()


def step(rpc: Rpc, name: str, args: dict | None = None) -> dict:
    out = rpc("localnet_scenario", name, args or {})
    assert name in ("balances", "describe") or out.get("slot") is not None, out
    return out


def confirmed(rpc: Rpc, level: str = "confirmed") -> int:
    return rpc("localnet_status")[level]


def write_solana_config(path: Path, net, db: Path, commitment: str = "confirmed") -> Path:
    mints = [str(net.scenario.mint), str(net.scenario.classic_mint_pubkey)]
    lines = ["[database]", f"path = {json.dumps(str(db))}", "", "[chain]", 'kind = "solana"', f'name = "{CHAIN}"',
             f"ws_url = {json.dumps(net.ws_url)}", f"http_url = {json.dumps(net.http_url)}",
             f'commitment = "{commitment}"', "stall_timeout = 20", "request_timeout = 10"]
    for i, mint in enumerate(mints):
        lines += ["", "[[tokens]]", f'address = "{mint}"', f'label = "{"security" if i == 0 else "classic"}"']
    lines += ["", "[metrics]", 'listen = "127.0.0.1:0"', "", "[logging]", 'level = "INFO"', 'format = "json"']
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_caught_up(daemon: Daemon, rpc: Rpc, timeout: float = 30.0, level: str = "confirmed") -> int:
    """Until the daemon's cursor is the node's slot at `level` (the node is quiet)."""
    deadline = time.monotonic() + timeout
    target = confirmed(rpc, level)
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log_tail()}")
        if daemon.cursor() == target:
            return target
        time.sleep(0.1)
    raise AssertionError(f"daemon did not reach {level} slot {target} within {timeout}s (at {daemon.cursor()}):\n"
                         f"{daemon.log_tail()}")


def backfill_copy(tmp: Path, net, rpc: Rpc, name: str) -> Path:
    """A fresh database of the same chain by `indexer backfill` from genesis to the confirmed slot."""
    cfg = write_solana_config(tmp / f"{name}.toml", net, tmp / f"{name}.db")
    out = cli_json(cfg, "backfill", "--from", "0", "--to", str(confirmed(rpc)))
    assert out["indexed_to"] == confirmed(rpc)
    return tmp / f"{name}.db"


def read_db(path: Path):
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)


def table_at(db: Path, mint: str, slot: int | None = None) -> dict:
    conn = read_db(db)
    try:
        return captable(conn, CHAIN, mint, slot)
    finally:
        conn.close()


def node_balance(rpc: Rpc, owner: str, mint: str) -> int:
    accounts = rpc("getTokenAccountsByOwner", owner, {"mint": mint}, {"encoding": "jsonParsed",
                                                                       "commitment": "confirmed"})["value"]
    return sum(int(a["account"]["data"]["parsed"]["info"]["tokenAmount"]["amount"]) for a in accounts)


def assert_balances_match_node(db: Path, rpc: Rpc, mints: list[str]) -> None:
    conn = read_db(db)
    try:
        for mint in mints:
            owners = {a: int(b) for a, b in conn.execute("SELECT address, balance FROM balances WHERE token=?",
                                                         (mint,))}
            assert owners, f"no holders indexed for {mint}"
            for owner, indexed in owners.items():
                assert indexed == node_balance(rpc, owner, mint), f"{owner} in {mint}"
            supply = rpc("getTokenSupply", mint, {"commitment": "confirmed"})["value"]["amount"]
            state = conn.execute("SELECT total_supply FROM token_state WHERE token=?", (mint,)).fetchall()
            assert state[0][0] == supply, f"total supply of {mint}"
    finally:
        conn.close()


def assert_no_traceback(daemon: Daemon) -> None:
    text = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in text, daemon.log_tail(80)


# ---- the scenario while the daemon follows ---------------------------------------------------------


def test_daemon_follows_the_security_scenario(node, tmp_path):
    net, rpc = node
    mint, classic = str(net.scenario.mint), str(net.scenario.classic_mint_pubkey)
    cfg = write_solana_config(tmp_path / "run.toml", net, tmp_path / "run.db")
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_block(0, timeout=30)
        results: dict[str, dict] = {}
        snapshots: list[tuple[int, dict]] = []  # (slot, on-chain balances right after it)
        script = [
            ("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice", "bob", "carol"]}),
            ("issue", {"holder": "alice", "amount": 1_000_000_000}),
            ("transfer", {"from": "alice", "to": "bob", "amount": 250_000_000}),
            ("freeze", {"holder": "bob"}),
            ("transfer!frozen", {"from": "bob", "to": "carol", "amount": 1_000_000}),
            ("thaw", {"holder": "bob"}),
            ("schedule_multiplier", {"multiplier": 2.0, "delaySeconds": 60}),
            ("update_metadata", {"field": "symbol", "value": "ACMEx2"}),
            ("update_metadata:name", {"field": "name", "value": "Acme Corp Tokenized Share (split)"}),
            ("pause", {}),
            ("transfer!paused", {"from": "alice", "to": "carol", "amount": 5}),
            ("resume", {}),
            ("seize", {"from": "bob", "to": "alice", "amount": 50_000_000}),
            ("redeem", {"holder": "alice", "amount": 100_000_000}),
            ("batch", {"holder": "alice", "to": "carol", "issueAmount": 10_000, "transferAmount": 4_000}),
            ("v0_transfer", {"from": "carol", "to": "bob", "amount": 1_000}),
            ("lookup_table_transfer", {"from": "bob", "to": "carol", "amount": 2_000}),
            ("classic_mint", {"holders": ["alice", "bob"], "amount": 1_000_000}),
            ("classic_transfer", {"from": "alice", "to": "bob", "amount": 400_000}),
        ]
        for label, args in script:
            results[label] = step(rpc, label.split("!")[0].split(":")[0], args)
            if label in ("transfer", "thaw", "schedule_multiplier", "seize", "batch"):
                snapshots.append((results[label]["slot"], step(rpc, "balances")))
            if label == "freeze":
                rpc("localnet_skipSlots", 3)  # leaders without blocks
            if label == "pause":
                # a short burst of HTTP 429 with Retry-After: backed off, never a gap
                rpc("localnet_failNextRequests", {"count": 3, "mode": "429", "retryAfter": 1})
        effective = results["schedule_multiplier"]["effectiveTimestamp"]
        # the scheduled 2-for-1 takes effect by time alone: move the clock past it, then one more transfer
        rpc("localnet_setClock", {"unixTimestamp": effective + 1})
        results["after_split"] = step(rpc, "transfer", {"from": "alice", "to": "bob", "amount": 1})
        snapshots.append((results["after_split"]["slot"], step(rpc, "balances")))
        rpc("localnet_produceBlock", {"count": 2})  # the last scenario block becomes confirmed
        head = wait_caught_up(daemon, rpc)

        db = tmp_path / "run.db"
        describe = step(rpc, "describe")
        wallet = {name: h["wallet"] for name, h in describe["holders"].items()}
        assert_balances_match_node(db, rpc, [mint, classic])

        # the cap table at earlier slots equals the balances the node had right after those slots
        for slot, snap in snapshots:
            table = table_at(db, mint, slot)
            expected = {wallet[k.split(":")[1]]: v for k, v in snap["onchain"].items()
                        if k.startswith("security:") and v > 0}
            assert {h["address"]: int(h["balance"]) for h in table["holders"]} == expected, slot
            assert int(table["total_supply"]) == snap["supply"]

        # the scheduled multiplier: 1 before its timestamp (pending 2), 2 from it on
        before = cli_json(cfg, "captable", "--token", mint, "--at-block", str(results["schedule_multiplier"]["slot"]),
                          "--format", "json")
        assert before["multiplier"] == "1"
        assert before["pending_multiplier"] == {"multiplier": "2", "effective_at": effective}
        assert before["block_timestamp"] < effective
        after = cli_json(cfg, "captable", "--token", mint, "--at-block", str(results["after_split"]["slot"]),
                         "--format", "json")
        assert after["multiplier"] == "2" and after["block_timestamp"] >= effective
        assert all(int(h["adjusted_balance"]) == 2 * int(h["balance"]) for h in after["holders"])
        assert (after["name"], after["symbol"], after["decimals"]) == ("Acme Corp Tokenized Share (split)", "ACMEx2", 6)
        assert before["symbol"] == "ACMEx"

        conn = read_db(db)
        try:
            actions = [(a, o, n) for a, o, n in conn.execute(
                "SELECT action_type, old_value, new_value FROM corporate_actions WHERE token=? AND action_type IN "
                "('issuance','redemption','split','symbol_change','name_change','pause','unpause') "
                "ORDER BY block_number, log_index", (mint,))]
            assert actions == [
                ("issuance", "0", "1000000000"),
                ("split", "1", "2"),
                ("symbol_change", "ACMEx", "ACMEx2"),
                ("name_change", "Acme Corp Tokenized Share", "Acme Corp Tokenized Share (split)"),
                ("pause", "false", "true"),
                ("unpause", "true", "false"),
                ("redemption", "1000000000", "900000000"),
                ("issuance", "900000000", "900010000"),
            ]
            split = conn.execute("SELECT block_number, data FROM corporate_actions WHERE token=? AND "
                                 "action_type='split'", (mint,)).fetchall()
            assert split[0][0] == results["schedule_multiplier"]["slot"]
            assert json.loads(split[0][1])["effective_at"] == effective

            def events_of(signature: str) -> list[tuple]:
                return conn.execute("SELECT token, event_type, from_address, to_address, amount FROM events "
                                    "WHERE transaction_hash=? ORDER BY pos", (signature,)).fetchall()

            for failed in ("transfer!frozen", "transfer!paused"):  # landed with an error, moved nothing
                assert results[failed]["err"] is not None
                assert events_of(results[failed]["signature"]) == []
            # the plain Tokenkeg `transfer` names no mint: attributed from the ledger's token balances
            assert events_of(results["classic_transfer"]["signature"]) == [
                (classic, "transfer", wallet["alice"], wallet["bob"], "400000")]
            assert events_of(results["seize"]["signature"]) == [
                (mint, "seizure", wallet["bob"], wallet["alice"], "50000000")]
            frozen = conn.execute("SELECT frozen FROM holder_state_history WHERE token=? AND address=? "
                                  "ORDER BY block_number", (mint, wallet["bob"])).fetchall()
            assert [f for (f,) in frozen] == [1, 0]
        finally:
            conn.close()

        # the self-audit agrees at the head and refuses a past slot (no historical account reads)
        audit = json.loads(cli(cfg, "verify", "--format", "json").stdout)
        assert audit["ok"] and audit["block_number"] == head and audit["holders_checked"] == 5
        past = cli(cfg, "verify", "--at-block", str(results["transfer"]["slot"]), check=False)
        assert past.returncode == 2 and "newest slot" in past.stderr

        assert daemon.terminate() == 0
        assert_no_traceback(daemon)

    # a deliberately wrong balance in a copy of the database is found and named
    bad = tmp_path / "bad.db"
    shutil.copy(tmp_path / "run.db", bad)
    conn = apsw.Connection(str(bad))
    holder, row = conn.execute("SELECT holder, id FROM balance_ledger WHERE token=? ORDER BY id DESC LIMIT 1",
                               (mint,)).fetchall()[0]
    conn.execute("UPDATE balance_ledger SET balance=? WHERE id=?", ("0" * 70 + "12345678", row))
    conn.close()
    caught = cli(write_solana_config(tmp_path / "bad.toml", net, bad), "verify", check=False)
    assert caught.returncode == 1 and f"MISMATCH {mint} {holder}: indexed 12345678" in caught.stdout

    assert_same_db(tmp_path / "run.db", backfill_copy(tmp_path, net, rpc, "backfill"))


# ---- a rollback of confirmed slots ------------------------------------------------------------------


def test_rollback_of_confirmed_slots_equals_backfill_of_the_final_chain(node, tmp_path):
    net, rpc = node
    rpc("localnet_setCommitmentLags", {"confirmed": 1, "finalized": 6})  # room for unrooted confirmed blocks
    for name, args in (("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice", "bob", "carol"]}),
                       ("issue", {"holder": "alice", "amount": 1_000_000})):
        step(rpc, name, args)
    cfg = write_solana_config(tmp_path / "run.toml", net, tmp_path / "run.db")
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        # branch A: indexed at confirmed, then abandoned
        step(rpc, "transfer", {"from": "alice", "to": "bob", "amount": 100})
        step(rpc, "pause")
        step(rpc, "update_metadata", {"field": "symbol", "value": "OLD"})
        rpc("localnet_produceBlock")
        abandoned = wait_caught_up(daemon, rpc)
        dropped = rpc("localnet_rollback", {"count": 4, "reuseSlots": True})["droppedSlots"]
        assert abandoned in dropped
        # branch B: same slot numbers, other blocks
        step(rpc, "transfer", {"from": "alice", "to": "carol", "amount": 700})
        step(rpc, "issue", {"holder": "bob", "amount": 5})
        step(rpc, "update_metadata", {"field": "symbol", "value": "NEW"})
        rpc("localnet_produceBlock", {"count": 8})  # everything rooted
        wait_caught_up(daemon, rpc)
        assert daemon.terminate() == 0
        assert_no_traceback(daemon)
    log_text = daemon.log_path.read_text()
    assert "reorg: rolling back" in log_text
    db = tmp_path / "run.db"
    assert_balances_match_node(db, rpc, [str(net.scenario.mint)])
    conn = read_db(db)
    try:
        assert conn.execute("SELECT count(*) FROM corporate_actions WHERE action_type='pause'").fetchall()[0][0] == 0
        assert conn.execute("SELECT symbol FROM token_state WHERE token=?", (str(net.scenario.mint),)).fetchall() == [
            ("NEW",)]
    finally:
        conn.close()
    assert_same_db(db, backfill_copy(tmp_path, net, rpc, "backfill"))


# ---- dropped WebSockets and kill -9 during activity ------------------------------------------------


def test_dropped_websockets_and_kill9_end_in_the_same_database(node, tmp_path):
    net, rpc = node
    for name, args in (("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice", "bob", "carol"]}),
                       ("issue", {"holder": "alice", "amount": 10_000_000}),
                       ("issue", {"holder": "bob", "amount": 10_000_000}),
                       ("issue", {"holder": "carol", "amount": 10_000_000})):
        step(rpc, name, args)
    cfg = write_solana_config(tmp_path / "run.toml", net, tmp_path / "run.db")
    stop = threading.Event()
    errors: list[BaseException] = []

    def activity() -> None:
        names = ["alice", "bob", "carol"]
        try:
            for i in range(5000):  # until the main thread is done with its faults (bounded by its deadline)
                if stop.is_set():
                    return
                source, dest = names[i % 3], names[(i + 1) % 3]
                step(rpc, "transfer", {"from": source, "to": dest, "amount": 1 + i % 7})
                if i % 11 == 5:
                    rpc("localnet_skipSlots", 1 + i % 3)
                if i % 17 == 3:
                    step(rpc, "issue", {"holder": dest, "amount": 1_000})
                if i % 13 == 8:  # after a restart too: the permanent delegate comes back from the database
                    step(rpc, "seize", {"from": dest, "to": source, "amount": 3})
                time.sleep(0.02)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=activity, daemon=True)
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    kills = drops = 0
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while (kills < 3 or drops < 2) and time.monotonic() < deadline and worker.is_alive():
            start = db_cursor(tmp_path / "run.db") or 0
            while (db_cursor(tmp_path / "run.db") or 0) < start + 6 and time.monotonic() < deadline:
                assert daemon.proc.poll() is None, daemon.log_tail()
                time.sleep(0.05)
            if drops <= kills and drops < 2:
                assert rpc("localnet_dropWebsockets", {"mode": "abort"})["dropped"] >= 1
                rpc("localnet_failNextRequests", {"count": 2, "mode": "blockNotAvailable"})
                drops += 1
            else:
                daemon.kill9()
                kills += 1
                daemon = Daemon(cfg, tmp_path / "daemon.log")
        assert (kills, drops) == (3, 2), f"only {kills} kills and {drops} drops before the activity ended"
        stop.set()
        worker.join(30)
        assert not worker.is_alive() and not errors, errors
        rpc("localnet_produceBlock", {"count": 2})
        wait_caught_up(daemon, rpc, timeout=60)
        assert daemon.terminate() == 0
    finally:
        stop.set()
        if daemon.proc.poll() is None:
            daemon.kill9()
    log_text = daemon.log_path.read_text()
    assert "reconnecting" in log_text
    db = tmp_path / "run.db"
    assert_balances_match_node(db, rpc, [str(net.scenario.mint)])
    conn = read_db(db)
    try:
        seizures = conn.execute("SELECT count(*) FROM events WHERE event_type='seizure'").fetchall()[0][0]
    finally:
        conn.close()
    assert seizures >= 3
    assert_same_db(db, backfill_copy(tmp_path, net, rpc, "backfill"))


# ---- a mint created before start_block ---------------------------------------------------------------


def test_mint_first_seen_after_its_creation_is_described_from_the_node(node, tmp_path):
    net, rpc = node
    mint = str(net.scenario.mint)
    for name, args in (("setup", {}), ("create_mint", {"decimals": 4}), ("create_holders", {"holders": ["alice"]})):
        created = step(rpc, name, args)
    issued = step(rpc, "issue", {"holder": "alice", "amount": 12_345})
    rpc("localnet_produceBlock")
    cfg = write_solana_config(tmp_path / "late.toml", net, tmp_path / "late.db")
    cfg.write_text(cfg.read_text().replace('commitment = "confirmed"',
                                           f'commitment = "confirmed"\nstart_block = {created["slot"] + 1}'))
    cli(cfg, "backfill", "--from", str(created["slot"] + 1), "--to", str(confirmed(rpc)))
    table = table_at(tmp_path / "late.db", mint)
    # initializeMint and the metadata were before start_block: read from the mint account (getAccountInfo)
    assert (table["name"], table["symbol"], table["decimals"]) == ("Acme Corp Tokenized Share", "ACMEx", 4)
    assert table["holders"][0]["balance"] == "12345" and table["block_number"] >= issued["slot"]


# ---- finalized: woken by rootSubscribe, rooted slots only --------------------------------------------


def test_daemon_at_finalized_follows_roots(node, tmp_path):
    net, rpc = node
    cfg = write_solana_config(tmp_path / "fin.toml", net, tmp_path / "fin.db", commitment="finalized")
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_block(0, timeout=30)
        for name, args in (("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice", "bob"]}),
                           ("issue", {"holder": "alice", "amount": 500}),
                           ("transfer", {"from": "alice", "to": "bob", "amount": 200})):
            last = step(rpc, name, args)
        assert daemon.cursor() < last["slot"]  # not rooted yet: not indexed
        rpc("localnet_produceBlock", {"count": 2})  # the transfer is rooted now
        assert wait_caught_up(daemon, rpc, level="finalized") == last["slot"]
        assert daemon.terminate() == 0
        assert_no_traceback(daemon)
    assert_balances_match_node(tmp_path / "fin.db", rpc, [str(net.scenario.mint)])
