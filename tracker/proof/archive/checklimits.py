"""What one archive check may cost: its memory and time bounded by the archive's own size.

The limits are sized on what agave writes (docs/architecture.md, "Verified archives", "What
the check allows"): generous for every real snapshot, from a test validator's to a mainnet
full of ~110 GB and half a million account files, strict on absurd shapes such as 15 KB of
bz2 that expand to 8 GiB, ten million empty members, or gigabytes of zeros after the tar's
end. The decisions are pure functions of the counts (:func:`decoded_allowed`,
:func:`members_allowed`); :class:`Budget` keeps one check's counts and raises
:class:`~tracker.errors.ArchiveInvalid` when one is over, or when the check was cancelled.
"""

from __future__ import annotations

from collections.abc import Callable

from tracker.errors import ArchiveInvalid

MiB = 1024 * 1024

#: zstd frames asking for a larger window are refused. zstd's levels 1-19 use at most 8 MiB
#: (level 3, agave's default ``--snapshot-zstd-compression-level 0``, 2 MiB); only the
#: ``--ultra`` levels 20-22 and ``--long`` ask for more (up to 128 MiB per check).
ZSTD_MAX_WINDOW = 8 * MiB
#: What the xz decoder may allocate (liblzma's ``memlimit``): every preset up to ``-9e``
#: (a 64 MiB dictionary) fits; a stream declaring a larger dictionary is refused at its
#: block header, before any allocation.
XZ_MEMLIMIT = 80 * MiB
#: Decoded bytes allowed per compressed byte read, beyond :data:`DECODED_FLOOR`. Account
#: data compresses about 3x (real archives and tests/archives.py alike); a run of zeros
#: compresses thousands of times.
MAX_RATIO = 64
#: Decoded bytes every archive may produce whatever its size (a small archive of zeros).
DECODED_FLOOR = 512 * MiB
#: Tar headers allowed whatever the archive's size.
MEMBER_FLOOR = 100_000
#: Compressed bytes per tar header allowed beyond :data:`MEMBER_FLOOR`. A mainnet full
#: snapshot has about one account file per slot of its last epoch (~400k in ~110 GB: one
#: per ~250 KB); an empty member compresses to a few dozen bytes.
BYTES_PER_MEMBER = 1024
#: Tar entries agave unpacks at most (``MAX_SNAPSHOT_ARCHIVE_UNPACKED_COUNT``,
#: accounts-db/src/hardened_unpack.rs: "too many files in snapshot"): past it no node loads
#: the archive, whatever its size allows.
MAX_MEMBERS = 5_000_000
#: The members' sizes agave unpacks in all (``MAX_SNAPSHOT_ARCHIVE_UNPACKED_ACTUAL_SIZE``, 4
#: TiB, hardened_unpack.rs: "too large archive"; its apparent bound, 64 TiB, counts sparse
#: holes, which the check refuses). A mainnet full holds ~330 GB. It bounds every size a
#: member's parser is handed, so that none reaches a compiled kernel past its int64s.
MAX_UNPACKED_SIZE = 4 * 1024**4
#: Zeros allowed after the two end-of-archive blocks. agave's tar writer adds none; GNU tar
#: pads to its record (10 KiB by default, 64 KiB with ``-b 128``).
MAX_END_PADDING = 64 * 1024

#: Compression units (zstd frames, skippable ones included; gzip members; bz2 and xz
#: streams) allowed whatever the archive's size.
UNIT_FLOOR = 1024
#: Compressed bytes per unit allowed beyond :data:`UNIT_FLOOR`. Producers write one unit, or
#: one per hundreds of KiB or more (parallel encoders); an empty unit costs a decoder's
#: start (5 to 20 µs) and decodes to nothing, so the ratio bound never counts it: 16 MiB of
#: empty zstd frames cost 9 s of a core before the tar walk refused them (a 10 GiB archive
#: advertised by a source: about two hours).
BYTES_PER_UNIT = 4 * 1024

#: zstd blocks allowed whatever the archive's size.
BLOCK_FLOOR = 8192
#: Compressed bytes per zstd block allowed beyond :data:`BLOCK_FLOOR`. Encoders write blocks
#: of up to 128 KiB decoded (one per frame is shorter: its last); within :data:`MAX_RATIO`
#: that is at least one per 2 KiB read. A block header costs a Python step of the framing
#: walk: 12 MB of 1-byte raw blocks (3 MB of tar) cost 7.6 s of a core, a 1 GB archive of
#: them about ten minutes.
BYTES_PER_BLOCK = 512

CANCELLED = "check cancelled"


def decoded_allowed(raw: int) -> int:
    """Decoded bytes allowed once ``raw`` compressed bytes were handed to the decoder."""
    return DECODED_FLOOR + MAX_RATIO * raw


def units_allowed(raw: int) -> int:
    """Compression units allowed once ``raw`` compressed bytes were read: one per
    :data:`BYTES_PER_UNIT` beyond :data:`UNIT_FLOOR`."""
    return UNIT_FLOOR + raw // BYTES_PER_UNIT


def blocks_allowed(raw: int) -> int:
    """zstd blocks allowed once ``raw`` compressed bytes were read: one per
    :data:`BYTES_PER_BLOCK` beyond :data:`BLOCK_FLOOR`."""
    return BLOCK_FLOOR + raw // BYTES_PER_BLOCK


def too_many_units(label: str, unit: str, count: int, at: int) -> ArchiveInvalid:
    """The refusal of the ``count``-th ``unit`` of ``label``, starting at byte ``at``."""
    return ArchiveInvalid(
        f"{label}: more than {count - 1} {unit}s before byte {at} (at most one per "
        f"{BYTES_PER_UNIT // 1024} KiB past the first {UNIT_FLOOR})"
    )


def members_allowed(raw: int) -> int:
    """Tar headers allowed once ``raw`` compressed bytes were handed to the decoder: one per
    :data:`BYTES_PER_MEMBER` beyond :data:`MEMBER_FLOOR`, never more than agave unpacks
    (:data:`MAX_MEMBERS`)."""
    return min(MAX_MEMBERS, MEMBER_FLOOR + raw // BYTES_PER_MEMBER)


def _never() -> bool:
    return False


class Budget:
    """The counts of one check: compressed bytes handed to the decoder (:meth:`took`),
    decoded bytes (:meth:`spend`), and the cancellation the check polls in its decode loop,
    so that a cancelled check stops within one decoded piece (at most 4 MiB), not after what
    it had read."""

    def __init__(self, cancelled: Callable[[], bool] = _never) -> None:
        self.raw = 0
        self.decoded = 0
        self._cancelled = cancelled
        self._decoded_limit = decoded_allowed(0)

    def took(self, count: int) -> None:
        """``count`` more compressed bytes go to the decoder; ArchiveInvalid("check
        cancelled") once cancelled."""
        if self._cancelled():
            raise ArchiveInvalid(CANCELLED)
        self.raw += count

    def spend(self, count: int) -> None:
        """``count`` more bytes were decoded; ArchiveInvalid when the archive expands more
        than allowed, or the check was cancelled."""
        self.decoded += count
        if self.decoded > self._decoded_limit:
            self._decoded_limit = decoded_allowed(self.raw)
            if self.decoded > self._decoded_limit:
                raise ArchiveInvalid(
                    f"the archive expands more than {MAX_RATIO} times: {self.decoded} bytes "
                    f"decoded from its first {self.raw}"
                )
        if self._cancelled():
            raise ArchiveInvalid(CANCELLED)

    def members_allowed(self) -> int:
        """Tar headers allowed now."""
        return members_allowed(self.raw)
