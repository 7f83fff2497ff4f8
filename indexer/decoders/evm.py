"""EVM logs -> Events. Pure: no I/O, no clock.

Dispatch is by (contract role, topic0) then by *shape* (topic count, data length), because topic0 alone
is ambiguous: the ERC-721 Transfer has the ERC-20 topic0 with 4 topics and empty data. A log that does
not fit its event's shape is a counted skip naming block, transaction and log index; it never stops the
indexer and never moves a balance.

Only `Transfer` moves balances. Companion events (Issued, ForcedTransfer, TransferShares,
TransferWithUIAmount...) are recorded as labels and never move a balance a second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from indexer.amounts import fixed18_to_text
from indexer.decoders.abi import (AbiShapeError, decode_string_at, keccak_text, topic0, word_address, word_bool,
                                  word_uint, words)
from indexer.models import ZERO_ADDRESS, DecodedBlock, Event, RawBlock, RawLog, SkippedLog

log = logging.getLogger(__name__)


class Skip(Exception):
    """Raised by a handler: the log is skipped with this reason (a short, bounded label)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Binding:
    """What a watched address is to the cap table: a token, or a contract whose events apply to a token."""

    token: str
    role: str  # "token" | "identity_registry"
    profiles: tuple[str, ...]


Handler = Callable[[RawLog, str, RawBlock], Event | None]

# ---- the catalog: canonical signatures (topic0 = keccak of the signature) ------------------------

SIG = {
    "Transfer": "Transfer(address,address,uint256)",
    "Paused": "Paused(address)",
    "Unpaused": "Unpaused(address)",
    "AddressFrozen": "AddressFrozen(address,bool,address)",
    "TokensFrozen": "TokensFrozen(address,uint256)",
    "TokensUnfrozen": "TokensUnfrozen(address,uint256)",
    "RecoverySuccess": "RecoverySuccess(address,address,address)",
    "UpdatedTokenInformation": "UpdatedTokenInformation(string,string,uint8,string,address)",
    "IdentityRegistryAdded": "IdentityRegistryAdded(address)",
    "ComplianceAdded": "ComplianceAdded(address)",
    "IdentityRegistered": "IdentityRegistered(address,address)",
    "IdentityRemoved": "IdentityRemoved(address,address)",
    "CountryUpdated": "CountryUpdated(address,uint16)",
    "UIMultiplierUpdated3": "UIMultiplierUpdated(uint256,uint256,uint256)",
    "UIMultiplierUpdated4": "UIMultiplierUpdated(uint256,uint256,uint256,uint256)",
    "UIMultiplierUpdateCancelled": "UIMultiplierUpdateCancelled(uint256,uint256)",
    "TransferWithUIAmount": "TransferWithUIAmount(address,address,uint256,uint256)",
    "MultiplierUpdated": "MultiplierUpdated(uint256)",
    "TransferShares": "TransferShares(address,address,uint256)",
    "PauseModeChange": "PauseModeChange(bool)",
    "StockSplit2": "StockSplit(uint256,uint256)",
    "StockSplit3": "StockSplit(uint256,uint256,uint256)",
    "SymbolChanged2": "SymbolChanged(string,string)",
    "SymbolChanged3": "SymbolChanged(string,string,uint256)",
    "NameChanged": "NameChanged(string,string)",
    "AllowlistUpdated": "AllowlistUpdated(address,bool)",
    "WalletApproved1": "WalletApproved(address)",
    "WalletRevoked1": "WalletRevoked(address)",
    "WalletApproved2": "WalletApproved(address,uint256)",
    "WalletRevoked2": "WalletRevoked(address,uint256)",
    "UserAllowed": "UserAllowed(address)",
    "UserDisallowed": "UserDisallowed(address)",
    "Frozen": "Frozen(address,uint256)",
    "ForcedTransfer": "ForcedTransfer(address,address,uint256)",
    "Issued": "Issued(address,address,uint256,bytes)",
    "Redeemed": "Redeemed(address,address,uint256,bytes)",
    "ControllerTransfer": "ControllerTransfer(address,address,address,uint256,bytes,bytes)",
    "Mint": "Mint(address,address,uint256)",
    "AdminBurn": "AdminBurn(address,address,uint256)",
}
T = {name: topic0(sig) for name, sig in SIG.items()}

