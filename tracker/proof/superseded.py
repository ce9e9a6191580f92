"""The second read: superseded versions taken back out of the accounts lattice hash. Pure.

A version that counted when it came and that a newer version superseded later is known by
its locator only (its storage's number and its offset: :mod:`tracker.proof.pubkeyindex`).
:func:`subtract_superseded` asks ``reread`` once per storage holding some, from the first
such record on, keeps just those records (skipping the bytes between them, holding at most a
piece of them at once) and has the summer take their lattice hashes back out. Its
cost is the bytes of those storages from their first superseded record on, read again, plus
one BLAKE3 per superseded version (docs/architecture.md, "The accounts level").
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounthash import Summer, lane_sum
from tracker.proof.storages import DATA_LEN, LAMPORTS, MAX_DATA, META, PIECE, Records, aligned

_U64 = struct.Struct("<Q")
Reread = Callable[[str, int], Iterable[bytes | memoryview]]


class _Collected:
    """Records copied out of a second read, each at a multiple of 8, hashed a piece at a time."""

    def __init__(self, summer: Summer) -> None:
        self.summer = summer
        self._buf = bytearray()
        self._offsets: list[int] = []
        self._lens: list[int] = []

    def add(self, record: bytes | bytearray, data_len: int) -> None:
        self._buf += bytes(aligned(len(self._buf)) - len(self._buf))
        self._offsets.append(len(self._buf))
        self._lens.append(data_len)
        self._buf += record
        if len(self._buf) >= PIECE:
            self.flush()

    def flush(self) -> None:
        if not self._offsets:
            return
        batch = Records(
            np.frombuffer(bytes(self._buf), dtype=np.uint8),
            np.array(self._offsets, dtype=np.int64),
            np.array(self._lens, dtype=np.int64),
            0,
        )
        lane_sum(batch, np.arange(len(self._offsets), dtype=np.int64), self.summer, -1)
        self._buf = bytearray()
        self._offsets, self._lens = [], []


def subtract_superseded(
    locators: npt.NDArray[np.uint64],
    names: list[str],
    reread: Reread,
    summer: Summer,
) -> None:
    """Take the lattice hashes of the records at ``locators`` (sorted), read again, out of
    ``summer``'s sum."""
    collected = _Collected(summer)
    numbers = (locators >> np.uint64(32)).astype(np.int64)
    offsets = ((locators & np.uint64(0xFFFFFFFF)) >> np.uint64(1)).astype(np.int64) << 3
    bounds = np.flatnonzero(np.diff(numbers)) + 1
    for group in np.split(np.arange(len(locators)), bounds):
        if not len(group):
            continue
        name = names[int(numbers[group[0]])]
        _read_storage(name, offsets[group].tolist(), reread, collected)
    collected.flush()


def _read_storage(name: str, wanted: list[int], reread: Reread, collected: _Collected) -> None:
    chunks = reread(name, wanted[0])
    pos = wanted[0]  # storage offset of buf[0]
    buf = bytearray()
    at = 0  # index into wanted
    try:
        for chunk in chunks:
            buf += chunk
            while at < len(wanted):
                rel = wanted[at] - pos
                if len(buf) < rel + META:
                    break
                (data_len,) = _U64.unpack_from(buf, rel + DATA_LEN)
                if data_len > MAX_DATA or len(buf) < rel + META + data_len:
                    if data_len > MAX_DATA:
                        raise ArchiveInvalid(_differs(name, wanted[at]))
                    break
                if not any(buf[rel + LAMPORTS : rel + LAMPORTS + 8]):
                    raise ArchiveInvalid(_differs(name, wanted[at]))
                collected.add(buf[rel : rel + META + data_len], data_len)
                at += 1
            if at == len(wanted):
                return
            drop = min(len(buf), wanted[at] - pos)
            del buf[:drop]
            pos += drop
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    raise ArchiveInvalid(
        f"{name}: the second read ended at byte {pos + len(buf)}, before the superseded "
        f"record at byte {wanted[at]}"
    )


def _differs(name: str, offset: int) -> str:
    return f"{name}: the second read of the record at byte {offset} differs from the first"
