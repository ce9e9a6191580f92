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
ahead"). From three cores (:func:`parse_apart`) that bookkeeping runs in a thread of its own
(:class:`Apart`), in the order the batches came, so that the reading thread only walks and
scans ("Every core"). The second read (:mod:`tracker.proof.accounts.newest`) then adds the
newest versions with lamports that were not hashed ahead and takes out the superseded ones that
were, on every hashing process at once: each newest version is in the sum exactly once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable

import attrs
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
    ``cancelled()`` ends a wait for the budget's room; ``apart``: the first read's
    bookkeeping in a thread of its own (:class:`Apart`; None: as :func:`parse_apart` says)."""

    def __init__(
        self,
        limits: AccountsLimits | None = None,
        summer: Summer | None = None,
        cancelled: Callable[[], bool] | None = None,
        apart: bool | None = None,
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
        self._started = 0  # storages the reading thread began (their numbers)
        self._records = 0
        self._summer: Summer = summer if summer is not None else LocalSum()
        # the bookkeeping of each batch (index, hashing ahead) in a thread of its own, or in
        # the reading thread (docs/architecture.md, "The accounts level" → "Every core")
        apart = parse_apart(self.limits) if apart is None else apart
        self._apart = Apart() if apart else None
        track(self.progress)

    @property
    def records(self) -> int:
        """Stored versions seen so far (every batch read so far counted)."""
        self.settle()
        return self._records

    @property
    def spilled(self) -> int:
        """The most bytes the spilled index had on disk at once (0: it never spilled; every
        batch read so far counted)."""
        self.settle()
        return self.index.dir.peak

    @property
    def bookkeeping_cpu(self) -> float:
        """CPU seconds the first read's bookkeeping took in its thread apart (0.0: in the
        reading thread), counted once the thread ended (:meth:`finish`, :meth:`close`)."""
        return self._apart.cpu if self._apart is not None else 0.0

    def settle(self) -> None:
        """Wait until every batch read so far is in the index and the sum (at once when
        they are taken in the reading thread); what the bookkeeping raised, raised here."""
        if self._apart is not None:
            self._apart.settle()

    def _then(self, job: Callable[[], None]) -> None:
        """Run ``job`` (the bookkeeping of the storages' table, the index and the sum) after
        those before it: in the bookkeeping thread when there is one, else now."""
        if self._apart is not None:
            self._apart.put(job)
        else:
            job()

    def storage(self, slot: int, ident: int, size: int, current_len: int) -> ParserOf[int]:
        """The parser of the storage ``accounts/{slot}.{ident}`` of ``size`` bytes, the first
        ``current_len`` of them valid."""
        number = self._started
        self._started += 1
        self._then(lambda: self._add_storage(number, slot, ident, size, current_len))
        name = member_name(slot, ident)
        self.progress.bytes += size

        def sink(batch: Records) -> None:
            if self._apart is not None and batch.buf.flags.writeable:
                # a view of a buffer the decoder fills again: the thread gets a copy
                batch = attrs.evolve(batch, buf=batch.buf.copy())
            self._then(lambda: self._take(batch, number))

        count = yield from parse_storage(name, size, current_len, sink)
        self._then(lambda: self._storages.counted(number, count))
        return count

    def _add_storage(self, number: int, slot: int, ident: int, size: int, valid: int) -> None:
        added = self._storages.add(slot, ident, size, valid)
        assert added == number  # the table numbers them in the order they began

    def _take(self, batch: Records, number: int) -> None:
        self._records += len(batch)
        self.progress.records = self._records
        self.progress.workers_busy = _workers_busy(self._summer)
        if self._note is not None:
            return
        if self.max_accounts is not None and self._records > self.max_accounts:
            self._give_up(_OVER_BOUND)  # said with the count of every version at the end
            return
        # the locator: the storage's number, the record's offset / 8, whether it counts
        rows, counts = batch.index_rows(number << 32)
        self._summer.expect(self._records)  # its processes start now: they hash ahead
        try:
            self.index.add(rows)
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
            self.settle()
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
        budget.spilled_peak = max(budget.spilled_peak, self.index.dir.peak)

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
        if self._apart is not None:
            self._apart.close()  # before what it writes to is let go of
        self.index.dir.remove()
        self._note_peaks()
        self.held.release()
        untrack(self.progress)
        self._summer.close()


def parse_apart(limits: AccountsLimits) -> bool:
    """Whether the first read keeps its bookkeeping (the index, the hashing ahead) in a
    thread of its own (:class:`Apart`) rather than in the reading thread: when the proof
    has more than two cores (``proof_workers``). On two, the reading thread, the SHA-256's
    and the hashing process keep both busy already, and a fourth thread only takes turns
    with them (docs/architecture.md, "The accounts level" → "Every core")."""
    return limits.workers > 2


class Apart:
    """Jobs run in order in a thread of their own, at most :data:`QUEUED` waiting: the
    first read's bookkeeping of each batch, so that the reading thread (the tar walk and
    the storages' scan, which must follow the stream) does only what must be serial. What a
    job raises is raised by the next :meth:`put` or :meth:`settle`; the jobs after it are
    dropped. The thread ends once it has had nothing to do for :data:`IDLE` seconds (the
    next job starts another) and at :meth:`close`, which drops what waits."""

    #: Jobs waiting at most: each holds a batch's piece (~4 MiB).
    QUEUED = 4
    #: Seconds the thread waits for a job before it ends.
    IDLE = 1.0

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | threading.Event | None] = queue.Queue(
            self.QUEUED
        )
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.cpu = 0.0  # CPU seconds its threads used, added as each ends (bench/accounts.py)

    def put(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waits while :data:`QUEUED` wait)."""
        self._raise()
        self._queue(job)

    def settle(self) -> None:
        """Wait until every job queued so far has run (at once in the thread itself)."""
        if threading.current_thread() is not self._thread:
            done = threading.Event()
            if self._queue(done):
                done.wait()
        self._raise()

    def close(self) -> None:
        """Drop the jobs that wait, end the thread (idempotent)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._jobs.put(None)  # the thread drops what waits before it, then ends
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _queue(self, item: Callable[[], None] | threading.Event) -> bool:
        """Queue ``item`` with a thread to take it; False when closed."""
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="accounts-index", daemon=True
                )
                self._thread.start()
            # under the lock: the thread ends only under it, when nothing is queued (a full
            # queue never waits on the lock: its thread is busy, not ending)
            self._jobs.put(item)
        return True

    def _raise(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        start = time.thread_time()
        try:
            self._take_jobs()
        finally:
            self.cpu += time.thread_time() - start

    def _take_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()  # every job before it has run (or was dropped)
            elif self._failure is None and not self._closed:
                try:
                    job()
                except BaseException as exc:  # raised in the reading thread (put, settle)
                    self._failure = exc


def _workers_busy(summer: Summer) -> int:
    """How many processes ``summer`` hashes in: a pool's count, one worker's one."""
    busy = getattr(summer, "busy", None)
    return busy if isinstance(busy, int) else int(getattr(summer, "pid", None) is not None)
