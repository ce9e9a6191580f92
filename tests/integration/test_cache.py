"""The disk cache of proxy mode (docs/http-api.md#archive-answers), end to end: real hypercorn
tracker, real upstreams.

Each test runs a :class:`FakeUpstream` and a tracker whose cache directory is a fresh
``tmp_path``; the index is fed by the test. Faults come from the upstream (drops, statuses,
short bodies, rate limits) and from the disk (a small tmpfs when this machine lets us mount
one, else an injected writer).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import (
    EARLY,
    FAST,
    GROUP,
    TrackerUnderTest,
    advertise,
    proxy_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from helpers_wire import raw_request
from names import full_name, incremental_name

from tracker.cache.disk import DiskOps
from tracker.cache.store import LOCK_FILE, Cache
from tracker.zerocopy.kernelcopy import splice_to_file

FULL = full_name(5000)
INCR = incremental_name(5000, 5100)
FULL_DATA = archive_bytes(4 * MiB, seed=10)
INCR_DATA = archive_bytes(1 * MiB, seed=11)


#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA, INCR: INCR_DATA}


@pytest.fixture
async def tracker(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[TrackerUnderTest]:
    async with proxy_tracker(tmp_path / "cache", upstream) as t:
        yield t


async def get(url: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20, verify=client_tls()) as client:
        return await client.get(url, **kwargs)  # type: ignore[arg-type]


async def test_first_get_fills_the_cache_then_no_upstream_requests(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    first = await get(tracker.url(FULL))
    assert first.status_code == 200
    assert sha256(first.content) == sha256(FULL_DATA)
    requests = len(upstream.seen)
    # The client had its last byte before the fsync and rename; a request right after it
    # waits for those and is a cache hit.
    second = await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}")
    assert tracker.cached() == [FULL]
    assert sha256((tracker.group_dir() / FULL).read_bytes()) == sha256(FULL_DATA)
    assert tracker.outcome("refresh_ok") == 1
    head = await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}", method="HEAD")
    assert second.status == 200
    assert sha256(second.body) == sha256(FULL_DATA)
    assert second.header("content-length") == str(len(FULL_DATA))
    assert second.header("transfer-encoding") is None
    assert second.header("accept-ranges") == "bytes"
    assert second.header("etag") is not None
    # The upstream's Last-Modified survives into the cache.
    assert second.header("last-modified") == first.headers["last-modified"]
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-length") == str(len(FULL_DATA))
    assert len(upstream.seen) == requests
    assert tracker.outcome("cache_hit") == 2
    await wait_for(lambda: tracker.counter("snapshot_tracker_active_streams") == 0)
    assert tracker.counter("snapshot_tracker_served_bytes_total", source="cache") == len(FULL_DATA)
    assert tracker.counter("snapshot_tracker_cache_size_bytes") == len(FULL_DATA)


async def test_the_client_does_not_wait_for_the_fsync_and_the_next_request_does(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    syncing, gate = threading.Event(), threading.Event()

    def slow_sync(fd: int) -> None:
        syncing.set()
        gate.wait(60)  # a slow disk: the refresh's fsync lasts until the test lets it end
        os.fsync(fd)

    def factory(path: str) -> Cache:
        return Cache(path, ops=DiskOps(sync=slow_sync))

    async with proxy_tracker(tmp_path / "cache", upstream, cache_factory=factory) as t:
        try:
            first = await get(t.url(FULL))
            assert sha256(first.content) == sha256(FULL_DATA)
            assert await trio.to_thread.run_sync(syncing.wait, 30)
            assert FULL not in t.cached()  # every byte is out; the promotion is still running
            answers: list[Any] = []

            async def second_request() -> None:
                answers.append(await raw_request(t.base, f"/v1/{FULL}?group={GROUP}"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(second_request)
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                assert answers == []  # it waits for the promotion ...
                gate.set()
            [second] = answers
            assert sha256(second.body) == sha256(FULL_DATA)
            assert len(upstream.gets(FULL)) == 1  # ... and was a cache hit
            assert t.outcome("cache_hit") == 1
            assert t.cached() == [FULL]
        finally:
            gate.set()  # however the test ends, the fsync ends (the tracker waits for it)


async def test_ranges_and_conditionals_on_a_cached_file(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    await get(tracker.url(INCR))
    await wait_for(lambda: tracker.cached() == [INCR])
    requests = len(upstream.seen)
    size = len(INCR_DATA)
    url = tracker.url(INCR)
    first = await get(url, headers={"range": "bytes=0-99"})
    assert (first.status_code, first.content) == (206, INCR_DATA[:100])
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    suffix = await get(url, headers={"range": "bytes=-100"})
    assert (suffix.status_code, suffix.content) == (206, INCR_DATA[-100:])
    past = await get(url, headers={"range": f"bytes={size}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{size}"
    multi = await get(url, headers={"range": "bytes=0-9,20-29"})
    # Several ranges: the whole file (RFC 9110 allows ignoring Range; see tracker.ranges).
    assert multi.status_code == 200
    assert sha256(multi.content) == sha256(INCR_DATA)
    etag = multi.headers["etag"]
    same = await get(url, headers={"if-none-match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert len(upstream.seen) == requests


async def test_head_and_other_files_on_a_miss_are_not_cached(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    old = full_name(4000)
    upstream.files[old] = archive_bytes(1 * MiB, seed=12)
    advertise(tracker.index, f"{upstream.base}/old-node", [(old, upstream.url(old), MiB)], age=5)
    head = await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}", method="HEAD")
    assert head.header("content-length") == str(len(FULL_DATA))
    other = await get(tracker.url(old))  # not the best full: proxied, never cached
    assert sha256(other.content) == sha256(upstream.files[old])
    part = await get(tracker.url(old), headers={"range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, upstream.files[old][10:20])
    assert [s.method for s in upstream.seen] == ["HEAD", "GET", "GET"]
    assert tracker.cached() == []
    assert tracker.outcome("cache_miss") == 3
    assert tracker.outcome("refresh_ok") == 0


async def test_a_range_request_on_the_best_file_starts_a_background_refresh(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    """README.md#clients: the range is served from upstream, and the whole file is cached behind it
    (clients that always send Range would otherwise never get it cached)."""
    part = await get(tracker.url(FULL), headers={"range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, FULL_DATA[10:20])
    await wait_for(lambda: tracker.cached() == [FULL])
    ranges = [g.headers.get("range") for g in upstream.gets(FULL)]
    assert sorted(ranges, key=str) == [None, "bytes=10-19"]
    again = await get(tracker.url(FULL), headers={"range": "bytes=10-19"})
    assert (again.status_code, again.content) == (206, FULL_DATA[10:20])
    assert len(upstream.gets(FULL)) == 2  # a cache hit


SERVED_FROM = ("cache", "upstream", "local", "object_store", "replica")


async def test_a_range_read_behind_a_background_refresh_counts_as_served(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    """A range whose bytes the background refresh already wrote is read from its temp file
    (aria2c's and axel's requests are all ranges): its bytes count in
    ``served_bytes_total`` (they counted nowhere)."""
    upstream.behaviour[FULL] = Behaviour(pause_at=2 * MiB)

    def served() -> float:
        name = "snapshot_tracker_served_bytes_total"
        return sum(tracker.counter(name, source=origin) for origin in SERVED_FROM)

    part = await get(tracker.url(FULL), headers={"range": "bytes=10-19"})  # starts it
    assert (part.status_code, part.content) == (206, FULL_DATA[10:20])

    def written() -> int:
        return sum(r.written for r in tracker.streamer.refreshes() if r.name == FULL)

    await wait_for(lambda: written() == 2 * MiB)
    before, asked = served(), len(upstream.gets(FULL))
    part = await get(tracker.url(FULL), headers={"range": "bytes=1000-100999"})
    assert (part.status_code, part.content) == (206, FULL_DATA[1000:101000])
    assert len(upstream.gets(FULL)) == asked  # read behind the refresh, not asked upstream
    await wait_for(lambda: served() - before == 100_000)
    upstream.behaviour[FULL].resume.set()
    await wait_for(lambda: tracker.cached() == [FULL])


async def test_the_bytes_of_a_piece_cut_short_count_as_served(tmp_path: Path) -> None:
    """A client that leaves in the middle of a zero-copy piece (a piece of up to 128 MiB,
    larger than the socket's buffers) got some of it: those bytes counted nowhere in
    ``served_bytes_total`` (a cut piece counted zero), though the download's log line had
    them."""
    data = archive_bytes(64 * MiB, seed=11)
    up = FakeUpstream(files={FULL: data})
    async with serving(up), proxy_tracker(tmp_path / "cache", up) as t:
        first = await get(t.url(FULL))
        assert sha256(first.content) == sha256(data)
        await wait_for(lambda: t.holds(FULL))
        name = "snapshot_tracker_served_bytes_total"
        before = t.counter(name, source="cache")
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}", read_limit=2 * MiB)
        assert len(wire.body) >= 2 * MiB
        await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0)
        assert len(wire.body) <= t.counter(name, source="cache") - before < len(data)


async def test_one_refresher_while_concurrent_clients_stream_uncached(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[FULL] = Behaviour(rate=8 * MiB)  # 4 MiB: about half a second
    results: list[bytes] = []

    async def fetch() -> None:
        results.append((await get(tracker.url(FULL))).content)

    cache = tracker.streamer.cache()
    assert cache is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        await wait_for(lambda: cache.is_refreshing(GROUP, FULL))
        for _ in range(3):
            nursery.start_soon(fetch)
    assert [sha256(r) for r in results] == [sha256(FULL_DATA)] * 4
    assert len(upstream.gets(FULL)) == 4
    await wait_for(lambda: tracker.cached() == [FULL])
    await wait_for(lambda: tracker.outcome("refresh_ok") == 1)
    await wait_for(lambda: tracker.counter("snapshot_tracker_active_streams") == 0)


def sent(up: FakeUpstream, name: str) -> int:
    """Body bytes the upstream sent for its first GET of ``name`` (-1: none yet)."""
    gets = up.gets(name)
    return gets[0].body_sent if gets else -1


def join_once_the_refresh_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a client's join of a refresh wait until that refresh ended: the race of a
    loaded machine, where the refresh ends before its client reads it, made certain."""
    import tracker.proxy.refreshing as refreshing

    real_join = refreshing.join

    async def join_once_ended(refresh: Any, *args: Any, **kwargs: Any) -> Any:
        await refresh.ended.wait()
        return await real_join(refresh, *args, **kwargs)

    monkeypatch.setattr(refreshing, "join", join_once_ended)


def assert_nothing_promoted(t: TrackerUnderTest) -> None:
    assert t.cached() == []  # neither the archive nor a temp file


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(drop_after=1 * MiB), Behaviour(short_by=1)],
    ids=["drop-mid-body", "200-shorter-than-content-length"],
)
async def test_broken_refresh_promotes_nothing_and_breaks_the_client(
    upstream: FakeUpstream, tmp_path: Path, behaviour: Behaviour
) -> None:
    # A break nothing repairs: no resume (resuming is tested in test_resume.py).
    no_resume = attrs.evolve(FAST, resume_delays=())
    async with proxy_tracker(tmp_path / "cache", upstream, settings=no_resume) as tracker:
        await _broken_refresh(tracker, upstream, behaviour)


