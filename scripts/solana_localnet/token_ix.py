"""Hand-built SPL Token / Token-2022 / ATA instructions (solders has no token builders).

Byte layouts: spl-token-2022 interface `instruction.rs` and the extension instruction
modules, summarised in /work/shared/reference/solana.md Part 2.1-2.2:
`[outer tag u8][sub-instruction u8][Pod data LE]`, COption<Pubkey> = 0 | 1+32,
MaybeNull<Pubkey> = 32 bytes (zeros = None). Token-metadata instructions start with an
8-byte discriminator (sha256("spl_token_metadata_interface:<name>")[:8]) and use borsh.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey

from .programs import ATA_PROGRAM, SYSTEM_PROGRAM, TOKEN_2022_PROGRAM

# AuthorityType (SetAuthority), interface instruction.rs.
AUTHORITY_TYPES = {
    "mintTokens": 0,
    "freezeAccount": 1,
    "accountOwner": 2,
    "closeAccount": 3,
    "transferFeeConfig": 4,
    "withheldWithdraw": 5,
    "closeMint": 6,
    "interestRate": 7,
    "permanentDelegate": 8,
    "confidentialTransferMint": 9,
    "transferHookProgramId": 10,
    "confidentialTransferFeeConfig": 11,
    "metadataPointer": 12,
    "groupPointer": 13,
    "groupMemberPointer": 14,
    "scaledUiAmount": 15,
    "pause": 16,
    "permissionedBurn": 17,
}

METADATA_FIELDS = {"name": 0, "symbol": 1, "uri": 2}


def metadata_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"spl_token_metadata_interface:{name}".encode()).digest()[:8]


def _w(pk: Pubkey, signer: bool = False) -> AccountMeta:
    return AccountMeta(pk, is_signer=signer, is_writable=True)


def _r(pk: Pubkey, signer: bool = False) -> AccountMeta:
    return AccountMeta(pk, is_signer=signer, is_writable=False)


def _coption(pk: Pubkey | None) -> bytes:
    return b"\x01" + bytes(pk) if pk is not None else b"\x00"


def _maybe_null(pk: Pubkey | None) -> bytes:
    return bytes(pk) if pk is not None else bytes(32)


def _borsh_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


# ---- classic TokenInstruction (same tags on Tokenkeg and Token-2022) ----


def initialize_mint2(program: Pubkey, mint: Pubkey, decimals: int, mint_authority: Pubkey,
                     freeze_authority: Pubkey | None) -> Instruction:
    data = bytes([20, decimals]) + bytes(mint_authority) + _coption(freeze_authority)
    return Instruction(program, data, [_w(mint)])


def initialize_account3(program: Pubkey, account: Pubkey, mint: Pubkey, owner: Pubkey) -> Instruction:
    return Instruction(program, bytes([18]) + bytes(owner), [_w(account), _r(mint)])


def transfer(program: Pubkey, source: Pubkey, destination: Pubkey, authority: Pubkey,
             amount: int) -> Instruction:
    data = bytes([3]) + struct.pack("<Q", amount)
    return Instruction(program, data, [_w(source), _w(destination), _r(authority, True)])


def transfer_checked(program: Pubkey, source: Pubkey, mint: Pubkey, destination: Pubkey,
                     authority: Pubkey, amount: int, decimals: int) -> Instruction:
    data = bytes([12]) + struct.pack("<QB", amount, decimals)
    return Instruction(program, data, [_w(source), _r(mint), _w(destination), _r(authority, True)])


def mint_to(program: Pubkey, mint: Pubkey, account: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    data = bytes([7]) + struct.pack("<Q", amount)
    return Instruction(program, data, [_w(mint), _w(account), _r(authority, True)])


def mint_to_checked(program: Pubkey, mint: Pubkey, account: Pubkey, authority: Pubkey,
                    amount: int, decimals: int) -> Instruction:
    data = bytes([14]) + struct.pack("<QB", amount, decimals)
    return Instruction(program, data, [_w(mint), _w(account), _r(authority, True)])


def burn(program: Pubkey, account: Pubkey, mint: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    data = bytes([8]) + struct.pack("<Q", amount)
    return Instruction(program, data, [_w(account), _w(mint), _r(authority, True)])


def burn_checked(program: Pubkey, account: Pubkey, mint: Pubkey, authority: Pubkey,
                 amount: int, decimals: int) -> Instruction:
    data = bytes([15]) + struct.pack("<QB", amount, decimals)
    return Instruction(program, data, [_w(account), _w(mint), _r(authority, True)])


def freeze_account(program: Pubkey, account: Pubkey, mint: Pubkey, authority: Pubkey) -> Instruction:
    return Instruction(program, bytes([10]), [_w(account), _r(mint), _r(authority, True)])


def thaw_account(program: Pubkey, account: Pubkey, mint: Pubkey, authority: Pubkey) -> Instruction:
    return Instruction(program, bytes([11]), [_w(account), _r(mint), _r(authority, True)])


def set_authority(program: Pubkey, target: Pubkey, current: Pubkey, authority_type: str,
                  new_authority: Pubkey | None) -> Instruction:
    data = bytes([6, AUTHORITY_TYPES[authority_type]]) + _coption(new_authority)
    return Instruction(program, data, [_w(target), _r(current, True)])


def close_account(program: Pubkey, account: Pubkey, destination: Pubkey, owner: Pubkey) -> Instruction:
    return Instruction(program, bytes([9]), [_w(account), _w(destination), _r(owner, True)])


def approve_checked(program: Pubkey, source: Pubkey, mint: Pubkey, delegate: Pubkey,
                    owner: Pubkey, amount: int, decimals: int) -> Instruction:
    data = bytes([13]) + struct.pack("<QB", amount, decimals)
    return Instruction(program, data, [_w(source), _r(mint), _r(delegate), _r(owner, True)])


def revoke(program: Pubkey, source: Pubkey, owner: Pubkey) -> Instruction:
    return Instruction(program, bytes([5]), [_w(source), _r(owner, True)])


def batch(program: Pubkey, instructions: Sequence[Instruction]) -> Instruction:
    """Batch (tag 255): per inner ix `u8 num_accounts, u8 data_len, data`; accounts concatenated."""
    data = bytearray([255])
    metas: list[AccountMeta] = []
    for ix in instructions:
        if ix.program_id != program:
            raise ValueError("batch: every inner instruction must target the batch's program")
        data += bytes([len(ix.accounts), len(ix.data)]) + bytes(ix.data)
        metas.extend(ix.accounts)
    return Instruction(program, bytes(data), metas)


# ---- Token-2022 extension instructions (built before InitializeMint unless noted) ----


def initialize_metadata_pointer(mint: Pubkey, authority: Pubkey | None,
                                metadata_address: Pubkey | None) -> Instruction:
    data = bytes([39, 0]) + _maybe_null(authority) + _maybe_null(metadata_address)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(mint)])


def initialize_permanent_delegate(mint: Pubkey, delegate: Pubkey) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([35]) + bytes(delegate), [_w(mint)])


def initialize_default_account_state(mint: Pubkey, state: int) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([28, 0, state]), [_w(mint)])


def update_default_account_state(mint: Pubkey, freeze_authority: Pubkey, state: int) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([28, 1, state]), [_w(mint), _r(freeze_authority, True)])


def initialize_scaled_ui_amount(mint: Pubkey, authority: Pubkey | None, multiplier: float) -> Instruction:
    data = bytes([43, 0]) + _maybe_null(authority) + struct.pack("<d", multiplier)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(mint)])


def update_multiplier(mint: Pubkey, authority: Pubkey, multiplier: float,
                      effective_timestamp: int) -> Instruction:
    data = bytes([43, 1]) + struct.pack("<dq", multiplier, effective_timestamp)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(mint), _r(authority, True)])


def initialize_pausable(mint: Pubkey, authority: Pubkey) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([44, 0]) + bytes(authority), [_w(mint)])


def pause(mint: Pubkey, authority: Pubkey) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([44, 1]), [_w(mint), _r(authority, True)])


def resume(mint: Pubkey, authority: Pubkey) -> Instruction:
    return Instruction(TOKEN_2022_PROGRAM, bytes([44, 2]), [_w(mint), _r(authority, True)])


# ---- token-metadata interface (runs after InitializeMint) ----


def initialize_token_metadata(metadata: Pubkey, update_authority: Pubkey, mint: Pubkey,
                              mint_authority: Pubkey, name: str, symbol: str, uri: str) -> Instruction:
    data = metadata_discriminator("initialize_account") + _borsh_str(name) + _borsh_str(symbol) + _borsh_str(uri)
    return Instruction(
        TOKEN_2022_PROGRAM,
        data,
        [_w(metadata), _r(update_authority), _r(mint), _r(mint_authority, True)],
    )


def update_token_metadata_field(metadata: Pubkey, update_authority: Pubkey, field: str,
                                value: str) -> Instruction:
    if field in METADATA_FIELDS:
        field_bytes = bytes([METADATA_FIELDS[field]])
    else:
        field_bytes = bytes([3]) + _borsh_str(field)  # Field::Key(String)
    data = metadata_discriminator("updating_field") + field_bytes + _borsh_str(value)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(metadata), _r(update_authority, True)])


def remove_token_metadata_key(metadata: Pubkey, update_authority: Pubkey, key: str,
                              idempotent: bool) -> Instruction:
    data = metadata_discriminator("remove_key_ix") + bytes([1 if idempotent else 0]) + _borsh_str(key)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(metadata), _r(update_authority, True)])


def update_token_metadata_authority(metadata: Pubkey, update_authority: Pubkey,
                                    new_authority: Pubkey | None) -> Instruction:
    data = metadata_discriminator("update_the_authority") + _maybe_null(new_authority)
    return Instruction(TOKEN_2022_PROGRAM, data, [_w(metadata), _r(update_authority, True)])


# ---- associated token account program ----


def create_associated_token_account(payer: Pubkey, wallet: Pubkey, mint: Pubkey,
                                    token_program: Pubkey, idempotent: bool = False) -> Instruction:
    from solders.token.associated import get_associated_token_address

    ata = get_associated_token_address(wallet, mint, token_program)
    return Instruction(
        ATA_PROGRAM,
        bytes([1 if idempotent else 0]),
        [_w(payer, True), _w(ata), _r(wallet), _r(mint), _r(SYSTEM_PROGRAM), _r(token_program)],
    )
