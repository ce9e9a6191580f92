"""What a statement says of a checked copy (proof.records.attesting), when the daemon signs it
again, the check of one read beside a bucket object, and what the daemon serves
(proof.records.attestations)."""

from __future__ import annotations

import json
import re

import attrs
import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from helpers_statements import SHA, signer

from tracker.core.digests import Digests, Verified
from tracker.core.snapshots import parse_archive_name
from tracker.errors import StatementInvalid
from tracker.proof.levels import Level, Proof
from tracker.proof.records.attestations import Attestations
from tracker.proof.records.attesting import (
    NO_STATEMENT,
    HeldCopy,
    already_said,
    due,
    held_copy,
    naming,
    of_copy,
    reread_due,
    statement_of,
    takes_over,
    to_serve,
)
from tracker.proof.statements import (
    DOMAIN,
    Attestation,
    Statement,
    check_times,
    parse_document,
)

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
INCREMENTAL = "incremental-snapshot-100-160-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
PROOF = Proof(Level.ACCOUNTS, "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", "FF2m", 0.75)


def held(name: str) -> HeldCopy:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return HeldCopy(parsed, 3695, SHA, PROOF, 1_000.0)


def test_a_statement_says_what_the_check_proved_and_parses_back() -> None:
    key = signer()
    document = parse_document(key.sign(statement_of(held(FULL), 2_000.0, 600.0)).encode())
    statement = document.statement
    assert (statement.name, statement.size, statement.sha256) == (FULL, 3695, SHA)
    assert (statement.slot, statement.base_slot) == (100, None)
    assert (statement.level, statement.bank_hash, statement.voted_stake) == (
        Level.ACCOUNTS,
        "FF2m",
        0.75,
    )
    assert (statement.checked_at, statement.expires) == (1_000, 2_600)
    assert document.signer == key.public_key
    inc = statement_of(held(INCREMENTAL), 2_000.0, 600.0)
    assert (inc.slot, inc.base_slot) == (160, 100)


def test_a_copy_checked_ahead_of_the_clock_is_stated_checked_when_signed() -> None:
    """The clock went back since the check ended (set right after the check; a cached
    file's digest written while it ran ahead): the statement says the copy was checked no
    later than it is signed, which every reader takes, not a time they refuse as ahead of
    theirs."""
    copy = attrs.evolve(held(FULL), checked_at=2_000.0 + 3_600)
    stated = statement_of(copy, 2_000.0, 600.0)
    assert (stated.checked_at, stated.expires) == (2_000, 2_600)
    check_times(stated, 2_000.0)


# -- what the daemon signs, and when again (proof.records.attesting.held_copy, due) ----------------

VALID = 600.0


def said(**changes: object) -> Statement:
    """What is said of the full's copy signed at 2,000."""
    return attrs.evolve(statement_of(held(FULL), 2_000.0, VALID), **changes)  # type: ignore[misc, arg-type]


@pytest.mark.parametrize(
    ("signed", "wanted", "now", "again"),
    [
        (None, said(), 2_000.0, True),  # nothing signed yet
        (said(), said(expires=2_700), 2_100.0, False),  # young: kept
        (said(), said(expires=2_899), 2_299.0, False),  # just before half its life
        (said(), said(expires=2_900), 2_300.0, True),  # half its life passed
        (said(), said(expires=3_000), 2_400.0, True),
        (said(), said(level=Level.CLUSTER, voted_stake=0.8), 2_001.0, True),  # lifted
        (said(), said(sha256="cd" * 32), 2_001.0, True),  # another copy
        (said(), said(size=1), 2_001.0, True),
        (said(), said(checked_at=1_500), 2_001.0, True),  # checked again
    ],
)
def test_a_statement_is_signed_again_when_due(
    signed: Statement | None, wanted: Statement, now: float, again: bool
) -> None:
    assert due(signed, wanted, now, VALID) is again


