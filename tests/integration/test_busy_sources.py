"""A source that answers a real GET 503 or 429 (agave's RPC and nginx's ``limit_conn`` at
their connection limit, a rate limiter) is busy, not slow: that request goes to the next
source, and the busy one is asked after the others for a short back-off, never priced as a
failed transfer (docs/ranking.md, "Busy answers"). Priced as one (its one byte over the read
timeout), one busy moment of the fleet's fastest source put it behind every other source
for hours. Real parts: two upstreams on 127.0.0.1, the tracker's own components with its
speed-test loop.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import FAST, GROUP, make_config, running_tracker, wait_for
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.config.schema import Config, Ranking, SpeedTest, TargetGroup
from tracker.ordering.index import Index, TargetKey

KiB = 1024
NAME = full_name(1000)
DATA = archive_bytes(2 * MiB, seed=11)
PROBE = 256 * KiB
#: The other source's speed tests (a second for the probe): the busy one's are faster.
OTHER_PROBE_RATE = 256 * KiB
SETTINGS = attrs.evolve(FAST, read_timeout=0.5, resume_delays=(0.05,))


def _config(cache_dir: Path | None) -> Config:
    config = make_config(cache_dir, first_byte_timeout=0.2)
    group: TargetGroup = config.target_groups[0]
    test = SpeedTest(bytes=PROBE, top=5, interval=600)
    group = attrs.evolve(group, ranking=Ranking(speed_test=test))
    return attrs.evolve(config, target_groups=(group,))


@pytest.mark.parametrize(
    ("status", "retry", "cache"),
    [(503, None, False), (429, "30", False), (503, None, True)],
    ids=["relay, 503", "relay, 429 with Retry-After", "cache, 503"],
)
async def test_a_busy_answer_costs_a_back_off_not_the_sources_rank(
    tmp_path: Path, client: httpx.AsyncClient, status: int, retry: str | None, cache: bool
) -> None:
    said = [("retry-after", retry)] if retry is not None else []
    busy = FakeUpstream(
        files={NAME: DATA}, behaviour={NAME: Behaviour(real_status=status, headers=said)}
    )
    paced = Behaviour(rate=OTHER_PROBE_RATE, unranged_rate=0)
    other = FakeUpstream(files={NAME: DATA}, behaviour={NAME: paced})
    async with (
        serving(busy),
        serving(other),
        running_tracker(
            _config(tmp_path / "cache" if cache else None), other, busy, settings=SETTINGS
        ) as t,
    ):
        key = TargetKey(GROUP, busy.base)

        def order() -> list[str]:
            return [s.key.target for _f, s in t.index.find_file(GROUP, NAME)]

        assert await t.parts.speedtests.round() == 2
        assert order() == [busy.base, other.base]  # the faster speed tests
        before = t.index.throughput(key)
        response = await client.get(t.url(NAME))  # the other source delivers it
        assert response.status_code == 200 and response.content == DATA
        assert [s.headers.get("range") for s in busy.gets(NAME)][1] is None  # a real GET
        # Not priced: its figure is its speed tests' still (the other's rose with its transfer).
        _probed, achieved = t.index.speeds.figures(key, t.index.clock())
        assert achieved == 0
        assert t.index.throughput(key) == pytest.approx(before, rel=0.01)
        # Its back-off: the next stream asks the other source first (a Retry-After is
        # honoured), and the busy one only once it ran out.
        launcher = t.streamer.launcher
        left = launcher.busy.until(key) - t.index.clock()
        assert 0 < left <= (30 if retry else SETTINGS.busy_backoff)
        if retry:
            assert left > SETTINGS.busy_backoff
        asked = len(busy.gets(NAME))
        found = launcher.busy.behind(t.index.find_file(GROUP, NAME), t.index.clock())
        assert [s.key.target for _f, s in found] == [other.base, busy.base]
        if not cache:  # (a cached copy answers the next one from disk)
            response = await client.get(t.url(NAME))
            assert response.status_code == 200 and response.content == DATA
            assert len(busy.gets(NAME)) == asked
        else:
            await wait_for(lambda: NAME in t.cached())


async def test_a_source_busy_after_its_back_off_is_asked_again_and_backs_off_longer(
    client: httpx.AsyncClient,
) -> None:
    """The back-off runs out and the source is asked again; busy again, it waits twice as
    long (a source that answers every real GET 503 costs one quick failover per back-off,
    the back-offs doubling up to ten minutes; from its second it is priced as a source that
    failed the GET), and an answer that serves ends it. Its only
    source busy, the client gets the 502 of every source failing fast. The index's clock
    (the one back-offs run on) is the test's: moved past a back-off, not slept through."""
    skew = [0.0]
    index = Index(clock=lambda: trio.current_time() + skew[0])
    busy = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(real_status=503)})
    async with (
        serving(busy),
        running_tracker(_config(None), busy, settings=SETTINGS, index=index) as t,
    ):
        key, launcher = TargetKey(GROUP, busy.base), t.streamer.launcher
        for backoff in (SETTINGS.busy_backoff, 2 * SETTINGS.busy_backoff):
            response = await client.get(t.url(NAME))
            assert response.status_code == 502 and "503" in response.text
            left = launcher.busy.until(key) - index.clock()
            assert backoff - 1 < left <= backoff
            _probed, achieved = t.index.speeds.figures(key, index.clock())
            if backoff == SETTINGS.busy_backoff:
                assert achieved == 0  # one busy moment: not priced
            else:  # busy again once its back-off ran out: priced as a failed GET
                # a failed GET's figure (1 byte over the read timeout), aged toward the
                # prior while the test runs: about 1 kB/s, far below any source that serves
                assert 0 < achieved < 64 * 1024, achieved
            response = await client.get(t.url(NAME))  # backing off, but its only source
            assert response.status_code == 502
            assert launcher.busy.until(key) - index.clock() <= backoff  # not doubled by it
            skew[0] += backoff  # the back-off ran out
        busy.behaviour[NAME] = Behaviour()  # no longer busy
        response = await client.get(t.url(NAME))
        assert response.status_code == 200 and response.content == DATA
        assert launcher.busy.until(key) == 0  # its back-offs start over
        _probed, achieved = t.index.speeds.figures(key, index.clock())
        assert achieved > 0  # the transfer that served is measured as ever
    assert [s.headers.get("range") for s in busy.gets(NAME)] == [None] * 5


