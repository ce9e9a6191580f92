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
#: Entries at most per table place before the table doubles.
LOAD = 0.6
#: Places a bucket.
WIDE = 8
#: Keys left in a batch below which the rest are probed one by one.
FEW = 32
_FIRST_BITS = 9
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
        self._table: npt.NDArray[np.uint32] = np.zeros((1 << self._bits, WIDE), dtype=np.uint32)
        self._prints: npt.NDArray[np.uint8] = np.zeros((1 << self._bits, WIDE), dtype=np.uint8)

    def nbytes(self) -> int:
        """Bytes the index holds resident (entries made and the table)."""
        return self.count * 40 + self._table.nbytes + self._prints.nbytes

    def _mixed(self, keys: U64) -> U64:
        with np.errstate(over="ignore"):
            mixed: U64 = (keys * self._mults).sum(axis=1, dtype=np.uint64) * _GOLDEN
        return mixed

    def fits(self, more: int) -> bool:
        """True when ``more`` new entries stay within the capacity."""
        return self.count + more <= self.capacity

    def find(self, keys: U64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Each of ``keys``' (n, 4) entry, and whether it was made by this call. The caller
        has checked :meth:`fits` for ``len(keys)``."""
        n = len(keys)
        while (self.count + n) > LOAD * self._table.size:
            self._grow()
        entry = np.full(n, -1, dtype=np.int64)
        made = np.zeros(n, dtype=np.bool_)
        table, prints = self._table, self._prints
        mask = np.uint64(len(table) - 1)
        mixed = self._mixed(keys)
        shift = np.uint64(64 - self._bits)
        bucket = mixed >> shift
        low = mixed & ((np.uint64(1) << shift) - np.uint64(1))
        printed = (mixed & np.uint64(0xFF)).astype(np.uint8)
        pending = np.arange(n, dtype=np.int64)
        while len(pending) > FEW:
            at = bucket[pending]
            rows = table[at]  # (m, WIDE), entry + 1, 0 for empty
            occupied = rows > 0
            # keys are compared only where the fingerprint matches: ~1 a key seen before
            rows_at, places_at = np.nonzero((prints[at] == printed[pending][:, None]) & occupied)
            held = rows[rows_at, places_at].astype(np.int64) - 1
            same = _equal(self.keys[held], keys[pending[rows_at]])
            hit = np.zeros(len(pending), dtype=np.bool_)
            hit[rows_at[same]] = True
            entry[pending[rows_at[same]]] = held[same]
            filled = _count8(occupied)
            miss = np.flatnonzero(~hit & (filled < WIDE))
            ranks = (at[miss] << shift) | low[pending[miss]]
            claim, places = _claims(ranks, at[miss], keys[pending[miss]], filled[miss])
            claim = miss[claim]
            winners = pending[claim]
            new = np.arange(self.count, self.count + len(winners), dtype=np.int64)
            self.keys[new] = keys[winners]
            table[at[claim], places] = (new + 1).astype(np.uint32)
            prints[at[claim], places] = printed[winners]
            entry[winners] = new
            made[winners] = True
            self.count += len(winners)
            full = ~hit & (filled == WIDE)
            bucket[pending[full]] = (bucket[pending[full]] + np.uint64(1)) & mask
            left = ~hit
            left[claim] = False
            pending = pending[left]
        for one in pending.tolist():
            entry[one], made[one] = self._find_one(keys[one], int(bucket[one]), printed[one])
        return entry, made

    def _find_one(self, key: U64, bucket: int, printed: np.uint8) -> tuple[int, bool]:
        """One key's entry, by plain probing (the last few keys of a batch: cheaper than
        another round of array operations)."""
        wanted = key.tobytes()
        table, prints = self._table, self._prints
        mask = len(table) - 1
        while True:
            for place, held in enumerate(table[bucket].tolist()):
                if not held:
                    new = self.count
                    self.keys[new] = key
                    table[bucket, place] = new + 1
                    prints[bucket, place] = printed
                    self.count += 1
                    return new, True
                if self.keys[held - 1].tobytes() == wanted:
                    return held - 1, False
            bucket = (bucket + 1) & mask

    def _grow(self) -> None:
        self._bits += 1
        old = self._table[self._table > 0].astype(np.int64) - 1
        self._table = np.zeros((1 << self._bits, WIDE), dtype=np.uint32)
        self._prints = np.zeros((1 << self._bits, WIDE), dtype=np.uint8)
        step = 1 << 20
        for start in range(0, len(old), step):
            self._place(old[start : start + step])

    def _place(self, ids: I64) -> None:
        """Put the entries ``ids`` (distinct, already made) into the table."""
        table, prints = self._table, self._prints
        mask = np.uint64(len(table) - 1)
        mixed = self._mixed(self.keys[ids])
        bucket = mixed >> np.uint64(64 - self._bits)
        printed = (mixed & np.uint64(0xFF)).astype(np.uint8)
        while len(ids):
            filled = _count8(table[bucket] > 0)
            room = filled < WIDE
            _, first = np.unique(bucket[room], return_index=True)
            chosen = np.flatnonzero(room)[first]
            table[bucket[chosen], filled[chosen]] = (ids[chosen] + 1).astype(np.uint32)
            prints[bucket[chosen], filled[chosen]] = printed[chosen]
            keep = np.ones(len(ids), dtype=np.bool_)
            keep[chosen] = False
            moving = keep & ~room
            bucket[moving] = (bucket[moving] + np.uint64(1)) & mask
            ids, bucket, printed = ids[keep], bucket[keep], printed[keep]


def _claims(ranks: U64, buckets: U64, keys: U64, filled: npt.NDArray[np.int64]) -> tuple[I64, I64]:
    """Which misses take a place in their bucket this round, and which place: in each
    bucket the distinct keys take its free places in turn; a key's second copy takes none
    (it finds the first one's entry next round), nor does a key for which no place is left
    (it finds its bucket full next round and moves on). ``ranks`` (bucket, then the low bits
    of the key's hash) sorts the misses by bucket with copies of a key side by side."""
    order = np.argsort(ranks, kind="stable")
    ordered_buckets = buckets[order]
    ordered_keys = keys[order]
    starts = np.ones(len(order), dtype=np.bool_)
    starts[1:] = ordered_buckets[1:] != ordered_buckets[:-1]
    copies = np.zeros(len(order), dtype=np.bool_)
    copies[1:] = ~starts[1:] & _equal(ordered_keys[1:], ordered_keys[:-1])
    distinct = ~copies
    running = np.cumsum(distinct) - 1
    first = np.maximum.accumulate(np.where(starts, running, -1))
    places = filled[order] + running - first
    takes = distinct & (places < WIDE)
    return order[takes], places[takes]


def _equal(a: U64, b: U64) -> npt.NDArray[np.bool_]:
    """Whether 32-byte keys (the last axis: four words) are equal, without a reduction over
    a short axis (slow in numpy)."""
    same: npt.NDArray[np.bool_] = a[..., 0] == b[..., 0]
    for word in (1, 2, 3):
        same &= a[..., word] == b[..., word]
    return same


def _count8(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Row-wise count of an (m, 8) bool array (a byte is 0 or 1: the bits set in a u64)."""
    words: U64 = np.ascontiguousarray(flags).view(np.uint64).reshape(-1)
    counts: npt.NDArray[np.int64] = np.bitwise_count(words).astype(np.int64)
    return counts
