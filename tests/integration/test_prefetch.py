"""Prefetch (``cache_prefetch``): new best archives enter the cache with no client request.

In-process: a real hypercorn tracker and :class:`FakeUpstream`, the index fed by the test, and
a :class:`Prefetcher` whose ``check`` the test calls as the scrape loop's round hook would.
Through the daemon: ``snapshot-tracker serve`` scraping a sidecar fills its cache by itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_process import start_serve
from helpers_proxy import GROUP, TOKEN, TrackerUnderTest, advertise, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, sidecar_listing
from names import full_name, incremental_name

from tracker.config.schema import BearerAuth, TargetGroup
from tracker.core.snapshots import TargetKey
from tracker.proxy.prefetch import Prefetcher

FULL = full_name(10000)
INCR = incremental_name(10000, 10100)
FILES = {FULL: archive_bytes(4 * MiB, seed=60), INCR: archive_bytes(1 * MiB, seed=61)}


#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = FILES


def prefetcher(t: TrackerUnderTest) -> Prefetcher:
    return Prefetcher(lambda: t.config, t.index, t.streamer.prefetch, t.transfers)


async def test_prefetch_fills_the_cache_with_no_client_request(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with proxy_tracker(tmp_path / "cache", upstream, cache_prefetch=True) as t:
        assert prefetcher(t).check() == 2
        await wait_for(lambda: t.cached() == sorted(FILES))
        await wait_for(lambda: t.outcome("refresh_ok") == 2)
        for name, data in FILES.items():
            assert sha256((t.group_dir() / name).read_bytes()) == sha256(data)
            assert len(upstream.gets(name)) == 1
            assert "range" not in upstream.gets(name)[0].headers
        async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:
            hit = await client.get(t.url(FULL))
        assert sha256(hit.content) == sha256(FILES[FULL])
        assert t.outcome("cache_hit") == 1
        assert len(upstream.gets()) == 2


async def test_prefetch_is_off_by_default(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with proxy_tracker(tmp_path / "cache", upstream) as t:
        p = prefetcher(t)
        assert p.check() == 0  # nothing was started: nothing can happen later either
        assert p.statistics() == (0, 0)
        assert upstream.seen == []
        assert t.cached() == []


@asynccontextmanager
async def one_running_one_waiting(
    upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[tuple[TrackerUnderTest, Prefetcher]]:
    """Two groups' best fulls prefetched one at a time, the first paused half way, the
    second waiting for the slot; the incremental in a slot of its own, paused half way."""
    for name, data in FILES.items():
        upstream.behaviour[name] = Behaviour(pause_at=len(data) // 2)
    groups = (TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=TOKEN)), TargetGroup("t"))
    async with proxy_tracker(
        tmp_path / "cache",
        upstream,
        cache_prefetch=True,
        cache_prefetch_concurrency=1,
        target_groups=groups,
    ) as t:
        other = [(FULL, upstream.url(FULL), len(FILES[FULL]))]
        advertise(t.index, f"{upstream.base}/other", other, group="t")
        p = prefetcher(t)
        assert p.check() == 3
        await wait_for(lambda: (len(upstream.gets(FULL)), len(upstream.gets(INCR))) == (1, 1))
        await wait_for(lambda: p.statistics() == (2, 1))  # the second full waits for its slot
        yield t, p


async def test_prefetch_is_bounded_and_never_twice_the_same_file(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with one_running_one_waiting(upstream, tmp_path) as (t, p):
        assert p.check() == 0  # a round later: nothing new, nothing twice
        assert len(upstream.gets(FULL)) == 1  # one full at a time
        upstream.behaviour[FULL].resume.set()
        await wait_for(lambda: len(upstream.gets(FULL)) == 2)
        upstream.behaviour[INCR].resume.set()
        await wait_for(lambda: t.cached() == sorted(FILES))
        await wait_for(lambda: p.statistics() == (0, 0))
        assert p.check() == 0
        assert (len(upstream.gets(FULL)), len(upstream.gets(INCR))) == (2, 1)


@asynccontextmanager
async def full_prefetched_and_paused(
    upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[tuple[TrackerUnderTest, Prefetcher]]:
    """The full alone advertised, its prefetch started (one slot) and paused at 1 MiB."""
    upstream.behaviour[FULL] = Behaviour(pause_at=MiB)
    async with proxy_tracker(
        tmp_path / "cache", cache_prefetch=True, cache_prefetch_concurrency=1
    ) as t:
        advertise(t.index, upstream.base, [(FULL, upstream.url(FULL), len(FILES[FULL]))])
        p = prefetcher(t)
        assert p.check() == 1
        await wait_for(lambda: upstream.gets(FULL) != [] and upstream.gets(FULL)[0].body_sent > 0)
        yield t, p


async def test_a_new_incremental_never_waits_behind_a_full(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """One slot: the incremental (a new one every minute or two) waited for the full's
    prefetch (a 100 GB one: 20 minutes) to end. Fulls and incrementals have slots of their
    own."""
    async with full_prefetched_and_paused(upstream, tmp_path) as (t, p):
        # a round later, the incremental on it
        listed = [(name, upstream.url(name), len(data)) for name, data in FILES.items()]
        advertise(t.index, upstream.base, listed)
        assert p.check() == 1
        await wait_for(lambda: INCR in t.cached())  # while the full is paused
        assert FULL not in t.cached()
        upstream.behaviour[FULL].resume.set()
        await wait_for(lambda: t.cached() == sorted(FILES))


async def test_a_prefetch_no_longer_the_best_is_stopped_and_holds_no_slot(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The sources move on to a newer full while the older one is prefetched: it went on to
    its end only to be thrown away, and the new best waited for its slot all that time."""
    newer = full_name(20000)
    upstream.files[newer] = archive_bytes(2 * MiB, seed=62)
    async with full_prefetched_and_paused(upstream, tmp_path) as (t, p):
        listed = [(name, upstream.url(name), len(upstream.files[name])) for name in (FULL, newer)]
        advertise(t.index, upstream.base, listed)
        assert p.check() == 1
        await wait_for(lambda: t.cached() == [newer])  # FULL is still paused
        assert sum(s.body_sent for s in upstream.gets(FULL)) < len(FILES[FULL])
        assert t.outcome("refresh_stale") == 0


