"""What the object-store tier keeps in a real SeaweedFS bucket
(docs/http-api.md#with-an-object-store-object_store): retention of superseded archives and
their digests, what start-up learns and cleans, the lock protocol. Serving through the
bucket is in ``test_objectstore.py``.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.testing
from helpers_bucket import bucket_tracker, prefix_of, put, store_config, tier_of, uploaded
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, advertise, advertise_files, proxy_tracker, wait_for
from helpers_s3 import Weed
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream
from names import full_name, incremental_name

if TYPE_CHECKING:
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Lock

FULL = full_name(9000)
INCR = incremental_name(9000, 9100)
FULL_DATA = archive_bytes(20 * MiB + 12345, seed=90)
INCR_DATA = archive_bytes(3 * MiB, seed=91)

#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA, INCR: INCR_DATA}


async def test_presigned_urls_expire_and_retention_keeps_what_was_handed_out(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A superseded archive stays while a URL of it may be valid and goes as soon as its
    last URL has expired: no later upload is needed to delete it."""
    from tracker.objectstore.retainer import HANDOUT_MARGIN

    # The URLs' life: long enough for the first one to be fetched before it expires on a
    # loaded host (at 2 s a CI run of the whole suite saw a 403 there).
    ttl = 4.0
    newer = full_name(9500)
    newer_data = archive_bytes(2 * MiB, seed=92)
    async with bucket_tracker(weed, upstream, tmp_path, direct_serve_ttl=ttl, keep_previous=0) as t:
        upstream.files[newer] = newer_data
        prefix = prefix_of(t)
        old_key = f"{prefix}{GROUP}/{FULL}"
        objects = t.parts.objects
        assert objects is not None
        async with httpx.AsyncClient(verify=client_tls()) as client, trio.open_nursery() as nursery:
            nursery.start_soon(objects.tier.retire_when_due)  # the service's timer task
            await client.get(t.url(FULL))
            await uploaded(weed, t, FULL)
            old_url = (await client.get(t.url(FULL))).headers["location"]
            assert (await client.get(old_url)).status_code == 200
            # A newer full: its upload's retention must keep FULL, handed out just now.
            advertise_files(t.index, upstream, {FULL: FULL_DATA, newer: newer_data})
            await client.get(t.url(newer))
            await uploaded(weed, t, newer)
            assert old_key in weed.objects(prefix)
            # Wall-clock time must pass (no event to wait on): the URL's lifetime, after which
            # the retention timer, due at the same time, is due now.
            await trio.sleep(ttl + 0.5)
            assert (await client.get(old_url)).status_code == 403
            # Handed out again: the retention timer, due now, must wait for this URL too.
            fresh = (await client.get(t.url(FULL))).headers["location"]
            handed_again = trio.current_time()
            assert fresh != old_url and (await client.get(fresh)).status_code == 200
            await wait_for(lambda: old_key not in weed.objects(prefix), timeout=ttl + 15)
            gone_after = trio.current_time() - handed_again
            nursery.cancel_scope.cancel()
        # Not before the fresh URL expired, and soon after (no upload came meanwhile).
        assert ttl < gone_after < ttl + HANDOUT_MARGIN + 4, gone_after
        assert f"{prefix}{GROUP}/{newer}" in weed.objects(prefix)


