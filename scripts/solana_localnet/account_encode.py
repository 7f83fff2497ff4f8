"""Account encoding for getAccountInfo & co, after agave account-decoder
(`encode_ui_account`, `parse_token.rs`, `parse_token_extension.rs`).

jsonParsed token accounts apply the ScaledUiAmount multiplier in force at the bank's clock
(unlike transaction token balances). Shapes checked against the recorded AAPLx mint
(xstocks_AAPLx_mint_getAccountInfo_jsonParsed_slot448030997.json).
"""

from __future__ import annotations

import base64
import struct

from solders.pubkey import Pubkey

from .account_store import AccountSnapshot
from .base58 import b58encode
from .programs import TOKEN_2022_PROGRAM, TOKEN_PROGRAMS
from .token_state import (
    ACCOUNT_STATES,
    EXTENSION_NAMES,
    MintState,
    decode_mint,
    decode_scaled_ui_amount,
    decode_token_account,
    decode_token_metadata,
    maybe_null_pubkey,
)
from .ui_amount import rust_f64_to_string, scaled_token_amount, token_amount

MAX_BASE58_BYTES = 128
MULTISIG_LEN = 355
# Rent collection is gone and every account is rent-exempt; agave then reports
# RENT_EXEMPT_RENT_EPOCH (u64::MAX), as in the recorded AAPLx getAccountInfo. LiteSVM keeps 0.
RENT_EXEMPT_RENT_EPOCH = 2**64 - 1


class EncodingError(ValueError):
    pass


def _opt(pk: Pubkey | None) -> str | None:
    return str(pk) if pk is not None else None


def _mn(raw: bytes) -> str | None:
    return _opt(maybe_null_pubkey(raw))


def ui_extension(ext_type: int, value: bytes) -> dict:
    """UiExtension: `{"extension": name, "state": {...}}` (unit variants have no state)."""
    name = EXTENSION_NAMES.get(ext_type)
    try:
        if ext_type == 3:
            return {"extension": "mintCloseAuthority", "state": {"closeAuthority": _mn(value[0:32])}}
        if ext_type == 4:
            return {"extension": "confidentialTransferMint", "state": {
                "authority": _mn(value[0:32]), "autoApproveNewAccounts": value[32] == 1,
                "auditorElgamalPubkey": None if value[33:65] == bytes(32) else base64.b64encode(value[33:65]).decode()}}
        if ext_type == 6:
            return {"extension": "defaultAccountState", "state": {"accountState": ACCOUNT_STATES[value[0]]}}
        if ext_type in (7, 9, 13, 27):
            return {"extension": name}
        if ext_type == 8:
            return {"extension": "memoTransfer", "state": {"requireIncomingTransferMemos": value[0] == 1}}
        if ext_type == 11:
            return {"extension": "cpiGuard", "state": {"lockCpi": value[0] == 1}}
        if ext_type == 12:
            return {"extension": "permanentDelegate", "state": {"delegate": _mn(value[0:32])}}
        if ext_type == 14:
            return {"extension": "transferHook", "state": {"authority": _mn(value[0:32]),
                                                            "programId": _mn(value[32:64])}}
        if ext_type == 15:
            return {"extension": "transferHookAccount", "state": {"transferring": value[0] == 1}}
        if ext_type == 18:
            return {"extension": "metadataPointer", "state": {"authority": _mn(value[0:32]),
                                                               "metadataAddress": _mn(value[32:64])}}
        if ext_type == 19:
            md = decode_token_metadata(value)
            return {"extension": "tokenMetadata", "state": {
                "updateAuthority": _opt(md.update_authority), "mint": str(md.mint), "name": md.name,
                "symbol": md.symbol, "uri": md.uri, "additionalMetadata": [list(kv) for kv in md.additional_metadata]}}
        if ext_type == 25:
            cfg = decode_scaled_ui_amount(value)
            return {"extension": "scaledUiAmountConfig", "state": {
                "authority": _opt(cfg.authority), "multiplier": rust_f64_to_string(cfg.multiplier),
                "newMultiplierEffectiveTimestamp": cfg.new_multiplier_effective_timestamp,
                "newMultiplier": rust_f64_to_string(cfg.new_multiplier)}}
        if ext_type == 26:
            return {"extension": "pausableConfig", "state": {"authority": _mn(value[0:32]), "paused": value[32] == 1}}
        if ext_type == 2:
            return {"extension": "transferFeeAmount", "state": {"withheldAmount": struct.unpack_from("<Q", value)[0]}}
        if ext_type == 10:
            auth = _mn(value[0:32])
            init_ts, pre_rate, last_ts, cur_rate = struct.unpack_from("<qhqh", value, 32)
            return {"extension": "interestBearingConfig", "state": {
                "rateAuthority": auth, "initializationTimestamp": init_ts, "preUpdateAverageRate": pre_rate,
                "lastUpdateTimestamp": last_ts, "currentRate": cur_rate}}
    except (IndexError, KeyError, struct.error, UnicodeDecodeError):
        pass
    return {"extension": "unparseableExtension"}


