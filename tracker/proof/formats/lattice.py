"""The accounts lattice hash (SIMD-0215): one account's 2,048-byte hash and their sum. Pure.

An account's lattice hash is the BLAKE3 XOF of 2,048 bytes over its lamports (u64 little
endian), its data, its executable flag (one byte), its owner and its pubkey; an account with
zero lamports counts nothing (the identity, all zeros). The state's lattice hash is the sum of
its accounts' hashes taken as 1,024 little-endian u16 lanes, each wrapping; an archive's name
carries base58 of the 32-byte BLAKE3 of that sum (SIMD-0220). docs/architecture.md, "Proven
archives", cites agave's code for each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import blake3

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: Bytes of a lattice hash: 1,024 u16 lanes.
LT_HASH_BYTES = 2048
LANES = LT_HASH_BYTES // 2
#: Digests summed at once (128 KiB of them: the join and the sum stay in cache).
GROUP = 64
#: A lane: a little-endian u16 (numpy is imported where a sum is made, so that a tracker that
#: only serves, or checks a name's hash, never loads it).
_LANE = "<u2"


def account_lt_hash(
    lamports: int, data: bytes | memoryview, executable: bool, owner: bytes, pubkey: bytes
) -> bytes:
    """One account's 2,048-byte lattice hash (all zeros for zero lamports)."""
    if lamports == 0:
        return bytes(LT_HASH_BYTES)
    hasher = blake3.blake3(lamports.to_bytes(8, "little"))
    hasher.update(data)
    hasher.update(b"\x01" if executable else b"\x00")
    hasher.update(owner)
    hasher.update(pubkey)
    return hasher.digest(length=LT_HASH_BYTES)


def hash_sum(
    work: bytes | bytearray | memoryview | npt.NDArray[np.uint8], ends: Sequence[int]
) -> npt.NDArray[np.uint16]:
    """The summed lattice hashes (1,024 u16 lanes) of the messages laid end to end in
    ``work``, the first starting at 0, each ending where ``ends`` says: the tight loop of
    BLAKE3 XOFs, their digests summed :data:`GROUP` at a time in one numpy reduction.

    One hasher is reset for each message rather than a new one made: the blake3 package's
    constructor costs more than the hashing of a message this short (measured: 0.92 against
    1.07 µs a message, docs/architecture.md "The accounts level" → "Cost")."""
    import numpy as np

    total = np.zeros(LANES, dtype=_LANE)
    view = work.data if isinstance(work, np.ndarray) else memoryview(work)
    hasher = blake3.blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    starts = [0, *ends[:-1]]
    for first in range(0, len(ends), GROUP):
        digests: list[bytes] = []
        keep = digests.append
        for a, b in zip(starts[first : first + GROUP], ends[first : first + GROUP], strict=True):
            reset()
            update(view[a:b])
            keep(digest(LT_HASH_BYTES))
        rows = np.frombuffer(b"".join(digests), dtype=_LANE).reshape(-1, LANES)
        total += np.add.reduce(rows, axis=0, dtype=np.uint16)
    return total


def hash_sum_into(
    total: npt.NDArray[np.uint16],
    work: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
    ends: npt.NDArray[np.int64],
    negative: bool = False,
) -> npt.NDArray[np.uint16]:
    """``total`` with :func:`hash_sum` of the messages of ``work`` added (``negative``: taken
    out: versions hashed ahead that turned out superseded; the lanes wrap, so it is exact)."""
    part = hash_sum(work, ends.tolist())
    return total - part if negative else total + part


def checksum(lt_hash: bytes) -> bytes:
    """The 32-byte BLAKE3 of a lattice hash: what an archive's name carries (in base58)."""
    return blake3.blake3(lt_hash).digest()


class LtHash:
    """A running sum of lattice hashes, 1,024 wrapping u16 lanes (numpy, never a lane loop)."""

    def __init__(self, value: bytes | None = None) -> None:
        import numpy as np

        self._lanes: npt.NDArray[np.uint16] = (
            np.zeros(LANES, dtype=_LANE)
            if value is None
            else np.frombuffer(value, dtype=_LANE).copy()
        )

    def add(self, hashes: bytes | bytearray | memoryview) -> None:
        """Add one or more 2,048-byte hashes laid end to end."""
        self._lanes += _summed(hashes)

    def sub(self, hashes: bytes | bytearray | memoryview) -> None:
        """Take one or more 2,048-byte hashes laid end to end back out."""
        self._lanes -= _summed(hashes)

    def value(self) -> bytes:
        """The 2,048 bytes of the sum."""
        return self._lanes.astype(_LANE, copy=False).tobytes()

    def checksum(self) -> bytes:
        """:func:`checksum` of the sum."""
        return checksum(self.value())


def _summed(hashes: bytes | bytearray | memoryview) -> npt.NDArray[np.uint16]:
    import numpy as np

    if len(hashes) % LT_HASH_BYTES:
        raise ValueError(f"{len(hashes)} bytes are not whole lattice hashes")
    rows: npt.NDArray[np.uint16] = np.frombuffer(hashes, dtype=_LANE).reshape(-1, LANES)
    if len(rows) == 1:
        first: npt.NDArray[np.uint16] = rows[0]
        return first
    # u16 lanes wrap: a u64 sum of up to 2^48 rows, then the low 16 bits.
    total: npt.NDArray[np.uint64] = rows.sum(axis=0, dtype=np.uint64)
    return (total & 0xFFFF).astype(np.uint16)
