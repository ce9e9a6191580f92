"""What a signed statement says of one checked copy of an archive (docs/http-api.md, "Signed
statements"). Pure: the time is passed in.

:func:`statement_of` turns a checked copy (:class:`HeldCopy`: the archive's name, size and
SHA-256, what its check proved, when the check ended) into the statement signed for it, valid
for ``valid_for`` seconds from when it is signed. ``snapshot-tracker attest`` signs with it,
and so does the daemon (:mod:`tracker.proof.records.attestations`), which asks :func:`held_copy`
what it may sign of a copy it holds and :func:`due` when to sign it again; :func:`of_copy` is the
check of a document another replica left in the bucket beside an object, :func:`reread_due`
when to read that document again (its replica signs it again at half its life) and
:func:`to_serve` which of the one served and the one read again is served; :func:`takes_over`
whether this tracker renews the statement beside a bucket copy it did not upload in this
process (its replica restarted, or stopped renewing it), and :func:`already_said` whether the
one there already says what it would write.
"""

from __future__ import annotations

import attrs

from tracker.core.digests import Verified
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import StatementInvalid
from tracker.proof.levels import Level, Proof
from tracker.proof.statements import Attestation, Statement, check_times, parse_document

#: The fewest seconds between two reads of one statement object in the bucket
#: (:func:`reread_due`): no storm of GETs however short ``valid_for`` is.
REREAD_AT_LEAST = 1.0
#: The most seconds between two reads of one statement object past half its life.
REREAD_AT_MOST = 60.0


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
    """What is said of ``held`` when it is signed at ``now`` (seconds since the epoch):
    checked when its check ended, or at ``now`` were that later (the clock went back)."""
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
        # Never after it is signed: a clock set back since the check (or a cached file's
        # digest written while it ran ahead) would date it where every reader refuses it
        # as ahead of theirs (docs/http-api.md, "Signed statements").
        checked_at=int(min(held.checked_at, now)),
        expires=int(now + valid_for),
        cluster_proof=proof.cluster_proof if proof.level == Level.CLUSTER else None,
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


def due(
    signed: Statement | None,
    wanted: Statement,
    now: float,
    valid_for: float,
    *,
    ahead: bool = False,
) -> bool:
    """True when ``wanted`` (what is said of a copy now) must be signed: nothing was signed
    yet, what was signed says something else of the copy than its expiry (another copy, or a
    new proof: say it was lifted to ``cluster``), or half its ``valid_for`` has passed (so a
    client is always served a statement that holds for at least half its life). ``ahead``:
    the copy's check ended after ``now`` (both statements say when they were signed)."""
    if signed is None:
        return True
    # A check that ended after ``now`` (``ahead``: the clock was set back since) is stated
    # checked when signed (:func:`statement_of`): ``wanted`` names ``now``, the one signed an
    # earlier ``now``, and both are that same check, not a new one to sign at every call
    # while the clock is behind. Once the clock passed the check, ``wanted`` names the
    # check's own time and it is signed once more, saying so.
    same_check = ahead and signed.checked_at <= wanted.checked_at
    checked_at = wanted.checked_at if same_check else signed.checked_at
    if attrs.evolve(signed, expires=wanted.expires, checked_at=checked_at) != wanted:
        return True
    return now >= signed.expires - valid_for / 2


def of_copy(raw: bytes, name: str, size: int, sha256: str, now: float) -> Attestation:
    """The document ``raw`` read beside an object of the archive ``name`` (``size`` bytes of
    SHA-256 ``sha256``) when it vouches for exactly that object: a valid signature over a
    canonical statement (:func:`~tracker.proof.statements.parse_document`) naming that name,
    size and SHA-256, unexpired and not checked in the future at ``now``
    (:func:`~tracker.proof.statements.check_times`). StatementInvalid naming the first thing that
    differs otherwise."""
    attestation = naming(raw, name, size, sha256)
    check_times(attestation.statement, now)
    return attestation


def naming(raw: bytes, name: str, size: int, sha256: str) -> Attestation:
    """The document ``raw`` when it is a valid signature over a canonical statement naming
    exactly the object of the archive ``name`` of ``size`` bytes and SHA-256 ``sha256``,
    whatever its times say (:func:`of_copy` checks those too); StatementInvalid naming the
    first thing that differs otherwise."""
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
    return attestation


