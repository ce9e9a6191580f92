"""A store that answers late (docs/replicas.md): the hand-out, the lock and its takeover
against a real SeaweedFS behind a relay that holds the requests a test names
(tests/helpers_heldstore.py). What a client waits for stays within ``request_timeout``; no
URL is handed out of an object retention deleted, nor one that outlives retention's hold;
a lock is never left behind by a request that went away; a holder's lease ends before
another replica can take its lock over, past it no upload is completed until a renewal is
applied (one answered late keeps the lock), and one that hangs gives the lock up; a release
never deletes the lock of the replica that took it over, and a create whose answer was lost
leaves no upload behind. (That a takeover's abort asks the store within
``request_timeout``: test_objectstore_keeping.py, whose takeover fails on the request path's
bucket.)"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from helpers_bucket import put, tier_of
from helpers_heldstore import Held, HeldStore
from helpers_proxy import GROUP
from helpers_s3 import BUCKET, Weed
from helpers_uploads import Done
from names import full_name

from tracker.errors import StoreConflict, StoreError
from tracker.objectstore.locks import Holder, Lock
from tracker.objectstore.tier import ObjectTier

FULL, NEWER = full_name(9000), full_name(9500)
ARCHIVE = b"archive " * 1000


@asynccontextmanager
async def behind_a_relay(weed: Weed, **store: Any) -> AsyncIterator[tuple[ObjectTier, HeldStore]]:
    """A tier whose store is ``weed`` behind a :class:`HeldStore`, and the relay."""
    relay = HeldStore(weed.endpoint)
    with trio.fail_after(60):  # a request a test waits for that never comes
        async with trio.open_nursery() as nursery:
            base = await nursery.start(relay.serve)
            yield tier_of(weed, endpoint=base, **store), relay
            for held in relay.holds:
                held.release.set()
            nursery.cancel_scope.cancel()


async def handed_out(
    tier: ObjectTier, held: Held, meanwhile: Callable[[], Awaitable[object]]
) -> str | None:
    """What ``tier`` hands out of FULL when ``meanwhile`` runs while the request ``held``
    names is held."""
    urls: list[str | None] = []
    async with trio.open_nursery() as nursery:

        async def hand_out() -> None:
            urls.append(await tier.handout(GROUP, FULL))

        nursery.start_soon(hand_out)
        await held.arrived.wait()
        await meanwhile()
        held.release.set()
    [url] = urls
    return url


def signed_for(url: str) -> int:
    """The seconds a presigned URL was signed to be valid."""
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


async def test_no_url_of_an_object_a_whole_retention_deleted_meanwhile(weed: Weed) -> None:
    """The hand-out looked at the object, then another replica's retention ran from start to
    end (retiring mark, delete, retiring mark gone) before the hand-out's mark: it found no
    retiring mark and handed out a URL of the deleted object (404 for the client)."""
    async with behind_a_relay(weed, keep_previous=0, request_timeout=10.0) as (a, relay):
        b = tier_of(weed, prefix=a.store.prefix, keep_previous=0)
        put(weed, a.object_key(GROUP, FULL), b"old archive")
        put(weed, a.object_key(GROUP, NEWER), b"newer archive")
        a.bucket.health.reads_proven = True  # as after the health watcher read a byte
        mark = relay.hold(lambda line: line.startswith("PUT") and ".handed/" in line)

        async def meanwhile() -> None:  # it saw the object; its mark is on its way
            await b.retain(GROUP, full=True)  # the other replica's retention, whole
            assert a.object_key(GROUP, FULL) not in weed.objects(a.store.prefix)

        url = await handed_out(a, mark, meanwhile)
    assert url is None


async def test_a_url_signed_after_a_late_answer_ends_within_retention_s_hold(
    weed: Weed,
) -> None:
    """The URL's life was fixed before the mark and the look for a retiring mark, and
    signed after them: an answer within ``request_timeout`` but late made it outlive
    ``mark + direct_serve_ttl``, after which retention deletes the object."""
    ttl, late = 60.0, 3.0
    async with behind_a_relay(weed, direct_serve_ttl=ttl, request_timeout=10.0) as (a, relay):
        put(weed, a.object_key(GROUP, FULL), b"archive")
        a.bucket.health.reads_proven = True
        retiring = relay.hold(lambda line: line.startswith("HEAD") and ".retiring " in line)
        url = await handed_out(a, retiring, partial(trio.sleep, late))  # the answer that late
    assert url is not None
    assert signed_for(url) <= ttl - late


async def test_a_request_gone_while_its_lock_was_taken_leaves_no_lock(weed: Weed) -> None:
    """Cancelled (the client left) while it looked whether the object had landed, the claim
    kept the lock: the other replicas were sent to a holder refreshing nothing for
    ``lock_ttl``."""
    async with behind_a_relay(weed, lock_ttl=60.0, replica_url="http://127.0.0.1:1") as (
        a,
        relay,
    ):
        b = tier_of(weed, prefix=a.store.prefix, lock_ttl=60.0)
        landed = relay.hold(lambda line: line.startswith("HEAD") and line.split()[1].endswith(FULL))
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.claim, GROUP, FULL)
                await landed.arrived.wait()
                scope.cancel()
        landed.release.set()
        got = await b.claim(GROUP, FULL)
    assert isinstance(got, Lock) and not got.took_over


async def test_an_object_whose_look_is_answered_late_is_never_uploaded_over(weed: Weed) -> None:
    """The lock was free (the last upload completed) and the object is in the bucket, but
    the claim's look for it was answered past ``request_timeout``: the claim handed out the
    lock, and its refresh uploaded over the verified object (its digest and statement
    replaced first, a presigned URL handed out serving other bytes). The lock is let go:
    the disk cache alone serves the file; the next claim finds the object."""
    async with behind_a_relay(weed, request_timeout=1.0) as (a, relay):
        put(weed, a.object_key(GROUP, FULL), ARCHIVE)
        landed = relay.hold(lambda line: line.startswith("HEAD") and line.split()[1].endswith(FULL))
        assert await a.claim(GROUP, FULL) is None  # the look not answered within 1 s
        assert landed.arrived.is_set()
        landed.release.set()
        b = tier_of(weed, prefix=a.store.prefix)
        found = await b.claim(GROUP, FULL)  # the lock was let go: the object is found
    assert not isinstance(found, Lock | Holder) and found is not None
    assert found.size == len(ARCHIVE)


async def test_a_late_complete_never_replaces_the_object_another_replica_completed(
    weed: Weed, tmp_path: Path
) -> None:
    """A holder whose lease ran out sent its complete after the replica that took its lock
    over completed its own upload of the name (the takeover's abort came too late, or the
    complete was resent): the late complete replaced the verified object. The upload's
    complete is sent only where no object is (``If-None-Match``): refused, the other's
    object stays."""
    from tracker.objectstore.upload import upload_following

    a = tier_of(weed)
    key = a.object_key(GROUP, FULL)
    path = tmp_path / FULL
    path.write_bytes(b"late holder's bytes")
    looks: list[int] = []

    async def the_taker_completes_before_the_complete() -> float:
        looks.append(1)
        if len(looks) == 2:  # after the digest object, before the complete
            put(weed, key, ARCHIVE)  # the taker's upload, completed meanwhile
        return math.inf

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(StoreConflict):
            await upload_following(
                a.bucket, key, fd, Done(path.read_bytes()), {},
                before_complete=the_taker_completes_before_the_complete,
            )  # fmt: skip
    finally:
        os.close(fd)
    assert looks == [1, 1]
    assert weed.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == ARCHIVE


async def test_every_write_of_an_upload_s_end_is_sent_under_its_lease(
    weed: Weed, tmp_path: Path
) -> None:
    """The lease was looked at once, before the objects beside the archive: a digest write
    or the complete sent after it lapsed (held on the way, or resent) landed on the object
    of the replica that took the lock over, its digest wrong for good. Each is sent only
    while the lease holds: once it lapsed, nothing more is written and the upload fails."""
    from tracker.objectstore.upload import upload_following

    a = tier_of(weed)
    key = a.object_key(GROUP, FULL)
    path = tmp_path / FULL
    path.write_bytes(ARCHIVE)
    looks: list[int] = []

    async def lease_lapses_after_the_first_write() -> float:
        looks.append(1)
        if len(looks) > 1:
            raise StoreError("the lock's lease lapsed", down=False)
        return math.inf

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(StoreError, match="lease lapsed"):
            await upload_following(
                a.bucket, key, fd, Done(ARCHIVE), {},
                before_complete=lease_lapses_after_the_first_write,
            )  # fmt: skip
    finally:
        os.close(fd)
    assert looks == [1, 1]  # before the digest object, again before the complete
    assert key not in weed.objects(a.store.prefix)  # never completed past the lease


async def no_call_in_flight(tier: ObjectTier) -> None:
    """Wait until no worker thread of ``tier``'s bucket runs a call (one abandoned by a
    cancelled wait ends once its held request was let go and answered)."""
    while tier.bucket.clients.limiter.borrowed_tokens:
        await trio.sleep(0.01)


async def test_a_holder_whose_renewals_hang_gives_its_lock_up_before_a_takeover(
    weed: Weed,
) -> None:
    """A renewal with no answer (a store or network that hangs) kept its holder waiting on
    boto3's timeouts while its lock went stale on the store's clock: another replica took it
    over, and the first went on to complete its upload under the other's lock. Its lease
    ends while the store still counts the lock live."""
    ttl = 6.0
    async with behind_a_relay(weed, lock_ttl=ttl, replica_url="http://127.0.0.1:1") as (
        a,
        relay,
    ):
        b = tier_of(weed, prefix=a.store.prefix, lock_ttl=ttl)
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        renewal = relay.hold(lambda line: line.startswith("PUT") and ".locks/" in line)
        lost = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.keep_renewed, lock, lost)
            await trio.sleep_until(lock.lease_end)
            assert renewal.arrived.is_set() and not lock.held
            # past its lease while the store still counts it live: nobody else holds it yet
            assert isinstance(await b.claim(GROUP, FULL), Holder)
            nursery.cancel_scope.cancel()
        renewal.release.set()
        await no_call_in_flight(a)


async def upload_under(
    tier: ObjectTier, lock: Lock, path: Path, lost: trio.Event, done: list[str]
) -> None:
    """Upload ``path`` (holding :data:`ARCHIVE`) as FULL under ``lock``, as a refresh does:
    aborted when ``lost`` is set, or when the upload failed (its lease never came back:
    :meth:`Lock.until_held`). ``done`` gets "completed" or "aborted"."""
    completed = False
    fd = os.open(path, os.O_RDONLY)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on, lost, nursery.cancel_scope)
            try:
                await tier.upload(tier.object_key(GROUP, FULL), fd, Done(ARCHIVE), {}, lock)
                completed = True
            except StoreError:
                pass  # aborted as well (each test says which ending it waits for)
            nursery.cancel_scope.cancel()
    finally:
        os.close(fd)
        done.append("completed" if completed else "aborted")


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def is_renewal(line: str) -> bool:
    """A lock's write (its renewal, here)."""
    return line.startswith("PUT") and ".locks/" in line