def token_amount_for_mint(amount: int, mint: MintState, unix_time: int) -> dict:
    """Account-decoder UiTokenAmount: ScaledUiAmount applied at the bank clock."""
    scaled = mint.extension(25)
    if scaled is not None:
        return scaled_token_amount(amount, mint.decimals, decode_scaled_ui_amount(scaled), unix_time)
    return token_amount(amount, mint.decimals)


def parse_token_data(data: bytes, mint_lookup, unix_time: int) -> dict | None:
    """`{"type": "account"|"mint"|"multisig", "info": ...}` or None if not parsable.

    mint_lookup(mint_pubkey) -> MintState | None supplies decimals for token accounts.
    """
    account = decode_token_account(data)
    if account is not None:
        mint = mint_lookup(account.mint)
        if mint is None:
            return None  # agave: AdditionalDataMissing -> falls back to base64
        info: dict = {
            "mint": str(account.mint),
            "owner": str(account.owner),
            "tokenAmount": token_amount_for_mint(account.amount, mint, unix_time),
            "state": ACCOUNT_STATES[account.state],
            "isNative": account.is_native is not None,
        }
        if account.delegate is not None:
            info["delegate"] = str(account.delegate)
            info["delegatedAmount"] = token_amount_for_mint(account.delegated_amount, mint, unix_time)
        if account.is_native is not None:
            info["rentExemptReserve"] = token_amount_for_mint(account.is_native, mint, unix_time)
        if account.close_authority is not None:
            info["closeAuthority"] = str(account.close_authority)
        if account.extensions:
            info["extensions"] = [ui_extension(t, v) for t, v in account.extensions]
        return {"type": "account", "info": info}
    mint = decode_mint(data)
    if mint is not None:
        info = {
            "mintAuthority": _opt(mint.mint_authority),
            "supply": str(mint.supply),
            "decimals": mint.decimals,
            "isInitialized": mint.is_initialized,
            "freezeAuthority": _opt(mint.freeze_authority),
        }
        if mint.extensions:
            info["extensions"] = [ui_extension(t, v) for t, v in mint.extensions]
        return {"type": "mint", "info": info}
    if len(data) == MULTISIG_LEN and data[2] == 1:
        m, n = data[0], data[1]
        signers = [str(Pubkey.from_bytes(data[3 + 32 * i : 35 + 32 * i])) for i in range(11)
                   if data[3 + 32 * i : 35 + 32 * i] != bytes(32)]
        return {"type": "multisig", "info": {"numRequiredSigners": m, "numValidSigners": n,
                                             "isInitialized": True, "signers": signers}}
    return None


def encode_account(state: AccountSnapshot, encoding: str, mint_lookup, unix_time: int,
                   data_slice: dict | None = None) -> dict:
    data = state.data
    if data_slice is not None:
        offset, length = int(data_slice.get("offset", 0)), int(data_slice.get("length", 0))
        data = data[offset : offset + length]
    out = {
        "lamports": state.lamports,
        "owner": str(state.owner),
        "executable": state.executable,
        "rentEpoch": RENT_EXEMPT_RENT_EPOCH,
        "space": len(state.data),
    }
    if encoding == "jsonParsed":
        parsed = parse_token_data(state.data, mint_lookup, unix_time) if state.owner in TOKEN_PROGRAMS else None
        if parsed is not None:
            program = "spl-token-2022" if state.owner == TOKEN_2022_PROGRAM else "spl-token"
            out["data"] = {"program": program, "parsed": parsed, "space": len(state.data)}
        else:
            out["data"] = [base64.b64encode(state.data).decode(), "base64"]
    elif encoding in ("binary", "base58"):
        if len(data) > MAX_BASE58_BYTES:
            raise EncodingError(f"Encoded binary (base 58) data should be less than {MAX_BASE58_BYTES} bytes, "
                                "please use Base64 encoding.")
        out["data"] = b58encode(data) if encoding == "binary" else [b58encode(data), "base58"]
    elif encoding == "base64":
        out["data"] = [base64.b64encode(data).decode(), "base64"]
    else:
        raise EncodingError(f"unsupported account encoding {encoding!r}")
    return out
