"""Resumable refresh: a refresh whose upstream connection breaks goes on with a Range request.

Real hypercorn tracker, real :class:`FakeUpstream` servers on 127.0.0.1. The upstream drops the
connection once at about half of the archive; the refresh asks for the rest (``Range:
bytes={on disk}-``, ``If-Range`` with the ETag on the same source), checks the answer, and the
client's stream goes on as if nothing happened.
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
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import (
    FAST,
    GROUP,
    TOKEN,
    TrackerUnderTest,
    advertise,
    proxy_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED, Behaviour, FakeUpstream
from helpers_wire import raw_request
from names import full_name

from tracker.config.schema import BearerAuth, SourceLimits, TargetGroup
from tracker.ordering.index import TargetKey
from tracker.proxy import pumps

FULL = full_name(9100)
DATA = archive_bytes(8 * MiB, seed=50)
HALF = len(DATA) // 2
QUICK = (0.05, 0.1, 0.2)


async def start_upstream(nursery: trio.Nursery) -> FakeUpstream:
    up = FakeUpstream(files={FULL: DATA})
    await nursery.start(up.run)
    return up


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


@asynccontextmanager
async def tracker_for(
    tmp_path: Path, *upstreams: FakeUpstream, **overrides: object
) -> AsyncIterator[TrackerUnderTest]:
    quick = attrs.evolve(FAST, resume_delays=QUICK)
    async with proxy_tracker(tmp_path / "cache", settings=quick, **overrides) as t:
        for age, up in enumerate(upstreams):  # the first one is the freshest: asked first
            advertise(t.index, up.base, [(FULL, up.url(FULL), len(DATA))], age=age)
        yield t


def after_first_get(nursery: trio.Nursery, up: FakeUpstream, then: Behaviour) -> None:
    """Once the upstream got its first GET of the archive, answer later ones with ``then``
    (the first keeps the behaviour it started with)."""

    async def change() -> None:
        await wait_for(lambda: len(up.gets(FULL)) >= 1)
        up.behaviour[FULL] = then

    nursery.start_soon(change)


async def fetch(url: str) -> tuple[int, str, int]:
    digest = hashlib.sha256()
    size = 0
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
        client.stream("GET", url) as response,
    ):
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
    return response.status_code, digest.hexdigest(), size


def sent(up: FakeUpstream) -> int:
    return sum(s.body_sent for s in up.gets(FULL))


@pytest.mark.parametrize("sharing", [False, True], ids=["sharing-off", "sharing-on"])
async def test_a_drop_at_half_resumes_and_promotes(
    nursery: trio.Nursery, tmp_path: Path, sharing: bool
) -> None:
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=HALF, rate=32 * MiB)
    after_first_get(nursery, up, Behaviour())  # it drops once
    async with tracker_for(tmp_path, up, cache_share_inflight=sharing) as t:
        status, digest, size = await fetch(t.url(FULL))
        ratio = sent(up) / len(DATA)
        print(
            f"\nresume ({'sharing on' if sharing else 'sharing off'}): upstream/size = {ratio:.3f}"
        )
        # The client's stream went on seamlessly across the break.
        assert (status, digest, size) == (200, sha256(DATA), len(DATA))
        first, second = up.gets(FULL)
        assert first.body_sent == HALF
        assert second.headers["range"] == f"bytes={HALF}-"
        assert second.headers["if-range"] == UPSTREAM_ETAG
        assert ratio <= 1.3
        await wait_for(lambda: t.outcome("refresh_ok") == 1)
        assert t.cached() == [FULL]
        assert sha256((t.group_dir() / FULL).read_bytes()) == sha256(DATA)
        assert t.counter("snapshot_tracker_refresh_resumes_total") == 1
        assert t.counter("snapshot_tracker_upstream_bytes_total", group=GROUP, kind="full") == len(
            DATA
        )


async def test_a_resume_is_never_answered_by_another_source(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Archives of one slot made by different nodes differ: the rest of a broken refresh may
    only come from the source that sent its start. The client's stream ends in error,
    nothing is promoted, and the next request starts over from byte 0 on the other source."""
    gone, other = await start_upstream(nursery), await start_upstream(nursery)
    other.files[FULL] = archive_bytes(len(DATA), seed=51)  # same name and size, other bytes
    gone.behaviour[FULL] = Behaviour(drop_after=HALF, rate=32 * MiB)
    after_first_get(nursery, gone, Behaviour(status=503))  # gone for good after the drop
    async with tracker_for(tmp_path, gone, other) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.status == 200
        assert wire.closed and len(wire.body) < len(DATA)  # never a complete, spliced 200
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert t.cached() == []
        assert other.gets(FULL) == []  # never asked for the rest
        # A full restart takes the other source's file whole.
        assert await fetch(t.url(FULL)) == (200, sha256(other.files[FULL]), len(DATA))
        [restart] = other.gets(FULL)
        assert "range" not in restart.headers
        await wait_for(lambda: t.cached() == [FULL])
        assert sha256((t.group_dir() / FULL).read_bytes()) == sha256(other.files[FULL])