@pytest.mark.parametrize(
    ("signed_at", "now", "again"),
    [
        (1_990.0, 2_001.0, False),  # the clock behind the check: the same check, kept
        (1_990.0, 2_289.0, False),
        (1_990.0, 2_290.0, True),  # half its life passed
    ],
)
def test_a_check_ahead_of_the_clock_is_not_signed_again_at_every_call(
    signed_at: float, now: float, again: bool
) -> None:
    """The clock went back since the check ended (at 2,500): each statement says it was
    checked when it was signed (statement_of), the same check however often it is asked."""
    copy = attrs.evolve(held(FULL), checked_at=2_500.0)
    signed = statement_of(copy, signed_at, VALID)
    assert due(signed, statement_of(copy, now, VALID), now, VALID, ahead=True) is again


def test_once_the_clock_passed_the_check_it_is_signed_again_with_its_own_time() -> None:
    copy = attrs.evolve(held(FULL), checked_at=2_500.0)
    signed = statement_of(copy, 1_990.0, VALID)  # stated checked at 1,990
    wanted = statement_of(copy, 2_501.0, VALID)
    assert wanted.checked_at == 2_500
    assert due(signed, wanted, 2_501.0, VALID, ahead=False)


def test_a_clock_behind_the_check_signs_nothing_again_when_other_digests_change() -> None:
    """Every change of the held digests (another copy checked, a bucket copy read) had the
    statement of a copy checked ahead of the clock signed again (its checked_at, the time of
    signing, had moved): one signature, one new listing version, and for an upload one
    write to the bucket, per change while the clock is behind."""
    digests = Digests()
    digests.hold("bucket", "g", FULL, Verified(SHA, PROOF, 3695, 2_000.0 + 3_600))
    attestations = Attestations(digests)
    attestations.configure(signer(), VALID)
    attestations.sync(2_000.0)
    ((_g, _n, first),) = attestations.uploaded()
    version = attestations.version
    for second in range(1, 61):  # a change of the digests every second for a minute
        digests.hold("cache", "g", f"other-{second}", Verified("cd" * 32))
        attestations.sync(2_000.0 + second)
    assert attestations.uploaded() == [("g", FULL, first)]
    assert attestations.version == version


@pytest.mark.parametrize(
    ("name", "verified", "signable"),
    [
        (FULL, Verified(SHA, PROOF, 3695, 1_000.0), True),
        (INCREMENTAL, Verified(SHA, PROOF, 3695, 1_000.0), True),
        (FULL, Verified(SHA, PROOF, 3695, None), False),  # another replica checked it
        (FULL, Verified(SHA, PROOF, 0, 1_000.0), False),  # size unknown
        ("snapshot-100-xyz.tar.zst.part", Verified(SHA, PROOF, 3695, 1_000.0), False),
    ],
)
def test_only_a_copy_this_tracker_checked_of_known_size_is_signed(
    name: str, verified: Verified, signable: bool
) -> None:
    assert (held_copy(name, verified) is not None) is signable


def _document(**changes: object) -> bytes:
    return signer().sign(said(**changes)).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_document(), None),
        (_document(name=INCREMENTAL), "names incremental-snapshot"),
        (_document(size=3696), "names size 3696, the object has 3695"),
        (_document(sha256="cd" * 32), f"the object has {SHA}"),
        (_document(expires=2_500), "expired at 2500"),
        (_document(checked_at=2_801, expires=9_000), "checked at 2801, ahead of now"),
        (_document().replace(b'"signature": "', b'"signature": "2'), "signature"),
        (b"[]", "not a JSON object"),
        (b"{" * 20_000, "over 16384 bytes"),
    ],
)
def test_a_document_read_beside_an_object_must_vouch_for_exactly_it(
    raw: bytes, reason: str | None
) -> None:
    if reason is None:
        assert of_copy(raw, FULL, 3695, SHA, 2_500.0 - 1).statement == said()
        return
    with pytest.raises(StatementInvalid, match=re.escape(reason)):
        of_copy(raw, FULL, 3695, SHA, 2_500.0)


