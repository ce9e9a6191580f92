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
operator's bound; ``not proven: N bytes of temporary space needed plus a 16 MiB margin, M
free``).
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
never its own (docs/architecture.md, "The accounts level" → "Hashing ahead"). From three
cores (:func:`~.scanlanes.scan_lanes`) the storages are scanned in parallel, each in one of a
few *scan lanes* (:class:`~.scanlanes.Apart`, threads of their own) with its batches'
bookkeeping, so that the reading thread only walks the tar and hands each storage's pieces
on ("Every core"); the bookkeeping's shared part (the index, the summer, the table) is taken
under one lock. A refusal is the serial reading's: the one of the first storage in the stream
that fails, since every piece a lane holds lies before where the reading thread is. From eight
(:func:`~.budget.scan_processes`) both reads scan and hash in processes instead
(:mod:`.scanprocs`), which answer through this class's ``ScanAnswers`` calls. The second
read (:mod:`tracker.proof.accounts.newest`) then adds the newest versions with lamports that
were not hashed ahead and takes out the superseded ones that were, on every hashing process at
once: each newest version is in the sum exactly once. Large versions are hashed where they
lie and their hashes kept (:mod:`.kepthashes`).
"""

from __future__ import annotations

import errno
import functools
import threading
import time
from collections.abc import Callable, Iterable

import base58
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid, NoRoom, own_shortage
from tracker.proof.accounts import kepthashes
from tracker.proof.accounts.accounthash import (
    LocalSum,
    Summer,
    hashes_in_place,
    lane_sum_in_room,
    zero_lanes,
)
from tracker.proof.accounts.budget import (
    AccountsLimits,
    BudgetShare,
    ProofCounters,
    scan_processes,
    track,
    untrack,
)
from tracker.proof.accounts.kepthashes import KeptHashes
from tracker.proof.accounts.newest import (
    I64,
    Reread,
    StorageTable,
    Stored,
    hash_newest,
    member_name,
)
from tracker.proof.accounts.scanlanes import Apart, scan_lanes
from tracker.proof.accounts.scanprocs import Scanners, held_for
from tracker.proof.accounts.spill import MemoryRuns, SpillDir, SpillIndex
from tracker.proof.accounts.sysvars import sysvar_versions
from tracker.proof.formats import kernels
from tracker.proof.formats.parsing import BulkPiece, Parser
from tracker.proof.formats.storages import Records, StorageScan, parse_storage, storage_pieces

__all__ = ["AccountsProof", "Reread"]

U64 = npt.NDArray[np.uint64]
#: Bytes asked of the budget at once while the index's runs held in memory grow.
_GROW_STEP = 4 * 1024 * 1024
_OVER_BOUND = "over the bound"
#: The storages of a proof from which its kernels are compiled whatever their size: an
#: interpreted call on a storage of a few records costs ~20 µs more than a compiled one, so
#: past a few thousand storages numba's one load (~0.4 s) is paid back (a small proof, as
#: the tests' archives, never loads it: ``proof.formats.kernels``).
KERNELS_FROM = 4096
_NONE = np.zeros(0, dtype=np.int64)


class AccountsProof:
    """The lattice hash of one archive's storages (see the module) within ``limits``;
    ``cancelled()`` ends a wait for the budget's room or on its scan processes (not proven:
    ``hashworker.CANCELLED``); ``lanes``: the threads the first read
    scans storages in (0: the reading thread; None: as :func:`scan_lanes` says);
    ``scanners``: the processes it scans them in instead (:mod:`.scanprocs`; None: as
    :func:`~.budget.scan_processes` says, 0: none)."""

    def __init__(
        self,
        limits: AccountsLimits | None = None,
        summer: Summer | None = None,
        cancelled: Callable[[], bool] | None = None,
        lanes: int | None = None,
        at_least: int = 0,
        scanners: int | None = None,
    ) -> None:
        self.limits = limits if limits is not None else AccountsLimits()
        self.max_accounts = self.limits.max_accounts
        self.held = BudgetShare(self.limits.shared())
        try:
            self._begin(summer, cancelled, lanes, at_least, scanners)
        except BaseException:
            # a proof never built is never closed: what it took goes back now (its part of
            # the shared budget, and the summer it was given: its hashing processes and their
            # worker slots), whatever failed (a thread or memory short, an interrupt)
            self.held.release()
            if summer is not None:
                summer.close()
            raise
        track(self.progress)

    def _begin(
        self,
        summer: Summer | None,
        cancelled: Callable[[], bool] | None,
        lanes: int | None,
        at_least: int,
        scanners: int | None,
    ) -> None:
        """The constructor's work once the budget's share is made (see the class)."""
        self.progress = ProofCounters()
        self._cancelled = cancelled  # asked by the wait for room and the partitions' sort
        self._note: str | None = None
        #: True once :meth:`finish` said why it could not end for a reason of this tracker's
        #: own (temporary space, files, memory, the hashing process), not the archive's.
        self.local_cause = False
        self._bounded = False  # the note is the operator's bound on the accounts
        if self.max_accounts is not None and at_least > self.max_accounts:
            # the archive holds ``at_least`` versions or more (its manifest's storage list
            # says so): over the bound, the proof stops before it reads any or holds memory
            self._bounded = True
            self._note = (
                f"not proven: at least {at_least} accounts (the storages the manifest lists) "
                f"over the bound of {self.max_accounts}"
            )
        elif not self.held.start(cancelled):
            self._note = "not proven: the check was cancelled while it waited for memory"
        self.progress.held = self.held.bytes
        # every version's record, in memory while the budget holds them, then on disk
        # each storage scanned, and its batches' bookkeeping done, in a lane of its own, or
        # all in the reading thread (docs/architecture.md, "The accounts level" → "Every core")
        lanes = scan_lanes(self.limits) if lanes is None else lanes
        # or in processes (from eight ``proof_workers``: ``budget.scan_processes``), held from
        # the budget beside the index with their forkserver (as many as it holds)
        processes = scan_processes(self.limits) if scanners is None else scanners
        processes = processes if self._note is None else 0  # stopped before it began
        while processes and not self.held.grow_to(self.held.bytes + held_for(processes)):
            processes -= 1
        self._scan_bytes = held_for(processes)
        # with lanes or processes, a full staging buffer is written outside their lock while
        # another fills
        self.index = SpillIndex(
            MemoryRuns(), self.held.floor, spare_stage=lanes > 0 or processes > 0
        )
        self._storages = StorageTable()
        self._started = 0  # storages the reading thread began (their numbers)
        self._records = 0
        self._summer: Summer = summer if summer is not None else LocalSum()
        queued = max(2, Apart.QUEUED // max(1, lanes))  # the pieces held stay near one lane's
        self._lanes = [Apart(queued) for _ in range(lanes)]
        self.lock = threading.Lock()  # the index, the summer, the table: one lane at a time
        # the index's runs: one staging buffer written at a time, outside ``lock`` (taken
        # after it, never before: a writer that ran out of room gives up once it let go)
        self._writing = threading.Lock()
        self._refused: tuple[int, BaseException] | None = None  # the first storage's refusal
        # large versions hashed where they lie, their hashes kept (the budget holds them)
        self._kept = KeptHashes()
        self._own = zero_lanes()  # the scan processes' sums (in no summer)
        #: CPU seconds the batches' bookkeeping took under the lock (bench/accounts.py)
        self.locked_cpu = 0.0
        #: CPU seconds the scan processes used, told once the first read is over
        self.scan_cpu = 0.0
        #: told each SlotHistory version found (``watch(number, lamports, data)``, in the
        #: thread that found it: a lane, or one reading a scan process's answers)
        self.watch: Callable[[int, int, bytes], None] | None = None
        #: set once the first read leaves the second one something to read (a version hashed
        #: ahead, which it may take out again, or left to it): the check then binds the bytes
        #: it reads from there by each block's BLAKE3 (tracker.proof.archive.binding); a
        #: storage whose versions were all hashed where they lay and kept is never read again
        self.rereads: threading.Event | None = None
        self._scanners: Scanners | None = None
        if processes and self._note is None:
            try:
                self._scanners = Scanners(processes, self, cancelled)
            except (OSError, EOFError, MemoryError, RuntimeError) as exc:
                short = own_shortage(exc)
                if short is None and isinstance(exc, RuntimeError):
                    raise  # not the tracker's shortage: a bug, not to be hidden
                # no process or thread to start (no fds, no memory, a pids limit; the
                # forkserver gone: EOFError): the lanes' way; the tracker's own fault is no
                # verdict on the archive
                self._close_scanners()
                if short is not None and short.errno == errno.EAGAIN:
                    self._lanes = []  # no thread to spare either: the reading thread scans

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
    def stopped(self) -> bool:
        """True once the proof cannot reach ``accounts`` whatever comes (over the bound, no
        room, cancelled): :meth:`finish` gives its note, and the storages still to come
        need not be read (``accountsprover.StoragesProver.member``)."""
        return self._note is not None

    @property
    def lanes(self) -> int:
        """The scan lanes of the first read (0: it scans in the reading thread)."""
        return len(self._lanes)

    @property
    def bookkeeping_cpu(self) -> float:
        """CPU seconds the first read's scan lanes took, their bookkeeping included (0.0: all
        in the reading thread), counted once each thread ended (:meth:`finish`,
        :meth:`close`)."""
        return sum(lane.cpu for lane in self._lanes)

    def settle(self) -> None:
        """Wait until every piece handed to the scan lanes so far is scanned, in the index
        and in the sum (at once without lanes); then raise the refusal of the first storage
        that failed (the serial reading's), if one did."""
        for lane in self._lanes:
            lane.settle()
        if self._scanners is not None:
            self._scanners.settle()
        if self._refused is not None:
            raise self._refused[1]

    def storage(self, slot: int, ident: int, size: int, current_len: int) -> Parser:
        """The parser of the storage ``accounts/{slot}.{ident}`` of ``size`` bytes, the first
        ``current_len`` of them valid: it consumes exactly ``size`` bytes, scanning them here
        or handing them to a scan lane."""
        number = self._started
        self._started += 1
        if number == KERNELS_FROM:
            # many storages: a compiled call is cheaper than an interpreted one however few
            # records it has (docs/architecture.md, "The accounts level" → "Cost")
            kernels.load()
        name = member_name(slot, ident)
        self.progress.bytes += size
        if self._scanners is not None:
            yield from self._to_process(number, slot, ident, size, current_len)
            return
        if self._lanes:
            yield from self._hand_on(number, slot, ident, size, current_len)
            return
        self._add_storage(number, slot, ident, size, current_len)
        count = yield from parse_storage(name, size, current_len, lambda b: self._take(b, number))
        self._counted(number, count)

    def _hand_on(self, number: int, slot: int, ident: int, size: int, valid: int) -> Parser:
        """Storage ``number``'s valid bytes handed, a piece at a time, to the least busy
        lane, which scans them in order (:class:`~tracker.proof.formats.storages.StorageScan`:
        the same reading and the same reasons as :func:`parse_storage`)."""
        self._add_storage(number, slot, ident, size, valid)
        lanes = len(self._lanes)
        lane = min(
            (self._lanes[(number + step) % lanes] for step in range(lanes)),
            key=lambda each: each.waiting,
        )
        name = member_name(slot, ident)
        scanner = StorageScan(name, valid, lambda batch: self._take(batch, number))

        def hand(piece: BulkPiece) -> None:
            if not (isinstance(piece, bytes | tuple) or memoryview(piece).readonly):
                piece = bytes(piece)  # a buffer its decoder fills again: the lane's copy
            self._in_lane(lane, number, functools.partial(scanner.take, piece))

        yield from storage_pieces(name, size, valid, hand)
        self._in_lane(lane, number, lambda: self._counted(number, scanner.count))

    def _to_process(self, number: int, slot: int, ident: int, size: int, valid: int) -> Parser:
        """Storage ``number``'s valid bytes sent, a piece at a time, to a scan process
        (:mod:`.scanprocs`), which scans, indexes and hashes them; its answers come back
        through :meth:`scanned` and the other calls of a ``scanprocs.ScanAnswers``."""
        self._add_storage(number, slot, ident, size, valid)
        name = member_name(slot, ident)
        if self.rereads is not None and valid:  # hashed there: any version may be taken out
            self.rereads.set()
        yield from storage_pieces(name, size, valid, self._sender(number, name, valid))
        self.rescanned(number)

    def _sender(self, number: int, name: str, valid: int) -> Callable[[BulkPiece], None]:
        """What sends storage ``number``'s valid bytes, a piece at a time, to its scan
        process (none once the proof stopped); a refusal met meanwhile is raised there, as
        the serial reading would have."""
        scanners = self._scanners
        assert scanners is not None

        def send(piece: BulkPiece) -> None:
            if self._note is None and self._refused is None:
                scanners.piece(number, name, valid, piece)
            if self._refused is not None:
                self.settle()

        return send

    # -- what the scan processes answer (a ``scanprocs.ScanAnswers``), in their pipes' threads

    def scanned(self, number: int, rows: U64, records: int, hashed: int) -> None:
        """A batch of storage ``number`` scanned in a process: its index ``rows`` (of
        ``records`` versions), ``hashed`` of them in that process's sum."""
        full: list[U64] = []
        with self.lock:
            self._records += records
            self.progress.records = self._records
            if self._note is not None:
                return
            if self.max_accounts is not None and self._records > self.max_accounts:
                self._give_up(_OVER_BOUND)
                return
            try:
                full = self.index.stage(rows)
                self._within_budget()
            except NoRoom as exc:
                self._give_up(exc.note)
                return
            self.progress.hashed += hashed
            self._storages.hashed_ahead()
            if full:
                self._writing.acquire()
        if full:
            self._write_runs(full)

    def found(self, number: int, lamports: int, data: bytes) -> None:
        """A SlotHistory version a scan process found in storage ``number``."""
        if self.watch is not None:
            self.watch(number, lamports, data)

    def counted(self, number: int, count: int) -> None:
        """Storage ``number`` held ``count`` records (a scan process counted them)."""
        self._counted(number, count)

    def refused(self, number: int, reason: str) -> None:
        """A scan process refused storage ``number``: the archive is invalid."""
        self._refuse(number, ArchiveInvalid(reason))

    def failed(self, reason: str) -> None:
        """A scan process failed (not the archive's fault): the proof stops with a note."""
        with self.lock:
            if self._note is None:
                self._give_up(f"not proven: {reason}")

    def rehashed(self, number: int, added: int, taken_out: int) -> None:
        """Storage ``number``'s second read is over in a scan process."""
        with self.lock:
            self.progress.hashed += added - taken_out

    # -- the second read in the scan processes (a ``newest.StorageProcesses``)

    def rescan(
        self, number: int, stored: Stored, skip: I64, keep: I64
    ) -> Callable[[BulkPiece], None]:
        """Storage ``number``'s second read, sent to a scan process as the first read sends
        a storage (:meth:`_sender`): what takes its valid bytes."""
        scanners = self._scanners
        assert scanners is not None
        scanners.rescan(number, stored.name, stored.valid, stored.records, stored.left, skip, keep)
        return self._sender(number, stored.name, stored.valid)

    def rescanned(self, number: int) -> None:
        """Every valid byte of storage ``number`` was sent: its process answers (its count,
        or in the second read what it added and took out)."""
        if self._scanners is not None and self._note is None and self._refused is None:
            self._scanners.end(number)

    def hand(self, number: int) -> Callable[[Callable[[], None]], None]:
        """How storage ``number``'s jobs run in the least busy scan lane (in order, its
        refusal kept as :meth:`_in_lane` keeps it): the second read's hand-over, the proof
        being its own :class:`~.newest.ScanLanes`."""
        lane = min(self._lanes, key=lambda each: each.waiting)
        return lambda job: self._in_lane(lane, number, job)

    def _in_lane(self, lane: Apart, number: int, job: Callable[[], None]) -> None:
        """Run ``job`` of storage ``number`` in ``lane`` after its jobs before it; what it
        raises is kept as the storage's refusal, raised here (as :meth:`settle` does) once
        a storage has one: the jobs of it and of those after it are dropped."""

        def run() -> None:
            refused = self._refused
            if refused is not None and number >= refused[0]:
                return
            try:
                job()
            except BaseException as exc:
                self._refuse(number, exc)

        lane.put(run)
        if self._refused is not None:
            self.settle()

    def _refuse(self, number: int, exc: BaseException) -> None:
        """Keep ``exc`` as storage ``number``'s refusal unless one of a storage before it in
        the stream is kept: the serial reading would have stopped there."""
        with self.lock:
            if self._refused is None or number < self._refused[0]:
                self._refused = (number, exc)

    def _add_storage(self, number: int, slot: int, ident: int, size: int, valid: int) -> None:
        with self.lock:
            added = self._storages.add(slot, ident, size, valid)
        assert added == number  # the table numbers them in the order they began

    def _counted(self, number: int, count: int) -> None:
        with self.lock:
            self._storages.counted(number, count)

    def _take(self, batch: Records, number: int) -> None:
        # the locator: the storage's number, the record's offset / 8, whether it counts (one
        # compiled pass, outside the lock: the lanes compute theirs at once)
        if self._note is not None:  # stopped: only counted (the rest of its storage)
            with self.lock:
                self._records += len(batch)
            return
        rows, counts = batch.index_rows(number << 32)
        if self.watch is not None:
            for lamports, data in sysvar_versions(batch, rows):
                self.watch(number, lamports, data)
        large = _NONE
        hashes = None
        if self._kept.keeping:  # hashed here, where they lie, outside the lock (.kepthashes)
            large = np.flatnonzero(counts & (batch.data_lens >= kepthashes.KEEP_FROM))
            if len(large):
                hashes = hashes_in_place(batch, large)
        full: list[U64] = []
        timed = bool(self._lanes)  # the clock costs a system call: lanes only (the bench)
        with self.lock:
            start = time.thread_time() if timed else 0.0
            try:
                full = self._take_locked(batch, number, rows, counts, large, hashes)
                if full:  # the last buffer is written: this one waits for it, then is written
                    self._writing.acquire()
            finally:
                if timed:
                    self.locked_cpu += time.thread_time() - start
        if full:
            self._write_runs(full)

    def _write_runs(self, full: list[U64]) -> None:
        """Write staging buffers that filled, holding ``_writing`` (taken under ``lock``)
        but not ``lock``: the lanes go on staging meanwhile. Then the runs it added are
        held to the budget as a batch's are (moved to disk past it)."""
        note = None
        try:
            for rows in full:
                self.index.write(rows)
        except NoRoom as exc:
            note = exc.note
        finally:
            self._writing.release()
        with self.lock:
            if self._note is not None:
                return
            try:
                if note is not None:
                    raise NoRoom(note)
                self._within_budget()
            except NoRoom as exc:
                self._give_up(exc.note)

    def _take_locked(
        self,
        batch: Records,
        number: int,
        rows: U64,
        counts: npt.NDArray[np.bool_],
        large: npt.NDArray[np.int64] = _NONE,
        hashes: npt.NDArray[np.uint16] | None = None,
    ) -> list[U64]:
        """A batch's bookkeeping on what the lanes share: the count, the index, the sum; the
        index's staging buffers that filled, to be written once the lock is let go (with
        lanes; without, they are written here)."""
        self._records += len(batch)
        self.progress.records = self._records
        self.progress.workers_busy = _workers_busy(self._summer)
        if self._note is not None:
            return []
        if self.max_accounts is not None and self._records > self.max_accounts:
            self._give_up(_OVER_BOUND)  # said with the count of every version at the end
            return []
        # its processes start now, once enough versions need them: they hash ahead
        self._summer.expect(self._records - self._kept.count)
        full: list[U64] = []
        try:
            if self._lanes:
                full = self.index.stage(rows)
            else:
                self.index.add(rows)
            self._within_budget()
        except NoRoom as exc:
            self._give_up(exc.note)
            return []
        if hashes is not None and self._keep(rows[large, 4], hashes):
            counts = counts.copy()
            counts[large] = False  # in the sum already
            self.progress.hashed += len(large)
        self._hash_ahead(batch, counts, number)
        return full

    def _keep(self, locators: U64, hashes: npt.NDArray[np.uint16]) -> bool:
        """Add the hashes of large versions (hashed where they lie) to the sum and keep them,
        by locator, while the budget holds them (:mod:`.kepthashes`); False, nothing kept from
        now on, when it does not."""
        more = kepthashes.KEPT_BYTES * len(locators)
        index = 0 if self.index.on_disk else self.index.dir.written + self.held.floor
        wanted = max(self.held.bytes, index + self._beside_index + more)
        if not self._kept.fits(len(locators), self.held.budget.room) or not self.held.grow_to(
            wanted
        ):
            self._kept.keeping = False
            return False
        self.progress.held = self.held.bytes
        self._kept.add(locators, hashes)
        return True

    def _hash_ahead(self, batch: Records, counts: npt.NDArray[np.bool_], number: int) -> None:
        """Hand a hashing process the versions with lamports of ``batch`` (of storage
        ``number``) when one has room for them now; else the batch is left to the second read
        (:mod:`.newest`). A process's spare time hashes ahead, never the reading thread's, which
        only lays the messages out, as the second read did (docs/architecture.md, "The
        accounts level" → "Hashing ahead")."""
        chosen = np.flatnonzero(counts) if counts.any() else _NONE
        if len(chosen) and self.rereads is not None:
            self.rereads.set()
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
        # the floor stays free: the staging buffer and a flush's sorted copy; kept hashes; the
        # scan processes
        needed = index.dir.written + self.held.floor + self._beside_index
        if needed <= self.held.bytes:
            return
        # a step ahead (at most a 16th of the room: other proofs need theirs), else just enough
        step = max(1, min(_GROW_STEP, self.held.budget.room // 16))
        grown = -(-needed // step) * step
        taken = self.held.grow_to(min(grown, self.held.budget.room)) or self.held.grow_to(needed)
        self.progress.held = self.held.bytes
        if taken and needed <= self.held.bytes:
            return
        directory = SpillDir(self.limits.temp_dir, self.limits.keep_free, self.limits.reserve)
        with self._writing:  # not while a lane writes to the runs held in memory
            index.to_disk(directory)
        self.held.shrink_to(self._beside_index)
        self.progress.held = self.held.bytes
        self.progress.spilled = directory.written
        self._note_peaks()

    @property
    def _beside_index(self) -> int:
        """What the proof holds of its budget besides the index: kept hashes, and the scan
        processes with their forkserver while they run."""
        return self._kept.bytes + self._scan_bytes

    def _give_up(self, note: str) -> None:
        self._note = note
        with self._writing:
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
                self.local_cause = not self._bounded
                return None, self._note
            if self._records:
                if reread is None:
                    return None, f"not proven: {self._records} accounts need a second read"
                note, local = self._finish_index(reread)
                if note is not None:
                    self.local_cause = local
                    return None, note
            self._scanned_sums()
            if self._note is not None:
                self.local_cause = True
                return None, self._note
            total, note = self._summer.total()
            if total is None:
                self.local_cause = True  # the hashing process failed
                return None, note
            return (total + self._own + self._kept.total).astype("<u2").tobytes(), None
        finally:
            self.close()

    def _scanned_sums(self) -> None:
        """Once both reads are over: the scan processes' sums added to the proof's own, the
        processes ended."""
        scanners = self._scanners
        if scanners is None:
            return
        scanned = scanners.totals() if self._note is None else None
        self.scan_cpu = scanners.cpu
        self._close_scanners()
        if scanned is not None:
            self._own += scanned
        elif self._note is None:
            self._give_up("not proven: a scanning process failed")

    def _close_scanners(self) -> None:
        """End the scan processes; what the budget held for them is the index's now."""
        if self._scanners is not None:
            self._scanners.close()
            self._scanners = None
        self._scan_bytes = 0

    def _hash_newest(self, superseded: Iterable[U64], reread: Reread) -> None:
        """The second read: every newest version with lamports hashed (:mod:`.newest`)."""
        self.progress.workers_busy = _workers_busy(self._summer)

        def hashed(count: int) -> None:
            self.progress.hashed += count

        def taken(count: int) -> None:  # kept hashes taken out: no longer in the sum
            self.progress.hashed -= count

        lanes = self if self._lanes else None
        processes = self if self._scanners is not None else None
        kept, order = self._kept.in_order()
        hash_newest(
            self._storages,
            self._kept.taken_out(superseded, kept, order, taken),
            reread,
            self._summer,
            hashed,
            lanes,
            kept=(kept,),
            processes=processes,
        )
        self._kept.clear()

    def _finish_index(self, reread: Reread) -> tuple[str | None, bool]:
        """Sort the index's partitions and hash the newest versions; a note when the proof
        cannot end (no room, the temporary files unreadable), and whether that is the
        tracker's own cause (:attr:`tracker.errors.NoRoom.local`)."""
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
            index.superseded_runs(slots, memory, twice, self.limits.workers, self._cancelled)
            if index.on_disk:
                self.progress.spilled = index.dir.written
            self._hash_newest(index.superseded_in_order(storages, memory), reread)
        except NoRoom as exc:
            return exc.note, exc.local
        except OSError as exc:  # a run file read back: the disk's fault, not the archive's
            if self._note is not None:  # a scan process failed: the proof let go of its files
                return self._note, True
            return f"not proven: the temporary files could not be read: {exc.strerror or exc}", True
        return None, True

    def _note_peaks(self) -> None:
        budget = self.held.budget
        budget.spilled_peak = max(budget.spilled_peak, self.index.dir.peak)

    def _dedup_memory(self) -> int:
        """As much of the budget as the proof can hold now for sorting partitions, beside the
        index's runs it holds in memory: up to half the room, at least its floor (which the
        runs held in memory always left free: the staging buffer's, gone by then)."""
        room = self.held.budget.room
        resident = self._beside_index + (0 if self.index.on_disk else self.index.dir.written)
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
        for lane in self._lanes:
            lane.close()  # before what it writes to is let go of
        self._close_scanners()
        self.index.dir.remove()
        self._note_peaks()
        self.held.release()
        untrack(self.progress)
        self._summer.close()


def _workers_busy(summer: Summer) -> int:
    """How many processes ``summer`` hashes in: a pool's count, one worker's one."""
    busy = getattr(summer, "busy", None)
    return busy if isinstance(busy, int) else int(getattr(summer, "pid", None) is not None)
