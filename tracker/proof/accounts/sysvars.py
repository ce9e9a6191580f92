"""The newest version of the SlotHistory sysvar, kept while the first read indexes every
version (docs/architecture.md, "Proven archives" → "Version and status cache").

The first read already lays every record's pubkey out as four u64 words
(:meth:`~tracker.proof.formats.storages.Records.index_rows`); the proof looks
for the sysvar's first word in that column of each batch (one vectorised compare a batch,
no per-account step, :func:`sysvar_versions`: in the proof's process, or in its scan
processes) and :meth:`SysvarWatch.keep` keeps a version only when its slot is the highest
seen so far. The version of the highest slot is the newest (two of one slot are refused by
the index as "stored twice").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from tracker.proof.formats.slothistory import SLOT_HISTORY_ID
from tracker.proof.formats.storages import LAMPORTS, META, Records

_WORDS = np.frombuffer(SLOT_HISTORY_ID, dtype="<u8").astype(np.uint64)
_FIRST = _WORDS[0]


def sysvar_versions(batch: Records, rows: npt.NDArray[np.uint64]) -> Iterator[tuple[int, bytes]]:
    """The lamports and data of each SlotHistory version in ``batch`` (its index ``rows``):
    one vectorised compare of the pubkeys' first word, a copy only of what matches."""
    hits = np.flatnonzero(rows[:, 0] == _FIRST)
    for at in hits.tolist():
        if not np.array_equal(rows[at, :4], _WORDS):
            continue
        start = int(batch.offsets[at])
        lamports = int.from_bytes(batch.buf[start + LAMPORTS : start + LAMPORTS + 8], "little")
        yield lamports, batch.buf[start + META : start + META + int(batch.data_lens[at])].tobytes()


class SysvarWatch:
    """The newest SlotHistory version among those :meth:`keep` was given; the slot of each
    storage is told with :meth:`storage`, in the order the storages are numbered."""

    def __init__(self) -> None:
        self._slots: list[int] = []
        self._lock = threading.Lock()  # the scan lanes (or their processes' answers) at once
        self._slot = -1
        #: the newest version's lamports and data; None until one was seen
        self.newest: tuple[int, bytes] | None = None

    def storage(self, slot: int) -> None:
        """The next storage's slot (before any of its batches is shown)."""
        self._slots.append(slot)

    def keep(self, number: int, lamports: int, data: bytes) -> None:
        """Keep a version found in storage ``number`` (:func:`sysvar_versions`) if it is
        newer than the one kept."""
        slot = self._slots[number]
        with self._lock:
            if slot >= self._slot:
                self._slot, self.newest = slot, (lamports, data)
