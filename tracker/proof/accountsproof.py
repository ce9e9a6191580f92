"""The accounts level: an archive's lattice hash recomputed from its storages as they stream by.

Use (docs/architecture.md, "Proven archives" → "The accounts level")::

    proof = AccountsProof(max_accounts, summer)  # prove_accounts_max; where to hash
    # for each member accounts/{slot}.{id} of the tar stream, in whatever order they come,
    # with the manifest's accounts_current_len of that storage:
    parser = proof.storage(slot, ident, size, current_len)   # consumes exactly size bytes
    ...                                          # feed it the member's data (a Feeder)
    lt_hash, note = proof.finish(reread)         # after the stream, the file verified on disk

``finish`` returns the 2,048-byte lattice hash and None, or None and a one-line note saying
why the archive stays at ``manifest`` (``not proven: N accounts over the bound of M``).
``reread(member, start)`` gives the bytes of a storage member's data from byte ``start``
on, as an iterable of chunks (it is closed once enough came); it is asked only for storages
holding versions that a newer one superseded after they were counted, once per storage, in
the order the storages came. Bad storages raise ArchiveInvalid with one line from the parser
or from ``finish``. The messages are hashed by ``summer`` (:class:`~tracker.proof.accounthash.
Summer`; in the caller's thread when None); a summer that fails (a worker process gone) leaves
the archive at ``manifest`` with its note, never rejects it.

The newest version of each pubkey wins: the one in the highest slot. A pubkey twice in one
slot is refused (agave's storages hold one version per pubkey a slot). A version with zero
lamports counts nothing, yet supersedes older ones. Which version is newest is known only at
the end: each version is added when it comes unless a newer one was seen; when a newer one
comes later, the older one's locator is kept and its hash is taken back out at ``finish``,
after a second read of just those records.
"""

from __future__ import annotations

import base58
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounthash import LocalSum, Summer, lane_sum
from tracker.proof.parsing import ParserOf
from tracker.proof.pubkeyindex import PubkeyIndex
from tracker.proof.storages import PUBKEY, Records, parse_storage
from tracker.proof.superseded import Reread, subtract_superseded

__all__ = ["AccountsProof", "Reread", "member_name"]

U64 = npt.NDArray[np.uint64]
_COUNTS = np.uint64(1)


def member_name(slot: int, ident: int) -> str:
    """The tar member of a storage."""
    return f"accounts/{slot}.{ident}"


class AccountsProof:
    """The lattice hash of one archive's storages (see the module)."""

    def __init__(self, max_accounts: int, summer: Summer | None = None) -> None:
        self.max_accounts = max_accounts
        self.index = PubkeyIndex(max_accounts)
        self._names: list[str] = []
        self._slots: U64 = np.zeros(64, dtype=np.uint64)
        self._superseded: list[U64] = []
        self._superseded_count = 0
        self._records = 0
        self._over = False
        self._summer: Summer = summer if summer is not None else LocalSum()

    @property
    def records(self) -> int:
        """Stored versions seen so far."""
        return self._records

    def storage(self, slot: int, ident: int, size: int, current_len: int) -> ParserOf[int]:
        """The parser of the storage ``accounts/{slot}.{ident}`` of ``size`` bytes, the first
        ``current_len`` of them valid."""
        number = len(self._names)
        name = member_name(slot, ident)
        self._names.append(name)
        if number >= len(self._slots):
            self._slots = np.concatenate((self._slots, np.zeros_like(self._slots)))
        self._slots[number] = slot

        def sink(batch: Records) -> None:
            self._take(batch, number, slot, name)

        return (yield from parse_storage(name, size, current_len, sink))

    def _take(self, batch: Records, number: int, slot: int, name: str) -> None:
        self._records += len(batch)
        if self._over:
            return
        if not self.index.fits(len(batch)):
            self._give_up()
            return
        entry, made = self.index.find_at(batch.buf, batch.offsets + PUBKEY)
        counts = batch.lamports() != 0
        locators = (
            (np.uint64(number) << np.uint64(32))
            | (((batch.offsets + batch.base) >> 3).astype(np.uint64) << np.uint64(1))
            | counts.astype(np.uint64)
        )
        where = self.index.where
        where[entry[made]] = locators[made]
        add = made & counts
        seen = np.flatnonzero(~made)
        if len(seen):
            add |= self._seen_before(seen, entry, locators, slot, name, batch)
        lane_sum(batch, np.flatnonzero(add), self._summer)

    def _seen_before(
        self,
        seen: npt.NDArray[np.int64],
        entry: npt.NDArray[np.int64],
        locators: U64,
        slot: int,
        name: str,
        batch: Records,
    ) -> npt.NDArray[np.bool_]:
        """Records whose pubkey has an entry: which of them now count (the newer ones)."""
        where = self.index.where
        entries = entry[seen]
        before = where[entries]
        before_slots = self._slots[(before >> np.uint64(32)).astype(np.int64)]
        twice = before_slots == np.uint64(slot)
        if twice.any() or len(np.unique(entries)) < len(entries):
            first = seen[np.flatnonzero(twice)[0]] if twice.any() else _repeated(seen, entries)
            pubkey = base58.b58encode(batch.pubkeys()[first].tobytes()).decode()
            raise ArchiveInvalid(f"{name}: pubkey {pubkey} is stored twice in slot {slot}")
        newer = before_slots < np.uint64(slot)
        replaced = before[newer]
        counted = replaced[(replaced & _COUNTS) == _COUNTS]
        if len(counted):
            self._superseded.append(counted)
            self._superseded_count += len(counted)
            if self._superseded_count > self.max_accounts:
                self._give_up()
        where[entries[newer]] = locators[seen[newer]]
        now = np.zeros(len(entry), dtype=np.bool_)
        now[seen[newer]] = (locators[seen[newer]] & _COUNTS) == _COUNTS
        return now

    def _give_up(self) -> None:
        self._over = True
        self._superseded = []

    def finish(self, reread: Reread | None) -> tuple[bytes | None, str | None]:
        """The lattice hash and None, or None and why not (see the module)."""
        try:
            if self._over:
                return None, (
                    f"not proven: {self._records} accounts over the bound of {self.max_accounts}"
                )
            if self._superseded:
                if reread is None:
                    return None, (
                        f"not proven: {self._superseded_count} superseded versions need a "
                        "second read of the archive"
                    )
                locators = np.sort(np.concatenate(self._superseded))
                subtract_superseded(locators, self._names, reread, self._summer)
            total, note = self._summer.total()
            if total is None:
                return None, note
            return total.astype("<u2").tobytes(), None
        finally:
            self.close()

    def close(self) -> None:
        """Let go of what the proof holds (``finish`` does too): the index's memory, and the
        summer's (a worker process: stopped)."""
        self._superseded = []
        self.index = PubkeyIndex(1)
        self._summer.close()


def _repeated(seen: npt.NDArray[np.int64], entries: npt.NDArray[np.int64]) -> int:
    order = np.argsort(entries, kind="stable")
    ordered = entries[order]
    at = int(np.flatnonzero(ordered[1:] == ordered[:-1])[0]) + 1
    return int(seen[order[at]])