async def test_start_up_learns_the_bucket_and_aborts_only_orphaned_uploads(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with bucket_tracker(weed, upstream, tmp_path, lock_ttl=3.0) as t:
        objects = t.parts.objects
        assert objects is not None
        tier, s3 = objects.tier, weed.client()
        prefix = prefix_of(t)
        orphan, alive = tier.object_key(GROUP, FULL), tier.object_key(GROUP, INCR)
        s3.put_object(Bucket="snapshots", Key=tier.object_key(GROUP, INCR), Body=b"x")
        s3.create_multipart_upload(Bucket="snapshots", Key=orphan)
        s3.create_multipart_upload(Bucket="snapshots", Key=alive)
        # Uploads that are no archive of this prefix are not the tracker's, whatever their
        # age (their age alone aborted them): another application's in the bucket, another
        # fleet's under a longer prefix ("testnet/" under this one)
        others = [f"{prefix}backups/ledger.tar", f"{prefix}testnet/{GROUP}/{FULL}"]
        for other in others:
            s3.create_multipart_upload(Bucket="snapshots", Key=other)
        # Both uploads are older than lock_ttl and a second (whole-second dates on both sides
        # of an age still differ by at least 4 after 4.1 s). lock_ttl is 3 s, not less: the
        # lock put below must still be fresh at the start-up on a loaded host.
        await trio.sleep(4.1)  # wall-clock time: the bucket dates the uploads, not this test
        # INCR's refresher is alive: its lock is fresh.
        s3.put_object(Bucket="snapshots", Key=tier.lock_key(GROUP, INCR), Body=b"")
        # A refresher that began just now has no lock yet: its young upload is no orphan.
        young = tier.object_key(GROUP, full_name(9700))
        s3.create_multipart_upload(Bucket="snapshots", Key=young)
        await tier.startup()
        assert sorted(weed.uploads(prefix)) == sorted([alive, young, *others])
        assert tier.status()["objects_known"] == 1


async def test_no_key_but_the_archive_ends_in_its_name(weed: Weed) -> None:
    """A lock and a hand-out mark in the bucket next to the archive: in a listing (or a
    mirror) of the bucket only the archive's own key ends in the archive's name."""
    from tracker.objectstore.locks import Lock

    tier = tier_of(weed)
    prefix = tier.store.prefix
    put(weed, tier.object_key(GROUP, FULL), FULL_DATA[:1000])
    lock = await tier.claim(GROUP, INCR)
    assert isinstance(lock, Lock)
    assert await tier.handout(GROUP, FULL) is not None  # writes the mark
    listed = weed.objects(prefix)
    assert lock.key in listed and len(listed) == 3, listed
    for name in (FULL, INCR):
        assert [k for k in listed if k.endswith(name)] == (
            [tier.object_key(GROUP, name)] if name == FULL else []
        ), listed
    await lock.release()


@pytest.mark.usefixtures("quick_handout_margin")
async def test_start_up_knows_only_archives_and_deletes_expired_old_locks(weed: Weed) -> None:
    """Digests, locks, marks and stray keys are not archives; the locks and marks of an
    older version (no suffix: they ended in the archive's name) are deleted once expired."""
    # Ages are the store's (its dates, whole seconds), so each start-up's TTLs leave room
    # for a loaded host: a minute while nothing may expire yet, and, after the wait, a lock
    # four seconds old when put just before is still live.
    tier = tier_of(weed, lock_ttl=60.0, direct_serve_ttl=60.0)
    prefix = tier.store.prefix
    archive = tier.object_key(GROUP, FULL)
    stray = [f"{archive}.sha256", f"{archive}.part", tier.object_key(GROUP, "notes.txt")]
    for key in [archive, *stray]:
        put(weed, key)
    old_lock, old_mark = f"{prefix}.locks/{GROUP}/{FULL}", f"{prefix}.handed/{GROUP}/{FULL}"
    put(weed, old_lock, Metadata={"owner": "old", "replica": ""})
    put(weed, old_mark, b"")
    young_lock = f"{prefix}.locks/{GROUP}/{INCR}"
    await tier.startup()
    assert tier.status()["objects_known"] == 1
    left = weed.objects(prefix)
    assert old_lock in left and old_mark in left  # not expired yet: an older replica may hold it
    from tracker.objectstore.locks import CLOCK_STEP
    from tracker.objectstore.retainer import HANDOUT_MARGIN

    later = tier_of(weed, prefix=prefix, lock_ttl=4.0, direct_serve_ttl=1.0)
    # The lock's TTL and the mark's hold (direct_serve_ttl + HANDOUT_MARGIN) passed, with a
    # second of the store's whole-second dates on top. Wall-clock time: the bucket dates them.
    await trio.sleep(max(4.0 + CLOCK_STEP, 1.0 + HANDOUT_MARGIN) + 1.1)
    put(weed, young_lock, Metadata={"owner": "old", "replica": ""})
    await later.startup()
    left = weed.objects(prefix)
    assert old_lock not in left and old_mark not in left, left
    assert young_lock in left  # live: left to its holder
    assert sorted(left) == sorted([archive, *stray, young_lock])
    assert later.status()["objects_known"] == 1


async def test_retention_deletes_the_digest_with_its_archive(weed: Weed) -> None:
    """Retention counts archives only (a digest or stray key is none) and deletes an
    archive's ``.sha256`` digest, ``.proof`` and ``.attestation`` with it; a digest without
    its archive is harmless."""
    tier = tier_of(weed, keep_previous=0)
    prefix = tier.store.prefix
    older, newer, newest = full_name(8000), full_name(8500), full_name(9999)
    for name in (older, newer):
        put(weed, tier.object_key(GROUP, name))
        for side in (".sha256", ".proof", ".attestation"):
            put(weed, tier.object_key(GROUP, name) + side, b"0" * 64)
    put(weed, tier.object_key(GROUP, newest) + ".sha256", b"0" * 64)  # upload not complete
    put(weed, tier.object_key(GROUP, incremental_name(8500, 8600)))
    await tier.retain(GROUP, full=True)
    assert sorted(weed.objects(prefix)) == sorted(
        [
            tier.object_key(GROUP, newer),
            tier.object_key(GROUP, newer) + ".sha256",
            tier.object_key(GROUP, newer) + ".proof",
            tier.object_key(GROUP, newer) + ".attestation",
            tier.object_key(GROUP, newest) + ".sha256",
            tier.object_key(GROUP, incremental_name(8500, 8600)),
        ]
    )


async def test_a_stale_lock_is_taken_over_and_its_upload_aborted(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with bucket_tracker(weed, upstream, tmp_path, lock_ttl=3.0) as t:
        objects = t.parts.objects
        assert objects is not None
        tier, s3 = objects.tier, weed.client()
        key = tier.object_key(GROUP, FULL)
        s3.put_object(
            Bucket="snapshots",
            Key=tier.lock_key(GROUP, FULL),
            Body=b"",
            Metadata={"owner": "dead", "replica": ""},
        )
        s3.create_multipart_upload(Bucket="snapshots", Key=key)
        async with httpx.AsyncClient(verify=client_tls()) as client:
            # The lock is live (3 s: on a loaded host too): no replica_url to follow, so the
            # bytes come uncached.
            first = await client.get(t.url(FULL))
            assert first.content == FULL_DATA
            assert weed.objects(prefix_of(t)).get(key) is None
            assert t.cached() == []
            await trio.sleep(4.1)  # lock_ttl without renewal (and a second: HTTP dates)
            second = await client.get(t.url(FULL))
        assert second.status_code == 200, (second.status_code, second.text)
        assert second.content == FULL_DATA
        await uploaded(weed, t, FULL)
        assert t.counter("snapshot_tracker_object_lock_takeovers_total") == 1
        assert weed.uploads(prefix_of(t)) == []


async def test_locks_one_holder_renewal_and_takeover(weed: Weed) -> None:
    """The lock protocol on the real store: of racing replicas one wins; a live lock is
    held; a stale one is taken over by one replica; the old holder's renewal then fails."""
    from tracker.errors import StoreConflict
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Holder, Lock, acquire

    bucket = Bucket(store_config(weed))
    key = f"locks-{secrets.token_hex(4)}/x"
    got: list[Lock | Holder] = []
    # A lock_ttl no race can outlast, however loaded the machine: a racer that looks at the
    # winner's lock more than lock_ttl + 1 s after it was made would rightly take it over
    # (CI saw it with a 1 s lock_ttl).
    async with trio.open_nursery() as nursery:
        for owner in ("a", "b", "c", "d"):
            nursery.start_soon(
                lambda o=owner: _append(got, acquire(bucket, key, o, f"http://{o}", 30.0))
            )
    winners = [g for g in got if isinstance(g, Lock)]
    assert len(winners) == 1
    assert {g.owner for g in got if isinstance(g, Holder)} == {winners[0].owner}
    first = winners[0]
    await first.renew()  # alive: renewal works
    await trio.sleep(3.1)  # lock_ttl (2 s) and a second of HTTP-date slack, not renewed
    got.clear()
    async with trio.open_nursery() as nursery:
        for owner in ("e", "f"):
            nursery.start_soon(
                lambda o=owner: _append(got, acquire(bucket, key, o, f"http://{o}", 2.0))
            )
    takers = [g for g in got if isinstance(g, Lock)]
    assert len(takers) == 1 and takers[0].took_over
    with pytest.raises(StoreConflict):
        await first.renew()
    await takers[0].release()
    assert await bucket.head(key) is None


def _store_expiry(url: str, ahead: float) -> float:
    """When the store holds ``url`` expired (Unix seconds on its clock), the URL signed by a
    replica whose clock runs ``ahead`` of it: its ``X-Amz-Date`` would be that much later
    (here every tier signs on the real clock, the store's)."""
    from datetime import UTC, datetime
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed.timestamp() + ahead + int(query["X-Amz-Expires"][0])


async def test_a_url_from_a_clock_ahead_expires_within_the_mark_of_a_slower_replica(
    weed: Weed,
) -> None:
    """A URL is signed on its replica's clock and judged on the store's. A replica whose
    clock runs 20 s ahead hands a URL out, then one whose clock is right hands out another
    and its mark replaces the first: retention holds the superseded archive for
    ``direct_serve_ttl`` after that mark, and the first URL must have expired by then (it
    was valid 20 s longer when signed for the whole ttl on the clock ahead)."""
    import time

    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.tier import ObjectTier

    ttl = 60.0
    ahead = 20.0
    fast = tier_of(weed, direct_serve_ttl=ttl, keep_previous=0)
    right = ObjectTier(fast.store, Bucket(fast.store))
    old, new = full_name(9000), full_name(9500)
    for name in (old, new):
        put(weed, fast.object_key(GROUP, name))
    fast.wall = lambda: time.time() + ahead
    first = await fast.handout(GROUP, old)
    second = await right.handout(GROUP, old)
    assert first is not None and second is not None
    mark = await right.bucket.head(right.mark_key(GROUP, old))
    assert mark is not None
    covered = mark.last_modified.timestamp() + ttl  # what retention holds the archive for
    # (the store dates in whole seconds, the mark no earlier than either signing)
    assert _store_expiry(first, ahead) <= covered + 1
    assert _store_expiry(second, 0.0) <= covered + 1
    began = trio.current_time()
    await right.retainer.retain(GROUP, full=True)
    assert right.object_key(GROUP, old) in weed.objects(right.store.prefix)
    assert right.retainer._due[(GROUP, True)] - began <= ttl + 10


async def test_a_clock_too_far_ahead_hands_out_no_url(weed: Weed) -> None:
    """A replica whose clock runs ahead of the store's by more than half of
    ``direct_serve_ttl`` hands out no URL (the tracker serves the bytes itself), writes no
    mark, and says so; with its clock right again it hands one out."""
    import time

    ttl = 60.0
    tier = tier_of(weed, direct_serve_ttl=ttl)
    name = full_name(9000)
    put(weed, tier.object_key(GROUP, name))
    tier.wall = lambda: time.time() + 31
    assert await tier.handout(GROUP, name) is None
    assert await tier.bucket.head(tier.mark_key(GROUP, name)) is None
    tier.wall = time.time
    assert await tier.handout(GROUP, name) is not None
    assert await tier.bucket.head(tier.mark_key(GROUP, name)) is not None


async def test_the_mark_of_an_older_version_from_a_clock_ahead_holds_that_much_longer(
    weed: Weed,
) -> None:
    """An older version signed its URLs for the whole ttl on its own clock and wrote how far
    it ran ahead in the mark (``ahead``): during an upgrade one replica at a time, retention
    still holds a superseded archive that much longer (it deleted it after
    direct_serve_ttl and 5 s of the store's clock, the URL still valid)."""
    from tracker.objectstore.retainer import HANDOUT_MARGIN

    ttl = 2.0
    tier = tier_of(weed, direct_serve_ttl=ttl, keep_previous=0)
    old, new = full_name(9000), full_name(9500)
    for name in (old, new):
        put(weed, tier.object_key(GROUP, name))
    put(weed, tier.mark_key(GROUP, old), b"", Metadata={"ahead": "30"})
    began = trio.current_time()
    await tier.retainer.retain(GROUP, full=True)
    assert tier.object_key(GROUP, old) in weed.objects(tier.store.prefix)
    due = tier.retainer._due[(GROUP, True)]
    assert due - began >= ttl + HANDOUT_MARGIN + 29


async def test_a_hand_out_while_retention_deletes_gets_a_url_that_works(
    weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention read the marks of a superseded archive (none: never handed out), then
    another replica handed it out, then retention deleted it: that replica's client got a
    URL of a deleted object. Retention now marks the archive retiring and reads the marks
    again before it deletes: the new mark holds the archive, and its URL works."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.retainer import Retainer
    from tracker.objectstore.tier import ObjectTier

    retaining = tier_of(weed, direct_serve_ttl=60.0, keep_previous=0)
    handing = ObjectTier(retaining.store, Bucket(retaining.store))
    old, new = full_name(9000), full_name(9500)
    for name in (old, new):
        put(weed, retaining.object_key(GROUP, name), b"archive bytes")
    urls: list[str | None] = []
    first_read = Retainer._handed_age

    async def read_then_hand_out(self: Retainer, group: str, name: str) -> float | None:
        age = await first_read(self, group, name)
        if not urls:  # between retention's first read of the marks and its delete
            urls.append(await handing.handout(group, name))
        return age

    monkeypatch.setattr(Retainer, "_handed_age", read_then_hand_out)
    await retaining.retainer.retain(GROUP, full=True)
    [url] = urls
    assert url is not None
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        got = await client.get(url)
    assert got.status_code == 200 and got.content == b"archive bytes"
    assert (GROUP, True) in retaining.retainer._due  # deleted once that URL expired


async def test_a_retention_of_fulls_leaves_an_incrementals_retiring_mark(
    weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replica's retention of incrementals is deleting an old one (marked retiring);
    another's retention of fulls runs meanwhile (its upload completed). It took the marks
    of every archive it kept away, incrementals too, and a hand-out then got a URL of an
    object deleted a moment later. It leaves the other kind's marks alone."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.retainer import Retainer
    from tracker.objectstore.tier import ObjectTier

    one = tier_of(weed, direct_serve_ttl=60.0, keep_previous=0)
    other, handing = (ObjectTier(one.store, Bucket(one.store)) for _ in range(2))
    old = incremental_name(9000, 9100)
    for name in (full_name(8000), full_name(9000), old, incremental_name(9000, 9300)):
        put(weed, one.object_key(GROUP, name), b"archive bytes")
    urls: list[str | None] = []
    real = Retainer._retire

    async def retire(self: Retainer, group: str, name: str) -> None:
        if self is one.retainer and name == old and not urls:
            await other.retainer.retain(GROUP, full=True)
            urls.append(await handing.handout(GROUP, name))
        await real(self, group, name)

    monkeypatch.setattr(Retainer, "_retire", retire)
    await one.retainer.retain(GROUP, full=False)
    assert one.object_key(GROUP, old) not in weed.objects(one.store.prefix)
    assert urls == [None]  # no URL of the archive being deleted


async def test_a_hand_out_that_finds_its_archive_gone_leaves_no_mark(weed: Weed) -> None:
    """A hand-out wrote the archive's mark, then found the object gone (another replica's
    retention ran between its look and its mark, the marks there were with it): the mark
    stayed for good (nothing deletes a mark of no archive)."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.tier import ObjectTier

    tier = tier_of(weed, direct_serve_ttl=60.0, keep_previous=0)
    retaining = ObjectTier(tier.store, Bucket(tier.store))
    old, new = full_name(9000), full_name(9500)
    for name in (old, new):
        put(weed, tier.object_key(GROUP, name))
    real = tier.quick.head_dated

    async def retention_meanwhile(key: str) -> Any:
        answer = await real(key)
        if key == tier.object_key(GROUP, old):
            await retaining.retainer.retain(GROUP, full=True)
        return answer

    tier.bucket.health.read_worked()  # the health watcher read a first byte before
    tier.quick.head_dated = retention_meanwhile  # type: ignore[method-assign]
    assert await tier.handout(GROUP, old) is None
    assert [k for k in weed.objects(tier.store.prefix) if old in k] == []


async def test_no_url_is_handed_out_of_an_archive_being_retired(weed: Weed) -> None:
    """An archive retention marked retiring (it is about to be deleted): a hand-out gives no
    URL (the tracker serves the bytes), where it gave one of an object soon gone. One that
    retention keeps after all has the mark taken away."""
    from tracker.objectstore import keys
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.tier import ObjectTier

    tier = tier_of(weed, direct_serve_ttl=60.0)
    name = full_name(9000)
    put(weed, tier.object_key(GROUP, name))
    assert await tier.handout(GROUP, name) is not None
    put(weed, keys.retiring_key(tier.store.prefix, GROUP, name), b"")
    other = ObjectTier(tier.store, Bucket(tier.store))  # (this one reuses its URL a while)
    assert await other.handout(GROUP, name) is None
    # Kept after all (the newest of its kind): the next retention takes the mark away.
    await other.retainer.retain(GROUP, full=True)
    assert await other.handout(GROUP, name) is not None


@pytest.mark.parametrize("ends", ["the store fails", "the client leaves"])
async def test_a_takeover_whose_uploads_cannot_be_aborted_gives_the_lock_back(
    weed: Weed, ends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale lock taken over, then the dead holder's uploads cannot be aborted (the store
    answers 503, or the client that asked leaves): the lock, written as this replica's, is
    deleted at once. It was kept unrenewed, and every replica was sent to this one for
    lock_ttl while it refreshed nothing."""
    from tracker.errors import StoreError
    from tracker.objectstore.locks import Lock

    tier = tier_of(weed, lock_ttl=1.0)
    key = tier.lock_key(GROUP, FULL)
    put(weed, key, b"", Metadata={"owner": "dead", "replica": ""})
    await trio.sleep(2.1)  # lock_ttl and a second of HTTP-date slack: stale
    asked = trio.Event()

    async def list_uploads(prefix: str) -> list[Any]:
        asked.set()
        if ends == "the store fails":
            raise StoreError("ListMultipartUploads: SlowDown (HTTP 503)")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    # the abort is on the request path: the bucket of request_timeout's calls
    monkeypatch.setattr(tier.quick, "list_uploads", list_uploads)
    async with trio.open_nursery() as nursery:
        claimed: list[object] = []

        async def claim() -> None:
            claimed.append(await tier.claim(GROUP, FULL))

        nursery.start_soon(claim)
        with trio.fail_after(30):
            await asked.wait()
        if ends == "the client leaves":
            nursery.cancel_scope.cancel()
    assert claimed == ([None] if ends == "the store fails" else [])
    assert await tier.bucket.head(key) is None
    monkeypatch.undo()
    other = tier_of(weed, lock_ttl=1.0, prefix=tier.store.prefix)
    assert isinstance(await other.claim(GROUP, FULL), Lock)


async def test_a_release_leaves_the_lock_that_took_this_one_over(weed: Weed) -> None:
    """One replica's stale lock taken over by the same replica (another refresh of the
    file, later): releasing the stale one leaves the new one. Its owner is the same; its
    ETag is not (the owner was compared: the new lock was deleted, and another replica
    could take the file while this one still uploaded it)."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Lock, acquire

    bucket = Bucket(store_config(weed))
    key = f"locks-{secrets.token_hex(4)}/x"
    stale = await acquire(bucket, key, "a", "http://a", 1.0)
    await trio.sleep(2.1)  # lock_ttl and a second of HTTP-date slack, not renewed
    fresh = await acquire(bucket, key, "a", "http://a", 1.0)
    assert isinstance(stale, Lock) and isinstance(fresh, Lock) and fresh.took_over
    await stale.release()
    info = await bucket.head(key)
    assert info is not None and info.etag == fresh.etag
    await fresh.release()
    assert await bucket.head(key) is None


async def renewed_unknowingly(weed: Weed) -> tuple[Bucket, Lock, str]:
    """A lock of its own key whose renewal the store applied but whose answer its holder
    never read (its ETag the one before): the bucket, the lock, that older ETag."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Lock, acquire

    bucket = Bucket(store_config(weed))
    lock = await acquire(bucket, f"locks-{secrets.token_hex(4)}/x", "a", "http://a", 60.0)
    assert isinstance(lock, Lock)
    known = lock.etag
    await lock.renew()  # applied by the store ...
    lock.etag = known  # ... its answer never read
    return bucket, lock, known


async def test_a_renewal_whose_answer_was_cut_leaves_the_lock_releasable(weed: Weed) -> None:
    """The refresh ends while a renewal of its lock is out: the store applied it (a new
    ETag) but its answer was cut with the renewing task. Release compared the ETag last
    known: the lock stayed for ``lock_ttl``, and the other replicas followed a refresh that
    had ended (a stress run of the suite found it)."""
    bucket, lock, _known = await renewed_unknowingly(weed)
    await lock.release()
    assert await bucket.head(lock.key) is None


async def test_a_renewal_whose_answer_was_lost_keeps_the_lock(weed: Weed) -> None:
    """A renewal the store applied but whose answer was lost, sent again by the client with
    the ETag before it (412): the holder took its own lock for taken over and cancelled its
    upload, though nobody else held it. The lock's token says it is still this one."""
    from tracker.errors import StoreConflict
    from tracker.objectstore.locks import Lock

    bucket, lock, known = await renewed_unknowingly(weed)
    await lock.renew()  # the next one: still this holder's lock
    info = await bucket.head(lock.key)
    assert info is not None and info.etag == lock.etag
    # another's lock (taken over meanwhile) is lost all the same
    other = Lock(bucket, lock.key, "b", "http://b", etag=known)
    with pytest.raises(StoreConflict):
        await other.renew()
    await lock.release()
    assert await bucket.head(lock.key) is None


def held_renewals(weed: Weed, workers: trio.Nursery) -> Any:
    """A bucket whose PUTs go on in ``workers`` once ``land`` is set, whoever waited for them
    was cancelled: a renewal's PUT abandoned in its worker thread when the refresh ended
    (``Bucket._call``). ``sent``: one was asked; ``landed``: the store answered it (the
    answer's error, if any, in ``refused``)."""
    from tracker.errors import StoreError
    from tracker.objectstore.bucket import Bucket

    class HeldRenewals(Bucket):
        def __init__(self) -> None:
            super().__init__(store_config(weed))
            self.sent, self.land, self.landed = trio.Event(), trio.Event(), trio.Event()
            self.refused: list[StoreError] = []

        async def put(self, key: str, body: bytes, **conditions: Any) -> str:
            etag: list[str] = []

            async def worker() -> None:
                await self.land.wait()
                try:
                    etag.append(await Bucket.put(self, key, body, **conditions))
                except StoreError as exc:
                    self.refused.append(exc)
                self.landed.set()

            workers.start_soon(worker)
            self.sent.set()
            await self.landed.wait()
            if not etag:
                raise self.refused[0]
            return etag[0]

    return HeldRenewals()


async def abandoned_renewal(bucket: Bucket, lock: Lock) -> None:
    """Renew ``lock`` through ``bucket`` (:func:`held_renewals`) and cancel the renewal once
    its PUT is out, as the end of a refresh cancels its renewing task."""
    lock.bucket = bucket
    async with trio.open_nursery() as renewing:
        renewing.start_soon(lock.renew)
        await bucket.sent.wait()  # type: ignore[attr-defined]
        renewing.cancel_scope.cancel()


async def test_a_renewal_landing_between_the_release_read_and_its_delete_leaves_no_lock(
    weed: Weed,
) -> None:
    """The refresh's upload failed while a renewal of its lock was out: its PUT, abandoned
    in its worker thread, landed between the release's read of the lock and its delete. The
    delete's ``If-Match`` failed (412) and the release took the lock for taken over: it
    stayed for ``lock_ttl``, and every other replica followed a refresh that had ended (a CI
    run of test_a_failed_refresh_leaves_no_object_and_no_parts)."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Lock, acquire

    plain = Bucket(store_config(weed))
    lock = await acquire(plain, f"locks-{secrets.token_hex(4)}/x", "a", "http://a", 60.0)
    assert isinstance(lock, Lock)
    with trio.fail_after(10):
        async with trio.open_nursery() as workers:
            held = held_renewals(weed, workers)
            await abandoned_renewal(held, lock)

            class ReadThenLanded(Bucket):
                async def delete(self, key: str, *, if_match: str = "") -> None:
                    held.land.set()  # the release read the lock: the renewal lands now
                    await held.landed.wait()
                    await Bucket.delete(self, key, if_match=if_match)

            lock.bucket = ReadThenLanded(store_config(weed))
            await lock.release()
    assert held.refused == []  # the renewal was applied before the delete
    assert await plain.head(lock.key) is None


async def test_a_renewal_landing_after_the_release_puts_no_lock_back(weed: Weed) -> None:
    """A renewal abandoned as the refresh ended that reaches the store after the release's
    delete is refused (its ``If-Match`` names a deleted object): no lock comes back."""
    from tracker.objectstore.bucket import Bucket
    from tracker.objectstore.locks import Lock, acquire

    plain = Bucket(store_config(weed))
    lock = await acquire(plain, f"locks-{secrets.token_hex(4)}/x", "a", "http://a", 60.0)
    assert isinstance(lock, Lock)
    with trio.fail_after(10):
        async with trio.open_nursery() as workers:
            held = held_renewals(weed, workers)
            await abandoned_renewal(held, lock)
            lock.bucket = plain
            await lock.release()
            held.land.set()
    assert len(held.refused) == 1
    assert await plain.head(lock.key) is None


async def test_a_lock_claimed_as_the_tracker_stops_is_released(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A request that got the bucket's lock of a file as the tracker began to stop starts
    no refresh (the transfers refuse new ones): its lock was handed to a background task to
    release, which a stopping tracker does not start. It stayed for ``lock_ttl``, and the
    other replicas followed a replica that had stopped."""
    from tracker.core.snapshots import parse_archive_name
    from tracker.objectstore.locks import Lock
    from tracker.proxy.decisions import start_shared

    archive = parse_archive_name(FULL)
    assert archive is not None
    async with bucket_tracker(weed, upstream, tmp_path, lock_ttl=60.0) as t:
        streamer = t.streamer
        cache = streamer.cache()
        assert cache is not None
        refreshes = streamer.shared_refreshes
        lock = await refreshes.claim((cache.root, GROUP, FULL))
        assert isinstance(lock, Lock)
        t.transfers.close(1.0)  # SIGTERM: the grace period begins
        step = start_shared(keep=True, locked=True)
        with trio.fail_after(10):
            started = await refreshes.start(t.config.target_groups[0], archive, cache, step, lock)
        assert started is None
        assert await lock.bucket.head(lock.key) is None


async def _append(out: list[Any], value: Any) -> None:
    out.append(await value)


async def test_retention_keeps_the_newest_incremental_of_every_full_still_served(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """keep_previous 0: of the incrementals in the bucket, the newest overall stays, and so
    does the newest on a full that a source still advertises (the bucket need not hold that
    full); older ones and those of a full nobody serves any more go."""
    served_full, gone_full, newest_full = full_name(7000), full_name(6000), full_name(9000)
    on_served = [incremental_name(7000, 7100), incremental_name(7000, 7200)]
    on_gone = [incremental_name(6000, 6100), incremental_name(6000, 6200)]
    on_newest = [incremental_name(9000, 9100), incremental_name(9000, 9200)]
    async with proxy_tracker(
        tmp_path / "cache", object_store=store_config(weed, keep_previous=0)
    ) as t:
        # A source advertises the full at 7000 (only an older one at 6000 is advertised by
        # nobody); the bucket holds the newest full and every incremental.
        advertise(t.index, upstream.base, [(served_full, upstream.url(served_full), 1000)])
        objects = t.parts.objects
        assert objects is not None
        tier = objects.tier
        put(weed, tier.object_key(GROUP, newest_full))
        for name in on_served + on_gone + on_newest:
            put(weed, tier.object_key(GROUP, name))
        await tier.retain(GROUP, full=False)
        left = {key.rsplit("/", 1)[-1] for key in weed.objects(prefix_of(t))}
    assert gone_full not in left
    assert left == {newest_full, on_served[1], on_newest[1]}


async def test_replicas_taking_turns_forget_what_the_others_retention_deleted(
    weed: Weed, mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Two replicas of one prefix upload incrementals in turn, the uploader's retention
    deleting the other's: each forgets what the other's retention deleted (its objects,
    digests and statements: none written again beside a deleted archive), and keeps what
    it just uploaded (docs/replicas.md, "What a replica remembers")."""
    from helpers_statements import signer
    from helpers_uploads import upload

    from tracker.objectstore import keys
    from tracker.objectstore.known import KNOWN_FOR
    from tracker.objectstore.sides import restate

    a = tier_of(weed, keep_previous=0)
    prefix = a.store.prefix
    b = tier_of(weed, prefix=prefix, keep_previous=0)
    a.attestations.configure(signer(1), 3600.0, time.time())
    b.attestations.configure(signer(2), 3600.0, time.time())
    await upload(b, tmp_path, GROUP, FULL)
    for n in range(1, 14):  # A uploads every third; B the last
        await upload(a if n % 3 == 0 else b, tmp_path, GROUP, incremental_name(9000, 9000 + n))
        mock_clock.jump(KNOWN_FOR + 1)  # (trio's clock: the store dates by its own)
    own = a.object_key(GROUP, incremental_name(9000, 9012))
    assert own in a.known.seen()  # A's last upload, which B's retention deleted
    await a.retain(GROUP, full=True)  # any listing of the group will do
    there = {k for k in weed.objects(prefix) if keys.archive_of(prefix, k) is not None}
    assert there == {a.object_key(GROUP, FULL), b.object_key(GROUP, incremental_name(9000, 9013))}
    for tier in (a, b):
        assert set(tier.known.seen()) <= there
        held = tier.digests.held()
        assert {a.object_key(g, n) for g, n, holder, _v in held if holder == "bucket"} <= there
        tier.attestations.sync(time.time())
        # every statement written again
        await restate(tier.bucket, prefix, tier.attestations, {}, dict(tier._uploaded))
    left = weed.objects(prefix)
    assert [
        k
        for k in left
        if (s := keys.side_of(prefix, k)) and a.object_key(s.group, s.name) not in there
    ] == []


async def test_sides_of_an_upload_under_way_survive_a_replica_whose_clock_runs_ahead(
    weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray side object goes once written ``lock_ttl`` ago on the store's clock; its age
    was taken against this replica's clock when the archive's HEAD answered 404: a replica
    two minutes ahead deleted the digest, proof and statement another replica's upload had
    just written (the archive then landed without them)."""
    import datetime as dt

    import tracker.objectstore.bucket as bucket_module
    from tracker.objectstore import keys

    class Ahead(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Ahead:
            return cls.fromtimestamp(time.time() + 120, tz)

    tier = tier_of(weed, lock_ttl=60.0, keep_previous=0)
    monkeypatch.setattr(bucket_module, "datetime", Ahead)
    put(weed, tier.object_key(GROUP, full_name(9500)), b"newer")
    sides = keys.side_keys(tier.store.prefix, GROUP, FULL)
    for side in sides:
        put(weed, side, b"written by an upload about to complete")
    await tier.retain(GROUP, full=True)
    assert [s for s in sides if s in weed.objects(tier.store.prefix)] == list(sides)


async def test_a_bucket_of_long_keys_and_uploads_lists_within_the_listings_bytes(
    weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing is read at most ``bucket.LISTING_BYTES`` of pages, those of
    ``MAX_LISTED`` entries: a real store's pages of objects and of incomplete uploads of
    keys of 880 bytes (S3's longest are 1,024) list within their share of it, entry for
    entry (the bound made the share of the entries here: a real listing of MAX_LISTED such
    entries fits the real one; SeaweedFS's pages take about 1.1 KB an entry of these, 0.3
    KB one of an archive's own key)."""
    from concurrent.futures import ThreadPoolExecutor

    from tracker.objectstore import bucket as bucket_module

    count = 120
    store = store_config(weed)
    # SeaweedFS takes 255 bytes a path component; S3's longest keys are 1,024 bytes in all
    keys = [f"{store.prefix}{'/'.join(['k' * 200] * 4)}/{full_name(n)}" for n in range(count)]
    s3 = weed.client()

    def fill(key: str) -> None:
        s3.put_object(Bucket=store.bucket, Key=key, Body=b"")
        s3.create_multipart_upload(Bucket=store.bucket, Key=key)

    def filled() -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(fill, keys))

    await trio.to_thread.run_sync(filled)
    share = bucket_module.LISTING_BYTES * count // bucket_module.MAX_LISTED
    monkeypatch.setattr(bucket_module, "LISTING_BYTES", share)
    bucket = bucket_module.Bucket(store)
    with trio.fail_after(30):
        listed = await bucket.list_objects(store.prefix)
        uploads = await bucket.list_uploads(store.prefix)
    assert sorted(info.key for info in listed) == sorted(keys)
    assert sorted(upload.key for upload in uploads) == sorted(keys)
    assert bucket.health.up