CHANGED = {
    "etag": (Behaviour(), Behaviour(etag='"another-etag"')),
    "last-modified": (
        Behaviour(etag=None),
        Behaviour(etag=None, last_modified="Sun, 22 Nov 2026 10:00:00 GMT"),
    ),
    "weak-etag-appears": (Behaviour(etag=None), Behaviour(etag='W/"x"')),
}


@pytest.mark.parametrize("sharing", [False, True], ids=["sharing-off", "sharing-on"])
@pytest.mark.parametrize("change", list(CHANGED))
async def test_a_resume_of_another_version_is_refused(
    nursery: trio.Nursery, tmp_path: Path, change: str, sharing: bool
) -> None:
    """The same source answers the resume, but its validators show the file changed (it
    ignores If-Range, as some servers do): the rest is not spliced onto the start."""
    first, then = CHANGED[change]
    up = await start_upstream(nursery)
    up.behaviour[FULL] = attrs.evolve(first, drop_after=HALF, rate=32 * MiB)
    after_first_get(nursery, up, then)
    async with tracker_for(tmp_path, up, cache_share_inflight=sharing) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.status == 200
        assert wire.closed and len(wire.body) < len(DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert t.cached() == []
        assert t.counter("snapshot_tracker_refresh_resumes_total") == 0
        resumes = up.gets(FULL)[1:]
        assert resumes and all(r.headers["range"] == f"bytes={HALF}-" for r in resumes)


async def test_without_validators_a_break_is_not_resumed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """No ETag and no Last-Modified: nothing could prove a 206 continues the same file."""
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=HALF, rate=32 * MiB, etag=None, last_modified=None)
    async with tracker_for(tmp_path, up) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.closed and len(wire.body) < len(DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert len(up.gets(FULL)) == 1  # not even asked
        assert t.cached() == []


async def test_without_an_etag_the_same_last_modified_resumes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=HALF, rate=32 * MiB, etag=None)
    after_first_get(nursery, up, Behaviour(etag=None))
    async with tracker_for(tmp_path, up) as t:
        assert await fetch(t.url(FULL)) == (200, sha256(DATA), len(DATA))
        _, second = up.gets(FULL)
        assert second.headers["if-range"] == UPSTREAM_LAST_MODIFIED
        await wait_for(lambda: t.cached() == [FULL])
        assert sha256((t.group_dir() / FULL).read_bytes()) == sha256(DATA)


async def test_a_resume_answer_that_is_not_the_rest_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=HALF, rate=32 * MiB)
    # Every later answer carries a second, contradicting content-range.
    after_first_get(nursery, up, Behaviour(headers=[("content-range", "bytes 0-1/2")]))
    async with tracker_for(tmp_path, up) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.status == 200
        assert wire.closed and len(wire.body) < len(DATA)  # never a short 200
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert t.cached() == []
        assert len(up.gets(FULL)) == 1 + len(QUICK)  # three attempts, then it gave up
        assert t.counter("snapshot_tracker_refresh_resumes_total") == 0


async def test_a_resume_that_breaks_again_without_progress_gives_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(short_by=1)  # every answer ends one byte short
    async with tracker_for(tmp_path, up) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.closed and len(wire.body) < len(DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert len(up.gets(FULL)) == 1 + len(QUICK)
        assert t.cached() == []


async def test_an_uncached_stream_is_not_resumed(nursery: trio.Nursery, tmp_path: Path) -> None:
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=HALF)
    async with tracker_for(tmp_path, up) as t:
        # A Range request is proxied uncached (docs/http-api.md#archive-answers): a break ends it,
        # no resume.
        wire = await raw_request(
            t.base, f"/v1/{FULL}?group={GROUP}", headers=[("range", "bytes=0-")]
        )
        assert wire.status == 206
        assert wire.closed and len(wire.body) <= HALF
        # One request of the client's range (the background refresh that a Range request
        # on the best file starts, README.md#clients, asks for the whole file and its own rest).
        assert [g.headers.get("range") for g in up.gets(FULL)].count("bytes=0-") == 1


