"""The accounts level: an archive's lattice hash recomputed from its storages, in two reads.

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
on, as an iterable of chunks; it is asked for every storage, once, in the order the storages
came. Bad storages raise ArchiveInvalid with one line from the parser or from ``finish``. The
messages are hashed by ``summer`` (:class:`~tracker.proof.accounts.accounthash.Summer`; in the
caller's thread when None); a summer that fails (a worker process gone) leaves the archive at
``manifest`` with its note, never rejects it.

The newest version of each pubkey wins: the one in the highest slot. A pubkey twice in one
slot is refused (agave's storages hold one version per pubkey a slot). A version with zero
lamports counts nothing, yet supersedes older ones. The first read (the check's one pass)
records every version (its pubkey and locator) in the index (:mod:`tracker.proof.accounts.spill`:
in memory while the proof's part of the budget holds it, then in run files), whose partitions,
sorted at ``finish``, give the superseded versions; it also hands the summer the versions with
lamports of each batch the summer has room for where it hashes (a hashing process's free
slot), and leaves the others to the second read: hashing ahead with the processes' spare time,
never its own (docs/architecture.md, "The accounts level" → "Hashing
ahead"). The second read (:mod:`tracker.proof.accounts.newest`) then adds the newest versions
with lamports that were not hashed ahead and takes out the superseded ones that were, on every
hashing process at once: each newest version is in the sum exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import base58
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid, NoRoom
from tracker.proof.accounts.accounthash import LocalSum, Summer, lane_sum_in_room
from tracker.proof.accounts.budget import AccountsLimits, Held, Progress, track, untrack
from tracker.proof.accounts.newest import Reread, StorageTable, hash_newest, member_name
from tracker.proof.accounts.spill import MemoryRuns, SpillDir, SpillIndex
from tracker.proof.formats.parsing import ParserOf
from tracker.proof.formats.storages import Records, parse_storage

__all__ = ["AccountsProof", "Reread"]

U64 = npt.NDArray[np.uint64]
#: Bytes asked of the budget at once while the index's runs held in memory grow.
_GROW_STEP = 4 * 1024 * 1024
_OVER_BOUND = "over the bound"


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
        # every version's record, in memory while the budget holds them, then on disk
        self.index = SpillIndex(MemoryRuns(), self.held.floor)
        self._storages = StorageTable()
        self._records = 0
        self._summer: Summer = summer if summer is not None else LocalSum()
        track(self.progress)

    @property
    def records(self) -> int:
        """Stored versions seen so far."""
        return self._records

    @property
    def spilled(self) -> int:
        """The most bytes the spilled index had on disk at once (0: it never spilled)."""
        return self.index.dir.peak

    def storage(self, slot: int, ident: int, size: int, current_len: int) -> ParserOf[int]:
        """The parser of the storage ``accounts/{slot}.{ident}`` of ``size`` bytes, the first
        ``current_len`` of them valid."""
        number = self._storages.add(slot, ident, size, current_len)
        name = member_name(slot, ident)
        self.progress.bytes += size

        def sink(batch: Records) -> None:
            self._take(batch, number)

        count = yield from parse_storage(name, size, current_len, sink)
        self._storages.counted(number, count)
        return count

    def _take(self, batch: Records, number: int) -> None:
        self._records += len(batch)
        self.progress.records = self._records
        self.progress.workers_busy = _workers_busy(self._summer)
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
        self._summer.expect(self._records)  # its processes start now: they hash ahead
        try:
            self.index.add(batch.pubkey_words(), locators)
            self._within_budget()
        except NoRoom as exc:
            self._give_up(exc.note)
            return
        self._hash_ahead(batch, counts, number)

    def _hash_ahead(self, batch: Records, counts: npt.NDArray[np.bool_], number: int) -> None:
        """Hand a hashing process the versions with lamports of ``batch`` (of storage
        ``number``) when one has room for them now; else the batch is left to the second read
        (:mod:`.newest`). A process's spare time hashes ahead, never the reading thread's, which
        only lays the messages out, as the second read did (docs/architecture.md, "The
        accounts level" → "Hashing ahead")."""
        chosen = np.flatnonzero(counts)
        if lane_sum_in_room(batch, chosen, self._summer):
            self.progress.hashed += len(chosen)
            self._storages.hashed_ahead()
        else:
            first, last = batch.base + int(batch.offsets[0]), batch.base + int(batch.offsets[-1])
            self._storages.left(number, first, last)

    def _within_budget(self) -> None:
        """Keep the records held in memory within what the proof holds or can take of the
        budget, a step ahead; past it, move them to disk and go on there (NoRoom when the
        temporary directory cannot take them)."""
        index = self.index
        if index.on_disk:
            self.progress.spilled = index.dir.written
            self._note_peaks()
            return
        # the floor stays free: the staging buffer and a flush's sorted copy
        needed = index.dir.written + self.held.floor
        if needed <= self.held.bytes:
            return
        # a step ahead (at most a 16th of the room: other proofs need theirs), else just enough
        step = max(1, min(_GROW_STEP, self.held.budget.room // 16))
        grown = -(-needed // step) * step
        taken = self.held.grow_to(min(grown, self.held.budget.room)) or self.held.grow_to(needed)
        self.progress.held = self.held.bytes
        if taken and needed <= self.held.bytes:
            return
        directory = SpillDir(self.limits.temp_dir, self.limits.keep_free)
        index.to_disk(directory)
        self.held.shrink_to(0)
        self.progress.held = self.held.bytes
        self.progress.spilled = directory.written
        self._note_peaks()

    def _give_up(self, note: str) -> None:
        self._note = note
        self.index.dir.remove()
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
            if self._records:
                if reread is None:
                    return None, f"not proven: {self._records} accounts need a second read"
                note = self._finish_index(reread)
                if note is not None:
                    return None, note
            total, note = self._summer.total()
            if total is None:
                return None, note
            return total.astype("<u2").tobytes(), None
        finally:
            self.close()

    def _hash_newest(self, superseded: Iterable[U64], reread: Reread) -> None:
        """The second read: every newest version with lamports hashed (:mod:`.newest`)."""
        self.progress.workers_busy = _workers_busy(self._summer)

        def hashed(count: int) -> None:
            self.progress.hashed += count

        hash_newest(self._storages, superseded, reread, self._summer, hashed)

    def _finish_index(self, reread: Reread) -> str | None:
        """Sort the index's partitions and hash the newest versions; a note when the proof
        cannot end (no room, the temporary files unreadable)."""
        index = self.index
        storages = len(self._storages)
        slots = self._storages.slots()

        def twice(key: U64, locator: int) -> None:
            number = locator >> 32
            pubkey = base58.b58encode(np.ascontiguousarray(key, dtype="<u8").tobytes()).decode()
            raise ArchiveInvalid(
                f"{self._storages.name(number)}: pubkey {pubkey} is stored twice in slot "
                f"{int(slots[number])}"
            )

        try:
            index.seal()  # its runs whole, the staging buffer gone: the sort's memory is known
            memory = self._dedup_memory()
            index.superseded_runs(slots, memory, twice, self.limits.workers)
            if index.on_disk:
                self.progress.spilled = index.dir.written
            self._hash_newest(index.superseded_in_order(storages, memory), reread)
        except NoRoom as exc:
            return exc.note
        except OSError as exc:  # a run file read back: the disk's fault, not the archive's
            return f"not proven: the temporary files could not be read: {exc.strerror or exc}"
        return None

    def _note_peaks(self) -> None:
        budget = self.held.budget
        budget.spilled_peak = max(budget.spilled_peak, self.spilled)

    def _dedup_memory(self) -> int:
        """As much of the budget as the proof can hold now for sorting partitions, beside the
        index's runs it holds in memory: up to half the room, at least its floor (which the
        runs held in memory always left free: the staging buffer's, gone by then)."""
        room = self.held.budget.room
        resident = 0 if self.index.on_disk else self.index.dir.written
        for share in (room // 2, room // 4, room // 8):
            wanted = min(room, resident + share)
            if wanted > self.held.bytes and self.held.grow_to(wanted):
                break
        self.progress.held = self.held.bytes
        return max(self.held.bytes - resident, self.held.floor)

    def close(self) -> None:
        """Let go of what the proof holds (``finish`` does too): the index's memory, its
        spilled files, its part of the budget, and the summer's (a worker process:
        stopped)."""
        self.index.dir.remove()
        self._note_peaks()
        self.held.release()
        untrack(self.progress)
        self._summer.close()


def _workers_busy(summer: Summer) -> int:
    """How many processes ``summer`` hashes in: a pool's count, one worker's one."""
    busy = getattr(summer, "busy", None)
    return busy if isinstance(busy, int) else int(getattr(summer, "pid", None) is not None)