async def _broken_refresh(
    tracker: TrackerUnderTest, upstream: FakeUpstream, behaviour: Behaviour
) -> None:
    upstream.behaviour[FULL] = behaviour
    wire = await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}")
    assert wire.status == 200
    assert len(wire.body) < len(FULL_DATA)
    assert wire.closed
    await wait_for(lambda: tracker.outcome("refresh_failed") == 1)
    assert_nothing_promoted(tracker)


@pytest.mark.parametrize("status", [500, 404])
async def test_refresh_against_an_error_status_is_a_502(
    tracker: TrackerUnderTest, upstream: FakeUpstream, status: int
) -> None:
    upstream.behaviour[FULL] = Behaviour(status=status)
    response = await get(tracker.url(FULL))
    assert response.status_code == 502
    assert f"HTTP {status}" in response.text
    assert tracker.outcome("refresh_failed") == 1
    assert_nothing_promoted(tracker)
    # Nothing is stuck: the next request refreshes again once the upstream is back.
    del upstream.behaviour[FULL]
    response = await get(tracker.url(FULL))
    assert sha256(response.content) == sha256(FULL_DATA)
    await wait_for(lambda: tracker.cached() == [FULL])


async def test_refresher_client_leaving_at_ten_percent_still_promotes(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[FULL] = Behaviour(rate=16 * MiB)
    wire = await raw_request(
        tracker.base, f"/v1/{FULL}?group={GROUP}", read_limit=len(FULL_DATA) // 10
    )
    assert len(wire.body) < len(FULL_DATA)
    await wait_for(lambda: tracker.outcome("refresh_ok") == 1)
    assert tracker.cached() == [FULL]
    assert sha256((tracker.group_dir() / FULL).read_bytes()) == sha256(FULL_DATA)


async def test_without_complete_on_disconnect_a_leaving_client_ends_the_refresh(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.behaviour[FULL] = Behaviour(rate=16 * MiB)
    async with proxy_tracker(tmp_path / "cache", upstream, cache_complete_on_disconnect=False) as t:
        await raw_request(t.base, f"/v1/{FULL}?group={GROUP}", read_limit=len(FULL_DATA) // 10)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert_nothing_promoted(t)
        await wait_for(lambda: upstream.gets(FULL)[0].aborted)


async def test_without_complete_on_disconnect_a_client_gone_after_an_early_head_ends_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The client got the early head (the source slower than ``early_head_after``) and left
    before the source answered: it had never joined the refresh as a reader, so nothing
    stopped it, and the whole archive was pulled and cached for nobody."""
    upstream.behaviour[FULL] = Behaviour(delay=1.5, rate=16 * MiB)
    async with proxy_tracker(
        tmp_path / "cache", upstream, settings=EARLY, cache_complete_on_disconnect=False
    ) as t:
        head = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}", read_limit=0)
        assert head.status == 200 and head.header("etag") is None  # the early head
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert_nothing_promoted(t)
        await wait_for(lambda: bool(upstream.gets(FULL)) and upstream.gets(FULL)[0].aborted)


async def test_stopping_during_a_refresh_removes_the_temp_file(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[FULL] = Behaviour(pause_at=2 * MiB)
    async with trio.open_nursery() as nursery:
        wires = []

        async def fetch() -> None:
            wires.append(await raw_request(tracker.base, f"/v1/{FULL}?group={GROUP}"))

        nursery.start_soon(fetch)
        await wait_for(lambda: any(n.startswith(".tmp-") for n in tracker.cached()))
        await wait_for(lambda: sent(upstream, FULL) == 2 * MiB)
        tracker.transfers.close(0)  # the service stopping, no grace left
    assert_nothing_promoted(tracker)
    [wire] = wires
    assert wire.closed
    assert len(wire.body) < len(FULL_DATA)
    await wait_for(lambda: tracker.outcome("refresh_failed") == 1)  # after the removal
    response = await get(tracker.url(INCR))
    assert response.status_code == 503


async def test_stopping_before_the_refresh_opened_answers_503(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    """The service stops while a refresh's source has not answered yet (before its early
    head is due): the client is told the tracker is stopping. It was a 500 (an IndexError:
    the cancelled start left no outcome)."""
    upstream.behaviour[FULL] = Behaviour(delay=60)
    async with trio.open_nursery() as nursery:
        answers: list[httpx.Response] = []

        async def fetch() -> None:
            answers.append(await get(tracker.url(FULL)))

        nursery.start_soon(fetch)
        await wait_for(lambda: bool(upstream.gets(FULL)))
        tracker.transfers.close(0)  # the service stopping, no grace left
    [answer] = answers
    assert answer.status_code == 503 and "stopping" in answer.text, answer.text
    assert_nothing_promoted(tracker)


async def test_newer_full_evicts_the_old_full_and_keeps_the_incremental(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    await get(tracker.url(FULL))
    await get(tracker.url(INCR))
    await wait_for(lambda: tracker.cached() == sorted([FULL, INCR]))  # side by side
    newer = full_name(6000)
    newer_data = archive_bytes(2 * MiB, seed=13)
    upstream.files[newer] = newer_data
    advertise(
        tracker.index, f"{upstream.base}/new-node", [(newer, upstream.url(newer), len(newer_data))]
    )
    # The old full is still cached and served while the new one is not.
    hit = await get(tracker.url(FULL))
    assert sha256(hit.content) == sha256(FULL_DATA)
    response = await get(tracker.url(newer))
    assert sha256(response.content) == sha256(newer_data)
    await wait_for(lambda: tracker.cached() == sorted([newer, INCR]))  # promoted after the GET
    size = len(newer_data) + len(INCR_DATA)
    await wait_for(lambda: tracker.counter("snapshot_tracker_cache_size_bytes") == size)


async def test_a_refresh_that_stopped_being_the_best_is_not_promoted(
    tracker: TrackerUnderTest, upstream: FakeUpstream
) -> None:
    upstream.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
    async with trio.open_nursery() as nursery:
        results: list[bytes] = []

        async def fetch() -> None:
            results.append((await get(tracker.url(FULL))).content)

        nursery.start_soon(fetch)
        await wait_for(lambda: sent(upstream, FULL) == 1 * MiB)
        newer = full_name(6000)
        advertise(tracker.index, f"{upstream.base}/new-node", [(newer, upstream.url(newer), 10)])
        upstream.behaviour[FULL].resume.set()
    assert [sha256(r) for r in results] == [sha256(FULL_DATA)]  # the client is served ...
    assert_nothing_promoted(tracker)  # ... but a stale archive does not enter the cache
    # and that is no failure: it counted as refresh_failed, which the refresh alert pages
    # on (a slow link refreshing incrementals, a new one every ~40 s, paged)
    await wait_for(lambda: tracker.outcome("refresh_stale") == 1)
    assert tracker.outcome("refresh_failed") == 0


async def test_startup_removes_temp_files_and_serves_cached_archives(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    group_dir = tmp_path / "cache" / GROUP
    group_dir.mkdir(parents=True)
    (group_dir / f".tmp-{FULL}.dead").write_bytes(b"partial")
    (group_dir / INCR).write_bytes(INCR_DATA)
    async with proxy_tracker(tmp_path / "cache", upstream) as t:
        assert t.cached() == [INCR]
        response = await get(t.url(INCR))
        assert sha256(response.content) == sha256(INCR_DATA)
        assert upstream.seen == []


async def test_not_enough_space_evicts_stale_files_then_streams_uncached(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    stale = full_name(4000)
    (root / GROUP).mkdir(parents=True)
    (root / GROUP / stale).write_bytes(b"old full")
    (root / GROUP / INCR).write_bytes(INCR_DATA)

    sizes: list[int] = []

    def factory(path: str) -> Cache:
        return Cache(path, ops=DiskOps(free_space=lambda _dir: 1 * MiB), on_size=sizes.append)

    async with proxy_tracker(root, upstream, cache_factory=factory) as t:
        response = await get(t.url(FULL))
        assert sha256(response.content) == sha256(FULL_DATA)
        # Counted at the refresh's end (cachefill._end_refresh), after its upstream is
        # closed: a moment after the client had its last byte.
        await wait_for(lambda: t.outcome("refresh_no_space") == 1)
        # The stale full went first; the incremental (another kind) stayed.
        assert t.cached() == [INCR]
        assert sizes[-1] == len(INCR_DATA)  # reported right after the eviction


class FailingWriter:
    """``os.pwrite`` until ``limit`` bytes were written, then ENOSPC."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0

    def __call__(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return os.pwrite(fd, data, offset)

    def splice(self, src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        """The spliced refresh's path (upstream socket into the file), failing alike."""
        if self.written >= self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        moved = splice_to_file(src, fd, offset, min(count, self.limit - self.written), timeout, s)
        self.written += moved
        return moved


def failing_disk(path: str) -> Cache:
    """A cache whose writes fail with ENOSPC after 1 MiB."""
    writer = FailingWriter(1 * MiB)
    return Cache(path, ops=DiskOps(write=writer, splice=writer.splice))


def served(t: TrackerUnderTest) -> float:
    """Archive bytes sent to clients so far, from any origin."""
    name = "snapshot_tracker_served_bytes_total"
    return sum(t.counter(name, source=s) for s in ("cache", "upstream"))


async def test_disk_full_during_a_refresh_injected(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The client reading the refresh is cut short when the disk fills under it. The source
    pauses before the failing write until the client has its first bytes: the client has
    joined the refresh (a refresh that failed before it joined is the next test's case)."""
    upstream.behaviour[FULL] = Behaviour(pause_at=MiB // 2)
    async with proxy_tracker(tmp_path / "cache", upstream, cache_factory=failing_disk) as t:
        async with trio.open_nursery() as nursery:
            wires = []

            async def fetch() -> None:
                wires.append(await raw_request(t.base, f"/v1/{FULL}?group={GROUP}"))

            nursery.start_soon(fetch)
            await wait_for(lambda: served(t) > 0)
            upstream.behaviour[FULL].resume.set()
        [wire] = wires
        assert wire.closed and len(wire.body) < len(FULL_DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert_nothing_promoted(t)
        assert len(upstream.gets(FULL)) == 1


async def test_a_full_cache_disk_is_named_as_the_problem(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk filling under a refresh is the cache's failure, not the source's: the
    refresh's end says why, and the group's uncached record (the status page, ``cache`` in
    ``/v1/targets``) says the disk ran out of room, until a refresh of it finds room."""
    caplog.set_level(logging.INFO)

    def ended() -> list[dict[str, Any]]:
        return [
            getattr(r, "tracker_fields", {})
            for r in caplog.records
            if r.msg == "cache_refresh_ended"
        ]

    async with proxy_tracker(tmp_path / "cache", upstream, cache_factory=failing_disk) as t:
        await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")  # broken, or whole uncached
        await wait_for(lambda: len(ended()) == 1)
        [fields] = ended()
        assert fields["outcome"] == "refresh_failed"
        assert fields["reason"] == "cache write failed: No space left on device"
        uncached = t.streamer.uncached()[GROUP]
        assert uncached == (
            f"{FULL} not cached: the cache's disk ran out of room while it was written "
            "(No space left on device)"
        )
        assert_nothing_promoted(t)


async def test_a_refresh_that_failed_before_its_client_joined_is_streamed_uncached(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the refresh may fail (the disk full after 1 MiB) before the
    client that started it reads its file: the client then gets the whole archive from the
    source, uncached, never a short 200. The race is made certain: the client's join of the
    refresh waits until the refresh ended."""
    join_once_the_refresh_ended(monkeypatch)
    async with proxy_tracker(tmp_path / "cache", upstream, cache_factory=failing_disk) as t:
        got = await get(t.url(FULL))
        assert got.status_code == 200
        assert sha256(got.content) == sha256(FULL_DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)  # after the removal
        assert_nothing_promoted(t)
        assert len(upstream.gets(FULL)) == 2  # the refresh's, then the client's own


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[None]:
    """Mount a tmpfs at ``path``, or skip the test when this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_disk_full_during_a_refresh_on_a_real_small_file_system(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    root = tmp_path / "small"
    upstream.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
    with tmpfs(root, "size=6m"):
        # No room kept free: the refresh starts, and the disk fills under it.
        async with proxy_tracker(root, upstream, proxy_snapshot_cache_min_free=0) as t:
            async with trio.open_nursery() as nursery:
                wires = []

                async def fetch() -> None:
                    wires.append(await raw_request(t.base, f"/v1/{FULL}?group={GROUP}"))

                nursery.start_soon(fetch)
                await wait_for(lambda: sent(upstream, FULL) == 1 * MiB)
                # Something else fills the disk after the free-space check passed.
                with contextlib.suppress(OSError):
                    (root / "filler").write_bytes(b"\0" * (6 * MiB))
                upstream.behaviour[FULL].resume.set()
            [wire] = wires
            assert wire.closed and len(wire.body) < len(FULL_DATA)
            await wait_for(lambda: t.outcome("refresh_failed") == 1)
            assert_nothing_promoted(t)


async def test_a_disk_without_a_free_inode_is_named_as_the_problem(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Bytes free but no inode left (or a quota): the temp file cannot be created. The
    archive streams uncached, and the group's reason says why (it said nothing, and cleared
    an earlier reason as if the refresh had found room); once inodes are free again the
    next request caches it and the reason goes."""
    root = tmp_path / "small"
    with tmpfs(root, "size=40m,nr_inodes=16"):
        async with proxy_tracker(root, upstream, proxy_snapshot_cache_min_free=0) as t:
            fillers = []
            with contextlib.suppress(OSError):
                while True:  # every inode used
                    filler = root / f"filler-{len(fillers)}"
                    filler.write_bytes(b"")
                    fillers.append(filler)
            response = await get(t.url(FULL))
            assert sha256(response.content) == sha256(FULL_DATA)
            # counted once the upstream is closed, after the client's last byte
            await wait_for(lambda: t.outcome("refresh_failed") == 1)
            assert t.cached() == []
            reason = t.streamer.uncached()[GROUP]
            assert "no room for a new file (No space left on device)" in reason, reason
            for filler in fillers:
                filler.unlink()
            response = await get(t.url(FULL))
            assert sha256(response.content) == sha256(FULL_DATA)
            await wait_for(lambda: t.cached() == [FULL])
            assert GROUP not in t.streamer.uncached()


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """A directory nobody may write to: a read-only tmpfs for root (who ignores modes, and
    skips when mounting is refused), mode 0555 for anyone else."""
    if os.geteuid() == 0:
        with tmpfs(path, "ro,size=1m"):
            yield
        return
    path.mkdir(parents=True)
    path.chmod(0o555)
    try:
        yield
    finally:
        path.chmod(0o755)


async def test_read_only_cache_directory_streams_uncached(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    root = tmp_path / "ro"
    with read_only_directory(root):
        async with proxy_tracker(root, upstream) as t:
            response = await get(t.url(FULL))
            assert sha256(response.content) == sha256(FULL_DATA)
            # counted once the upstream is closed, after the client's last byte
            await wait_for(lambda: t.outcome("refresh_failed") == 1)
            assert t.cached() == []


async def test_path_traversal_never_leaves_the_cache(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Nothing outside the cache directory is read: a canary next to it keeps its atime on a
    strictatime tmpfs (when one can be mounted) and its bytes never reach a client."""
    base = tmp_path / "fs"
    strict = True
    try:
        with tmpfs(base, "strictatime,size=16m"):
            await _traversal(upstream, base, strict)
    except pytest.skip.Exception:
        strict = False
        await _traversal(upstream, base, strict)


async def _traversal(upstream: FakeUpstream, base: Path, strict: bool) -> None:
    canary_text = b"CANARY-must-never-be-served"
    (base / "etc").mkdir(parents=True, exist_ok=True)
    canary = base / "etc" / "passwd"
    canary.write_bytes(canary_text)
    (base / FULL).write_bytes(canary_text)  # what `group=..` would reach
    (base / "cache").mkdir(exist_ok=True)
    os.utime(canary, (1_000_000, 1_000_000))
    os.utime(base / FULL, (1_000_000, 1_000_000))
    async with proxy_tracker(base / "cache", upstream) as t:
        targets = [
            "/v1/..%2f..%2fetc%2fpasswd",
            "/v1/..%2F..%2Fetc%2Fpasswd?group=mainnet",
            "/..%2f..%2fetc%2fpasswd",
            f"/v1/{FULL}?group=../..",
            f"/v1/{FULL}?group=..",
            f"/v1/{FULL}?group=..%2f..",
            f"/v1/{FULL}?group=mainnet%2f..",
            f"/v1/{FULL}?group=mainnet%00",
            f"/v1/{FULL}%00?group=mainnet",
            f"/v1/..%2f{FULL}?group=mainnet",
            f"/v1/%2e%2e%2f{FULL}",
            "/v1/%00",
            "/v1/snapshot.tar.bz2?group=../..",
        ]
        async with httpx.AsyncClient(verify=client_tls()) as client:
            for target in targets:
                wire = await raw_request(t.base, target, idle=0.01)
                assert wire.status in (400, 404), (target, wire.status)
                assert canary_text not in wire.body
            # A group that exists in the index of an unconfigured name is still refused.
            response = await client.get(f"{t.base}/v1/{FULL}", params={"group": "../.."})
            assert response.status_code in (400, 404)
    assert upstream.seen == []
    if strict:
        assert os.stat(canary).st_atime == 1_000_000
        assert os.stat(base / FULL).st_atime == 1_000_000


async def test_symlinks_planted_in_the_cache_are_not_followed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = b"CANARY-outside-the-cache"
    (outside / FULL).write_bytes(canary)
    (outside / INCR).write_bytes(canary)
    root = tmp_path / "cache"
    (root / GROUP).mkdir(parents=True)
    (root / GROUP / FULL).symlink_to(outside / FULL)  # a file leading out
    async with proxy_tracker(root, upstream) as t:
        full = await get(t.url(FULL))
        assert sha256(full.content) == sha256(FULL_DATA)  # from upstream, uncached
        assert (outside / FULL).read_bytes() == canary
        (root / GROUP / FULL).unlink()
        (root / GROUP).rmdir()
        (root / GROUP).symlink_to(outside, target_is_directory=True)  # a group leading out
        incr = await get(t.url(INCR))
        assert sha256(incr.content) == sha256(INCR_DATA)
        assert sorted(p.name for p in outside.iterdir()) == sorted([FULL, INCR])
        assert (outside / INCR).read_bytes() == canary
    assert len(upstream.gets()) == 2


async def test_an_archive_name_linked_inside_the_cache_is_not_followed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The best archive's name linked to an older archive of the cache: that archive's
    bytes were served for it (a clean 200, the source never asked). It streams from the
    source, uncached, and the older archive stays."""
    old, old_data = full_name(4000), archive_bytes(MiB, seed=12)
    (tmp_path / "cache" / GROUP).mkdir(parents=True)
    (tmp_path / "cache" / GROUP / old).write_bytes(old_data)
    (tmp_path / "cache" / GROUP / FULL).symlink_to(old)
    async with proxy_tracker(tmp_path / "cache", upstream) as t:
        full = await get(t.url(FULL))
        assert sha256(full.content) == sha256(FULL_DATA)
        with trio.fail_after(10):
            while t.streamer.refreshes():
                await trio.sleep(0.05)
    assert len(upstream.gets(FULL)) == 1
    assert (tmp_path / "cache" / GROUP / old).read_bytes() == old_data


async def test_a_group_directory_linked_to_another_group_is_not_followed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A group's directory linked to another group's: the refresh was written, renamed and
    evicted there (that group's archive deleted). It streams from the source, uncached, and
    the other group's directory keeps what it held."""
    from tracker.config.schema import TargetGroup

    old, old_data = full_name(4000), archive_bytes(MiB, seed=12)
    root = tmp_path / "cache"
    (root / "other").mkdir(parents=True)
    (root / "other" / old).write_bytes(old_data)
    (root / GROUP).symlink_to("other", target_is_directory=True)
    groups = (TargetGroup(group=GROUP), TargetGroup(group="other"))
    async with proxy_tracker(root, upstream, target_groups=groups) as t:
        full = await get(t.url(FULL))
        assert sha256(full.content) == sha256(FULL_DATA)
        with trio.fail_after(10):
            while t.streamer.refreshes():
                await trio.sleep(0.05)
    assert sorted(p.name for p in (root / "other").iterdir()) == [old]
    assert (root / "other" / old).read_bytes() == old_data


async def test_a_group_named_dot_dot_touches_nothing_outside_the_cache(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A group the config could never name (``..``, built here past its checks) is refused
    by the one group-name rule before any file system work (tracker/core/cachedirs.py)."""
    from tracker.config.schema import TargetGroup

    groups = (TargetGroup(group=".."),)
    async with proxy_tracker(tmp_path / "cache" / "sub", target_groups=groups) as t:
        advertise(t.index, upstream.base, [(FULL, upstream.url(FULL), len(FULL_DATA))], group="..")
        response = await get(f"{t.base}/v1/{FULL}", params={"group": ".."})
        assert response.status_code == 400
        assert "malformed group name" in response.text
        assert upstream.gets(FULL) == []
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["sub"]
        assert [p.name for p in (tmp_path / "cache" / "sub").iterdir()] == [LOCK_FILE]


@pytest.mark.parametrize("head_delay", [0.0, 0.8], ids=["prompt", "early-head"])
async def test_a_refresh_moves_no_body_byte_through_python(
    upstream: FakeUpstream, tmp_path: Path, head_delay: float
) -> None:
    # The refresh's bytes go socket -> temp file by splice and temp file -> client by
    # sendfile: a refresh that received, wrote and sent them in Python filled its cache at
    # ~0.65x nginx proxy_cache (bench: refresh), spliced at ~1.9x.
    spliced: list[int] = []
    written: list[int] = []

    def splice(src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        moved = splice_to_file(src, fd, offset, count, timeout, s)
        spliced.append(moved)
        return moved

    def write(fd: int, data: bytes | memoryview, offset: int) -> int:
        written.append(len(data))
        return os.pwrite(fd, data, offset)

    def factory(path: str) -> Cache:
        return Cache(path, ops=DiskOps(write=write, splice=splice))

    # A slow source (head_delay > early_head_after) gets the client an early head, whose
    # body follows the refresh once it opens: the same path. The source pauses until the
    # client reads the refresh: a refresh that ended before its client joined it (a loaded
    # machine) has the client served its promoted copy, counted as the cache's bytes.
    upstream.behaviour[FULL] = Behaviour(delay=head_delay, pause_at=1 * MiB)
    settings = EARLY if head_delay else FAST
    served = "snapshot_tracker_served_bytes_total"
    async with proxy_tracker(
        tmp_path / "cache", upstream, cache_factory=factory, settings=settings
    ) as t:
        assert t.connections is not None
        pieces = t.connections.pieces
        answers: list[httpx.Response] = []

        async def fetch() -> None:
            answers.append(await get(t.url(FULL)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await wait_for(lambda: t.counter(served, source="upstream") > 0)
            upstream.behaviour[FULL].resume.set()
        [got] = answers
        assert got.status_code == 200
        assert sha256(got.content) == sha256(FULL_DATA)
        await wait_for(lambda: t.cached() == [FULL])
        assert sum(spliced) == len(FULL_DATA)
        assert written == []
        # Sent from the temp file with sendfile pieces (each counted once the sending thread
        # is back, which may be after the client had its last byte: waited for, every one).
        await wait_for(lambda: t.connections is not None and t.connections.pieces > pieces)
        await wait_for(lambda: t.counter(served, source="upstream") == len(FULL_DATA))
        assert t.counter(served, source="cache") == 0


def last_byte_waits_for_the_close(
    monkeypatch: pytest.MonkeyPatch, port: int, *, checkpoint: bool
) -> tuple[Callable[[], None], trio.Event]:
    """Make the worst interleaving of a client that closes as it takes the last byte certain:
    once the tracker (on ``port``) has sent an answer's last body byte, the send returns only
    after the request was told of the client's close (quart-trio then cancels it at once), so
    that cancellation is pending from there on. ``checkpoint``: one more (a checkpoint of the
    server on its way back to the body: none is there) as the send's caller returns. Returns
    what arms it, for the next answer of FULL_DATA's length, and the event set once that
    answer's last send waited."""
    import tracker.zerocopy.server as server_module
    import tracker.zerocopy.stream as stream_module

    real_send_all = stream_module.ZeroCopyStream.send_all
    real_send = server_module._send_last_shielded
    real_call = server_module.ZeroCopyApp.__call__
    body = {"armed": False, "sent": 0}
    disconnected, waited = trio.Event(), trio.Event()

    def done() -> bool:
        return bool(body["armed"]) and body["sent"] == len(FULL_DATA)

    async def send_all(stream: Any, data: Any) -> None:
        await real_send_all(stream, data)  # within hypercorn's shield
        if not body["armed"] or stream.socket.getsockname()[1] != port:
            return
        if bytes(data[:9]) != b"HTTP/1.1 ":  # the head
            body["sent"] += len(data)
        if data and done():  # the last body byte (not the empty end of the message)
            with trio.CancelScope(shield=True):
                await disconnected.wait()
            waited.set()

    async def send(inner: Any, message: Any) -> None:
        await real_send(inner, message)
        if checkpoint and done() and message.get("more_body"):
            await trio.lowlevel.checkpoint()

    async def call(app: Any, scope: Any, receive: Any, send: Any) -> None:
        # the answer armed for only: neither an earlier request's nor the upstream's
        probed = body["armed"] and scope.get("server", (None, None))[1] == port

        async def received() -> Any:
            message = await receive()
            if probed and message.get("type") == "http.disconnect":
                disconnected.set()
            return message

        await real_call(app, scope, received, send)

    def arm() -> None:
        body["armed"] = True

    monkeypatch.setattr(stream_module.ZeroCopyStream, "send_all", send_all)
    monkeypatch.setattr(server_module, "_send_last_shielded", send)
    monkeypatch.setattr(server_module.ZeroCopyApp, "__call__", call)
    return arm, waited


async def read_and_close(base: str, target: str) -> bytes:
    """GET ``target``, read exactly FULL_DATA's length of body and close at once."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    data = bytearray()
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        while (end := data.find(b"\r\n\r\n")) < 0 or len(data) < end + 4 + len(FULL_DATA):
            chunk = await stream.receive_some(MiB)
            assert chunk, f"closed after {len(data)} bytes"
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    return bytes(data[end + 4 :])


@pytest.mark.parametrize(
    ("cached", "checkpoint"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["refresh", "cache-hit", "refresh-checkpoint-added", "cache-hit-checkpoint-added"],
)
async def test_a_client_closing_as_it_takes_the_last_byte_has_every_byte_counted(
    upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cached: bool,
    checkpoint: bool,
) -> None:
    """A body counts a piece's bytes in ``served_bytes_total`` when the server asks it for
    the next chunk. A client that closes as it takes the last byte has the server cancel the
    request right after that send: hypercorn sends under a shield and nothing on the way
    back to the body is a checkpoint, so the body is asked once more and counts it
    (tracker/zerocopy/README.md, assumption 17). The ``checkpoint-added`` cases show the
    probe reaches that window: a checkpoint there, and the answer's last message (a sendfile
    piece of the refresh's temp file, the tail of a cached file) would be counted nowhere."""
    served = "snapshot_tracker_served_bytes_total"
    source = "cache" if cached else "upstream"
    # Uncached, the source pauses until the client reads the refresh (as above).
    upstream.behaviour[FULL] = Behaviour(pause_at=None if cached else 1 * MiB)
    async with proxy_tracker(tmp_path / "cache", upstream, settings=FAST) as t:
        port = int(t.base.rsplit(":", 1)[1])
        arm, waited = last_byte_waits_for_the_close(monkeypatch, port, checkpoint=checkpoint)
        if cached:
            assert sha256((await get(t.url(FULL))).content) == sha256(FULL_DATA)
            await wait_for(lambda: t.holds(FULL))
        before = t.counter(served, source=source)
        arm()
        bodies: list[bytes] = []

        async def fetch() -> None:
            bodies.append(await read_and_close(t.base, f"/v1/{FULL}?group={GROUP}"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            if not cached:
                await wait_for(lambda: t.counter(served, source=source) > 0)
                upstream.behaviour[FULL].resume.set()
        assert bodies == [FULL_DATA]
        await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0)
        assert waited.is_set()
        counted = t.counter(served, source=source) - before
        if checkpoint:
            assert counted < len(FULL_DATA)
        else:
            assert counted == len(FULL_DATA)


async def test_an_early_heads_body_comes_from_the_cache_when_the_refresh_was_promoted_first(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow source gets the client an early head; when the refresh it started is checked
    and promoted before the head's body begins (a small archive, a loaded machine), the body
    comes from the promoted copy instead of breaking the download. The race is made certain:
    the body's join of the refresh waits until the refresh ended."""
    join_once_the_refresh_ended(monkeypatch)
    upstream.behaviour[FULL] = Behaviour(delay=EARLY.early_head_after + 0.3)
    async with proxy_tracker(tmp_path / "cache", upstream, settings=EARLY) as t:
        got = await get(t.url(FULL))
        assert got.status_code == 200
        assert sha256(got.content) == sha256(FULL_DATA)
        assert t.cached() == [FULL]
        assert t.outcome("cache_hit") == 1  # the body was the promoted copy's
        assert len(upstream.gets(FULL)) == 1