def is_complete(line: str) -> bool:
    """A multipart upload's complete."""
    return line.startswith("POST") and "uploadId=" in line


async def test_past_its_lease_a_holder_sends_no_complete_and_then_gives_the_lock_up(
    weed: Weed, tmp_path: Path
) -> None:
    """Its renewal unanswered, the holder's lease ended: an upload that reached its end then
    completed at once, under a lock another replica may hold by then. It now waits for a
    renewal, and with none applied ``lock_ttl`` after the lease the lock is given up and the
    upload aborted: nothing in the bucket."""
    path = tmp_path / FULL
    path.write_bytes(ARCHIVE)
    async with behind_a_relay(weed, lock_ttl=2.0) as (a, relay):
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        renewal, complete = relay.hold(is_renewal), relay.hold(is_complete)
        digest = relay.hold(lambda line: line.startswith("PUT") and ".sha256 " in line)
        lost, done = trio.Event(), list[str]()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.keep_renewed, lock, lost)
            await trio.sleep_until(lock.lease_end)
            nursery.start_soon(upload_under, a, lock, path, lost, done)
            await lost.wait()
            # nor the objects beside it: another replica may have written its own by then
            assert not complete.arrived.is_set() and not digest.arrived.is_set()
            nursery.cancel_scope.cancel()
        assert renewal.arrived.is_set() and done == ["aborted"]
    assert a.object_key(GROUP, FULL) not in weed.objects(a.store.prefix)


