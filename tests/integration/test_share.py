"""Shared in-flight downloads (``cache_share_inflight``), end to end.

Real hypercorn tracker, real rate-limited :class:`FakeUpstream` on 127.0.0.1: while a
refresh runs, every GET of the file (ranges included) reads the growing temp file instead
of opening its own upstream stream; with sharing off, docs/http-api.md#archive-answers holds (each
concurrent GET is
its own upstream stream).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trio.testing
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import FAST, GROUP, TrackerUnderTest, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import UPSTREAM_ETAG, Behaviour, FakeUpstream
from helpers_wire import raw_request
from names import full_name, incremental_name

from tracker.cache.disk import DiskOps
from tracker.cache.store import Cache

FULL = full_name(8000)
INCR = incremental_name(8000, 8100)
FULL_DATA = archive_bytes(8 * MiB, seed=40)
INCR_DATA = archive_bytes(1 * MiB, seed=41)
BIG = 256 * MiB
CLIENTS = 8


#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA, INCR: INCR_DATA}


@pytest.fixture
async def tracker(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[TrackerUnderTest]:
    async with sharing_tracker(upstream, tmp_path) as t:
        yield t


@asynccontextmanager
async def sharing_tracker(
    upstream: FakeUpstream, tmp_path: Path, **overrides: object
) -> AsyncIterator[TrackerUnderTest]:
    """A tracker with sharing on (unless overridden) advertising ``upstream``'s files."""
    settings = {"cache_share_inflight": True, **overrides}
    # Quick resume attempts: a failing refresh gives up in a fraction of a second.
    quick = attrs.evolve(FAST, resume_delays=(0.05,) * 3)
    async with proxy_tracker(tmp_path / "cache", upstream, settings=quick, **settings) as t:
        yield t


@attrs.define
class Digest:
    status: int
    headers: httpx.Headers
    sha256: str
    size: int


async def fetch(client: httpx.AsyncClient, url: str, **headers: str) -> Digest:
    """GET ``url``, hashing the body as it streams (no copy of it kept)."""
    digest = hashlib.sha256()
    size = 0
    async with client.stream("GET", url, headers=headers) as response:
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
    return Digest(response.status_code, response.headers, digest.hexdigest(), size)


def upstream_sent(up: FakeUpstream, name: str) -> int:
    return sum(s.body_sent for s in up.gets(name))


async def concurrent_gets(t: TrackerUnderTest, name: str, count: int) -> list[Digest]:
    results: list[Digest] = []
    async with httpx.AsyncClient(verify=client_tls(), timeout=60, trust_env=False) as client:

        async def one() -> None:
            results.append(await fetch(client, t.url(name)))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return results


