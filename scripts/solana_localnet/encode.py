"""Encode ledger records the way agave's RPC does (transaction-status `lib.rs`,
`parse_accounts.rs`, client-types `UiTransactionStatusMeta` / `UiConfirmedBlock`).

Encodings: json, jsonParsed, base64, base58, binary (legacy base58 string).
transactionDetails: full, signatures, none, accounts.
"""

from __future__ import annotations

import base64

from solders.message import MessageV0
from solders.pubkey import Pubkey

from .base58 import b58encode
from .ledger import Block, TxRecord
from .parse_instruction import parse_ui_instruction
from .programs import RESERVED_KEYS

UPGRADEABLE_LOADER = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
TRANSACTION_LEVEL_STACK_HEIGHT = 1
ENCODINGS = ("json", "jsonParsed", "base64", "base58", "binary")
TRANSACTION_DETAILS = ("full", "signatures", "none", "accounts")


class UnsupportedTransactionVersion(Exception):
    def __init__(self, version: int):
        super().__init__(version)
        self.version = version


def _status(err: object) -> dict:
    return {"Ok": None} if err is None else {"Err": err}


def validate_version(record: TxRecord, max_supported: int | None) -> str | int | None:
    """agave `validate_version`: None hides the field for legacy, rejects versioned txs."""
    if record.version == "legacy":
        return None if max_supported is None else "legacy"
    if max_supported is None or record.version > max_supported:
        raise UnsupportedTransactionVersion(record.version)
    return record.version


def parsed_account_keys(record: TxRecord) -> list[dict]:
    """`parse_legacy_message_accounts` / `parse_v0_message_accounts`."""
    message = record.tx.message
    header = message.header
    n_static = len(record.static_keys)
    n_signed = header.num_required_signatures
    invoked = {ix.program_id_index for ix in message.instructions}
    keys = record.account_keys
    loader_present = UPGRADEABLE_LOADER in keys
    out = []
    for i, key in enumerate(keys):
        if i < n_signed:
            writable_index = i < n_signed - header.num_readonly_signed_accounts
        elif i < n_static:
            writable_index = (i - n_signed) < (n_static - n_signed - header.num_readonly_unsigned_accounts)
        else:
            writable_index = i < n_static + len(record.loaded_writable)
        demoted = (i in invoked and not loader_present) or key in RESERVED_KEYS
        out.append({
            "pubkey": str(key),
            "writable": writable_index and not demoted,
            "signer": i < n_signed,
            "source": "transaction" if i < n_static else "lookupTable",
        })
    return out


def _lookups(message: MessageV0) -> list[dict]:
    return [{"accountKey": str(lu.account_key), "writableIndexes": list(bytes(lu.writable_indexes)),
             "readonlyIndexes": list(bytes(lu.readonly_indexes))} for lu in message.address_table_lookups]


def _compiled(program_id_index: int, accounts: list[int], data: bytes, stack_height: int | None) -> dict:
    return {"programIdIndex": program_id_index, "accounts": accounts, "data": b58encode(data),
            "stackHeight": stack_height}


def encode_transaction(record: TxRecord, encoding: str) -> object:
    tx = record.tx
    if encoding == "base64":
        return [base64.b64encode(bytes(tx)).decode(), "base64"]
    if encoding == "base58":
        return [b58encode(bytes(tx)), "base58"]
    if encoding == "binary":
        return b58encode(bytes(tx))
    message = tx.message
    is_v0 = isinstance(message, MessageV0)
    signatures = [str(s) for s in tx.signatures]
    if encoding == "jsonParsed":
        keys = record.account_keys
        ui_message: dict = {
            "accountKeys": parsed_account_keys(record),
            "recentBlockhash": str(message.recent_blockhash),
            "instructions": [
                parse_ui_instruction(keys[ix.program_id_index], bytes(ix.data),
                                     [str(keys[a]) for a in bytes(ix.accounts)], TRANSACTION_LEVEL_STACK_HEIGHT)
                for ix in message.instructions
            ],
        }
    else:
        header = message.header
        ui_message = {
            "header": {
                "numRequiredSignatures": header.num_required_signatures,
                "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
            },
            "accountKeys": [str(k) for k in message.account_keys],
            "recentBlockhash": str(message.recent_blockhash),
            "instructions": [_compiled(ix.program_id_index, list(bytes(ix.accounts)), bytes(ix.data),
                                       TRANSACTION_LEVEL_STACK_HEIGHT) for ix in message.instructions],
        }
    if is_v0:
        ui_message["addressTableLookups"] = _lookups(message)
    return {"signatures": signatures, "message": ui_message}


