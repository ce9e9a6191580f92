"""The second read: what the first left of the newest versions' hashes. Pure.

The first read indexes every stored version, and hashes ahead the versions with lamports of
each batch a hashing process has room for; the batches it had none for are left to the second
read (:attr:`Stored.left`, ranges of record offsets; docs/architecture.md, "The accounts level"
→ "Hashing ahead"). Once it is over, which versions a newer one superseded is known (their
locators: a storage's number and an offset, :mod:`tracker.proof.accounts.spill`).
:func:`hash_newest` then reads the storages again, in the order they came, with the same parser
as the first read (:func:`tracker.proof.formats.storages.parse_storage`), and hands the summer
every record with lamports left to it that is not superseded, to add, and every superseded one
hashed ahead, to take out: each account's newest version is in the sum exactly once. A
storage the first read hashed whole, with no superseded version, is not read again.
What the second read finds is held to the first: as many records in each storage, a record at
every superseded locator; a file that changed in between is refused, never proven.

With :class:`ScanLanes` (the first read's scan lanes, from three cores) the calling thread only
walks the archive and hands each storage's pieces to a lane, which parses them and hands the
summer their messages under the lanes' lock, as the first read's lanes do: the calling
thread's part, the second read's serial chain, is the walk alone (docs/architecture.md, "The
accounts level" → "Every core"). With :class:`StorageProcesses` (the first read's scan
processes) it sends each storage's valid bytes to a process, which makes the same choice
(:func:`second_choice`) and hashes there. A refusal is the serial reading's: the first
storage's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import attrs
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import Summer, lane_sum
from tracker.proof.formats.parsing import MARK, BulkPiece, Parser
from tracker.proof.formats.storages import Records, Sink, parse_storage, storage_pieces
from tracker.proof.formats.streamparse import Feeder

#: ``reread(member, start)``: the bytes of a storage member's data from byte ``start`` on,
#: as an iterable of chunks (closed, when it has ``close``, once enough came).
Reread = Callable[[str, int], Iterable[bytes | memoryview]]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_NONE: I64 = np.zeros(0, dtype=np.int64)


class ScanLanes(Protocol):
    """Where the second read parses storages apart (``AccountsProof``'s scan lanes)."""

    #: held while a storage's batch goes to the summer (and its ``hashed``)
    lock: threading.Lock

    def hand(self, number: int) -> Callable[[Callable[[], None]], None]:
        """What runs the jobs of storage ``number``, in order, in one lane (a job that raises
        is the storage's refusal, raised by a later hand-over or :meth:`settle`)."""

    def settle(self) -> None:
        """Wait for every job handed so far; raise the first storage's refusal, if any."""


class StorageProcesses(Protocol):
    """Where the second read's storages are parsed and hashed in processes of their own
    (the first read's scan processes, :mod:`.scanprocs`; ``AccountsProof`` is one)."""

    def rescan(
        self, number: int, stored: Stored, skip: I64, keep: I64
    ) -> Callable[[BulkPiece], None]:
        """Storage ``number``'s second read begins (``skip``, ``keep``: as
        :func:`second_choice` takes them): what takes its valid bytes, a piece at a time."""

    def rescanned(self, number: int) -> None:
        """Every valid byte of storage ``number`` was taken."""

    def settle(self) -> None:
        """Wait for every storage sent so far; raise the first storage's refusal, if any."""

    @property
    def stopped(self) -> bool:
        """True once the proof cannot end whatever comes (a process failed): the second
        read reads no more."""


def member_name(slot: int, ident: int) -> str:
    """The tar member of a storage."""
    return f"accounts/{slot}.{ident}"


@attrs.frozen
class Stored:
    """A storage as the first read found it: its member's name and size, its valid bytes
    (the manifest's ``accounts_current_len``), the records they held, and the records it did
    not hash ahead: ``left``, (n, 2) ranges of record offsets, first and last record of each
    (none: it hashed them all)."""

    name: str
    size: int
    valid: int
    records: int
    left: U64 = attrs.field(factory=lambda: np.zeros((0, 2), dtype=np.uint64), eq=False)


class StorageTable:
    """The storages the first read found, in the order they came, numbered from 0: 48 bytes
    each (slot, id, size, valid bytes, records, ranges left to the second read), whatever
    their number (a mainnet full holds hundreds of thousands), and 24 bytes a range of
    batches the first read did not hash ahead (consecutive ones joined): at most one a batch
    of 4 MiB, ~25,000 for a mainnet full. The ranges of different storages may come
    interleaved (the first read's scan lanes); each storage's own come in order."""

    def __init__(self) -> None:
        self._rows: U64 = np.zeros((64, 6), dtype=np.uint64)
        self._count = 0
        self._left: U64 = np.zeros((64, 3), dtype=np.uint64)  # number, first, last
        self._lefts = 0
        self._open: int | None = None  # the storage whose last batch was left: its range grows

    def __len__(self) -> int:
        return self._count

    def add(self, slot: int, ident: int, size: int, valid: int) -> int:
        """A storage's number, its records not counted yet (:meth:`counted`)."""
        if self._count == len(self._rows):
            self._rows = np.concatenate((self._rows, np.zeros_like(self._rows)))
        self._rows[self._count] = (slot, ident, size, valid, 0, 0)
        self._count += 1
        self._open = None
        return self._count - 1

    def hashed_ahead(self) -> None:
        """The batch the first read just read was hashed ahead."""
        self._open = None

    def left(self, number: int, first: int, last: int) -> None:
        """The batch of storage ``number`` whose records start from ``first`` to ``last`` was
        not hashed ahead: the second read hashes it."""
        if self._open == number:
            self._left[self._lefts - 1, 2] = last
            return
        if self._lefts == len(self._left):
            self._left = np.concatenate((self._left, np.zeros_like(self._left)))
        self._left[self._lefts] = (number, first, last)
        self._lefts += 1
        self._rows[number, 5] += 1
        self._open = number

    def counted(self, number: int, records: int) -> None:
        """The records storage ``number`` held."""
        self._rows[number, 4] = records

    def slots(self) -> U64:
        """Every storage's slot, by number."""
        slots: U64 = self._rows[: self._count, 0]
        return slots

    def name(self, number: int) -> str:
        """Storage ``number``'s member name."""
        slot, ident = self._rows[number, :2].tolist()
        return member_name(slot, ident)

    def __iter__(self) -> Iterator[Stored]:
        # each storage's ranges together, in the order they came (a stable sort by number)
        left = self._left[: self._lefts]
        ranges = left[np.argsort(left[:, 0], kind="stable"), 1:]
        at = 0
        for number in range(self._count):
            _, _, size, valid, records, lefts = self._rows[number].tolist()
            yield Stored(self.name(number), size, valid, records, ranges[at : at + lefts])
            at += lefts


def locator_offsets(locators: U64) -> I64:
    """The storage offsets of ``locators`` (``number << 32 | offset / 8 << 1 | counts``)."""
    offsets: I64 = ((locators & np.uint64(0xFFFFFFFF)) >> np.uint64(1)).astype(np.int64) << 3
    return offsets


def by_storage(superseded: Iterable[U64]) -> Iterator[tuple[int, I64]]:
    """Each storage's number with the sorted offsets of its superseded versions, from
    ``superseded``: sorted pieces of locators that follow each other in storage order."""
    for piece in superseded:
        if not len(piece):
            continue
        numbers = (piece >> np.uint64(32)).astype(np.int64)
        offsets = locator_offsets(piece)
        bounds = [0, *(np.flatnonzero(np.diff(numbers)) + 1).tolist(), len(piece)]
        for lo, hi in itertools.pairwise(bounds):
            yield int(numbers[lo]), offsets[lo:hi]


def hash_newest(
    storages: Iterable[Stored],
    superseded: Iterable[U64],
    reread: Reread,
    summer: Summer,
    hashed: Callable[[int], None] | None = None,
    lanes: ScanLanes | None = None,
    kept: Iterable[U64] = (),
    processes: StorageProcesses | None = None,
) -> None:
    """Read the storages of ``storages`` again (``reread``) and hand ``summer`` what the
    first read left of the sum (see the module): the hash of each record with lamports in the
    storage's ``left`` ranges whose locator ``superseded`` (sorted pieces, in storage order)
    does not name, to add; of each outside them that it names, to take out. ``hashed(n)`` is
    told how many newest versions each batch added to the sum (less those taken out), for the
    progress. Raises ArchiveInvalid when a storage reads otherwise than it did the first
    time. With ``lanes`` the storages are parsed there (see the module). ``kept`` (sorted
    pieces of locators, in storage order) names the versions the first read hashed where they
    lay and kept the hashes of (``AccountsProof``, "Large accounts"): in the sum already,
    whatever range they lie in, and left out of ``superseded`` by the caller, which takes
    their kept hashes out itself. With ``processes`` (instead of ``lanes``) each storage's
    valid bytes are sent to a process that parses and hashes them: this thread only walks,
    and stops once ``processes.stopped`` (its note is the proof's verdict); without, once
    ``summer.stopped`` (a hashing process failed: :meth:`Summer.total` gives the note)."""
    apart = processes if processes is not None else lanes

    def stopped() -> bool:
        # what failed decides the proof, not proven: what is left to read counts for nothing
        return processes.stopped if processes is not None else summer.stopped

    pending = by_storage(superseded)
    upcoming = next(pending, None)
    keeping = by_storage(kept)
    keep_next = next(keeping, None)
    try:
        for number, stored in enumerate(storages):
            if stopped():
                # a scan or hashing process failed: the proof is not proven whatever the
                # rest holds, and reading on decoded the archive to its end again only to
                # drop each piece (docs/architecture.md, "The accounts level" → "Every core")
                break
            skip = _NONE
            if upcoming is not None and upcoming[0] == number:
                skip = upcoming[1]
                upcoming = next(pending, None)
            keep = _NONE
            while keep_next is not None and keep_next[0] <= number:
                if keep_next[0] == number:
                    keep = keep_next[1]
                keep_next = next(keeping, None)
            if stored.valid and (len(skip) or len(stored.left)):
                if processes is not None:
                    _send_storage(number, stored, skip, reread, processes, keep)
                elif lanes is not None:
                    _hand_storage(number, stored, skip, reread, summer, hashed, lanes, keep)
                else:
                    _hash_storage(stored, skip, reread, summer, hashed, keep)
    except Exception:
        if apart is not None:
            apart.settle()  # a storage the walk went past refuses first
        raise
    if apart is not None:
        apart.settle()
    if stopped():
        return  # the storages after it were never read
    if upcoming is not None:  # the index named a storage the proof never had
        raise ArchiveInvalid(f"second read: no storage number {upcoming[0]}")


def _hash_storage(
    stored: Stored,
    skip: I64,
    reread: Reread,
    summer: Summer,
    hashed: Callable[[int], None] | None,
    keep: I64 = _NONE,
) -> None:
    """Hash the records of one storage with lamports: in ``stored.left`` those not at
    ``skip`` nor at ``keep``, to add; outside it those at ``skip``, to take out. Stops at
    the chunk in hand once ``summer.stopped`` (the storage then unchecked: no verdict)."""
    storage = _StorageHash(stored, skip, summer, hashed, None, keep)
    if _read_again(reread, stored.name, storage.feed, lambda: summer.stopped):
        storage.finish()


def _hand_storage(
    number: int,
    stored: Stored,
    skip: I64,
    reread: Reread,
    summer: Summer,
    hashed: Callable[[int], None] | None,
    lanes: ScanLanes,
    keep: I64 = _NONE,
) -> None:
    """:func:`_hash_storage` in a lane: this thread reads the storage's pieces (immutable:
    bytes, or views of a decoded frame's bytes) and hands them on, as long as
    ``summer.stopped`` is not."""
    storage = _StorageHash(stored, skip, summer, hashed, lanes.lock, keep)
    put = lanes.hand(number)

    def hand(chunk: bytes | memoryview) -> None:
        put(functools.partial(storage.feed, chunk))

    if _read_again(reread, stored.name, hand, lambda: summer.stopped):
        put(storage.finish)


def _send_storage(
    number: int,
    stored: Stored,
    skip: I64,
    reread: Reread,
    processes: StorageProcesses,
    keep: I64 = _NONE,
) -> None:
    """:func:`_hash_storage` in a process: this thread reads the storage, checks its bounds
    and sends its valid bytes on; the process parses them and hashes (``processes``)."""
    take = processes.rescan(number, stored, skip, keep)
    feeder = Feeder(_valid_pieces(stored, take))
    if _read_again(reread, stored.name, feeder.feed, lambda: processes.stopped):
        feeder.finish()
        processes.rescanned(number)


def _never() -> bool:
    return False


def _read_again(
    reread: Reread,
    name: str,
    take: Callable[[bytes | memoryview], None],
    stopped: Callable[[], bool] = _never,
) -> bool:
    """Each chunk of the storage member ``name`` read again, handed to ``take`` in order,
    until ``stopped()`` (asked before each: False then, True once it was read whole); the
    chunks closed (when they can be) however it ends."""
    chunks = reread(name, 0)
    try:
        for chunk in chunks:
            if stopped():
                return False
            take(chunk)
        return True
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class _StorageHash:
    """One storage's second read: its pieces fed in order (:meth:`feed`), then
    :meth:`finish`; its batches handed to ``summer`` under ``lock`` (None: none needed)."""

    def __init__(
        self,
        stored: Stored,
        skip: I64,
        summer: Summer,
        hashed: Callable[[int], None] | None,
        lock: threading.Lock | None,
        keep: I64 = _NONE,
    ) -> None:
        self.stored = stored
        self.skip = skip
        self.keep = keep  # in the sum already, their hashes kept: never added nor taken out
        self.summer = summer
        self.hashed = hashed
        self.lock = lock
        self.found = 0  # superseded versions met
        self.records = 0  # records met
        self.feeder = Feeder(_whole(stored, self._sink))

    def feed(self, chunk: bytes | memoryview) -> None:
        """The storage's next piece."""
        self.feeder.feed(chunk)

    def finish(self) -> None:
        """The storage's end: ArchiveInvalid unless it read as the first time."""
        self.feeder.finish()
        check_reread(
            self.stored.name, self.stored.records, self.records, self.found, len(self.skip)
        )

    def _sink(self, batch: Records) -> None:
        self.records += len(batch)
        stored = self.stored
        _, _, found = rehash(
            batch, stored.left, self.skip, self.keep, self.summer, self.lock, self.hashed
        )
        self.found += found


def rehash(
    batch: Records,
    left: U64,
    skip: I64,
    keep: I64,
    summer: Summer,
    lock: threading.Lock | None = None,
    hashed: Callable[[int], None] | None = None,
) -> tuple[int, int, int]:
    """One batch of a storage read again, as :func:`second_choice` says, handed to ``summer``
    under ``lock`` (None: none needed): those to take out, then those to add; ``hashed``
    told the difference, under the lock too. Returns how many it added and took out, and
    how many superseded versions it met: in this thread, a scan lane or a scan process."""
    chosen, taken_out, found = second_choice(
        batch.offsets + batch.base, batch.lamports() != 0, left, skip, keep
    )
    with lock if lock is not None else contextlib.nullcontext():
        if len(taken_out):
            lane_sum(batch, taken_out, summer, negative=True)
        lane_sum(batch, chosen, summer)
        if hashed is not None:
            hashed(len(chosen) - len(taken_out))
    return len(chosen), len(taken_out), found


def check_reread(name: str, first: int, records: int, found: int, superseded: int) -> None:
    """ArchiveInvalid unless storage ``name`` read again held as many ``records`` as the
    first read found in it (``first``) and a record at each of its ``superseded`` versions'
    offsets (``found``)."""
    if records != first or found != superseded:
        raise ArchiveInvalid(
            f"{name}: the second read differs from the first ({records} records, "
            f"{first} the first time)"
        )


def second_choice(
    at: I64, counts: npt.NDArray[np.bool_], left: U64, skip: I64, keep: I64 = _NONE
) -> tuple[I64, I64, int]:
    """What the second read does with a batch of one storage, its records at the storage
    offsets ``at``, ``counts`` those with lamports (the array is the caller's no more):
    the records to add (in ``left``, the ranges the first read did not hash ahead, neither
    superseded, at ``skip``, nor kept, at ``keep``), those to take out (hashed ahead and
    superseded), and how many superseded ones it met (each sorted array of offsets)."""
    if len(keep):
        places = np.searchsorted(keep, at)
        counts &= keep[np.minimum(places, len(keep) - 1)] != at
    early = ~_within(at, left)  # hashed ahead by the first read
    found = 0
    taken_out = _NONE
    if len(skip):
        places = np.searchsorted(skip, at)
        there = skip[np.minimum(places, len(skip) - 1)] == at
        found = int(there.sum())
        taken_out = np.flatnonzero(counts & there & early)
        counts &= ~there
    return np.flatnonzero(counts & ~early), taken_out, found


def _within(offsets: I64, ranges: U64) -> npt.NDArray[np.bool_]:
    """Which of ``offsets`` lie in one of ``ranges`` (sorted, apart: first and last, both
    in)."""
    if not len(ranges):
        return np.zeros(len(offsets), dtype=bool)
    at = offsets.astype(np.uint64)
    place = np.searchsorted(ranges[:, 0], at, side="right") - 1
    inside: npt.NDArray[np.bool_] = (place >= 0) & (at <= ranges[np.maximum(place, 0), 1])
    return inside


def _whole(stored: Stored, sink: Sink) -> Parser:
    """The storage's parser, then the end: a byte past the member's size is refused."""
    yield from parse_storage(stored.name, stored.size, stored.valid, sink)
    yield from _past_end(stored)


def _valid_pieces(stored: Stored, take: Callable[[BulkPiece], None]) -> Parser:
    """:func:`_whole` with the valid bytes handed to ``take`` unparsed."""
    yield from storage_pieces(stored.name, stored.size, stored.valid, take)
    yield from _past_end(stored)


def _past_end(stored: Stored) -> Parser:
    yield MARK
    raise ArchiveInvalid(f"{stored.name}: the second read gives more than {stored.size} bytes")
