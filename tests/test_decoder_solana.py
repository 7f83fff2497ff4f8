"""The Solana decoder on real recordings (tests/data/solana_golden, see its README) and on constructed
jsonParsed blocks whose instruction shapes are agave's parse_token.rs ones (shared/reference/solana.md
1.5 / 2.2); then decoded blocks applied to a real Store on a SQLite file."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from indexer.decoders.solana import TOKEN_2022_PROGRAM as T22
from indexer.decoders.solana import TOKEN_PROGRAM as TOKENKEG
from indexer.decoders.solana import SolanaDecoder
from indexer.models import BlockRef, DecodedBlock, Event, RawBlock, SkippedLog
from indexer.store import Store

GOLDEN = Path(__file__).resolve().parent / "data" / "solana_golden"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
WSOL = "So11111111111111111111111111111111111111112"

# the recorded AAPLx configuration (shared/realdata xstocks_AAPLx_mint_getAccountInfo...): real addresses
MINT = "XsbEhLAtcf6HdfpFZ5xEMdqW8nfAvcsP5bdudRLJzJp"
PERMANENT_DELEGATE = "5aMNNLQJwAEeoemTEMkv5NVjqKwvvefRYCQ5Z67HFvEq"
FREEZE_AUTHORITY = "JDq14BWvqCRFNu1krb12bcRpbGtJZ1FLEakMw6FdxJNs"
SCALE_AUTHORITY = "S7vYFFWH6BjJyEsdrPQpqpYTqLTrPRK6KW3VwsJuRaS"
MINT_AUTHORITY = "7pt9tkctJPK7PPNQJ77GKg8ZffSF6QxoMiCFYHxrtaCj"


def key(n: int) -> str:
    return str(Pubkey(bytes([n]) * 32))


def sig(n: int) -> str:
    return str(Signature(bytes([n]) * 64))


ALICE, BOB, CAROL, SPENDER, PAYER, UNKNOWN_PROGRAM = key(1), key(2), key(3), key(4), key(5), key(6)
ALICE_ATA, BOB_ATA, CAROL_ATA, ALICE_ATA2 = key(11), key(12), key(13), key(14)
CLASSIC = key(20)  # a classic Tokenkeg mint (accepts plain `transfer`)
ALICE_CLASSIC, BOB_CLASSIC = key(21), key(22)
OTHER_MINT, OTHER_ATA = key(30), key(31)


# ---- builders: agave jsonParsed shapes ---------------------------------------------------------

def ix(kind: str, info: dict, program: str = T22, stack: int = 1) -> dict:
    return {"parsed": {"type": kind, "info": info}, "program": "spl-token", "programId": program,
            "stackHeight": stack}


def token_amount(amount: int, decimals: int = 8) -> dict:
    ui = amount / 10**decimals
    return {"amount": str(amount), "decimals": decimals, "uiAmount": ui or None,
            "uiAmountString": f"{ui:.{decimals}f}".rstrip("0").rstrip(".")}


FREE_TEXT = {"tokenAmount", "feeAmount", "type", "data", "name", "symbol", "uri", "field", "value", "key",
             "newMultiplier", "multiplier"}


def tx(n: int, instructions: list, pre=(), post=(), inner=None, err=None, closed=(), extra_keys=()) -> dict:
    """One getBlock transaction. pre/post: (account, mint, owner, amount); closed: accounts with 0 post
    lamports. accountKeys hold every account the instructions and balances name, in first-seen order."""
    keys: list[str] = [PAYER]

    def add(k):
        if isinstance(k, str) and k not in keys:
            keys.append(k)

    for b in (*pre, *post):
        add(b[0])
    for k in extra_keys:
        add(k)

    def walk(node):  # every pubkey an instruction names (long strings outside free-text fields)
        if isinstance(node, dict):
            for name, v in node.items():
                if name not in FREE_TEXT:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and len(node) >= 32:
            add(node)

    walk(instructions)
    walk(inner or [])

    def balances(entries):
        return [{"accountIndex": keys.index(a), "mint": m, "owner": o,
                 "programId": TOKENKEG if m == CLASSIC else T22,
                 "uiTokenAmount": token_amount(amt, 6 if m == CLASSIC else 8)} for a, m, o, amt in entries]

    return {
        "meta": {"err": err, "fee": 5000, "innerInstructions": inner or [], "logMessages": [],
                 "preBalances": [1_000_000] * len(keys),
                 "postBalances": [0 if k in closed else 1_000_000 for k in keys],
                 "preTokenBalances": balances(pre), "postTokenBalances": balances(post), "rewards": [],
                 "status": {"Ok": None} if err is None else {"Err": err}},
        "transaction": {"message": {"accountKeys": [{"pubkey": k, "signer": k == PAYER, "source": "transaction",
                                                      "writable": True} for k in keys],
                                    "instructions": instructions, "recentBlockhash": key(99)},
                        "signatures": [sig(n)]},
        "version": 0,
    }


def block(slot: int, txs: list, time: int = 1_780_000_000) -> RawBlock:
    payload = {"blockHeight": slot - 10, "blockTime": time, "blockhash": f"hash-{slot}", "parentSlot": slot - 1,
               "previousBlockhash": f"hash-{slot - 1}", "transactions": txs, "rewards": []}
    return RawBlock(BlockRef(slot, f"hash-{slot}", f"hash-{slot - 1}", time), payload=payload)


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())["result"]


def golden_block(result: dict) -> RawBlock:
    """A getTransaction result wrapped as a one-transaction getBlock result (see the golden README)."""
    slot = result["slot"]
    payload = {"blockHeight": None, "blockTime": result["blockTime"], "blockhash": f"golden-{slot}",
               "parentSlot": slot - 1, "previousBlockhash": f"golden-{slot - 1}",
               "transactions": [{"transaction": result["transaction"], "meta": result["meta"],
                                 "version": result["version"]}], "rewards": []}
    return RawBlock(BlockRef(slot, f"golden-{slot}", f"golden-{slot - 1}", result["blockTime"]), payload=payload)


def ev(n: int, log_index: int, event_type: str, **kw) -> Event:
    kw.setdefault("token", MINT)
    return Event(event_type=event_type, transaction_hash=sig(n), log_index=log_index, **kw)


def decoder(**ctx) -> SolanaDecoder:
    return SolanaDecoder({MINT: {"permanent_delegate": ctx.get("pd")}, CLASSIC: {}})


# ---- a store on a real SQLite file -------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "solana.sqlite"), chain="solana-test", kind="solana").open()
    yield s
    s.close()


def seed(slot: int, mint: str, balances: dict[str, int]) -> DecodedBlock:
    """Prior history: the holders' balances before a recording, issued in an earlier slot."""
    events = tuple(Event(mint, "mint", "seed", i, None, owner, amount, moves_balance=True)
                   for i, (owner, amount) in enumerate(sorted(balances.items())))
    return DecodedBlock(BlockRef(slot, f"seed-{slot}", f"seed-{slot - 1}", 0), events)


