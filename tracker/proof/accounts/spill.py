"""The accounts proof's index: every stored version's record, partitioned by pubkey, in memory
and past the budget in run files on disk.

:class:`SpillIndex` keeps its runs in memory (:class:`MemoryRuns`) while the proof's part of the
budget (:mod:`tracker.proof.accounts.budget`) holds them, then moves them to files
(:class:`SpillDir`) and goes on there (docs/architecture.md, "The accounts level" → "Bounded
memory"); both ways are one code path. Each stored version becomes a
record of 40 bytes, its pubkey (four u64 words) and its locator (the storage's number << 32 | offset
/ 8 << 1 | 1 when it counts), and records are partitioned by a fingerprint of the pubkey into
:data:`FANOUT` run files. The fingerprint is keyed by multipliers drawn per proof, so that no
archive can choose pubkeys that crowd one partition. At the end each partition is read back
and deduplicated in memory (:func:`superseded_of`): sorted by fingerprint and slot, with full
pubkeys compared wherever fingerprints match, so that a collision of fingerprints never makes
two accounts one (a forgery never passes through one). A partition larger than the proof's
memory is split again by the next bits of the fingerprint first. What it finds, the versions
that count and a newer one superseded, goes to one more run of locators, read back in
storage order for the second read, which leaves them out
(:func:`tracker.proof.accounts.newest.hash_newest`).

Files live in a directory of their own under the configured temporary directory, holding a
lock (``flock``) while the proof runs: :meth:`SpillDir.remove` deletes it whichever way the
proof ends, and :func:`clean_leftovers` deletes those whose lock is free (a process killed in
the middle) when the next proof starts. Free space is checked before every write: short of
it, the proof stops with ``not proven: N bytes of temporary space needed plus a 16 MiB
margin, M free`` (the margin: what the spill leaves free, :data:`KEEP_FREE` or its caller's).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid, NoRoom
from tracker.proof.accounts.budget import PREFIX, clean_leftovers
from tracker.proof.formats import kernels

U64 = npt.NDArray[np.uint64]

#: Bytes of one spilled record: four pubkey words and the locator.
RECORD = 40
#: Bytes a record costs while its partition is deduplicated (the record, its fingerprint and
#: slot, the sort's order, the sorted copies).
DEDUP_COST = 112
#: Run files a partition splits into (6 bits of the fingerprint a level).
FANOUT = 64
_BITS = 6
#: Levels of splitting at most (the fingerprint's 64 bits; a partition still too large then
#: holds one pubkey in every slot: it stays at ``manifest``).
MAX_LEVEL = 64 // _BITS
#: The least memory of a thread deduplicating partitions: ~9,000 versions of one pubkey.
MIN_SHARE = 1024 * 1024
#: Why a check cancelled while its partitions are sorted stops: the words of
#: ``tracker.proof.archive.checklimits.CANCELLED``, the check's reason once cancelled (this
#: package imports no archive module; tests/unit/test_proof_accounts.py holds them equal).
CANCELLED = "check cancelled"
#: Free bytes left on the temporary file system, beyond what a write needs.
KEEP_FREE = 16 * 1024**2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def dedup_threads(workers: int, memory: int, largest: int = 0) -> int:
    """The partitions deduplicated at once by ``workers`` threads in ``memory`` bytes, the
    largest partition holding ``largest`` bytes of records: at most :data:`FANOUT`, and one
    more only while each keeps :data:`MIN_SHARE` and the sort of the largest partition
    (:data:`DEDUP_COST` a record). A share must hold every version of one pubkey (a partition
    split down to :data:`MAX_LEVEL` is one pubkey's), so a small budget is not cut in more
    pieces on a host of more cores: the proof that passes on two cores passes on sixteen.
    Nor is a partition split only to give more threads a share: splitting writes the
    partition again, which costs more than the threads gain (on 16 cores, 16 million
    accounts in the default budget: 2.5 s of deduplication in 16 threads that split every
    partition, docs/architecture.md "Every core")."""
    need = max(MIN_SHARE, largest // RECORD * DEDUP_COST)
    return max(1, min(workers, FANOUT, memory // need))


def draw_multipliers() -> U64:
    """Four odd u64 multipliers from the system's randomness (the fingerprint's key)."""
    return np.frombuffer(os.urandom(32), dtype=np.uint64) | np.uint64(1)


def fingerprints(keys: U64, mults: U64) -> U64:
    """The keyed 64-bit fingerprint of each (n, 4) pubkey (multiply-shift; u64 wraps), one
    compiled pass on large inputs (:func:`tracker.proof.formats.kernels.fingerprint_keys`)."""
    mixed: U64 = kernels.fingerprint_keys(keys, mults, _GOLDEN)
    return mixed


def superseded_of(
    keys: U64, locators: U64, storage_slots: U64, mults: U64
) -> tuple[U64, int | None]:
    """Of the versions ``keys`` (n, 4) at ``locators``: the locators of those that count
    and that a version of the same pubkey in a higher slot supersedes, and the index of a
    version whose pubkey is stored twice in its slot (None when none is)."""
    n = len(locators)
    if n < 2:
        return np.zeros(0, dtype=np.uint64), None
    slots = storage_slots[(locators >> np.uint64(32)).astype(np.int64)]
    prints = fingerprints(keys, mults)
    order = _by_print_then_slot(prints, slots, locators)
    sorted_prints = prints[order]
    same_print = sorted_prints[1:] == sorted_prints[:-1]
    same_key = same_print  # one pubkey, one fingerprint: equal pubkeys are among the ties
    if same_print.any():
        # the full pubkeys of the tied neighbours only, a few percent of the rows, by fancy
        # indexing: ``keys`` is a view of the run's (n, 5) rows, and ``np.take`` copies a view
        # whole before it gathers (all rows' took a quarter of a partition's time)
        tied = np.flatnonzero(same_print)
        if not (keys[order[tied]] == keys[order[tied + 1]]).all():
            # Two pubkeys share a fingerprint: their versions may interleave by slot. Sort
            # on the full pubkeys instead (rare: a 2^-64 chance a pair under a fresh key).
            order = np.lexsort((locators, slots, keys[:, 3], keys[:, 2], keys[:, 1], keys[:, 0]))
            sorted_keys = np.take(keys, order, axis=0)
            same_key = (sorted_keys[1:] == sorted_keys[:-1]).all(axis=1)
    sorted_slots = slots[order]
    twice = same_key & (sorted_slots[1:] == sorted_slots[:-1])
    if twice.any():
        return np.zeros(0, dtype=np.uint64), int(order[int(np.flatnonzero(twice)[0])])
    # a version followed (in slot order) by one of the same pubkey is superseded
    older = order[:-1][same_key]
    found = locators[older]
    counted: U64 = found[(found & np.uint64(1)) == np.uint64(1)]
    return counted, None


def _by_print_then_slot(prints: U64, slots: U64, locators: U64) -> npt.NDArray[np.intp]:
    """The order of ``np.lexsort((locators, slots, prints))`` (by fingerprint, then slot,
    then where the version lies: whatever order the first read's lanes added them in, the
    version a refusal names is the serial reading's first), ~10x faster: one unstable sort of
    the fingerprints (numpy's vectorised quicksort), then the lexsort of only the versions
    whose fingerprint is not alone (a pubkey stored in several slots: a few percent), in
    their places."""
    order = np.argsort(prints)
    sorted_prints = prints[order]
    tied = sorted_prints[1:] == sorted_prints[:-1]
    if tied.any():
        places = np.flatnonzero(np.concatenate(([False], tied)) | np.concatenate((tied, [False])))
        members = order[places]
        order[places] = members[np.lexsort((locators[members], slots[members], prints[members]))]
    return order


def _size_text(count: int) -> str:
    """``count`` bytes as the operator sets such a size: in MiB when whole."""
    return f"{count // 1024**2} MiB" if count and count % 1024**2 == 0 else f"{count} bytes"


class SpillDir:
    """A directory of one proof's run files under ``root`` (None: the system's temporary
    directory), locked while it exists, leaving at least ``keep_free`` bytes (and
    :data:`KEEP_FREE`) free on its file system, and what ``reserve()`` says at each write
    (a download beside it: its bytes not on disk yet); :meth:`remove` when the proof ends."""

    def __init__(
        self, root: str | None, keep_free: int = 0, reserve: Callable[[], int] | None = None
    ) -> None:
        self.keep_free = max(KEEP_FREE, keep_free)
        self.reserve = reserve
        self.root = root if root is not None else tempfile.gettempdir()
        self.path = ""
        self._lock = -1
        self._finalizer: weakref.finalize[[str, int], SpillDir] | None = None
        try:
            os.makedirs(self.root, exist_ok=True)
            clean_leftovers(self.root)
            # named before it is made (tempfile.mkdtemp would name it only once made): a
            # signal's interrupt raised right after the mkdir finds it to remove
            self.path = os.path.join(self.root, PREFIX + secrets.token_hex(16))
            os.mkdir(self.path, 0o700)
            # The lock file appears locked or not at all: made under another name, locked,
            # then renamed. Another proof cleaning leftovers meanwhile would otherwise find
            # it unlocked and remove a directory just made (its grace period covers a young
            # directory without a lock file, not one whose lock is free).
            starting = os.path.join(self.path, "lock.new")
            self._lock = os.open(starting, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            os.rename(starting, os.path.join(self.path, "lock"))
            # Removed when the last reference goes, too: a signal's interrupt can land
            # between two statements of whoever holds it (made, not yet handed to the
            # index), and the directory must not outlive the proof (at exit, atexit runs
            # what is left).
            self._finalizer = weakref.finalize(self, _discard, self.path, self._lock)
        except BaseException as exc:
            if self._finalizer is not None:  # an interrupt right after: it removes all, once
                self._finalizer()
            else:
                if self.path and not isinstance(exc, FileExistsError):  # none left behind
                    shutil.rmtree(self.path, ignore_errors=True)
                if self._lock >= 0:
                    os.close(self._lock)
            if not isinstance(exc, OSError):
                raise
            # the proof stops, the archive is not at fault
            raise NoRoom(
                f"not proven: the temporary directory {self.root!r} is unusable: "
                f"{exc.strerror or exc}"
            ) from None
        self.written = 0  # bytes in its files now
        self.peak = 0
        self._writing = threading.Lock()  # partitions deduplicated in threads append here

    def file(self, name: str) -> str:
        """The path of the run file ``name``."""
        return os.path.join(self.path, name)

    def append(self, name: str, data: npt.NDArray[np.generic]) -> None:
        """Append the bytes of ``data`` (contiguous) to the run file ``name``, after checking
        the room on the file system (NoRoom when short)."""
        view = np.ascontiguousarray(data).data.cast("B")
        if not len(view):
            return
        with self._writing:
            self.need(len(view))
            try:
                fd = os.open(
                    self.file(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            except OSError as exc:
                raise NoRoom(f"not proven: the temporary file could not be made: {exc}") from None
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    self.written += written
            except OSError as exc:
                raise NoRoom(
                    f"not proven: the temporary file could not be written: {exc}"
                ) from None
            finally:
                os.close(fd)
            self.peak = max(self.peak, self.written)

    def need(self, count: int) -> None:
        """NoRoom unless ``count`` more bytes fit on the file system (with a margin, and
        what :attr:`reserve` keeps for a download beside it)."""
        free = self.free()
        kept = max(0, self.reserve()) if self.reserve is not None else 0
        if count + self.keep_free + kept > free:
            beside = f" and {kept} bytes the download beside it still needs" if kept else ""
            raise NoRoom(
                f"not proven: {self.written + count} bytes of temporary space needed plus a "
                f"{_size_text(self.keep_free)} margin{beside}, {self.written + free} free"
            )

    def free(self) -> int:
        """Bytes free for this process on the directory's file system; NoRoom when the
        directory cannot be asked (gone, the file system failing): the proof stops, the
        archive is not at fault."""
        try:
            stats = os.statvfs(self.path)
        except OSError as exc:
            raise NoRoom(
                f"not proven: the temporary directory {self.root!r} is unusable: "
                f"{exc.strerror or exc}"
            ) from None
        return stats.f_bavail * stats.f_frsize

    def read(self, name: str) -> U64:
        """All of run file ``name``, as u64 words."""
        return np.fromfile(self.file(name), dtype=np.uint64)

    def pieces(self, name: str, step: int) -> Iterator[U64]:
        """Run file ``name`` in pieces of at most ``step`` bytes (a multiple of 8)."""
        with open(self.file(name), "rb") as source:
            while chunk := source.read(step):
                yield np.frombuffer(chunk, dtype=np.uint64)

    def size(self, name: str) -> int:
        """The bytes of run file ``name`` (0 when absent)."""
        try:
            return os.path.getsize(self.file(name))
        except FileNotFoundError:
            return 0

    def delete(self, name: str) -> None:
        """Remove run file ``name``."""
        with self._writing:
            size = self.size(name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file(name))
            self.written -= size

    def remove(self) -> None:
        """Delete the directory and everything in it (idempotent)."""
        self.written = 0
        if self._finalizer is not None:
            self._finalizer()  # runs once: later calls do nothing


def _discard(path: str, lock: int) -> None:
    """Delete a spill directory and close its lock, all of it even when a signal's interrupt
    lands midway (then raised once it is gone)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(lock)


class MemoryRuns:
    """Run files kept in memory: what :class:`SpillIndex` writes while the proof's part of
    the budget holds it (the caller counts :attr:`written` against it), moved to a
    :class:`SpillDir` (:meth:`SpillIndex.to_disk`) when it would not."""

    def __init__(self) -> None:
        self._runs: dict[str, list[U64]] = {}
        self.written = 0  # bytes held now
        self.peak = 0  # on disk: never
        self._writing = threading.Lock()  # partitions deduplicated in threads append here

    def append(self, name: str, data: npt.NDArray[np.generic]) -> None:
        """Append the words of ``data``, kept as they are (not copied: the caller changes it
        no more; a partition of a flush is a view of that flush's sorted copy)."""
        words = np.ascontiguousarray(data).view(np.uint64).reshape(-1)
        if not len(words):
            return
        with self._writing:
            self._runs.setdefault(name, []).append(words)
            self.written += words.nbytes

    def names(self) -> list[str]:
        """The runs held."""
        return list(self._runs)

    def read(self, name: str) -> U64:
        """All of run ``name``."""
        parts = self._runs.get(name, [])
        return parts[0] if len(parts) == 1 else np.concatenate(parts or [_NO_WORDS])

    def pieces(self, name: str, step: int) -> Iterator[U64]:
        """Run ``name`` in pieces of at most ``step`` bytes (a multiple of 8)."""
        words = max(1, step // 8)
        for part in list(self._runs.get(name, [])):
            for at in range(0, len(part), words):
                yield part[at : at + words]

    def size(self, name: str) -> int:
        """The bytes of run ``name`` (0 when absent)."""
        return sum(part.nbytes for part in self._runs.get(name, []))

    def delete(self, name: str) -> None:
        """Let go of run ``name``."""
        with self._writing:
            self.written -= sum(part.nbytes for part in self._runs.pop(name, []))

    def remove(self) -> None:
        """Let go of every run (idempotent)."""
        with self._writing:
            self._runs.clear()
            self.written = 0


_NO_WORDS: U64 = np.zeros(0, dtype=np.uint64)


class SpillIndex:
    """Records of (pubkey, locator) partitioned into run files of ``directory``, staged in
    memory ``stage_bytes`` at a time (see the module); ``spare_stage``: a second staging
    buffer fills while a full one is written (:meth:`stage`), within the same bytes."""

    def __init__(
        self,
        directory: SpillDir | MemoryRuns,
        stage_bytes: int,
        mults: U64 | None = None,
        *,
        spare_stage: bool = False,
    ) -> None:
        self.dir = directory
        self.mults = mults if mults is not None else draw_multipliers()
        # the staged records (and the one being written), the flush's sorted copy, its
        # fingerprints and order
        stages = 3 if spare_stage else 2
        self._capacity = max(64, stage_bytes // (stages * RECORD + 24))
        self._stage: U64 = np.empty((self._capacity, 5), dtype=np.uint64)
        self._staged = 0

    def add(self, rows: U64) -> None:
        """Add versions: (n, 5) rows of their pubkeys' four words and their locators."""
        for full in self.stage(rows):
            self.write(full)

    def stage(self, rows: U64) -> list[U64]:
        """Stage versions (as :meth:`add`) without writing: the staging buffers that filled,
        in order, each to be written with :meth:`write` (then let go of); a new one is
        staged into meanwhile. The caller keeps one at most waiting (with ``spare_stage``)."""
        full: list[U64] = []
        at = 0
        while at < len(rows):
            take = min(len(rows) - at, self._capacity - self._staged)
            self._stage[self._staged : self._staged + take] = rows[at : at + take]
            self._staged += take
            at += take
            if self._staged == self._capacity:
                full.append(self._stage)
                self._stage = np.empty_like(self._stage)
                self._staged = 0
        return full

    def write(self, rows: U64) -> None:
        """Write staged records (a buffer :meth:`stage` gave) to their partitions' runs."""
        self._write(rows, "p", 0)

    @property
    def on_disk(self) -> bool:
        """True once its runs are files (:meth:`to_disk`)."""
        return isinstance(self.dir, SpillDir)

    @property
    def staged_bytes(self) -> int:
        """The bytes of its staging buffer."""
        return self._stage.nbytes

    def to_disk(self, directory: SpillDir) -> None:
        """Move the runs held in memory to files of ``directory`` and go on there (NoRoom
        when they do not fit: then the runs stay where they were)."""
        held = self.dir
        if not isinstance(held, MemoryRuns):
            return
        try:
            directory.need(held.written)
            for name in held.names():
                for piece in held.pieces(name, 1 << 24):
                    directory.append(name, piece)
            self.dir = directory  # before the runs held go: the proof's close removes it now
        except BaseException:
            if self.dir is not directory:
                directory.remove()
            raise
        held.remove()

    def seal(self) -> None:
        """Write the staged records to their runs and let go of the staging buffer: no more
        records come (idempotent)."""
        self.flush()
        self._stage = np.empty((0, 5), dtype=np.uint64)

    def flush(self) -> None:
        """Write the staged records to their partitions' run files."""
        if not self._staged:
            return
        self._write(self._stage[: self._staged], "p", 0)
        self._staged = 0

    def _write(self, rows: U64, prefix: str, level: int) -> None:
        shift = np.uint64(64 - _BITS * (level + 1))
        parts = ((fingerprints(rows[:, :4], self.mults) >> shift) & np.uint64(FANOUT - 1)).astype(
            np.uint8
        )
        # one pass in order, each row to its partition's next place (a compiled counting sort:
        # 2-3x faster than argsort and np.take, which read the rows at random)
        ordered, bounds = kernels.group_rows(rows, parts, FANOUT)
        for part in range(FANOUT):
            lo, hi = int(bounds[part]), int(bounds[part + 1])
            if hi > lo:
                self.dir.append(f"{prefix}{part:02d}", ordered[lo:hi])

    def superseded_runs(
        self,
        storage_slots: U64,
        memory: int,
        twice: Callable[[U64, int], None],
        threads: int = 1,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """Deduplicate every partition within ``memory`` bytes (splitting those that do
        not fit), appending the superseded versions that counted to the run file ``s``;
        ``twice(key, locator)`` is told of a pubkey stored twice in one slot (it raises).
        ``threads`` partitions at once, each within its share of ``memory`` (numpy's sorts
        and reads release the GIL; the hashing processes are idle by then), as many as
        keep :data:`MIN_SHARE` each (:func:`dedup_threads`). Once ``cancelled()`` (asked
        before each partition) ArchiveInvalid("check cancelled"), as the second read's: a
        spilled mainnet full sorts for minutes, and a stopping interpreter waits for every
        partition queued to its threads (``concurrent.futures`` joins them at exit)."""
        self.seal()
        largest = max(self.dir.size(f"p{part:02d}") for part in range(FANOUT))
        threads = dedup_threads(threads, memory, largest)
        share = memory // threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="accounts-dedup")
        try:
            done = [
                pool.submit(
                    self._partition, f"p{part:02d}", 0, storage_slots, share, twice, cancelled
                )
                for part in range(FANOUT)
            ]
            for future in done:
                future.result()  # the first failure raises; the rest are not started
        finally:
            pool.shutdown(cancel_futures=True)

    def _partition(
        self,
        name: str,
        level: int,
        storage_slots: U64,
        memory: int,
        twice: Callable[[U64, int], None],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        if cancelled is not None and cancelled():
            raise ArchiveInvalid(CANCELLED)  # the first failure: those not begun never are
        size = self.dir.size(name)
        if not size:
            return
        if size // RECORD * DEDUP_COST > memory:
            if level + 1 >= MAX_LEVEL:
                self._unsplittable(name, storage_slots, memory, twice)
            step = max(RECORD, memory // (2 * DEDUP_COST) * RECORD)
            for piece in self.dir.pieces(name, step):
                self._write(piece.reshape(-1, 5), f"{name}.", level + 1)
            self.dir.delete(name)
            for part in range(FANOUT):
                sub = f"{name}.{part:02d}"
                self._partition(sub, level + 1, storage_slots, memory, twice, cancelled)
            return
        rows = self.dir.read(name).reshape(-1, 5)
        self.dir.delete(name)
        keys = rows[:, :4]
        counted, at = superseded_of(keys, rows[:, 4], storage_slots, self.mults)
        if at is not None:
            twice(keys[at], int(rows[at, 4]))
        self.dir.append("s", counted)

    def _unsplittable(
        self, name: str, storage_slots: U64, memory: int, twice: Callable[[U64, int], None]
    ) -> None:
        """Run ``name`` shares its whole fingerprint (one pubkey, as a rule) and passes
        ``memory``: no split makes it fit. Each piece that fits is looked at for a pubkey
        stored twice in one slot (``twice`` refuses the archive: a few kilobytes of one
        account stored a million times in one storage are that, not a shortage of ours);
        otherwise NoRoom, not of the tracker's own cause (more room than any budget)."""
        step = max(RECORD, memory // (2 * DEDUP_COST) * RECORD)
        for piece in self.dir.pieces(name, step):
            rows = piece.reshape(-1, 5)
            _counted, at = superseded_of(rows[:, :4], rows[:, 4], storage_slots, self.mults)
            if at is not None:
                twice(rows[at, :4], int(rows[at, 4]))
        raise NoRoom("not proven: one pubkey's versions pass the memory of the proof", local=False)

    def superseded_in_order(self, storages: int, memory: int) -> Iterator[U64]:
        """The superseded locators of run file ``s``, sorted, in pieces of at most
        ``memory`` bytes' worth that follow each other in storage order."""
        total = self.dir.size("s") // 8
        if not total:
            return
        if total * 16 <= memory:
            found = self.dir.read("s")
            self.dir.delete("s")
            yield np.sort(found)
            return
        ranges = min(max(1, storages), -(-total * 32 // memory))
        step = max(8, memory // 4 // 8 * 8)
        for found in self.dir.pieces("s", step):
            numbers = (found >> np.uint64(32)).astype(np.int64)
            group = numbers * ranges // max(1, storages)
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(ranges + 1))
            for r in range(ranges):
                lo, hi = int(bounds[r]), int(bounds[r + 1])
                if hi > lo:
                    self.dir.append(f"s{r}", found[order[lo:hi]])
        self.dir.delete("s")
        for r in range(ranges):
            if self.dir.size(f"s{r}"):
                found = self.dir.read(f"s{r}")
                self.dir.delete(f"s{r}")
                yield np.sort(found)
