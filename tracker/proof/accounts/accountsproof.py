"""The accounts level: an archive's lattice hash recomputed from its storages as they stream by.

Use (docs/architecture.md, "Proven archives" → "The accounts level")::

    proof = AccountsProof(limits, summer)        # AccountsLimits; where to hash
    # for each member accounts/{slot}.{id} of the tar stream, in whatever order they come,
    # with the manifest's accounts_current_len of that storage:
    parser = proof.storage(slot, ident, size, current_len)   # consumes exactly size bytes
    ...                                          # feed it the member's data (a Feeder)
    lt_hash, note = proof.finish(reread)         # after the stream, the file verified on disk

``finish`` returns the 2,048-byte lattice hash and None, or None and a one-line note saying
why the archive stays at ``manifest`` (``not proven: N accounts over the bound of M``, an
operator's bound; ``not proven: N bytes of temporary space needed, M free``).
``reread(member, start)`` gives the bytes of a storage member's data from byte ``start``
on, as an iterable of chunks (it is closed once enough came); it is asked only for storages
holding versions that a newer one superseded after they were counted, once per storage, in
the order the storages came. Bad storages raise ArchiveInvalid with one line from the parser
or from ``finish``. The messages are hashed by ``summer``
(:class:`~tracker.proof.accounts.accounthash. Summer`; in the caller's thread when None); a summer
that fails (a worker process gone) leaves the archive at ``manifest`` with its note, never rejects
it.

The newest version of each pubkey wins: the one in the highest slot. A pubkey twice in one
slot is refused (agave's storages hold one version per pubkey a slot). A version with zero
lamports counts nothing, yet supersedes older ones. Which version is newest is known only at
the end: each version is added when it comes unless a newer one was seen; when a newer one
comes later, the older one's locator is kept and its hash is taken back out at ``finish``,
after a second read of just those records.

Memory is bounded by the proof's part of the budget (:mod:`tracker.proof.accounts.budget`): the
index lives in memory while it fits (the fast path), and when it would not, its entries and every
version after them go to the spilled index (:mod:`tracker.proof.accounts.spill`), which finds the
superseded versions at ``finish`` by sorting partitions read back from disk. Spilled, every
version with lamports is added as it comes; the second read takes out those superseded.
"""

from __future__ import annotations

from collections.abc import Callable

import base58
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid, NoRoom
from tracker.proof.accounts.accounthash import LocalSum, Summer, lane_sum
from tracker.proof.accounts.budget import AccountsLimits, Held, Progress, track, untrack
from tracker.proof.accounts.pubkeyindex import MAX_ENTRIES, PubkeyIndex
from tracker.proof.accounts.spill import RECORD, SpillDir, SpillIndex
from tracker.proof.accounts.superseded import Reread, subtract_superseded
from tracker.proof.formats.parsing import ParserOf
from tracker.proof.formats.storages import META, PUBKEY, Records, parse_storage

__all__ = ["AccountsProof", "Reread", "member_name"]

U64 = npt.NDArray[np.uint64]
_COUNTS = np.uint64(1)
#: Bytes asked of the budget at once while the in-memory index grows.
_GROW_STEP = 4 * 1024 * 1024
_OVER_BOUND = "over the bound"


def member_name(slot: int, ident: int) -> str:
    """The tar member of a storage."""
    return f"accounts/{slot}.{ident}"