def test_a_document_naming_the_object_is_taken_whatever_its_times() -> None:
    """What a replica reads to take over its own statement: an expired one names the object
    as well as one that holds (docs/http-api.md, "Signed statements")."""
    assert naming(_document(expires=1_000), FULL, 3695, SHA).statement == said(expires=1_000)
    with pytest.raises(StatementInvalid, match="names size 3696"):
        naming(_document(size=3696), FULL, 3695, SHA)


# -- a statement nobody renews taken over (proof.records.attesting.takes_over) -------------------

KEY = signer(1).public_key
BUCKET_COPY = Verified(SHA, PROOF, 3695, None)
OWN = Verified(SHA, PROOF, 3695, 1_000.0)
NOT_HERE = "those bytes not checked here"


def beside(n: int = 1, **changes: object) -> Attestation:
    """A document of key ``n`` beside the bucket copy, signed at 2,000 for 600 s."""
    return parse_document(signer(n).sign(said(**changes)).encode())


@pytest.mark.parametrize(
    ("signing", "there", "own", "now", "why"),
    [
        (KEY, beside(), OWN, 2_450.0, ""),  # its own key's, a quarter of its life left
        (KEY, beside(), OWN, 2_600.0, ""),  # expired: nobody renewed it
        (KEY, beside(), OWN, 9_000.0, ""),
        (KEY, beside(), OWN, 2_449.0, "renewed by its replica"),  # its uploader renews it
        (KEY, beside(), OWN, 2_300.0, "renewed by its replica"),  # half its life: due now
        (None, beside(), OWN, 2_600.0, "not signing"),
        (KEY, beside(), None, 2_600.0, NOT_HERE),  # another replica's check
        (KEY, beside(), attrs.evolve(OWN, checked_at=None), 2_600.0, NOT_HERE),
        (KEY, beside(), attrs.evolve(OWN, sha256="cd" * 32), 2_600.0, NOT_HERE),
        (KEY, beside(), attrs.evolve(OWN, size=3696), 2_600.0, NOT_HERE),
        (KEY, None, OWN, 2_600.0, NO_STATEMENT),  # none, or none read yet
        (KEY, beside(2), OWN, 2_599.0, "another key's statement"),  # its clients trust it
        # expired (its key rotated away, its replica gone): nobody renews it, no client
        # can use it, so it is taken over, of whatever bytes it spoke
        (KEY, beside(2), OWN, 2_600.0, ""),
        (KEY, beside(2, sha256="cd" * 32), OWN, 2_600.0, ""),
        (KEY, beside(sha256="cd" * 32), OWN, 2_600.0, "a statement of other bytes"),
        (KEY, beside(size=3696), OWN, 2_600.0, "a statement of other bytes"),
        (KEY, beside(name=INCREMENTAL), OWN, 2_600.0, "a statement of other bytes"),
    ],
)
def test_only_an_own_statement_nobody_renews_of_bytes_checked_here_is_taken_over(
    signing: str | None, there: Attestation | None, own: Verified | None, now: float, why: str
) -> None:
    assert takes_over(signing, there, FULL, BUCKET_COPY, own, now, VALID) == why


@pytest.mark.parametrize(
    ("there", "ours", "left"),
    [
        (None, beside(), False),  # none there: written
        (beside(2), beside(), False),  # another key's: written over
        (beside(), beside(), True),  # the same: nothing to write
        (beside(), beside(expires=2_750), True),  # renewed lately by another replica
        (beside(), beside(expires=2_751), False),  # less than a quarter before ours: written
        (beside(), beside(expires=2_900), False),  # its own, half its life ago: written
        (beside(expires=2_900), beside(), True),  # holds longer already
        (beside(level=Level.MANIFEST), beside(), False),  # says less
        (beside(level=Level.CLUSTER, voted_stake=0.9), beside(), True),
        (beside(sha256="cd" * 32), beside(), False),  # of other bytes
    ],
)
def test_a_renewal_is_written_unless_the_one_there_already_says_it(
    there: Attestation | None, ours: Attestation, left: bool
) -> None:
    assert already_said(there, ours, VALID) is left


# -- another replica's statement read again (proof.records.attesting.reread_due, to_serve) --------


