"""Speed tests against real upstreams on 127.0.0.1 (docs/http-api.md#speed-tests).

Two sources of different speeds advertise the same full archive; the tracker's speed-test
loop (as the service builds and starts it) reads the start of it from each and the index
ranks the faster one first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, TOKEN, TrackerUnderTest, make_config, running_tracker, wait_for
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from names import full_name

from tracker.config.schema import BearerAuth, Config, Ranking, SpeedTest, TargetGroup
from tracker.ordering.index import TargetKey

NAME = full_name(1000)
DATA = archive_bytes(4 * MiB, seed=3)
PROBE = MiB


def _config_with(test: SpeedTest) -> Config:
    config = make_config(None)
    group: TargetGroup = config.target_groups[0]
    group = attrs.evolve(group, ranking=Ranking(speed_test=test))
    return attrs.evolve(config, target_groups=(group,))


@pytest.fixture
async def sources() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    slow = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(rate=4 * MiB)})
    async with serving(FakeUpstream(files={NAME: DATA})) as fast, serving(slow):
        yield fast, slow


def _speed(t: TrackerUnderTest, up: FakeUpstream) -> float:
    return t.index.throughput(TargetKey(GROUP, up.base), trio.current_time())


async def test_one_round_measures_each_leading_source_and_ranks_the_faster_first(
    sources: tuple[FakeUpstream, FakeUpstream],
) -> None:
    fast, slow = sources
    # The fast one is as fast as the host: beside a stress run's CPU hogs it read its MiB at
    # 1.4 MB/s, slower than the fixture's 4 MiB/s. At 512 KiB/s the slow one takes 2 s.
    slow.behaviour[NAME] = Behaviour(rate=MiB // 2)
    config = _config_with(SpeedTest(bytes=PROBE, top=5, interval=600))
    async with running_tracker(config, slow, fast) as t:
        assert _speed(t, fast) == _speed(t, slow) == 0.0  # nothing measured yet
        async with trio.open_nursery() as nursery:
            await nursery.start(t.parts.speedtests.run)
            await wait_for(lambda: t.parts.speedtests.rounds >= 1)
            nursery.cancel_scope.cancel()
        assert 0 < _speed(t, slow) < _speed(t, fast)
        # A bounded Range read of the archive, credentials sent to the configured origin.
        for up in (fast, slow):
            [seen] = up.gets(NAME)
            assert seen.headers["range"] == f"bytes=0-{PROBE - 1}"
            assert seen.headers["authorization"] == f"Bearer {TOKEN}"
            assert seen.body_sent == PROBE
        assert [s.key.target for _f, s in t.index.find_file(GROUP, NAME)] == [
            fast.base,
            slow.base,
        ]
        # Measured within the interval: the next round reads nothing again.
        assert await t.parts.speedtests.round() == 0
        assert len(fast.gets(NAME)) == len(slow.gets(NAME)) == 1


async def test_only_the_top_sources_are_read(
    sources: tuple[FakeUpstream, FakeUpstream],
) -> None:
    fast, slow = sources
    config = _config_with(SpeedTest(bytes=PROBE, top=1, interval=600))
    async with running_tracker(config, slow, fast) as t:
        [leader] = t.parts.speedtests.due(t.config.target_groups[0])
        assert await t.parts.speedtests.round() == 1
        other = slow if leader.key.target == fast.base else fast
        assert other.gets(NAME) == []
        assert _speed(t, other) == 0.0


async def test_a_source_ignoring_range_is_read_only_as_far_as_the_probe(
    sources: tuple[FakeUpstream, FakeUpstream],
) -> None:
    fast, _slow = sources
    fast.behaviour[NAME] = Behaviour(ignore_range=True, rate=8 * MiB)
    config = _config_with(SpeedTest(bytes=PROBE, top=1, interval=600))
    async with running_tracker(config, fast) as t:
        assert await t.parts.speedtests.round() == 1
        await wait_for(lambda: fast.gets(NAME)[0].aborted)
        assert fast.gets(NAME)[0].body_sent < len(DATA)
        assert _speed(t, fast) > 0


async def test_a_source_that_holds_its_answer_back_is_not_measured_fast() -> None:
    """The clock starts at the request: a head held back 0.5 s, then 1 MiB at once, is at
    most 2 MiB/s (timed from the head, it would be loopback's hundreds of MB/s)."""
    held = 0.5
    late = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(delay=held)})
    config = _config_with(SpeedTest(bytes=PROBE, top=1, interval=600))
    async with serving(late), running_tracker(config, late) as t:
        assert await t.parts.speedtests.round() == 1
        assert 0 < _speed(t, late) < PROBE / held


