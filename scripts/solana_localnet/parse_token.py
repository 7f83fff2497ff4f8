"""jsonParsed spl-token instructions, ported from agave transaction-status `parse_token.rs`
and `parse_token/extension/*.rs` (used for both Tokenkeg and Token-2022, program "spl-token").

`parse_token(data, accounts)` takes the instruction data and the instruction's account
addresses (base58 strings) and returns `{"type", "info"}`, or None when agave would fail
(InstructionNotParsable / InstructionKeyMismatch) so the caller falls back to the
partially-decoded form. Key order follows agave's `json!` insertion order; agave's RPC
output is re-sorted alphabetically anyway (jsonrpc-core serialises through a BTreeMap).
"""

from __future__ import annotations

import struct

from solders.pubkey import Pubkey

from .token_state import EXTENSION_NAMES, maybe_null_pubkey
from .token_ix import AUTHORITY_TYPES, metadata_discriminator
from .ui_amount import rust_f64_to_string, token_amount

AUTHORITY_NAMES = {v: k for k, v in AUTHORITY_TYPES.items()}
ACCOUNT_STATE_NAMES = {0: "uninitialized", 1: "initialized", 2: "frozen"}

_DISC_INITIALIZE = metadata_discriminator("initialize_account")
_DISC_UPDATE_FIELD = metadata_discriminator("updating_field")
_DISC_REMOVE_KEY = metadata_discriminator("remove_key_ix")
_DISC_UPDATE_AUTHORITY = metadata_discriminator("update_the_authority")
_DISC_EMIT = metadata_discriminator("emitter")


class NotParsable(Exception):
    pass


def _need(accounts: list[str], n: int) -> None:
    if len(accounts) < n:
        raise NotParsable("key mismatch")


def _signers(info: dict, last_nonsigner: int, accounts: list[str], owner_field: str,
             multisig_field: str) -> None:
    """agave `parse_signers`: single authority, or multisig + `signers`."""
    owner = accounts[last_nonsigner] if last_nonsigner < len(accounts) else None
    if len(accounts) > last_nonsigner + 1:
        if owner is not None:
            info[multisig_field] = owner
        info["signers"] = accounts[last_nonsigner + 1 :]
    elif owner is not None:
        info[owner_field] = owner


def _u64(data: bytes, offset: int) -> int:
    if len(data) < offset + 8:
        raise NotParsable("short data")
    return struct.unpack_from("<Q", data, offset)[0]


def _pubkey(data: bytes, offset: int) -> str:
    if len(data) < offset + 32:
        raise NotParsable("short data")
    return str(Pubkey.from_bytes(data[offset : offset + 32]))


def _coption_pubkey(data: bytes, offset: int) -> tuple[str | None, int]:
    if len(data) <= offset:
        raise NotParsable("short data")
    if data[offset] == 0:
        return None, offset + 1
    if data[offset] == 1:
        return _pubkey(data, offset + 1), offset + 33
    raise NotParsable("bad option tag")


def _maybe_null(data: bytes, offset: int) -> str | None:
    if len(data) < offset + 32:
        raise NotParsable("short data")
    pk = maybe_null_pubkey(bytes(data[offset : offset + 32]))
    return str(pk) if pk else None


def _borsh_string(data: bytes, pos: int) -> tuple[str, int]:
    if len(data) < pos + 4:
        raise NotParsable("short data")
    (length,) = struct.unpack_from("<I", data, pos)
    raw = data[pos + 4 : pos + 4 + length]
    if len(raw) != length:
        raise NotParsable("short string")
    try:
        return raw.decode("utf-8"), pos + 4 + length
    except UnicodeDecodeError as exc:
        raise NotParsable("bad utf8") from exc


def _amount_ix(kind: str, data: bytes, accounts: list[str], first: str, second: str,
               auth_field: str, multisig_field: str) -> dict:
    _need(accounts, 3)
    info = {first: accounts[0], second: accounts[1], "amount": str(_u64(data, 1))}
    _signers(info, 2, accounts, auth_field, multisig_field)
    return {"type": kind, "info": info}


def _checked_ix(kind: str, data: bytes, accounts: list[str], names: list[str], last_nonsigner: int,
                auth_field: str, multisig_field: str) -> dict:
    amount = _u64(data, 1)
    if len(data) < 10:
        raise NotParsable("short data")
    info: dict = {}
    for i, name in enumerate(names):
        info[name] = accounts[i]
    info["tokenAmount"] = token_amount(amount, data[9])
    _signers(info, last_nonsigner, accounts, auth_field, multisig_field)
    return {"type": kind, "info": info}


