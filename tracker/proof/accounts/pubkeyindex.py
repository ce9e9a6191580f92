"""A packed index of pubkeys: which stored version of each account is the newest so far. Pure.

Entries are dense: entry ``i`` has its pubkey in ``keys[i]`` (four u64 words, 32 bytes) and
a locator in ``where[i]`` (u64: the storage's number << 32 | the record's offset / 8 << 1 |
1 when the version counts, i.e. has lamports). Both live in anonymous memory maps sized for
the bound and reserved lazily (``MAP_NORESERVE``), so that only the pages of entries made
are ever resident: 40 bytes an entry. The open-addressing table maps a pubkey to its entry
(buckets of 8 places, each a u32 entry + 1, 0 for empty, and a u8 fingerprint; buckets probed
linearly, at most 60% full, doubled when it would pass that): 8.3 to 16.7 bytes an entry, so
48 to 57 bytes a distinct pubkey in all (docs/architecture.md, "The accounts level", has the
measurements). Pubkeys come from the archive: the table's hash is multiply-shift with odd
multipliers drawn per index, so no archive can choose keys that collide in it.

:meth:`PubkeyIndex.find` works on a whole batch of pubkeys in one compiled loop
(:func:`tracker.proof.formats.kernels.find`, reading them in place from the storage's piece): it
returns each key's entry, making entries for keys not seen before, and a key twice in one
batch finds the entry its first copy made.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import numpy.typing as npt

from tracker.proof.formats import kernels
from tracker.proof.formats.kernels import WIDE

#: The most entries an index holds at all (entries are numbered in a u32).
MAX_ENTRIES = 2**32 - 2
#: Entries at most per table place before the table doubles.
LOAD = 0.6
_FIRST_BITS = 9

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


def _lazy(shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    """An array over anonymous memory that is resident only where written."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE)
    return np.frombuffer(area, dtype=dtype).reshape(shape)


_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)


class PubkeyIndex:
    """Up to ``capacity`` distinct pubkeys, each with a u64 locator (see the module)."""

    def __init__(self, capacity: int) -> None:
        if not 0 < capacity <= MAX_ENTRIES:
            raise ValueError(f"capacity {capacity} out of range")
        self.capacity = capacity
        self.count = 0
        self.keys: U64 = _lazy((capacity, 4), np.uint64)  # type: ignore[assignment]
        self.where: U64 = _lazy((capacity,), np.uint64)  # type: ignore[assignment]
        seeds = np.frombuffer(os.urandom(32), dtype=np.uint64) | np.uint64(1)
        self._mults: U64 = seeds.copy()
        self._bits = _FIRST_BITS
        self._table: npt.NDArray[np.uint32] = np.zeros((1 << self._bits, WIDE), dtype=np.uint32)
        self._prints: npt.NDArray[np.uint8] = np.zeros((1 << self._bits, WIDE), dtype=np.uint8)

    def nbytes(self) -> int:
        """Bytes the index holds resident (entries made and the table)."""
        return self.count * 40 + self._table.nbytes + self._prints.nbytes

    def nbytes_after(self, more: int) -> int:
        """The most :meth:`nbytes` while ``more`` new entries are made: the table doubled as
        needed, and while it doubles, the old table and the list of its entries too."""
        table = old = self._table.nbytes + self._prints.nbytes
        while (self.count + more) > LOAD * (table // 5):  # 5 bytes a place
            table *= 2
        growing = old + 8 * self.count if table > old else 0
        return (self.count + more) * 40 + table + growing

    def fits(self, more: int) -> bool:
        """True when ``more`` new entries stay within the capacity."""
        return self.count + more <= self.capacity

    def find(self, keys: U64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Each of ``keys``' (n, 4) entry, and whether it was made by this call. The caller
        has checked :meth:`fits` for ``len(keys)``."""
        words = np.ascontiguousarray(keys, dtype="<u8")
        at = np.arange(0, 32 * len(words), 32, dtype=np.int64)
        return self.find_at(words.view(np.uint8).reshape(-1), at)

    def find_at(self, buf: npt.NDArray[np.uint8], at: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """:meth:`find` of the pubkeys at ``buf[at[i]:at[i] + 32]`` (every one within
        ``buf``: the offsets the storage scan found), read in place."""
        n = len(at)
        if not self.fits(n):
            raise ValueError(f"{n} more pubkeys pass the capacity {self.capacity}")
        if at.size and (int(at.min()) < 0 or int(at.max()) + 32 > len(buf)):
            raise ValueError("a pubkey's offset is outside the buffer")
        while (self.count + n) > LOAD * self._table.size:
            self._grow()
        entry, made, self.count = kernels.find(
            buf, at, self.keys, self._table, self._prints, self._mults, self.count
        )
        return entry, made

    def table_bytes_for(self, entries: int) -> int:
        """The bytes of the table (and its fingerprints) sized for ``entries`` by
        :meth:`reserve` (its size now when it is already large enough)."""
        return (1 << self._bits_for(entries)) * WIDE * 5

    def reserve(self, entries: int) -> None:
        """Size the table for ``entries`` distinct pubkeys at once, so that it does not double
        its way there: each doubling places every entry again, ~40% of the index's work when a
        million are made one batch at a time (docs/architecture.md, "The accounts level")."""
        bits = self._bits_for(entries)
        if bits > self._bits:
            self._grow(bits)

    def _bits_for(self, entries: int) -> int:
        bits = self._bits
        while entries > LOAD * ((1 << bits) * WIDE):
            bits += 1
        return bits

    def _grow(self, bits: int | None = None) -> None:
        self._bits = self._bits + 1 if bits is None else bits
        old = self._table[self._table > 0].astype(np.int64) - 1
        self._table = np.zeros((1 << self._bits, WIDE), dtype=np.uint32)
        self._prints = np.zeros((1 << self._bits, WIDE), dtype=np.uint8)
        kernels.place(old, self.keys, self._table, self._prints, self._mults)


def _count8(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Row-wise count of an (m, 8) bool array (a byte is 0 or 1: the bits set in a u64)."""
    words: U64 = np.ascontiguousarray(flags).view(np.uint64).reshape(-1)
    counts: npt.NDArray[np.int64] = np.bitwise_count(words).astype(np.int64)
    return counts
