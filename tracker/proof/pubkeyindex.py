"""A packed index of pubkeys: which stored version of each account is the newest so far. Pure.

Entries are dense: entry ``i`` has its pubkey in ``keys[i]`` (four u64 words, 32 bytes) and
a locator in ``where[i]`` (u64: the storage's number << 32 | the record's offset / 8 << 1 |
1 when the version counts, i.e. has lamports). Both live in anonymous memory maps sized for
the bound and reserved lazily (``MAP_NORESERVE``), so that only the pages of entries made
are ever resident: 40 bytes an entry. The open-addressing table maps a pubkey to its entry
(u32 entry + 1, 0 for empty; linear probing, at most 70% full, doubled when it would pass
that): 5.7 to 11.4 bytes an entry, so 46 to 52 bytes a distinct pubkey in all, and ~63 at
the moment the table doubles (docs/architecture.md, "The accounts level", has the
measurements). Pubkeys come from the archive: the table's hash is multiply-shift with odd
multipliers drawn per index, so no archive can choose keys that collide in it.

:meth:`PubkeyIndex.find` works on a whole batch of pubkeys in numpy operations (one round
per probe step, never a Python step per key): it returns each key's entry, making entries
for keys not seen before, and a key twice in one batch finds the entry its first copy made.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import numpy.typing as npt

#: The most entries an index holds at all (entries are numbered in a u32).
MAX_ENTRIES = 2**32 - 2
#: Entries at most per table slot before the table doubles.
LOAD = 0.7
_FIRST_BITS = 12
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

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
        self._table: npt.NDArray[np.uint32] = np.zeros(1 << self._bits, dtype=np.uint32)

    def nbytes(self) -> int:
        """Bytes the index holds resident (entries made and the table)."""
        return self.count * 40 + self._table.nbytes

    def _slots(self, keys: U64) -> U64:
        with np.errstate(over="ignore"):
            mixed: U64 = (keys * self._mults).sum(axis=1, dtype=np.uint64) * _GOLDEN
        slots: U64 = mixed >> np.uint64(64 - self._bits)
        return slots

    def fits(self, more: int) -> bool:
        """True when ``more`` new entries stay within the capacity."""
        return self.count + more <= self.capacity

    def find(self, keys: U64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Each of ``keys``' (n, 4) entry, and whether it was made by this call. The caller
        has checked :meth:`fits` for ``len(keys)``."""
        n = len(keys)
        while (self.count + n) > LOAD * len(self._table):
            self._grow()
        entry = np.full(n, -1, dtype=np.int64)
        made = np.zeros(n, dtype=np.bool_)
        mask = np.uint64(len(self._table) - 1)
        pos = self._slots(keys)
        pending = np.arange(n, dtype=np.int64)
        table = self._table
        while len(pending):
            at = pos[pending]
            held = table[at].astype(np.int64) - 1
            empty = held < 0
            full = pending[~empty]
            held_full = held[~empty]
            same = (self.keys[held_full] == keys[full]).all(axis=1)
            entry[full[same]] = held_full[same]
            moving = full[~same]
            pos[moving] = (pos[moving] + np.uint64(1)) & mask
            claimers = pending[empty]
            _, first = np.unique(at[empty], return_index=True)
            winners = claimers[first]
            new = np.arange(self.count, self.count + len(winners), dtype=np.int64)
            self.keys[new] = keys[winners]
            table[pos[winners]] = (new + 1).astype(np.uint32)
            entry[winners] = new
            made[winners] = True
            self.count += len(winners)
            losers = np.setdiff1d(claimers, winners, assume_unique=True)
            pending = np.concatenate((moving, losers))
        return entry, made

    def _grow(self) -> None:
        self._bits += 1
        self._table = np.zeros(1 << self._bits, dtype=np.uint32)
        mask = np.uint64(len(self._table) - 1)
        step = 1 << 20
        for start in range(0, self.count, step):
            ids = np.arange(start, min(self.count, start + step), dtype=np.int64)
            pos = self._slots(self.keys[ids])
            while len(ids):
                free = self._table[pos] == 0
                _, first = np.unique(pos[free], return_index=True)
                chosen = np.flatnonzero(free)[first]
                self._table[pos[chosen]] = (ids[chosen] + 1).astype(np.uint32)
                keep = np.ones(len(ids), dtype=np.bool_)
                keep[chosen] = False
                ids, pos = ids[keep], (pos[keep] + np.uint64(1)) & mask