def _parse_classic(tag: int, data: bytes, accounts: list[str]) -> dict | None:
    if tag in (0, 20):  # InitializeMint / InitializeMint2
        _need(accounts, 2 if tag == 0 else 1)
        if len(data) < 35:
            raise NotParsable("short data")
        freeze, _ = _coption_pubkey(data, 34)
        info = {"mint": accounts[0], "decimals": data[1], "mintAuthority": _pubkey(data, 2)}
        if tag == 0:
            info["rentSysvar"] = accounts[1]
        if freeze is not None:
            info["freezeAuthority"] = freeze
        return {"type": "initializeMint" if tag == 0 else "initializeMint2", "info": info}
    if tag == 1:
        _need(accounts, 4)
        return {"type": "initializeAccount", "info": {
            "account": accounts[0], "mint": accounts[1], "owner": accounts[2], "rentSysvar": accounts[3]}}
    if tag == 16:
        _need(accounts, 3)
        return {"type": "initializeAccount2", "info": {
            "account": accounts[0], "mint": accounts[1], "owner": _pubkey(data, 1), "rentSysvar": accounts[2]}}
    if tag == 18:
        _need(accounts, 2)
        return {"type": "initializeAccount3", "info": {
            "account": accounts[0], "mint": accounts[1], "owner": _pubkey(data, 1)}}
    if tag in (2, 19):  # InitializeMultisig / InitializeMultisig2
        first_signer = 2 if tag == 2 else 1
        _need(accounts, first_signer + 1)
        info = {"multisig": accounts[0]}
        if tag == 2:
            info["rentSysvar"] = accounts[1]
        info["signers"] = accounts[first_signer:]
        info["m"] = data[1] if len(data) > 1 else 0
        return {"type": "initializeMultisig" if tag == 2 else "initializeMultisig2", "info": info}
    if tag == 3:
        _need(accounts, 3)
        info = {"source": accounts[0], "destination": accounts[1], "amount": str(_u64(data, 1))}
        _signers(info, 2, accounts, "authority", "multisigAuthority")
        return {"type": "transfer", "info": info}
    if tag == 4:
        _need(accounts, 3)
        info = {"source": accounts[0], "delegate": accounts[1], "amount": str(_u64(data, 1))}
        _signers(info, 2, accounts, "owner", "multisigOwner")
        return {"type": "approve", "info": info}
    if tag == 5:
        _need(accounts, 2)
        info = {"source": accounts[0]}
        _signers(info, 1, accounts, "owner", "multisigOwner")
        return {"type": "revoke", "info": info}
    if tag == 6:
        _need(accounts, 2)
        if len(data) < 3 or data[1] not in AUTHORITY_NAMES:
            raise NotParsable("bad authority type")
        new_authority, _ = _coption_pubkey(data, 2)
        owned = "account" if data[1] in (2, 3) else "mint"
        info = {owned: accounts[0], "authorityType": AUTHORITY_NAMES[data[1]], "newAuthority": new_authority}
        _signers(info, 1, accounts, "authority", "multisigAuthority")
        return {"type": "setAuthority", "info": info}
    if tag == 7:
        return _amount_ix("mintTo", data, accounts, "mint", "account", "mintAuthority", "multisigMintAuthority")
    if tag == 8:
        return _amount_ix("burn", data, accounts, "account", "mint", "authority", "multisigAuthority")
    if tag == 9:
        _need(accounts, 3)
        info = {"account": accounts[0], "destination": accounts[1]}
        _signers(info, 2, accounts, "owner", "multisigOwner")
        return {"type": "closeAccount", "info": info}
    if tag in (10, 11):
        _need(accounts, 3)
        info = {"account": accounts[0], "mint": accounts[1]}
        _signers(info, 2, accounts, "freezeAuthority", "multisigFreezeAuthority")
        return {"type": "freezeAccount" if tag == 10 else "thawAccount", "info": info}
    if tag == 12:
        _need(accounts, 4)
        return _checked_ix("transferChecked", data, accounts, ["source", "mint", "destination"], 3,
                           "authority", "multisigAuthority")
    if tag == 13:
        _need(accounts, 4)
        return _checked_ix("approveChecked", data, accounts, ["source", "mint", "delegate"], 3,
                           "owner", "multisigOwner")
    if tag == 14:
        _need(accounts, 3)
        return _checked_ix("mintToChecked", data, accounts, ["mint", "account"], 2,
                           "mintAuthority", "multisigMintAuthority")
    if tag == 15:
        _need(accounts, 3)
        return _checked_ix("burnChecked", data, accounts, ["account", "mint"], 2,
                           "authority", "multisigAuthority")
    if tag == 17:
        _need(accounts, 1)
        return {"type": "syncNative", "info": {"account": accounts[0]}}
    if tag == 21:
        _need(accounts, 1)
        info = {"mint": accounts[0]}
        if (len(data) - 1) % 2:
            raise NotParsable("odd extension list")
        ext_types = []
        for pos in range(1, len(data), 2):
            (ext,) = struct.unpack_from("<H", data, pos)
            if ext not in EXTENSION_NAMES:
                raise NotParsable("unknown extension type")
            ext_types.append(EXTENSION_NAMES[ext])
        if ext_types:
            info["extensionTypes"] = ext_types
        return {"type": "getAccountDataSize", "info": info}
    if tag == 22:
        _need(accounts, 1)
        return {"type": "initializeImmutableOwner", "info": {"account": accounts[0]}}
    if tag == 23:
        _need(accounts, 1)
        return {"type": "amountToUiAmount", "info": {"mint": accounts[0], "amount": str(_u64(data, 1))}}
    if tag == 24:
        _need(accounts, 1)
        try:
            ui_amount = data[1:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotParsable("bad utf8") from exc
        return {"type": "uiAmountToAmount", "info": {"mint": accounts[0], "uiAmount": ui_amount}}
    if tag == 25:
        _need(accounts, 1)
        close_authority, _ = _coption_pubkey(data, 1)
        return {"type": "initializeMintCloseAuthority",
                "info": {"mint": accounts[0], "newAuthority": close_authority}}
    if tag == 35:
        _need(accounts, 1)
        return {"type": "initializePermanentDelegate", "info": {"mint": accounts[0], "delegate": _pubkey(data, 1)}}
    if tag == 38:
        _need(accounts, 3)
        info = {"source": accounts[0], "destination": accounts[1]}
        _signers(info, 2, accounts, "authority", "multisigAuthority")
        return {"type": "withdrawExcessLamports", "info": info}
    return None


def _parse_default_account_state(data: bytes, accounts: list[str]) -> dict:
    if len(data) <= 2 or data[2] not in ACCOUNT_STATE_NAMES:
        raise NotParsable("bad default account state")
    if data[1] == 0:
        _need(accounts, 1)
        return {"type": "initializeDefaultAccountState",
                "info": {"mint": accounts[0], "accountState": ACCOUNT_STATE_NAMES[data[2]]}}
    if data[1] == 1:
        _need(accounts, 2)
        info = {"mint": accounts[0], "accountState": ACCOUNT_STATE_NAMES[data[2]]}
        _signers(info, 1, accounts, "freezeAuthority", "multisigFreezeAuthority")
        return {"type": "updateDefaultAccountState", "info": info}
    raise NotParsable("bad sub-instruction")


def _parse_metadata_pointer(data: bytes, accounts: list[str]) -> dict:
    if len(data) < 2:
        raise NotParsable("short data")
    if data[1] == 0:
        _need(accounts, 1)
        if len(data) != 66:
            raise NotParsable("bad length")
        info = {"mint": accounts[0]}
        authority = _maybe_null(data, 2)
        address = _maybe_null(data, 34)
        if authority:
            info["authority"] = authority
        if address:
            info["metadataAddress"] = address
        return {"type": "initializeMetadataPointer", "info": info}
    if data[1] == 1:
        _need(accounts, 2)
        if len(data) != 34:
            raise NotParsable("bad length")
        info = {"mint": accounts[0]}
        address = _maybe_null(data, 2)
        if address:
            info["metadataAddress"] = address
        _signers(info, 1, accounts, "authority", "multisigAuthority")
        return {"type": "updateMetadataPointer", "info": info}
    raise NotParsable("bad sub-instruction")


def _parse_scaled_ui_amount(data: bytes, accounts: list[str]) -> dict:
    if len(data) < 2:
        raise NotParsable("short data")
    if data[1] == 0:  # Initialize {authority: MaybeNull, multiplier: f64}
        _need(accounts, 1)
        if len(data) != 42:
            raise NotParsable("bad length")
        (multiplier,) = struct.unpack_from("<d", data, 34)
        return {"type": "initializeScaledUiAmountConfig", "info": {
            "mint": accounts[0], "authority": _maybe_null(data, 2),
            "multiplier": rust_f64_to_string(multiplier)}}
    if data[1] == 1:  # UpdateMultiplier {multiplier: f64, effective_timestamp: i64}
        _need(accounts, 2)
        if len(data) != 18:
            raise NotParsable("bad length")
        multiplier, timestamp = struct.unpack_from("<dq", data, 2)
        info = {"mint": accounts[0], "newMultiplier": rust_f64_to_string(multiplier),
                "newMultiplierTimestamp": timestamp}
        _signers(info, 1, accounts, "authority", "multisigAuthority")
        return {"type": "updateMultiplier", "info": info}
    raise NotParsable("bad sub-instruction")


def _parse_pausable(data: bytes, accounts: list[str]) -> dict:
    if len(data) < 2:
        raise NotParsable("short data")
    if data[1] == 0:
        _need(accounts, 1)
        if len(data) != 34:
            raise NotParsable("bad length")
        return {"type": "initializePausableConfig",
                "info": {"mint": accounts[0], "authority": _maybe_null(data, 2)}}
    if data[1] in (1, 2):
        _need(accounts, 2)
        info = {"mint": accounts[0]}
        _signers(info, 1, accounts, "authority", "multisigAuthority")
        return {"type": "pause" if data[1] == 1 else "resume", "info": info}
    raise NotParsable("bad sub-instruction")


def _parse_token_metadata(data: bytes, accounts: list[str]) -> dict | None:
    disc, body = bytes(data[:8]), bytes(data[8:])
    if disc == _DISC_INITIALIZE:
        _need(accounts, 4)
        name, pos = _borsh_string(body, 0)
        symbol, pos = _borsh_string(body, pos)
        uri, pos = _borsh_string(body, pos)
        return {"type": "initializeTokenMetadata", "info": {
            "metadata": accounts[0], "updateAuthority": accounts[1], "mint": accounts[2],
            "mintAuthority": accounts[3], "name": name, "symbol": symbol, "uri": uri}}
    if disc == _DISC_UPDATE_FIELD:
        _need(accounts, 2)
        if not body:
            raise NotParsable("short data")
        if body[0] in (0, 1, 2):
            field, pos = ("name", "symbol", "uri")[body[0]], 1
        elif body[0] == 3:
            field, pos = _borsh_string(body, 1)
        else:
            raise NotParsable("bad field")
        value, pos = _borsh_string(body, pos)
        return {"type": "updateTokenMetadataField", "info": {
            "metadata": accounts[0], "updateAuthority": accounts[1], "field": field, "value": value}}
    if disc == _DISC_REMOVE_KEY:
        _need(accounts, 2)
        if not body or body[0] not in (0, 1):
            raise NotParsable("bad bool")
        key, _ = _borsh_string(body, 1)
        return {"type": "removeTokenMetadataKey", "info": {
            "metadata": accounts[0], "updateAuthority": accounts[1], "key": key,
            "idempotent": body[0] == 1}}
    if disc == _DISC_UPDATE_AUTHORITY:
        _need(accounts, 2)
        return {"type": "updateTokenMetadataAuthority", "info": {
            "metadata": accounts[0], "updateAuthority": accounts[1], "newAuthority": _maybe_null(body, 0)}}
    if disc == _DISC_EMIT:
        _need(accounts, 1)
        info: dict = {"metadata": accounts[0]}
        pos = 0
        for name, fmt, size in (("start", "<Q", 8), ("end", "<Q", 8)):
            if pos < len(body) and body[pos] == 1:
                info[name] = struct.unpack_from(fmt, body, pos + 1)[0]
                pos += 1 + size
            else:
                pos += 1
        return {"type": "emitTokenMetadata", "info": info}
    return None


def _parse_batch(data: bytes, accounts: list[str]) -> dict:
    """agave `parse_batch_instruction`: `u8 n_accounts, u8 data_len, data` per inner ix."""
    instructions = []
    cursor, account_cursor = 1, 0
    while cursor < len(data):
        if cursor + 2 > len(data):
            raise NotParsable("short batch")
        n_accounts, data_len = data[cursor], data[cursor + 1]
        cursor += 2
        inner = data[cursor : cursor + data_len]
        if len(inner) != data_len:
            raise NotParsable("short batch data")
        cursor += data_len
        inner_accounts = accounts[account_cursor : account_cursor + n_accounts]
        if len(inner_accounts) != n_accounts:
            raise NotParsable("short batch accounts")
        account_cursor += n_accounts
        if inner[:1] == b"\xff":
            raise NotParsable("nested batch")
        parsed = parse_token(bytes(inner), inner_accounts)
        if parsed is None:
            raise NotParsable("inner not parsable")
        instructions.append(parsed)
    return {"type": "batch", "info": {"instructions": instructions}}


def parse_token(data: bytes, accounts: list[str]) -> dict | None:
    """Parse one spl-token instruction; None when agave falls back to partially decoded."""
    try:
        if not data:
            return None
        tag = data[0]
        if tag == 28:
            return _parse_default_account_state(data, accounts)
        if tag == 39:
            return _parse_metadata_pointer(data, accounts)
        if tag == 43:
            return _parse_scaled_ui_amount(data, accounts)
        if tag == 44:
            return _parse_pausable(data, accounts)
        if tag == 255:
            return _parse_batch(data, accounts)
        parsed = _parse_classic(tag, data, accounts)
        if parsed is not None:
            return parsed
        # Not a TokenInstruction we know: agave then tries the token-metadata interface.
        return _parse_token_metadata(data, accounts)
    except (NotParsable, struct.error, ValueError):
        return None
