"""Solana JSON-RPC methods over the Chain, following agave `rpc/src/rpc.rs` semantics:
default commitment finalized, `processed` rejected by the ledger-history methods, null
config fields treated as absent, agave error codes/messages, `{context, value}` wrappers.
"""

from __future__ import annotations

import base64
import binascii

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from . import rpc_errors as E
from .account_encode import EncodingError, encode_account, token_amount_for_mint
from .base58 import b58decode
from .chain import MAX_RECENT_BLOCKHASHES, Chain
from .encode import (
    ENCODINGS,
    TRANSACTION_DETAILS,
    UnsupportedTransactionVersion,
    encode_block,
    encode_confirmed_transaction,
)
from .ledger import TxRecord
from .programs import MEMO_PROGRAM, MEMO_V1_PROGRAM, TOKEN_PROGRAMS
from .token_state import decode_mint, decode_token_account

# The agave release whose response shapes this node mirrors (cf. the recorded AAPLx
# getAccountInfo: apiVersion 4.3.0-rc.0). Reported by getVersion and response contexts.
API_VERSION = "4.3.0"
FEATURE_SET = 3294202862
MAX_BLOCKS_RANGE = 500_000  # MAX_GET_CONFIRMED_BLOCKS_RANGE
MAX_SIGNATURES_LIMIT = 1000  # MAX_GET_CONFIRMED_SIGNATURES_FOR_ADDRESS2_LIMIT
MAX_MULTIPLE_ACCOUNTS = 100
NUM_LARGEST_ACCOUNTS = 20
_LEGACY_COMMITMENTS = {"recent": "processed", "single": "confirmed", "singleGossip": "confirmed",
                       "root": "finalized", "max": "finalized"}


def _arg(params: list, index: int, default=None):
    if index < len(params) and params[index] is not None:
        return params[index]
    return default


def _config(params: list, index: int) -> dict:
    value = _arg(params, index, {})
    if not isinstance(value, dict):
        raise E.invalid_params(f"Invalid params: expected a config object at position {index}")
    return {k: v for k, v in value.items() if v is not None}  # null means absent


def _commitment(config: dict, default: str = "finalized") -> str:
    value = config.get("commitment", default)
    value = _LEGACY_COMMITMENTS.get(value, value)
    if value not in ("processed", "confirmed", "finalized"):
        raise E.invalid_params(f"Invalid params: unknown variant `{value}`, expected one of "
                               "`processed`, `confirmed`, `finalized`")
    return value


def _at_least_confirmed(commitment: str) -> None:
    if commitment == "processed":
        raise E.commitment_below_confirmed()


def _pubkey(value: object) -> Pubkey:
    if not isinstance(value, str):
        raise E.invalid_params("Invalid params: expected a base58 pubkey string")
    try:
        return Pubkey.from_string(value)
    except ValueError:
        raise E.invalid_params("Invalid param: Invalid") from None


def _signature(value: object) -> str:
    try:
        return str(Signature.from_string(value))
    except (ValueError, TypeError):
        raise E.invalid_params("Invalid param: Invalid") from None


def _slot(value: object, name: str = "slot") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise E.invalid_params(f"Invalid params: {name} must be an unsigned integer")
    return value


def _encoding_config(params: list, index: int) -> dict:
    """RpcEncodingConfigWrapper: a bare encoding string (deprecated) or a config object."""
    value = _arg(params, index)
    if isinstance(value, str):
        return {"encoding": value}
    return _config(params, index)


def _memo(record: TxRecord) -> str | None:
    """agave `extract_and_fmt_memos`: `[len] memo` per memo instruction, joined by `; `."""
    keys = record.account_keys
    memos = []
    for ix in record.tx.message.instructions:
        if keys[ix.program_id_index] in (MEMO_PROGRAM, MEMO_V1_PROGRAM):
            try:
                text = bytes(ix.data).decode("utf-8")
            except UnicodeDecodeError:
                text = "(unparseable)"
            memos.append(f"[{len(text)}] {text}")
    return "; ".join(memos) if memos else None