async def test_a_head_answered_busy_backs_the_source_off_but_never_prices_it(
    client: httpx.AsyncClient,
) -> None:
    """A HEAD moves no body: its failure says nothing of a source's throughput
    (docs/ranking.md, "Failed transfers"). Answered busy (503) it backs the source off as a
    GET's busy answer does, but busy again once that ran out, it was priced as a source
    that failed the GET: a few HEADs of clients (the size of an archive asked first) put a
    busy moment of the fleet's fastest source at a few bytes a second."""
    skew = [0.0]
    index = Index(clock=lambda: trio.current_time() + skew[0])
    busy = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(status=503)})
    async with (
        serving(busy),
        running_tracker(_config(None), busy, settings=SETTINGS, index=index) as t,
    ):
        key, launcher = TargetKey(GROUP, busy.base), t.streamer.launcher
        for backoff in (SETTINGS.busy_backoff, 2 * SETTINGS.busy_backoff):
            response = await client.head(t.url(NAME))
            assert response.status_code == 502
            left = launcher.busy.until(key) - index.clock()
            assert backoff - 1 < left <= backoff  # backing off, doubled when busy again
            assert t.index.speeds.measured_at(key) is None  # not priced
            skew[0] += backoff  # the back-off ran out
    assert [s.method for s in busy.seen if s.target.endswith(NAME)] == ["HEAD", "HEAD"]