def is_digest_write(line: str) -> bool:
    """The write of an upload's digest object."""
    return line.startswith("PUT") and ".sha256 " in line


async def test_a_write_beside_the_archive_is_never_sent_again_past_the_lease(
    weed: Weed, tmp_path: Path
) -> None:
    """The digest write, sent under the lease, got no answer (a store holding it): boto3
    sent it again after its read timeout, 30 s later and twice, long past the lock's lease
    (a ``lock_ttl`` of 2 s here), onto the object of whichever replica held the lock by
    then. The write is given up at the lease's end with its connections: the upload fails
    then (and is aborted), and no attempt of it goes out after."""
    path = tmp_path / FULL
    path.write_bytes(ARCHIVE)
    sent: list[str] = []

    def counted(line: str) -> bool:
        if is_digest_write(line):
            sent.append(line)
        return False  # never held: counts every attempt that reached the relay

    async with behind_a_relay(weed, lock_ttl=2.0) as (a, relay):
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        relay.hold(counted)
        digest = relay.hold(is_digest_write)
        lost, done = trio.Event(), list[str]()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.keep_renewed, lock, lost)
            nursery.start_soon(upload_under, a, lock, path, lost, done)
            await digest.arrived.wait()
            with trio.fail_after(lock.ttl * 5):  # well under boto3's 30 s read timeout
                while not done:
                    await trio.sleep(0.01)
            await no_call_in_flight(a)  # every attempt of the write is over
            nursery.cancel_scope.cancel()
        assert done == ["aborted"] and not lost.is_set()
        assert len(sent) == 1, sent
        await lock.release()
    assert a.object_key(GROUP, FULL) not in weed.objects(a.store.prefix)


