"""The object-store tier in process (docs/http-api.md#with-an-object-store-object_store): a tracker
over a real SeaweedFS bucket serving bytes: redirects to the bucket, streams from it, the
store down or hung, locks naming a holder to follow, signed URLs.

The tracker's own components (``tracker.service.build``) on a real hypercorn, a real
upstream on 127.0.0.1, a real S3 server (``weed mini``); what the bucket keeps (retention,
start-up, locks) is in ``test_objectstore_keeping.py``; the multi-replica cases with
trackers as subprocesses are in ``test_replicas.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers_bucket import bucket_tracker, prefix_of, put, tier_of, uploaded
from helpers_bytes import MiB, archive_bytes
from helpers_ports import REFUSED
from helpers_proxy import GROUP, TrackerUnderTest, wait_for
from helpers_s3 import SECRET_KEY, Weed, uploaded_parts
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream
from helpers_wire import raw_request
from names import full_name, incremental_name

from tracker.objectstore.locks import Lock
from tracker.objectstore.storehealth import StoreHealth
from tracker.objectstore.tier import ObjectTier

FULL = full_name(9000)
INCR = incremental_name(9000, 9100)
FULL_DATA = archive_bytes(20 * MiB + 12345, seed=90)
INCR_DATA = archive_bytes(3 * MiB, seed=91)

#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA, INCR: INCR_DATA}


@pytest.fixture
async def tracker(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[TrackerUnderTest]:
    async with bucket_tracker(weed, upstream, tmp_path) as t:
        yield t


async def test_a_cold_get_streams_and_fills_the_bucket_then_hits_redirect(
    tracker: TrackerUnderTest, upstream: FakeUpstream, weed: Weed
) -> None:
    async with httpx.AsyncClient(verify=client_tls()) as client:
        first = await client.get(tracker.url(FULL))
        assert first.status_code == 200 and first.content == FULL_DATA
        await uploaded(weed, tracker, FULL)
        key = f"{prefix_of(tracker)}{GROUP}/{FULL}"
        assert weed.objects(prefix_of(tracker))[key] == len(FULL_DATA)
        assert weed.uploads(prefix_of(tracker)) == []

        hit = await client.get(tracker.url(FULL))
        assert hit.status_code == 303
        location = hit.headers["location"]
        assert location.startswith(weed.endpoint + "/snapshots/")
        status = await client.get(f"{tracker.base}/v1/store")
        for answer in (first, hit, status):  # the presigned URL is all a client gets
            assert SECRET_KEY not in str(answer.headers.raw)
            assert SECRET_KEY.encode() not in answer.content
        followed = await client.get(location)
        assert followed.status_code == 200 and followed.content == FULL_DATA
        assert FULL in followed.headers["content-disposition"]
        ranged = await client.get(location, headers={"range": "bytes=100-199"})
        assert ranged.status_code == 206 and ranged.content == FULL_DATA[100:200]
    assert len(upstream.gets(FULL)) == 1
    assert tracker.outcome("object_redirect") == 1
    assert tracker.counter("snapshot_tracker_object_uploads_total", outcome="ok") == 1
    assert tracker.counter("snapshot_tracker_object_uploads_total", outcome="failed") == 0


async def test_a_lock_that_came_free_with_its_upload_done_pulls_nothing(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B looked the archive up (missing, remembered so) just before replica A
    completed its upload and let its lock go: B took the free lock, pulled the archive from
    the source again and replaced the complete object. With its lock, B finds the object
    there and answers from it; the source is asked once for the whole fleet."""
    import tracker.objectstore.known

    monkeypatch.setattr(tracker.objectstore.known, "MISSED_FOR", 600.0)  # B's miss holds
    prefix = prefix_of_new(weed)
    async with (
        bucket_tracker(weed, upstream, tmp_path / "a", prefix=prefix) as a,
        bucket_tracker(weed, upstream, tmp_path / "b", prefix=prefix) as b,
        httpx.AsyncClient(verify=client_tls(), timeout=60) as client,
    ):
        objects = b.parts.objects
        assert objects is not None
        assert await objects.tier.lookup(GROUP, FULL) is None  # B misses it
        assert (await client.get(a.url(FULL))).content == FULL_DATA
        await uploaded(weed, a, FULL)  # A's upload done, its lock let go
        key = f"{prefix}{GROUP}/{FULL}"
        before = weed.client().head_object(Bucket="snapshots", Key=key)["ETag"]
        answer = await client.get(b.url(FULL))
        assert answer.status_code == 303  # the bucket's copy
        assert (await client.get(answer.headers["location"])).content == FULL_DATA
        await uploaded(weed, b, FULL)
        assert weed.client().head_object(Bucket="snapshots", Key=key)["ETag"] == before
    assert len(upstream.gets(FULL)) == 1
    assert b.counter("snapshot_tracker_object_uploads_total", outcome="ok") == 0


