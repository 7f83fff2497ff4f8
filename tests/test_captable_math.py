"""Cap-table math: split multipliers in force at a block's time, exact shares, EIP-55, captable() and render()."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from indexer.amounts import decimal_text, fixed18_to_text, float_to_text, multiplier_in_force, scale, share
from indexer.captable import captable, render, to_checksum
from indexer.errors import UsageError
from indexer.models import ZERO_ADDRESS, BlockRef, DecodedBlock, Event
from indexer.store import Store, connect

CHAIN = "testchain"
TOKEN = "0x" + "a1" * 20
A, B, C, D, E = ("0x" + c * 40 for c in "abcde")


# ---- EIP-55 ------------------------------------------------------------------------------------------

EIP55_VECTORS = [  # from the EIP-55 text: all caps, all lower, mixed
    "0x52908400098527886E0F7030069857D2E4169EE7", "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77", "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_eip55_checksum_vectors(address):
    assert to_checksum(address.lower()) == address
    assert to_checksum(address.upper().replace("0X", "0x")) == address
    assert to_checksum(address) == address


def test_checksum_passes_non_evm_addresses_through():
    mint = "XsbEhLAtcf6HdfpFZ5xEMdqW8nfAvcsP5bdudRLJzJp"  # base58 Solana mint
    assert to_checksum(mint) == mint
    assert to_checksum("0x1234") == "0x1234"


# ---- exact numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ts", "expected"), [(1029, "1"), (1030, "2"), (1031, "2")])
def test_multiplier_in_force_switches_at_effective_time(ts, expected):
    assert multiplier_in_force("1", "2", 1030, ts) == expected


def test_multiplier_without_schedule():
    assert multiplier_in_force("1.5", None, None, 10**12) == "1.5"
    assert multiplier_in_force("1.5", "3", None, 10**12) == "1.5"


@pytest.mark.parametrize(("amount", "multiplier", "expected"), [
    (3, "0.5", 1), (1000, "1.5", 1500), (7, "1", 7), (1, "0.000000000000000001", 0),
    (10**18, "0.000000000000000001", 1), ((1 << 256) - 1, "2", ((1 << 256) - 1) * 2),
    (10**30 + 1, "0.333333333333333333", (10**30 + 1) * 333333333333333333 // 10**18)])
def test_scale_is_exact_and_rounds_down(amount, multiplier, expected):
    assert scale(amount, multiplier) == expected


def test_fixed_point_and_float_texts():
    assert fixed18_to_text(15 * 10**17) == "1.5"
    assert fixed18_to_text(10**36) == "1000000000000000000"
    assert float_to_text(1.1) == "1.1"  # not 1.100000000000000088817841970012523
    assert decimal_text(Decimal("1.2300")) == "1.23" and decimal_text(Decimal(0)) == "0"


@pytest.mark.parametrize("parts", [[1, 1, 1], [600, 300, 100], [500, 300, 100, 1], [1, 2**255, 3, 7],
                                   [10**18 - 1, 1], [999_999_937, 2, 3, 5, 7, 11, 13]])
def test_ownership_shares_sum_to_one(parts):
    total = sum(parts)
    shares = [share(p, total) for p in parts]
    for s, p in zip(shares, parts):
        exact = Decimal(p) / Decimal(total)
        assert abs(Decimal(s) - exact) <= Decimal("0.5e-18")
        assert "e" not in s.lower()
    assert abs(sum(Decimal(s) for s in shares) - 1) <= Decimal("1e-18") * len(parts)


def test_share_edges():
    assert share(5, 0) == "0"
    assert share(1, 1) == "1"
    assert share(1, 3) == "0.333333333333333333"
    assert share(2, 3) == "0.666666666666666667"


# ---- captable() on a store filled with synthetic blocks ---------------------------------------------

def ref(n: int) -> BlockRef:
    return BlockRef(n, f"0x{n:064x}", f"0x{n - 1:064x}", 1000 + 12 * n)


def move(frm, to, amount, li):
    kind = "mint" if frm == ZERO_ADDRESS else "burn" if to == ZERO_ADDRESS else "transfer"
    return Event(TOKEN, kind, f"0x{li:064x}", li, frm, to, amount, moves_balance=True)


def update(li, **kw):
    return Event(TOKEN, "update", f"0x{li:064x}", li, **kw)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("captable") / "index.db"
    store = Store(str(path), chain=CHAIN, chain_id=1).open()
    Z = ZERO_ADDRESS
    store.commit_blocks([
        DecodedBlock(ref(1), (move(Z, A, 600, 0), move(Z, B, 300, 1), move(Z, C, 100, 2)),
                     token_info=((TOKEN, {"name": "Acme Equity", "symbol": "ACME", "decimals": 0}),)),
        # ERC-8056: x2 from unix time 1030, between block 2 (1024) and block 3 (1036)
        DecodedBlock(ref(2), (update(0, token_update={"multiplier": ("1", "2", 1030)}),)),
        DecodedBlock(ref(3), (move(A, D, 100, 0), update(1, holder=B, holder_update={"frozen": True}),
                              update(2, holder=C, holder_update={"frozen_delta": 50}),
                              update(3, holder=D, holder_update={"registered": True}))),
        DecodedBlock(ref(4), (move(Z, E, 1, 0), move(C, Z, 100, 1))),
        # Backed MultiplierUpdated: 1.5, in force at once
        DecodedBlock(ref(5), (update(0, token_update={"multiplier": ("1.5", None, None)}),
                              update(1, token_update={"paused": True}))),
    ])
    store.commit_blocks([DecodedBlock(ref(9), (move(A, B, 1, 0),))])  # blocks 6-8 had nothing: not stored
    store.close()
    conn = connect(str(path), readonly=True)
    yield conn
    conn.close()


def holders(table) -> dict[str, tuple]:
    return {h["address"]: (h["balance"], h["adjusted_balance"], h["ownership"]) for h in table["holders"]}


def ck(a: str) -> str:
    return to_checksum(a)


def test_captable_before_the_scheduled_split(db):
    t1 = captable(db, CHAIN, TOKEN, 1)
    assert (t1["block_number"], t1["block_hash"], t1["block_timestamp"]) == (1, ref(1).hash, 1012)
    assert (t1["name"], t1["symbol"], t1["decimals"], t1["multiplier"]) == ("Acme Equity", "ACME", 0, "1")
    assert t1["total_supply"] == "1000" and t1["holder_count"] == 3 and t1["token"] == ck(TOKEN)
    assert holders(t1) == {ck(A): ("600", "600", "0.6"), ck(B): ("300", "300", "0.3"), ck(C): ("100", "100", "0.1")}
    assert [h["address"] for h in t1["holders"]] == [ck(A), ck(B), ck(C)]  # largest first

    t2 = captable(db, CHAIN, TOKEN, 2)
    assert t2["multiplier"] == "1" and t2["block_timestamp"] == 1024
    assert t2["pending_multiplier"] == {"multiplier": "2", "effective_at": 1030}
    assert t2["adjusted_total_supply"] == "1000"


def test_captable_after_the_scheduled_split(db):
    t3 = captable(db, CHAIN, TOKEN, 3)
    assert t3["multiplier"] == "2" and t3["pending_multiplier"] is None
    assert t3["adjusted_total_supply"] == "2000"
    assert holders(t3) == {ck(A): ("500", "1000", "0.5"), ck(B): ("300", "600", "0.3"),
                           ck(C): ("100", "200", "0.1"), ck(D): ("100", "200", "0.1")}
    by = {h["address"]: h for h in t3["holders"]}
    assert by[ck(B)]["frozen"] is True and by[ck(B)]["frozen_amount"] == "0" and by[ck(B)]["registered"] is None
    assert by[ck(C)]["frozen"] is False and by[ck(C)]["frozen_amount"] == "50"
    assert by[ck(D)]["registered"] is True
    assert by[ck(A)]["frozen"] is False and by[ck(A)]["frozen_amount"] == "0"


def test_captable_after_burn_and_immediate_multiplier(db):
    t4 = captable(db, CHAIN, TOKEN, 4)
    assert t4["total_supply"] == "901" and t4["holder_count"] == 4  # C burned everything: not a holder
    assert ck(C) not in holders(t4)
    total = sum(Decimal(h["ownership"]) for h in t4["holders"])
    assert abs(total - 1) <= Decimal("1e-18") * t4["holder_count"]
    assert holders(t4)[ck(E)] == ("1", "2", share(1, 901))

    t5 = captable(db, CHAIN, TOKEN, 5)
    assert t5["multiplier"] == "1.5" and t5["paused"] is True
    assert holders(t5)[ck(A)] == ("500", "750", share(500, 901))
    assert holders(t5)[ck(E)] == ("1", "1", share(1, 901))  # 1.5 rounds down
    assert t5["adjusted_total_supply"] == "1351"


def test_captable_at_an_unstored_block_and_latest(db):
    t7 = captable(db, CHAIN, TOKEN, 7)
    assert t7["block_hash"] is None and t7["block_timestamp"] == ref(5).timestamp
    assert holders(t7) == holders(captable(db, CHAIN, TOKEN, 5))
    latest = captable(db, CHAIN, TOKEN)
    assert latest["block_number"] == 9
    assert holders(latest)[ck(A)][0] == "499" and holders(latest)[ck(B)][0] == "301"


def test_captable_of_an_unknown_token_is_empty(db):
    t = captable(db, CHAIN, "0x" + "77" * 20, 5)
    assert t["holders"] == [] and t["total_supply"] == "0" and t["multiplier"] == "1"


@pytest.mark.parametrize(("block", "message"), [(10, "not indexed yet"), (0, "before the first indexed block")])
def test_captable_outside_the_indexed_range(db, block, message):
    with pytest.raises(UsageError, match=message):
        captable(db, CHAIN, TOKEN, block)


def test_captable_of_an_empty_database(tmp_path):
    path = tmp_path / "empty.db"
    Store(str(path), chain=CHAIN).open().close()
    conn = connect(str(path), readonly=True)
    try:
        with pytest.raises(UsageError, match="nothing is indexed"):
            captable(conn, CHAIN, TOKEN)
    finally:
        conn.close()


# ---- render ------------------------------------------------------------------------------------------

def test_render_json_round_trips(db):
    t = captable(db, CHAIN, TOKEN, 3)
    assert json.loads(render(t, "json")) == t


def test_render_csv(db):
    t = captable(db, CHAIN, TOKEN, 3)
    rows = list(csv.reader(io.StringIO(render(t, "csv"))))
    assert rows[0] == ["address", "balance", "adjusted_balance", "ownership", "frozen", "frozen_amount", "registered"]
    # ties (C and D hold 100 each) are ordered by address
    assert rows[1:] == [
        [ck(A), "500", "1000", "0.5", "False", "0", ""],
        [ck(B), "300", "600", "0.3", "True", "0", ""],
        [ck(C), "100", "200", "0.1", "False", "50", ""],
        [ck(D), "100", "200", "0.1", "False", "0", "True"],
    ]


def test_render_table(db):
    text = render(captable(db, CHAIN, TOKEN, 2), "table")
    lines = text.splitlines()
    assert lines[0] == f"Acme Equity (ACME) {ck(TOKEN)} on {CHAIN}"
    assert lines[1] == f"block 2 {ref(2).hash}"
    assert "multiplier 1 " in lines[2] and "total supply 1000" in lines[2] and "holders 3" in lines[2]
    assert "scheduled multiplier 2 from unix time 1030" in text
    assert any(line.startswith(ck(A)) and line.split()[1:4] == ["600", "600", "0.6"] for line in lines)
    t3 = render(captable(db, CHAIN, TOKEN, 3), "table")
    row_b = next(line for line in t3.splitlines() if line.startswith(ck(B)))
    row_c = next(line for line in t3.splitlines() if line.startswith(ck(C)))
    assert row_b.endswith("wallet") and row_c.endswith("50")
    t7 = render(captable(db, CHAIN, TOKEN, 7), "table")
    assert "(hash not stored: block had no events)" in t7
