"""EvmDecoder: every handler's exact Event, shape dispatch, counted skips, and real recorded mainnet logs.

Log data is built with eth_abi (an encoder independent of the decoder's hand-sliced helpers); the real
recordings in tests/data/evm are byte-for-byte copies (see tests/data/evm/README.md).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import eth_abi
import pytest

from indexer.decoders import abi
from indexer.decoders.evm import IGNORED, SIG, T, Binding, EvmDecoder
from indexer.models import ZERO_ADDRESS, BlockRef, DecodedBlock, Event, RawBlock, RawLog
from indexer.sources.evm import parse_log

DATA = Path(__file__).resolve().parent / "data" / "evm"
REFERENCE = DATA / "evm-events-reference.md"  # copy of /work/shared/reference/evm-events.md

TOKEN = "0x" + "a1" * 20
TOKEN2 = "0x" + "a2" * 20
REGISTRY = "0x" + "e1" * 20
ALICE = "0x" + "11" * 20
BOB = "0x" + "22" * 20
AGENT = "0x" + "33" * 20
ONCHAINID = "0x" + "44" * 20
TX = "0x" + "ab" * 32
U256_MAX = (1 << 256) - 1


def t_addr(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def t_uint(n: int) -> str:
    return "0x" + f"{n:064x}"


def enc(types: list[str], values: list) -> str:
    return "0x" + eth_abi.encode(types, values).hex()


def mklog(topics, data: str = "0x", *, address: str = TOKEN, log_index: int = 7, tx: str = TX,
          number: int = 100) -> RawLog:
    return RawLog(address, tuple(topics), data, number, "0x" + "bb" * 32, tx, 3, log_index)


def mkblock(*logs: RawLog, calls=None, number: int = 100, timestamp: int = 1_700_000_000) -> RawBlock:
    ref = BlockRef(number, "0x" + "bb" * 32, "0x" + "ba" * 32, timestamp)
    return RawBlock(ref, tuple(logs), calls=calls or {})


def decoder(profile: str = "security", *, registry_tokens: tuple[str, ...] = ()) -> EvmDecoder:
    bindings = {TOKEN: [Binding(TOKEN, "token", (profile,))]}
    if registry_tokens:
        bindings[REGISTRY] = [Binding(t, "identity_registry", ()) for t in registry_tokens]
    return EvmDecoder(bindings)


def one(decoded: DecodedBlock) -> Event:
    assert decoded.skipped == ()
    assert len(decoded.events) == 1, decoded.events
    return decoded.events[0]


def decode_one(lg: RawLog, profile: str = "security", **kw) -> Event:
    return one(decoder(profile).decode(mkblock(lg, **kw)))


def ev(event_type: str, **kw) -> Event:
    return Event(token=TOKEN, event_type=event_type, transaction_hash=TX, log_index=7, **kw)


# ---- ERC-20 Transfer and the shapes that share its topic0 ---------------------------------------

@pytest.mark.parametrize(("frm", "to", "kind"), [
    (ALICE, BOB, "transfer"), (ZERO_ADDRESS, ALICE, "mint"), (ALICE, ZERO_ADDRESS, "burn")])
def test_erc20_transfer_kinds(frm, to, kind):
    lg = mklog([T["Transfer"], t_addr(frm), t_addr(to)], enc(["uint256"], [12345]))
    assert decode_one(lg, "erc20") == ev(kind, from_address=frm, to_address=to, amount=12345, moves_balance=True)


def test_transfer_amount_uint256_max_is_exact():
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [U256_MAX]))
    assert decode_one(lg, "erc20").amount == U256_MAX


def test_erc721_transfer_shape_is_a_named_skip():
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB), t_uint(42)], "0x")
    out = decoder("erc20").decode(mkblock(lg))
    assert out.events == ()
    (skip,) = out.skipped
    assert (skip.reason, skip.transaction_hash, skip.log_index, skip.address) == ("erc721_transfer", TX, 7, TOKEN)
    assert skip.raw["topics"] == list(lg.topics) and skip.raw["data"] == "0x"


def test_legacy_unindexed_transfer_is_skipped_not_moved():
    lg = mklog([T["Transfer"]], enc(["address", "address", "uint256"], [ALICE, BOB, 5]))
    out = decoder("erc20").decode(mkblock(lg))
    assert out.events == ()
    assert [(s.reason, s.log_index) for s in out.skipped] == [("unindexed_transfer", 7)]


MALFORMED = {
    "short data": mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "00" * 31),
    "long data": mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "00" * 64),
    "odd data": mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "00" * 40),
    "from high bytes": mklog([T["Transfer"], "0x" + "01" + "0" * 22 + ALICE[2:], t_addr(BOB)],
                             enc(["uint256"], [1])),
    "to high bytes": mklog([T["Transfer"], t_addr(ALICE), "0x" + "f" * 24 + BOB[2:]], enc(["uint256"], [1])),
    "2 topics": mklog([T["Transfer"], t_addr(ALICE)], enc(["uint256"], [1])),
    "5 topics": mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB), t_uint(1), t_uint(2)], "0x"),
    "4 topics with data": mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB), t_uint(1)], enc(["uint256"], [1])),
    "1 topic, 64 bytes": mklog([T["Transfer"]], "0x" + "00" * 64),
    "paused: 2 topics": mklog([T["Paused"], t_addr(AGENT)], "0x"),
    "paused: high bytes": mklog([T["Paused"]], "0x" + "ff" * 32),
    "address frozen: bool 2": mklog([T["AddressFrozen"], t_addr(ALICE), t_uint(2), t_addr(AGENT)], "0x"),
    "tokens frozen: no data": mklog([T["TokensFrozen"], t_addr(ALICE)], "0x"),
    "recovery: 3 topics": mklog([T["RecoverySuccess"], t_addr(ALICE), t_addr(BOB)], "0x"),
    "multiplier3: 4 words": mklog([T["UIMultiplierUpdated3"]], enc(["uint256"] * 4, [1, 2, 3, 4])),
    "multiplier4: 3 words": mklog([T["UIMultiplierUpdated4"]], enc(["uint256"] * 3, [1, 2, 3])),
    "multiplier: zero": mklog([T["UIMultiplierUpdated3"]], enc(["uint256"] * 3, [10**18, 0, 5])),
    "backed multiplier: zero": mklog([T["MultiplierUpdated"]], enc(["uint256"], [0])),
    "pause mode: bool 7": mklog([T["PauseModeChange"]], enc(["uint256"], [7])),
    "token info: short": mklog([T["UpdatedTokenInformation"], t_uint(1), t_uint(2), t_addr(ONCHAINID)],
                               enc(["uint8"], [0])),
    "token info: string past end": mklog(
        [T["UpdatedTokenInformation"], t_uint(1), t_uint(2), t_addr(ONCHAINID)],
        "0x" + f"{0:064x}" + f"{64:064x}" + f"{100:064x}" + "34" * 32),
    "symbol changed: bad offset": mklog([T["SymbolChanged2"]], "0x" + f"{4096:064x}" + f"{64:064x}"),
    "forced transfer: 2 topics": mklog([T["ForcedTransfer"], t_addr(ALICE)], enc(["uint256"], [1])),
    "issued: no words": mklog([T["Issued"], t_addr(AGENT), t_addr(ALICE)], "0x"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_log_is_a_counted_skip_naming_tx_and_log_index(name):
    lg = MALFORMED[name]
    out = decoder("security").decode(mkblock(lg))
    assert out.events == ()
    assert len(out.skipped) == 1
    s = out.skipped[0]
    assert (s.reason, s.transaction_hash, s.log_index, s.address) == ("malformed", TX, 7, TOKEN)
    assert s.raw["detail"]


def test_non_hex_data_is_a_skip_not_an_exception():
    # a garbled answer (a proxy or a broken node) must be skipped like any other malformed log
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "zz" * 32)
    out = decoder("erc20").decode(mkblock(lg))
    assert out.events == ()
    assert [s.reason for s in out.skipped] == ["malformed"]


def test_log_without_topics_is_skipped():
    out = decoder("erc20").decode(mkblock(mklog([], "0x")))
    assert [(s.reason, s.log_index) for s in out.skipped] == [("malformed", 7)]


def test_skips_do_not_stop_the_rest_of_the_block():
    good = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [3]), log_index=2)
    bad = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "00" * 31, log_index=1)
    out = decoder("erc20").decode(mkblock(bad, good))
    assert [e.log_index for e in out.events] == [2]
    assert [s.log_index for s in out.skipped] == [1]


def test_unknown_topic0_is_an_unknown_event_skip():
    t0 = abi.topic0("Something(uint256)")
    out = decoder("erc20").decode(mkblock(mklog([t0], enc(["uint256"], [1]))))
    assert out.events == ()
    assert [(s.reason, s.log_index) for s in out.skipped] == [("unknown_event", 7)]
    assert t0 in out.skipped[0].raw["detail"]


def test_event_outside_the_profile_is_unknown():
    # MultiplierUpdated is decoded for "backed" but means nothing to a plain erc20 token
    lg = mklog([T["MultiplierUpdated"]], enc(["uint256"], [2 * 10**18]))
    assert [s.reason for s in decoder("erc20").decode(mkblock(lg)).skipped] == ["unknown_event"]
    assert decode_one(lg, "backed").event_type == "multiplier_updated"


@pytest.mark.parametrize("sig", ["Approval(address,address,uint256)", "AgentAdded(address)", "AgentRemoved(address)",
                                 "OwnershipTransferred(address,address)", "Initialized(uint8)", "Initialized(uint64)",
                                 "RoleGranted(bytes32,address,address)", "IdentityStored(address,address)"])
def test_ignored_events_give_nothing(sig):
    lg = mklog([abi.topic0(sig), t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [1]))
    out = decoder("security").decode(mkblock(lg))
    assert out.events == () and out.skipped == ()


def test_erc721_approval_shape_is_ignored_too():
    lg = mklog([abi.topic0("Approval(address,address,uint256)"), t_addr(ALICE), t_addr(BOB), t_uint(9)], "0x")
    out = decoder("erc20").decode(mkblock(lg))
    assert out.events == () and out.skipped == ()


def test_logs_from_unwatched_addresses_are_ignored():
    other = "0x" + "99" * 20
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [1]), address=other)
    bad = mklog([T["Transfer"]], "0x", address=other)
    out = decoder("security").decode(mkblock(lg, bad))
    assert out.events == () and out.skipped == ()


def test_addresses_are_bound_lower_case():
    dec = EvmDecoder({TOKEN.upper().replace("0X", "0x"): [Binding(TOKEN, "token", ("erc20",))]})
    assert dec.addresses() == [TOKEN]
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [1]))
    assert len(dec.decode(mkblock(lg)).events) == 1


# ---- pause, freeze, recovery ---------------------------------------------------------------------

def test_paused_and_unpaused():
    p = mklog([T["Paused"]], enc(["address"], [AGENT]))
    u = mklog([T["Unpaused"]], enc(["address"], [AGENT]))
    assert decode_one(p, "erc20") == ev("paused", data={"account": AGENT}, token_update={"paused": True})
    assert decode_one(u, "erc20") == ev("unpaused", data={"account": AGENT}, token_update={"paused": False})


@pytest.mark.parametrize(("flag", "kind"), [(1, "address_frozen"), (0, "address_unfrozen")])
def test_address_frozen(flag, kind):
    lg = mklog([T["AddressFrozen"], t_addr(ALICE), t_uint(flag), t_addr(AGENT)], "0x")
    assert decode_one(lg, "erc3643") == ev(kind, to_address=ALICE, data={"agent": AGENT}, holder=ALICE,
                                           holder_update={"frozen": bool(flag)})


def test_tokens_frozen_and_unfrozen_are_deltas():
    f = mklog([T["TokensFrozen"], t_addr(ALICE)], enc(["uint256"], [40]))
    u = mklog([T["TokensUnfrozen"], t_addr(ALICE)], enc(["uint256"], [15]))
    assert decode_one(f, "erc3643") == ev("tokens_frozen", to_address=ALICE, amount=40, holder=ALICE,
                                          holder_update={"frozen_delta": 40})
    assert decode_one(u, "erc3643") == ev("tokens_unfrozen", to_address=ALICE, amount=15, holder=ALICE,
                                          holder_update={"frozen_delta": -15})


def test_erc7943_frozen_is_absolute():
    lg = mklog([T["Frozen"], t_addr(ALICE)], enc(["uint256"], [70]))
    assert decode_one(lg) == ev("frozen_amount_set", to_address=ALICE, amount=70, holder=ALICE,
                                holder_update={"frozen_amount": 70})


def test_recovery_success():
    lg = mklog([T["RecoverySuccess"], t_addr(ALICE), t_addr(BOB), t_addr(ONCHAINID)], "0x")
    assert decode_one(lg, "erc3643") == ev("recovery", from_address=ALICE, to_address=BOB,
                                           data={"investor_onchain_id": ONCHAINID}, action=("recovery", ALICE, BOB))


# ---- token information: hashed indexed strings ---------------------------------------------------

def token_info_log(name: str, symbol: str, decimals: int = 0, version: str = "4.1.3") -> RawLog:
    return mklog([T["UpdatedTokenInformation"], abi.keccak_text(name), abi.keccak_text(symbol), t_addr(ONCHAINID)],
                 enc(["uint8", "string"], [decimals, version]))


def test_keccak_of_the_reference_names():
    # the reference records topic1 0xcabd4381…9835 = keccak("Acme Equity"), topic2 0x7fc6c0cd…5b38 = keccak("ACME")
    assert abi.keccak_text("Acme Equity").startswith("0xcabd4381") and abi.keccak_text("Acme Equity").endswith("9835")
    assert abi.keccak_text("ACME").startswith("0x7fc6c0cd") and abi.keccak_text("ACME").endswith("5b38")


def test_updated_token_information_resolved_from_call_candidates():
    lg = token_info_log("Acme Equity Class A", "ACMEA", decimals=6)
    # candidates: the value at this block, at the block before, and latest (two renames in one block)
    calls = {(TOKEN, "name"): ["Acme Equity", None, "Acme Equity Class A"],
             (TOKEN, "symbol"): ["ACMEA", "ACME", "ACMEA"]}
    e = decode_one(lg, "erc3643", calls=calls)
    assert e == ev("token_information_updated",
                   data={"version": "4.1.3", "onchain_id": ONCHAINID, "name_hash": abi.keccak_text("Acme Equity Class A"),
                         "symbol_hash": abi.keccak_text("ACMEA")},
                   token_update={"decimals": 6, "name": "Acme Equity Class A", "symbol": "ACMEA"})


def test_updated_token_information_unresolved_keeps_hashes():
    lg = token_info_log("Acme Equity", "ACME")
    calls = {(TOKEN, "name"): ["Something Else"], (TOKEN, "symbol"): ["ACME"]}
    e = decode_one(lg, "erc3643", calls=calls)
    assert e.token_update == {"decimals": 0, "symbol": "ACME"}
    assert e.data["unresolved"] == ["name"]
    assert e.data["name_hash"] == abi.keccak_text("Acme Equity")
    e2 = decode_one(lg, "erc3643")  # no eth_call answers at all
    assert e2.token_update == {"decimals": 0}
    assert e2.data["unresolved"] == ["name", "symbol"]


def test_updated_token_information_decimals_out_of_uint8_is_malformed():
    lg = mklog([T["UpdatedTokenInformation"], t_uint(1), t_uint(2), t_addr(ONCHAINID)],
               enc(["uint256", "string"], [256, "4.1.3"]))
    assert [s.reason for s in decoder("erc3643").decode(mkblock(lg)).skipped] == ["malformed"]


def test_identity_registry_added_watches_the_registry():
    lg = mklog([T["IdentityRegistryAdded"], t_addr(REGISTRY)], "0x")
    out = decoder("erc3643").decode(mkblock(lg))
    assert one(out) == ev("identity_registry_added", to_address=REGISTRY, token_update={"identity_registry": REGISTRY})
    assert out.new_watched == ((REGISTRY, TOKEN, "identity_registry"),)


def test_compliance_added():
    lg = mklog([T["ComplianceAdded"], t_addr(AGENT)], "0x")
    assert decode_one(lg, "erc3643") == ev("compliance_added", to_address=AGENT, token_update={"compliance": AGENT})


# ---- identity registry: applied to each bound token ---------------------------------------------

def test_registry_events_apply_to_each_bound_token_with_distinct_sub():
    dec = decoder("erc3643", registry_tokens=(TOKEN, TOKEN2))
    reg = mklog([T["IdentityRegistered"], t_addr(ALICE), t_addr(ONCHAINID)], "0x", address=REGISTRY)
    rem = mklog([T["IdentityRemoved"], t_addr(BOB), t_addr(ONCHAINID)], "0x", address=REGISTRY, log_index=8)
    cty = mklog([T["CountryUpdated"], t_addr(ALICE), t_uint(826)], "0x", address=REGISTRY, log_index=9)
    out = dec.decode(mkblock(reg, rem, cty))
    assert out.skipped == ()
    base = dict(transaction_hash=TX)
    assert list(out.events) == [
        Event(TOKEN, "identity_registered", log_index=7, to_address=ALICE, holder=ALICE,
              data={"identity": ONCHAINID, "registry": REGISTRY},
              holder_update={"registered": True, "identity": ONCHAINID}, sub=0, **base),
        Event(TOKEN2, "identity_registered", log_index=7, to_address=ALICE, holder=ALICE,
              data={"identity": ONCHAINID, "registry": REGISTRY},
              holder_update={"registered": True, "identity": ONCHAINID}, sub=1, **base),
        Event(TOKEN, "identity_removed", log_index=8, to_address=BOB, holder=BOB,
              data={"identity": ONCHAINID, "registry": REGISTRY}, holder_update={"registered": False}, sub=0, **base),
        Event(TOKEN2, "identity_removed", log_index=8, to_address=BOB, holder=BOB,
              data={"identity": ONCHAINID, "registry": REGISTRY}, holder_update={"registered": False}, sub=1, **base),
        Event(TOKEN, "country_updated", log_index=9, to_address=ALICE, holder=ALICE,
              data={"country": 826, "registry": REGISTRY}, holder_update={"country": 826}, sub=0, **base),
        Event(TOKEN2, "country_updated", log_index=9, to_address=ALICE, holder=ALICE,
              data={"country": 826, "registry": REGISTRY}, holder_update={"country": 826}, sub=1, **base),
    ]


def test_registry_bound_later_and_twice_for_the_same_token():
    dec = decoder("erc3643")
    dec.bind(REGISTRY, Binding(TOKEN, "identity_registry", ()))
    dec.bind(REGISTRY, Binding(TOKEN, "identity_registry", ()))  # idempotent
    reg = mklog([T["IdentityRegistered"], t_addr(ALICE), t_addr(ONCHAINID)], "0x", address=REGISTRY)
    assert [e.sub for e in dec.decode(mkblock(reg)).events] == [0]
    assert dec.addresses() == sorted([TOKEN, REGISTRY])


def test_registry_skips_are_counted_once_not_per_token():
    dec = decoder("erc3643", registry_tokens=(TOKEN, TOKEN2))
    bad = mklog([T["CountryUpdated"], t_addr(ALICE), t_uint(70000)], "0x", address=REGISTRY)
    unknown = mklog([abi.topic0("Nope()")], "0x", address=REGISTRY, log_index=8)
    transfer = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [1]), address=REGISTRY, log_index=9)
    out = dec.decode(mkblock(bad, unknown, transfer))
    assert out.events == ()
    assert [(s.reason, s.log_index) for s in out.skipped] == [("malformed", 7), ("unknown_event", 8),
                                                               ("unknown_event", 9)]


# ---- multipliers ---------------------------------------------------------------------------------

def test_erc8056_three_arg_form():
    assert T["UIMultiplierUpdated3"].startswith("0x2205df45")
    lg = mklog([T["UIMultiplierUpdated3"]], enc(["uint256"] * 3, [10**18, 3 * 10**18 // 2, 1_800_000_000]))
    assert decode_one(lg, "erc8056") == ev(
        "multiplier_updated",
        data={"old_multiplier": "1", "new_multiplier": "1.5", "effective_at": 1_800_000_000,
              "raw_new_multiplier": str(3 * 10**18 // 2)},
        token_update={"multiplier": ("1", "1.5", 1_800_000_000)})


def test_erc8056_four_arg_first_draft_form():
    assert T["UIMultiplierUpdated4"].startswith("0x69cf8174")
    new = 10**18 // 3  # 0.333333333333333333: exact text, no float rounding
    lg = mklog([T["UIMultiplierUpdated4"]], enc(["uint256"] * 4, [2 * 10**18, new, 1_700_000_000, 1_700_086_400]))
    assert decode_one(lg, "erc8056") == ev(
        "multiplier_updated",
        data={"old_multiplier": "2", "new_multiplier": "0.333333333333333333", "effective_at": 1_700_086_400,
              "raw_new_multiplier": str(new), "set_at": 1_700_000_000},
        token_update={"multiplier": ("2", "0.333333333333333333", 1_700_086_400)})


@pytest.mark.parametrize(("raw", "text"), [
    (10**18, "1"), (2 * 10**18, "2"), (10 * 10**18, "10"), (1, "0.000000000000000001"),
    (1_000_000_000_000_000_001, "1.000000000000000001"), (U256_MAX, str(U256_MAX)[:-18] + "." + str(U256_MAX)[-18:])])
def test_multiplier_fixed_point_text_is_exact(raw, text):
    lg = mklog([T["MultiplierUpdated"]], enc(["uint256"], [raw]))
    e = decode_one(lg, "backed")
    assert e == ev("multiplier_updated", data={"new_multiplier": text, "raw_new_multiplier": str(raw)},
                   token_update={"multiplier": (text, None, None)})


def test_multiplier_update_cancelled():
    lg = mklog([T["UIMultiplierUpdateCancelled"]], enc(["uint256"] * 2, [5 * 10**17, 1_800_000_000]))
    assert decode_one(lg, "erc8056") == ev("multiplier_update_cancelled",
                                           data={"cancelled_multiplier": "0.5", "cancelled_effective_at": 1_800_000_000})


def test_stock_split_virtual_and_minted():
    a = mklog([T["StockSplit2"]], enc(["uint256"] * 2, [10**18, 2 * 10**18]))
    assert decode_one(a, "chainequity") == ev("stock_split", data={"old_multiplier": "1", "new_multiplier": "2"},
                                              token_update={"multiplier": ("2", None, None)})
    b = mklog([T["StockSplit3"]], enc(["uint256"] * 3, [2, 2000, 1_700_000_000]))
    assert decode_one(b, "chainequity") == ev(
        "stock_split", data={"multiplier": "2", "new_total_supply": "2000", "timestamp": 1_700_000_000},
        action=("stock_split", None, "2"))


# ---- renames, pause flags, allowlists (decodable strings in data) -------------------------------

def test_symbol_and_name_changed():
    s2 = mklog([T["SymbolChanged2"]], enc(["string", "string"], ["OLD", "NEW"]))
    s3 = mklog([T["SymbolChanged3"]], enc(["string", "string", "uint256"], ["OLD", "NEW2", 1_700_000_000]))
    n = mklog([T["NameChanged"]], enc(["string", "string"], ["Old Co", "Nouvelle Société"]))
    assert decode_one(s2, "chainequity") == ev("symbol_changed", data={"old_symbol": "OLD", "new_symbol": "NEW"},
                                               token_update={"symbol": "NEW"})
    assert decode_one(s3, "chainequity").token_update == {"symbol": "NEW2"}
    assert decode_one(n, "chainequity") == ev("name_changed", data={"old_name": "Old Co", "new_name": "Nouvelle Société"},
                                              token_update={"name": "Nouvelle Société"})


@pytest.mark.parametrize(("flag", "kind"), [(True, "paused"), (False, "unpaused")])
def test_backed_pause_mode_change(flag, kind):
    lg = mklog([T["PauseModeChange"]], enc(["bool"], [flag]))
    assert decode_one(lg, "backed") == ev(kind, token_update={"paused": flag})


@pytest.mark.parametrize(("name", "words", "value"), [
    ("WalletApproved1", None, True), ("WalletRevoked1", None, False),
    ("WalletApproved2", 1_700_000_000, True), ("WalletRevoked2", 1_700_000_000, False),
    ("UserAllowed", None, True), ("UserDisallowed", None, False)])
def test_allowlist_events(name, words, value):
    data = "0x" if words is None else enc(["uint256"], [words])
    lg = mklog([T[name], t_addr(ALICE)], data)
    assert decode_one(lg) == ev("allowlist_added" if value else "allowlist_removed", to_address=ALICE, holder=ALICE,
                                holder_update={"registered": value})


@pytest.mark.parametrize("value", [True, False])
def test_allowlist_updated(value):
    lg = mklog([T["AllowlistUpdated"], t_addr(ALICE)], enc(["bool"], [value]))
    assert decode_one(lg, "chainequity") == ev("allowlist_added" if value else "allowlist_removed", to_address=ALICE,
                                               holder=ALICE, holder_update={"registered": value})


# ---- companion events: labels only ----------------------------------------------------------------

COMPANIONS = [
    ("ForcedTransfer", [t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [50]), "forced_transfer", ALICE, BOB, 50),
    ("Issued", [t_addr(AGENT), t_addr(ALICE)], enc(["uint256", "bytes"], [1000, b"\x01\x02"]), "issued", None, ALICE,
     1000),
    ("Redeemed", [t_addr(AGENT), t_addr(ALICE)], enc(["uint256", "bytes"], [30, b""]), "redeemed", ALICE, None, 30),
    ("ControllerTransfer", [t_addr(ALICE), t_addr(BOB)],
     enc(["address", "uint256", "bytes", "bytes"], [AGENT, 77, b"x", b"y"]), "controller_transfer", ALICE, BOB, 77),
    ("Mint", [t_addr(AGENT), t_addr(ALICE)], enc(["uint256"], [5]), "issued", None, ALICE, 5),
    ("AdminBurn", [t_addr(AGENT), t_addr(BOB)], enc(["uint256"], [6]), "redeemed", BOB, None, 6),
    ("TransferShares", [t_addr(ALICE), t_addr(BOB)], enc(["uint256"], [8]), "transfer_shares", ALICE, BOB, 8),
    ("TransferWithUIAmount", [t_addr(ALICE), t_addr(BOB)], enc(["uint256", "uint256"], [9, 18]),
     "transfer_with_ui_amount", ALICE, BOB, 9),
]


@pytest.mark.parametrize("case", COMPANIONS, ids=[c[0] for c in COMPANIONS])
def test_companion_events_never_move_balances(case):
    name, topics, data, kind, frm, to, amount = case
    e = decode_one(mklog([T[name], *topics], data))
    assert e == ev(kind, from_address=frm, to_address=to, amount=amount)
    assert e.moves_balance is False and e.token_update is None and e.holder_update is None


def test_mint_with_issued_label_moves_the_balance_once():
    transfer = mklog([T["Transfer"], t_addr(ZERO_ADDRESS), t_addr(ALICE)], enc(["uint256"], [1000]), log_index=1)
    issued = mklog([T["Issued"], t_addr(AGENT), t_addr(ALICE)], enc(["uint256", "bytes"], [1000, b""]), log_index=2)
    out = decoder("security").decode(mkblock(transfer, issued))
    assert [(e.event_type, e.moves_balance) for e in out.events] == [("mint", True), ("issued", False)]


# ---- the catalog agrees with the reference table -------------------------------------------------

def _reference_table() -> dict[str, set[str]]:
    text = REFERENCE.read_text()
    rows = re.findall(r"^\|[^|\n]*\|\s*`([^`]+)`\s*\|[^|\n]*\|\s*`(0x[0-9a-f]{64})`\s*\|", text, re.M)
    table: dict[str, set[str]] = {}
    for sig, t0 in rows:
        table.setdefault(sig, set()).add(t0)
    return table


def test_every_topic0_equals_the_reference_table():
    table = _reference_table()
    assert len(table) > 80  # the parse found the catalog
    for name, sig in SIG.items():
        assert sig in table, f"{name}: {sig} is not in the reference table"
        assert table[sig] == {T[name]}, f"{name}: decoder {T[name]} vs reference {table[sig]}"
    for sig in ("Approval(address,address,uint256)", "Initialized(uint8)", "Initialized(uint64)",
                "OwnershipTransferred(address,address)", "IdentityStored(address,address)",
                "CountryModified(address,uint16)", "ModuleInteraction(address,bytes4)"):
        (t0,) = table[sig]
        assert t0 in IGNORED, sig


def test_reference_table_is_keccak_of_its_signatures():
    for sig, t0s in _reference_table().items():
        assert t0s == {abi.topic0(sig)}, sig


# ---- real recorded data ---------------------------------------------------------------------------

def _mainnet_blocks() -> tuple[list[RawBlock], list[dict]]:
    records = [json.loads(line) for line in (DATA / "eth_b17173049-17173050_logs.jsonl").read_text().splitlines()]
    headers = {h["number"]: h for h in map(json.loads, (DATA / "eth_b17173049-17173050_blocks.jsonl")
                                            .read_text().splitlines())}
    blocks = []
    for number in sorted({r["block_number"] for r in records}):
        h = headers[number]
        ref = BlockRef(number, h["hash"], h["parent_hash"], h["timestamp"])
        logs = tuple(RawLog(r["address"], tuple(r["topics"]), r["data"], number, r["block_hash"], r["transaction_hash"],
                            r["transaction_index"], r["log_index"]) for r in records if r["block_number"] == number)
        blocks.append(RawBlock(ref, logs))
    return blocks, records


def test_mainnet_blocks_every_address_bound_as_erc20():
    blocks, records = _mainnet_blocks()
    assert len(records) == 681 and [len(b.logs) for b in blocks] == [271, 410]
    assert blocks[1].ref.parent_hash == blocks[0].ref.hash
    dec = EvmDecoder({r["address"]: [Binding(r["address"], "token", ("erc20",))] for r in records})
    decoded = [dec.decode(b) for b in blocks]
    events = [e for d in decoded for e in d.events]
    skipped = [s for d in decoded for s in d.skipped]

    # what the data says: 282 Transfers of ERC-20 shape, 9 of ERC-721 shape, nothing else with that topic0
    shapes = Counter((len(r["topics"]), len(r["data"]) - 2) for r in records if r["topics"][0] == T["Transfer"])
    assert shapes == Counter({(3, 64): 282, (4, 0): 9})
    assert len(events) == 282 and all(e.moves_balance for e in events)
    assert Counter(s.reason for s in skipped)["erc721_transfer"] == 9
    # every log is accounted for: an event, a counted skip, or an ignored topic (Approval)
    ignored = sum(1 for r in records if r["topics"][0] in IGNORED)
    assert len(events) + len(skipped) + ignored == 681
    assert {s.reason for s in skipped} == {"erc721_transfer", "unknown_event"}

    # ethereum-etl's own extraction has 291 rows: ours plus the 9 ERC-721 transfers (value = tokenId)
    etl = [json.loads(line) for line in
           (DATA / "eth_b17173049-17173050_token_transfers_ethereumetl_output.jsonl").read_text().splitlines()]
    assert len(etl) == 291
    ours = {(e.transaction_hash, e.log_index): (e.token, e.from_address, e.to_address, e.amount) for e in events}
    by_pos = {(r["transaction_hash"], r["log_index"]): r for r in records}
    nft = {(s.transaction_hash, s.log_index) for s in skipped if s.reason == "erc721_transfer"}
    assert len(nft) == 9
    for row in etl:
        key = (row["transaction_hash"], row["log_index"])
        expected = (row["token_address"], row["from_address"], row["to_address"], int(row["value"]))
        if key in nft:
            assert int(by_pos[key]["topics"][3], 16) == int(row["value"])  # ETL took the tokenId as a value
        else:
            assert ours[key] == expected
    assert set(ours) | nft == {(r["transaction_hash"], r["log_index"]) for r in etl}


def _receipt_logs(name: str) -> list[RawLog]:
    return [parse_log(d) for d in json.loads((DATA / name).read_text())["result"]["logs"]]


@pytest.mark.parametrize("name", ["polygon_b23887160_receipt_0xcc6321f6_swap.json",
                                  "polygon_b9013767_receipt_0x4c4ff26c_erc1155_and_usdc.json",
                                  "polygon_b9013760_receipt_0x01a776a4_feeonly.json"])
def test_polygon_fee_pseudo_logs_are_not_transfers(name):
    logs = _receipt_logs(name)
    system = "0x0000000000000000000000000000000000001010"
    assert any(lg.address == system for lg in logs)
    dec = EvmDecoder({lg.address: [Binding(lg.address, "token", ("erc20",))] for lg in logs})
    ref = BlockRef(logs[0].block_number, logs[0].block_hash, "0x" + "00" * 32, 0)
    out = dec.decode(RawBlock(ref, tuple(logs)))
    assert all(e.token != system for e in out.events)
    assert {s.reason for s in out.skipped if s.address == system} == {"unknown_event"}
    erc20_shaped = [lg for lg in logs if lg.topics[0] == T["Transfer"] and len(lg.topics) == 3 and len(lg.data) == 66]
    assert [(e.transaction_hash, e.log_index) for e in out.events] == \
        [(lg.transaction_hash, lg.log_index) for lg in erc20_shaped]


def test_polygon_usdc_transfer_exact():
    logs = _receipt_logs("polygon_b9013767_receipt_0x4c4ff26c_erc1155_and_usdc.json")
    usdc = "0x2791bca1f2de4661ed88a30c99a7a9449aa84174"
    dec = EvmDecoder({usdc: [Binding(usdc, "token", ("erc20",))]})
    out = dec.decode(RawBlock(BlockRef(9013767, logs[0].block_hash, "0x", 0), tuple(logs)))
    (e,) = out.events
    lg = next(lg for lg in logs if lg.address == usdc)
    assert e == Event(usdc, "transfer", lg.transaction_hash, 1, "0x" + lg.topics[1][26:], "0x" + lg.topics[2][26:],
                      int(lg.data, 16), moves_balance=True)
    assert out.skipped == ()  # the ERC-1155 and fee logs come from other contracts


def test_polygon_filter_logs_all_decode():
    items = json.loads((DATA / "polygon_b13572468_eth_getFilterLogs_Transfer.json").read_text())["result"]
    logs = [parse_log(d) for d in items]
    dec = EvmDecoder({lg.address: [Binding(lg.address, "token", ("erc20",))] for lg in logs})
    out = dec.decode(RawBlock(BlockRef(13572468, logs[0].block_hash, "0x", 0), tuple(logs)))
    assert len(out.events) == 14 and out.skipped == ()
    assert [e.log_index for e in out.events] == [int(d["logIndex"], 16) for d in items]


def _call_result(name: str) -> str:
    return json.loads((DATA / name).read_text())["result"]


def test_eth_call_recordings_decode():
    assert abi.decode_string_result(_call_result("eth_token_EOS_0x86fa0498_eth_call_symbol.json")) == "EOS"
    assert abi.decode_string_result(_call_result("eth_token_EOS_0x86fa0498_eth_call_name.json")) == ""
    assert abi.decode_uint_result(_call_result("eth_token_EOS_0x86fa0498_eth_call_decimals.json")) == 18
    assert abi.decode_uint_result(_call_result("eth_token_EOS_0x86fa0498_eth_call_totalSupply.json")) == 10**27
    assert abi.decode_string_result(_call_result("eth_token_0xf763be8b_eth_call_name_padded.json")) == "ETH"
    assert abi.decode_string_result(_call_result("eth_token_0xf763be8b_eth_call_symbol_padded.json")) == "ETH"


def test_abi_helpers_reject_bad_shapes():
    with pytest.raises(abi.AbiShapeError):
        abi.words("0x" + "00" * 33)
    with pytest.raises(abi.AbiShapeError):
        abi.words("0x" + "00" * 64, 1)
    with pytest.raises(abi.AbiShapeError):
        abi.word_address("ff" * 32)
    with pytest.raises(abi.AbiShapeError):
        abi.word_bool(f"{2:064x}")
    with pytest.raises(abi.AbiShapeError):
        abi.decode_uint_result("0x")
    assert abi.decode_string_result("0x") == ""
    assert abi.decode_string_result(enc(["string"], ["Acme Equity"])) == "Acme Equity"
    assert abi.selector("name()") == "0x06fdde03" and abi.selector("symbol()") == "0x95d89b41"


def test_malformed_skip_is_logged_with_block_tx_and_log_index(caplog):
    lg = mklog([T["Transfer"], t_addr(ALICE), t_addr(BOB)], "0x" + "00" * 31, log_index=42)
    with caplog.at_level("DEBUG", logger="indexer.decoders.evm"):
        decoder("erc20").decode(mkblock(lg, number=123))
    (rec,) = [r for r in caplog.records if r.name == "indexer.decoders.evm"]
    assert rec.levelname == "WARNING"
    text = rec.getMessage()
    assert "malformed" in text and "block 123" in text and TX in text and "log index 42" in text
    assert (rec.block_number, rec.tx, rec.log_index) == (123, TX, 42)