async def test_eight_concurrent_cold_gets_of_256_mib_share_one_upstream_stream(
    tmp_path: Path,
) -> None:
    name = full_name(9000)
    data = b"".join(archive_bytes(64 * MiB, seed=42 + i) for i in range(BIG // (64 * MiB)))
    up = FakeUpstream(files={name: data}, chunk=1 * MiB)
    up.behaviour[name] = Behaviour(rate=192 * MiB)  # about 1.3 s for the whole archive
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        async with sharing_tracker(up, tmp_path) as t:
            results = await concurrent_gets(t, name, CLIENTS)
            ratio = upstream_sent(up, name) / BIG
            print(
                f"\nsharing on: {CLIENTS} clients x {BIG // MiB} MiB, upstream/size = {ratio:.3f}"
            )
            assert {(r.status, r.size, r.sha256) for r in results} == {(200, BIG, sha256(data))}
            assert all(r.headers["content-length"] == str(BIG) for r in results)
            assert ratio <= 1.1
            assert len(up.gets(name)) == 1
            await wait_for(lambda: t.cached() == [name])
            await wait_for(lambda: t.outcome("refresh_ok") == 1)
            assert t.counter("snapshot_tracker_shared_readers_total") == CLIENTS - 1
            upstream_bytes = t.counter(
                "snapshot_tracker_upstream_bytes_total", group=GROUP, kind="full"
            )
            assert upstream_bytes == BIG
            await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0)
            assert t.counter("snapshot_tracker_served_bytes_total", source="cache") == CLIENTS * BIG
            (t.group_dir() / name).unlink()  # pytest keeps temp dirs: not 256 MiB each time
        nursery.cancel_scope.cancel()


async def test_with_sharing_off_each_concurrent_get_has_its_own_upstream_stream(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.behaviour[FULL] = Behaviour(rate=16 * MiB)  # 8 MiB: about half a second
    async with sharing_tracker(upstream, tmp_path, cache_share_inflight=False) as t:
        results = await concurrent_gets(t, FULL, CLIENTS)
        ratio = upstream_sent(upstream, FULL) / len(FULL_DATA)
        print(f"\nsharing off: {CLIENTS} clients, upstream/size = {ratio:.3f}")
        assert {(r.status, r.sha256) for r in results} == {(200, sha256(FULL_DATA))}
        # docs/http-api.md#archive-answers: one refresher, every other request streamed from
        # upstream uncached.
        assert len(upstream.gets(FULL)) == CLIENTS
        assert ratio == CLIENTS
        await wait_for(lambda: t.outcome("refresh_ok") == 1)
        assert t.counter("snapshot_tracker_shared_readers_total") == 0


async def test_a_late_joiner_starts_at_once_with_the_bytes_on_disk(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    half = len(FULL_DATA) // 2
    upstream.behaviour[FULL] = Behaviour(pause_at=half)
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
        trio.open_nursery() as n,
    ):
        first: list[Digest] = []

        async def refresher() -> None:
            first.append(await fetch(client, tracker.url(FULL)))

        n.start_soon(refresher)
        await wait_for(lambda: refresh_written(tracker, FULL) == half)
        async with client.stream("GET", tracker.url(FULL)) as late:
            assert late.headers["content-length"] == str(len(FULL_DATA))
            got = bytearray()
            chunks = late.aiter_raw()
            with trio.fail_after(5):  # the upstream is paused: these bytes come from disk
                async for chunk in chunks:
                    got += chunk
                    if len(got) >= half - 1:
                        break
            assert bytes(got) == FULL_DATA[: len(got)]
            upstream.behaviour[FULL].resume.set()
            async for chunk in chunks:
                got += chunk
        assert sha256(bytes(got)) == sha256(FULL_DATA)
    assert [(d.status, d.sha256) for d in first] == [(200, sha256(FULL_DATA))]
    assert len(upstream.gets(FULL)) == 1
    await wait_for(lambda: tracker.cached() == [FULL])
    assert tracker.counter("snapshot_tracker_shared_readers_total") == 1


def refresh_written(t: TrackerUnderTest, name: str) -> int:
    cache = t.streamer.cache()
    assert cache is not None
    running = [r.written for r in cache.refreshes() if (r.group, r.name) == (GROUP, name)]
    return running[0] if running else -1


async def test_range_requests_read_what_is_on_disk_or_wait_for_it(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    half = len(FULL_DATA) // 2
    size = len(FULL_DATA)
    upstream.behaviour[FULL] = Behaviour(pause_at=half)
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
        trio.open_nursery() as n,
    ):
        n.start_soon(fetch, client, tracker.url(FULL))
        await wait_for(lambda: refresh_written(tracker, FULL) == half)
        url = tracker.url(FULL)
        with trio.fail_after(5):  # on disk already: no wait for the paused upstream
            inside = await client.get(url, headers={"range": "bytes=100-199"})
        assert (inside.status_code, inside.content) == (206, FULL_DATA[100:200])
        assert inside.headers["content-range"] == f"bytes 100-199/{size}"
        assert inside.headers["content-length"] == "100"
        past = await client.get(url, headers={"range": f"bytes={size}-"})
        assert (past.status_code, past.headers["content-range"]) == (416, f"bytes */{size}")
        waiting: list[httpx.Response] = []

        async def tail() -> None:
            waiting.append(await client.get(url, headers={"range": "bytes=-1000"}))

        n.start_soon(tail)
        # Joined (counted), then every task blocked: the paused upstream, and this reader
        # waiting for bytes that are not on disk yet.
        await wait_for(lambda: tracker.counter("snapshot_tracker_shared_readers_total") == 3)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert waiting == []
        upstream.behaviour[FULL].resume.set()
    [suffix] = waiting
    assert (suffix.status_code, suffix.content) == (206, FULL_DATA[-1000:])
    assert len(upstream.gets(FULL)) == 1  # every range came from the one refresh
    await wait_for(lambda: tracker.cached() == [FULL])  # promoted after the last byte went out


async def test_a_refresh_that_fails_for_good_breaks_every_reader(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    half = len(FULL_DATA) // 2
    # Sends half, waits, then one more byte and drops the connection.
    upstream.behaviour[FULL] = Behaviour(pause_at=half, drop_after=half + 1)
    paused = upstream.behaviour[FULL]
    wires = []
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            wires.append(await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}"))

        nursery.start_soon(reader)
        await wait_for(lambda: refresh_written(tracker, FULL) == half)
        for _ in range(3):
            nursery.start_soon(reader)
        await wait_for(lambda: tracker.counter("snapshot_tracker_shared_readers_total") == 3)
        upstream.behaviour[FULL] = Behaviour(status=500)  # every resume attempt fails
        paused.resume.set()
    assert len(wires) == 4
    for wire in wires:
        assert wire.status == 200
        assert wire.header("content-length") == str(len(FULL_DATA))
        assert len(wire.body) < len(FULL_DATA)  # never a short 200 that looks complete
        assert wire.closed
    # counted once its temp file is removed, just after its readers learned it failed
    await wait_for(lambda: tracker.outcome("refresh_failed") == 1)
    assert tracker.cached() == []  # no archive, no temp file
    assert len(upstream.gets(FULL)) == 4  # the refresh and its three resume attempts


async def test_a_slow_client_does_not_slow_the_refresh(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    """The refresher's own client stops reading: the refresh still completes at the
    upstream's pace and the next client is a cache hit."""
    host, port = tracker.base.removeprefix("http://").rsplit(":", 1)
    stalled = await trio.open_tcp_stream(host, int(port))
    async with stalled:
        await stalled.send_all(f"GET /v1/{FULL}?group={GROUP} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await stalled.receive_some(1024)  # the headers came; then we read nothing more
        await wait_for(lambda: tracker.outcome("refresh_ok") == 1)
        assert tracker.cached() == [FULL]
        async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:
            again = await fetch(client, tracker.url(FULL))
        assert again.sha256 == sha256(FULL_DATA)
        assert tracker.outcome("cache_hit") == 1
    assert len(upstream.gets(FULL)) == 1


async def test_sharing_without_complete_on_disconnect_stops_with_the_last_reader(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.behaviour[FULL] = Behaviour(rate=8 * MiB)
    async with sharing_tracker(upstream, tmp_path, cache_complete_on_disconnect=False) as t:
        await raw_request(t.base, f"/v1/{FULL}?group={GROUP}", read_limit=len(FULL_DATA) // 10)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert t.cached() == []
        await wait_for(lambda: upstream.gets(FULL)[0].aborted)


async def test_head_and_conditionals_during_a_shared_refresh_go_upstream(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[INCR] = Behaviour(pause_at=len(INCR_DATA) // 2)
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
        trio.open_nursery() as n,
    ):
        n.start_soon(fetch, client, tracker.url(INCR))
        await wait_for(lambda: refresh_written(tracker, INCR) == len(INCR_DATA) // 2)
        head = await client.head(tracker.url(INCR))
        assert head.headers["content-length"] == str(len(INCR_DATA))
        same = await client.get(tracker.url(INCR), headers={"if-none-match": UPSTREAM_ETAG})
        assert same.status_code == 304
        upstream.behaviour[INCR].resume.set()
    assert [s.method for s in upstream.seen] == ["GET", "HEAD", "GET"]
    await wait_for(lambda: tracker.cached() == [INCR])


async def test_no_room_for_a_shared_refresh_streams_uncached(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    def factory(path: str) -> Cache:
        return Cache(path, ops=DiskOps(free_space=lambda _dir: 1 * MiB))

    sharing = {"cache_share_inflight": True, "cache_factory": factory}
    async with proxy_tracker(tmp_path / "cache", upstream, **sharing) as t:
        async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:
            response = await fetch(client, t.url(FULL))
        assert (response.status, response.sha256) == (200, sha256(FULL_DATA))
        # counted once the upstream is closed, after the client's last byte
        await wait_for(lambda: t.outcome("refresh_no_space") == 1)
        assert t.cached() == []
        assert len(upstream.gets(FULL)) == 1


async def test_a_range_request_with_no_refresh_running_is_proxied(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:
        part = await client.get(tracker.url(FULL), headers={"range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, FULL_DATA[10:20])
    assert any(g.headers.get("range") == "bytes=10-19" for g in upstream.gets(FULL))
    # README.md#clients: it also starts a background refresh of the whole (best) file.
    await wait_for(lambda: tracker.cached() == [FULL])
