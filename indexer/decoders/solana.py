"""Solana getBlock (jsonParsed, transactionDetails full) -> Events. Pure: no I/O, no clock.

Balances come from the ledger's own `meta.pre/postTokenBalances`: they name mint and owner of every token
account in the transaction, even for a plain `transfer`, which names no mint. The parsed token
instructions (top level, then each one's inner CPIs, and the items of a `batch`, in execution order) give
each movement its label and counterparties. Whatever the instructions do not explain (a confidential
deposit or withdraw, an unparsed program) becomes an external `balance_adjustment`, so every transaction
ends at exactly the ledger's numbers, per (mint, owner).

Shapes follow agave `transaction-status/src/parse_token.rs` (see shared/reference/solana.md, 1.5 and 2.2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Callable, Mapping

from indexer.amounts import float_to_text
from indexer.models import DecodedBlock, Event, RawBlock, SkippedLog

log = logging.getLogger(__name__)

TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
TOKEN_2022_PROGRAM = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"
# jsonParsed names both "spl-token": only the program id tells them apart, and only these two are parsed
TOKEN_PROGRAMS = frozenset((TOKEN_PROGRAM, TOKEN_2022_PROGRAM))
U64_MAX = (1 << 64) - 1

# what a transaction-level failure raises while we read the node's JSON
_BAD_SHAPE = (KeyError, TypeError, AttributeError, IndexError, ValueError)


class Malformed(Exception):
    """The input lacks the shape agave's jsonParsed gives: skip that instruction (or transaction)."""

    def __init__(self, detail: str, address: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.address = address


# ---- field readers: every failure names the field ------------------------------------------------

def _text(info: Mapping[str, Any], key: str) -> str:
    value = info.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{key} missing or not a string")
    return value


def _optional_text(info: Mapping[str, Any], key: str) -> str | None:
    value = info.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed(f"{key} is not a string or null")
    return value


def _raw_amount(value: Any, field: str) -> int:
    """u64 raw units: agave renders them as decimal strings (ints tolerated), never floats."""
    if isinstance(value, bool):
        raise Malformed(f"{field} is not an amount")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        amount = int(value)
    else:
        raise Malformed(f"{field} is not a decimal amount: {value!r}")
    if not 0 <= amount <= U64_MAX:
        raise Malformed(f"{field} {amount} is outside u64")
    return amount


def _ui_amount(info: Mapping[str, Any], key: str) -> int:
    """`tokenAmount` / `feeAmount` objects of the checked forms: the raw `amount` inside."""
    obj = info.get(key)
    if not isinstance(obj, Mapping):
        raise Malformed(f"{key} missing or not an object")
    return _raw_amount(obj.get("amount"), f"{key}.amount")


def _authority(info: Mapping[str, Any], single: str, multisig: str) -> str | None:
    value = info.get(single) or info.get(multisig)
    return value if isinstance(value, str) else None


def _multiplier(value: Any, field: str) -> str:
    """Token-2022 stores an f64; agave prints it with Rust's to_string. Exact decimal text of that f64."""
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise Malformed(f"{field} is not a positive multiplier: {value!r}")
    return float_to_text(number)


class _Tx:
    """What one transaction knows while its instructions are walked."""

    __slots__ = ("sig", "index", "accounts", "amounts", "items")

    def __init__(self, sig: str, index: int):
        self.sig = sig
        self.index = index
        self.accounts: dict[str, list] = {}  # token account -> [mint, owner]
        self.amounts: dict[str, int] = {}  # token account of a tracked mint -> running raw balance
        self.items: list[Event | SkippedLog] = []  # chain order; log_index is set when the tx is done

    def mint_of(self, account: str) -> str | None:
        entry = self.accounts.get(account)
        return entry[0] if entry else None

    def owner_of(self, account: str) -> str | None:
        entry = self.accounts.get(account)
        return entry[1] if entry else None

    def move(self, account: str | None, delta: int) -> None:
        if account is not None and account in self.amounts:
            self.amounts[account] += delta


class SolanaDecoder:
    """Decodes the transactions of one slot for the tracked mints.

    `mints` maps a mint address to its context: "permanent_delegate" (pubkey or None: a transfer signed by
    it is a seizure) and optionally "metadata_address" (where its TokenMetadata lives when the metadata
    pointer is not the mint itself). The decoder updates the context itself when a block initializes or
    changes the permanent delegate or initializes metadata elsewhere; `set_context` is for the pipeline.
    """

    def __init__(self, mints: Mapping[str, Mapping[str, Any]]):
        self._mints: dict[str, dict[str, Any]] = {}
        self._metadata: dict[str, str] = {}  # metadata account -> mint (self-pointing: the mint itself)
        self._watch: set[str] = set()  # addresses whose presence in a tx's keys makes it ours
        for mint, ctx in mints.items():
            self._mints[mint] = {"permanent_delegate": None}
            self._metadata[mint] = mint
            self._watch.add(mint)
            for key, value in (ctx or {}).items():
                self.set_context(mint, key, value)
        self._handlers: dict[str, Callable[[_Tx, Mapping[str, Any], str, str], None]] = {
            "transfer": self._transfer, "transferChecked": self._transfer, "transferCheckedWithFee": self._transfer,
            "mintTo": self._mint_to, "mintToChecked": self._mint_to,
            "burn": self._burn, "burnChecked": self._burn,
            "freezeAccount": self._freeze, "thawAccount": self._freeze,
            "setAuthority": self._set_authority,
            "initializeMint": self._initialize_mint, "initializeMint2": self._initialize_mint,
            "initializeAccount": self._initialize_account, "initializeAccount2": self._initialize_account,
            "initializeAccount3": self._initialize_account,
            "initializePermanentDelegate": self._permanent_delegate,
            "initializeScaledUiAmountConfig": self._initialize_multiplier,
            "updateMultiplier": self._update_multiplier,
            "pause": self._pause, "resume": self._pause,
            "initializeTokenMetadata": self._initialize_metadata,
            "updateTokenMetadataField": self._update_metadata_field,
            "removeTokenMetadataKey": self._remove_metadata_key,
            "updateTokenMetadataAuthority": self._update_metadata_authority,
            "initializeDefaultAccountState": self._default_account_state,
            "updateDefaultAccountState": self._default_account_state,
        }

    # ---- context -------------------------------------------------------------------------------

    def set_context(self, mint: str, key: str, value: Any) -> None:
        ctx = self._mints.get(mint)
        if ctx is None:
            raise KeyError(f"mint {mint} is not tracked by this decoder")
        if key == "metadata_address":
            old = ctx.get(key)
            if old and old != mint and self._metadata.get(old) == mint:
                self._metadata.pop(old)
                self._watch.discard(old)
            if value:
                self._metadata[value] = mint
                self._watch.add(value)
        ctx[key] = value

    def context(self, mint: str) -> dict[str, Any]:
        """A copy of what the decoder currently knows about `mint` (for the pipeline to persist)."""
        return dict(self._mints[mint])

    def mints(self) -> list[str]:
        return sorted(self._mints)

    # ---- blocks and transactions ---------------------------------------------------------------

    def decode(self, block: RawBlock) -> DecodedBlock:
        slot = block.ref.number
        payload = block.payload
        txs = payload.get("transactions") if isinstance(payload, Mapping) else None
        if not isinstance(txs, list):
            log.warning("skipped Solana block: malformed (no transactions list) at slot %d", slot,
                        extra={"block_number": slot})
            return DecodedBlock(block.ref, (), (SkippedLog("", 0, "block", "malformed",
                                                           {"detail": "payload has no transactions list"}),))
        events: list[Event] = []
        skipped: list[SkippedLog] = []
        ordinal = 0
        for index, tx in enumerate(txs):
            tx_state = self._decode_tx(slot, index, tx, skipped)
            if tx_state is None:
                continue
            for item in tx_state.items:
                if isinstance(item, Event):
                    events.append(replace(item, log_index=ordinal))
                else:
                    skipped.append(replace(item, log_index=-(ordinal + 1)))
                ordinal += 1
        return DecodedBlock(block.ref, tuple(events), tuple(skipped))

    def _decode_tx(self, slot: int, index: int, tx: Any, skipped: list[SkippedLog]) -> _Tx | None:
        """One transaction's items in chain order, or None (failed, not ours, or skipped as malformed)."""
        sig = ""
        try:
            meta = tx["meta"]
            if meta.get("err") is not None:
                return None  # failed: fee charged, every token change reverted
            pre = meta.get("preTokenBalances") or ()
            post = meta.get("postTokenBalances") or ()
            mints = self._mints
            message = tx["transaction"]["message"]
            keys = [k["pubkey"] if isinstance(k, Mapping) else k for k in message["accountKeys"]]
            # hot path: most transactions of a block never touch a tracked mint
            if not (any(e["mint"] in mints for e in pre) or any(e["mint"] in mints for e in post)
                    or not self._watch.isdisjoint(keys)):
                return None
            sig = tx["transaction"]["signatures"][0]
            if not isinstance(sig, str) or not sig:
                sig = ""
                raise Malformed("signature is not a string")
            state = _Tx(sig, index)
            net = self._net_deltas(state, meta, keys, pre, post)
            inner: dict[int, list] = {}
            for group in meta.get("innerInstructions") or ():
                inner[int(group["index"])] = list(group["instructions"])
            for i, ix in enumerate(message["instructions"]):
                self._instruction(slot, state, ix, str(i))
                for j, sub in enumerate(inner.get(i, ())):
                    self._instruction(slot, state, sub, f"{i}.{j}")
            self._reconcile(slot, state, net)
            return state
        except (Malformed, *_BAD_SHAPE) as exc:
            detail = exc.detail if isinstance(exc, Malformed) else f"{type(exc).__name__}: {exc}"
            sig = sig or _signature(tx)
            address = self._first_tracked_mint(tx) or "transaction"
            log.warning("skipped Solana transaction: malformed (%s) at slot %d tx %s index %d", detail, slot,
                        sig or "?", index, extra={"block_number": slot, "tx": sig, "log_index": index})
            skipped.append(SkippedLog(sig, index, address, "malformed",
                                      {"detail": detail, "transaction_index": index}))
            return None

    def _first_tracked_mint(self, tx: Any) -> str | None:
        try:
            for name in ("preTokenBalances", "postTokenBalances"):
                for e in tx["meta"].get(name) or ():
                    if e.get("mint") in self._mints:
                        return e["mint"]
        except _BAD_SHAPE:
            pass
        return None

    def _net_deltas(self, state: _Tx, meta: Mapping[str, Any], keys: list[str], pre, post) -> dict:
        """Net raw change per (tracked mint, owner) from the ledger's token balances; fills the account map."""
        post_lamports = meta.get("postBalances")
        net: dict[tuple[str, str], int] = {}
        for sign, entries in ((-1, pre), (1, post)):
            for e in entries:
                idx = e["accountIndex"]
                if not isinstance(idx, int) or not 0 <= idx < len(keys):
                    raise Malformed(f"token balance accountIndex {idx!r} is not an index of accountKeys")
                account = keys[idx]
                if sign > 0 and post_lamports is not None and post_lamports[idx] == 0:
                    # a closed account is gone after the tx; agave lists it only in pre (a simulator that
                    # repeats its stale amount in post would otherwise resurrect the balance)
                    continue
                mint, owner = e["mint"], e.get("owner")
                if account not in state.accounts:
                    state.accounts[account] = [mint, owner]  # pre first: the owner at the tx's start
                if mint not in self._mints:
                    continue
                if not isinstance(owner, str) or not owner:
                    raise Malformed(f"token balance of account {account} has no owner", mint)
                amount = _raw_amount((e.get("uiTokenAmount") or {}).get("amount"),
                                     "uiTokenAmount.amount")
                if sign < 0:
                    state.amounts[account] = amount
                else:
                    state.amounts.setdefault(account, 0)
                key = (mint, owner)
                net[key] = net.get(key, 0) + sign * amount
        return net

    def _instruction(self, slot: int, state: _Tx, ix: Any, path: str) -> None:
        """One parsed instruction; a malformed one becomes a skip, never the end of the transaction."""
        if not isinstance(ix, Mapping):
            self._skip(slot, state, path, "?", Malformed("instruction is not an object"), ix)
            return
        program = ix.get("programId")
        if program not in TOKEN_PROGRAMS:
            return
        parsed = ix.get("parsed")
        if parsed is None:
            return  # agave could not parse it (e.g. confidential transfer proofs): reconcile accounts for it
        self._parsed(slot, state, program, parsed, path)

    def _parsed(self, slot: int, state: _Tx, program: str, parsed: Any, path: str) -> None:
        try:
            if not isinstance(parsed, Mapping):
                raise Malformed("parsed is not an object")
            kind, info = parsed.get("type"), parsed.get("info")
            if kind == "batch":
                items = info.get("instructions") if isinstance(info, Mapping) else None
                if not isinstance(items, list):
                    raise Malformed("batch has no instructions list")
                for k, item in enumerate(items):  # one instruction, several operations, no inner CPIs
                    self._parsed(slot, state, program, item, f"{path}.b{k}")
                return
            handler = self._handlers.get(kind)
            if handler is None:
                return
            if not isinstance(info, Mapping):
                raise Malformed(f"{kind}: info is not an object")
            handler(state, info, path, kind)
        except Malformed as exc:
            self._skip(slot, state, path, exc.address or self._named_mint(parsed) or program, exc, parsed)

    def _named_mint(self, parsed: Any) -> str | None:
        """The tracked mint a broken instruction names, if any (for the skip's address)."""
        info = parsed.get("info") if isinstance(parsed, Mapping) else None
        if not isinstance(info, Mapping):
            return None
        for key in ("mint", "metadata"):
            value = info.get(key)
            if isinstance(value, str) and (value in self._mints or value in self._metadata):
                return self._metadata.get(value, value)
        return None

    @staticmethod
    def _skip(slot: int, state: _Tx, path: str, address: str, exc: Malformed, raw: Any) -> None:
        log.warning("skipped Solana instruction %s: malformed (%s) at slot %d tx %s", path, exc.detail, slot,
                    state.sig, extra={"block_number": slot, "tx": state.sig})
        state.items.append(SkippedLog(state.sig, 0, address, "malformed",
                                      {"instruction": path, "detail": exc.detail, "parsed": _jsonable(raw)}))

    def _reconcile(self, slot: int, state: _Tx, net: dict[tuple[str, str], int]) -> None:
        """Make the instructions' movements add up to the ledger's net change per (mint, owner).

        Unexplained credits go before the instructions and debits after them: the running balances then
        never dip below the true ones, so the store's negative-balance guard cannot trip on our ordering.
        """
        derived: dict[tuple[str, str], int] = {}
        for item in state.items:
            if isinstance(item, Event) and item.moves_balance:
                if item.from_address is not None:
                    key = (item.token, item.from_address)
                    derived[key] = derived.get(key, 0) - item.amount
                if item.to_address is not None:
                    key = (item.token, item.to_address)
                    derived[key] = derived.get(key, 0) + item.amount
        credits: list[Event] = []
        debits: list[Event] = []
        for key in sorted(net.keys() | derived.keys()):
            rest = net.get(key, 0) - derived.get(key, 0)
            if rest == 0:
                continue
            mint, owner = key
            log.warning("unexplained balance change %+d of %s in mint %s at slot %d tx %s", rest, owner, mint,
                        slot, state.sig, extra={"block_number": slot, "tx": state.sig})
            ev = Event(mint, "balance_adjustment", state.sig, 0, None if rest > 0 else owner,
                       owner if rest > 0 else None, abs(rest), {"reason": "unexplained_delta"},
                       moves_balance=True, external=True)
            (credits if rest > 0 else debits).append(ev)
        if credits or debits:
            state.items = credits + state.items + debits

    # ---- instruction handlers: validate everything first, then append ----------------------------

    def _tracked(self, mint: str) -> bool:
        return mint in self._mints

    def _owner(self, state: _Tx, account: str, data: dict, side: str) -> str:
        """Owner of a token account; the account itself (flagged) when the transaction never says."""
        owner = state.owner_of(account)
        if owner is None:
            data.setdefault("unresolved", []).append(side)
            return account
        return owner

    def _transfer(self, state: _Tx, info, path: str, kind: str) -> None:
        src, dst = _text(info, "source"), _text(info, "destination")
        if kind == "transfer":
            mint = state.mint_of(src) or state.mint_of(dst)  # a plain transfer names no mint
            if mint is None or not self._tracked(mint):
                return
            amount = _raw_amount(info.get("amount"), "amount")
        else:
            mint = _text(info, "mint")
            if not self._tracked(mint):
                return
            amount = _ui_amount(info, "tokenAmount")
        fee = _ui_amount(info, "feeAmount") if kind == "transferCheckedWithFee" else 0
        if fee > amount:
            raise Malformed(f"feeAmount {fee} exceeds tokenAmount {amount}", mint)
        data: dict[str, Any] = {"instruction": path, "source": src, "destination": dst}
        frm = self._owner(state, src, data, "source")
        to = self._owner(state, dst, data, "destination")
        event_type = "transfer"
        authority = _authority(info, "authority", "multisigAuthority")
        if authority is not None and authority != frm and state.owner_of(src) is not None:
            data["authority"] = authority
            data["delegate"] = True
            if authority == self._mints[mint].get("permanent_delegate"):
                event_type = "seizure"
        if fee:
            data["fee"] = str(fee)
        state.items.append(Event(mint, event_type, state.sig, 0, frm, to, amount - fee, data, moves_balance=True))
        if fee:
            # Token-2022 withholds the fee inside the destination account, outside its public balance
            state.items.append(Event(mint, "transfer_fee", state.sig, 0, frm, None, fee,
                                     {"instruction": path, "source": src, "withheld_in": dst},
                                     moves_balance=True, external=True))
        state.move(src, -amount)
        state.move(dst, amount - fee)

    def _mint_to(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        account = _text(info, "account")
        amount = _raw_amount(info.get("amount"), "amount") if kind == "mintTo" else _ui_amount(info, "tokenAmount")
        data: dict[str, Any] = {"instruction": path, "account": account}
        authority = _authority(info, "mintAuthority", "multisigMintAuthority")
        if authority is not None:
            data["authority"] = authority
        to = self._owner(state, account, data, "account")
        state.items.append(Event(mint, "mint", state.sig, 0, None, to, amount, data, moves_balance=True))
        state.move(account, amount)

    def _burn(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        account = _text(info, "account")
        amount = _raw_amount(info.get("amount"), "amount") if kind == "burn" else _ui_amount(info, "tokenAmount")
        data: dict[str, Any] = {"instruction": path, "account": account}
        frm = self._owner(state, account, data, "account")
        authority = _authority(info, "authority", "multisigAuthority")
        if authority is not None and authority != frm and state.owner_of(account) is not None:
            data["authority"] = authority
            data["delegate"] = True
            if authority == self._mints[mint].get("permanent_delegate"):
                data["permanent_delegate"] = True
        state.items.append(Event(mint, "burn", state.sig, 0, frm, None, amount, data, moves_balance=True))
        state.move(account, -amount)

    def _freeze(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        account = _text(info, "account")
        frozen = kind == "freezeAccount"
        data: dict[str, Any] = {"instruction": path, "account": account}
        authority = _authority(info, "freezeAuthority", "multisigFreezeAuthority")
        if authority is not None:
            data["authority"] = authority
        # Solana freezes a token account; the cap table keeps the flag per owner
        holder = self._owner(state, account, data, "account")
        state.items.append(Event(mint, "account_frozen" if frozen else "account_thawed", state.sig, 0,
                                 to_address=holder, data=data, holder=holder, holder_update={"frozen": frozen}))

    def _set_authority(self, state: _Tx, info, path: str, kind: str) -> None:
        authority_type = _text(info, "authorityType")
        new = _optional_text(info, "newAuthority")
        if "mint" in info:
            mint = _text(info, "mint")
            if not self._tracked(mint):
                return
            update: dict[str, Any] = {f"meta:authority:{authority_type}": new}
            if authority_type == "permanentDelegate":
                update["meta:permanent_delegate"] = new
                self._mints[mint]["permanent_delegate"] = new
            state.items.append(Event(mint, "authority_changed", state.sig, 0,
                                     data={"instruction": path, "authorityType": authority_type,
                                           "newAuthority": new}, token_update=update))
            return
        if authority_type != "accountOwner":
            return  # closeAccount authority of a token account: no cap-table meaning
        account = _text(info, "account")
        entry = state.accounts.get(account)
        if entry is None or not self._tracked(entry[0]):
            return
        if new is None:
            raise Malformed("accountOwner cannot be revoked: newAuthority is null", entry[0])
        mint, old = entry
        amount = max(state.amounts.get(account, 0), 0)
        # the tokens change hands without a transfer: the whole account moves to its new owner
        state.items.append(Event(mint, "owner_changed", state.sig, 0, old, new, amount,
                                 {"instruction": path, "account": account}, moves_balance=True))
        entry[1] = new

    def _initialize_mint(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        decimals = info.get("decimals")
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 255:
            raise Malformed(f"decimals {decimals!r} is not a u8", mint)
        data = {"instruction": path, "mintAuthority": _optional_text(info, "mintAuthority"),
                "freezeAuthority": _optional_text(info, "freezeAuthority")}
        state.items.append(Event(mint, "mint_initialized", state.sig, 0, data=data,
                                 token_update={"decimals": decimals}))

    @staticmethod
    def _initialize_account(state: _Tx, info, path: str, kind: str) -> None:
        account, mint, owner = _text(info, "account"), _text(info, "mint"), _text(info, "owner")
        # created in this tx: the ledger balances may not list it (created and closed in the same tx)
        state.accounts.setdefault(account, [mint, owner])

    def _permanent_delegate(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        delegate = _text(info, "delegate")
        self._mints[mint]["permanent_delegate"] = delegate
        state.items.append(Event(mint, "permanent_delegate_initialized", state.sig, 0,
                                 data={"instruction": path, "delegate": delegate},
                                 token_update={"meta:permanent_delegate": delegate}))

    def _initialize_multiplier(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        text = _multiplier(info.get("multiplier"), "multiplier")
        data = {"instruction": path, "multiplier": text, "authority": _optional_text(info, "authority")}
        state.items.append(Event(mint, "multiplier_initialized", state.sig, 0, data=data,
                                 token_update={"multiplier": (text, None, None)}))

    def _update_multiplier(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        text = _multiplier(info.get("newMultiplier"), "newMultiplier")
        ts = info.get("newMultiplierTimestamp")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise Malformed(f"newMultiplierTimestamp {ts!r} is not an integer", mint)
        effective = max(ts, 0)  # the program stores max(timestamp, 0)
        data = {"instruction": path, "new_multiplier": text, "effective_at": effective,
                "authority": _authority(info, "authority", "multisigAuthority")}
        state.items.append(Event(mint, "multiplier_updated", state.sig, 0, data=data,
                                 token_update={"multiplier_schedule": (text, effective)}))

    def _pause(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        paused = kind == "pause"
        data = {"instruction": path, "authority": _authority(info, "authority", "multisigAuthority")}
        state.items.append(Event(mint, "paused" if paused else "unpaused", state.sig, 0, data=data,
                                 token_update={"paused": paused}))

    def _metadata_mint(self, info) -> str | None:
        return self._metadata.get(_text(info, "metadata"))

    def _initialize_metadata(self, state: _Tx, info, path: str, kind: str) -> None:
        metadata = _text(info, "metadata")
        mint = self._metadata.get(metadata)
        if mint is None:
            named = info.get("mint")
            if not isinstance(named, str) or not self._tracked(named):
                return
            mint = named
        name, symbol, uri = (info.get(k) for k in ("name", "symbol", "uri"))
        if not all(isinstance(v, str) for v in (name, symbol, uri)):
            raise Malformed("initializeTokenMetadata: name, symbol and uri must be strings", mint)
        if metadata != mint and self._metadata.get(metadata) != mint:
            # metadata kept outside the mint (signed by the mint authority): follow its updates too
            self.set_context(mint, "metadata_address", metadata)
        update = {"name": name, "symbol": symbol, "meta:uri": uri}
        if metadata != mint:
            update["meta:metadata_address"] = metadata  # persisted, so a restart follows it again
        state.items.append(Event(mint, "metadata_initialized", state.sig, 0,
                                 data={"instruction": path, "metadata": metadata}, token_update=update))

    def _update_metadata_field(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = self._metadata_mint(info)
        if mint is None:
            return
        field, value = info.get("field"), info.get("value")
        if not isinstance(field, str) or not field or not isinstance(value, str):
            raise Malformed("updateTokenMetadataField: field and value must be strings", mint)
        key = field if field in ("name", "symbol") else f"meta:{field}"
        state.items.append(Event(mint, "metadata_updated", state.sig, 0,
                                 data={"instruction": path, "field": field, "value": value},
                                 token_update={key: value}))

    def _remove_metadata_key(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = self._metadata_mint(info)
        if mint is None:
            return
        key = info.get("key")
        if not isinstance(key, str) or not key:
            raise Malformed("removeTokenMetadataKey: key must be a string", mint)
        state.items.append(Event(mint, "metadata_key_removed", state.sig, 0, data={"instruction": path, "key": key},
                                 token_update={f"meta:{key}": None}))

    def _update_metadata_authority(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = self._metadata_mint(info)
        if mint is None:
            return
        new = _optional_text(info, "newAuthority")
        state.items.append(Event(mint, "authority_changed", state.sig, 0,
                                 data={"instruction": path, "authorityType": "metadataUpdate", "newAuthority": new},
                                 token_update={"meta:authority:metadataUpdate": new}))

    def _default_account_state(self, state: _Tx, info, path: str, kind: str) -> None:
        mint = _text(info, "mint")
        if not self._tracked(mint):
            return
        account_state = _text(info, "accountState")
        event_type = "default_account_state_" + ("initialized" if kind.startswith("initialize") else "updated")
        state.items.append(Event(mint, event_type, state.sig, 0,
                                 data={"instruction": path, "accountState": account_state},
                                 token_update={"meta:default_account_state": account_state}))


def _signature(tx: Any) -> str:
    """The first signature, if the transaction has one that can be read (for naming a skip)."""
    try:
        sig = tx["transaction"]["signatures"][0]
    except _BAD_SHAPE:
        return ""
    return sig if isinstance(sig, str) else ""


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Keep a skipped instruction's raw JSON for audit, bounded so one bad input cannot bloat the row."""
    if depth > 6:
        return "..."
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value[:50]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:500]
