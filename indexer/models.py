"""Plain data passed along the data path: source -> decode -> store. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block (EVM) or slot (Solana) as the chain identifies it."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int


# RawLog, Event and SkippedLog are made per log on the hot path: plain slotted dataclasses, because a
# frozen one's __init__ costs ~5x more (object.__setattr__ per field). Treat them as immutable anyway.
@dataclass(slots=True)
class RawLog:
    """One EVM log exactly as the node returned it (hex strings lower-cased)."""

    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    transaction_hash: str
    transaction_index: int
    log_index: int


@dataclass(frozen=True, slots=True)
class RawBlock:
    """Everything the decoder needs about one block.

    EVM: `logs` of the tracked contracts, plus `calls`: results of eth_call made at this block for
    values the logs cannot carry (hashed indexed strings, first-seen token metadata), keyed by
    (contract address, function name). Solana: `payload` is the getBlock result (jsonParsed).
    """

    ref: BlockRef
    logs: tuple[RawLog, ...] = ()
    payload: Any = None
    calls: Mapping[tuple[str, str], Any] = field(default_factory=dict)


@dataclass(slots=True)
class Event:
    """One decoded on-chain event of a tracked token, with its effects on the cap table.

    Only events with `moves_balance` change balances (ERC-20 Transfer, SPL mint/burn/transfer);
    companion events (Issued, ForcedTransfer, TransferShares...) are recorded but never move a balance.
    `token_update` sets token state fields (name, symbol, decimals, paused, identity_registry, compliance),
    `multiplier` = (base, next, effective_at) as stated by the event (ERC-8056), `multiplier_schedule` =
    (new, effective_at) applied to the stored state by the Token-2022 ScaledUiAmount rule, and
    `meta:<key>` = free-form metadata (uri, custom keys, permanent delegate) kept with old -> new;
    `holder_update` sets holder state fields of `holder` (frozen, frozen_delta, registered, country...).
    `action` names an explicit corporate action (type, old, new) where state alone cannot express it
    (recovery: old wallet -> new wallet); state-derived actions (rename, split, pause) are derived by the
    store from old vs new state so EVM and Solana behave the same.
    """

    token: str
    event_type: str
    transaction_hash: str
    log_index: int
    from_address: str | None = None
    to_address: str | None = None
    amount: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    moves_balance: bool = False
    token_update: Mapping[str, Any] | None = None
    holder: str | None = None
    holder_update: Mapping[str, Any] | None = None
    action: tuple[str, str | None, str | None] | None = None
    # tells apart several events decoded from one log (a registry event applies to each bound token)
    sub: int = 0
    # a balance movement whose other side is outside the cap table (e.g. a Token-2022 confidential
    # balance): from/to None then means "elsewhere", not mint/burn, so total supply is unchanged
    external: bool = False


@dataclass(slots=True)
class SkippedLog:
    """A log that could not be decoded: counted, logged with its position, stored for audit."""

    transaction_hash: str
    log_index: int
    address: str
    reason: str
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DecodedBlock:
    ref: BlockRef
    events: tuple[Event, ...] = ()
    skipped: tuple[SkippedLog, ...] = ()
    # contracts that become watched from this block on (e.g. the identity registry a token binds)
    new_watched: tuple[tuple[str, str, str], ...] = ()  # (address, token, role)
    # token metadata read when a token is first seen (name, symbol, decimals): fills unknown fields only
    token_info: tuple[tuple[str, Mapping[str, Any]], ...] = ()


@dataclass(frozen=True, slots=True)
class WatchedContract:
    address: str
    token: str
    role: str  # "token" | "identity_registry"
    profile: str = "erc20"
