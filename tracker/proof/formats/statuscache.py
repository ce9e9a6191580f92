"""The ``version`` file and the status cache ``snapshots/status_cache``, read as agave reads
them when it loads a snapshot (docs/architecture.md, "Proven archives" → "Version and status
cache").

Sources (anza-xyz/agave; the enums from anza-xyz/solana-sdk):

- ``version``: ``snapshot_version_from_file`` (``runtime/src/snapshot_utils.rs``): at most
  ``MAX_SNAPSHOT_VERSION_FILE_SIZE`` (8) bytes, read as UTF-8, trimmed of white space; then
  ``SnapshotVersion::from_str`` (``snapshot_version.rs``): one leading ``v``/``V`` dropped,
  and the rest must be ``1.2.0``, the only version agave knows.
- the status cache: ``deserialize_status_cache`` (``runtime/src/snapshot_bank_utils.rs``):
  bincode (fixed-int, trailing bytes allowed) of ``Vec<BankSlotDelta>``, a ``BankSlotDelta``
  being ``(Slot, bool, Status<Result<(), TransactionError>>)`` and a ``Status`` a map of
  blockhash → ``(usize, Vec<([u8; 20], Result<(), TransactionError>)>)``
  (``runtime/src/status_cache.rs``); then ``verify_slot_deltas_structural``: at most
  ``MAX_CACHE_ENTRIES`` (300) entries, each a root, none for a slot above the bank's, no slot
  twice. ``verify_slot_deltas_with_history`` then holds the slots to the bank's slot history,
  an account (the SlotHistory sysvar): :mod:`tracker.proof.formats.slothistory` does, given
  the slots read here (handed on as :class:`SlotDeltas`); the bank's own slot is always in
  the history (its newest slot, set when the bank was made), so that slot's entry is
  required here already.
- ``TransactionError`` (``transaction-error/src/lib.rs``) and ``InstructionError``
  (``instruction-error/src/lib.rs``): bincode enums, a u32 variant index then the fields.

Every count is bounded by the bytes left in the member before it is used
(:class:`~tracker.proof.formats.bincode.Reader`), so a hostile count costs nothing; the
blockhashes and statuses, millions on mainnet, are read by a compiled kernel
(``kernels.skip_status``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from tracker.errors import ArchiveInvalid, EndOfInput
from tracker.proof.formats.bincode import Reader
from tracker.proof.formats.parsing import Parser, ParserOf

#: The version agave knows (``VERSION_STRING_V1_2_0``).
KNOWN_VERSION = "1.2.0"
#: agave's ``MAX_SNAPSHOT_VERSION_FILE_SIZE``.
MAX_VERSION_SIZE = 8
#: agave's ``status_cache::MAX_CACHE_ENTRIES`` (``MAX_RECENT_BLOCKHASHES``).
MAX_CACHE_ENTRIES = 300
#: Rust's ``char::is_whitespace`` (Unicode White_Space), what ``str::trim`` removes.
_RUST_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: Bytes of statuses read at once (the kernel's piece).
PIECE = 1024 * 1024
# A Vec's element (the 20-byte key and the Result's tag) and a slot delta's fixed part.
_KEYED_RESULT = 20 + 4
_SLOT_DELTA = 8 + 1 + 8
_BLOCKHASH_ENTRY = 32 + 8 + 8


@attrs.frozen
class SlotDeltas:
    """The slots a status cache of the bank at ``bank_slot`` has an entry for."""

    bank_slot: int
    slots: frozenset[int]


def version_parser(size: int) -> Parser:
    """A parser of the ``version`` member of ``size`` bytes: ArchiveInvalid unless agave
    loads it (at most 8 bytes of UTF-8 that, trimmed, read ``1.2.0``, a ``v`` allowed)."""
    if size > MAX_VERSION_SIZE:
        raise ArchiveInvalid(
            f"version: {size} bytes, agave reads a version file of at most {MAX_VERSION_SIZE}"
        )
    data = (yield size) if size else b""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveInvalid(f"version: not UTF-8 ({bytes(data)!r})") from None
    trimmed = text.strip(_RUST_WHITE_SPACE)
    named = trimmed[1:] if trimmed[:1] in ("v", "V") else trimmed
    if named != KNOWN_VERSION:
        raise ArchiveInvalid(
            f"version: {trimmed!r} is not a snapshot version agave loads ({KNOWN_VERSION})"
        )


def status_cache_parser(
    size: int, bank_slot: int, read: Callable[[SlotDeltas], None] | None = None
) -> Parser:
    """A parser of ``snapshots/status_cache`` (``size`` bytes) of the archive of
    ``bank_slot``: ArchiveInvalid with one line unless agave's ``deserialize_status_cache``
    reads it and ``verify_slot_deltas`` passes what it can check without the slot history
    (see the module); ``read`` is given its slots once it did."""
    reader = Reader(size, "status cache")
    try:
        slots = yield from _slot_deltas(reader, bank_slot)
    except EndOfInput as end:
        raise reader.ended(end) from None
    if read is not None:
        read(SlotDeltas(bank_slot, frozenset(slots)))


def _slot_deltas(reader: Reader, bank_slot: int) -> ParserOf[set[int]]:
    reader.field = "the count of slot deltas"
    count = yield from reader.count(_SLOT_DELTA)
    if count > MAX_CACHE_ENTRIES:
        raise reader.fail(f"{count} slot deltas, agave loads at most {MAX_CACHE_ENTRIES}")
    slots: set[int] = set()
    for index in range(count):
        reader.field = f"slot delta {index}"
        slot = yield from reader.u64()
        root = yield from reader.flag()
        if not root:
            raise reader.fail(f"slot {slot} is not a root (slot delta {index})")
        if slot > bank_slot:
            raise reader.fail(f"slot {slot} is after the bank's slot {bank_slot}")
        if slot in slots:
            raise reader.fail(f"slot {slot} has more than one entry")
        slots.add(slot)
        yield from _status(reader, slot)
    if bank_slot not in slots:
        raise reader.fail(f"no entry for the bank's slot {bank_slot}")
    return slots


def _status(reader: Reader, slot: int) -> ParserOf[None]:
    """Read past the status of ``slot``: its blockhashes and their transaction statuses, in
    pieces of at most :data:`PIECE` bytes read by a compiled kernel
    (``kernels.skip_status``): never more bytes than what is left takes at least (48 a
    blockhash, 24 a status), so that the piece never reaches into what follows."""
    # numpy and the kernels loaded here, where statuses are read: a tracker that only serves
    # loads neither (tests/unit/test_idle_imports.py)
    import numpy as np

    from tracker.proof.formats.kernels import skip_status

    reader.field = f"the blockhashes of slot {slot}"
    hashes = yield from reader.count(_BLOCKHASH_ENTRY)
    statuses, carry, need = 0, b"", 0
    while hashes or statuses:
        least = _BLOCKHASH_ENTRY * hashes + _KEYED_RESULT * statuses - len(carry)
        what = "a transaction status" if statuses else "a blockhash"
        reader.field = f"{what} of slot {slot}"
        data = yield from reader.take(max(need, min(PIECE, least)))
        piece = carry + data if carry else data
        left = reader.size - reader.at + len(piece)  # the member's bytes from the piece
        found = skip_status(
            np.frombuffer(piece, dtype=np.uint8), 0, len(piece), hashes, statuses, left
        )
        pos, hashes, statuses, wrong, need = (int(value) for value in found)
        if wrong:
            raise _unknown(reader, slot, piece, pos, wrong)
        carry = piece[pos:]


def _unknown(reader: Reader, slot: int, piece: bytes, pos: int, wrong: int) -> ArchiveInvalid:
    """The refusal of the status at ``piece[pos:]`` whose variant ``wrong`` says is unknown,
    or (``wrong`` 4) of the blockhash there whose count of statuses is past the member."""
    at = reader.at - len(piece) + pos  # where the status starts in the member
    if wrong == 4:  # as Reader.count words it
        count = _U64.unpack_from(piece, pos + 40)[0]
        left = reader.size - (at + 48)
        return reader.fail(
            f"the statuses of slot {slot}: {count} elements of {_KEYED_RESULT} bytes at byte "
            f"{at + 40}, {left} bytes left"
        )
    if wrong == 1:
        tag = _U32.unpack_from(piece, pos + 20)[0]
        return reader.fail(
            f"slot {slot}: a transaction's result of variant {tag} at byte {at + 20}"
        )
    if wrong == 2:
        tag = _U32.unpack_from(piece, pos + 24)[0]
        return reader.fail(
            f"slot {slot}: a transaction error of unknown variant {tag} at byte {at + 24}"
        )
    tag = _U32.unpack_from(piece, pos + 29)[0]
    return reader.fail(
        f"slot {slot}: an instruction error of unknown variant {tag} at byte {at + 29}"
    )