# Events a watched contract emits that have no cap-table meaning: dropped silently (not skips).
IGNORED = {topic0(s) for s in (
    "Approval(address,address,uint256)", "OwnershipTransferred(address,address)", "AgentAdded(address)",
    "AgentRemoved(address)", "Initialized(uint8)", "Initialized(uint64)", "Upgraded(address)",
    "ImplementationAuthoritySet(address)", "RoleGranted(bytes32,address,address)",
    "RoleRevoked(bytes32,address,address)", "RoleAdminChanged(bytes32,bytes32,bytes32)",
    "IdentityStored(address,address)", "IdentityUnstored(address,address)", "IdentityModified(address,address)",
    "CountryModified(address,uint16)", "IdentityRegistryBound(address)", "IdentityRegistryUnbound(address)",
    "ClaimTopicsRegistrySet(address)", "TrustedIssuersRegistrySet(address)", "IdentityStorageSet(address)",
    "IdentityUpdated(address,address)", "TokenBound(address)", "TokenUnbound(address)",
    "ModuleAdded(address)", "ModuleRemoved(address)", "ModuleInteraction(address,bytes4)",
    "NewMultiplierUpdater(address)",
)}


# ---- shape helpers ------------------------------------------------------------------------------

def _shape(lg: RawLog, n_topics: int, n_words: int | None) -> list[str]:
    if len(lg.topics) != n_topics:
        raise Skip("malformed", f"expected {n_topics} topics, got {len(lg.topics)}")
    try:
        return words(lg.data, n_words)
    except AbiShapeError as exc:
        raise Skip("malformed", str(exc)) from None


def _addr(word: str) -> str:
    try:
        return word_address(word)
    except AbiShapeError as exc:
        raise Skip("malformed", str(exc)) from None


def _bool(word: str) -> bool:
    try:
        return word_bool(word)
    except AbiShapeError as exc:
        raise Skip("malformed", str(exc)) from None


def _ev(lg: RawLog, token: str, event_type: str, **kw) -> Event:
    return Event(token=token, event_type=event_type, transaction_hash=lg.transaction_hash, log_index=lg.log_index,
                 **kw)


# ---- handlers: (log, token, block) -> Event ------------------------------------------------------

def transfer(lg: RawLog, token: str, block: RawBlock) -> Event:
    t = lg.topics
    data = lg.data
    # hot path: ERC-20 shape is 3 topics + one 32-byte word
    if len(t) == 3 and len(data) == 66:
        a, b = t[1], t[2]
        if a[2:26] != "000000000000000000000000" or b[2:26] != "000000000000000000000000":
            raise Skip("malformed", "Transfer address topic has non-zero high bytes")
        frm = "0x" + a[26:]
        to = "0x" + b[26:]
        amount = int(data, 16)
        kind = "mint" if frm == ZERO_ADDRESS else "burn" if to == ZERO_ADDRESS else "transfer"
        return Event(token, kind, lg.transaction_hash, lg.log_index, frm, to, amount, moves_balance=True)
    if len(t) == 4 and data in ("0x", ""):
        raise Skip("erc721_transfer", "Transfer with 4 topics and empty data is an ERC-721 transfer")
    if len(t) == 1 and len(data) == 2 + 3 * 64:
        raise Skip("unindexed_transfer", "Transfer with no indexed arguments (legacy ERC-721 style)")
    raise Skip("malformed", f"Transfer with {len(t)} topics and {max(0, len(data) - 2) // 2} data bytes")


def paused(lg, token, block):
    w = _shape(lg, 1, 1)
    return _ev(lg, token, "paused", data={"account": _addr(w[0])}, token_update={"paused": True})


def unpaused(lg, token, block):
    w = _shape(lg, 1, 1)
    return _ev(lg, token, "unpaused", data={"account": _addr(w[0])}, token_update={"paused": False})


def address_frozen(lg, token, block):
    _shape(lg, 4, 0)
    holder = _addr(lg.topics[1])
    frozen = _bool(lg.topics[2])
    return _ev(lg, token, "address_frozen" if frozen else "address_unfrozen", to_address=holder,
               data={"agent": _addr(lg.topics[3])}, holder=holder, holder_update={"frozen": frozen})