async def test_a_source_that_serves_slower_than_it_probes_loses_its_place(
    client: httpx.AsyncClient,
) -> None:
    """``sly`` answers speed tests (a Range read) at loopback speed but real transfers at
    512 KiB/s; ``steady`` serves everything at 1 MiB/s. Probed, sly ranks first; after one
    real transfer from it, steady does, and sly's next fast probe changes nothing. The gaps
    are wide (sly's 1 MiB probe only has to take less than steady's second; its transfer
    is at most about half steady's speed), so a loaded machine does not change the order."""
    data = archive_bytes(MiB + MiB // 4, seed=4)  # a real transfer counts from 1 MiB on
    paced = 16 * 1024  # small chunks: paced evenly
    slowly = Behaviour(unranged_rate=MiB // 2)
    sly = FakeUpstream(files={NAME: data}, behaviour={NAME: slowly}, chunk=paced)
    steady = FakeUpstream(files={NAME: data}, behaviour={NAME: Behaviour(rate=MiB)}, chunk=paced)
    config = _config_with(SpeedTest(bytes=PROBE, top=5, interval=0))
    async with serving(sly), serving(steady), running_tracker(config, steady, sly) as t:

        def order() -> list[str]:
            return [s.key.target for _f, s in t.index.find_file(GROUP, NAME)]

        assert await t.parts.speedtests.round() == 2
        assert order() == [sly.base, steady.base]
        # A real transfer: the proxy asks the best source, sly, for the whole file.
        generation = t.index.generation
        response = await client.get(t.url(NAME))
        assert response.status_code == 200 and response.content == data
        assert [s.headers.get("range") for s in sly.gets(NAME)] == [f"bytes=0-{PROBE - 1}", None]
        await wait_for(lambda: t.index.generation > generation)  # the transfer was recorded
        assert order() == [steady.base, sly.base]
        # Probed again, as fast as before: what it served still outweighs it.
        assert await t.parts.speedtests.round() == 2
        assert len(sly.gets(NAME)) == 3
        assert order() == [steady.base, sly.base]
        probed, achieved = t.index.speeds.figures(TargetKey(GROUP, sly.base), trio.current_time())
        assert achieved < _speed(t, steady) < probed
        assert _speed(t, sly) < _speed(t, steady)


async def test_a_round_running_across_a_reload_reads_only_what_the_config_lists_now() -> None:
    """A round's reads come one after another (each up to 20 s): while the first is held
    back, a reload rotates the group's token and removes that source and another one. The
    source the reload kept is asked with the new token, the one it removed not at all, and
    the read that was running is not recorded for a source no longer listed
    (docs/configuration.md: credentials go to the group's configured sources only)."""
    ups = [
        FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(pause_at=0)}) for _ in range(3)
    ]
    config = _config_with(SpeedTest(bytes=PROBE, top=5, interval=600))
    async with AsyncExitStack() as stack:
        for up in ups:
            await stack.enter_async_context(serving(up))
        t = await stack.enter_async_context(running_tracker(config, *ups))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.parts.speedtests.round)
            await wait_for(lambda: any(up.gets(NAME) for up in ups))
            [running] = [up for up in ups if up.gets(NAME)]
            kept, removed = [up for up in ups if up is not running]
            # The reload: the new token in force, the removed sources out of the index (as
            # the scrape round the reload starts drops them).
            rotated = attrs.evolve(t.config.target_groups[0], bearer_auth=BearerAuth("rotated"))
            t.config = attrs.evolve(t.config, target_groups=(rotated,))
            for up in (running, removed):
                t.index.drop(TargetKey(GROUP, up.base))
            for up in ups:
                up.behaviour[NAME].resume.set()
        assert removed.gets(NAME) == []
        [seen] = kept.gets(NAME)
        assert seen.headers["authorization"] == "Bearer rotated"
        assert _speed(t, kept) > 0
        assert running.gets(NAME)[0].headers["authorization"] == f"Bearer {TOKEN}"
        assert _speed(t, running) == 0.0  # read to its end, but no longer listed