async def test_a_refresh_begun_as_a_failed_one_lets_the_lock_go_still_fills_the_bucket(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that failed lets its bucket lock go once its upload ended (a store call); a
    request that came meanwhile found the lock still this replica's and refreshed the file
    without an upload: the bucket never got that copy. It waits for the release (within
    ``request_timeout``) and claims the lock: its refresh fills the bucket."""
    letting_go, let_go = trio.Event(), trio.Event()
    real_release = Lock.release

    async def held_release(self: Lock) -> None:
        letting_go.set()
        await let_go.wait()
        await real_release(self)

    monkeypatch.setattr(Lock, "release", held_release)
    upstream.behaviour[FULL] = Behaviour(status=500)
    async with (
        bucket_tracker(weed, upstream, tmp_path) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=60) as client,
    ):
        objects = t.parts.objects
        assert objects is not None
        claims: list[str] = []
        real_claim = objects.tier.claim

        async def counted_claim(group: str, name: str) -> object:
            claims.append(name)
            return await real_claim(group, name)

        monkeypatch.setattr(objects.tier, "claim", counted_claim)
        assert (await client.get(t.url(FULL))).status_code == 502
        with trio.fail_after(20):
            await letting_go.wait()  # the failed refresh's upload lets its lock go: held
        del upstream.behaviour[FULL]
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def download() -> None:
                answers.append(await client.get(t.url(FULL)))

            nursery.start_soon(download)
            await wait_for(lambda: len(claims) == 2, timeout=20)  # it found the lock ours
            let_go.set()
        assert answers[0].status_code == 200 and answers[0].content == FULL_DATA
        await uploaded(weed, t, FULL)
    assert len(upstream.gets(FULL)) == 2
    assert t.counter("snapshot_tracker_object_uploads_total", outcome="ok") == 1


def prefix_of_new(weed: Weed) -> str:
    """A prefix of its own in ``weed``'s bucket, for replicas that share it."""
    from helpers_bucket import store_config

    return store_config(weed).prefix


async def test_head_is_answered_from_the_object_without_the_store_get(
    tracker: TrackerUnderTest, upstream: FakeUpstream, weed: Weed
) -> None:
    async with httpx.AsyncClient(verify=client_tls()) as client:
        await client.get(tracker.url(FULL))
        await uploaded(weed, tracker, FULL)
        for path in tracker.group_dir().iterdir():
            path.unlink()  # no disk copy: the answer must come from the bucket
        # The upstream would fail this file now, and must not even be asked.
        upstream.behaviour[FULL] = Behaviour(status=500)
        asked = len(upstream.seen)
        head = await client.head(tracker.url(FULL))
        # Its conditionals are the object's validators', as a disk copy's HEAD answers them
        # (they were ignored: 200 whatever was asked, where a GET said 304 or 412).
        etag, modified = head.headers["etag"], head.headers["last-modified"]
        conditionals = [
            ({"if-none-match": etag}, 304),
            ({"if-match": '"another"'}, 412),
            ({"if-modified-since": modified}, 304),
            ({"if-match": etag, "if-none-match": '"another"'}, 200),
        ]
        for headers, status in conditionals:
            answer = await client.head(tracker.url(FULL), headers=headers)
            assert answer.status_code == status, headers
            assert answer.headers["etag"] == etag, headers
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(FULL_DATA))
    assert FULL in head.headers["content-disposition"]
    assert len(upstream.seen) == asked
    # The object's own metadata (its S3 ETag), and no GET of the object by the tracker.
    key = f"{prefix_of(tracker)}{GROUP}/{FULL}"
    s3_etag = weed.client().head_object(Bucket="snapshots", Key=key)["ETag"]
    assert head.headers["etag"] == s3_etag
    assert tracker.outcome("object_store") == 0