def tokens_frozen(lg, token, block):
    w = _shape(lg, 2, 1)
    holder = _addr(lg.topics[1])
    amount = word_uint(w[0])
    return _ev(lg, token, "tokens_frozen", to_address=holder, amount=amount, holder=holder,
               holder_update={"frozen_delta": amount})


def tokens_unfrozen(lg, token, block):
    w = _shape(lg, 2, 1)
    holder = _addr(lg.topics[1])
    amount = word_uint(w[0])
    return _ev(lg, token, "tokens_unfrozen", to_address=holder, amount=amount, holder=holder,
               holder_update={"frozen_delta": -amount})


def frozen_absolute(lg, token, block):
    """ERC-7943 Frozen(account, amount): the new absolute frozen amount, not a delta."""
    w = _shape(lg, 2, 1)
    holder = _addr(lg.topics[1])
    amount = word_uint(w[0])
    return _ev(lg, token, "frozen_amount_set", to_address=holder, amount=amount, holder=holder,
               holder_update={"frozen_amount": amount})


def recovery_success(lg, token, block):
    _shape(lg, 4, 0)
    lost, new = _addr(lg.topics[1]), _addr(lg.topics[2])
    return _ev(lg, token, "recovery", from_address=lost, to_address=new,
               data={"investor_onchain_id": _addr(lg.topics[3])}, action=("recovery", lost, new))


def _resolve_hashed(block: RawBlock, address: str, fn: str, hashed: str) -> str | None:
    """Indexed strings are only keccak hashes: accept the eth_call value whose hash matches."""
    for candidate in block.calls.get((address, fn), ()) or ():
        if candidate is not None and keccak_text(candidate) == hashed:
            return candidate
    return None


def updated_token_information(lg, token, block):
    w = _shape(lg, 4, None)
    if len(w) < 2:
        raise Skip("malformed", "UpdatedTokenInformation data too short")
    body = lg.data[2:]
    try:
        decimals = word_uint(w[0])
        version = decode_string_at(body, 1)
    except (AbiShapeError, ValueError) as exc:
        raise Skip("malformed", str(exc)) from None
    if decimals > 255:
        raise Skip("malformed", f"decimals {decimals} does not fit uint8")
    name = _resolve_hashed(block, lg.address, "name", lg.topics[1])
    symbol = _resolve_hashed(block, lg.address, "symbol", lg.topics[2])
    update = {"decimals": decimals}
    if name is not None:
        update["name"] = name
    if symbol is not None:
        update["symbol"] = symbol
    data = {"version": version, "onchain_id": _addr(lg.topics[3]), "name_hash": lg.topics[1],
            "symbol_hash": lg.topics[2]}
    if name is None or symbol is None:
        # the node could not answer name()/symbol() at this block: keep the hashes, say so
        data["unresolved"] = [k for k, v in (("name", name), ("symbol", symbol)) if v is None]
    return _ev(lg, token, "token_information_updated", data=data, token_update=update)


def identity_registry_added(lg, token, block):
    _shape(lg, 2, 0)
    registry = _addr(lg.topics[1])
    return _ev(lg, token, "identity_registry_added", to_address=registry,
               token_update={"identity_registry": registry})


def compliance_added(lg, token, block):
    _shape(lg, 2, 0)
    compliance = _addr(lg.topics[1])
    return _ev(lg, token, "compliance_added", to_address=compliance, token_update={"compliance": compliance})


def identity_registered(lg, token, block):
    _shape(lg, 3, 0)
    holder, identity = _addr(lg.topics[1]), _addr(lg.topics[2])
    return _ev(lg, token, "identity_registered", to_address=holder, data={"identity": identity, "registry": lg.address},
               holder=holder, holder_update={"registered": True, "identity": identity})


def identity_removed(lg, token, block):
    _shape(lg, 3, 0)
    holder, identity = _addr(lg.topics[1]), _addr(lg.topics[2])
    return _ev(lg, token, "identity_removed", to_address=holder, data={"identity": identity, "registry": lg.address},
               holder=holder, holder_update={"registered": False})


