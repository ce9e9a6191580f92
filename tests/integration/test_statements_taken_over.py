"""A statement of the bucket that its uploader no longer renews (docs/http-api.md, "Signed
statements"): real trackers on 127.0.0.1, a real upstream, a real archive and a real
SeaweedFS.

A replica renews the statements beside the objects it uploaded; a restart forgot which those
were, and every replica then served the archive without a statement once the last one
expired. A replica that signs with the key of a statement nobody renews, and holds its own
check of those bytes (its disk cache's copy, kept across the restart), takes it over; one
that never checked them writes nothing, nor one of another key while the statement holds
(expired, another key's is taken over too: its key rotated away, nobody renews it).
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import attrs
import pytest
import trio
from helpers_proxy import GROUP, TrackerUnderTest, advertise_files, make_config, running_tracker
from helpers_proxy import wait_for as wait_until_true
from helpers_replicas import idle, store
from helpers_s3 import BUCKET, Weed
from helpers_statements import signer
from helpers_tracker import wait_until
from helpers_upstream import FakeUpstream, serving
from helpers_wire import raw_request
from test_attestations import GOOD, NAME, ROUTES, attest, fill, logged, served

from tracker.config.schema import Config
from tracker.objectstore.tier import ObjectTier
from tracker.proof.statements import Attestation, parse_document

HOUR = 3600.0


def config(weed: Weed, tmp_path: Path, prefix: str, cache: str, key: int) -> Config:
    """A replica over ``prefix`` of ``weed``'s bucket with the disk cache ``cache`` (the same
    one across a restart), checking archives and signing with key ``key`` for an hour."""
    return make_config(
        tmp_path / cache,
        object_store=store(weed, prefix),
        verify_archives=True,
        attest=attest(tmp_path, key, valid_for=HOUR),
    )


def tier(t: TrackerUnderTest) -> ObjectTier:
    objects = t.parts.objects
    assert objects is not None
    return objects.tier


class Beside:
    """The statement object beside the archive in the bucket."""

    def __init__(self, weed: Weed, prefix: str) -> None:
        self.s3, self.key = weed.client(), f"{prefix}{GROUP}/{NAME}.attestation"

    def raw(self) -> bytes:
        body: bytes = self.s3.get_object(Bucket=BUCKET, Key=self.key)["Body"].read()
        return body

    def document(self) -> Attestation:
        return parse_document(self.raw())

    def put(self, document: Attestation) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=self.key, Body=document.encode())


async def uploaded_once(weed: Weed, up: FakeUpstream, tmp_path: Path, prefix: str) -> Attestation:
    """The archive uploaded by a replica of key 1 with the disk cache ``a`` (it stopped
    since); the statement it wrote beside it."""
    async with running_tracker(config(weed, tmp_path, prefix, "a", 1)) as a:
        advertise_files(a.index, up, up.files)
        await fill(a)
        await wait_until_true(lambda: f"{prefix}{GROUP}/{NAME}" in weed.objects(prefix), 30)
        await idle(a)
    return Beside(weed, prefix).document()


async def rounds(t: TrackerUnderTest, count: int) -> None:
    """``count`` rounds of ``t``'s health watcher (as the service runs it, more often)."""
    watched = tier(t)
    await watched.startup()  # as the service starts it: reads what lies beside
    first = watched.probes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watched.watch, 0.1)
        await wait_until_true(lambda: watched.probes >= first + count, 30)
        nursery.cancel_scope.cancel()


async def test_a_restarted_uploader_renews_its_statement_before_it_expires(
    weed: Weed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tracker.objectstore")
    prefix = f"taken-r-{secrets.token_hex(4)}/"
    beside = Beside(weed, prefix)
    async with serving(FakeUpstream(files={NAME: GOOD})) as up:
        first = await uploaded_once(weed, up, tmp_path, prefix)
        # What the uploader left before it restarted: its statement, 16 s from its end (as
        # one of a short valid_for is at a restart), the one every replica serves.
        now = int(time.time())
        ending = signer(1).sign(attrs.evolve(first.statement, expires=now + 16))
        beside.put(ending)
        async with (
            running_tracker(config(weed, tmp_path, prefix, "a", 1)) as again,
            running_tracker(config(weed, tmp_path, prefix, "b", 2)) as reader,
        ):
            advertise_files(reader.index, up, up.files)
            await tier(again).startup()  # as the service starts it: reads what lies beside
            await tier(reader).startup()
            assert await served(reader, ROUTES[0]) == ending

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tier(again).watch, 0.2)
                nursery.start_soon(tier(reader).watch, 0.2)

                async def renewed() -> bool:
                    return await served(reader, ROUTES[0]) != ending  # never none meanwhile

                await wait_until(renewed, timeout=ending.statement.expires - time.time())
                nursery.cancel_scope.cancel()
            assert time.time() < ending.statement.expires
            now_served = await served(reader, ROUTES[0])
        assert now_served == beside.document() and now_served.signer == signer(1).public_key
        said = now_served.statement
        # What the restarted replica's own check of those bytes says, for another hour.
        assert attrs.evolve(said, checked_at=0, expires=0) == attrs.evolve(
            first.statement, checked_at=0, expires=0
        )
        assert said.expires >= now + HOUR - 60
        (line,) = logged(caplog, "bucket_attestation_taken_over")
        assert f"{prefix}{GROUP}/{NAME}" in line
        assert len(up.gets(NAME)) == 1  # nothing fetched again


async def test_only_a_replica_that_checked_those_bytes_takes_an_expired_one_over(
    weed: Weed, tmp_path: Path
) -> None:
    """A replica of the key that never checked those bytes signs nothing of what another
    proved. Its uploader back with another key (rotated across the restart), its check of
    those bytes in its disk cache: the old key's statement expired, no client can use it
    and nobody renews it, so it is taken over under the new key (left alone, the object
    went without a statement for good)."""
    prefix = f"taken-x-{secrets.token_hex(4)}/"
    beside = Beside(weed, prefix)
    async with serving(FakeUpstream(files={NAME: GOOD})) as up:
        first = await uploaded_once(weed, up, tmp_path, prefix)
        # The uploader stayed away longer than its statement's life: it expired.
        now = int(time.time())
        expired = signer(1).sign(attrs.evolve(first.statement, expires=now - 1))
        beside.put(expired)
        # The same key, but it never checked those bytes (its own, empty, disk cache): it
        # signs nothing of what another replica proved.
        async with running_tracker(config(weed, tmp_path, prefix, "c", 1)) as stranger:
            await rounds(stranger, 5)
            assert tier(stranger).attestations.uploaded() == []
        assert beside.raw() == expired.encode()
        # Its uploader back with another key: its check of those bytes is in its disk cache.
        async with running_tracker(config(weed, tmp_path, prefix, "a", 2)) as again:
            watched = tier(again)
            await watched.startup()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watched.watch, 0.1)
                await wait_until_true(lambda: beside.raw() != expired.encode(), 30)
                nursery.cancel_scope.cancel()
        renewed = beside.document()
        assert renewed.signer == signer(2).public_key
        assert renewed.statement.expires >= now + HOUR - 60
        assert (renewed.statement.name, renewed.statement.sha256) == (NAME, first.statement.sha256)
        # and another replica serves it
        async with running_tracker(config(weed, tmp_path, prefix, "d", 2)) as reader:
            advertise_files(reader.index, up, up.files)
            await tier(reader).startup()
            assert await served(reader, ROUTES[0]) == renewed
            answer = await raw_request(reader.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
            assert answer.status == 200
