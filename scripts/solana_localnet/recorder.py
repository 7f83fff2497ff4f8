"""Run one transaction through LiteSVM and capture the status meta a validator would store.

Token balances follow agave `ledger/src/token_balances.rs`: only when a token program is among
the keys; every key that is not an invoked program and not a token program id, owned by a
token program, unpacking as a token account whose mint is a known token mint; amounts are
raw (decimals only, no ScaledUiAmount multiplier).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from solders.litesvm import LiteSVM
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from .ledger import InnerIx, TxRecord
from .programs import NATIVE_MINT, TOKEN_PROGRAMS
from .token_state import decode_mint, decode_token_account
from .ui_amount import ledger_token_amount

LOOKUP_TABLE_META_SIZE = 56  # address-lookup-table state header before the address list


class TransactionRejected(Exception):
    """The runtime refused the transaction before execution (never lands in a block)."""

    def __init__(self, signature: str, err: object, logs: list[str]):
        super().__init__(f"transaction {signature} rejected: {json.dumps(err)}")
        self.signature, self.err, self.logs = signature, err, logs


@dataclass
class LoadedKeys:
    static: list[Pubkey]
    writable: list[Pubkey]
    readonly: list[Pubkey]


def lookup_table_addresses(data: bytes) -> list[Pubkey]:
    raw = data[LOOKUP_TABLE_META_SIZE:]
    return [Pubkey.from_bytes(raw[i : i + 32]) for i in range(0, len(raw) - 31, 32)]


def resolve_keys(svm: LiteSVM, tx: VersionedTransaction) -> LoadedKeys:
    """Static keys plus addresses loaded from lookup tables (v0 messages)."""
    message = tx.message
    static = list(message.account_keys)
    writable: list[Pubkey] = []
    readonly: list[Pubkey] = []
    if isinstance(message, MessageV0):
        for lookup in message.address_table_lookups:
            table = svm.get_account(lookup.account_key)
            if table is None:
                raise TransactionRejected(str(tx.signatures[0]), "AddressLookupTableNotFound", [])
            addresses = lookup_table_addresses(bytes(table.data))
            try:
                writable += [addresses[i] for i in lookup.writable_indexes]
                readonly += [addresses[i] for i in lookup.readonly_indexes]
            except IndexError as exc:
                raise TransactionRejected(str(tx.signatures[0]), "InvalidAddressLookupTableIndex", []) from exc
    return LoadedKeys(static, writable, readonly)


def _token_balances(svm: LiteSVM, keys: list[Pubkey], invoked: set[int]) -> list[dict]:
    balances = []
    decimals_cache: dict[Pubkey, int | None] = {}
    for index, key in enumerate(keys):
        if index in invoked or key in TOKEN_PROGRAMS:
            continue
        account = svm.get_account(key)
        if account is None or account.owner not in TOKEN_PROGRAMS:
            continue
        state = decode_token_account(bytes(account.data))
        if state is None:
            continue
        if state.mint not in decimals_cache:
            decimals_cache[state.mint] = _mint_decimals(svm, state.mint)
        decimals = decimals_cache[state.mint]
        if decimals is None:
            continue
        balances.append({
            "accountIndex": index,
            "mint": str(state.mint),
            "owner": str(state.owner),
            "programId": str(account.owner),
            "uiTokenAmount": ledger_token_amount(state.amount, decimals),
        })
    return balances


def _mint_decimals(svm: LiteSVM, mint: Pubkey) -> int | None:
    if mint == NATIVE_MINT:
        return 9
    account = svm.get_account(mint)
    if account is None or account.owner not in TOKEN_PROGRAMS:
        return None
    state = decode_mint(bytes(account.data))
    return state.decimals if state else None


def _lamports(svm: LiteSVM, keys: list[Pubkey]) -> list[int]:
    return [svm.get_balance(k) or 0 for k in keys]


def execute(svm: LiteSVM, tx: VersionedTransaction) -> TxRecord:
    """Execute `tx`; return its record (also for failed-but-committed txs) or raise TransactionRejected."""
    signature = str(tx.signatures[0])
    keys = resolve_keys(svm, tx)
    all_keys = keys.static + keys.writable + keys.readonly
    invoked = {ix.program_id_index for ix in tx.message.instructions}
    has_token_program = any(k in TOKEN_PROGRAMS for k in all_keys)

    pre_balances = _lamports(svm, all_keys)
    pre_tokens = _token_balances(svm, all_keys, invoked) if has_token_program else None

    result = svm.send_transaction(tx)
    if hasattr(result, "err"):
        err = json.loads(result.to_json())["err"]
        meta = result.meta()
    else:
        err, meta = None, result

    post_balances = _lamports(svm, all_keys)
    # Failed-but-committed transactions pay the fee; a transaction that never loaded
    # (bad signature, unknown payer, AlreadyProcessed...) changes nothing and is dropped.
    if err is not None and post_balances[0] >= pre_balances[0]:
        raise TransactionRejected(signature, err, list(meta.logs()))
    post_tokens = _token_balances(svm, all_keys, invoked) if has_token_program else None

    inner = []
    for index, instructions in enumerate(meta.inner_instructions()):
        if instructions:
            inner.append((index, [
                InnerIx(
                    program_id_index=ii.instruction().program_id_index,
                    accounts=list(bytes(ii.instruction().accounts)),
                    data=bytes(ii.instruction().data),
                    stack_height=ii.stack_height(),
                )
                for ii in instructions
            ]))
    ret = meta.return_data()
    # agave records return data only when some program set non-empty data.
    return_data = (str(ret.program_id), bytes(ret.data)) if ret is not None and bytes(ret.data) else None
    version = "legacy" if not isinstance(tx.message, MessageV0) else 0
    return TxRecord(
        tx=tx,
        signature=signature,
        version=version,
        static_keys=keys.static,
        loaded_writable=keys.writable,
        loaded_readonly=keys.readonly,
        err=err,
        fee=meta.fee(),
        pre_balances=pre_balances,
        post_balances=post_balances,
        pre_token_balances=pre_tokens,
        post_token_balances=post_tokens,
        inner_instructions=inner,
        log_messages=list(meta.logs()),
        compute_units_consumed=meta.compute_units_consumed(),
        return_data=return_data,
    )