async def test_the_service_measures_its_sources_and_targets_show_it(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    files = {NAME: DATA}
    # The fast one's speed tests are as fast as the host: beside the suite's other workers it
    # read 1 MiB at 1.2 MB/s, below a 4 MiB/s slow one. At 256 KiB/s the slow one takes 2 s
    # for its 512 KiB. Its real transfer goes at 4 MiB/s, its own pace: one at loopback
    # speed goes at the client's pace, which says nothing of the source and is not recorded
    # (docs/ranking.md, "Failed transfers").
    real = Behaviour(unranged_rate=4 * MiB)
    fast = FakeUpstream(files=dict(files), listing=sidecar_listing(files), behaviour={NAME: real})
    slow = FakeUpstream(
        files=dict(files),
        listing=sidecar_listing(files),
        behaviour={NAME: Behaviour(rate=MiB // 4)},
    )
    for up in (fast, slow):
        await nursery.start(up.run)
    group = {
        "group": GROUP,
        "static_targets": {"targets": [fast.base[7:], slow.base[7:]]},
        "ranking": {"speed_test": {"bytes": "512KiB", "top": 2}},
    }
    settings = {
        "scrape_interval": "200ms",
        "target_groups": [group],
        "proxy_snapshot_downloads": True,
        "verify_archives": False,  # opaque bytes, not an archive
    }
    started = time.time()
    [base] = await start_tracker(nursery, write_config(tmp_path, settings))

    async def measured() -> bool:
        targets = (await client.get(f"{base}/v1/targets")).json()
        return all("throughput_bps" in t for t in targets) and len(targets) == 2

    await wait_until(measured)
    targets = (await client.get(f"{base}/v1/targets")).json()
    speed = {t["target"]: t["throughput_bps"] for t in targets}
    assert speed[fast.base] > speed[slow.base] > 0
    # When: a figure ages toward the group's assumed_throughput, and an old one read as
    # measured (nothing said how old it was)
    for t in targets:
        taken = datetime.fromisoformat(t["measured_at"]).timestamp()
        assert started - 1 <= taken <= time.time() + 1, t
    # Only speed tests so far: the probed figure is the throughput, nothing achieved.
    assert all(t["probed_bps"] > 0 and "achieved_bps" not in t for t in targets)
    listed = (await client.get(f"{base}/v1/snapshots")).json()
    [first, second] = [s["throughput_bps"] for s in listed]
    assert first > second > 0  # the faster source of the same full ranks first
    # A real transfer (proxied, from the faster source): its achieved figure is shown too.
    assert (await client.get(f"{base}/v1/{GROUP}/{NAME}")).content == DATA

    async def achieved() -> bool:
        targets = (await client.get(f"{base}/v1/targets")).json()
        return any(t.get("achieved_bps", 0) > 0 for t in targets)

    await wait_until(achieved)
    [entry] = [t for t in (await client.get(f"{base}/v1/targets")).json() if "achieved_bps" in t]
    assert entry["target"] == fast.base and entry["probed_bps"] > 0