def country_updated(lg, token, block):
    _shape(lg, 3, 0)
    holder = _addr(lg.topics[1])
    country = int(lg.topics[2], 16)
    if country > 0xFFFF:
        raise Skip("malformed", f"country {country} does not fit uint16")
    return _ev(lg, token, "country_updated", to_address=holder, data={"country": country, "registry": lg.address},
               holder=holder, holder_update={"country": country})


def ui_multiplier_updated(lg, token, block):
    """ERC-8056: current 3-word form (old, new, effectiveAt) and the first draft's 4-word form
    (old, new, setAt, effectiveAt). Raw balances never change; UI = raw * multiplier from effectiveAt."""
    n = 3 if lg.topics[0] == T["UIMultiplierUpdated3"] else 4
    w = _shape(lg, 1, n)
    old, new, eff = word_uint(w[0]), word_uint(w[1]), word_uint(w[-1])
    if new == 0:
        raise Skip("malformed", "UIMultiplierUpdated with a zero multiplier")
    data = {"old_multiplier": fixed18_to_text(old), "new_multiplier": fixed18_to_text(new), "effective_at": eff,
            "raw_new_multiplier": str(new)}
    if n == 4:
        data["set_at"] = word_uint(w[2])
    return _ev(lg, token, "multiplier_updated", data=data,
               token_update={"multiplier": (fixed18_to_text(old), fixed18_to_text(new), eff)})


def ui_multiplier_cancelled(lg, token, block):
    w = _shape(lg, 1, 2)
    return _ev(lg, token, "multiplier_update_cancelled",
               data={"cancelled_multiplier": fixed18_to_text(word_uint(w[0])), "cancelled_effective_at": word_uint(w[1])})


def multiplier_updated_immediate(lg, token, block):
    """Backed/xStocks MultiplierUpdated(uint256): the new multiplier, in force now."""
    w = _shape(lg, 1, 1)
    value = word_uint(w[0])
    if value == 0:
        raise Skip("malformed", "MultiplierUpdated with a zero multiplier")
    text = fixed18_to_text(value)
    return _ev(lg, token, "multiplier_updated", data={"new_multiplier": text, "raw_new_multiplier": str(value)},
               token_update={"multiplier": (text, None, None)})


def stock_split_virtual(lg, token, block):
    """ChainEquity variant A: StockSplit(oldMultiplier, newMultiplier), 1e18 fixed point, immediate."""
    w = _shape(lg, 1, 2)
    new = word_uint(w[1])
    if new == 0:
        raise Skip("malformed", "StockSplit with a zero multiplier")
    text = fixed18_to_text(new)
    return _ev(lg, token, "stock_split", data={"old_multiplier": fixed18_to_text(word_uint(w[0])),
                                               "new_multiplier": text},
               token_update={"multiplier": (text, None, None)})


def stock_split_minted(lg, token, block):
    """ChainEquity variant B: StockSplit(multiplier, newTotalSupply, timestamp). Implementations of this
    variant mint the new shares (Transfer events move the balances), so it only labels the action."""
    w = _shape(lg, 1, 3)
    data = {"multiplier": str(word_uint(w[0])), "new_total_supply": str(word_uint(w[1])), "timestamp": word_uint(w[2])}
    return _ev(lg, token, "stock_split", data=data, action=("stock_split", None, data["multiplier"]))


def _two_strings(lg) -> tuple[str, str]:
    w = _shape(lg, 1, None)
    if len(w) < 2:
        raise Skip("malformed", "expected two string offsets")
    try:
        return decode_string_at(lg.data[2:], 0), decode_string_at(lg.data[2:], 1)
    except AbiShapeError as exc:
        raise Skip("malformed", str(exc)) from None


def symbol_changed(lg, token, block):
    old, new = _two_strings(lg)
    return _ev(lg, token, "symbol_changed", data={"old_symbol": old, "new_symbol": new},
               token_update={"symbol": new})


def name_changed(lg, token, block):
    old, new = _two_strings(lg)
    return _ev(lg, token, "name_changed", data={"old_name": old, "new_name": new}, token_update={"name": new})


def pause_mode_change(lg, token, block):
    w = _shape(lg, 1, 1)
    value = _bool(w[0])
    return _ev(lg, token, "paused" if value else "unpaused", token_update={"paused": value})


