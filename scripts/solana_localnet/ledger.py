"""Ledger records: what a block and an executed transaction keep (encoding-independent).

The fields mirror agave's `TransactionStatusMeta` / `ConfirmedBlock` (transaction-status
client types); encoding into json / jsonParsed happens in `encode.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction


@dataclass
class InnerIx:
    program_id_index: int
    accounts: list[int]
    data: bytes
    stack_height: int | None


@dataclass
class TxRecord:
    tx: VersionedTransaction
    signature: str
    version: str | int  # "legacy" or 0
    static_keys: list[Pubkey]
    loaded_writable: list[Pubkey]
    loaded_readonly: list[Pubkey]
    err: object  # None or agave's TransactionError JSON (e.g. {"InstructionError": [0, {"Custom": 17}]})
    fee: int
    pre_balances: list[int]
    post_balances: list[int]
    pre_token_balances: list[dict] | None
    post_token_balances: list[dict] | None
    inner_instructions: list[tuple[int, list[InnerIx]]]
    log_messages: list[str]
    compute_units_consumed: int
    return_data: tuple[str, bytes] | None
    slot: int = -1
    index: int = -1

    @property
    def account_keys(self) -> list[Pubkey]:
        """Static keys, then loaded writable, then loaded readonly (agave AccountKeys order)."""
        return self.static_keys + self.loaded_writable + self.loaded_readonly


@dataclass
class Block:
    slot: int
    parent_slot: int
    block_height: int
    block_time: int
    blockhash: str
    previous_blockhash: str
    transactions: list[TxRecord] = field(default_factory=list)
