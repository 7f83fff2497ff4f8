"""Decode SPL Token / Token-2022 account data (mints, token accounts, TLV extensions).

Layouts from the spl-token-2022 interface (state.rs, extension/mod.rs) as summarised in
/work/shared/reference/solana.md Part 2.1: base mint 82 bytes, base account 165 bytes,
byte 165 = AccountType (1 mint, 2 account), then TLVs `u16 type, u16 len, value`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from solders.pubkey import Pubkey

MINT_LEN = 82
ACCOUNT_LEN = 165
MULTISIG_LEN = 355
ACCOUNT_TYPE_MINT = 1
ACCOUNT_TYPE_ACCOUNT = 2

# ExtensionType numbering (u16 TLV type), spl-token-2022 interface extension/mod.rs.
EXTENSION_NAMES = {
    0: "uninitialized",
    1: "transferFeeConfig",
    2: "transferFeeAmount",
    3: "mintCloseAuthority",
    4: "confidentialTransferMint",
    5: "confidentialTransferAccount",
    6: "defaultAccountState",
    7: "immutableOwner",
    8: "memoTransfer",
    9: "nonTransferable",
    10: "interestBearingConfig",
    11: "cpiGuard",
    12: "permanentDelegate",
    13: "nonTransferableAccount",
    14: "transferHook",
    15: "transferHookAccount",
    16: "confidentialTransferFeeConfig",
    17: "confidentialTransferFeeAmount",
    18: "metadataPointer",
    19: "tokenMetadata",
    20: "groupPointer",
    21: "tokenGroup",
    22: "groupMemberPointer",
    23: "tokenGroupMember",
    24: "confidentialMintBurn",
    25: "scaledUiAmount",
    26: "pausable",
    27: "pausableAccount",
    28: "permissionedBurn",
}

ACCOUNT_STATES = {0: "uninitialized", 1: "initialized", 2: "frozen"}


@dataclass
class MintState:
    mint_authority: Pubkey | None
    supply: int
    decimals: int
    is_initialized: bool
    freeze_authority: Pubkey | None
    extensions: list[tuple[int, bytes]] = field(default_factory=list)

    def extension(self, ext_type: int) -> bytes | None:
        for t, value in self.extensions:
            if t == ext_type:
                return value
        return None


@dataclass
class TokenAccountState:
    mint: Pubkey
    owner: Pubkey
    amount: int
    delegate: Pubkey | None
    state: int
    is_native: int | None
    delegated_amount: int
    close_authority: Pubkey | None
    extensions: list[tuple[int, bytes]] = field(default_factory=list)


def _coption_pubkey(data: bytes, offset: int) -> Pubkey | None:
    tag = struct.unpack_from("<I", data, offset)[0]
    return Pubkey.from_bytes(data[offset + 4 : offset + 36]) if tag == 1 else None


def maybe_null_pubkey(raw: bytes) -> Pubkey | None:
    """OptionalNonZeroPubkey / MaybeNull<Address>: all zeros means None."""
    return None if raw == bytes(32) else Pubkey.from_bytes(raw)


def _parse_tlv(data: bytes, start: int) -> list[tuple[int, bytes]] | None:
    out = []
    pos = start
    while pos + 4 <= len(data):
        ext_type, length = struct.unpack_from("<HH", data, pos)
        if ext_type == 0:  # Uninitialized marks the end of the used TLV space
            break
        value = data[pos + 4 : pos + 4 + length]
        if len(value) != length:
            return None
        out.append((ext_type, bytes(value)))
        pos += 4 + length
    return out


def decode_mint(data: bytes) -> MintState | None:
    """StateWithExtensions::<Mint>::unpack semantics: exact 82 bytes, or >165 with type byte 1."""
    if len(data) == MULTISIG_LEN:
        return None
    if len(data) == MINT_LEN:
        extensions: list[tuple[int, bytes]] = []
    elif len(data) > ACCOUNT_LEN and data[ACCOUNT_LEN] == ACCOUNT_TYPE_MINT:
        if any(data[MINT_LEN:ACCOUNT_LEN]):
            return None
        parsed = _parse_tlv(data, ACCOUNT_LEN + 1)
        if parsed is None:
            return None
        extensions = parsed
    else:
        return None
    is_initialized = data[45] == 1
    if not is_initialized:
        return None
    return MintState(
        mint_authority=_coption_pubkey(data, 0),
        supply=struct.unpack_from("<Q", data, 36)[0],
        decimals=data[44],
        is_initialized=is_initialized,
        freeze_authority=_coption_pubkey(data, 46),
        extensions=extensions,
    )


def decode_token_account(data: bytes) -> TokenAccountState | None:
    """StateWithExtensions::<Account>::unpack semantics: 165 bytes, or more with type byte 2."""
    if len(data) < ACCOUNT_LEN or len(data) == MULTISIG_LEN:
        return None
    if len(data) > ACCOUNT_LEN:
        if data[ACCOUNT_LEN] != ACCOUNT_TYPE_ACCOUNT:
            return None
        parsed = _parse_tlv(data, ACCOUNT_LEN + 1)
        if parsed is None:
            return None
        extensions = parsed
    else:
        extensions = []
    state = data[108]
    if state == 0:  # uninitialized accounts do not unpack
        return None
    native_tag = struct.unpack_from("<I", data, 109)[0]
    return TokenAccountState(
        mint=Pubkey.from_bytes(data[0:32]),
        owner=Pubkey.from_bytes(data[32:64]),
        amount=struct.unpack_from("<Q", data, 64)[0],
        delegate=_coption_pubkey(data, 72),
        state=state,
        is_native=struct.unpack_from("<Q", data, 113)[0] if native_tag == 1 else None,
        delegated_amount=struct.unpack_from("<Q", data, 121)[0],
        close_authority=_coption_pubkey(data, 129),
        extensions=extensions,
    )


@dataclass
class ScaledUiAmountConfig:
    authority: Pubkey | None
    multiplier: float
    new_multiplier_effective_timestamp: int
    new_multiplier: float

    def multiplier_at(self, unix_timestamp: int) -> float:
        """The multiplier in force at a time (interface scaled_ui_amount/mod.rs)."""
        if unix_timestamp >= self.new_multiplier_effective_timestamp:
            return self.new_multiplier
        return self.multiplier


def decode_scaled_ui_amount(value: bytes) -> ScaledUiAmountConfig:
    authority = maybe_null_pubkey(value[0:32])
    multiplier, ts, new_multiplier = struct.unpack_from("<dqd", value, 32)
    return ScaledUiAmountConfig(authority, multiplier, ts, new_multiplier)


def _borsh_string(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", data, pos)
    pos += 4
    return data[pos : pos + length].decode("utf-8"), pos + length


@dataclass
class TokenMetadata:
    update_authority: Pubkey | None
    mint: Pubkey
    name: str
    symbol: str
    uri: str
    additional_metadata: list[tuple[str, str]]


def decode_token_metadata(value: bytes) -> TokenMetadata:
    """Borsh TokenMetadata (spl-token-metadata-interface state.rs)."""
    update_authority = maybe_null_pubkey(value[0:32])
    mint = Pubkey.from_bytes(value[32:64])
    name, pos = _borsh_string(value, 64)
    symbol, pos = _borsh_string(value, pos)
    uri, pos = _borsh_string(value, pos)
    (count,) = struct.unpack_from("<I", value, pos)
    pos += 4
    extra = []
    for _ in range(count):
        key, pos = _borsh_string(value, pos)
        val, pos = _borsh_string(value, pos)
        extra.append((key, val))
    return TokenMetadata(update_authority, mint, name, symbol, uri, extra)