def _allowlist(value: bool, event_type: str, n_topics: int, n_words: int):
    def handler(lg, token, block):
        _shape(lg, n_topics, n_words)
        holder = _addr(lg.topics[1])
        return _ev(lg, token, event_type, to_address=holder, holder=holder, holder_update={"registered": value})
    return handler


def allowlist_updated(lg, token, block):
    w = _shape(lg, 2, 1)
    holder = _addr(lg.topics[1])
    value = _bool(w[0])
    return _ev(lg, token, "allowlist_added" if value else "allowlist_removed", to_address=holder, holder=holder,
               holder_update={"registered": value})


def _companion(event_type: str, n_topics: int, n_words: int | None, from_topic: int | None, to_topic: int | None,
               amount_word: int):
    """Events emitted beside Transfer: recorded as labels, never moving a balance."""
    def handler(lg, token, block):
        w = _shape(lg, n_topics, n_words)
        if amount_word >= len(w):
            raise Skip("malformed", f"{event_type}: data too short")
        frm = _addr(lg.topics[from_topic]) if from_topic else None
        to = _addr(lg.topics[to_topic]) if to_topic else None
        return _ev(lg, token, event_type, from_address=frm, to_address=to, amount=word_uint(w[amount_word]))
    return handler


# ---- profiles: which topic0s a token of that profile is decoded for -------------------------------

ERC20 = {T["Transfer"]: transfer}
PAUSABLE = {T["Paused"]: paused, T["Unpaused"]: unpaused}
ERC3643_TOKEN = {
    T["AddressFrozen"]: address_frozen, T["TokensFrozen"]: tokens_frozen, T["TokensUnfrozen"]: tokens_unfrozen,
    T["RecoverySuccess"]: recovery_success, T["UpdatedTokenInformation"]: updated_token_information,
    T["IdentityRegistryAdded"]: identity_registry_added, T["ComplianceAdded"]: compliance_added,
}
ERC8056 = {T["UIMultiplierUpdated3"]: ui_multiplier_updated, T["UIMultiplierUpdated4"]: ui_multiplier_updated,
           T["UIMultiplierUpdateCancelled"]: ui_multiplier_cancelled,
           T["TransferWithUIAmount"]: _companion("transfer_with_ui_amount", 3, 2, 1, 2, 0)}
BACKED = {T["MultiplierUpdated"]: multiplier_updated_immediate, T["PauseModeChange"]: pause_mode_change,
          T["TransferShares"]: _companion("transfer_shares", 3, 1, 1, 2, 0)}
CHAINEQUITY = {T["StockSplit2"]: stock_split_virtual, T["StockSplit3"]: stock_split_minted,
               T["SymbolChanged2"]: symbol_changed, T["SymbolChanged3"]: symbol_changed,
               T["NameChanged"]: name_changed, T["AllowlistUpdated"]: allowlist_updated,
               T["WalletApproved1"]: _allowlist(True, "allowlist_added", 2, 0),
               T["WalletRevoked1"]: _allowlist(False, "allowlist_removed", 2, 0),
               T["WalletApproved2"]: _allowlist(True, "allowlist_added", 2, 1),
               T["WalletRevoked2"]: _allowlist(False, "allowlist_removed", 2, 1)}
LABELS = {T["ForcedTransfer"]: _companion("forced_transfer", 3, 1, 1, 2, 0),
          T["Issued"]: _companion("issued", 3, None, None, 2, 0),
          T["Redeemed"]: _companion("redeemed", 3, None, 2, None, 0),
          T["ControllerTransfer"]: _companion("controller_transfer", 3, None, 1, 2, 1),
          T["Mint"]: _companion("issued", 3, 1, None, 2, 0),
          T["AdminBurn"]: _companion("redeemed", 3, 1, 2, None, 0),
          T["Frozen"]: frozen_absolute,
          T["UserAllowed"]: _allowlist(True, "allowlist_added", 2, 0),
          T["UserDisallowed"]: _allowlist(False, "allowlist_removed", 2, 0)}

REGISTRY = {T["IdentityRegistered"]: identity_registered, T["IdentityRemoved"]: identity_removed,
            T["CountryUpdated"]: country_updated}

