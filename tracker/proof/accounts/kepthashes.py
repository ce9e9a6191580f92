"""Large versions hashed where they lie in the first read, their hashes kept (docs/architecture.md,
"The accounts level" → "Large accounts"). Pure: numpy, no I/O.

A version of :data:`KEEP_FROM` bytes of data or more is hashed in the thread that holds its
bytes, and its hash kept by locator while the proof's budget holds it (:data:`KEPT_BYTES`
each, at most a :data:`KEEP_SHARE`-th of the budget's room): a kept hash (2 KiB) is at most an
eighth of its data, and one that turns out superseded is taken out of the sum from memory,
its storage never read again for it. :class:`KeptHashes` holds them; the proof decides what
the budget lets it keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import numpy.typing as npt

from tracker.proof.formats.lattice import LANES

#: Data bytes from which a version is hashed in the thread that holds its bytes, where they
#: lie, and its hash kept.
KEEP_FROM = 16 * 1024
#: Bytes a kept version holds of the budget: its hash and its locator.
KEPT_BYTES = 2048 + 8
#: The part of the budget's room kept hashes may hold (past it, large versions go the way of
#: the others: the index needs the rest).
KEEP_SHARE = 4

U64 = npt.NDArray[np.uint64]
Lanes = npt.NDArray[np.uint16]


class KeptHashes:
    """One proof's kept hashes: their sum (:attr:`total`), what they hold (:attr:`bytes`,
    :attr:`count`), whether more may be kept (:attr:`keeping`), and what the second read
    takes out of them (:meth:`taken_out`)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[U64, Lanes]] = []  # locators and hashes, as they came
        self.total: Lanes = np.zeros(LANES, dtype=np.uint16)
        self.bytes = 0
        self.count = 0
        self.keeping = True

    def fits(self, count: int, room: int) -> bool:
        """Whether ``count`` more fit the share of a budget of ``room`` they may hold (never
        once :attr:`keeping` is False)."""
        return self.keeping and self.bytes + KEPT_BYTES * count <= room // KEEP_SHARE

    def add(self, locators: U64, hashes: Lanes) -> None:
        """Keep the hashes (one row of lanes each) of the versions at ``locators``, and add
        them to :attr:`total`."""
        self._chunks.append((locators, hashes))
        self.bytes += KEPT_BYTES * len(locators)
        self.count += len(locators)
        self.total += np.add.reduce(hashes, axis=0, dtype=np.uint16)

    def in_order(self) -> tuple[U64, npt.NDArray[np.intp]]:
        """The kept versions' locators sorted (storage order), and the order that sorts them
        (an index into the kept hashes as they came, never joined: no second copy of them
        beside the budget's)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.intp)
        locators = np.concatenate([each for each, _ in self._chunks])
        order = np.argsort(locators, kind="stable")
        return locators[order], order

    def taken_out(
        self,
        superseded: Iterable[U64],
        kept: U64,
        order: npt.NDArray[np.intp],
        taken: Callable[[int], None],
    ) -> Iterator[U64]:
        """``superseded`` (sorted pieces of locators) less the kept versions (``kept`` and
        ``order``: :meth:`in_order`'s), whose hashes are taken out of :attr:`total` here
        (``taken(n)`` told how many): their storages need not be read again for them."""
        firsts = np.cumsum([0, *(len(each) for each, _ in self._chunks)])
        for piece in superseded:
            if not len(kept) or not len(piece):
                yield piece
                continue
            places = np.minimum(np.searchsorted(kept, piece), len(kept) - 1)
            there = kept[places] == piece
            if there.any():
                for at in order[places[there]].tolist():
                    chunk = int(np.searchsorted(firsts, at, side="right")) - 1
                    self.total -= self._chunks[chunk][1][at - int(firsts[chunk])]
                taken(int(there.sum()))
                piece = piece[~there]
            yield piece

    def clear(self) -> None:
        """Let go of the hashes (their sum stays in :attr:`total`)."""
        self._chunks = []