class AccountsProof:
    """The lattice hash of one archive's storages (see the module) within ``limits``;
    ``cancelled()`` ends a wait for the budget's room."""

    def __init__(
        self,
        limits: AccountsLimits | None = None,
        summer: Summer | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.limits = limits if limits is not None else AccountsLimits()
        self.max_accounts = self.limits.max_accounts
        self.held = Held(self.limits.shared())
        self.progress = Progress()
        self._note: str | None = None
        if not self.held.start(cancelled):
            self._note = "not proven: the check was cancelled while it waited for memory"
        self.progress.held = self.held.bytes
        capacity = min(MAX_ENTRIES, max(1, self.held.budget.room // RECORD))
        self.index = PubkeyIndex(capacity)  # reserved lazily: resident as entries are made
        self.spill: SpillIndex | None = None
        self._names: list[str] = []
        self._slots: U64 = np.zeros(64, dtype=np.uint64)
        self._superseded: list[U64] = []
        self._superseded_count = 0
        self._records = 0
        self._summer: Summer = summer if summer is not None else LocalSum()
        self._expected_bytes = 0
        track(self.progress)

    def expect(self, valid_bytes: int) -> None:
        """The valid bytes of all the archive's storages (the manifest's list): the first
        batch then sizes the index's table for the records they hold at its density."""
        self._expected_bytes = valid_bytes

    @property
    def records(self) -> int:
        """Stored versions seen so far."""
        return self._records

    @property
    def spilled(self) -> int:
        """The most bytes the spilled index had on disk at once (0: it never spilled)."""
        return 0 if self.spill is None else self.spill.dir.peak

    def storage(self, slot: int, ident: int, size: int, current_len: int) -> ParserOf[int]:
        """The parser of the storage ``accounts/{slot}.{ident}`` of ``size`` bytes, the first
        ``current_len`` of them valid."""
        number = len(self._names)
        name = member_name(slot, ident)
        self._names.append(name)
        if number >= len(self._slots):
            self._slots = np.concatenate((self._slots, np.zeros_like(self._slots)))
        self._slots[number] = slot
        self.progress.bytes += size

        def sink(batch: Records) -> None:
            self._take(batch, number, slot, name)

        return (yield from parse_storage(name, size, current_len, sink))

    def _take(self, batch: Records, number: int, slot: int, name: str) -> None:
        self._records += len(batch)
        self.progress.records = self._records
        busy = getattr(self._summer, "busy", None)  # a pool of workers: how many run
        self.progress.workers_busy = (
            busy if isinstance(busy, int) else int(getattr(self._summer, "pid", None) is not None)
        )
        if self._note is not None:
            return
        if self.max_accounts is not None and self._records > self.max_accounts:
            self._give_up(_OVER_BOUND)  # said with the count of every version at the end
            return
        counts = batch.lamports() != 0
        locators = (
            (np.uint64(number) << np.uint64(32))
            | (((batch.offsets + batch.base) >> 3).astype(np.uint64) << np.uint64(1))
            | counts.astype(np.uint64)
        )
        try:
            if self._expected_bytes and self.spill is None and not self.index.count:
                self._reserve(batch)
            if self.spill is None and not self._index_fits(len(batch)):
                self._to_spill()
            if self.spill is not None:
                # Spilled: every version with lamports counts now; those superseded are
                # taken out after the partitions are sorted (finish).
                self.spill.add(batch.pubkey_words(), locators)
                self.progress.spilled = self.spill.dir.written
                self._note_peaks()
                lane_sum(batch, np.flatnonzero(counts), self._summer)
                return
        except NoRoom as exc:
            self._give_up(exc.note)
            return
        entry, made = self.index.find_at(batch.buf, batch.offsets + PUBKEY)
        where = self.index.where
        where[entry[made]] = locators[made]
        add = made & counts
        seen = np.flatnonzero(~made)
        if len(seen):
            add |= self._seen_before(seen, entry, locators, slot, name, batch)
        lane_sum(batch, np.flatnonzero(add), self._summer)

    def _reserve(self, batch: Records) -> None:
        """Size the table at the first batch for as many records as the manifest's valid
        bytes hold at this batch's density, unless that index would not fit in what the
        budget can give (it will spill: its table stays small)."""
        span = int(batch.offsets[-1]) + META + int(batch.data_lens[-1]) - int(batch.offsets[0])
        estimate = min(self.index.capacity, self._expected_bytes * len(batch) // max(1, span))
        self._expected_bytes = 0  # once
        table = self.index.table_bytes_for(estimate)
        # the table is ~a sixth of the index it serves (8.3-16.7 of 48-57 bytes an entry)
        if 6 * table <= self.held.bytes + self.held.budget.room:
            self.index.reserve(estimate)

    def _index_fits(self, more: int) -> bool:
        """True when the in-memory index with ``more`` new entries (and the superseded
        versions' locators) stays within what the proof holds or can take of the budget."""
        if not self.index.fits(more):
            return False
        # the floor stays free for the spill's run buffers, made while the index still lives
        needed = (
            self.index.nbytes_after(more) + 8 * (self._superseded_count + more) + self.held.floor
        )
        if needed <= self.held.bytes:
            return True
        # a step ahead (at most a 16th of the room: other proofs need theirs), else just enough
        step = max(1, min(_GROW_STEP, self.held.budget.room // 16))
        grown = -(-needed // step) * step
        taken = self.held.grow_to(min(grown, self.held.budget.room)) or self.held.grow_to(needed)
        fits = taken and needed <= self.held.bytes
        self.progress.held = self.held.bytes
        return fits

    def _to_spill(self) -> None:
        """Move the in-memory index to the spilled one and go on there (see the module)."""
        directory = SpillDir(self.limits.temp_dir, self.limits.keep_free)
        try:
            directory.need(self.index.count * RECORD * 2)  # the index now, and as much again
            spill = SpillIndex(directory, self.held.floor)
            count = self.index.count
            spill.add(self.index.keys[:count], self.index.where[:count])
            for found in self._superseded:
                directory.append("s", found)
        except BaseException:
            directory.remove()
            raise
        self.spill = spill
        self._superseded = []
        self.index = PubkeyIndex(1)
        self.held.shrink_to(0)
        self.progress.held = self.held.bytes

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
        where[entries[newer]] = locators[seen[newer]]
        now = np.zeros(len(entry), dtype=np.bool_)
        now[seen[newer]] = (locators[seen[newer]] & _COUNTS) == _COUNTS
        return now

    def _give_up(self, note: str) -> None:
        self._note = note
        self._superseded = []
        self.index = PubkeyIndex(1)
        if self.spill is not None:
            self.spill.dir.remove()
        self.held.shrink_to(0)

    def finish(self, reread: Reread | None) -> tuple[bytes | None, str | None]:
        """The lattice hash and None, or None and why not (see the module)."""
        try:
            if self._note is _OVER_BOUND:
                return None, (
                    f"not proven: {self._records} accounts over the bound of {self.max_accounts}"
                )
            if self._note is not None:
                return None, self._note
            if self.spill is not None:
                note = self._finish_spilled(reread)
                if note is not None:
                    return None, note
            elif self._superseded:
                if reread is None:
                    return None, _needs_reread(self._superseded_count)
                locators = np.sort(np.concatenate(self._superseded))
                subtract_superseded(locators, self._names, reread, self._summer)
            total, note = self._summer.total()
            if total is None:
                return None, note
            return total.astype("<u2").tobytes(), None
        finally:
            self.close()

    def _finish_spilled(self, reread: Reread | None) -> str | None:
        """Sort the spilled partitions and take the superseded versions out; a note when
        the proof cannot end (no room, no second read)."""
        assert self.spill is not None
        spill = self.spill
        storages = len(self._names)
        slots = self._slots[:storages]
        memory = self._dedup_memory()

        def twice(key: U64, locator: int) -> None:
            number = locator >> 32
            pubkey = base58.b58encode(np.ascontiguousarray(key, dtype="<u8").tobytes()).decode()
            raise ArchiveInvalid(
                f"{self._names[number]}: pubkey {pubkey} is stored twice in slot "
                f"{int(slots[number])}"
            )

        try:
            spill.superseded_runs(slots, memory, twice, self.limits.workers)
            self.progress.spilled = spill.dir.written
            if not spill.dir.size("s"):
                return None
            if reread is None:
                return _needs_reread(spill.dir.size("s") // 8)
            for locators in spill.superseded_in_order(storages, memory):
                subtract_superseded(locators, self._names, reread, self._summer)
        except NoRoom as exc:
            return exc.note
        except OSError as exc:  # a run file read back: the disk's fault, not the archive's
            return f"not proven: the temporary files could not be read: {exc.strerror or exc}"
        return None

    def _note_peaks(self) -> None:
        budget = self.held.budget
        budget.spilled_peak = max(budget.spilled_peak, self.spilled)

    def _dedup_memory(self) -> int:
        """As much of the budget as the proof can hold now for sorting partitions: up to
        half the room, at least its floor."""
        room = self.held.budget.room
        for share in (room // 2, room // 4, room // 8):
            if share > self.held.bytes and self.held.grow_to(share):
                break
        self.progress.held = self.held.bytes
        return max(self.held.bytes, self.held.floor)

    def close(self) -> None:
        """Let go of what the proof holds (``finish`` does too): the index's memory, its
        spilled files, its part of the budget, and the summer's (a worker process:
        stopped)."""
        self._superseded = []
        self.index = PubkeyIndex(1)
        if self.spill is not None:
            self.spill.dir.remove()
        self._note_peaks()
        self.held.release()
        untrack(self.progress)
        self._summer.close()


def _needs_reread(count: int) -> str:
    return f"not proven: {count} superseded versions need a second read of the archive"


def _repeated(seen: npt.NDArray[np.int64], entries: npt.NDArray[np.int64]) -> int:
    order = np.argsort(entries, kind="stable")
    ordered = entries[order]
    at = int(np.flatnonzero(ordered[1:] == ordered[:-1])[0]) + 1
    return int(seen[order[at]])