@pytest.mark.parametrize(
    ("taken_at", "expires", "read_at", "now", "again"),
    [
        # young: its replica renews it at half its life, but may sign it again at once (a
        # level lifted, a key rotated): every 60 s
        (2_000.0, 2_600.0, 2_000.0, 2_059.0, False),
        (2_000.0, 2_600.0, 2_000.0, 2_060.0, True),
        (2_000.0, 2_600.0, 2_240.0, 2_299.0, False),
        (2_000.0, 2_600.0, 2_250.0, 2_300.0, False),  # half its life: a quarter of what is left
        (2_000.0, 2_600.0, 2_200.0, 2_300.0, True),  # (at most 60 s) since the last read
        (2_000.0, 2_600.0, 2_300.0, 2_359.0, False),  # nothing newer: at most every 60 s
        (2_000.0, 2_600.0, 2_300.0, 2_360.0, True),
        (2_000.0, 2_600.0, 2_590.0, 2_592.0, False),  # 10 s left: every quarter of it
        (2_000.0, 2_600.0, 2_590.0, 2_592.5, True),
        (2_000.0, 2_600.0, 2_599.5, 2_600.0, False),  # never twice within a second
        (2_000.0, 2_600.0, 2_599.5, 2_600.5, True),
        (2_000.0, 2_600.0, 2_600.0, 2_659.0, False),  # expired: every 60 s
        (2_000.0, 2_600.0, 2_600.0, 2_660.0, True),
        (2_500.0, 2_600.0, 2_500.0, 2_549.0, False),  # taken late in its life: its half
        (2_500.0, 2_600.0, 2_500.0, 2_550.0, True),  # of what was left
        (0.0, 4.0, 0.0, 2.0, True),  # a short valid_for: read again before it expires
        (0.0, 4.0, 2.0, 2.9, False),
        (0.0, 4.0, 2.0, 3.0, True),
    ],
)
def test_a_statement_from_the_bucket_is_read_again_past_half_its_life(
    taken_at: float, expires: float, read_at: float, now: float, again: bool
) -> None:
    assert reread_due(taken_at, expires, read_at, now) is again


SERVED = parse_document(signer(2).sign(said()).encode())
RENEWED = parse_document(signer(2).sign(said(expires=2_900)).encode())
OLDER = parse_document(signer(2).sign(said(expires=2_500)).encode())
OTHER_KEY = parse_document(signer(3).sign(said()).encode())


@pytest.mark.parametrize(
    ("served", "read", "chosen"),
    [
        (SERVED, None, SERVED),  # none there, or refused: the old one until it expires
        (SERVED, SERVED, SERVED),  # not renewed yet
        (SERVED, RENEWED, RENEWED),  # renewed: served at once
        (SERVED, OLDER, SERVED),  # an older one put back: not taken
        (SERVED, OTHER_KEY, SERVED),  # no later: the one served stays
        (None, RENEWED, RENEWED),
        (None, None, None),
    ],
)
def test_the_statement_that_expires_last_is_served(
    served: Attestation | None, read: Attestation | None, chosen: Attestation | None
) -> None:
    assert to_serve(served, read) is chosen


# -- the daemon's statements (proof.records.attestations.Attestations) ----------------------------


def test_held_copies_are_signed_once_and_again_at_half_their_life() -> None:
    digests = Digests()
    attestations = Attestations(digests)
    attestations.sync(2_000.0)  # no key: nothing
    digests.hold("cache", "g", FULL, Verified(SHA, PROOF, 3695, 1_000.0))
    attestations.sync(2_000.0)
    assert attestations.documents("g", FULL) == []
    attestations.configure(signer(), VALID)
    attestations.sync(2_000.0)
    (first,) = attestations.documents("g", FULL)
    assert first.statement == said() and attestations.public_key == signer().public_key
    version = attestations.version
    attestations.sync(2_299.0)  # not due
    assert attestations.documents("g", FULL) == [first] and attestations.version == version
    attestations.sync(2_300.0)
    (renewed,) = attestations.documents("g", FULL)
    assert renewed.statement == said(expires=2_900) and attestations.version > version
    # Lifted to cluster: a new statement at once.
    lifted = Proof(Level.CLUSTER, PROOF.snapshot_hash, PROOF.bank_hash, 0.9)
    digests.hold("cache", "g", FULL, Verified(SHA, lifted, 3695, 1_000.0))
    attestations.sync(2_301.0)
    (cluster,) = attestations.documents("g", FULL)
    assert (cluster.statement.level, cluster.statement.voted_stake) == (Level.CLUSTER, 0.9)
    digests.drop("cache", "g", FULL)  # gone: its statement too
    attestations.sync(2_302.0)
    assert attestations.documents("g", FULL) == []
    assert attestations.documents_json("g", FULL, SHA) == []


