"""jsonParsed instruction dispatch, after agave transaction-status `parse_instruction.rs`,
`parse_system.rs`, `parse_associated_token.rs` and `lib.rs::parse_ui_instruction`.

A known program yields `{parsed, program, programId, stackHeight}`; anything else (or a
parse failure) yields the partially decoded `{programId, accounts, data(base58), stackHeight}`.
"""

from __future__ import annotations

import struct

from solders.pubkey import Pubkey

from .base58 import b58encode
from .parse_token import parse_token
from .programs import ATA_PROGRAM, MEMO_PROGRAM, MEMO_V1_PROGRAM, SYSTEM_PROGRAM, TOKEN_PROGRAMS


class _Bincode:
    """Just enough bincode (u32 enum tag, LE ints, u64-length strings) for SystemInstruction."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("short")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def pubkey(self) -> str:
        return str(Pubkey.from_bytes(self.take(32)))

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8")


def _need(accounts: list[str], n: int) -> None:
    if len(accounts) < n:
        raise ValueError("key mismatch")


def parse_system(data: bytes, a: list[str]) -> dict:
    r = _Bincode(data)
    tag = r.u32()
    if tag == 0:
        lamports, space, owner = r.u64(), r.u64(), r.pubkey()
        _need(a, 2)
        return {"type": "createAccount", "info": {"source": a[0], "newAccount": a[1], "lamports": lamports,
                                                   "space": space, "owner": owner}}
    if tag == 1:
        owner = r.pubkey()
        _need(a, 1)
        return {"type": "assign", "info": {"account": a[0], "owner": owner}}
    if tag == 2:
        lamports = r.u64()
        _need(a, 2)
        return {"type": "transfer", "info": {"source": a[0], "destination": a[1], "lamports": lamports}}
    if tag == 3:
        base, seed, lamports, space, owner = r.pubkey(), r.string(), r.u64(), r.u64(), r.pubkey()
        _need(a, 2)
        return {"type": "createAccountWithSeed", "info": {
            "source": a[0], "newAccount": a[1], "base": base, "seed": seed, "lamports": lamports,
            "space": space, "owner": owner}}
    if tag == 4:
        _need(a, 3)
        return {"type": "advanceNonce", "info": {"nonceAccount": a[0], "recentBlockhashesSysvar": a[1],
                                                  "nonceAuthority": a[2]}}
    if tag == 5:
        lamports = r.u64()
        _need(a, 5)
        return {"type": "withdrawFromNonce", "info": {
            "nonceAccount": a[0], "destination": a[1], "recentBlockhashesSysvar": a[2], "rentSysvar": a[3],
            "nonceAuthority": a[4], "lamports": lamports}}
    if tag == 6:
        authority = r.pubkey()
        _need(a, 3)
        return {"type": "initializeNonce", "info": {"nonceAccount": a[0], "recentBlockhashesSysvar": a[1],
                                                     "rentSysvar": a[2], "nonceAuthority": authority}}
    if tag == 7:
        authority = r.pubkey()
        _need(a, 2)
        return {"type": "authorizeNonce", "info": {"nonceAccount": a[0], "nonceAuthority": a[1],
                                                    "newAuthorized": authority}}
    if tag == 8:
        space = r.u64()
        _need(a, 1)
        return {"type": "allocate", "info": {"account": a[0], "space": space}}
    if tag == 9:
        base, seed, space, owner = r.pubkey(), r.string(), r.u64(), r.pubkey()
        _need(a, 2)
        return {"type": "allocateWithSeed", "info": {"account": a[0], "base": base, "seed": seed,
                                                      "space": space, "owner": owner}}
    if tag == 10:
        base, seed, owner = r.pubkey(), r.string(), r.pubkey()
        _need(a, 2)
        return {"type": "assignWithSeed", "info": {"account": a[0], "base": base, "seed": seed, "owner": owner}}
    if tag == 11:
        lamports, seed, owner = r.u64(), r.string(), r.pubkey()
        _need(a, 3)
        return {"type": "transferWithSeed", "info": {
            "source": a[0], "sourceBase": a[1], "destination": a[2], "lamports": lamports,
            "sourceSeed": seed, "sourceOwner": owner}}
    if tag == 12:
        _need(a, 1)
        return {"type": "upgradeNonce", "info": {"nonceAccount": a[0]}}
    raise ValueError("unknown system instruction")


def parse_associated_token(data: bytes, a: list[str]) -> dict:
    if not data or data == b"\x00":
        kind = "create"
    elif data == b"\x01":
        kind = "createIdempotent"
    elif data == b"\x02":
        _need(a, 7)
        return {"type": "recoverNested", "info": {
            "nestedSource": a[0], "nestedMint": a[1], "destination": a[2], "nestedOwner": a[3],
            "ownerMint": a[4], "wallet": a[5], "tokenProgram": a[6]}}
    else:
        raise ValueError("not an ATA instruction")
    _need(a, 6)
    return {"type": kind, "info": {"source": a[0], "account": a[1], "wallet": a[2], "mint": a[3],
                                   "systemProgram": a[4], "tokenProgram": a[5]}}


def _parse_known(program_id: Pubkey, data: bytes, accounts: list[str]) -> tuple[str, object] | None:
    try:
        if program_id in TOKEN_PROGRAMS:
            if not accounts:
                return None
            parsed = parse_token(data, accounts)
            return ("spl-token", parsed) if parsed is not None else None
        if program_id == SYSTEM_PROGRAM:
            if not accounts:
                return None
            return "system", parse_system(data, accounts)
        if program_id == ATA_PROGRAM:
            if not accounts:
                return None
            return "spl-associated-token-account", parse_associated_token(data, accounts)
        if program_id in (MEMO_PROGRAM, MEMO_V1_PROGRAM):
            return "spl-memo", data.decode("utf-8")
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return None


def parse_ui_instruction(program_id: Pubkey, data: bytes, accounts: list[str],
                         stack_height: int | None) -> dict:
    known = _parse_known(program_id, data, accounts)
    if known is not None:
        program, parsed = known
        return {"parsed": parsed, "program": program, "programId": str(program_id), "stackHeight": stack_height}
    return {"accounts": accounts, "data": b58encode(data), "programId": str(program_id),
            "stackHeight": stack_height}
