"""The SlotHistory sysvar, read as agave reads it at load, and the status cache's slot deltas
held to it (docs/architecture.md, "Proven archives" → "Version and status cache"). Pure.

Sources (anza-xyz/agave ``runtime/src/snapshot_bank_utils.rs`` at 0229068f,
``verify_slot_deltas_with_history``; anza-xyz/solana-sdk ``slot-history/src/lib.rs``):

- the account ``SysvarS1otHistory11111111111111111111111111`` holds, in bincode (fixed-int,
  trailing bytes allowed: ``from_account``), ``SlotHistory { bits: BitVec<u64>, next_slot }``,
  a ``BitVec<u64>`` being ``Option<Box<[u64]>>`` (a one-byte tag, then a u64 count and the
  words) and its length in bits (u64). Bit ``i`` is bit ``i % 64`` of word ``i / 64``; the
  bit of slot ``s`` is bit ``s % MAX_ENTRIES``. ``newest() = next_slot - 1``, ``oldest() =
  next_slot - MAX_ENTRIES`` (saturating); ``check(s)`` is *found* when ``s`` lies between them
  and its bit is set; a bit past the length panics (``BitVec::get``), so agave cannot load it.
- ``verify_slot_deltas_with_history``: the history's newest slot is the bank's; every slot of
  the status cache is found in the history; of the history's slots found, from the newest
  down, the first ``MAX_CACHE_ENTRIES`` (300) each have an entry in the status cache.

Every count is bounded by the bytes of the account's data before it is used.
"""

from __future__ import annotations

import struct

import attrs
import base58
import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.formats.statuscache import MAX_CACHE_ENTRIES, SlotDeltas

#: The SlotHistory sysvar's address.
SLOT_HISTORY_ID = base58.b58decode("SysvarS1otHistory11111111111111111111111111")
#: solana-slot-history's ``MAX_ENTRIES``: the slots the history remembers.
MAX_ENTRIES = 1024 * 1024
_Q = struct.Struct("<Q")
_WHAT = "the SlotHistory sysvar"


@attrs.frozen
class SlotHistory:
    """A decoded SlotHistory: its bits (one bool a bit, as many as both its words and its
    length hold, at most :data:`MAX_ENTRIES`: no slot's bit lies further) and ``next_slot``."""

    bits: npt.NDArray[np.bool_]
    length: int
    next_slot: int


def decode_slot_history(data: bytes) -> SlotHistory:
    """The SlotHistory in an account's ``data``; ArchiveInvalid with one line when bincode
    cannot read it."""
    at = 0
    view = memoryview(data)  # its words are looked at where they lie, never copied

    def take(size: int, field: str) -> memoryview:
        nonlocal at
        if len(data) - at < size:
            raise ArchiveInvalid(f"{_WHAT}: its data ends inside {field} (byte {at})")
        piece = view[at : at + size]
        at += size
        return piece

    tag = take(1, "the bits' tag")[0]
    words: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
    if tag == 1:
        count = _Q.unpack(take(8, "the count of words"))[0]
        if count > (len(data) - at) // 8:
            raise ArchiveInvalid(
                f"{_WHAT}: {count} words of bits, more than its {len(data)} bytes hold"
            )
        words = np.frombuffer(take(8 * count, "the words"), dtype="<u8")
    elif tag != 0:
        raise ArchiveInvalid(f"{_WHAT}: the bits' tag is {tag}, not an Option's 0 or 1")
    length = _Q.unpack(take(8, "the length of the bits"))[0]
    next_slot = _Q.unpack(take(8, "next_slot"))[0]
    # only the first MAX_ENTRIES bits are ever read (slot s's is bit s % MAX_ENTRIES): a bool
    # a bit of all 10 MiB of an account's data held 84 MB and peaked at 178 MB (agave's
    # history: 128 KiB of words, a million bits)
    words = words[: MAX_ENTRIES // 64]
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").view(np.bool_)
    return SlotHistory(bits[: min(length, len(bits))], length, next_slot)


def check_slot_deltas(deltas: SlotDeltas, history: SlotHistory) -> None:
    """ArchiveInvalid with one line unless agave's ``verify_slot_deltas_with_history`` passes
    the status cache's ``deltas`` with ``history`` (see the module)."""
    bank_slot = deltas.bank_slot
    if history.next_slot == 0 or history.next_slot - 1 != bank_slot:
        newest = history.next_slot - 1
        raise ArchiveInvalid(
            f"status cache: {_WHAT}'s newest slot is {newest}, not the bank's slot {bank_slot}"
        )
    newest = bank_slot
    oldest = max(history.next_slot - MAX_ENTRIES, 0)
    for slot in sorted(deltas.slots):
        if not oldest <= slot <= newest or not _bit(history, slot):
            raise ArchiveInvalid(
                f"status cache: slot {slot} has an entry but is not a root in {_WHAT}"
            )
    # the history's slots found, newest first, the first MAX_CACHE_ENTRIES of them
    window = np.uint64(newest) - np.arange(newest - oldest + 1, dtype=np.uint64)
    index = (window % np.uint64(MAX_ENTRIES)).astype(np.int64)
    beyond = index >= len(history.bits)
    found = np.zeros(len(window), dtype=np.bool_)
    found[~beyond] = history.bits[index[~beyond]]
    firsts = np.flatnonzero(found)[:MAX_CACHE_ENTRIES]
    end = int(firsts[-1]) + 1 if len(firsts) == MAX_CACHE_ENTRIES else len(window)
    if beyond[:end].any():  # agave's walk reads a bit past the history's: it panics
        slot = int(window[int(np.argmax(beyond[:end]))])
        raise ArchiveInvalid(_past(history, slot))
    for place in firsts.tolist():
        slot = int(window[place])
        if slot not in deltas.slots:
            raise ArchiveInvalid(
                f"status cache: no entry for slot {slot}, a root in {_WHAT} (of its newest "
                f"{MAX_CACHE_ENTRIES}, agave wants every one)"
            )


def _bit(history: SlotHistory, slot: int) -> bool:
    index = slot % MAX_ENTRIES
    if index >= len(history.bits):
        raise ArchiveInvalid(_past(history, slot))
    return bool(history.bits[index])


def _past(history: SlotHistory, slot: int) -> str:
    return (
        f"{_WHAT}: slot {slot}'s bit lies past its {len(history.bits)} bits (length "
        f"{history.length}): agave cannot read it"
    )
