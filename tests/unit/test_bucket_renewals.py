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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio.testing
from helpers_statements import SHA, signer
from helpers_uploads import upload
from test_objectstore_growth import PREFIX, MemBucket, store

from tracker.core.digests import BUCKET, CACHE, Digests, Verified
from tracker.errors import StoreConflict, StoreError
from tracker.objectstore.known import KNOWN_FOR
from tracker.objectstore.sides import restate
from tracker.objectstore.tier import ObjectTier
from tracker.proof.levels import STRUCTURE_ONLY, Level, Proof
from tracker.proof.records.attestations import Attestations
from tracker.proof.records.attesting import held_copy, statement_of
from tracker.proof.statements import parse_document

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
KEY = f"{PREFIX}g/{FULL}"
PROOF = Proof(Level.ACCOUNTS, "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", "FF2m")
VALID = 600.0
ROUND = 5.0  # the health watcher's
#: The bucket copy as a replica that checked its bytes holds it.
OURS = Verified(SHA, PROOF, 3695, 1_000.0)


async def restarted(bucket: MemBucket, tmp_path: Path, key: int = 1) -> ObjectTier:
    """The replica of key 1 that uploaded ``FULL`` to ``bucket``, restarted after its
    statement there expired, with its own check of those bytes in its disk cache (kept
    across the restart), started up; signing with key ``key`` from then on."""
    data = b"archive bytes" * 300
    uploader = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    uploader.attestations.configure(signer(1), VALID, time.time())
    await upload(uploader, tmp_path, "g", FULL, data)
    said = parse_document(bucket.objects[KEY + ".attestation"][1])
    # It restarted after its statement expired (its valid_for is short, its restart was not).
    expired = signer(1).sign(attrs.evolve(said.statement, expires=int(time.time()) - 1))
    await bucket.put(KEY + ".attestation", expired.encode())
    again = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    again.attestations.configure(signer(key), VALID, time.time())
    own = Verified(hashlib.sha256(data).hexdigest(), STRUCTURE_ONLY, len(data), 1_000.0)
    again.digests.hold(CACHE, "g", FULL, own)
    await again.startup()
    assert again.digests.of(BUCKET, "g", FULL) is not None  # read, its statement refused
    return again


async def renewed_by(again: ObjectTier, bucket: MemBucket, key: int = 1) -> None:
    """``again`` took the statement over: it wrote its own (of key ``key``), of its own
    check, for VALID."""
    again.attestations.sync(time.time())
    await again._restate()
    renewed = parse_document(bucket.objects[KEY + ".attestation"][1])
    assert renewed.signer == signer(key).public_key
    assert renewed.statement.expires > time.time() + VALID - 60
    assert renewed.statement.checked_at == 1_000
    assert again.attestations.uploaded() == [("g", FULL, renewed)]


