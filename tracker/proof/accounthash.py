"""The lattice hashes of many stored records at once, summed. Pure (a helper thread at most).

One account's lattice hash is the BLAKE3 XOF of 2,048 bytes over ``lamports || data ||
executable || owner || pubkey`` (:mod:`tracker.proof.lattice`). In a storage record those
fields are apart and out of that order, so :func:`lane_sum` first lays each record's message
out contiguously in a copy of the piece, in numpy operations for the whole batch: lamports
into the 8 bytes just before the data (the record's obsolete hash, unused), and
``executable || owner || pubkey`` (65 bytes) just after the data, over the next record's
padding and header, whose fields were gathered before (65 < 136: never its data, nor its own
lamports' new place). What is left per record is one BLAKE3 call on a slice: the same tight
loop as hashing ready messages. The digests are summed as 1,024 u16 lanes in one numpy
reduction per :data:`GROUP` records. BLAKE3 releases the GIL while it hashes, so a helper
thread takes half of a large batch.
"""

from __future__ import annotations

from concurrent.futures import Executor

import blake3
import numpy as np
import numpy.typing as npt

from tracker.proof.lattice import LANES, LT_HASH_BYTES
from tracker.proof.storages import EXECUTABLE, LAMPORTS, META, OWNER, PUBKEY, Records

#: Digests summed at once (128 KiB of them: the join and the sum stay in cache).
GROUP = 64
#: A batch smaller than this is not split between threads.
SPLIT_FROM = 256
_TAIL = np.concatenate(
    (
        np.array([EXECUTABLE], dtype=np.int64),
        np.arange(OWNER, OWNER + 32, dtype=np.int64),
        np.arange(PUBKEY, PUBKEY + 32, dtype=np.int64),
    )
)
_TAIL_BYTES = len(_TAIL)

Lanes = npt.NDArray[np.uint16]


def zero_lanes() -> Lanes:
    """The identity of the sum."""
    return np.zeros(LANES, dtype=np.uint16)


def messages(
    batch: Records, chosen: npt.NDArray[np.int64]
) -> tuple[bytearray, list[int], list[int]]:
    """A buffer holding the messages of the records ``chosen`` (indexes into the batch) and
    where each starts and ends in it."""
    offsets = batch.offsets[chosen]
    data_lens = batch.data_lens[chosen]
    work = bytearray(len(batch.buf) + _TAIL_BYTES + 8)
    view = np.frombuffer(work, dtype=np.uint8)
    view[: len(batch.buf)] = batch.buf
    tails = batch.buf[offsets[:, None] + _TAIL]
    data_at = offsets + META
    # every record of a piece starts at the same offset modulo 8: its u64 fields are words
    shift = int(offsets[0]) % 8
    words = np.frombuffer(work, dtype="<u8", offset=shift, count=(len(work) - shift) // 8)
    words[(data_at - 8 - shift) >> 3] = words[(offsets + LAMPORTS - shift) >> 3]
    ends = data_at + data_lens
    view[ends[:, None] + np.arange(_TAIL_BYTES)] = tails
    return work, (data_at - 8).tolist(), (ends + _TAIL_BYTES).tolist()


def _hash_range(work: bytearray, starts: list[int], ends: list[int]) -> Lanes:
    total = zero_lanes()
    view = memoryview(work)
    hasher = blake3.blake3
    for first in range(0, len(starts), GROUP):
        digests = [
            hasher(view[a:b]).digest(LT_HASH_BYTES)
            for a, b in zip(starts[first : first + GROUP], ends[first : first + GROUP], strict=True)
        ]
        rows = np.frombuffer(b"".join(digests), dtype="<u2").reshape(-1, LANES)
        total += np.add.reduce(rows, axis=0, dtype=np.uint16)
    return total


def lane_sum(
    batch: Records, chosen: npt.NDArray[np.int64], helper: Executor | None = None
) -> Lanes:
    """The sum of the lattice hashes of the records ``chosen`` of ``batch`` (every one has
    lamports: the caller leaves out those without). With ``helper``, a thread of it hashes
    half of a large batch."""
    if not len(chosen):
        return zero_lanes()
    work, starts, ends = messages(batch, chosen)
    if helper is None or len(starts) < SPLIT_FROM:
        return _hash_range(work, starts, ends)
    half = len(starts) // 2
    other = helper.submit(_hash_range, work, starts[half:], ends[half:])
    mine = _hash_range(work, starts[:half], ends[:half])
    return mine + other.result()
