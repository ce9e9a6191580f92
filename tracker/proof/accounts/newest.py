"""The second read: what the first left of the newest versions' hashes. Pure.

The first read indexes every stored version, and hashes ahead the versions with lamports of
each storage while a hashing process has room for them: a storage's records from its start up
to where a process first had none (:attr:`Stored.ahead`; docs/architecture.md, "The accounts
level" → "Hashing ahead"). Once it is over, which versions a newer one superseded is known
(their locators: a storage's number and an offset, :mod:`tracker.proof.accounts.spill`).
:func:`hash_newest` then reads the storages again, in the order they came, with the same
parser as the first read (:func:`tracker.proof.formats.storages.parse_storage`), and hands the
summer every record with lamports past ``ahead`` that is not superseded, to add, and every
superseded one before it, to take out: each account's newest version is in the sum exactly
once. A storage the first read hashed whole, with no superseded version, is not read again.
What the second read finds is held to the first: as many records in each storage, a record at
every superseded locator; a file that changed in between is refused, never proven.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import attrs
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import Summer, lane_sum
from tracker.proof.formats.parsing import MARK, Parser
from tracker.proof.formats.storages import Records, Sink, parse_storage
from tracker.proof.formats.streamparse import Feeder

#: ``reread(member, start)``: the bytes of a storage member's data from byte ``start`` on,
#: as an iterable of chunks (closed, when it has ``close``, once enough came).
Reread = Callable[[str, int], Iterable[bytes | memoryview]]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_NONE: I64 = np.zeros(0, dtype=np.int64)


def member_name(slot: int, ident: int) -> str:
    """The tar member of a storage."""
    return f"accounts/{slot}.{ident}"


#: :attr:`Stored.ahead` of a storage whose every record the first read hashed.
WHOLE = (1 << 64) - 1


@attrs.frozen
class Stored:
    """A storage as the first read found it: its member's name and size, its valid bytes
    (the manifest's ``accounts_current_len``), the records they held, and the storage offset
    from which the first read hashed none of them ahead (:data:`WHOLE`: it hashed them all)."""

    name: str
    size: int
    valid: int
    records: int
    ahead: int = WHOLE


class StorageTable:
    """The storages the first read found, in the order they came, numbered from 0: 48 bytes
    each (slot, id, size, valid bytes, records, where hashing ahead stopped), whatever their
    number (a mainnet full holds hundreds of thousands)."""

    def __init__(self) -> None:
        self._rows: U64 = np.zeros((64, 6), dtype=np.uint64)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, slot: int, ident: int, size: int, valid: int) -> int:
        """A storage's number, its records not counted yet (:meth:`counted`)."""
        if self._count == len(self._rows):
            self._rows = np.concatenate((self._rows, np.zeros_like(self._rows)))
        self._rows[self._count] = (slot, ident, size, valid, 0, WHOLE)
        self._count += 1
        return self._count - 1

    def hashing_ahead(self, number: int) -> bool:
        """True while the first read has hashed every record of storage ``number`` so far."""
        return int(self._rows[number, 5]) == WHOLE

    def stop_ahead(self, number: int, offset: int) -> None:
        """The first read hashes no more of storage ``number`` ahead, from its ``offset`` on."""
        self._rows[number, 5] = offset

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
        for number in range(self._count):
            _, _, size, valid, records, ahead = self._rows[number].tolist()
            yield Stored(self.name(number), size, valid, records, ahead)


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
) -> None:
    """Read the storages of ``storages`` again (``reread``) and hand ``summer`` what the
    first read left of the sum (see the module): the hash of each record with lamports past
    the storage's ``ahead`` whose locator ``superseded`` (sorted pieces, in storage order)
    does not name, to add; of each before it that it names, to take out. ``hashed(n)`` is
    told how many newest versions each batch added to the sum (less those taken out), for the
    progress. Raises ArchiveInvalid when a storage reads otherwise than it did the first
    time."""
    pending = by_storage(superseded)
    upcoming = next(pending, None)
    for number, stored in enumerate(storages):
        skip = _NONE
        if upcoming is not None and upcoming[0] == number:
            skip = upcoming[1]
            upcoming = next(pending, None)
        if stored.valid and (len(skip) or stored.ahead < stored.valid):
            _hash_storage(stored, skip, reread, summer, hashed)
    if upcoming is not None:  # the index named a storage the proof never had
        raise ArchiveInvalid(f"second read: no storage number {upcoming[0]}")


def _hash_storage(
    stored: Stored,
    skip: I64,
    reread: Reread,
    summer: Summer,
    hashed: Callable[[int], None] | None,
) -> None:
    """Hash the records of one storage with lamports: past ``stored.ahead`` those not at
    ``skip``, to add; before it those at ``skip``, to take out."""
    found = records = 0  # superseded versions met, records met

    def sink(batch: Records) -> None:
        nonlocal found, records
        records += len(batch)
        counts = batch.lamports() != 0
        at = batch.offsets + batch.base
        early = at < stored.ahead if stored.ahead != WHOLE else np.ones(len(at), dtype=bool)
        if len(skip):
            places = np.searchsorted(skip, at)
            there = skip[np.minimum(places, len(skip) - 1)] == at
            found += int(there.sum())
            taken_out = np.flatnonzero(counts & there & early)
            lane_sum(batch, taken_out, summer, negative=True)
            counts &= ~there
        else:
            taken_out = _NONE
        chosen = np.flatnonzero(counts & ~early)
        lane_sum(batch, chosen, summer)
        if hashed is not None:
            hashed(len(chosen) - len(taken_out))

    feeder = Feeder(_whole(stored, sink))
    chunks = reread(stored.name, 0)
    try:
        for chunk in chunks:
            feeder.feed(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    feeder.finish()
    if records != stored.records or found != len(skip):
        raise ArchiveInvalid(
            f"{stored.name}: the second read differs from the first ({records} records, "
            f"{stored.records} the first time)"
        )


def _whole(stored: Stored, sink: Sink) -> Parser:
    """The storage's parser, then the end: a byte past the member's size is refused."""
    yield from parse_storage(stored.name, stored.size, stored.valid, sink)
    yield MARK
    raise ArchiveInvalid(f"{stored.name}: the second read gives more than {stored.size} bytes")