PAUSE = 12 * MiB  # past the first 8 MiB part: the upload has parts when the refresh fails


@pytest.mark.parametrize(
    "fault",
    [
        Behaviour(pause_at=PAUSE, drop_after=PAUSE + 1),
        Behaviour(pause_at=PAUSE, short_by=len(FULL_DATA) - PAUSE - 1),
        Behaviour(status=500),
    ],
    ids=["drop", "short", "500"],
)
async def test_a_failed_refresh_leaves_no_object_and_no_parts(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path, fault: Behaviour
) -> None:
    upstream.behaviour[FULL] = fault
    async with bucket_tracker(weed, upstream, tmp_path) as t:
        prefix = prefix_of(t)
        objects = t.parts.objects
        assert objects is not None
        async with httpx.AsyncClient(verify=client_tls()) as client, trio.open_nursery() as nursery:
            outcome: list[str] = []

            async def download() -> None:
                try:
                    r = await client.get(t.url(FULL))
                    outcome.append(f"status {r.status_code}, {len(r.content)} bytes")
                except httpx.HTTPError as exc:
                    outcome.append(f"broken: {type(exc).__name__}")

            nursery.start_soon(download)
            if fault.pause_at is not None:
                # The fault comes once the upload has parts (the first 8 MiB is up).
                await wait_for(lambda: uploaded_parts(weed, prefix) >= 1, timeout=20)
                upstream.behaviour[FULL] = Behaviour(status=500)  # every resume fails too
                fault.resume.set()
        if fault.pause_at is not None:  # the 200 had begun: its body must break, not end
            assert outcome == ["broken: RemoteProtocolError"], outcome
        else:
            assert len(outcome) == 1 and outcome[0].startswith("status 502"), outcome
        await wait_for(lambda: objects.tier.uploads_running == 0, timeout=20)
        assert weed.objects(prefix) == {}
        assert weed.uploads(prefix) == []
        if fault.pause_at is not None:
            assert t.counter("snapshot_tracker_object_uploads_total", outcome="failed") == 1


async def test_firedancer_gets_the_bytes_not_a_redirect(
    tracker: TrackerUnderTest, weed: Weed
) -> None:
    async with httpx.AsyncClient(
        verify=client_tls(), headers={"user-agent": "Firedancer/0.9"}
    ) as client:
        await client.get(tracker.url(FULL))
        await uploaded(weed, tracker, FULL)
        alias = await client.get(f"{tracker.base}/snapshot.tar.zst")
        root = await client.get(f"{tracker.base}/{FULL}")
    assert alias.status_code == 303 and alias.headers["location"] == f"/{FULL}"
    assert root.status_code == 200 and root.content == FULL_DATA
    assert tracker.outcome("object_redirect") == 0


