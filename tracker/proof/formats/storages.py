"""Agave's account storages (append vecs), read as they stream by. Pure.

An archive's ``accounts/{slot}.{id}`` member is one storage: records laid end to end, each
starting at a multiple of 8 (docs/architecture.md, "Proven archives" → "The accounts level",
cites agave's ``accounts-db/src/append_vec.rs`` and ``account_storage/meta.rs``)::

    StoredMeta   write_version u64 | data_len u64 | pubkey [32]              48 bytes
    AccountMeta  lamports u64 | rent_epoch u64 | owner [32] | executable u8
                 | 7 bytes of padding                                         56 bytes
    hash         32 bytes, obsolete                                           32 bytes
    data         data_len bytes, then zeros up to the next multiple of 8

Only the first ``accounts_current_len`` bytes (from the manifest) hold records; the rest of
the file is spare capacity. Agave refuses a storage whose records do not end exactly at that
length (rounded up to 8), a data length over 10 MiB, or an executable byte other than 0 or 1;
so does :func:`parse_storage`, with a one-line reason naming the member.

:func:`parse_storage` is a parser of the request protocol (:mod:`tracker.proof.formats.parsing`)
that consumes exactly the member's ``size`` bytes. It reads the valid part in pieces of at most
:data:`PIECE` bytes (plus the one record that straddles two pieces, at most 10 MiB), finds
the records' offsets in one compiled loop (:mod:`tracker.proof.formats.kernels`), and hands them to
its sink as a :class:`Records` batch: every field is then a numpy view over the piece, never a
Python object per record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid, EndOfInput
from tracker.proof.formats import kernels
from tracker.proof.formats.parsing import Bulk, BulkPiece, ParserOf, joined

#: Fixed bytes of a record before its data (agave's STORE_META_OVERHEAD).
META = 136
#: The most data one account holds (agave's MAX_PERMITTED_DATA_LENGTH, 10 MiB).
MAX_DATA = 10 * 1024 * 1024
#: The largest storage file agave opens (MAXIMUM_APPEND_VEC_FILE_SIZE, 16 GiB).
MAX_STORAGE = 16 * 1024**3
#: Valid bytes asked for at once (the records found in them form one batch).
PIECE = 4 * 1024 * 1024

# Field offsets within a record.
DATA_LEN = 8
PUBKEY = 16
LAMPORTS = 48
RENT_EPOCH = 56
OWNER = 64
EXECUTABLE = 96

_U64 = struct.Struct("<Q")
_INDEX_FIELDS = np.array([PUBKEY, LAMPORTS], dtype=np.int64)


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return (n + 7) & ~7


@attrs.frozen
class Records:
    """The records found in one piece of a storage.

    ``buf`` holds the piece's bytes; ``offsets`` (int64) where each record starts in ``buf``,
    ``data_lens`` (int64) its data length; ``base`` is the offset of ``buf[0]`` in the storage
    file, so that ``base + offsets`` locate the records in it (for a second read).
    """

    buf: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    data_lens: npt.NDArray[np.int64]
    base: int

    def __len__(self) -> int:
        return len(self.offsets)

    def field(self, at: int, width: int) -> npt.NDArray[np.uint8]:
        """The ``width`` bytes at ``at`` of every record, as an (n, width) array."""
        index = self.offsets[:, None] + np.arange(at, at + width, dtype=np.int64)
        taken: npt.NDArray[np.uint8] = self.buf[index]
        return taken

    def lamports(self) -> npt.NDArray[np.uint64]:
        """Every record's lamports."""
        if not len(self.offsets):
            return np.zeros(0, dtype=np.uint64)
        shift, words = self._words()
        lamports: npt.NDArray[np.uint64] = words[(self.offsets + LAMPORTS - shift) >> 3]
        return lamports

    def index_rows(self, head: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Every record's pubkey as four little-endian u64 words and its locator, ``head |
        offset / 8 << 1 | counts`` (its offset in the storage file; ``counts``: lamports
        other than zero), as (n, 5) rows, and the counts: one compiled pass
        (:func:`tracker.proof.formats.kernels.index_rows`)."""
        if not len(self.offsets):
            return np.zeros((0, 5), dtype=np.uint64), np.zeros(0, dtype=np.bool_)
        shift, words = self._words()
        rows, counts = kernels.index_rows(
            words, self.offsets, shift, self.base, np.uint64(head), _INDEX_FIELDS
        )
        return rows, counts

    def _words(self) -> tuple[int, npt.NDArray[np.uint64]]:
        """The piece as little-endian u64 words from where its records start modulo 8 (every
        record of a piece starts at the same offset modulo 8: its u64 fields are words), and
        that offset; there is at least one record."""
        shift = int(self.offsets[0]) % 8
        words: npt.NDArray[np.uint64] = np.frombuffer(
            self.buf, dtype="<u8", offset=shift, count=(len(self.buf) - shift) // 8
        )
        return shift, words

    def pubkeys(self) -> npt.NDArray[np.uint8]:
        """Every record's pubkey, (n, 32)."""
        return self.field(PUBKEY, 32)


Sink = Callable[[Records], None]


def scan(
    buf: npt.NDArray[np.uint8], start: int, end: int, at: int, name: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """The records wholly within ``buf[start:end]``: their offsets, data lengths, and the
    offset where the first record not wholly there starts. ``at`` is the storage offset of
    ``buf[0]`` (for reasons). A data length over :data:`MAX_DATA` is refused, as is an
    executable byte neither 0 nor 1 (agave's ``sanitize_executable``) and a record of no
    lamports that is not the default account (``sanitize_lamports``: agave refuses the
    storage at load; such a record counts nothing in the lattice hash, so it would hide
    anything), or that has the default pubkey (agave's ``scan_stored_accounts_no_data``
    stops there, "we passed the last useful account": the records end before the valid
    length, and ``sanitize_layout_and_length`` refuses the storage). One compiled loop
    (:func:`tracker.proof.formats.kernels.scan`)."""
    offsets, lens, stop, bad = kernels.scan(
        buf, start, min(end, len(buf)), at, META, MAX_DATA, EXECUTABLE, LAMPORTS, PUBKEY
    )
    if bad >= 0:
        (data_len,) = _U64.unpack_from(buf.data, bad + DATA_LEN)
        where = f"{name}: the record at byte {at + bad}"
        if data_len > MAX_DATA:
            raise ArchiveInvalid(f"{where} claims {data_len} bytes of data (at most {MAX_DATA})")
        executable = int(buf[bad + EXECUTABLE])
        if executable > 1:
            raise ArchiveInvalid(f"{where} has executable byte {executable} (0 or 1)")
        if not buf[bad + PUBKEY : bad + PUBKEY + 32].any():
            raise ArchiveInvalid(
                f"{where} has no lamports and the default pubkey: agave's scan of the storage"
                " stops there, before its valid length, and refuses it at load"
            )
        raise ArchiveInvalid(
            f"{where} has no lamports but is not the default account (no data, not"
            " executable, rent epoch 0, owner zero): agave refuses it at load"
        )
    return offsets, lens, int(stop)


class StorageScan:
    """The records of one storage's valid bytes (``current_len`` of them), given in pieces of
    any size in order (:meth:`take`): each piece's whole records go to ``sink`` as a batch,
    a record the piece ends inside is carried to the next. The one reading of a storage,
    whether its pieces are asked for (:func:`parse_storage`) or handed over as they come
    (the first read's scan lanes, docs/architecture.md "Every core")."""

    def __init__(self, name: str, current_len: int, sink: Sink) -> None:
        self.name = name
        self.current_len = current_len
        self.sink = sink
        self.count = 0  # records found so far
        self.read = 0  # valid bytes taken so far
        self.carry: bytes | memoryview = b""  # the start of a record the last piece ended inside
        self._pos = 0  # storage offset of the next buffer's first byte
        self._skip = 0  # padding at the start of the next buffer

    def take(self, piece: BulkPiece) -> None:
        """Scan the next ``len(piece)`` valid bytes (never past ``current_len``);
        ArchiveInvalid with one line for a bad record, or when the last piece ends inside
        one. The batches are views of ``piece`` (or of it joined to the carry)."""
        carry, pos = self.carry, self._pos
        buf = joined(piece, carry)
        self.read += len(buf) - len(carry)
        end = len(buf)
        array = np.frombuffer(buf, dtype=np.uint8)
        offsets, lens, stop = scan(array, self._skip, end, pos, self.name)
        if len(offsets):
            batch = Records(array, offsets, lens, pos)
            self.sink(batch)
            self.count += len(offsets)
        if stop >= end:
            self._skip, self.carry, self._pos = stop - end, b"", pos + end
        elif self.read >= self.current_len:
            raise ArchiveInvalid(_inside_reason(self.name, buf, stop, end, pos))
        else:
            self._skip, self.carry, self._pos = 0, buf[stop:], pos + stop


def parse_storage(name: str, size: int, current_len: int, sink: Sink) -> ParserOf[int]:
    """Parse the storage ``name`` (``accounts/{slot}.{id}``, for reasons) of ``size`` bytes
    whose first ``current_len`` bytes hold records; hand the records to ``sink`` in batches
    and return their count. Consumes exactly ``size`` bytes; ArchiveInvalid with one line
    when the records do not fill exactly ``current_len`` bytes."""
    scanner = StorageScan(name, current_len, sink)
    yield from storage_pieces(name, size, current_len, scanner.take)
    return scanner.count


def storage_pieces(
    name: str, size: int, current_len: int, take: Callable[[BulkPiece], None]
) -> ParserOf[None]:
    """Ask for the ``current_len`` valid bytes of the storage member ``name`` of ``size`` bytes
    :data:`PIECE` at a time (views of the decoded chunks where they lie), hand each piece to
    ``take`` (a :class:`StorageScan`'s, here or in a scan lane), and skip the rest of the
    member. ArchiveInvalid with one line for bounds past agave's or a member cut short."""
    if current_len > size:
        raise ArchiveInvalid(
            f"{name}: the manifest's length {current_len} is past the file's {size} bytes"
        )
    if size > MAX_STORAGE:
        raise ArchiveInvalid(f"{name}: {size} bytes (a storage holds at most {MAX_STORAGE})")
    read = 0
    try:
        while read < current_len:
            want = min(PIECE, current_len - read)
            take((yield Bulk(want)))
            read += want
        rest = size - current_len
        if rest:
            yield -rest
    except EndOfInput as end_of_input:
        raise ArchiveInvalid(
            f"{name}: the member ends at byte {end_of_input.at} of its {size}"
        ) from None


def _inside_reason(name: str, buf: bytes | memoryview, stop: int, end: int, at: int) -> str:
    if end - stop < META:
        return (
            f"{name}: the storage ends inside the record at byte {at + stop} "
            f"({end - stop} bytes of its {META}-byte header)"
        )
    (data_len,) = _U64.unpack_from(buf, stop + DATA_LEN)
    return (
        f"{name}: the record at byte {at + stop} has {data_len} bytes of data, past the "
        f"storage's valid length {at + end}"
    )