class RpcMethods:
    def __init__(self, chain: Chain):
        self.chain = chain
        self.fail_block_not_available = 0  # localnet fault injection: next N getBlock calls

    def dispatch(self, method: str, params: object) -> object:
        if params is None:
            params = []
        if not isinstance(params, list):
            raise E.invalid_params("Invalid params: expected an array of positional parameters")
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            raise E.method_not_found()
        with self.chain.lock:
            return handler(params)

    # ---- context helpers -------------------------------------------------------------

    def _context_slot(self, config: dict, default: str = "finalized") -> int:
        slot = self.chain.slot_for(_commitment(config, default))
        min_context = config.get("minContextSlot")
        if min_context is not None and slot < min_context:
            raise E.min_context_slot_not_reached(slot)
        return slot

    @staticmethod
    def _wrap(slot: int, value: object) -> dict:
        return {"context": {"apiVersion": API_VERSION, "slot": slot}, "value": value}

    def _mint_lookup(self, slot: int):
        def lookup(mint: Pubkey):
            state = self.chain.account_at(mint, slot)
            if state is None or state.owner not in TOKEN_PROGRAMS:
                return None
            return decode_mint(state.data)
        return lookup

    # ---- cluster -----------------------------------------------------------------------

    def rpc_getHealth(self, params: list) -> str:
        return "ok"

    def rpc_getVersion(self, params: list) -> dict:
        return {"solana-core": API_VERSION, "feature-set": FEATURE_SET}

    def rpc_getGenesisHash(self, params: list) -> str:
        return self.chain.genesis_hash

    def rpc_getFirstAvailableBlock(self, params: list) -> int:
        return self.chain.blocks[0].slot

    def rpc_getIdentity(self, params: list) -> dict:
        return {"identity": str(self.chain.faucet.pubkey())}

    def rpc_getSlot(self, params: list) -> int:
        return self._context_slot(_config(params, 0))

    def rpc_getBlockHeight(self, params: list) -> int:
        slot = self._context_slot(_config(params, 0))
        return self.chain.get_block(slot).block_height

    def rpc_getLatestBlockhash(self, params: list) -> dict:
        slot = self._context_slot(_config(params, 0))
        block = self.chain.get_block(slot)
        return self._wrap(slot, {"blockhash": block.blockhash,
                                 "lastValidBlockHeight": block.block_height + MAX_RECENT_BLOCKHASHES})

    # ---- blocks --------------------------------------------------------------------------

    def rpc_getBlock(self, params: list) -> dict:
        slot = _slot(_arg(params, 0))
        config = _encoding_config(params, 1)
        encoding = config.get("encoding", "json")
        details = config.get("transactionDetails", "full")
        if encoding not in ENCODINGS:
            raise E.invalid_params(f"Invalid params: unknown variant `{encoding}`")
        if details not in TRANSACTION_DETAILS:
            raise E.invalid_params(f"Invalid params: unknown variant `{details}`")
        show_rewards = bool(config.get("rewards", True))
        max_version = config.get("maxSupportedTransactionVersion")
        commitment = _commitment(config)
        _at_least_confirmed(commitment)
        if self.fail_block_not_available > 0:
            self.fail_block_not_available -= 1
            raise E.block_not_available(slot)
        chain = self.chain
        first = chain.blocks[0].slot
        block = chain.get_block(slot)
        if slot <= chain.root:
            if slot < first:
                raise E.block_cleaned_up(slot, first)
            if block is None:
                raise E.slot_skipped(slot)  # below the root and no block: skipped
        elif commitment != "confirmed" or block is None or slot > chain.slot_for("confirmed"):
            raise E.block_not_available(slot)
        try:
            return encode_block(block, encoding, details, max_version, show_rewards)
        except UnsupportedTransactionVersion as exc:
            raise E.unsupported_transaction_version(exc.version) from None

    def _canonical_slots(self, commitment: str) -> list[int]:
        top = self.chain.slot_for(commitment)
        return [b.slot for b in self.chain.blocks if b.slot <= top]

    def rpc_getBlocks(self, params: list) -> list[int]:
        start = _slot(_arg(params, 0), "start_slot")
        second = _arg(params, 1)
        if isinstance(second, dict):  # RpcBlocksConfigWrapper::ConfigOnly
            end, config = None, _config(params, 1)
        else:
            end = _slot(second, "end_slot") if second is not None else None
            config = _config(params, 2)
        commitment = _commitment(config)
        _at_least_confirmed(commitment)
        top = self._context_slot(config)
        end = min(end if end is not None else start + MAX_BLOCKS_RANGE, top)
        if end < start:
            return []
        if end - start > MAX_BLOCKS_RANGE:
            raise E.invalid_params(f"Slot range too large; max {MAX_BLOCKS_RANGE}")
        return [s for s in self._canonical_slots(commitment) if start <= s <= end]

    def rpc_getBlocksWithLimit(self, params: list) -> list[int]:
        start = _slot(_arg(params, 0), "start_slot")
        limit = _slot(_arg(params, 1), "limit")
        config = _config(params, 2)
        commitment = _commitment(config)
        _at_least_confirmed(commitment)
        if limit > MAX_BLOCKS_RANGE:
            raise E.invalid_params(f"Limit too large; max {MAX_BLOCKS_RANGE}")
        self._context_slot(config)
        return [s for s in self._canonical_slots(commitment) if s >= start][:limit]

    def rpc_getBlockTime(self, params: list) -> int:
        slot = _slot(_arg(params, 0))
        chain = self.chain
        block = chain.get_block(slot)
        if block is not None and slot <= chain.slot_for("processed"):
            return block.block_time
        if slot < chain.root:
            raise E.slot_skipped(slot)
        raise E.block_not_available(slot)

    # ---- transactions ------------------------------------------------------------------

    def _visible(self, record: TxRecord, commitment: str) -> bool:
        return record.slot <= self.chain.slot_for(commitment)

    def rpc_getTransaction(self, params: list) -> dict | None:
        signature = _signature(_arg(params, 0))
        config = _encoding_config(params, 1)
        encoding = config.get("encoding", "json")
        if encoding not in ENCODINGS:
            raise E.invalid_params(f"Invalid params: unknown variant `{encoding}`")
        commitment = _commitment(config)
        _at_least_confirmed(commitment)
        record = self.chain.find_transaction(signature)
        if record is None or not self._visible(record, commitment):
            return None
        block = self.chain.get_block(record.slot)
        try:
            return encode_confirmed_transaction(record, block.block_time, encoding,
                                                config.get("maxSupportedTransactionVersion"))
        except UnsupportedTransactionVersion as exc:
            raise E.unsupported_transaction_version(exc.version) from None

    def rpc_getSignaturesForAddress(self, params: list) -> list[dict]:
        address = _pubkey(_arg(params, 0))
        config = _config(params, 1)
        limit = config.get("limit", MAX_SIGNATURES_LIMIT)
        if not isinstance(limit, int) or limit < 1 or limit > MAX_SIGNATURES_LIMIT:
            raise E.invalid_params(f"Invalid limit; max {MAX_SIGNATURES_LIMIT}")
        before = _signature(config["before"]) if "before" in config else None
        until = _signature(config["until"]) if "until" in config else None
        commitment = _commitment(config)
        _at_least_confirmed(commitment)
        highest = self._context_slot(config)
        root = self.chain.root
        # Newest first; within a slot, reverse block order. Only account keys are indexed
        # (static + lookup-table keys), as agave's TransactionStatusService does.
        out: list[dict] = []
        started = before is None
        for block in reversed(self.chain.blocks):
            if block.slot > highest:
                continue
            for record in reversed(block.transactions):
                if not started:
                    started = record.signature == before
                    continue
                if record.signature == until:
                    return out
                if address not in record.account_keys:
                    continue
                out.append({
                    "signature": record.signature,
                    "slot": record.slot,
                    "err": record.err,
                    "memo": _memo(record),
                    "blockTime": block.block_time,
                    "confirmationStatus": "finalized" if record.slot <= root else "confirmed",
                })
                if len(out) >= limit:
                    return out
        return out

    def rpc_getSignatureStatuses(self, params: list) -> dict:
        signatures = _arg(params, 0, [])
        if not isinstance(signatures, list) or len(signatures) > 256:
            raise E.invalid_params("Invalid params: expected at most 256 signatures")
        chain = self.chain
        processed = chain.slot_for("processed")
        statuses = []
        for sig in signatures:
            record = chain.find_transaction(_signature(sig))
            if record is None:
                statuses.append(None)
                continue
            finalized = record.slot <= chain.root
            confirmed = record.slot <= chain.slot_for("confirmed")
            depth = chain.tip.block_height - chain.get_block(record.slot).block_height
            statuses.append({
                "slot": record.slot,
                "confirmations": None if finalized else depth,
                "status": {"Ok": None} if record.err is None else {"Err": record.err},
                "err": record.err,
                "confirmationStatus": "finalized" if finalized else "confirmed" if confirmed else "processed",
            })
        return self._wrap(processed, statuses)

    def rpc_sendTransaction(self, params: list) -> str:
        wire = _arg(params, 0)
        config = _config(params, 1)
        encoding = config.get("encoding", "base58")
        try:
            raw = base64.b64decode(wire, validate=True) if encoding == "base64" else b58decode(wire)
            tx = VersionedTransaction.from_bytes(raw)
        except (ValueError, TypeError, binascii.Error):
            raise E.invalid_params("Invalid params: failed to deserialize transaction") from None
        if not self.chain.is_recent_blockhash(str(tx.message.recent_blockhash)):
            raise E.blockhash_not_found()
        return self.chain.submit(tx)

    def rpc_requestAirdrop(self, params: list) -> str:
        pubkey = _pubkey(_arg(params, 0))
        lamports = _slot(_arg(params, 1), "lamports")
        return self.chain.submit(self.chain.airdrop_tx(pubkey, lamports))

    # ---- accounts ------------------------------------------------------------------------

    def _encode(self, pubkey: Pubkey, slot: int, config: dict) -> dict | None:
        state = self.chain.account_at(pubkey, slot)
        if state is None:
            return None
        encoding = config.get("encoding", "binary")
        if encoding == "jsonParsed" and "dataSlice" in config:
            raise E.invalid_params("Sliced account data can only be encoded using binary (base 58) or "
                                   "base64 encoding.")
        try:
            return encode_account(state, encoding, self._mint_lookup(slot), self.chain.unix_time_at(slot),
                                  config.get("dataSlice"))
        except EncodingError as exc:
            raise E.RpcError(E.INVALID_REQUEST, str(exc)) from None

    def rpc_getAccountInfo(self, params: list) -> dict:
        pubkey = _pubkey(_arg(params, 0))
        config = _config(params, 1)
        slot = self._context_slot(config)
        return self._wrap(slot, self._encode(pubkey, slot, config))

    def rpc_getMultipleAccounts(self, params: list) -> dict:
        keys = _arg(params, 0, [])
        if not isinstance(keys, list) or len(keys) > MAX_MULTIPLE_ACCOUNTS:
            raise E.invalid_params(f"Too many inputs provided; max {MAX_MULTIPLE_ACCOUNTS}")
        pubkeys = [_pubkey(k) for k in keys]
        config = _config(params, 1)
        slot = self._context_slot(config)
        return self._wrap(slot, [self._encode(pk, slot, config) for pk in pubkeys])

    def rpc_getBalance(self, params: list) -> dict:
        pubkey = _pubkey(_arg(params, 0))
        slot = self._context_slot(_config(params, 1))
        state = self.chain.account_at(pubkey, slot)
        return self._wrap(slot, state.lamports if state else 0)

    def rpc_getTokenAccountBalance(self, params: list) -> dict:
        pubkey = _pubkey(_arg(params, 0))
        slot = self._context_slot(_config(params, 1))
        state = self.chain.account_at(pubkey, slot)
        if state is None:
            raise E.invalid_params("Invalid param: could not find account")
        account = decode_token_account(state.data) if state.owner in TOKEN_PROGRAMS else None
        if account is None:
            raise E.invalid_params("Invalid param: not a Token account")
        mint = self._mint_lookup(slot)(account.mint)
        if mint is None:
            raise E.invalid_params("Invalid param: could not find mint")
        return self._wrap(slot, token_amount_for_mint(account.amount, mint, self.chain.unix_time_at(slot)))

    def rpc_getTokenAccountsByOwner(self, params: list) -> dict:
        owner = _pubkey(_arg(params, 0))
        token_filter = _arg(params, 1)
        if not isinstance(token_filter, dict) or len(token_filter) != 1:
            raise E.invalid_params("Invalid params: expected {\"mint\": ...} or {\"programId\": ...}")
        config = _config(params, 2)
        slot = self._context_slot(config)
        lookup = self._mint_lookup(slot)
        if "mint" in token_filter:
            mint = _pubkey(token_filter["mint"])
            mint_state = self.chain.account_at(mint, slot)
            if mint_state is None or mint_state.owner not in TOKEN_PROGRAMS or lookup(mint) is None:
                raise E.invalid_params("Invalid param: not a Token mint")
            program, wanted_mint = mint_state.owner, mint
        elif "programId" in token_filter:
            program, wanted_mint = _pubkey(token_filter["programId"]), None
            if program not in TOKEN_PROGRAMS:
                raise E.invalid_params("Invalid param: unrecognized Token program id")
        else:
            raise E.invalid_params("Invalid params: expected {\"mint\": ...} or {\"programId\": ...}")
        found = []
        for pubkey, state in self.chain.accounts_owned_by(program, slot):
            account = decode_token_account(state.data)
            if account is None or account.owner != owner:
                continue
            if wanted_mint is not None and account.mint != wanted_mint:
                continue
            found.append({"pubkey": str(pubkey), "account": self._encode(pubkey, slot, config)})
        found.sort(key=lambda item: item["pubkey"])
        return self._wrap(slot, found)

    def rpc_getTokenLargestAccounts(self, params: list) -> dict:
        mint = _pubkey(_arg(params, 0))
        slot = self._context_slot(_config(params, 1))
        mint_account = self.chain.account_at(mint, slot)
        mint_state = self._mint_lookup(slot)(mint)
        if mint_account is None or mint_state is None:
            raise E.invalid_params("Invalid param: not a Token mint")
        unix_time = self.chain.unix_time_at(slot)
        holders = []
        for pubkey, state in self.chain.accounts_owned_by(mint_account.owner, slot):
            account = decode_token_account(state.data)
            if account is not None and account.mint == mint:
                holders.append((account.amount, str(pubkey)))
        holders.sort(key=lambda h: (-h[0], h[1]))
        value = []
        for amount, address in holders[:NUM_LARGEST_ACCOUNTS]:
            entry = {"address": address}
            entry.update(token_amount_for_mint(amount, mint_state, unix_time))
            value.append(entry)
        return self._wrap(slot, value)

    def rpc_getTokenSupply(self, params: list) -> dict:
        mint = _pubkey(_arg(params, 0))
        slot = self._context_slot(_config(params, 1))
        mint_state = self._mint_lookup(slot)(mint)
        if mint_state is None:
            raise E.invalid_params("Invalid param: not a Token mint")
        return self._wrap(slot, token_amount_for_mint(mint_state.supply, mint_state, self.chain.unix_time_at(slot)))
