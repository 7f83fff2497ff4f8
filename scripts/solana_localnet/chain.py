"""Slot/block/commitment model on top of LiteSVM.

Policy (simulated, there is no consensus here):
- every produced slot is a block; `skip_slots(n)` burns n slots without blocks;
- processed = newest block, confirmed = `confirm_lag` blocks behind it, finalized (root) =
  `finalize_lag` blocks behind it; the root never moves backwards;
- blockTime = anchor time + (slot - anchor slot) * slot_ms, in whole seconds (agave blockTime
  is the bank clock's unix_timestamp, seconds); the LiteSVM Clock is set to the same values
  before each block, so on-chain time (e.g. scheduled multipliers) matches blockTime;
- rollback drops the newest k unrooted blocks. LiteSVM has no snapshots, so the node is
  rebuilt: a fresh LiteSVM replays every kept transaction at its recorded slot and time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from solders.account import Account
from solders.clock import Clock
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction

from .account_store import AccountSnapshot, AccountStore, snapshot
from .ledger import Block, TxRecord
from .programs import SYSTEM_PROGRAM
from .recorder import TransactionRejected, execute, resolve_keys

SLOTS_PER_EPOCH = 432_000
SLOT_HASHES_MAX = 512  # solana SlotHashes sysvar capacity
MAX_RECENT_BLOCKHASHES = 150  # agave MAX_PROCESSING_AGE: lastValidBlockHeight = height + 150
DEFAULT_HASH = "11111111111111111111111111111111"
FAUCET_LAMPORTS = 500_000_000 * 10**9

Listener = Callable[[str, object], None]


@dataclass
class ChainConfig:
    genesis_slot: int = 0
    genesis_unix_time: int | None = None  # default: wall clock at start
    slot_ms: int = 400
    confirm_lag: int = 1
    finalize_lag: int = 2
    seed: str = "solana-localnet"


@dataclass
class ProducedBlock:
    block: Block
    rejected: list[TransactionRejected]


class Chain:
    def __init__(self, config: ChainConfig | None = None):
        self.config = config or ChainConfig()
        if self.config.confirm_lag < 0 or self.config.finalize_lag < self.config.confirm_lag:
            raise ValueError("commitment lags: need 0 <= confirm_lag <= finalize_lag")
        self.lock = threading.RLock()
        self._listeners: list[Listener] = []
        seed = self.config.seed.encode()
        self.faucet = Keypair.from_seed(hashlib.sha256(seed + b":faucet").digest())
        self.genesis_hash = str(Hash(hashlib.sha256(seed + b":genesis").digest()))
        genesis_time = self.config.genesis_unix_time
        if genesis_time is None:
            genesis_time = int(time.time())
        self._time_anchor = (self.config.genesis_slot, genesis_time)
        self._fork_nonce = 0
        self._pending: list[VersionedTransaction] = []
        genesis = Block(
            slot=self.config.genesis_slot,
            parent_slot=self.config.genesis_slot,
            block_height=0,
            block_time=genesis_time,
            blockhash=self._hash(self.genesis_hash, self.config.genesis_slot, []),
            previous_blockhash=DEFAULT_HASH,
        )
        self._blocks: list[Block] = [genesis]
        self._root = genesis.slot
        self._notified = {"confirmed": genesis.slot, "finalized": genesis.slot}
        self.current_slot = genesis.slot
        self._rebuild_state()

    # ---- listeners -------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, kind: str, payload: object) -> None:
        for listener in list(self._listeners):
            listener(kind, payload)

    # ---- state -----------------------------------------------------------------------

    def _fresh_svm(self) -> LiteSVM:
        svm = LiteSVM().with_blockhash_check(False)  # our blockhashes are synthetic
        svm.set_account(self.faucet.pubkey(), Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM))
        return svm

    def _rebuild_state(self) -> None:
        """(Re)create LiteSVM and indexes by replaying every canonical block."""
        self.svm = self._fresh_svm()
        self.accounts = AccountStore()
        self._by_slot: dict[int, Block] = {}
        self._by_signature: dict[str, TxRecord] = {}
        for position, block in enumerate(self._blocks):
            self._by_slot[block.slot] = block
            if not block.transactions:
                continue
            self._set_clock(block.slot, block.block_time, self._blocks[:position])
            for recorded in block.transactions:
                replayed = self._execute(recorded.tx, block.slot)
                if replayed.err != recorded.err:
                    raise RuntimeError(f"replay diverged for {recorded.signature}: "
                                       f"{replayed.err} != {recorded.err}")
                self._by_signature[recorded.signature] = recorded

    def _set_clock(self, slot: int, unix_time: int, ancestors: list[Block]) -> None:
        """Point the Clock and SlotHashes sysvars at the block about to execute."""
        epoch = slot // SLOTS_PER_EPOCH
        self.svm.warp_to_slot(slot)
        self.svm.set_clock(Clock(slot=slot, epoch_start_timestamp=self._time_anchor[1], epoch=epoch,
                                 leader_schedule_epoch=epoch + 1, unix_timestamp=unix_time))
        # SlotHashes (newest first, at most 512) lets lookup tables be created from recent slots.
        recent = ancestors[-SLOT_HASHES_MAX:][::-1]
        self.svm.set_slot_hashes([(b.slot, Hash.from_string(b.blockhash)) for b in recent])

    def _execute(self, tx: VersionedTransaction, slot: int) -> TxRecord:
        keys = resolve_keys(self.svm, tx)
        all_keys = keys.static + keys.writable + keys.readonly
        for key in all_keys:
            if not self.accounts.is_tracked(key):
                self.accounts.note_initial(key, snapshot(self.svm, key))
        record = execute(self.svm, tx)
        for key in all_keys:
            self.accounts.record(key, slot, snapshot(self.svm, key))
        return record

    @staticmethod
    def _hash(previous: str, slot: int, signatures: Sequence[str], nonce: int = 0) -> str:
        digest = hashlib.sha256(f"{previous}:{slot}:{nonce}:{','.join(signatures)}".encode()).digest()
        return str(Hash(digest))

    def _time_for(self, slot: int) -> int:
        anchor_slot, anchor_time = self._time_anchor
        computed = anchor_time + ((slot - anchor_slot) * self.config.slot_ms) // 1000
        return max(computed, self._blocks[-1].block_time)

    # ---- commitment ------------------------------------------------------------------

    @property
    def blocks(self) -> list[Block]:
        return list(self._blocks)

    @property
    def tip(self) -> Block:
        return self._blocks[-1]

    @property
    def root(self) -> int:
        return self._root

    def _lagged_slot(self, lag: int) -> int:
        return self._blocks[max(0, len(self._blocks) - 1 - lag)].slot

    def slot_for(self, commitment: str) -> int:
        """Highest slot at a commitment level: processed / confirmed / finalized."""
        with self.lock:
            if commitment == "processed":
                return self.tip.slot
            if commitment == "confirmed":
                return max(self._lagged_slot(self.config.confirm_lag), self._root)
            if commitment == "finalized":
                return self._root
            raise ValueError(f"unknown commitment {commitment!r}")

    def block_at_commitment(self, commitment: str) -> Block:
        with self.lock:
            return self._by_slot[self.slot_for(commitment)]

    def set_commitment_lags(self, confirm_lag: int, finalize_lag: int) -> None:
        if confirm_lag < 0 or finalize_lag < confirm_lag:
            raise ValueError("commitment lags: need 0 <= confirmLag <= finalizeLag")
        with self.lock:
            self.config.confirm_lag, self.config.finalize_lag = confirm_lag, finalize_lag
            self._advance_commitments()

    def _advance_commitments(self) -> None:
        old_root = self._root
        self._root = max(self._root, self._lagged_slot(self.config.finalize_lag))
        for block in self._blocks:
            if old_root < block.slot <= self._root:
                self._emit("root", block.slot)
        for level in ("confirmed", "finalized"):
            target = self.slot_for(level)
            for block in self._blocks:
                if self._notified[level] < block.slot <= target:
                    self._emit("commitment", (level, block))
            self._notified[level] = target

    # ---- producing blocks ------------------------------------------------------------

    def submit(self, tx: VersionedTransaction | Transaction) -> str:
        """Queue a transaction for the next block (like sendTransaction)."""
        vtx = tx if isinstance(tx, VersionedTransaction) else VersionedTransaction.from_legacy(tx)
        with self.lock:
            self._pending.append(vtx)
        return str(vtx.signatures[0])

    def produce_block(self, txs: Iterable[VersionedTransaction | Transaction] = ()) -> ProducedBlock:
        """Produce one block at the next slot with pending + given transactions."""
        with self.lock:
            batch = self._pending + [t if isinstance(t, VersionedTransaction) else
                                     VersionedTransaction.from_legacy(t) for t in txs]
            self._pending = []
            parent = self.tip
            slot = self.current_slot + 1
            block_time = self._time_for(slot)
            self._set_clock(slot, block_time, self._blocks)
            records: list[TxRecord] = []
            rejected: list[TransactionRejected] = []
            for tx in batch:
                signature = str(tx.signatures[0])
                if signature in self._by_signature or any(r.signature == signature for r in records):
                    rejected.append(TransactionRejected(signature, "AlreadyProcessed", []))
                    continue
                try:
                    record = self._execute(tx, slot)
                except TransactionRejected as exc:
                    rejected.append(exc)
                    continue
                record.slot, record.index = slot, len(records)
                records.append(record)
            block = Block(
                slot=slot,
                parent_slot=parent.slot,
                block_height=parent.block_height + 1,
                block_time=block_time,
                blockhash=self._hash(parent.blockhash, slot, [r.signature for r in records], self._fork_nonce),
                previous_blockhash=parent.blockhash,
                transactions=records,
            )
            self.current_slot = slot
            self._blocks.append(block)
            self._by_slot[slot] = block
            for record in records:
                self._by_signature[record.signature] = record
            self._emit("slot", {"parent": parent.slot, "root": self._root, "slot": slot})
            self._emit("commitment", ("processed", block))
            self._advance_commitments()
            return ProducedBlock(block, rejected)

    def skip_slots(self, count: int) -> int:
        """Leaders of the next `count` slots produce nothing (skipped slots)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self.lock:
            self.current_slot += count
            return self.current_slot

    def set_time(self, unix_time: int) -> None:
        """The next block gets blockTime `unix_time`; later blocks advance from there."""
        with self.lock:
            if unix_time < self.tip.block_time:
                raise ValueError(f"unixTimestamp {unix_time} is before the tip blockTime {self.tip.block_time}")
            self._time_anchor = (self.current_slot + 1, unix_time)

    def rollback(self, count: int, *, reuse_slots: bool = False, reinclude: bool = False) -> dict:
        """Abandon the newest `count` unrooted blocks (a fork switch).

        reuse_slots: the replacement fork restarts right after the fork point, so the same
        slot numbers get different blocks; otherwise new blocks continue after the dropped
        ones (the dropped slots then look skipped). reinclude: the dropped transactions are
        queued again and land in the next block (a transaction moving to another slot).
        """
        with self.lock:
            unrooted = [b for b in self._blocks if b.slot > self._root]
            if count < 1 or count > len(unrooted):
                raise ValueError(f"count must be between 1 and {len(unrooted)} (unrooted blocks)")
            dropped = self._blocks[-count:]
            self._blocks = self._blocks[:-count]
            self._fork_nonce += 1
            self._rebuild_state()
            if reuse_slots:
                self.current_slot = self.tip.slot
            if reinclude:
                self._pending = [r.tx for b in dropped for r in b.transactions] + self._pending
            self._notified["confirmed"] = min(self._notified["confirmed"], self.slot_for("confirmed"))
            return {"droppedSlots": [b.slot for b in dropped], "tip": self.tip.slot}

    # ---- helpers for callers ---------------------------------------------------------

    def latest_blockhash(self) -> Hash:
        return Hash.from_string(self.tip.blockhash)

    def is_recent_blockhash(self, blockhash: str) -> bool:
        with self.lock:
            return any(b.blockhash == blockhash for b in self._blocks[-(MAX_RECENT_BLOCKHASHES + 1):])

    def airdrop_tx(self, to: Pubkey, lamports: int) -> Transaction:
        ix = transfer(TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=to, lamports=lamports))
        return Transaction([self.faucet], Message([ix], self.faucet.pubkey()), self.latest_blockhash())

    def get_block(self, slot: int) -> Block | None:
        with self.lock:
            return self._by_slot.get(slot)

    def find_transaction(self, signature: str) -> TxRecord | None:
        with self.lock:
            return self._by_signature.get(signature)

    def account_at(self, pubkey: Pubkey, slot: int) -> AccountSnapshot | None:
        with self.lock:
            if self.accounts.is_tracked(pubkey):
                return self.accounts.at(pubkey, slot)
            return snapshot(self.svm, pubkey)

    def accounts_owned_by(self, program: Pubkey, slot: int) -> list[tuple[Pubkey, AccountSnapshot]]:
        """Accounts owned by `program` as of `slot` (tracked accounts plus live genesis ones)."""
        with self.lock:
            out = []
            seen = set()
            for pubkey in self.accounts.tracked():
                seen.add(pubkey)
                state = self.accounts.at(pubkey, slot)
                if state is not None and state.owner == program:
                    out.append((pubkey, state))
            for pubkey, account in self.svm.get_program_accounts(program):
                if pubkey not in seen and account.lamports:
                    out.append((pubkey, AccountSnapshot(account.lamports, bytes(account.data), account.owner,
                                                        account.executable, account.rent_epoch)))
            return out

    def unix_time_at(self, slot: int) -> int:
        """Clock unix_timestamp of the bank at `slot` (its block's blockTime)."""
        with self.lock:
            block = self._by_slot.get(slot)
            return block.block_time if block else self.tip.block_time
