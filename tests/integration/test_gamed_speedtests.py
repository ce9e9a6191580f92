"""A source that games the speed tests: it answers their Range reads (``bytes=0-N``) at
loopback speed and cuts or stalls every real transfer before 1 MiB. A transfer that failed
so is measured whatever its size (docs/ranking.md, "Failed transfers"), so one failed
download puts the liar behind an honest source; before, nothing under 1 MiB was measured,
and every client sent to it failed while its probes kept it first. Real parts: two
upstreams on 127.0.0.1, the tracker's own components with its speed-test loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import FAST, GROUP, make_config, running_tracker
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.config.schema import Config, Ranking, SpeedTest, TargetGroup
from tracker.ordering.index import TargetKey

KiB = 1024
NAME = full_name(1000)
DATA = archive_bytes(2 * MiB, seed=7)
PROBE = 256 * KiB
#: What the liar sends of a real transfer before it cuts or stalls it.
CUT = 16 * KiB
#: The honest source's speed tests (a second for the probe); its real transfers are not
#: paced. The liar's failed transfer is priced at CUT over at least the read timeout
#: (32 KiB/s): far below, on a loaded host too.
HONEST_PROBE_RATE = 256 * KiB
SETTINGS = attrs.evolve(FAST, read_timeout=0.5, resume_delays=(0.05,))


def _config(cache_dir: Path | None, **overrides: float) -> Config:
    config = make_config(cache_dir, **overrides)
    group: TargetGroup = config.target_groups[0]
    test = SpeedTest(bytes=PROBE, top=5, interval=600)
    group = attrs.evolve(group, ranking=Ranking(speed_test=test))
    return attrs.evolve(config, target_groups=(group,))


@pytest.mark.parametrize(
    ("how", "cache", "plain"),
    [
        ("cut", False, False),
        ("stall", False, True),
        ("cut", True, False),
    ],
    ids=["spliced relay, cut", "relay through Python, stalled", "cache refresh, cut"],
)
async def test_a_source_failing_real_transfers_loses_its_place_to_an_honest_one(
    tmp_path: Path, client: httpx.AsyncClient, how: str, cache: bool, plain: bool
) -> None:
    lying = Behaviour(real_drop_after=CUT) if how == "cut" else Behaviour(real_pause_at=CUT)
    if cache:  # no validator: a refresh's broken body is not resumed (one cut fails it)
        lying = attrs.evolve(lying, etag=None, last_modified=None)
    liar = FakeUpstream(files={NAME: DATA}, behaviour={NAME: lying})
    # rate for its speed tests, unranged_rate 0: its real transfers at full speed
    paced = Behaviour(rate=HONEST_PROBE_RATE, unranged_rate=0)
    honest = FakeUpstream(files={NAME: DATA}, behaviour={NAME: paced})
    config = _config(tmp_path / "cache" if cache else None)
    async with (
        serving(liar),
        serving(honest),
        running_tracker(config, honest, liar, settings=SETTINGS, plain=plain) as t,
    ):

        def order() -> list[str]:
            return [s.key.target for _f, s in t.index.find_file(GROUP, NAME)]

        assert await t.parts.speedtests.round() == 2
        assert order() == [liar.base, honest.base]  # its speed test was the faster one
        with pytest.raises(httpx.HTTPError):  # the body breaks: never a short 200
            await client.get(t.url(NAME))
        assert [s.headers.get("range") for s in liar.gets(NAME)][1] is None  # a real one
        liar.behaviour[NAME].resume.set()  # a stalled answer may end now
        with trio.move_on_after(5):  # until the failed transfer is measured
            while order()[0] != honest.base:
                await trio.sleep(0.01)
        assert order() == [honest.base, liar.base], "the liar stays first after a failed download"
        now = trio.current_time()
        _probed, achieved = t.index.speeds.figures(TargetKey(GROUP, liar.base), now)
        # CUT over at least the read timeout (and a little of the prior, aged a moment)
        assert 0 < achieved < 2 * CUT / SETTINGS.read_timeout < HONEST_PROBE_RATE
        # The next client is sent to the honest source and gets the whole file.
        response = await client.get(t.url(NAME))
        assert response.status_code == 200 and response.content == DATA
        assert [s.headers.get("range") for s in honest.gets(NAME)] == [f"bytes=0-{PROBE - 1}", None]


@pytest.mark.parametrize(
    ("how", "cache"),
    [("refused", False), ("silent", False), ("refused", True)],
    ids=["relay, real GETs answered 503", "relay, real GETs never answered", "cache, 503"],
)
async def test_a_source_that_never_answers_real_gets_loses_its_place(
    tmp_path: Path, client: httpx.AsyncClient, how: str, cache: bool
) -> None:
    """A source that answers its speed tests fast and refuses (or leaves unanswered) every
    real GET costs one failover, not one on every request for ever: one left unanswered is
    measured by the failure the next source is asked after (docs/ranking.md, "Failed
    transfers"); one answered 503 says the source is busy: it is asked after the others for
    a back-off, its figure untouched, and priced only when busy again after it
    (docs/ranking.md, "Busy answers"; test_busy_sources.py)."""
    refusing = Behaviour(real_status=503) if how == "refused" else Behaviour(real_delay=math.inf)
    liar = FakeUpstream(files={NAME: DATA}, behaviour={NAME: refusing})
    paced = Behaviour(rate=HONEST_PROBE_RATE, unranged_rate=0)
    honest = FakeUpstream(files={NAME: DATA}, behaviour={NAME: paced})
    config = _config(tmp_path / "cache" if cache else None, first_byte_timeout=0.2)
    async with (
        serving(liar),
        serving(honest),
        running_tracker(config, honest, liar, settings=SETTINGS) as t,
    ):

        def order() -> list[str]:
            return [s.key.target for _f, s in t.index.find_file(GROUP, NAME)]

        assert await t.parts.speedtests.round() == 2
        assert order() == [liar.base, honest.base]  # its speed test was the faster one
        response = await client.get(t.url(NAME))  # the honest source delivers it
        assert response.status_code == 200 and response.content == DATA
        assert [s.headers.get("range") for s in liar.gets(NAME)][1] is None  # a real one
        key = TargetKey(GROUP, liar.base)
        _probed, achieved = t.index.speeds.figures(key, t.index.clock())
        if how == "silent":
            assert order() == [honest.base, liar.base], "the liar stays first after failing"
            assert 0 < achieved < HONEST_PROBE_RATE
        else:  # busy: backing off, not priced
            assert t.streamer.launcher.busy.until(key) > t.index.clock()
            assert achieved == 0
        # The next client goes to the honest source first: the liar is not asked again.
        response = await client.get(t.url(NAME))
        assert response.status_code == 200 and response.content == DATA
        assert len(liar.gets(NAME)) == 2
