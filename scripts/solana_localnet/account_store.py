"""Per-slot account versions, so reads at `confirmed`/`finalized` see that bank's state.

LiteSVM keeps only the latest state. Every account a transaction can change is in its
key list, so after each block we snapshot those keys; a read at slot S returns the newest
version with slot <= S. Keys never touched by a transaction are read live (genesis state).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey


@dataclass(frozen=True)
class AccountSnapshot:
    lamports: int
    data: bytes
    owner: Pubkey
    executable: bool
    rent_epoch: int


def snapshot(svm: LiteSVM, pubkey: Pubkey) -> AccountSnapshot | None:
    account = svm.get_account(pubkey)
    if account is None or account.lamports == 0:
        return None
    return AccountSnapshot(account.lamports, bytes(account.data), account.owner, account.executable,
                           account.rent_epoch)


class AccountStore:
    BEFORE_ANY_BLOCK = -1

    def __init__(self) -> None:
        self._slots: dict[Pubkey, list[int]] = {}
        self._states: dict[Pubkey, list[AccountSnapshot | None]] = {}

    def note_initial(self, pubkey: Pubkey, state: AccountSnapshot | None) -> None:
        """Record the state before the first transaction that touches `pubkey`."""
        if pubkey not in self._slots:
            self._slots[pubkey] = [self.BEFORE_ANY_BLOCK]
            self._states[pubkey] = [state]

    def record(self, pubkey: Pubkey, slot: int, state: AccountSnapshot | None) -> None:
        slots, states = self._slots[pubkey], self._states[pubkey]
        if slots[-1] == slot:
            states[-1] = state
        else:
            slots.append(slot)
            states.append(state)

    def is_tracked(self, pubkey: Pubkey) -> bool:
        return pubkey in self._slots

    def at(self, pubkey: Pubkey, slot: int) -> AccountSnapshot | None:
        slots = self._slots[pubkey]
        pos = bisect.bisect_right(slots, slot) - 1
        return self._states[pubkey][pos] if pos >= 0 else None

    def tracked(self) -> list[Pubkey]:
        return list(self._slots)
