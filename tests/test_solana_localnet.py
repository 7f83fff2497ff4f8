"""The local Solana node (scripts/solana_localnet) against real recorded RPC responses
(tests/data/solana, see its README): same keys and value types, recursively; plus skipped
slots, commitment, rollback, WebSocket notifications over a real socket, fault injection,
the Token-2022 security scenario and the command-line entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import TransferParams
from solders.system_program import transfer as system_transfer
from solders.token.associated import get_associated_token_address
from solders.transaction import Transaction
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "solana"
sys.path.insert(0, str(ROOT / "scripts"))

from solana_localnet import ChainConfig, start_localnet  # noqa: E402
from solana_localnet import token_ix as T  # noqa: E402
from solana_localnet.parse_token import parse_token  # noqa: E402
from solana_localnet.programs import COMPUTE_BUDGET_PROGRAM, TOKEN_2022_PROGRAM, TOKEN_PROGRAM  # noqa: E402

GENESIS_TIME = 1_780_000_000
# Fields agave itself skips when absent: costUnits (cost model not emulated here) and
# returnData (only recorded when a program returned non-empty data).
OPTIONAL_META = {"costUnits", "returnData"}
# Ledger token balances store a zero uiAmount as null (the devnet recording shows it).
NULLABLE_FLOATS = {"uiAmount"}


def recorded(name: str) -> dict:
    data = json.loads((DATA / name).read_text())
    return data["result"] if "result" in data else data


class RpcCallError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Rpc:
    def __init__(self, url: str):
        self.url = url

    def raw(self, body: object) -> tuple[int, dict, object]:
        request = urllib.request.Request(self.url, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read() or b"null")

    def __call__(self, method: str, *params: object) -> object:
        _, _, reply = self.raw({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        if "error" in reply:
            raise RpcCallError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]


def kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "object"}[type(value)]


def _counterpart(item: object, real: list) -> object | None:
    """The recorded list element to compare `item` with: same instruction type or same keys."""
    if not isinstance(item, dict):
        return real[0]
    if isinstance(item.get("parsed"), dict):
        same = [r for r in real if isinstance(r, dict) and isinstance(r.get("parsed"), dict)
                and r["parsed"].get("type") == item["parsed"].get("type")]
    else:
        same = [r for r in real if isinstance(r, dict) and set(r) == set(item)]
    return same[0] if same else None


def assert_same_shape(ours: object, real: object, path: str = "$", optional: frozenset = frozenset()) -> None:
    """Same keys and value types, recursively. A list element is compared with the recorded
    element of the same instruction type (or key set); elements with no counterpart in the
    recording (e.g. an instruction type it does not contain) cannot be checked there."""
    if path.rsplit(".", 1)[-1] in NULLABLE_FLOATS and {kind(ours), kind(real)} <= {"null", "float"}:
        return
    assert kind(ours) == kind(real), f"{path}: {kind(ours)} != recorded {kind(real)}"
    if isinstance(real, dict):
        missing = set(real) - set(ours) - optional
        extra = set(ours) - set(real)
        assert not missing and not extra, f"{path}: missing {sorted(missing)}, extra {sorted(extra)}"
        for key in set(ours) & set(real):
            assert_same_shape(ours[key], real[key], f"{path}.{key}", optional)
    elif isinstance(real, list) and real and ours:
        for i, item in enumerate(ours):
            counterpart = _counterpart(item, real)
            if counterpart is not None:
                assert_same_shape(item, counterpart, f"{path}[{i}]", optional)


def instruction_of(instructions: list[dict], ix_type: str) -> dict:
    return next(ix for ix in instructions if ix.get("parsed", {}).get("type") == ix_type)


def finalize(rpc: Rpc, blocks: int = 3) -> None:
    rpc("localnet_produceBlock", {"count": blocks})


@pytest.fixture(scope="module")
def story():
    """One node that has played the whole scenario (read-only for the tests using it)."""
    node = start_localnet(config=ChainConfig(genesis_unix_time=GENESIS_TIME))
    try:
        rpc = Rpc(node.http_url)
        result = rpc("localnet_scenario", "run_all", {})
        finalize(rpc)
        steps: dict[str, dict] = {}  # first result per step name; "name!" for a failed one
        for step in result["steps"]:
            steps.setdefault(step["step"] + ("!" if step["err"] else ""), step)
        yield node, rpc, steps, result
    finally:
        node.stop()


@pytest.fixture()
def fresh():
    node = start_localnet(config=ChainConfig(genesis_unix_time=GENESIS_TIME))
    try:
        yield node, Rpc(node.http_url)
    finally:
        node.stop()


# ---- shapes against recorded responses ---------------------------------------------------


def test_get_transaction_transfer_checked_matches_mainnet_recording(story):
    _, rpc, steps, _ = story
    real = recorded("explorer_mainnet_getTransaction_usdc_transferChecked_durable_nonce.json")
    ours = rpc("getTransaction", steps["transfer"]["signature"],
               {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0})

    assert set(ours) == set(real)
    assert set(real["meta"]) - set(ours["meta"]) <= OPTIONAL_META
    for key in ("blockTime", "slot", "transactionIndex", "version"):
        assert_same_shape(ours[key], real[key], key)
    ours_message = {k: v for k, v in ours["transaction"]["message"].items() if k != "instructions"}
    real_message = {k: v for k, v in real["transaction"]["message"].items() if k != "instructions"}
    assert_same_shape(ours_message, real_message, "message")
    assert_same_shape(ours["meta"], real["meta"], "meta", frozenset(OPTIONAL_META))
    ix = instruction_of(ours["transaction"]["message"]["instructions"], "transferChecked")
    assert_same_shape(ix, instruction_of(real["transaction"]["message"]["instructions"], "transferChecked"), "ix")
    assert ix["program"] == "spl-token" and ix["programId"] == str(TOKEN_2022_PROGRAM)
    assert ix["parsed"]["info"]["tokenAmount"] == {"amount": "250000000", "decimals": 6, "uiAmount": 250.0,
                                                   "uiAmountString": "250"}
    assert ours["meta"]["err"] is None and ours["meta"]["status"] == {"Ok": None}
    assert ours["version"] == "legacy"


def test_ata_create_idempotent_inner_instructions_match_devnet_recording(story):
    node, rpc, _, _ = story
    real = recorded("explorer_devnet_getTransaction_ata_createIdempotent_inner.json")
    scenario, chain = node.scenario, node.chain
    wallet = Keypair().pubkey()
    ata = get_associated_token_address(wallet, scenario.classic_mint_pubkey, TOKEN_PROGRAM)
    payer = scenario.payer
    # As in the recording: the ATA address already holds lamports, so the ATA program
    # tops it up and uses transfer + allocate + assign instead of createAccount.
    prefund = Transaction([payer], Message([system_transfer(TransferParams(
        from_pubkey=payer.pubkey(), to_pubkey=ata, lamports=890_880))], payer.pubkey()), chain.latest_blockhash())
    chain.produce_block([prefund])
    ixs = [system_transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=wallet, lamports=1_000_000)),
           T.create_associated_token_account(payer.pubkey(), wallet, scenario.classic_mint_pubkey, TOKEN_PROGRAM,
                                             idempotent=True)]
    tx = Transaction([payer], Message(ixs, payer.pubkey()), chain.latest_blockhash())
    record = chain.produce_block([tx]).block.transactions[0]
    finalize(rpc)
    ours = rpc("getTransaction", record.signature, {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0})

    assert set(ours) == set(real)
    assert_same_shape(ours["meta"], real["meta"], "meta", frozenset(OPTIONAL_META))
    ours_inner, real_inner = ours["meta"]["innerInstructions"], real["meta"]["innerInstructions"]
    assert [i["index"] for i in ours_inner] == [i["index"] for i in real_inner] == [1]
    ours_types = [ix["parsed"]["type"] for ix in ours_inner[0]["instructions"]]
    real_types = [ix["parsed"]["type"] for ix in real_inner[0]["instructions"]]
    assert ours_types == real_types
    for mine, theirs in zip(ours_inner[0]["instructions"], real_inner[0]["instructions"]):
        assert_same_shape(mine, theirs, f"inner.{theirs['parsed']['type']}")
        assert mine["stackHeight"] == 2
    for t in ("transfer", "createIdempotent"):
        assert_same_shape(instruction_of(ours["transaction"]["message"]["instructions"], t),
                          instruction_of(real["transaction"]["message"]["instructions"], t), t)
    assert ours["meta"]["preTokenBalances"] == []
    (post,) = ours["meta"]["postTokenBalances"]
    assert ours["transaction"]["message"]["accountKeys"][post["accountIndex"]]["pubkey"] == str(ata)
    assert post["owner"] == str(wallet) and post["programId"] == str(TOKEN_PROGRAM)
    assert post["uiTokenAmount"] == {"amount": "0", "decimals": 6, "uiAmount": None, "uiAmountString": "0"}


def test_close_account_and_unparsed_instruction_match_recordings(story):
    node, rpc, _, _ = story
    closing = recorded("explorer_surfpool_getTransaction_inner_transferChecked_closeAccount.json")
    mainnet = recorded("explorer_mainnet_getTransaction_usdc_transferChecked_durable_nonce.json")
    scenario, chain = node.scenario, node.chain
    owner = Keypair()
    payer = scenario.payer
    ata = get_associated_token_address(owner.pubkey(), scenario.classic_mint_pubkey, TOKEN_PROGRAM)
    set_cu_limit = Instruction(COMPUTE_BUDGET_PROGRAM, bytes([2]) + (200_000).to_bytes(4, "little"), [])
    ixs = [set_cu_limit,
           T.create_associated_token_account(payer.pubkey(), owner.pubkey(), scenario.classic_mint_pubkey,
                                             TOKEN_PROGRAM),
           T.close_account(TOKEN_PROGRAM, ata, payer.pubkey(), owner.pubkey())]
    tx = Transaction([payer, owner], Message(ixs, payer.pubkey()), chain.latest_blockhash())
    record = chain.produce_block([tx]).block.transactions[0]
    assert record.err is None
    finalize(rpc)
    ours = rpc("getTransaction", record.signature, {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0})

    close = instruction_of(ours["transaction"]["message"]["instructions"], "closeAccount")
    assert_same_shape(close, instruction_of(closing["meta"]["innerInstructions"][0]["instructions"], "closeAccount"))
    assert close["parsed"]["info"] == {"account": str(ata), "destination": str(payer.pubkey()),
                                       "owner": str(owner.pubkey())}
    unparsed = ours["transaction"]["message"]["instructions"][0]
    real_unparsed = next(ix for ix in mainnet["transaction"]["message"]["instructions"] if "parsed" not in ix)
    assert_same_shape(unparsed, real_unparsed, "computeBudget")
    assert unparsed["programId"] == str(COMPUTE_BUDGET_PROGRAM) and unparsed["accounts"] == []
    # Created and closed in the same transaction: in neither pre nor post token balances.
    assert ours["meta"]["preTokenBalances"] == [] and ours["meta"]["postTokenBalances"] == []


def test_json_encoding_meta_matches_carbon_recording(story):
    _, rpc, steps, _ = story
    real = recorded("carbon_mainnet_meta_cpi_tx.json")
    ours = rpc("getTransaction", steps["create_holders"]["signature"],
               {"encoding": "json", "maxSupportedTransactionVersion": 0})["meta"]
    assert set(ours) == set(real)
    assert_same_shape(ours, real, "meta")
    compiled = ours["innerInstructions"][0]["instructions"][0]
    assert set(compiled) == {"accounts", "data", "programIdIndex", "stackHeight"}
    assert ours["loadedAddresses"] == {"readonly": [], "writable": []}


def test_lookup_table_transaction_loaded_addresses(story):
    _, rpc, steps, result = story
    carbon = recorded("carbon_mainnet_meta_cpi_tx.json")
    step = steps["lookup_table_transfer"]
    mint, holders = result["describe"]["mint"], result["describe"]["holders"]
    as_json = rpc("getTransaction", step["signature"], {"encoding": "json", "maxSupportedTransactionVersion": 0})
    assert_same_shape(as_json["meta"], carbon, "meta")
    assert as_json["version"] == 0
    assert as_json["meta"]["loadedAddresses"] == {
        "writable": [holders["bob"]["account"], holders["carol"]["account"]], "readonly": [mint]}
    lookups = as_json["transaction"]["message"]["addressTableLookups"]
    assert lookups == [{"accountKey": step["lookupTable"], "writableIndexes": [0, 1], "readonlyIndexes": [2]}]

    parsed = rpc("getTransaction", step["signature"], {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0})
    assert "loadedAddresses" not in parsed["meta"]
    keys = parsed["transaction"]["message"]["accountKeys"]
    assert [k["source"] for k in keys].count("lookupTable") == 3
    assert {k["pubkey"]: (k["writable"], k["source"]) for k in keys}[mint] == (False, "lookupTable")
    owners = {keys[b["accountIndex"]]["pubkey"] for b in parsed["meta"]["postTokenBalances"]}
    assert owners == {holders["bob"]["account"], holders["carol"]["account"]}
    # agave indexes lookup-table keys too: the mint (loaded, not static) lists the signature.
    assert step["signature"] in [s["signature"] for s in rpc("getSignaturesForAddress", mint)]


def test_get_account_info_mint_extensions_match_aaplx_recording(story):
    node, rpc, steps, _ = story
    real = recorded("xstocks_AAPLx_mint_getAccountInfo_jsonParsed_slot448030997.json")
    mint = str(node.scenario.mint)
    ours = rpc("getAccountInfo", mint, {"encoding": "jsonParsed"})

    assert set(ours) == set(real) and set(ours["context"]) == set(real["context"])
    value, real_value = ours["value"], real["value"]
    assert set(value) == set(real_value)
    assert_same_shape({k: v for k, v in value.items() if k != "data"},
                      {k: v for k, v in real_value.items() if k != "data"})
    info, real_info = value["data"]["parsed"]["info"], real_value["data"]["parsed"]["info"]
    assert value["data"]["program"] == "spl-token-2022" and value["data"]["parsed"]["type"] == "mint"
    assert set(info) == set(real_info)
    real_extensions = {e["extension"]: e for e in real_info["extensions"]}
    names = [e["extension"] for e in info["extensions"]]
    assert names == ["metadataPointer", "permanentDelegate", "defaultAccountState", "scaledUiAmountConfig",
                     "pausableConfig", "tokenMetadata"]
    for extension in info["extensions"]:
        assert_same_shape(extension, real_extensions[extension["extension"]], extension["extension"])
    by_name = {e["extension"]: e["state"] for e in info["extensions"]}
    assert by_name["metadataPointer"]["metadataAddress"] == mint  # self-pointing, like AAPLx
    assert by_name["scaledUiAmountConfig"]["multiplier"] == "1"
    assert by_name["scaledUiAmountConfig"]["newMultiplier"] == "2"
    assert by_name["scaledUiAmountConfig"]["newMultiplierEffectiveTimestamp"] == \
        steps["schedule_multiplier"]["effectiveTimestamp"]
    assert by_name["tokenMetadata"]["symbol"] == "ACMEx2"
    assert by_name["pausableConfig"]["paused"] is False


# ---- instruction parsing ------------------------------------------------------------------


def test_token_2022_instructions_parse_like_agave(story):
    _, rpc, steps, _ = story

    def top_level(step: str) -> list[dict]:
        tx = rpc("getTransaction", steps[step]["signature"], {"encoding": "jsonParsed",
                                                              "maxSupportedTransactionVersion": 0})
        return tx["transaction"]["message"]["instructions"]

    assert [ix["parsed"]["type"] for ix in top_level("create_mint")] == [
        "createAccount", "initializeMetadataPointer", "initializePermanentDelegate", "initializeDefaultAccountState",
        "initializeScaledUiAmountConfig", "initializePausableConfig", "initializeMint2", "initializeTokenMetadata"]
    (update,) = top_level("schedule_multiplier")
    info = update["parsed"]["info"]
    assert update["parsed"]["type"] == "updateMultiplier"
    assert info["newMultiplier"] == "2" and info["newMultiplierTimestamp"] == steps["schedule_multiplier"][
        "effectiveTimestamp"]
    assert set(info) == {"mint", "newMultiplier", "newMultiplierTimestamp", "authority"}
    field = top_level("update_metadata")[-1]["parsed"]
    assert field["type"] == "updateTokenMetadataField"
    assert set(field["info"]) == {"metadata", "updateAuthority", "field", "value"}
    (batch,) = top_level("batch")
    assert batch["parsed"]["type"] == "batch"
    assert [i["type"] for i in batch["parsed"]["info"]["instructions"]] == ["mintToChecked", "transferChecked"]
    assert top_level("pause")[0]["parsed"]["type"] == "pause"
    assert top_level("resume")[0]["parsed"]["type"] == "resume"
    (plain,) = top_level("classic_transfer")
    assert plain["parsed"]["type"] == "transfer" and "mint" not in plain["parsed"]["info"]
    assert plain["parsed"]["info"]["amount"] == "400000"


def test_set_authority_and_metadata_parsers_use_agave_names():
    mint, auth, new = Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey()
    for authority_type in ("scaledUiAmount", "pause", "freezeAccount"):
        ix = T.set_authority(TOKEN_2022_PROGRAM, mint, auth, authority_type, None)
        parsed = parse_token(bytes(ix.data), [str(a.pubkey) for a in ix.accounts])
        assert parsed == {"type": "setAuthority", "info": {"mint": str(mint), "authorityType": authority_type,
                                                           "newAuthority": None, "authority": str(auth)}}
    ix = T.set_authority(TOKEN_PROGRAM, mint, auth, "accountOwner", new)
    assert parse_token(bytes(ix.data), [str(a.pubkey) for a in ix.accounts])["info"] == {
        "account": str(mint), "authorityType": "accountOwner", "newAuthority": str(new), "authority": str(auth)}
    ix = T.remove_token_metadata_key(mint, auth, "isin", True)
    assert parse_token(bytes(ix.data), [str(a.pubkey) for a in ix.accounts]) == {
        "type": "removeTokenMetadataKey",
        "info": {"metadata": str(mint), "updateAuthority": str(auth), "key": "isin", "idempotent": True}}
    ix = T.update_multiplier(mint, auth, 1.0753686544887686, 1786667400)
    assert parse_token(bytes(ix.data), [str(a.pubkey) for a in ix.accounts])["info"]["newMultiplier"] == \
        "1.0753686544887686"
    assert parse_token(b"\xff\x01\x00\xff", [str(mint)]) is None  # nested batch: not parsable


# ---- blocks, slots, commitment ---------------------------------------------------------------


def test_get_block_encodings_details_and_versions(story):
    node, rpc, steps, _ = story
    real = recorded("explorer_mainnet_getTransaction_usdc_transferChecked_durable_nonce.json")
    v0_slot = steps["v0_transfer"]["slot"]
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", v0_slot, {"encoding": "jsonParsed"})
    assert err.value.code == -32015 and '"maxSupportedTransactionVersion": 0' in err.value.message

    # null config fields count as absent (solana-py sends them)
    block = rpc("getBlock", v0_slot, {"encoding": "jsonParsed", "transactionDetails": None, "rewards": None,
                                      "maxSupportedTransactionVersion": 0})
    assert set(block) == {"blockHeight", "blockTime", "blockhash", "parentSlot", "previousBlockhash", "rewards",
                          "transactions"}
    (entry,) = block["transactions"]
    assert set(entry) == set(real) - {"slot", "blockTime", "transactionIndex"}
    assert entry["version"] == 0 and entry["transaction"]["message"]["addressTableLookups"] == []
    legacy = rpc("getBlock", steps["issue"]["slot"], {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0})
    assert legacy["transactions"][0]["version"] == "legacy"
    assert "version" not in rpc("getBlock", steps["issue"]["slot"])["transactions"][0]

    sigs = rpc("getBlock", v0_slot, {"transactionDetails": "signatures", "rewards": False,
                                     "maxSupportedTransactionVersion": 0})
    assert sigs["signatures"] == [steps["v0_transfer"]["signature"]] and "rewards" not in sigs
    assert "transactions" not in rpc("getBlock", v0_slot, {"transactionDetails": "none"})
    accounts = rpc("getBlock", steps["issue"]["slot"], {"transactionDetails": "accounts"})["transactions"][0]
    assert set(accounts["transaction"]) == {"signatures", "accountKeys"}
    assert set(accounts["meta"]) == {"err", "status", "fee", "preBalances", "postBalances", "preTokenBalances",
                                     "postTokenBalances", "rewards"}
    json_block = rpc("getBlock", steps["issue"]["slot"], {"encoding": "json"})
    assert set(json_block["transactions"][0]["transaction"]["message"]) == {
        "header", "accountKeys", "recentBlockhash", "instructions"}
    assert block["parentSlot"] == v0_slot - 1 and block["blockTime"] == GENESIS_TIME + (v0_slot * 400) // 1000


def test_failed_transactions_land_with_fee_and_agave_errors(story):
    _, rpc, steps, _ = story
    frozen = rpc("getTransaction", steps["transfer!"]["signature"], {"encoding": "jsonParsed"})
    assert frozen["meta"]["err"] == {"InstructionError": [0, {"Custom": 17}]}  # AccountFrozen
    assert frozen["meta"]["status"] == {"Err": frozen["meta"]["err"]}
    assert frozen["meta"]["preBalances"][0] - frozen["meta"]["postBalances"][0] == frozen["meta"]["fee"] > 0
    assert frozen["meta"]["preTokenBalances"] == frozen["meta"]["postTokenBalances"]
    block = rpc("getBlock", steps["transfer!"]["slot"], {"encoding": "jsonParsed", "transactionDetails": "signatures"})
    assert steps["transfer!"]["signature"] in block["signatures"]


def test_skipped_slots_get_blocks_and_commitment(fresh):
    _, rpc = fresh
    rpc("localnet_produceBlock", {"count": 2})  # slots 1, 2
    rpc("localnet_skipSlots", 3)  # 3, 4, 5 skipped
    rpc("localnet_produceBlock", {"count": 4})  # slots 6..9
    assert rpc("getSlot", {"commitment": "processed"}) == 9
    assert rpc("getSlot", {"commitment": "confirmed"}) == 8
    assert rpc("getSlot") == rpc("getSlot", {"commitment": "finalized"}) == 7
    assert rpc("getBlockHeight", {"commitment": "processed"}) == 6
    assert rpc("getBlocks", 0) == [0, 1, 2, 6, 7]
    assert rpc("getBlocks", 0, 100, {"commitment": "confirmed"}) == [0, 1, 2, 6, 7, 8]
    assert rpc("getBlocks", 3, 5) == [] and rpc("getBlocks", 5, 3) == []
    assert rpc("getBlocksWithLimit", 2, 2) == [2, 6]
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", 4)
    assert err.value.code == -32007
    assert err.value.message == "Slot 4 was skipped, or missing due to ledger jump to recent snapshot"
    assert rpc("getBlock", 6)["parentSlot"] == 2 and rpc("getBlock", 6)["blockHeight"] == 3
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", 8)
    assert (err.value.code, err.value.message) == (-32004, "Block not available for slot 8")
    assert rpc("getBlock", 8, {"commitment": "confirmed"})["blockHeight"] == 5
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", 9, {"commitment": "confirmed"})
    assert err.value.code == -32004
    for method, params in (("getBlock", [6, {"commitment": "processed"}]),
                           ("getBlocks", [0, None, {"commitment": "processed"}]),
                           ("getTransaction", ["1" * 64, {"commitment": "processed"}])):
        with pytest.raises(RpcCallError) as err:
            rpc(method, *params)
        assert (err.value.code, err.value.message) == (-32602, "Method does not support commitment below `confirmed`")
    times = [rpc("getBlock", s)["blockTime"] for s in (1, 2, 6, 7)]
    assert times == [GENESIS_TIME + (s * 400) // 1000 for s in (1, 2, 6, 7)]


def test_rollback_replaces_unrooted_blocks(fresh):
    node, rpc = fresh
    for step, args in (("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice", "bob"]}),
                       ("issue", {"holder": "alice", "amount": 1000})):
        rpc("localnet_scenario", step, args)
    finalize(rpc)
    bob_account = node.scenario.describe({})["holders"]["bob"]["account"]
    first = rpc("localnet_scenario", "transfer", {"from": "alice", "to": "bob", "amount": 300})
    rpc("localnet_produceBlock")  # the transfer block is confirmed now, not rooted
    old_hash = rpc("getBlock", first["slot"], {"commitment": "confirmed"})["blockhash"]
    assert rpc("getTransaction", first["signature"], {"commitment": "confirmed"}) is not None

    with pytest.raises(RpcCallError) as err:  # cannot roll back into finalized blocks
        rpc("localnet_rollback", {"count": 10})
    assert err.value.code == -32602
    assert rpc("localnet_rollback", {"count": 2, "reuseSlots": True}) == {
        "droppedSlots": [first["slot"], first["slot"] + 1], "tip": first["slot"] - 1}
    assert rpc("getSlot", {"commitment": "processed"}) == first["slot"] - 1
    assert rpc("getTransaction", first["signature"], {"commitment": "confirmed"}) is None
    assert rpc("getTokenAccountBalance", bob_account, {"commitment": "processed"})["value"]["amount"] == "0"

    second = rpc("localnet_scenario", "transfer", {"from": "alice", "to": "bob", "amount": 700})
    assert second["slot"] == first["slot"] and second["signature"] != first["signature"]
    finalize(rpc)
    new_block = rpc("getBlock", second["slot"], {"encoding": "jsonParsed", "transactionDetails": "signatures"})
    assert new_block["blockhash"] != old_hash and new_block["signatures"] == [second["signature"]]
    assert rpc("getTokenAccountBalance", bob_account)["value"]["amount"] == "700"

    # A dropped transaction can land again in a later slot (reinclude).
    third = rpc("localnet_scenario", "transfer", {"from": "alice", "to": "bob", "amount": 1})
    rpc("localnet_rollback", {"count": 1, "reinclude": True})
    produced = rpc("localnet_produceBlock")
    assert produced["slots"] == [third["slot"] + 1] and produced["rejected"] == []
    finalize(rpc)
    assert rpc("getTransaction", third["signature"])["slot"] == third["slot"] + 1
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", third["slot"])  # abandoned slot below the root: reported as skipped
    assert err.value.code == -32007


# ---- WebSocket --------------------------------------------------------------------------


def _recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def _request(ws, request_id: int, method: str, *params: object) -> dict:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}))
    return _recv(ws)


def test_websocket_notifications_over_a_real_socket(fresh):
    node, rpc = fresh
    rpc("localnet_scenario", "setup", {})
    rpc("localnet_scenario", "create_mint", {})
    mint = str(node.scenario.mint)
    with connect(node.ws_url, open_timeout=5) as ws:
        slot_sub = _request(ws, 1, "slotSubscribe")["result"]
        root_sub = _request(ws, 2, "rootSubscribe")["result"]
        logs_sub = _request(ws, 3, "logsSubscribe", {"mentions": [mint]}, {"commitment": "processed"})["result"]
        bad = _request(ws, 4, "logsSubscribe", {"mentions": [mint, mint]})
        assert bad["error"] == {"code": -32602, "message": "Invalid Request: Only 1 address supported"}
        assert len({slot_sub, root_sub, logs_sub}) == 3

        issued = rpc("localnet_scenario", "create_holders", {"holders": ["alice"]})
        messages = [_recv(ws) for _ in range(3)]  # slotNotification, logsNotification, rootNotification
        by_method = {}
        for m in messages:
            by_method.setdefault(m["method"], []).append(m["params"])
        slot_note = by_method["slotNotification"][0]
        assert slot_note == {"result": {"parent": issued["slot"] - 1, "root": issued["slot"] - 3,
                                        "slot": issued["slot"]}, "subscription": slot_sub}
        root_note = by_method["rootNotification"][0]
        assert root_note == {"result": issued["slot"] - 2, "subscription": root_sub}
        logs_note = by_method["logsNotification"][0]
        assert logs_note["subscription"] == logs_sub
        assert logs_note["result"]["context"] == {"slot": issued["slot"]}
        assert logs_note["result"]["value"]["signature"] == issued["signature"]
        assert logs_note["result"]["value"]["err"] is None and logs_note["result"]["value"]["logs"]

        rpc("localnet_skipSlots", 2)
        produced = rpc("localnet_produceBlock")["slots"][0]
        notes = [_recv(ws) for _ in range(2)]
        slot_notes = [n["params"]["result"] for n in notes if n["method"] == "slotNotification"]
        assert slot_notes == [{"parent": issued["slot"], "root": issued["slot"] - 2, "slot": produced}]

        assert _request(ws, 5, "slotUnsubscribe", slot_sub) == {"jsonrpc": "2.0", "result": True, "id": 5}
        assert _request(ws, 6, "slotUnsubscribe", slot_sub)["error"] == {
            "code": -32602, "message": "Invalid subscription id."}
        assert rpc("localnet_dropWebsockets") == {"dropped": 1}
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=5)


# ---- faults -----------------------------------------------------------------------------


def test_fault_injection_429_and_block_not_available(fresh):
    _, rpc = fresh
    finalize(rpc)
    assert rpc("localnet_failNextRequests", {"count": 2, "mode": "429", "retryAfter": 3}) is True
    status, headers, body = rpc.raw({"jsonrpc": "2.0", "id": 1, "method": "getSlot"})
    assert status == 429 and headers["Retry-After"] == "3" and body["error"]["code"] == 429
    assert rpc("localnet_status")["processed"] == 3  # control calls are never throttled
    assert rpc.raw({"jsonrpc": "2.0", "id": 1, "method": "getSlot"})[0] == 429
    assert rpc("getSlot") == 1
    rpc("localnet_failNextRequests", {"count": 1, "mode": "blockNotAvailable"})
    with pytest.raises(RpcCallError) as err:
        rpc("getBlock", 1)
    assert (err.value.code, err.value.message) == (-32004, "Block not available for slot 1")
    assert rpc("getBlock", 1)["blockHeight"] == 1
    _, _, batch = rpc.raw([{"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
                           {"jsonrpc": "2.0", "id": 2, "method": "noSuchMethod"}])
    assert batch == [{"jsonrpc": "2.0", "result": "ok", "id": 1},
                     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 2}]


def test_auto_produce_starts_and_stops(fresh):
    _, rpc = fresh
    assert rpc("localnet_startAutoProduce", {"intervalMs": 20}) is True
    deadline = time.monotonic() + 10
    while rpc("getSlot", {"commitment": "processed"}) < 5:
        assert time.monotonic() < deadline, "auto-produce made no progress"
        time.sleep(0.02)
    assert rpc("localnet_status")["autoProduceMs"] == 20
    assert rpc("localnet_stopAutoProduce") is True
    time.sleep(0.1)  # a block already being produced may still land
    settled = rpc("getSlot", {"commitment": "processed"})
    time.sleep(0.15)
    assert rpc("getSlot", {"commitment": "processed"}) == settled


# ---- the scenario end to end ---------------------------------------------------------------


def test_scenario_final_balances_equal_account_state(story):
    node, rpc, steps, result = story
    assert steps["transfer!"]["err"] == {"InstructionError": [0, {"Custom": 17}]}  # frozen
    errors = [s["err"] for s in result["steps"] if s["err"]]
    assert errors == [{"InstructionError": [0, {"Custom": 17}]}, {"InstructionError": [0, {"Custom": 67}]}]
    balances = rpc("localnet_scenario", "balances", {})
    expected, holders = balances["expected"], result["describe"]["holders"]
    assert balances["onchain"] == expected
    mint = result["describe"]["mint"]
    total = 0
    for name, info in holders.items():
        amount = int(rpc("getTokenAccountBalance", info["account"])["value"]["amount"])
        assert amount == expected.get(f"security:{name}", 0)
        total += amount
        owned = rpc("getTokenAccountsByOwner", info["wallet"], {"mint": mint}, {"encoding": "jsonParsed"})["value"]
        assert [a["pubkey"] for a in owned] == [info["account"]]
        assert owned[0]["account"]["data"]["parsed"]["info"]["tokenAmount"]["amount"] == str(amount)
    supply = rpc("getAccountInfo", mint, {"encoding": "jsonParsed"})["value"]["data"]["parsed"]["info"]["supply"]
    assert int(supply) == total == balances["supply"]
    largest = rpc("getTokenLargestAccounts", mint)["value"]
    assert sum(int(a["amount"]) for a in largest) == total
    assert [a["amount"] for a in largest] == sorted((a["amount"] for a in largest), key=int, reverse=True)


def test_scaled_ui_amount_applies_only_in_account_reads(fresh):
    node, rpc = fresh
    for step, args in (("setup", {}), ("create_mint", {}), ("create_holders", {"holders": ["alice"]}),
                       ("issue", {"holder": "alice", "amount": 754_000_000}),
                       ("schedule_multiplier", {"multiplier": 2.0, "delaySeconds": 3600})):
        step_result = rpc("localnet_scenario", step, args)
    effective = step_result["effectiveTimestamp"]
    account = node.scenario.describe({})["holders"]["alice"]["account"]
    before = rpc("getTokenAccountBalance", account, {"commitment": "processed"})["value"]
    assert before == {"amount": "754000000", "decimals": 6, "uiAmount": 754.0, "uiAmountString": "754"}
    rpc("localnet_setClock", {"unixTimestamp": effective})
    issued = rpc("localnet_scenario", "issue", {"holder": "alice", "amount": 1})
    after = rpc("getTokenAccountBalance", account, {"commitment": "processed"})["value"]
    assert after == {"amount": "754000001", "decimals": 6, "uiAmount": 1508.000002, "uiAmountString": "1508.000002"}
    finalize(rpc)
    tx = rpc("getTransaction", issued["signature"], {"encoding": "jsonParsed"})
    assert tx["blockTime"] == effective
    # transaction token balances and instruction amounts stay raw (no multiplier), as in agave
    assert tx["meta"]["postTokenBalances"][0]["uiTokenAmount"]["uiAmountString"] == "754.000001"


def test_signatures_for_address_indexes_account_keys_only(story):
    _, rpc, steps, result = story
    classic_mint = result["describe"]["classicMint"]
    source = result["describe"]["holders"]["alice"]["classicAccount"]
    plain = steps["classic_transfer"]["signature"]
    mint_sigs = [s["signature"] for s in rpc("getSignaturesForAddress", classic_mint)]
    assert plain not in mint_sigs and steps["classic_mint"]["signature"] in mint_sigs
    source_sigs = rpc("getSignaturesForAddress", source)
    assert source_sigs[0]["signature"] == plain  # newest first
    assert set(source_sigs[0]) == {"signature", "slot", "err", "memo", "blockTime", "confirmationStatus"}
    assert source_sigs[0]["confirmationStatus"] == "finalized"
    mint = result["describe"]["mint"]
    everything = [s["signature"] for s in rpc("getSignaturesForAddress", mint)]
    page = rpc("getSignaturesForAddress", mint, {"limit": 2})
    assert [s["signature"] for s in page] == everything[:2]
    rest = rpc("getSignaturesForAddress", mint, {"before": page[-1]["signature"], "until": everything[-1]})
    assert [s["signature"] for s in rest] == everything[2:-1]


# ---- command line -------------------------------------------------------------------------


def test_command_line_prints_urls_and_serves():
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "solana_localnet"), "--http-port", "0",
                             "--ws-port", "0", "--genesis-time", str(GENESIS_TIME)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # bounded: the process exits on error, closing stdout
        ready = json.loads(line)
        assert ready["pid"] == proc.pid
        assert ready["http"].startswith("http://127.0.0.1:") and ready["ws"].startswith("ws://127.0.0.1:")
        rpc = Rpc(ready["http"])
        assert rpc("getHealth") == "ok"
        assert rpc("localnet_scenario", "setup", {})["err"] is None
        assert rpc("getSlot", {"commitment": "processed"}) == 1
        with connect(ready["ws"], open_timeout=5) as ws:
            assert _request(ws, 1, "rootSubscribe")["result"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0


def test_scenario_rejects_bad_arguments_with_field_names(fresh):
    _, rpc = fresh
    with pytest.raises(RpcCallError) as err:
        rpc("localnet_scenario", "issue", {"holder": "alice", "amount": -5})
    assert err.value.code == -32602 and "amount" in err.value.message
    with pytest.raises(RpcCallError) as err:
        rpc("localnet_scenario", "no_such_step", {})
    assert "unknown scenario step" in err.value.message
    assert str(Hash.from_string(rpc("getGenesisHash"))) == rpc("getGenesisHash")