async def test_a_renewal_answered_past_the_lease_keeps_the_lock_and_the_upload(
    weed: Weed, tmp_path: Path
) -> None:
    """A loaded store answered one renewal later than the lease (a 1 s ``lock_ttl`` and a
    busy machine): the holder cut it at the lease's end and gave the lock up, aborting a
    sound upload, though its ``If-Match`` would have proven nobody took it over."""
    path = tmp_path / FULL
    path.write_bytes(ARCHIVE)
    async with behind_a_relay(weed, lock_ttl=2.0) as (a, relay):
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        renewal = relay.hold(is_renewal)
        lost, done = trio.Event(), list[str]()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.keep_renewed, lock, lost)
            await trio.sleep_until(lock.lease_end)
            nursery.start_soon(upload_under, a, lock, path, lost, done)
            renewal.release.set()  # answered late, within lock_ttl after the lease
            while not done:  # the upload completed, or was aborted as the lock was lost
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert done == ["completed"] and not lost.is_set() and lock.held
        await lock.release()
    assert a.object_key(GROUP, FULL) in weed.objects(a.store.prefix)


async def test_a_store_whose_renewals_all_come_after_the_lease_fails_the_upload(
    weed: Weed,
) -> None:
    """Every renewal applied, each answered after its lease: the lock stayed renewed and the
    upload's complete waited for a lease that never came back. The upload fails after
    ``lock_ttl`` more (and is aborted; the lock is then released)."""
    lock = await tier_of(weed, lock_ttl=1.0).claim(GROUP, FULL)
    assert isinstance(lock, Lock)
    lock.lease_end = trio.current_time() - 0.1  # its last renewal came back after it
    with trio.fail_after(10), pytest.raises(StoreError, match="too slow for lock_ttl"):
        await lock.until_held()


async def test_a_takeover_finds_the_object_its_holder_completed_as_its_lease_ran_out(
    weed: Weed,
) -> None:
    """A holder's complete landed as its store went quiet, and its lock was never released:
    the replica that took the stale lock over pulled the whole file from upstream again."""
    a = tier_of(weed, lock_ttl=1.0)
    b = tier_of(weed, prefix=a.store.prefix, lock_ttl=1.0)
    assert isinstance(await a.claim(GROUP, FULL), Lock)
    put(weed, a.object_key(GROUP, FULL), b"the holder's upload")  # its complete, landed
    while isinstance(got := await b.claim(GROUP, FULL), Holder):
        await trio.sleep(0.1)  # until the lock is stale on the store's clock
    assert not isinstance(got, Lock)
    assert got is not None and got.key == a.object_key(GROUP, FULL)


async def test_a_release_racing_a_takeover_leaves_the_new_holders_lock(weed: Weed) -> None:
    """The release read the lock (still its own), another replica took the stale lock over,
    then the release's delete arrived: it deleted the new holder's lock, and a third replica
    could take it while the second refreshed."""
    async with behind_a_relay(weed, lock_ttl=1.0) as (a, relay):
        b = tier_of(weed, prefix=a.store.prefix, lock_ttl=1.0)
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        deleting = relay.hold(lambda line: line.startswith("DELETE") and ".locks/" in line)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lock.release)
            await deleting.arrived.wait()
            while not isinstance(taken := await b.claim(GROUP, FULL), Lock):
                await trio.sleep(0.1)  # until the lock is stale on the store's clock
            deleting.release.set()
        assert taken.took_over
        held = weed.client().head_object(Bucket=BUCKET, Key=a.lock_key(GROUP, FULL))
    assert held["Metadata"]["token"] == taken.token


async def test_a_create_whose_answer_was_lost_leaves_no_upload_behind(
    weed: Weed, tmp_path: Path
) -> None:
    """boto3 sends a CreateMultipartUpload again when its answer was lost: the store began
    two uploads, the refresh completed the second, and the first stayed (its parts kept and
    billed) until a replica's restart cleaned up."""
    data = b"archive " * 1000
    path = tmp_path / FULL
    path.write_bytes(data)
    async with behind_a_relay(weed) as (a, relay):
        lock = await a.claim(GROUP, FULL)
        assert isinstance(lock, Lock)
        create = relay.lose_answer(lambda line: line.startswith("POST") and "?uploads" in line)
        fd = os.open(path, os.O_RDONLY)
        try:
            info = await a.upload(a.object_key(GROUP, FULL), fd, Done(data), {}, lock)
        finally:
            os.close(fd)
        await lock.release()
    assert create.arrived.is_set() and info.size == len(data)
    listed = weed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=a.store.prefix)
    assert listed.get("Uploads", []) == []