def encode_meta(record: TxRecord, encoding: str, show_rewards: bool) -> dict:
    meta: dict = {
        "err": record.err,
        "status": _status(record.err),
        "fee": record.fee,
        "preBalances": record.pre_balances,
        "postBalances": record.post_balances,
        "logMessages": record.log_messages,
        "preTokenBalances": record.pre_token_balances,
        "postTokenBalances": record.post_token_balances,
        "rewards": [] if show_rewards else None,
        "computeUnitsConsumed": record.compute_units_consumed,
    }
    keys = record.account_keys
    if encoding == "jsonParsed":
        meta["innerInstructions"] = [
            {"index": index, "instructions": [
                parse_ui_instruction(keys[ii.program_id_index], ii.data, [str(keys[a]) for a in ii.accounts],
                                     ii.stack_height)
                for ii in inner]}
            for index, inner in record.inner_instructions
        ]
        # jsonParsed folds loaded addresses into accountKeys and omits loadedAddresses.
    else:
        meta["innerInstructions"] = [
            {"index": index, "instructions": [
                _compiled(ii.program_id_index, ii.accounts, ii.data, ii.stack_height) for ii in inner]}
            for index, inner in record.inner_instructions
        ]
        meta["loadedAddresses"] = {"writable": [str(k) for k in record.loaded_writable],
                                   "readonly": [str(k) for k in record.loaded_readonly]}
    if record.return_data is not None:
        program_id, data = record.return_data
        meta["returnData"] = {"programId": program_id, "data": [base64.b64encode(data).decode(), "base64"]}
    # costUnits is optional in agave (skipped when unknown); the cost model is not emulated.
    return meta


def encode_with_meta(record: TxRecord, encoding: str, max_supported: int | None, show_rewards: bool) -> dict:
    version = validate_version(record, max_supported)
    out = {"transaction": encode_transaction(record, encoding), "meta": encode_meta(record, encoding, show_rewards)}
    if version is not None:
        out["version"] = version
    return out


def encode_accounts_only(record: TxRecord, max_supported: int | None, show_rewards: bool) -> dict:
    """transactionDetails=accounts: signatures + annotated keys, and the simple meta."""
    version = validate_version(record, max_supported)
    meta = {
        "err": record.err,
        "status": _status(record.err),
        "fee": record.fee,
        "preBalances": record.pre_balances,
        "postBalances": record.post_balances,
        "preTokenBalances": record.pre_token_balances,
        "postTokenBalances": record.post_token_balances,
    }
    if show_rewards:
        meta["rewards"] = []
    out = {"transaction": {"signatures": [str(s) for s in record.tx.signatures],
                           "accountKeys": parsed_account_keys(record)},
           "meta": meta}
    if version is not None:
        out["version"] = version
    return out


def encode_block(block: Block, encoding: str, details: str, max_supported: int | None,
                 show_rewards: bool) -> dict:
    out: dict = {
        "previousBlockhash": block.previous_blockhash,
        "blockhash": block.blockhash,
        "parentSlot": block.parent_slot,
        "blockTime": block.block_time,
        "blockHeight": block.block_height,
    }
    if details == "full":
        out["transactions"] = [encode_with_meta(r, encoding, max_supported, show_rewards)
                               for r in block.transactions]
    elif details == "accounts":
        out["transactions"] = [encode_accounts_only(r, max_supported, show_rewards) for r in block.transactions]
    elif details == "signatures":
        out["signatures"] = [r.signature for r in block.transactions]
    if show_rewards:
        out["rewards"] = []  # no staking/fee rewards are simulated
    return out


def encode_confirmed_transaction(record: TxRecord, block_time: int, encoding: str,
                                 max_supported: int | None) -> dict:
    """getTransaction result (EncodedConfirmedTransactionWithStatusMeta, rewards always shown)."""
    out = {"slot": record.slot, "blockTime": block_time, "transactionIndex": record.index}
    out.update(encode_with_meta(record, encoding, max_supported, True))
    return out