def test_another_key_signs_again_and_no_key_signs_nothing() -> None:
    digests = Digests()
    digests.hold("cache", "g", FULL, Verified(SHA, PROOF, 3695, 1_000.0))
    attestations = Attestations(digests)
    attestations.configure(signer(1), VALID)
    attestations.sync(2_000.0)
    attestations.configure(signer(1), VALID)  # a reload that changed nothing keeps it
    assert len(attestations.documents("g", FULL)) == 1
    attestations.configure(signer(2), VALID)
    attestations.sync(2_000.0)
    assert [a.signer for a in attestations.documents("g", FULL)] == [signer(2).public_key]
    attestations.configure(None, 0.0)
    attestations.sync(2_000.0)
    assert attestations.documents("g", FULL) == []


def test_the_own_statement_comes_first_then_each_replica_s_from_the_bucket() -> None:
    digests = Digests()
    peer = parse_document(signer(2).sign(said()).encode())
    digests.hold("bucket", "g", FULL, Verified(SHA, PROOF, 3695, None, peer))
    attestations = Attestations(digests)
    attestations.configure(signer(1), VALID)
    attestations.sync(2_000.0)
    assert attestations.documents("g", FULL) == [peer]  # not checked here: not signed here
    digests.hold("cache", "g", FULL, Verified(SHA, PROOF, 3695, 1_000.0))
    attestations.sync(2_000.0)
    own, bucket = attestations.documents("g", FULL)
    assert (own.signer, bucket) == (signer(1).public_key, peer)
    uploaded = attestations.sign("g", INCREMENTAL, Verified(SHA, PROOF, 3695, 1_000.0), 2_000.0)
    assert uploaded is not None and attestations.documents("g", INCREMENTAL) == [uploaded]
    assert ("g", INCREMENTAL, uploaded) in attestations.uploaded()  # written beside it
    attestations.forget("g", INCREMENTAL, "bucket")  # the upload failed: nothing to restate
    assert attestations.documents("g", INCREMENTAL) == []
    assert all(name != INCREMENTAL for _g, name, _a in attestations.uploaded())
    # The bucket's statement expired: no longer served (and the listings render again).
    version = attestations.version
    attestations.sync(2_599.0)
    assert peer in attestations.documents("g", FULL)
    attestations.sync(2_600.0)
    assert peer not in attestations.documents("g", FULL) and attestations.version > version


def test_a_tracker_without_a_key_serves_the_bucket_s_statements_until_they_expire() -> None:
    digests = Digests()
    peer = parse_document(signer(2).sign(said()).encode())
    digests.hold("bucket", "g", FULL, Verified(SHA, PROOF, 3695, None, peer))
    attestations = Attestations(digests)
    attestations.sync(2_000.0)
    assert attestations.documents_json("g", FULL, SHA) == [peer.to_json()]
    attestations.sync(2_600.0)
    assert attestations.documents("g", FULL) == []