async def test_a_reload_turning_prefetch_off_starts_none_that_waited(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A prefetch waiting for its slot when a reload turns ``cache_prefetch`` off: it
    downloaded the whole archive all the same once the slot came. It starts nothing."""
    import attrs

    async with one_running_one_waiting(upstream, tmp_path) as (t, p):
        t.config = attrs.evolve(t.config, cache_prefetch=False)  # the reload
        upstream.behaviour[FULL].resume.set()
        await wait_for(lambda: p.statistics() == (1, 0))  # the second had its slot: ended
        assert len(upstream.gets(FULL)) == 1
        upstream.behaviour[INCR].resume.set()
        await wait_for(lambda: p.statistics() == (0, 0))


async def test_a_new_best_full_is_prefetched_and_replaces_the_old_one(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with proxy_tracker(tmp_path / "cache", upstream, cache_prefetch=True) as t:
        p = prefetcher(t)
        p.check()
        await wait_for(lambda: t.cached() == sorted(FILES))
        newer = full_name(20000)
        upstream.files[newer] = archive_bytes(2 * MiB, seed=62)
        advertise(t.index, f"{upstream.base}/new-node", [(newer, upstream.url(newer), 2 * MiB)])
        assert p.check() == 1  # the new best full; its group has no incremental on it yet
        # The old full is evicted; the incremental (another kind) stays until replaced.
        await wait_for(lambda: t.cached() == sorted([newer, INCR]))
        assert len(upstream.gets(newer)) == 1


async def test_clients_join_a_running_prefetch_when_sharing_is_on(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
    sharing = {"cache_prefetch": True, "cache_share_inflight": True}
    async with proxy_tracker(tmp_path / "cache", **sharing) as t:
        advertise(t.index, upstream.base, [(FULL, upstream.url(FULL), len(FILES[FULL]))])
        prefetcher(t).check()
        await wait_for(lambda: upstream.gets(FULL) != [] and upstream.gets(FULL)[0].body_sent > 0)
        got: list[httpx.Response] = []
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
            trio.open_nursery() as nursery,
        ):

            async def get() -> None:
                got.append(await client.get(t.url(FULL)))

            nursery.start_soon(get)
            await wait_for(lambda: t.counter("snapshot_tracker_shared_readers_total") == 1)
            upstream.behaviour[FULL].resume.set()
        [response] = got
        assert sha256(response.content) == sha256(FILES[FULL])
        assert len(upstream.gets(FULL)) == 1
        await wait_for(lambda: t.cached() == [FULL])


async def test_stopping_ends_a_prefetch_nobody_reads(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
    async with proxy_tracker(tmp_path / "cache", cache_prefetch=True) as t:
        advertise(t.index, upstream.base, [(FULL, upstream.url(FULL), len(FILES[FULL]))])
        prefetcher(t).check()
        await wait_for(lambda: any(n.startswith(".tmp-") for n in t.cached()))
        with trio.fail_after(10):  # no grace period (30 s) for a refresh with no reader
            t.transfers.close(30)
            await wait_for(lambda: t.cached() == [])
            await wait_for(lambda: t.outcome("refresh_failed") == 1)  # after the removal


async def test_the_daemon_prefetches_what_it_discovers(tmp_path: Path) -> None:
    sidecar = FakeUpstream(files=dict(FILES), listing=sidecar_listing(FILES))
    settings = {
        "listen": "127.0.0.1:0",
        "internal_listen": "",
        "scrape_interval": "30s",
        "proxy_snapshot_downloads": True,
        "verify_archives": False,  # opaque blobs
        "proxy_snapshot_cache_dir": "cache",
        "cache_prefetch": True,
        "shutdown_grace": "1s",
        "target_groups": [
            {
                "group": GROUP,
                "bearer_auth": {"token": TOKEN},
                "static_targets": {"targets": [""]},
                "ranking": {"speed_test": {"top": 0}},  # upstream requests are counted
            }
        ],
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(sidecar.run)
        settings["target_groups"][0]["static_targets"]["targets"] = [  # type: ignore[index]
            sidecar.base.removeprefix("http://")
        ]
        path = tmp_path / "config.yml"
        path.write_text(json.dumps(settings))  # JSON is YAML
        serve = await start_serve("--config", str(path))
        group_dir = tmp_path / "cache" / GROUP

        def cached() -> list[str]:
            return sorted(p.name for p in group_dir.iterdir()) if group_dir.exists() else []

        await wait_for(lambda: cached() == sorted(FILES), timeout=20)
        for name, data in FILES.items():
            assert sha256((group_dir / name).read_bytes()) == sha256(data)
            [get] = sidecar.gets(name)
            assert get.headers["authorization"] == f"Bearer {TOKEN}"
        assert await serve.stop(timeout=10) == 0
        assert "cache_prefetched" in serve.log
        nursery.cancel_scope.cancel()


async def test_a_prefetch_outlives_a_round_its_file_is_not_listed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The full's only source missed a round (a timeout with ``max_target_failures: 1``, a
    sidecar restarting) while the full was prefetched: the prefetch was stopped and, the
    file listed again a round later, started again from byte 0 (a 100 GB full: 20 minutes
    thrown away for a blip). Only a newer best full stops it."""
    async with full_prefetched_and_paused(upstream, tmp_path) as (t, p):
        t.index.drop(TargetKey(GROUP, upstream.base))  # the round its source missed
        assert p.check() == 0
        advertise(t.index, upstream.base, [(FULL, upstream.url(FULL), len(FILES[FULL]))])
        assert p.check() == 0  # listed again: the same prefetch goes on
        upstream.behaviour[FULL].resume.set()
        await wait_for(lambda: t.cached() == [FULL])
        assert len(upstream.gets(FULL)) == 1
        assert t.outcome("refresh_failed") == 0
