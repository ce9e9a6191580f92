"""What a signed statement says of one checked copy of an archive (docs/http-api.md, "Signed
statements"). Pure: the time is passed in.

:func:`statement_of` turns a checked copy (:class:`HeldCopy`: the archive's name, size and
SHA-256, what its check proved, when the check ended) into the statement signed for it, valid
for ``valid_for`` seconds from when it is signed. ``snapshot-tracker attest`` signs with it,
and so does the daemon (:mod:`tracker.core.attestations`), which asks :func:`held_copy` what
it may sign of a copy it holds and :func:`due` when to sign it again; :func:`of_copy` is the
check of a document another replica left in the bucket beside an object.
"""

from __future__ import annotations

import attrs

from tracker.core.digests import Verified
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.core.statements import Attestation, Statement, parse_document
from tracker.errors import StatementInvalid
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


def held_copy(file_name: str, verified: Verified) -> HeldCopy | None:
    """The copy of ``file_name`` the tracker may sign a statement of: one it checked itself
    (``checked_at``) whose size it knows, of a canonical archive name; None otherwise."""
    name = parse_archive_name(file_name)
    if name is None or name.file_name != file_name:
        return None
    if verified.checked_at is None or verified.size <= 0:
        return None
    return HeldCopy(name, verified.size, verified.sha256, verified.proof, verified.checked_at)


def due(signed: Statement | None, wanted: Statement, now: float, valid_for: float) -> bool:
    """True when ``wanted`` (what is said of a copy now) must be signed: nothing was signed
    yet, what was signed says something else of the copy than its expiry (another copy, or a
    new proof: say it was lifted to ``cluster``), or half its ``valid_for`` has passed (so a
    client is always served a statement that holds for at least half its life)."""
    if signed is None or attrs.evolve(signed, expires=wanted.expires) != wanted:
        return True
    return now >= signed.expires - valid_for / 2


def of_copy(raw: bytes, name: str, size: int, sha256: str, now: float) -> Attestation:
    """The document ``raw`` read beside an object of the archive ``name`` (``size`` bytes of
    SHA-256 ``sha256``) when it vouches for exactly that object: a valid signature over a
    canonical statement (:func:`~tracker.core.statements.parse_document`) naming that name,
    size and SHA-256, unexpired at ``now``. StatementInvalid naming the first thing that
    differs otherwise."""
    attestation = parse_document(raw)
    statement = attestation.statement
    if statement.name != name:
        raise StatementInvalid(f"statement: names {statement.name}, not {name}")
    if statement.size != size:
        raise StatementInvalid(f"statement: names size {statement.size}, the object has {size}")
    if statement.sha256 != sha256:
        raise StatementInvalid(
            f"statement: names sha256 {statement.sha256}, the object has {sha256}"
        )
    if statement.expires <= now:
        raise StatementInvalid(f"statement: expired at {statement.expires} (now {int(now)})")
    return attestation