def test_what_the_signing_card_reads_since_when_how_many_and_the_last() -> None:
    """docs/http-api.md, "The status page": the key's load time, the statements held, the
    last one signed; another key starts again, no key shows nothing."""
    digests = Digests()
    digests.hold("cache", "g", FULL, Verified(SHA, PROOF, 3695, 1_000.0))
    attestations = Attestations(digests)
    assert (attestations.since, attestations.last_signed, attestations.held) == (None, None, 0)
    attestations.configure(signer(1), VALID, now=1_500.0)
    assert (attestations.since, attestations.last_signed, attestations.held) == (1_500.0, None, 0)
    attestations.sync(2_000.0)
    assert attestations.held == 1 and attestations.last_signed == (2_000.0, "g", FULL)
    attestations.configure(signer(1), VALID, now=1_900.0)  # a reload that changed nothing
    assert attestations.since == 1_500.0 and attestations.last_signed == (2_000.0, "g", FULL)
    digests.hold("local:/ledger/x", "g", INCREMENTAL, Verified(SHA, PROOF, 10, 1_000.0))
    attestations.sync(2_001.0)
    assert attestations.held == 2 and attestations.last_signed == (2_001.0, "g", INCREMENTAL)
    attestations.configure(signer(2), VALID, now=2_100.0)
    assert (attestations.since, attestations.last_signed, attestations.held) == (2_100.0, None, 0)
    attestations.configure(None, 0.0, now=2_200.0)
    assert (attestations.since, attestations.last_signed) == (None, None)


@pytest.mark.parametrize("kind", ["votes", "certificate"])
def test_a_statement_records_what_proved_the_cluster_level(kind: str) -> None:
    key = signer()
    proof = attrs.evolve(PROOF, level=Level.CLUSTER, cluster_proof=kind)
    copy = attrs.evolve(held(FULL), proof=proof)
    document = parse_document(key.sign(statement_of(copy, 2_000.0, 600.0)).encode())
    assert (document.statement.level, document.statement.cluster_proof) == (Level.CLUSTER, kind)
    assert f'"cluster_proof":"{kind}"' in document.statement.canonical().decode()
    # Below cluster nothing is recorded, and a statement made before the key reads as signed.
    below = parse_document(key.sign(statement_of(held(FULL), 2_000.0, 600.0)).encode())
    assert below.statement.cluster_proof is None
    assert "cluster_proof" not in below.statement.canonical().decode()


@pytest.mark.parametrize(
    ("level", "kind", "reason"),
    [
        ("accounts", "votes", "cluster_proof is not votes or certificate at cluster"),
        ("cluster", "gossip", "cluster_proof is not votes or certificate at cluster"),
        ("cluster", None, "cluster_proof is not votes or certificate at cluster"),
        ("cluster", "votes", None),
    ],
)
def test_a_statement_whose_proof_kind_does_not_fit_is_refused(
    level: str, kind: object, reason: str | None
) -> None:
    private = Ed25519PrivateKey.generate()
    body = json.loads(statement_of(held(FULL), 2_000.0, 600.0).canonical())
    body["level"], body["cluster_proof"] = level, kind
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    document = {
        "statement": text,
        "signer": base58.b58encode(public).decode(),
        "signature": base58.b58encode(private.sign(DOMAIN + text.encode())).decode(),
    }
    raw = json.dumps(document).encode()
    if reason is None:  # the same text signed, but fitting: read back
        assert parse_document(raw).statement.cluster_proof == kind
    else:
        with pytest.raises(StatementInvalid, match=reason):
            parse_document(raw)


def test_a_listing_carries_the_statements_of_the_listed_copy_only() -> None:
    """The cache's copy and another replica's bucket copy of the name, other bytes: the
    listing of the cache's copy never carries the statement of the bucket's bytes (a client
    weighing statements against its copy would count one of other bytes)."""
    other = "cd" * 32
    digests = Digests()
    peer = parse_document(signer(2).sign(attrs.evolve(said(), sha256=other)).encode())
    digests.hold("bucket", "g", FULL, Verified(other, PROOF, 3695, None, peer))
    digests.hold("cache", "g", FULL, Verified(SHA, PROOF, 3695, 1_000.0))
    attestations = Attestations(digests)
    attestations.configure(signer(1), VALID)
    attestations.sync(2_000.0)
    assert len(attestations.documents("g", FULL)) == 2
    [own] = attestations.documents_json("g", FULL, SHA)
    assert own["signer"] == signer(1).public_key
    assert attestations.documents_json("g", FULL, other) == [peer.to_json()]
