"""The lattice hashes of many stored records at once, summed. Pure.

One account's lattice hash is the BLAKE3 XOF of 2,048 bytes over ``lamports || data ||
executable || owner || pubkey`` (:mod:`tracker.proof.formats.lattice`). In a storage record those
fields are apart and out of that order, so :func:`lane_sum` first lays the messages of a batch
end to end in a new buffer (one compiled loop, :func:`tracker.proof.formats.kernels.lay_out`), then
hands it to a :class:`Summer`: what is left per record is one BLAKE3 call on a slice, the
same tight loop as hashing ready messages (:func:`tracker.proof.formats.lattice.hash_sum`). The
blake3 package holds the GIL for messages this short, so a thread gains nothing: the
tracker's summer is a worker process (``tracker.proof.accounts.hashworker``), :class:`LocalSum`
hashes in the caller's thread (tests, and where no process can be started).
"""

from __future__ import annotations

from typing import Protocol

import blake3
import numpy as np
import numpy.typing as npt

from tracker.proof.formats import kernels
from tracker.proof.formats.lattice import LANES, LT_HASH_BYTES, hash_sum_into
from tracker.proof.formats.storages import EXECUTABLE, LAMPORTS, META, OWNER, PUBKEY, Records

_FIELDS = np.array([LAMPORTS, EXECUTABLE, OWNER, PUBKEY, META], dtype=np.int64)

#: A message's bytes besides the data: lamports, executable, owner, pubkey.
_MESSAGE = 8 + 1 + 32 + 32

Lanes = npt.NDArray[np.uint16]


def zero_lanes() -> Lanes:
    """The identity of the sum."""
    return np.zeros(LANES, dtype=np.uint16)


class Summer(Protocol):
    """Where laid-out messages are hashed and summed: here (:class:`LocalSum`) or in a
    worker process (``tracker.proof.accounts.hashworker``)."""

    def room(self, size: int, negative: bool = False) -> npt.NDArray[np.uint8] | None:
        """A buffer of ``size`` bytes to lay the next batch's messages out in, where the
        hashing reads them (a worker's shared memory: no copy through a pipe), or None:
        the caller lays them out in a buffer of its own (or, in the first read, leaves them
        to the second: :func:`lane_sum_in_room`). The next :meth:`add` passes it, with the
        same ``negative``."""

    def expect(self, count: int) -> None:
        """At least ``count`` messages will come (the first read's records, before the second
        read hashes them): a worker process is started now when that many are worth one, so
        that it is ready when they come."""

    def add(
        self, work: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64], negative: bool = False
    ) -> None:
        """Add the hashes of the messages of ``work`` to the sum (``negative``: take them
        out of it, the versions the first read hashed that turned out superseded)."""

    def total(self) -> tuple[Lanes | None, str | None]:
        """The sum of everything added, and None; or None and why it could not be made."""

    @property
    def stopped(self) -> bool:
        """True once the sum cannot be made whatever comes (a hashing process failed or
        ended): :meth:`total` gives its note, and the second read reads no more."""

    def close(self) -> None:
        """Let go of what it holds (a process: stopped, waited for)."""


class LocalSum:
    """A :class:`Summer` that hashes in the calling thread."""

    def __init__(self) -> None:
        self._total = zero_lanes()

    def room(self, size: int, negative: bool = False) -> None:
        """See :class:`Summer`: hashed where it is laid out."""
        return None

    def expect(self, count: int) -> None:
        """See :class:`Summer`: no process to start."""

    def add(
        self, work: npt.NDArray[np.uint8], ends: npt.NDArray[np.int64], negative: bool = False
    ) -> None:
        """See :class:`Summer`."""
        self._total = hash_sum_into(self._total, work, ends, negative)

    def total(self) -> tuple[Lanes | None, str | None]:
        """See :class:`Summer`."""
        return self._total.copy(), None

    @property
    def stopped(self) -> bool:
        """See :class:`Summer`: hashing here never fails."""
        return False

    def close(self) -> None:
        """Nothing to let go of."""


def lane_sum(
    batch: Records, chosen: npt.NDArray[np.int64], summer: Summer, negative: bool = False
) -> None:
    """Hand ``summer`` the lattice hashes of the records ``chosen`` of ``batch`` (every one has
    lamports: the caller leaves out those without), to add (``negative``: to take out)."""
    if not lane_sum_in_room(batch, chosen, summer, negative):  # laid out in a buffer here
        work, _, ends = kernels.lay_out(batch.buf, batch.offsets, batch.data_lens, chosen, _FIELDS)
        summer.add(work, ends, negative)


def lane_sum_in_room(
    batch: Records, chosen: npt.NDArray[np.int64], summer: Summer, negative: bool = False
) -> bool:
    """:func:`lane_sum` when ``summer`` has room for the messages where it hashes them (a
    worker's free slot: docs/architecture.md, "Every core"), and True; False, nothing laid out
    or hashed, when it has none (every worker busy, none started, or the batch larger than a
    slot). The first read hashes ahead this way ("The accounts level" → "Hashing ahead"):
    with a worker's spare time, never with its own."""
    if not len(chosen):
        return True
    size = int(batch.data_lens[chosen].sum()) + _MESSAGE * len(chosen)
    room = summer.room(size, negative)
    if room is None:
        return False
    _, ends = kernels.lay_out_into(batch.buf, batch.offsets, batch.data_lens, chosen, _FIELDS, room)
    summer.add(room, ends, negative)
    return True


def hashes_in_place(batch: Records, chosen: npt.NDArray[np.int64]) -> Lanes:
    """The lattice hashes of the records ``chosen`` of ``batch``, (n, 1,024) u16 lanes each,
    hashed in the calling thread where the records lie: each message's five fields joined
    from views of the piece into one buffer and fed to one hasher in one call. For records
    of large data (:data:`tracker.proof.accounts.kepthashes.KEEP_FROM`) that costs less
    than the five calls it replaces: BLAKE3 hashes many 1 KiB chunks at once only from a
    chunk's start, and the data follows the 8 bytes of lamports (20 KiB of data: 4.5 µs
    against 7.1, docs/architecture.md, "The accounts level" → "Large accounts")."""
    view = batch.buf.data.cast("B")
    hasher = blake3.blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    join = b"".join
    digests: list[bytes] = []
    keep = digests.append
    offsets, lens = batch.offsets, batch.data_lens
    for i in chosen.tolist():
        at = int(offsets[i])
        reset()
        update(
            join(
                (
                    view[at + LAMPORTS : at + LAMPORTS + 8],
                    view[at + META : at + META + int(lens[i])],
                    view[at + EXECUTABLE : at + EXECUTABLE + 1],
                    view[at + OWNER : at + OWNER + 32],
                    view[at + PUBKEY : at + PUBKEY + 32],
                )
            )
        )
        keep(digest(LT_HASH_BYTES))
    hashes: Lanes = np.frombuffer(b"".join(digests), dtype="<u2").reshape(-1, LANES)
    return hashes