async def test_a_restarted_replica_takes_over_its_expired_statement_long_after_startup(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    bucket = MemBucket()
    again = await restarted(bucket, tmp_path)
    mock_clock.jump(KNOWN_FOR + 1)  # what start-up saw of the bucket is no longer fresh
    await again.take_over()
    await renewed_by(again, bucket)


async def test_a_replica_restarted_with_a_new_key_takes_over_the_old_keys_expired_statement(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Its attest key rotated across the restart: the old key's statement, expired, was
    "another key's statement" for good, never renewed by anyone, and the object went
    without a statement on every replica. Expired, no client can use it: it is taken
    over, under the new key."""
    bucket = MemBucket()
    again = await restarted(bucket, tmp_path, key=2)
    mock_clock.jump(KNOWN_FOR + 1)
    await again.take_over()
    await renewed_by(again, bucket, key=2)


class Hiccup(MemBucket):
    """The bucket in memory whose next read of a statement object (a conditional write's,
    or a take-over's) fails as a store that does not answer in time."""

    def __init__(self) -> None:
        super().__init__()
        self.fails = 0

    async def get_small_tagged(self, key: str, limit: int = 4096) -> tuple[bytes, str] | None:
        if self.fails:
            self.fails -= 1
            raise StoreError("GET: no answer within 10s")
        return await super().get_small_tagged(key, limit)


async def test_a_take_over_whose_read_failed_reads_again_at_the_next_round(
    tmp_path: Path,
) -> None:
    """The read of the statement there failed (the store did not answer in time): the
    object was marked looked at all the same, and never looked at again while it held the
    same version and statement, so the statement its uploader no longer renewed expired on
    every replica, as before take-overs."""
    bucket = Hiccup()
    again = await restarted(bucket, tmp_path)
    bucket.fails = 1
    with pytest.raises(StoreError):  # (the health watcher logs it and goes on)
        await again.take_over()
    assert again.attestations.uploaded() == []
    await again.take_over()  # its next round
    await renewed_by(again, bucket)


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


class Racing(MemBucket):
    """The bucket in memory holding each write to its condition as S3 does (``If-Match``:
    only over that ETag; ``If-None-Match: *``: only where there is none; StoreConflict
    otherwise), with ``between`` run once between a replica's read of the statement object
    and its write: another replica of the key renewing it at that very moment."""

    def __init__(self) -> None:
        super().__init__()
        self.between: Callable[[], Awaitable[object]] | None = None
        self.written = 0

    async def get_small_tagged(self, key: str, limit: int = 4096) -> tuple[bytes, str] | None:
        got = await super().get_small_tagged(key, limit)
        between, self.between = self.between, None
        if between is not None:
            await between()
        return got

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str = "",
        if_none_match: bool = False,
        **extra: Any,
    ) -> None:
        held = self.objects.get(key)
        if (if_none_match and held is not None) or (
            if_match and (held is None or held[0].etag != if_match)
        ):
            raise StoreConflict("PUT: PreconditionFailed (HTTP 412)")
        self.written += key == KEY + ".attestation"
        await super().put(key, data, **extra)


@pytest.mark.parametrize("before", [None, 1_500], ids=["none there", "an old one there"])
async def test_of_two_replicas_renewing_at_once_one_writes_and_the_other_leaves_it(
    before: int | None,
) -> None:
    """Both read the statement object (none, or an old one), then both write: the second
    write names what its replica read, which the first replaced, and is refused; that
    replica reads again at its next round and leaves what the other wrote (it says as much,
    as long). Unconditional, the second write replaced the first: each its own over the
    other's (docs/http-api.md, "Signed statements")."""
    bucket = Racing()
    await bucket.put(KEY, b"x" * 3695)
    info = await bucket.head(KEY)
    assert info is not None
    if before is not None:  # what its uploader wrote before it restarted
        copy = held_copy(FULL, OURS)
        assert copy is not None
        old = signer(1).sign(statement_of(copy, before, VALID))
        await bucket.put(KEY + ".attestation", old.encode())
    renewing = []
    for at in (2_000.0, 2_001.0):
        digests = Digests()
        digests.hold(BUCKET, "g", FULL, OURS)
        attestations = Attestations(digests)
        attestations.configure(signer(1), VALID)
        attestations.sync(at)
        stated: dict[str, Any] = {}
        renewing.append((attestations, stated))
    (first, first_stated), (second, second_stated) = renewing
    ((_g, _n, firsts),) = first.uploaded()
    ((_g, _n, seconds),) = second.uploaded()

    def second_round() -> Awaitable[object]:
        return restate(bucket, PREFIX, second, second_stated, {KEY: info.etag})  # type: ignore[arg-type]

    bucket.between = second_round  # the second writes between the first's read and write
    await restate(bucket, PREFIX, first, first_stated, {KEY: info.etag})  # type: ignore[arg-type]
    assert parse_document(bucket.objects[KEY + ".attestation"][1]) == seconds
    assert (first_stated, second_stated) == ({}, {KEY: seconds})  # the first: not written
    await restate(bucket, PREFIX, first, first_stated, {KEY: info.etag})  # type: ignore[arg-type]
    assert parse_document(bucket.objects[KEY + ".attestation"][1]) == seconds
    assert first_stated == {KEY: firsts}  # ... and finds it said: left
    assert bucket.written == 1 + (before is not None)


async def test_a_statement_read_expired_is_served_once_its_uploader_wrote_it_again(
    tmp_path: Path,
) -> None:
    """A replica read the statement beside an object while it was expired (its uploader
    down past ``valid_for``) and held the copy with none; the uploader, back, wrote it
    again, and this replica never read it again (only statements held came due), serving
    none for as long as the object lasted. A copy that serves none has its statement object
    looked at again every LOOK_AGAIN_EVERY."""
    from tracker.objectstore.sides import LOOK_AGAIN_EVERY, reread

    bucket = MemBucket()
    uploader = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    uploader.attestations.configure(signer(1), VALID, time.time())
    await upload(uploader, tmp_path, "g", FULL, b"archive bytes" * 300)
    fresh = bucket.objects[KEY + ".attestation"][1]
    said = parse_document(fresh)
    expired = signer(1).sign(attrs.evolve(said.statement, expires=int(time.time()) - 1))
    await bucket.put(KEY + ".attestation", expired.encode())
    observer = ObjectTier(store(), bucket)  # type: ignore[arg-type]
    await observer.startup()
    held = observer.digests.of(BUCKET, "g", FULL)
    assert held is not None and held.attestation is None  # read expired: refused
    await bucket.put(KEY + ".attestation", fresh)  # its uploader back: written again
    now = time.time()

    async def round_at(at: float) -> None:
        await reread(observer.bucket, PREFIX, observer.digests, observer._reads, at, _ignored)

    await round_at(now)
    await round_at(now + LOOK_AGAIN_EVERY / 2)
    held = observer.digests.of(BUCKET, "g", FULL)
    assert held is not None and held.attestation is None  # not read again at every round
    await round_at(now + LOOK_AGAIN_EVERY)
    held = observer.digests.of(BUCKET, "g", FULL)
    assert held is not None and held.attestation == said


def _ignored(_what: str) -> None:
    return None