PROFILES: dict[str, dict[str, Handler]] = {
    "erc20": {**ERC20, **PAUSABLE},
    "erc3643": {**ERC20, **PAUSABLE, **ERC3643_TOKEN, **ERC8056, **BACKED},
    "erc8056": {**ERC20, **ERC8056},
    "backed": {**ERC20, **PAUSABLE, **BACKED},
    "chainequity": {**ERC20, **PAUSABLE, **CHAINEQUITY},
    "security": {**ERC20, **PAUSABLE, **ERC3643_TOKEN, **ERC8056, **BACKED, **CHAINEQUITY, **LABELS},
}
ROLE_HANDLERS = {"identity_registry": REGISTRY}


def handlers_for(profiles: Iterable[str]) -> dict[str, Handler]:
    out: dict[str, Handler] = {}
    for p in profiles:
        out.update(PROFILES[p])
    return out


class EvmDecoder:
    """Decodes the logs of one block for the watched contracts.

    `bindings` maps a lower-case contract address to what it means for the cap table; it grows when a
    token binds an identity registry (see DecodedBlock.new_watched).
    """

    def __init__(self, bindings: Mapping[str, list[Binding]]):
        self._table: dict[str, list[tuple[str, dict[str, Handler]]]] = {}
        for address, items in bindings.items():
            for b in items:
                self.bind(address, b)

    def bind(self, address: str, binding: Binding) -> None:
        handlers = ROLE_HANDLERS[binding.role] if binding.role != "token" else handlers_for(binding.profiles)
        entries = self._table.setdefault(address.lower(), [])
        if all(tok != binding.token for tok, _ in entries):
            entries.append((binding.token, handlers))

    def addresses(self) -> list[str]:
        return sorted(self._table)

    def decode(self, block: RawBlock) -> DecodedBlock:
        events: list[Event] = []
        skipped: list[SkippedLog] = []
        new_watched: list[tuple[str, str, str]] = []
        table = self._table
        for lg in block.logs:
            entries = table.get(lg.address)
            if not entries:
                continue  # not ours (a node that ignores the address filter, or a shared block fetch)
            if not lg.topics:
                skipped.append(self._skip(block, lg, Skip("malformed", "log without topics")))
                continue
            t0 = lg.topics[0]
            for sub, (token, handlers) in enumerate(entries):
                handler = handlers.get(t0)
                if handler is None:
                    if t0 not in IGNORED and sub == 0:
                        skipped.append(self._skip(block, lg, Skip("unknown_event", f"topic0 {t0}")))
                    continue
                try:
                    ev = handler(lg, token, block)
                except Skip as skip:
                    if sub == 0:
                        skipped.append(self._skip(block, lg, skip))
                    continue
                except (ValueError, TypeError, IndexError) as exc:  # e.g. non-hex data from a broken node
                    if sub == 0:
                        skipped.append(self._skip(block, lg, Skip("malformed", f"{type(exc).__name__}: {exc}")))
                    continue
                if ev is None:
                    continue
                if sub:
                    ev = _with_sub(ev, sub)
                events.append(ev)
                if ev.event_type == "identity_registry_added":
                    new_watched.append((ev.to_address, token, "identity_registry"))
        return DecodedBlock(block.ref, tuple(events), tuple(skipped), tuple(new_watched))

    @staticmethod
    def _skip(block: RawBlock, lg: RawLog, skip: Skip) -> SkippedLog:
        level = logging.DEBUG if skip.reason in ("unknown_event", "erc721_transfer") else logging.WARNING
        log.log(level, "skipped log: %s (%s) at block %d tx %s log index %d from %s", skip.reason, skip.detail,
                block.ref.number, lg.transaction_hash, lg.log_index, lg.address,
                extra={"block_number": block.ref.number, "tx": lg.transaction_hash, "log_index": lg.log_index})
        return SkippedLog(lg.transaction_hash, lg.log_index, lg.address, skip.reason,
                          {"topics": list(lg.topics), "data": lg.data, "detail": skip.detail})


def _with_sub(ev: Event, sub: int) -> Event:
    from dataclasses import replace
    return replace(ev, sub=sub)