def owner_totals(entries: list, mint: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        if e["mint"] == mint:
            out[e["owner"]] = out.get(e["owner"], 0) + int(e["uiTokenAmount"]["amount"])
    return out


def balances(s: Store, mint: str) -> dict[str, int]:
    rows = s.conn.execute("SELECT address, balance FROM balances WHERE token=?", (mint,)).fetchall()
    return {a: int(b) for a, b in rows if int(b)}


def actions(s: Store, mint: str) -> list[tuple]:
    return s.conn.execute("SELECT block_number, action_type, old_value, new_value FROM corporate_actions "
                          "WHERE token=? ORDER BY id", (mint,)).fetchall()


def token_state(s: Store, mint: str) -> dict:
    cur = s.conn.execute("SELECT * FROM token_state WHERE token=?", (mint,))
    names = [d[0] for d in cur.getdescription()]
    row = cur.fetchall()
    return dict(zip(names, row[0])) if row else {}


# ---- golden: real recordings -------------------------------------------------------------------

USDC_SIG = "4LXpF3MCdp69iFmD27Sn812UNpqFPHM4qXH7Y12E964p9GHXvwMe1XEmyasogVT2N4XEctdQQLf1sHY6Gvsa5sFX"
USDC_FILE = "explorer_mainnet_getTransaction_usdc_transferChecked_durable_nonce.json"
SURFPOOL_FILE = "explorer_surfpool_getTransaction_inner_transferChecked_closeAccount.json"


def test_golden_usdc_transfer_checked_top_level(store):
    result = golden(USDC_FILE)
    decoded = SolanaDecoder({USDC: {"permanent_delegate": None}}).decode(golden_block(result))
    assert decoded.events == (Event(
        USDC, "transfer", USDC_SIG, 0, "3V9bd3EN5aNuhE4RiHGbZ1eZakJ1F9cDb8V4YLjCG8cg",
        "B2v68t8MXb9zUms1VQKuCcvjrjKDK6fLd8ZngqmBGy1M", 3800000,
        {"instruction": "1", "source": "2e3Eb9tkT8252WhFR26Xz6SKoiatJScuMW1BHgGqPvvc",
         "destination": "Efc6bp3wVC2iQpewxRmKdZM8vzt9DCFFhL7EiHYNGunv"}, moves_balance=True),)
    assert decoded.skipped == ()
    # in the store, the holders end exactly at the ledger's post balances
    store.commit_blocks([seed(result["slot"] - 1, USDC, owner_totals(result["meta"]["preTokenBalances"], USDC)),
                         decoded])
    assert balances(store, USDC) == owner_totals(result["meta"]["postTokenBalances"], USDC)


def test_golden_surfpool_inner_transfers_then_close(store):
    result = golden(SURFPOOL_FILE)
    decoded = SolanaDecoder({USDC: {}}).decode(golden_block(result))
    src, src_owner = "8gabpuuY68dnRmEDjMK5v46JsqxPArEs1wMCVSJT8vos", "At4u6xXnARsRow7EzozCZ8iesMSs5zZy6tKXVs6JSw2b"
    legs = [("HZdC1RHbigt97WWgUg7LSxbSvbNmD3JAsLgJxASWZFmf", "DZwGzbZaqqaBsUPLJTvGqhhQjoi6PcTQ42HnZLYm4ici", 1),
            ("8QcFsGwLJ7oRPguLEQ2GiKpeP7BEyi83TnGJgDWwCRDP", "6ayEJCQB7gwzwdbWLi65DR9RTRTrS3QunK6j9h2WjQjW", 1357),
            ("BF9fcS5tuwmQXKWAUL8ZDG2d2E17dgQagCePq7JXMqjZ", "F8mszYiAMqr1EEDuwoSjSAfwWtJArr58PgKXRBFn9gpH", 9998641),
            ("8bqRBhrGUCFNB8cjzWnDp3MeF9fkwNhibqtFYJX63AEn", "DrLViEZBgqj6TgP8vKqu22uvLgV6p3tfkvCYfG8yqSUn", 1)]
    tx_sig = result["transaction"]["signatures"][0]
    # inner instructions of outer instruction 2, in order; the closeAccount moves nothing
    assert decoded.events == tuple(
        Event(USDC, "transfer", tx_sig, i, src_owner, owner, amount,
              {"instruction": f"2.{i}", "source": src, "destination": dst}, moves_balance=True)
        for i, (dst, owner, amount) in enumerate(legs))
    assert decoded.skipped == ()
    pre = owner_totals(result["meta"]["preTokenBalances"], USDC)
    store.commit_blocks([seed(result["slot"] - 1, USDC, pre), decoded])
    expected = {owner: pre[owner] + amount for _, owner, amount in legs}  # the source owner is emptied
    assert balances(store, USDC) == expected


def test_golden_ata_create_idempotent_moves_nothing(store):
    result = golden("explorer_devnet_getTransaction_ata_createIdempotent_inner.json")
    # the tx touches the tracked mint (a new wSOL account with balance 0) but moves no token
    decoded = SolanaDecoder({WSOL: {}}).decode(golden_block(result))
    assert decoded.events == () and decoded.skipped == ()
    store.commit_blocks([decoded])
    assert balances(store, WSOL) == {}
    assert store.counts()["events"] == 0


def test_golden_sol_only_transaction_is_ignored():
    result = golden("explorer_mainnet_getTransaction_sol_only_negative.json")
    decoded = SolanaDecoder({USDC: {}, WSOL: {}}).decode(golden_block(result))
    assert decoded == DecodedBlock(golden_block(result).ref)


def test_failed_transaction_moves_nothing(store):
    result = copy.deepcopy(golden(USDC_FILE))
    result["meta"]["err"] = {"InstructionError": [1, {"Custom": 1}]}
    result["meta"]["status"] = {"Err": result["meta"]["err"]}
    decoded = SolanaDecoder({USDC: {}}).decode(golden_block(result))
    assert decoded.events == () and decoded.skipped == ()
    store.commit_blocks([decoded])
    assert store.counts()["balance_ledger"] == 0
    # control: the same copy without the error moves the tokens
    result["meta"]["err"] = None
    assert len(SolanaDecoder({USDC: {}}).decode(golden_block(result)).events) == 1


# ---- constructed blocks: movements ---------------------------------------------------------------

def test_plain_transfer_names_no_mint_and_is_resolved_through_token_balances():
    # classic Tokenkeg transfer: accounts [source, destination, authority], the mint is in no key
    t = tx(1, [ix("transfer", {"source": ALICE_CLASSIC, "destination": BOB_CLASSIC, "authority": ALICE,
                               "amount": "2500"}, program=TOKENKEG)],
           pre=[(ALICE_CLASSIC, CLASSIC, ALICE, 10000), (BOB_CLASSIC, CLASSIC, BOB, 0)],
           post=[(ALICE_CLASSIC, CLASSIC, ALICE, 7500), (BOB_CLASSIC, CLASSIC, BOB, 2500)])
    assert CLASSIC not in [k["pubkey"] for k in t["transaction"]["message"]["accountKeys"]]
    decoded = decoder().decode(block(10, [t]))
    assert decoded.events == (ev(1, 0, "transfer", token=CLASSIC, from_address=ALICE, to_address=BOB, amount=2500,
                                 data={"instruction": "0", "source": ALICE_CLASSIC, "destination": BOB_CLASSIC},
                                 moves_balance=True),)


def test_mint_to_checked_credits_a_new_account_owner():
    t = tx(2, [ix("mintToChecked", {"mint": MINT, "account": ALICE_ATA, "mintAuthority": MINT_AUTHORITY,
                                    "tokenAmount": token_amount(1000_00000000)})],
           post=[(ALICE_ATA, MINT, ALICE, 1000_00000000)])  # created in this tx: only in post
    assert decoder().decode(block(11, [t])).events == (
        ev(2, 0, "mint", from_address=None, to_address=ALICE, amount=1000_00000000,
           data={"instruction": "0", "account": ALICE_ATA, "authority": MINT_AUTHORITY}, moves_balance=True),)


def test_burn_checked_debits_the_owner():
    t = tx(3, [ix("burnChecked", {"account": ALICE_ATA, "mint": MINT, "authority": ALICE,
                                  "tokenAmount": token_amount(40_00000000)})],
           pre=[(ALICE_ATA, MINT, ALICE, 100_00000000)], post=[(ALICE_ATA, MINT, ALICE, 60_00000000)])
    assert decoder().decode(block(12, [t])).events == (
        ev(3, 0, "burn", from_address=ALICE, to_address=None, amount=40_00000000,
           data={"instruction": "0", "account": ALICE_ATA}, moves_balance=True),)


def batch_tx(n: int) -> dict:
    """p-token / Token-2022 `batch`: several operations in one instruction and no inner instructions."""
    items = [{"type": "mintTo", "info": {"mint": MINT, "account": BOB_ATA, "mintAuthority": MINT_AUTHORITY,
                                         "amount": "500"}},
             {"type": "transfer", "info": {"source": ALICE_ATA, "destination": BOB_ATA, "authority": ALICE,
                                           "amount": "100"}},
             {"type": "transferChecked", "info": {"source": BOB_ATA, "mint": MINT, "destination": ALICE_ATA,
                                                  "authority": BOB, "tokenAmount": token_amount(50)}}]
    return tx(n, [ix("batch", {"instructions": items})],
              pre=[(ALICE_ATA, MINT, ALICE, 1000), (BOB_ATA, MINT, BOB, 0)],
              post=[(ALICE_ATA, MINT, ALICE, 950), (BOB_ATA, MINT, BOB, 550)])


def test_batch_items_are_walked_in_order():
    assert decoder().decode(block(13, [batch_tx(4)])).events == (
        ev(4, 0, "mint", from_address=None, to_address=BOB, amount=500, moves_balance=True,
           data={"instruction": "0.b0", "account": BOB_ATA, "authority": MINT_AUTHORITY}),
        ev(4, 1, "transfer", from_address=ALICE, to_address=BOB, amount=100, moves_balance=True,
           data={"instruction": "0.b1", "source": ALICE_ATA, "destination": BOB_ATA}),
        ev(4, 2, "transfer", from_address=BOB, to_address=ALICE, amount=50, moves_balance=True,
           data={"instruction": "0.b2", "source": BOB_ATA, "destination": ALICE_ATA}))


def test_transfer_between_two_accounts_of_one_owner_is_kept_as_a_self_transfer():
    t = tx(5, [ix("transferChecked", {"source": ALICE_ATA, "mint": MINT, "destination": ALICE_ATA2,
                                      "authority": ALICE, "tokenAmount": token_amount(30)})],
           pre=[(ALICE_ATA, MINT, ALICE, 100), (ALICE_ATA2, MINT, ALICE, 0)],
           post=[(ALICE_ATA, MINT, ALICE, 70), (ALICE_ATA2, MINT, ALICE, 30)])
    assert decoder().decode(block(14, [t])).events == (
        ev(5, 0, "transfer", from_address=ALICE, to_address=ALICE, amount=30, moves_balance=True,
           data={"instruction": "0", "source": ALICE_ATA, "destination": ALICE_ATA2}),)


def test_transfer_checked_with_fee_withholds_the_fee_outside_the_cap_table():
    t = tx(6, [ix("transferCheckedWithFee", {"source": ALICE_ATA, "mint": MINT, "destination": BOB_ATA,
                                             "tokenAmount": token_amount(1000), "feeAmount": token_amount(10),
                                             "authority": ALICE})],
           pre=[(ALICE_ATA, MINT, ALICE, 1000), (BOB_ATA, MINT, BOB, 0)],
           post=[(ALICE_ATA, MINT, ALICE, 0), (BOB_ATA, MINT, BOB, 990)])
    assert decoder().decode(block(15, [t])).events == (
        ev(6, 0, "transfer", from_address=ALICE, to_address=BOB, amount=990, moves_balance=True,
           data={"instruction": "0", "source": ALICE_ATA, "destination": BOB_ATA, "fee": "10"}),
        ev(6, 1, "transfer_fee", from_address=ALICE, to_address=None, amount=10, moves_balance=True, external=True,
           data={"instruction": "0", "source": ALICE_ATA, "withheld_in": BOB_ATA}))


def test_inner_transfer_of_an_account_created_and_closed_in_the_same_tx_uses_initialize_account():
    # a program creates a temporary account (inner initializeAccount3), fills it, pays out and closes it:
    # the ledger lists the temp account in neither pre nor post
    temp = key(40)
    inner = [{"index": 0, "instructions": [
        ix("initializeAccount3", {"account": temp, "mint": MINT, "owner": SPENDER}, stack=2),
        ix("transferChecked", {"source": ALICE_ATA, "mint": MINT, "destination": temp, "authority": ALICE,
                               "tokenAmount": token_amount(70)}, stack=2),
        ix("transferChecked", {"source": temp, "mint": MINT, "destination": BOB_ATA, "authority": SPENDER,
                               "tokenAmount": token_amount(70)}, stack=2),
        ix("closeAccount", {"account": temp, "destination": SPENDER, "owner": SPENDER}, stack=2)]}]
    t = tx(7, [{"accounts": [ALICE_ATA, BOB_ATA], "data": "3Bxs4h24hBtQy9rw", "programId": UNKNOWN_PROGRAM,
                "stackHeight": 1}], inner=inner,
           pre=[(ALICE_ATA, MINT, ALICE, 100), (BOB_ATA, MINT, BOB, 0)],
           post=[(ALICE_ATA, MINT, ALICE, 30), (BOB_ATA, MINT, BOB, 70)], extra_keys=[temp])
    assert decoder().decode(block(16, [t])).events == (
        ev(7, 0, "transfer", from_address=ALICE, to_address=SPENDER, amount=70, moves_balance=True,
           data={"instruction": "0.1", "source": ALICE_ATA, "destination": temp}),
        ev(7, 1, "transfer", from_address=SPENDER, to_address=BOB, amount=70, moves_balance=True,
           data={"instruction": "0.2", "source": temp, "destination": BOB_ATA}))


@pytest.mark.parametrize("stale_post", [False, True])
def test_an_account_closed_in_the_tx_counts_as_empty(stale_post):
    # agave lists a closed account only in pre; a simulator may repeat its old amount in post with 0 lamports
    close = ix("closeAccount", {"account": ALICE_ATA2, "destination": ALICE, "owner": ALICE})
    move = ix("transferChecked", {"source": ALICE_ATA2, "mint": MINT, "destination": BOB_ATA, "authority": ALICE,
                                  "tokenAmount": token_amount(50)})
    post = [(BOB_ATA, MINT, BOB, 50)] + ([(ALICE_ATA2, MINT, ALICE, 50)] if stale_post else [])
    t = tx(23, [move, close], pre=[(ALICE_ATA2, MINT, ALICE, 50), (BOB_ATA, MINT, BOB, 0)], post=post,
           closed=[ALICE_ATA2])
    assert decoder().decode(block(16, [t])).events == (
        ev(23, 0, "transfer", from_address=ALICE, to_address=BOB, amount=50, moves_balance=True,
           data={"instruction": "0", "source": ALICE_ATA2, "destination": BOB_ATA}),)


# ---- constructed blocks: compliance and corporate actions ---------------------------------------

def freeze_thaw_tx(n: int) -> dict:
    return tx(n, [ix("freezeAccount", {"account": BOB_ATA, "mint": MINT, "freezeAuthority": FREEZE_AUTHORITY}),
                  ix("thawAccount", {"account": ALICE_ATA, "mint": MINT, "freezeAuthority": FREEZE_AUTHORITY})],
              pre=[(BOB_ATA, MINT, BOB, 550), (ALICE_ATA, MINT, ALICE, 950)],
              post=[(BOB_ATA, MINT, BOB, 550), (ALICE_ATA, MINT, ALICE, 950)])


def test_freeze_and_thaw_update_the_owner():
    assert decoder().decode(block(17, [freeze_thaw_tx(8)])).events == (
        ev(8, 0, "account_frozen", to_address=BOB, holder=BOB, holder_update={"frozen": True},
           data={"instruction": "0", "account": BOB_ATA, "authority": FREEZE_AUTHORITY}),
        ev(8, 1, "account_thawed", to_address=ALICE, holder=ALICE, holder_update={"frozen": False},
           data={"instruction": "1", "account": ALICE_ATA, "authority": FREEZE_AUTHORITY}))


def multiplier_tx(n: int, multiplier: str, effective: int) -> dict:
    return tx(n, [ix("updateMultiplier", {"mint": MINT, "newMultiplier": multiplier,
                                          "newMultiplierTimestamp": effective, "authority": SCALE_AUTHORITY})])


def test_update_multiplier_scheduled_keeps_the_exact_f64_text():
    # the real AAPLx pending multiplier, scheduled after the block time
    decoded = decoder().decode(block(18, [multiplier_tx(9, "1.0032690125398187", 1786149000)], time=1786000000))
    assert decoded.events == (
        ev(9, 0, "multiplier_updated", token_update={"multiplier_schedule": ("1.0032690125398187", 1786149000)},
           data={"instruction": "0", "new_multiplier": "1.0032690125398187", "effective_at": 1786149000,
                 "authority": SCALE_AUTHORITY}),)


def test_update_multiplier_negative_timestamp_is_stored_as_zero_like_the_program():
    decoded = decoder().decode(block(18, [multiplier_tx(9, "2", -1)]))
    assert decoded.events[0].token_update == {"multiplier_schedule": ("2", 0)}


def init_tx(n: int) -> dict:
    """The order Token-2022 needs: extensions first, then InitializeMint2, then metadata."""
    return tx(n, [ix("initializePermanentDelegate", {"mint": MINT, "delegate": PERMANENT_DELEGATE}),
                  ix("initializeScaledUiAmountConfig", {"mint": MINT, "authority": SCALE_AUTHORITY,
                                                        "multiplier": "1"}),
                  ix("initializeMint2", {"mint": MINT, "decimals": 8, "mintAuthority": MINT_AUTHORITY,
                                         "freezeAuthority": FREEZE_AUTHORITY}),
                  ix("initializeTokenMetadata", {"metadata": MINT, "updateAuthority": PERMANENT_DELEGATE,
                                                 "mint": MINT, "mintAuthority": MINT_AUTHORITY,
                                                 "name": "Apple xStock", "symbol": "AAPLx",
                                                 "uri": "https://xstocks-metadata.backed.fi/tokens/Solana/AAPLx/"
                                                        "metadata.json"})])


def test_mint_initialization_sets_decimals_multiplier_metadata_and_learns_the_permanent_delegate():
    d = decoder()
    decoded = d.decode(block(19, [init_tx(10)]))
    assert decoded.events == (
        ev(10, 0, "permanent_delegate_initialized", data={"instruction": "0", "delegate": PERMANENT_DELEGATE},
           token_update={"meta:permanent_delegate": PERMANENT_DELEGATE}),
        ev(10, 1, "multiplier_initialized", data={"instruction": "1", "multiplier": "1",
                                                  "authority": SCALE_AUTHORITY},
           token_update={"multiplier": ("1", None, None)}),
        ev(10, 2, "mint_initialized", token_update={"decimals": 8},
           data={"instruction": "2", "mintAuthority": MINT_AUTHORITY, "freezeAuthority": FREEZE_AUTHORITY}),
        ev(10, 3, "metadata_initialized", data={"instruction": "3", "metadata": MINT},
           token_update={"name": "Apple xStock", "symbol": "AAPLx",
                         "meta:uri": "https://xstocks-metadata.backed.fi/tokens/Solana/AAPLx/metadata.json"}))
    assert d.context(MINT)["permanent_delegate"] == PERMANENT_DELEGATE


def metadata_tx(n: int) -> dict:
    return tx(n, [ix("updateTokenMetadataField", {"metadata": MINT, "updateAuthority": PERMANENT_DELEGATE,
                                                  "field": "symbol", "value": "AAPLX"}),
                  ix("updateTokenMetadataField", {"metadata": MINT, "updateAuthority": PERMANENT_DELEGATE,
                                                  "field": "isin", "value": "US0378331005"}),
                  ix("removeTokenMetadataKey", {"metadata": MINT, "updateAuthority": PERMANENT_DELEGATE,
                                                "key": "isin", "idempotent": False})])


def test_metadata_field_update_and_key_removal():
    assert decoder().decode(block(20, [metadata_tx(11)])).events == (
        ev(11, 0, "metadata_updated", data={"instruction": "0", "field": "symbol", "value": "AAPLX"},
           token_update={"symbol": "AAPLX"}),
        ev(11, 1, "metadata_updated", data={"instruction": "1", "field": "isin", "value": "US0378331005"},
           token_update={"meta:isin": "US0378331005"}),
        ev(11, 2, "metadata_key_removed", data={"instruction": "2", "key": "isin"},
           token_update={"meta:isin": None}))


def test_metadata_of_an_untracked_mint_is_ignored():
    t = tx(11, [ix("updateTokenMetadataField", {"metadata": OTHER_MINT, "updateAuthority": PERMANENT_DELEGATE,
                                                "field": "symbol", "value": "X"})], extra_keys=[MINT])
    assert decoder().decode(block(20, [t])).events == ()


def test_metadata_kept_outside_the_mint_is_followed_once_initialized():
    outside = key(41)
    d = decoder()
    init = tx(24, [ix("initializeTokenMetadata", {"metadata": outside, "updateAuthority": PERMANENT_DELEGATE,
                                                  "mint": MINT, "mintAuthority": MINT_AUTHORITY, "name": "N",
                                                  "symbol": "S", "uri": "u"})])
    update = tx(25, [ix("updateTokenMetadataField", {"metadata": outside, "updateAuthority": PERMANENT_DELEGATE,
                                                     "field": "name", "value": "N2"})])
    decoded = d.decode(block(20, [init, update]))
    assert [(e.event_type, e.token, e.token_update) for e in decoded.events] == [
        ("metadata_initialized", MINT, {"name": "N", "symbol": "S", "meta:uri": "u",
                                        "meta:metadata_address": outside}),  # persisted for restarts
        ("metadata_updated", MINT, {"name": "N2"})]
    assert d.context(MINT)["metadata_address"] == outside
    with pytest.raises(KeyError, match="not tracked"):
        d.set_context(OTHER_MINT, "permanent_delegate", PERMANENT_DELEGATE)


def pause_tx(n: int, kind: str) -> dict:
    return tx(n, [ix(kind, {"mint": MINT, "authority": FREEZE_AUTHORITY})])


def test_pause_and_resume():
    decoded = decoder().decode(block(21, [pause_tx(12, "pause"), pause_tx(13, "resume")]))
    assert decoded.events == (
        ev(12, 0, "paused", token_update={"paused": True}, data={"instruction": "0", "authority": FREEZE_AUTHORITY}),
        ev(13, 1, "unpaused", token_update={"paused": False},
           data={"instruction": "0", "authority": FREEZE_AUTHORITY}))


def seizure_tx(n: int) -> dict:
    """The permanent delegate takes Bob's tokens to Carol; an approved spender moves Alice's."""
    return tx(n, [ix("transferChecked", {"source": BOB_ATA, "mint": MINT, "destination": CAROL_ATA,
                                         "authority": PERMANENT_DELEGATE, "tokenAmount": token_amount(200)}),
                  ix("transferChecked", {"source": ALICE_ATA, "mint": MINT, "destination": BOB_ATA,
                                         "authority": SPENDER, "tokenAmount": token_amount(5)})],
              pre=[(BOB_ATA, MINT, BOB, 550), (ALICE_ATA, MINT, ALICE, 950)],
              post=[(BOB_ATA, MINT, BOB, 355), (CAROL_ATA, MINT, CAROL, 200), (ALICE_ATA, MINT, ALICE, 945)])


def test_permanent_delegate_transfer_is_a_seizure_and_a_delegate_transfer_is_labelled():
    assert decoder(pd=PERMANENT_DELEGATE).decode(block(22, [seizure_tx(14)])).events == (
        ev(14, 0, "seizure", from_address=BOB, to_address=CAROL, amount=200, moves_balance=True,
           data={"instruction": "0", "source": BOB_ATA, "destination": CAROL_ATA,
                 "authority": PERMANENT_DELEGATE, "delegate": True}),
        ev(14, 1, "transfer", from_address=ALICE, to_address=BOB, amount=5, moves_balance=True,
           data={"instruction": "1", "source": ALICE_ATA, "destination": BOB_ATA, "authority": SPENDER,
                 "delegate": True}))


def test_without_a_known_permanent_delegate_the_seizure_is_a_delegate_transfer_until_set_context():
    d = decoder()
    assert d.decode(block(22, [seizure_tx(14)])).events[0].event_type == "transfer"
    d.set_context(MINT, "permanent_delegate", PERMANENT_DELEGATE)
    assert d.decode(block(23, [seizure_tx(14)])).events[0].event_type == "seizure"


def test_set_authority_on_the_mint_and_account_owner_change():
    t = tx(15, [ix("setAuthority", {"mint": MINT, "authorityType": "scaledUiAmount", "newAuthority": None,
                                    "authority": SCALE_AUTHORITY}),
                ix("setAuthority", {"mint": MINT, "authorityType": "permanentDelegate", "newAuthority": SPENDER,
                                    "authority": PERMANENT_DELEGATE}),
                ix("setAuthority", {"account": ALICE_CLASSIC, "authorityType": "accountOwner", "newAuthority": BOB,
                                    "authority": ALICE}, program=TOKENKEG)],
           pre=[(ALICE_CLASSIC, CLASSIC, ALICE, 300)], post=[(ALICE_CLASSIC, CLASSIC, BOB, 300)])
    d = decoder(pd=PERMANENT_DELEGATE)
    assert d.decode(block(24, [t])).events == (
        ev(15, 0, "authority_changed", token_update={"meta:authority:scaledUiAmount": None},
           data={"instruction": "0", "authorityType": "scaledUiAmount", "newAuthority": None}),
        ev(15, 1, "authority_changed",
           token_update={"meta:authority:permanentDelegate": SPENDER, "meta:permanent_delegate": SPENDER},
           data={"instruction": "1", "authorityType": "permanentDelegate", "newAuthority": SPENDER}),
        ev(15, 2, "owner_changed", token=CLASSIC, from_address=ALICE, to_address=BOB, amount=300,
           moves_balance=True, data={"instruction": "2", "account": ALICE_CLASSIC}))
    assert d.context(MINT)["permanent_delegate"] == SPENDER


def confidential_tx(n: int) -> dict:
    """A confidential deposit (public -> encrypted balance): agave leaves the proof-carrying
    confidential-transfer instructions partially decoded, so only the ledger balances show it."""
    raw = {"accounts": [ALICE_ATA, MINT, ALICE], "data": "2ZjTR1vUs2pHXyTM", "programId": T22, "stackHeight": 1}
    return tx(n, [raw], pre=[(ALICE_ATA, MINT, ALICE, 945)], post=[(ALICE_ATA, MINT, ALICE, 845)])


def test_confidential_deposit_is_an_unexplained_external_delta(caplog):
    with caplog.at_level(logging.WARNING, logger="indexer.decoders.solana"):
        decoded = decoder().decode(block(25, [confidential_tx(16)]))
    assert decoded.events == (
        ev(16, 0, "balance_adjustment", from_address=ALICE, to_address=None, amount=100, moves_balance=True,
           external=True, data={"reason": "unexplained_delta"}),)
    message = caplog.records[-1].getMessage()
    assert "slot 25" in message and sig(16) in message and MINT in message


def withdraw_then_spend_tx(n: int) -> dict:
    """A confidential withdraw (credit, no parsable instruction) whose tokens are spent later in the tx."""
    raw = {"accounts": [ALICE_ATA, MINT, ALICE], "data": "3vZ67CuBGpZJr5qv", "programId": T22, "stackHeight": 1}
    spend = ix("transferChecked", {"source": ALICE_ATA, "mint": MINT, "destination": CAROL_ATA, "authority": ALICE,
                                   "tokenAmount": token_amount(1045)})
    return tx(n, [raw, spend], pre=[(ALICE_ATA, MINT, ALICE, 845), (CAROL_ATA, MINT, CAROL, 200)],
              post=[(ALICE_ATA, MINT, ALICE, 0), (CAROL_ATA, MINT, CAROL, 1245)])


def test_unexplained_credit_comes_before_the_instructions_that_spend_it():
    assert decoder().decode(block(26, [withdraw_then_spend_tx(17)])).events == (
        ev(17, 0, "balance_adjustment", from_address=None, to_address=ALICE, amount=200, moves_balance=True,
           external=True, data={"reason": "unexplained_delta"}),
        ev(17, 1, "transfer", from_address=ALICE, to_address=CAROL, amount=1045, moves_balance=True,
           data={"instruction": "1", "source": ALICE_ATA, "destination": CAROL_ATA}))


# ---- hot path, ordering and malformed input -------------------------------------------------------

def untracked_tx(n: int) -> dict:
    return tx(n, [ix("transferChecked", {"source": OTHER_ATA, "mint": OTHER_MINT, "destination": OTHER_ATA,
                                         "authority": BOB, "tokenAmount": {"amount": "junk"}})],
              pre=[(OTHER_ATA, OTHER_MINT, BOB, 1)], post=[(OTHER_ATA, OTHER_MINT, BOB, 1)])


def test_log_index_runs_over_the_block_in_transaction_then_instruction_order():
    failed = batch_tx(30)
    failed["meta"]["err"] = {"InstructionError": [0, {"Custom": 67}]}  # paused: nothing moved
    txs = [untracked_tx(31), batch_tx(32), failed, untracked_tx(33), freeze_thaw_tx(34)]
    decoded = decoder().decode(block(27, txs))
    assert [(e.transaction_hash, e.log_index, e.data["instruction"]) for e in decoded.events] == [
        (sig(32), 0, "0.b0"), (sig(32), 1, "0.b1"), (sig(32), 2, "0.b2"), (sig(34), 3, "0"), (sig(34), 4, "1")]
    assert decoded.skipped == ()  # untracked transactions are never looked into, junk or not


def test_many_untracked_transactions_produce_nothing():
    txs = [untracked_tx(i % 250) for i in range(3000)]
    txs.append(golden(SURFPOOL_FILE))  # a USDC tx: not tracked by this decoder either
    assert decoder().decode(block(28, txs)).events == ()


def test_malformed_instruction_is_skipped_and_the_ledger_delta_still_reconciles():
    bad = ix("transferChecked", {"source": ALICE_ATA, "mint": MINT, "destination": BOB_ATA, "authority": ALICE,
                                 "tokenAmount": {"amount": "12abc", "decimals": 8}})
    good = ix("mintTo", {"mint": MINT, "account": BOB_ATA, "mintAuthority": MINT_AUTHORITY, "amount": "5"})
    t = tx(18, [bad, good], pre=[(ALICE_ATA, MINT, ALICE, 100), (BOB_ATA, MINT, BOB, 0)],
           post=[(ALICE_ATA, MINT, ALICE, 88), (BOB_ATA, MINT, BOB, 17)])
    decoded = decoder().decode(block(29, [t]))
    # ordinals: credit 0, skipped instruction 1 (log_index -(1 + 1)), mint 2, debit 3
    assert decoded.skipped == (SkippedLog(sig(18), -2, MINT, "malformed", {
        "instruction": "0", "detail": "tokenAmount.amount is not a decimal amount: '12abc'",
        "parsed": bad["parsed"]}),)
    assert decoded.events == (
        ev(18, 0, "balance_adjustment", from_address=None, to_address=BOB, amount=12, moves_balance=True,
           external=True, data={"reason": "unexplained_delta"}),
        ev(18, 2, "mint", from_address=None, to_address=BOB, amount=5, moves_balance=True,
           data={"instruction": "1", "account": BOB_ATA, "authority": MINT_AUTHORITY}),
        ev(18, 3, "balance_adjustment", from_address=ALICE, to_address=None, amount=12, moves_balance=True,
           external=True, data={"reason": "unexplained_delta"}))


def test_malformed_transaction_is_skipped_whole_with_its_index(caplog):
    bad_balance = batch_tx(19)
    bad_balance["meta"]["postTokenBalances"][0]["uiTokenAmount"]["amount"] = "1.5"
    no_meta = batch_tx(20)
    del no_meta["meta"]
    with caplog.at_level(logging.WARNING, logger="indexer.decoders.solana"):
        decoded = decoder().decode(block(30, [bad_balance, no_meta, batch_tx(21)]))
    assert decoded.skipped == (
        SkippedLog(sig(19), 0, MINT, "malformed", {"detail": "uiTokenAmount.amount is not a decimal amount: '1.5'",
                                                   "transaction_index": 0}),
        SkippedLog(sig(20), 1, "transaction", "malformed", {"detail": "KeyError: 'meta'", "transaction_index": 1}))
    assert [e.transaction_hash for e in decoded.events] == [sig(21)] * 3
    assert [e.log_index for e in decoded.events] == [0, 1, 2]
    assert any("slot 30" in r.getMessage() and sig(19) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("payload", [None, [], "block", {"transactions": None}, {"blockhash": "x"}])
def test_malformed_block_payload_is_one_skip(payload):
    raw = RawBlock(BlockRef(31, "h", "p", 0), payload=payload)
    decoded = decoder().decode(raw)
    assert decoded.events == ()
    assert [(s.log_index, s.address, s.reason) for s in decoded.skipped] == [(0, "block", "malformed")]


@pytest.mark.parametrize("mutate", [
    lambda t: t.update(transaction=None),
    lambda t: t["meta"].update(innerInstructions=[{"index": "x", "instructions": []}]),
    lambda t: t["meta"].update(preTokenBalances=[{"accountIndex": 99, "mint": MINT, "owner": ALICE}]),
    lambda t: t["meta"]["postTokenBalances"][0].pop("owner"),
    lambda t: t["transaction"]["message"]["instructions"].append("not an instruction"),
    lambda t: t["transaction"]["message"]["instructions"].append(ix("batch", {"instructions": "x"})),
    lambda t: t["transaction"]["message"]["instructions"].append(ix("updateMultiplier", {
        "mint": MINT, "newMultiplier": "nan", "newMultiplierTimestamp": 1})),
    lambda t: t["transaction"]["message"]["instructions"].append(ix("freezeAccount", {"mint": MINT})),
    lambda t: t["transaction"]["message"]["instructions"].append(ix("initializeMint2", {"mint": MINT,
                                                                                       "decimals": "8"})),
    lambda t: t["transaction"].update(signatures=[]),
])
def test_decode_never_raises_on_bad_data(mutate):
    t = batch_tx(22)
    mutate(t)
    decoded = decoder().decode(block(32, [t]))
    assert len(decoded.skipped) == 1 and decoded.skipped[0].reason == "malformed"
    # the balances still end at the ledger's numbers whenever the transaction itself was readable
    net: dict[str, int] = {}
    for e in decoded.events:
        if e.moves_balance:
            if e.from_address:
                net[e.from_address] = net.get(e.from_address, 0) - e.amount
            if e.to_address:
                net[e.to_address] = net.get(e.to_address, 0) + e.amount
    assert {k: v for k, v in net.items() if v} in ({}, {ALICE: -50, BOB: 550})


# ---- decoded blocks through the real store ---------------------------------------------------------

def test_lifecycle_applied_to_the_store(store):
    d = decoder()  # the permanent delegate is learnt from the chain (initializePermanentDelegate)
    slots = [
        block(100, [init_tx(40)], time=1786000000),
        block(101, [tx(41, [ix("mintToChecked", {"mint": MINT, "account": ALICE_ATA, "mintAuthority": MINT_AUTHORITY,
                                                 "tokenAmount": token_amount(1000)})],
                       post=[(ALICE_ATA, MINT, ALICE, 1000)])], time=1786000100),
        block(102, [batch_tx(42)], time=1786000200),  # Alice 950, Bob 550, supply 1500
        block(103, [freeze_thaw_tx(43)], time=1786000300),
        block(104, [multiplier_tx(44, "1.0032690125398187", 1786149000)], time=1786000400),
        block(105, [metadata_tx(45)], time=1786000500),
        block(106, [pause_tx(46, "pause"), pause_tx(47, "resume")], time=1786000600),
        block(107, [seizure_tx(48)], time=1786000700),  # Bob 355, Carol 200, Alice 945
        block(108, [confidential_tx(49)], time=1786000800),  # Alice 845 public
        block(109, [withdraw_then_spend_tx(50)], time=1786000900),  # Alice 0, Carol 1245
        block(110, [tx(51, [ix("burn", {"account": CAROL_ATA, "mint": MINT, "authority": PERMANENT_DELEGATE,
                                        "amount": "245"})],
                       pre=[(CAROL_ATA, MINT, CAROL, 1245)], post=[(CAROL_ATA, MINT, CAROL, 1000)])],
              time=1786000950),
        block(111, [multiplier_tx(52, "2", 1786100000)], time=1786150000),  # the pending one matured first
    ]
    decoded = [d.decode(b) for b in slots]
    assert all(not b.skipped for b in decoded)
    assert decoded[7].events[0].event_type == "seizure"  # the delegate learnt in slot 100 is applied
    assert decoded[10].events[0].data == {"instruction": "0", "account": CAROL_ATA, "authority": PERMANENT_DELEGATE,
                                          "delegate": True, "permanent_delegate": True}
    store.commit_blocks(decoded[:6])
    store.commit_blocks(decoded[6:])

    assert balances(store, MINT) == {BOB: 355, CAROL: 1000}
    state = token_state(store, MINT)
    assert (state["name"], state["symbol"], state["decimals"], state["paused"]) == ("Apple xStock", "AAPLX", 8, 0)
    # confidential moves are external (supply unchanged); the burn redeems 245
    assert int(state["total_supply"]) == 1500 - 245
    assert (state["multiplier"], state["multiplier_next"], state["multiplier_effective_at"]) == (
        "2", "2", 1786100000)
    meta = json.loads(state["metadata"])
    assert meta == {"permanent_delegate": PERMANENT_DELEGATE,
                    "uri": "https://xstocks-metadata.backed.fi/tokens/Solana/AAPLx/metadata.json"}
    frozen = dict(store.conn.execute("SELECT address, frozen FROM holder_state WHERE token=?", (MINT,)).fetchall())
    assert frozen == {BOB: 1, ALICE: 0}

    assert actions(store, MINT) == [
        (100, "metadata_change", None, PERMANENT_DELEGATE),
        # initialising the multiplier to 1.0 changes nothing, so it is no corporate action
        (100, "metadata_change", None, "https://xstocks-metadata.backed.fi/tokens/Solana/AAPLx/metadata.json"),
        (101, "issuance", "0", "1000"),
        (102, "issuance", "1000", "1500"),
        (104, "split", "1", "1.0032690125398187"),
        (105, "symbol_change", "AAPLx", "AAPLX"),
        (105, "metadata_change", None, "US0378331005"),
        (105, "metadata_change", "US0378331005", None),
        (106, "pause", "false", "true"),
        (106, "unpause", "true", "false"),
        (110, "redemption", "1500", "1255"),
        (111, "split", "1.0032690125398187", "2"),
    ]
    # one ledger row per side moved: mint 1, batch 1+2+2, seizure and delegate transfer 2+2,
    # deposit 1, withdraw and spend 1+2, burn 1
    ledger = store.conn.execute("SELECT count(*) FROM balance_ledger WHERE token=?", (MINT,)).fetchall()[0][0]
    assert ledger == 15