async def test_without_direct_serve_the_object_is_streamed_with_ranges(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with bucket_tracker(weed, upstream, tmp_path, direct_serve=False) as t:
        async with httpx.AsyncClient(verify=client_tls()) as client:
            await client.get(t.url(FULL))
            await uploaded(weed, t, FULL)
            for path in t.group_dir().iterdir():
                path.unlink()  # the disk copy is gone: the bucket's is streamed
            whole = await client.get(t.url(FULL))
            part = await client.get(t.url(FULL), headers={"range": "bytes=10-19"})
        assert whole.status_code == 200 and whole.content == FULL_DATA
        assert part.status_code == 206 and part.content == FULL_DATA[10:20]
        assert len(upstream.gets(FULL)) == 1
        assert t.outcome("object_store") == 2
        assert t.counter("snapshot_tracker_served_bytes_total", source="object_store") > 0


async def test_wrong_credentials_still_serve_correct_bytes_and_show_the_store_down(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tracker")
    async with bucket_tracker(weed, upstream, tmp_path, secret_access_key="wrong-secret") as t:
        async with httpx.AsyncClient(verify=client_tls()) as client:
            first = await client.get(t.url(FULL))
            second = await client.get(t.url(FULL))
            status = await client.get(f"{t.base}/v1/store")
        assert first.content == FULL_DATA and second.content == FULL_DATA
        assert second.status_code == 200  # from the disk cache
        assert status.status_code == 503 and status.headers["retry-after"] == "5"
        body = status.json()
        assert body["up"] is False and "403" in body["last_error"]
        assert "wrong-secret" not in status.text
        logged = [str(vars(record)) for record in caplog.records]
        assert any("object_store" in line for line in logged)  # the failure was logged…
        assert not any("wrong-secret" in line for line in logged)  # …without the secret
        assert t.counter("snapshot_tracker_object_store_up", bucket="snapshots") == 0
        assert weed.objects(prefix_of(t)) == {}


async def redirecting(t: TrackerUnderTest, weed: Weed, client: httpx.AsyncClient) -> ObjectTier:
    """FULL fetched once through ``t``, uploaded, and then a hit answered with a 303: the
    tracker's object tier."""
    await client.get(t.url(FULL))
    await uploaded(weed, t, FULL)
    assert (await client.get(t.url(FULL))).status_code == 303
    objects = t.parts.objects
    assert objects is not None
    return objects.tier


async def redirects_resume(
    t: TrackerUnderTest, client: httpx.AsyncClient, health: StoreHealth
) -> None:
    """Once the store answers the health check again, a hit is a 303 to the right bytes."""
    await wait_for(lambda: health.up, timeout=10)
    back = await client.get(t.url(FULL))
    assert back.status_code == 303
    assert (await client.get(back.headers["location"])).content == FULL_DATA
    assert t.counter("snapshot_tracker_object_store_up", bucket="snapshots") == 1


async def test_a_store_that_stops_and_comes_back(upstream: FakeUpstream, tmp_path: Path) -> None:
    from helpers_s3 import start_weed

    own = start_weed()
    try:
        async with (
            bucket_tracker(own, upstream, tmp_path) as t,
            httpx.AsyncClient(verify=client_tls()) as client,
        ):
            tier = await redirecting(t, own, client)
            health = tier.bucket.health
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tier.watch, 0.2)  # the service's health check
                own.stop(graceful=False)  # gone at once, its data kept (bench/weed.py)
                await wait_for(lambda: not health.up)
                # The URL kept for reuse is not handed out for a store that is down.
                down = await client.get(t.url(FULL))
                assert down.status_code == 200 and down.content == FULL_DATA
                assert (await client.get(f"{t.base}/v1/store")).json()["up"] is False
                assert t.counter("snapshot_tracker_object_store_up", bucket="snapshots") == 0
                own.start()
                await redirects_resume(t, client, health)
                assert (await client.get(f"{t.base}/v1/store")).json()["up"] is True
                nursery.cancel_scope.cancel()
    finally:
        own.discard()


async def test_no_url_is_handed_out_until_the_store_back_reads_again(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A store that comes back answers its bucket, HEAD and small writes before it can read
    what it stored (SeaweedFS: GETs answered 500 until its volume server registered again).
    No presigned URL is handed out until a GET of stored bytes worked: every client gets the
    archive, never a 500 (the store's, behind a 303), and redirects resume once it reads."""
    from helpers_s3 import start_weed, volumes_away

    own = start_weed()
    try:
        async with (
            bucket_tracker(own, upstream, tmp_path) as t,
            httpx.AsyncClient(verify=client_tls()) as client,
            httpx.AsyncClient(verify=client_tls(), follow_redirects=True) as follower,  # curl -L
        ):
            tier = await redirecting(t, own, client)
            health = tier.bucket.health
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tier.watch, 0.2)  # the service's health check
                with volumes_away(own):
                    key = tier.object_key(GROUP, FULL)
                    s3 = own.client()
                    assert s3.head_object(Bucket="snapshots", Key=key)["ContentLength"]
                    probes = tier.probes
                    await wait_for(lambda: tier.probes >= probes + 3)  # the store is back
                    hit = await follower.get(t.url(FULL))  # from the disk cache
                    assert hit.status_code == 200 and hit.content == FULL_DATA
                    for path in t.group_dir().iterdir():
                        path.unlink()  # no disk copy: the bucket's would be streamed
                    cold = await follower.get(t.url(FULL))
                    assert cold.status_code == 200 and cold.content == FULL_DATA
                    assert not health.up and "GET" in health.last_error
                    assert t.outcome("object_redirect") == 1  # the one before the outage
                await redirects_resume(t, client, health)
                nursery.cancel_scope.cancel()
    finally:
        own.discard()


async def _dateless_store(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An S3 endpoint whose HEAD answers lack ``Last-Modified`` (a malformed answer)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-length", b"5"), (b"etag", b'"e"'), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def test_a_discarded_store_leaves_nothing_in_the_temporary_directory() -> None:
    """The store a test session (or a bench) started is removed with its objects when it
    ends: the suite runs on shared disks, and leftover stores once filled one."""
    from helpers_s3 import start_weed

    own = start_weed()
    root = own.root
    assert own.proc is not None
    pid = own.proc.pid
    try:
        own.client().put_object(Bucket="snapshots", Key="leftover", Body=b"x" * 1024)
        assert (root / "data").is_dir()
    finally:
        own.discard()
    assert not root.exists()
    # nor its logs, which SeaweedFS writes to the system's temporary directory unless told
    # (a few files a start, each named after its process)
    logs = Path(tempfile.gettempdir()).glob(f"weed.*.{pid}")
    assert [p.name for p in logs] == []


async def test_a_malformed_store_answer_costs_that_answer(weed: Weed) -> None:
    """A store answer missing a field is a store failure on the request path (the archive is
    then served another way), never an exception that would answer 500."""
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_app, _dateless_store)
        tier = tier_of(weed, endpoint=base)
        assert await tier.lookup(GROUP, FULL) is None
        assert await tier.handout(GROUP, FULL) is None
        health = tier.bucket.health
        assert not health.up and "HEAD: malformed answer" in health.last_error
        nursery.cancel_scope.cancel()


async def test_a_hung_store_costs_a_request_at_most_request_timeout(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A store that accepts connections and never answers (SIGSTOP): the first request to
    ask it waits ``request_timeout``, not boto3's timeouts and retries, and is answered
    another way; the store is then down and no request asks it; when it answers the health
    check again, redirects resume."""
    assert weed.proc is not None
    group_id = weed.proc.pid  # weed runs in its own session: stop all of it
    # Above the default (2 s): the live store must answer the set-up's calls within it on a
    # loaded host (at 1 s, a lock call under two CPU hogs and three other workers did not, so
    # the store was down and nothing was uploaded); boto3's own would wait 60 s and retry.
    timeout = 3.0
    async with (
        bucket_tracker(weed, upstream, tmp_path, request_timeout=timeout) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=30) as client,
    ):
        tier = await redirecting(t, weed, client)
        health = tier.bucket.health
        os.killpg(group_id, signal.SIGSTOP)
        try:
            for name, data in ((INCR, INCR_DATA), (FULL, FULL_DATA)):  # cold, then a disk hit
                started = trio.current_time()
                with trio.fail_after(10):
                    async with client.stream("GET", t.url(name)) as answer:
                        waited = trio.current_time() - started
                        body = await answer.aread()
                # not boto's own 60 s: request_timeout, with room for a loaded host
                assert waited < 3 * timeout, (name, waited)
                assert answer.status_code == 200 and body == data, name
                assert not health.up
            status = await client.get(f"{t.base}/v1/store")
            assert status.json()["up"] is False and "no answer" in status.json()["last_error"]
            assert t.counter("snapshot_tracker_object_store_up", bucket="snapshots") == 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tier.watch, 0.2)  # the service's health check
                os.killpg(group_id, signal.SIGCONT)
                await redirects_resume(t, client, health)
                nursery.cancel_scope.cancel()
        finally:
            os.killpg(group_id, signal.SIGCONT)


class InternalService:
    """A service on loopback that answers every GET 200 with ``size`` bytes (with their
    length, or chunked without it) and counts the requests it got."""

    def __init__(self, size: int, *, chunked: bool) -> None:
        self.size, self.chunked, self.asked = size, chunked, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.asked += 1
        body = b"internal " * (self.size // 9) + b"!" * (self.size % 9)
        length = [] if self.chunked else [(b"content-length", str(self.size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        half = self.size // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:]})


@pytest.mark.parametrize(
    ("listed", "chunked", "asked"),
    [
        (None, False, 0),  # no object_store.replicas: the egress policy refuses loopback
        (False, False, 0),  # object_store.replicas lists other replicas only
        (True, True, 1),  # listed, but its answer does not state the archive's size
    ],
    ids=["egress", "not-listed", "listed-no-length"],
)
async def test_a_lock_naming_another_service_does_not_get_it_served(
    weed: Weed,
    upstream: FakeUpstream,
    tmp_path: Path,
    listed: bool | None,
    chunked: bool,
    asked: int,
) -> None:
    """Whoever can write to the bucket can name any URL as a lock's holder: a replica must
    not proxy a client to an internal service and serve its answer as the archive. The
    client gets the archive from its source."""
    service = InternalService(len(INCR_DATA), chunked=chunked)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_app, service)
        replicas = () if listed is None else ((base,) if listed else (f"http://{REFUSED}",))
        async with bucket_tracker(weed, upstream, tmp_path, lock_ttl=60.0, replicas=replicas) as t:
            objects = t.parts.objects
            assert objects is not None
            lock = objects.tier.lock_key(GROUP, INCR)
            put(weed, lock, Metadata={"owner": "intruder", "replica": base})
            async with httpx.AsyncClient(verify=client_tls()) as client:
                got = await client.get(t.url(INCR))
            assert got.status_code == 200 and got.content == INCR_DATA
            assert service.asked == asked
            assert t.outcome("replica") == 0
        nursery.cancel_scope.cancel()


async def test_urls_are_signed_for_the_public_endpoint(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    public = weed.endpoint.replace("127.0.0.1", "localhost")
    async with (
        bucket_tracker(weed, upstream, tmp_path, public_endpoint=public) as t,
        httpx.AsyncClient(verify=client_tls()) as client,
    ):
        await client.get(t.url(FULL))
        await uploaded(weed, t, FULL)
        location = (await client.get(t.url(FULL))).headers["location"]
        assert location.startswith(public + "/snapshots/")
        followed = await client.get(location)
        assert followed.status_code == 200 and followed.content == FULL_DATA
        # Signed for the public host: the same URL on another host is refused.
        other = await client.get(location.replace(public, weed.endpoint))
        assert other.status_code == 403


async def test_a_url_that_cannot_be_signed_gets_the_bytes_streamed(
    tracker: TrackerUnderTest, weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracker.errors import StoreError

    objects = tracker.parts.objects
    assert objects is not None
    async with httpx.AsyncClient(verify=client_tls()) as client:
        await client.get(tracker.url(FULL))
        await uploaded(weed, tracker, FULL)

        def refuse(*_args: object, **_kwargs: object) -> str:
            raise StoreError("presign: no credentials", down=False)

        monkeypatch.setattr(objects.tier.bucket, "presign_get", refuse)
        answer = await client.get(tracker.url(FULL))
    assert answer.status_code == 200 and answer.content == FULL_DATA
    assert tracker.outcome("object_redirect") == 0


async def test_a_prefetch_fills_the_bucket_once(
    tracker: TrackerUnderTest, upstream: FakeUpstream, weed: Weed
) -> None:
    assert await tracker.streamer.prefetch(GROUP, FULL) is True
    await uploaded(weed, tracker, FULL)
    for path in tracker.group_dir().iterdir():
        path.unlink()
    assert await tracker.streamer.prefetch(GROUP, FULL) is False  # the bucket has it
    async with httpx.AsyncClient(verify=client_tls()) as client:
        assert (await client.get(tracker.url(FULL))).status_code == 303
    assert len(upstream.gets(FULL)) == 1


async def test_the_fast_path_answers_bucket_hits_as_quart_does(
    tracker: TrackerUnderTest, weed: Weed, upstream: FakeUpstream
) -> None:
    """GETs the bucket answers with a 303 are answered before Quart
    (:class:`tracker.web.shortcuts.FastRedirects`): same status, headers and body as the
    Quart routes give, for every route and client; the others are left to Quart."""
    t = tracker
    async with httpx.AsyncClient(verify=client_tls()) as client:
        await client.get(t.url(FULL))  # fills the bucket
    await uploaded(weed, t, FULL)
    # The incremental stays out of the bucket: a first request that could fetch it would
    # put it there (a spliced refresh and its upload of a small file take milliseconds) and
    # the next one would be a hit.
    upstream.behaviour[INCR] = Behaviour(status=500)
    fast = t.parts.public
    async with trio.open_nursery() as nursery:
        quart_base = await nursery.start(serve_app, t.parts.app)
        cases = [
            ("GET", f"/v1/{GROUP}/{FULL}", "curl/8.0", True),
            ("GET", f"/{FULL}", "curl/8.0", True),
            ("GET", f"/{FULL}", "Wget/1.21", False),  # bytes: it names its file after the URL
            ("GET", f"/{FULL}", "Firedancer/0.1", False),  # bytes (README.md#clients)
            ("GET", f"/v1/{GROUP}/{FULL}", "solana-snapshot-tracker", False),  # a replica
            ("HEAD", f"/v1/{GROUP}/{FULL}", "curl/8.0", False),
            ("GET", f"/v1/nobody/{FULL}", "curl/8.0", False),
            ("GET", f"/v1/{GROUP}/not-an-archive", "curl/8.0", False),
            ("GET", f"/v1/{GROUP}/{INCR}", "curl/8.0", False),  # not in the bucket
        ]
        for method, target, agent, answered_here in cases:
            before = fast.answered
            headers = [("user-agent", agent)]
            ours = await raw_request(t.base, target, method=method, headers=headers, idle=0)
            theirs = await raw_request(quart_base, target, method=method, headers=headers, idle=0)
            assert ours.status == theirs.status, target
            if ours.status == 303:
                assert without_date(ours.headers) == without_date(theirs.headers), target
            # (A streamed answer may differ: the first request started the file's refresh.)
            assert (fast.answered > before) == answered_here, (method, target, agent)
        nursery.cancel_scope.cancel()


def without_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers if k.lower() != "date"]
