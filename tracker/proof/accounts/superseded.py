"""The second read: superseded versions taken back out of the accounts lattice hash. Pure.

A version that counted when it came and that a newer version superseded later is known by
its locator only (its storage's number and its offset: :mod:`tracker.proof.accounts.pubkeyindex`).
:func:`subtract_superseded` asks ``reread`` once per storage holding some, from the first
such record on, keeps just those records (skipping the bytes between them, holding at most a
chunk and one record at once) and has the summer take their lattice hashes back out. Its
cost is the bytes of those storages from their first superseded record on, read again, plus
one BLAKE3 per superseded version (docs/architecture.md, "The accounts level").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accounthash import Summer, lane_sum
from tracker.proof.formats import kernels
from tracker.proof.formats.storages import LAMPORTS, MAX_DATA, META, Records

Reread = Callable[[str, int], Iterable[bytes | memoryview]]


def subtract_superseded(
    locators: npt.NDArray[np.uint64],
    names: list[str],
    reread: Reread,
    summer: Summer,
) -> None:
    """Take the lattice hashes of the records at ``locators`` (sorted), read again, out of
    ``summer``'s sum."""
    numbers = (locators >> np.uint64(32)).astype(np.int64)
    offsets = ((locators & np.uint64(0xFFFFFFFF)) >> np.uint64(1)).astype(np.int64) << 3
    bounds = np.flatnonzero(np.diff(numbers)) + 1
    for group in np.split(np.arange(len(locators)), bounds):
        if not len(group):
            continue
        name = names[int(numbers[group[0]])]
        _read_storage(name, offsets[group], reread, summer)


def _read_storage(name: str, wanted: npt.NDArray[np.int64], reread: Reread, summer: Summer) -> None:
    """Take out the hashes of the records of storage ``name`` at ``wanted`` (sorted offsets),
    read again from the first one on: as each chunk comes, every wanted record wholly held
    at once (one compiled pass, :func:`tracker.proof.formats.kernels.wanted_records`), then the
    bytes before the next wanted record are dropped."""
    first = int(wanted[0])
    chunks = reread(name, first)
    pos = first  # storage offset of data[0]
    carry = b""  # the start of a wanted record the last chunk ended inside
    at = 0  # index into wanted
    try:
        for chunk in chunks:
            data = carry + chunk if carry else chunk  # a copy only behind a straddling record
            array = np.frombuffer(data, dtype=np.uint8)
            lens, whole, bad = kernels.wanted_records(
                array, wanted[at:] - pos, META, MAX_DATA, LAMPORTS
            )
            if whole:
                rel = wanted[at : at + whole] - pos
                lane_sum(Records(array, rel, lens, pos), np.arange(whole), summer, -1)
            if bad >= 0:
                raise ArchiveInvalid(_differs(name, int(wanted[at + bad])))
            at += whole
            if at == len(wanted):
                return
            drop = min(len(data), int(wanted[at]) - pos)
            carry = bytes(data[drop:])
            pos += drop
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    raise ArchiveInvalid(
        f"{name}: the second read ended at byte {pos + len(carry)}, before the superseded "
        f"record at byte {int(wanted[at])}"
    )


def _differs(name: str, offset: int) -> str:
    return f"{name}: the second read of the record at byte {offset} differs from the first"