def reread_due(taken_at: float, expires: float, read_at: float, now: float) -> bool:
    """True when the statement object beside a bucket copy is to be read again at ``now``:
    the statement served of it (taken when read at ``taken_at``, ``expires`` its expiry) is
    past half its life as this replica knows it (its replica signed it no later than
    ``taken_at`` and signs it again at half its ``valid_for``, so a new one is there by the
    middle of ``taken_at`` .. ``expires``, still before it expires), and the last read
    (``read_at``) was at least a quarter of what was then left of it ago, within
    :data:`REREAD_AT_LEAST` .. :data:`REREAD_AT_MOST` seconds (after it expired:
    :data:`REREAD_AT_MOST`): a few reads before it expires when none is newer yet, never a
    storm. Before half its life, every :data:`REREAD_AT_MOST`: one its replica signed again
    at once (a level lifted to ``cluster``, a key rotated by a reload) was served here only
    from its half life on, 3.5 days of the default ``valid_for`` late. Times are seconds
    since the epoch."""
    if now < (taken_at + expires) / 2:
        return now - read_at >= REREAD_AT_MOST
    left = expires - read_at
    wait = REREAD_AT_MOST if left <= 0 else min(max(left / 4, REREAD_AT_LEAST), REREAD_AT_MOST)
    return now - read_at >= wait


def to_serve(served: Attestation | None, read: Attestation | None) -> Attestation | None:
    """Which statement of a bucket copy is served: ``read`` (read again beside it, checked
    by :func:`of_copy`; None: none there, or refused) when it expires later than ``served``
    (the one served, None: none), else ``served``, kept until it expires."""
    if read is None or (served is not None and read.statement.expires <= served.statement.expires):
        return served
    return read


#: What :func:`takes_over` answers when no statement lies beside the object, or none its
#: caller has read yet (it then reads the one there, expired ones too, and asks again).
NO_STATEMENT = "no statement beside it"


def takes_over(
    signing: str | None,
    there: Attestation | None,
    name: str,
    bucket: Verified,
    own: Verified | None,
    now: float,
    valid_for: float,
) -> str:
    """Why this tracker does not renew the statement beside the bucket's copy of ``name``
    (``bucket``: its size and the SHA-256 of its digest object), one it did not upload in
    this process; "" when it does (docs/http-api.md, "Signed statements").

    It renews only what it may sign: it signs (``signing``: its public key, None when it
    signs nothing) and checked those same bytes itself (``own``: its best checked copy of
    the name beside the bucket's, its disk cache's or a local file's: same size and SHA-256),
    and only a statement of its own key (``there``: the document beside the object, its
    signature valid and naming exactly that object, whatever its times) that nobody renews:
    less than a quarter of ``valid_for`` left of it at ``now`` (its replica signs it again
    with half left: a quarter is past its health watcher's round) or expired. Its replica
    restarted (a restart forgets which objects were its uploads) or stopped; another key's
    statement stays that key's, which is what its clients trust, until it expired: then no
    client can use it, and nobody renews it (its key rotated away, its replica gone), so
    it is taken over too: kept, the object went without a statement for good."""
    if signing is None:
        return "not signing"
    if (
        own is None
        or own.checked_at is None
        or (own.sha256, own.size) != (bucket.sha256, bucket.size)
    ):
        return "those bytes not checked here"
    if there is None:
        return NO_STATEMENT
    said = there.statement
    if there.signer != signing:
        return "another key's statement" if now < said.expires else ""
    if (said.name, said.size, said.sha256) != (name, bucket.size, bucket.sha256):
        return "a statement of other bytes"
    if now < said.expires - valid_for / 4:
        return "renewed by its replica"
    return ""


def already_said(there: Attestation | None, ours: Attestation, valid_for: float) -> bool:
    """True when ``there`` (the document beside a bucket copy, its signature valid and naming
    exactly that object; None: none, or refused) already says what writing ``ours`` (just
    signed, for ``valid_for`` seconds) would: the same key, of the same bytes, a level at
    least ours, expiring no more than a quarter of ``valid_for`` before ours (another replica
    of that key renewed it lately). Several replicas of one key renewing one object then
    write it about once per half ``valid_for`` between them, never each its own over the
    others'; and one that left it, signing again half a ``valid_for`` later, finds it with a
    quarter of its life left at least, and writes then."""
    if there is None or there.signer != ours.signer:
        return False
    said, wanted = there.statement, ours.statement
    if (said.name, said.size, said.sha256) != (wanted.name, wanted.size, wanted.sha256):
        return False
    return said.level >= wanted.level and said.expires >= wanted.expires - valid_for / 4