@pytest.mark.parametrize("reload", ["credentials-changed", "source-removed", "group-removed"])
async def test_a_resume_after_a_reload_asks_with_the_config_of_now(
    nursery: trio.Nursery, tmp_path: Path, reload: str
) -> None:
    """A refresh outlives the reload that changed its group's credentials or removed its
    source: the rest is asked with the credentials of now, or not at all (never with the
    credentials a reload took away, never from a source the config no longer has)."""
    up = await start_upstream(nursery)
    halfway = trio.Event()  # the upstream waits there while the config is reloaded
    up.behaviour[FULL] = Behaviour(pause_at=HALF // 2, resume=halfway, drop_after=HALF)
    after_first_get(nursery, up, Behaviour())
    async with tracker_for(tmp_path, up) as t:
        [group] = t.config.target_groups
        assert group.bearer_auth is not None
        old = f"Bearer {group.bearer_auth.token}"
        async with trio.open_nursery() as client:
            got: list[tuple[int, bytes, bool]] = []

            async def read() -> None:
                wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
                got.append((wire.status, wire.body, wire.closed))

            client.start_soon(read)
            await wait_for(lambda: sent(up) >= HALF // 2)
            assert up.gets(FULL)[0].headers["authorization"] == old
            if reload == "credentials-changed":
                rotated = attrs.evolve(group, bearer_auth=BearerAuth(token="rotated"))
                t.config = attrs.evolve(t.config, target_groups=(rotated,))
            elif reload == "source-removed":
                t.index.drop(TargetKey(GROUP, up.base))  # what the reload's scrape does
            else:
                t.config = attrs.evolve(t.config, target_groups=())
            halfway.set()
        [(status, body, closed)] = got
        asked = up.gets(FULL)[1:]
        if reload == "credentials-changed":
            assert (status, sha256(body)) == (200, sha256(DATA))
            assert asked and all(r.headers["range"] == f"bytes={HALF}-" for r in asked)
            assert {r.headers.get("authorization") for r in asked} == {"Bearer rotated"}
        else:
            assert asked == []  # never asked again
            assert status == 200 and closed and len(body) < len(DATA)
            await wait_for(lambda: t.outcome("refresh_failed") == 1)
            assert t.cached() == []


async def test_a_source_that_cuts_every_answer_after_a_few_kib_is_not_resumed_without_end(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Each answer, resumes too, ends after 16 KiB: the breaks share their attempts (a read
    must move FRESH_AFTER bytes to earn its own), so the refresh fails after a few resumes
    instead of crawling through the file 16 KiB a resume, and the source's failure is
    measured (docs/ranking.md, "Failed transfers")."""
    up = await start_upstream(nursery)
    up.behaviour[FULL] = Behaviour(drop_after=16 * 1024)
    async with tracker_for(tmp_path, up) as t:
        wire = await raw_request(t.base, f"/v1/{FULL}?group={GROUP}")
        assert wire.closed and len(wire.body) < len(DATA)
        await wait_for(lambda: t.outcome("refresh_failed") == 1)
        assert len(up.gets(FULL)) == 1 + len(QUICK)
        assert t.cached() == []
        key = TargetKey(GROUP, up.base)
        assert 0 < t.index.throughput(key) < 16 * 1024, "the cutting source is measured slow"


#: A refresh under a rate cap, scaled down: ``source_limits.max_rate`` at 1 MiB/s and
#: ``FRESH_SECONDS`` at 0.1 s stand for a cap of a few KiB/s and seconds of it.
CAPPED_FULL = full_name(9101)
CAPPED_DATA = archive_bytes(MiB, seed=51)


@pytest.mark.parametrize(
    ("cut", "whole"),
    [(128 * 1024, True), (16 * 1024, False)],
    ids=["breaks after 0.125 s of the cap", "cuts after a few KiB"],
)
async def test_under_a_rate_cap_a_break_after_seconds_of_the_cap_gets_fresh_attempts(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int, whole: bool
) -> None:
    """Our own ``max_rate`` lets a read move only so much before a link that breaks every
    so often breaks it: a read that moved what the cap lets through in FRESH_SECONDS earns
    its break attempts of its own (at a cap of 20 KiB/s, a link breaking every 30 s moved
    600 KiB a read, never FRESH_AFTER, and the honest refresh failed after three breaks). A
    source that cuts every answer after a few KiB still shares its attempts and fails."""
    monkeypatch.setattr(pumps, "FRESH_SECONDS", 0.1)  # 100 KiB at the cap
    up = FakeUpstream(files={CAPPED_FULL: CAPPED_DATA})
    up.behaviour[CAPPED_FULL] = Behaviour(drop_after=cut)  # every answer, resumes too
    await nursery.start(up.run)
    limits = SourceLimits(max_rate=MiB)
    capped = TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=TOKEN), source_limits=limits)
    quick = attrs.evolve(FAST, resume_delays=QUICK)
    async with proxy_tracker(tmp_path / "cache", settings=quick, target_groups=(capped,)) as t:
        advertise(t.index, up.base, [(CAPPED_FULL, up.url(CAPPED_FULL), len(CAPPED_DATA))])
        wire = await raw_request(t.base, f"/v1/{CAPPED_FULL}?group={GROUP}")
        if whole:
            assert (wire.status, sha256(wire.body)) == (200, sha256(CAPPED_DATA))
            await wait_for(lambda: t.outcome("refresh_ok") == 1)
            assert t.cached() == [CAPPED_FULL]
            assert len(up.gets(CAPPED_FULL)) == -(-len(CAPPED_DATA) // cut)  # one per cut
        else:
            assert wire.closed and len(wire.body) < len(CAPPED_DATA)
            await wait_for(lambda: t.outcome("refresh_failed") == 1)
            assert len(up.gets(CAPPED_FULL)) == 1 + len(QUICK)
            assert t.cached() == []
