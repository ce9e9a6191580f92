"""The newest version of the SlotHistory sysvar, kept while the first read indexes every
version (docs/architecture.md, "Proven archives" → "Version and status cache").

The first read already lays every record's pubkey out as four u64 words
(:meth:`~tracker.proof.formats.storages.Records.index_rows`); :meth:`SysvarWatch.see` looks
for the sysvar's first word in that column of each batch (one vectorised compare a batch,
no per-account step) and copies the data of a version only when its slot is the highest
seen so far. The version of the highest slot is the newest (two of one slot are refused by
the index as "stored twice").
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from tracker.proof.formats.slothistory import SLOT_HISTORY_ID
from tracker.proof.formats.storages import LAMPORTS, META, Records

_WORDS = np.frombuffer(SLOT_HISTORY_ID, dtype="<u8").astype(np.uint64)
_FIRST = _WORDS[0]


class SysvarWatch:
    """The newest SlotHistory version among the batches :meth:`see` was shown; the slot of
    each storage is told with :meth:`storage`, in the order the storages are numbered."""

    def __init__(self) -> None:
        self._slots: list[int] = []
        self._lock = threading.Lock()  # the scan lanes show batches at once
        self._slot = -1
        #: the newest version's lamports and data; None until one was seen
        self.newest: tuple[int, bytes] | None = None

    def storage(self, slot: int) -> None:
        """The next storage's slot (before any of its batches is shown)."""
        self._slots.append(slot)

    def see(self, batch: Records, rows: npt.NDArray[np.uint64], number: int) -> None:
        """Keep the sysvar's version in ``batch`` (storage ``number``, its index ``rows``)
        if it is newer than the one kept."""
        hits = np.flatnonzero(rows[:, 0] == _FIRST)
        if not len(hits):
            return
        slot = self._slots[number]
        for at in hits.tolist():
            if not np.array_equal(rows[at, :4], _WORDS):
                continue
            start = int(batch.offsets[at])
            lamports = int.from_bytes(batch.buf[start + LAMPORTS : start + LAMPORTS + 8], "little")
            data = batch.buf[start + META : start + META + int(batch.data_lens[at])].tobytes()
            with self._lock:
                if slot >= self._slot:
                    self._slot, self.newest = slot, (lamports, data)
