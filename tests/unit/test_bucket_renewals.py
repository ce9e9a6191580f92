"""The statements beside bucket objects renewed (docs/http-api.md, "Signed statements"): a
replica that restarted takes over its own key's statement nobody renews beside bytes it
checked itself, however long ago it read the bucket; replicas of one key renewing one
object each write only what lies there does not already say, so between them the object's
statement is written about once per half ``valid_for``, never each its own over the others'
at every signing, and it always holds for about half its life. Over a bucket in memory
(test_objectstore_growth.MemBucket), trio's mock clock and times passed in: no waiting."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio.testing
from helpers_statements import SHA, signer
from helpers_uploads import upload
from test_objectstore_growth import PREFIX, MemBucket, store

from tracker.core.digests import BUCKET, CACHE, Digests, Verified
from tracker.objectstore.known import KNOWN_FOR
from tracker.objectstore.sides import restate
from tracker.objectstore.tier import ObjectTier
from tracker.proof.levels import STRUCTURE_ONLY, Level, Proof
from tracker.proof.records.attestations import Attestations
from tracker.proof.statements import parse_document

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
KEY = f"{PREFIX}g/{FULL}"
PROOF = Proof(Level.ACCOUNTS, "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", "FF2m")
VALID = 600.0
ROUND = 5.0  # the health watcher's


async def test_a_restarted_replica_takes_over_its_expired_statement_long_after_startup(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    bucket = MemBucket()
    data = b"archive bytes" * 300
    uploader = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    uploader.attestations.configure(signer(1), VALID, time.time())
    await upload(uploader, tmp_path, "g", FULL, data)
    said = parse_document(bucket.objects[KEY + ".attestation"][1])
    # It restarted after its statement expired (its valid_for is short, its restart was not).
    expired = signer(1).sign(attrs.evolve(said.statement, expires=int(time.time()) - 1))
    await bucket.put(KEY + ".attestation", expired.encode())
    again = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    again.attestations.configure(signer(1), VALID, time.time())
    # its own check of those bytes, in its disk cache across the restart
    own = Verified(hashlib.sha256(data).hexdigest(), STRUCTURE_ONLY, len(data), 1_000.0)
    again.digests.hold(CACHE, "g", FULL, own)
    await again.startup()
    assert again.digests.of(BUCKET, "g", FULL) is not None  # read, its statement refused
    mock_clock.jump(KNOWN_FOR + 1)  # what start-up saw of the bucket is no longer fresh
    await again.take_over()
    again.attestations.sync(time.time())
    await again._restate()
    renewed = parse_document(bucket.objects[KEY + ".attestation"][1])
    assert renewed.signer == signer(1).public_key
    assert renewed.statement.expires > time.time() + VALID - 60
    assert renewed.statement.checked_at == 1_000
    assert again.attestations.uploaded() == [("g", FULL, renewed)]


class CountedWrites(MemBucket):
    """The bucket in memory, counting the writes of the statement object."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    async def put(self, key: str, data: bytes, **extra: Any) -> None:
        self.written += key == KEY + ".attestation"
        await super().put(key, data, **extra)


@pytest.mark.parametrize("apart", [ROUND / 2, VALID / 8, 3 * VALID / 8])
async def test_replicas_of_one_key_write_its_renewal_about_once_per_half_life(
    apart: float,
) -> None:
    """Two replicas of one key, each with its own check of the object's bytes, renew its
    statement (``apart``: seconds between their first signings); the second leaves half
    way. What lies there always holds for at least a quarter of ``valid_for`` (a reader reads
    it again from half its life), and it is written about once per half life, not once per
    replica and half life."""
    bucket = CountedWrites()
    await bucket.put(KEY, b"x" * 3695)
    info = await bucket.head(KEY)
    assert info is not None
    start, span = 2_000.0, 10 * VALID
    renewing = []
    for checked_at, begins, ends in ((1_000.0, 0.0, span), (1_100.0, apart, span / 2)):
        digests = Digests()
        digests.hold(BUCKET, "g", FULL, Verified(SHA, PROOF, 3695, checked_at))
        attestations = Attestations(digests)
        attestations.configure(signer(1), VALID)
        renewing.append((attestations, {}, {KEY: info.etag}, begins, ends))
    now = start
    while now < start + span:
        for attestations, stated, uploaded, begins, ends in renewing:
            if begins <= now - start < ends:
                attestations.sync(now)  # (a round of its health watcher)
                await restate(bucket, PREFIX, attestations, stated, uploaded)  # type: ignore[arg-type]
        there = parse_document(bucket.objects[KEY + ".attestation"][1]).statement
        assert there.expires - now >= VALID / 4 - ROUND
        now += ROUND
    # Each wrote when it signed again, every half life: twice as many while both ran.
    assert bucket.written <= span / (VALID / 2) + 2
