"""What a signed statement says of one checked copy of an archive (docs/http-api.md, "Signed
statements"). Pure: the time is passed in.

:func:`statement_of` turns a checked copy (:class:`HeldCopy`: the archive's name, size and
SHA-256, what its check proved, when the check ended) into the statement signed for it, valid
for ``valid_for`` seconds from when it is signed. ``snapshot-tracker attest`` signs with it.
"""

from __future__ import annotations

import attrs

from tracker.core.snapshots import ArchiveName
from tracker.core.statements import Statement
from tracker.proof.levels import Proof


@attrs.frozen
class HeldCopy:
    """One checked copy: its archive, size, SHA-256, proof and the time (seconds since the
    epoch) its check ended."""

    name: ArchiveName
    size: int
    sha256: str
    proof: Proof
    checked_at: float


def statement_of(held: HeldCopy, now: float, valid_for: float) -> Statement:
    """What is said of ``held`` when it is signed at ``now`` (seconds since the epoch)."""
    name, proof = held.name, held.proof
    return Statement(
        name=name.file_name,
        size=held.size,
        sha256=held.sha256,
        slot=name.slot,
        base_slot=None if name.is_full else name.base_slot,
        snapshot_hash=proof.snapshot_hash,
        bank_hash=proof.bank_hash,
        level=proof.level,
        voted_stake=proof.voted_stake,
        checked_at=int(held.checked_at),
        expires=int(now + valid_for),
    )
