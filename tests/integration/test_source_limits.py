"""``source_limits`` against real upstreams on 127.0.0.1: at most ``max_transfers`` at once
to one source (another source of the file, else a bounded wait, else 503), at most
``max_rate`` bytes a second from it, on the relay, on the spliced refresh and on the speed
tests (a busy source is skipped that round)."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import (
    EARLY,
    FAST,
    GROUP,
    TOKEN,
    TrackerUnderTest,
    advertise,
    advertise_files,
    make_config,
    running_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import UPSTREAM_ETAG, Behaviour, FakeUpstream, serving
from names import full_name

from tracker.config.schema import (
    BearerAuth,
    Egress,
    Ranking,
    SourceLimits,
    SpeedTest,
    TargetGroup,
)
from tracker.ordering.index import TargetKey

FULL = full_name(8000)
DATA = archive_bytes(3 * MiB, seed=40)


def limited(
    cache: Path | None,
    max_transfers: int = 0,
    max_rate: int = 0,
    ranking: Ranking | None = None,
    **overrides: object,
) -> object:
    limits = SourceLimits(max_transfers=max_transfers, max_rate=max_rate)
    auth = BearerAuth(token=TOKEN)
    ranked = ranking or Ranking()
    group = TargetGroup(group=GROUP, bearer_auth=auth, source_limits=limits, ranking=ranked)
    return make_config(cache, target_groups=(group,), **overrides)


PROBED = Ranking(speed_test=SpeedTest(bytes=MiB, top=5, interval=600))


async def test_a_busy_source_gives_way_to_another_then_503(tmp_path: Path) -> None:
    one = FakeUpstream(files={FULL: DATA})
    two = FakeUpstream(files={FULL: DATA}, host="127.0.0.2")
    for up in (one, two):
        up.behaviour[FULL] = Behaviour(pause_at=MiB)
    settings = attrs.evolve(FAST, busy_wait=0.4)
    async with (
        serving(one),
        serving(two),
        running_tracker(limited(None, 1), settings=settings) as t,
    ):  # type: ignore[arg-type]
        advertise_files(t.index, one, {FULL: DATA})
        advertise(t.index, two.base, [(FULL, two.url(FULL), len(DATA))])
        bodies: list[bytes] = []
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):

            async def fetch() -> None:
                bodies.append((await client.get(t.url(FULL))).content)

            nursery.start_soon(fetch)
            await wait_for(lambda: len(one.gets()) + len(two.gets()) == 1)
            nursery.start_soon(fetch)
            await wait_for(lambda: len(one.gets()) == 1 and len(two.gets()) == 1)
            began = time.monotonic()
            third = await client.get(t.url(FULL))  # both sources busy: a bounded wait, then 503
            assert third.status_code == 503
            assert "busy" in third.text and "\n" not in third.text.strip()
            assert third.headers["retry-after"] == "5"  # neither source's speed is known
            assert time.monotonic() - began >= 0.3  # it waited for a slot
            assert len(one.gets()) == 1 and len(two.gets()) == 1  # never two at once
            one.behaviour[FULL].resume.set()
            two.behaviour[FULL].resume.set()
        assert [sha256(b) for b in bodies] == [sha256(DATA)] * 2


async def test_the_slot_is_the_origin_that_serves_after_a_redirect() -> None:
    # A's archive URL answers 302 to B's copy: a request sent to A takes B's slot once it is
    # redirected there (and gives A's back), so B never serves two at once.
    b = FakeUpstream(files={FULL: DATA}, host="127.0.0.2")
    b.behaviour[FULL] = Behaviour(pause_at=MiB)
    a = FakeUpstream()
    loopback = Egress(allow=("127.0.0.0/8",))  # the redirect leaves A's origin
    config, settings = limited(None, 1, egress=loopback), attrs.evolve(FAST, busy_wait=0.3)
    async with serving(a), serving(b), running_tracker(config, settings=settings) as t:  # type: ignore[arg-type]
        a.behaviour[FULL] = Behaviour(redirect_to=b.url(FULL))
        advertise(t.index, a.base, [(FULL, a.url(FULL), len(DATA))])
        advertise(t.index, b.base, [(FULL, b.url(FULL), len(DATA))])
        statuses: list[int] = []
        ranged = {"range": f"bytes=0-{2 * MiB - 1}"}
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):

            async def fetch() -> None:
                statuses.append((await client.get(t.url(FULL), headers=ranged)).status_code)

            for _ in range(4):
                nursery.start_soon(fetch)
            # Until three were turned away, or (the bug) B serves a second one.
            await wait_for(lambda: len(statuses) == 3 or b.answering > 1, timeout=15)
            assert b.most_at_once == 1
            assert len(a.gets()) >= 1  # A was asked, and answered the redirect
            b.behaviour[FULL].resume.set()
        assert b.most_at_once == 1
        assert sorted(statuses) == [206, 503, 503, 503]


async def test_redirects_across_two_origins_do_not_wait_for_each_other() -> None:
    # X on A redirects to B, Y on B redirects to A, one slot each. A request that kept A's
    # slot while it waited for B's, beside one that kept B's while it waited for A's, would
    # wait for ever (here: until the queue's bound, then 503 both); each hop gives the
    # redirecting origin's slot back, so both are served.
    x, y = sorted(SIX)[:2]
    a = FakeUpstream(files={y: SIX[y]})
    b = FakeUpstream(files={x: SIX[x]}, host="127.0.0.2")
    settings = attrs.evolve(FAST, busy_wait=3.0)
    config = limited(None, 1, egress=Egress(allow=("127.0.0.0/8",)))
    async with serving(a), serving(b), running_tracker(config, settings=settings) as t:  # type: ignore[arg-type]
        # Slow redirects: both requests hold their first origin's slot at once.
        a.behaviour[x] = Behaviour(redirect_to=b.url(x), delay=0.3)
        b.behaviour[y] = Behaviour(redirect_to=a.url(y), delay=0.3)
        advertise(t.index, a.base, [(x, a.url(x), len(SIX[x]))])
        advertise(t.index, b.base, [(y, b.url(y), len(SIX[y]))])
        got: dict[str, httpx.Response] = {}
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):

            async def fetch(name: str) -> None:
                got[name] = await client.get(t.url(name), headers=RANGE)

            nursery.start_soon(fetch, x)
            nursery.start_soon(fetch, y)
        assert {name: r.status_code for name, r in got.items()} == {x: 206, y: 206}
        assert got[x].content == SIX[x] and got[y].content == SIX[y]
        assert a.most_at_once == 1 and b.most_at_once == 1


async def test_a_refresh_holds_the_slot_of_the_origin_it_was_redirected_to(tmp_path: Path) -> None:
    b = FakeUpstream(files={FULL: DATA}, host="127.0.0.2")
    b.behaviour[FULL] = Behaviour(pause_at=MiB)
    a = FakeUpstream()
    loopback = Egress(allow=("127.0.0.0/8",))
    config = limited(tmp_path / "cache", 1, egress=loopback)
    settings = attrs.evolve(FAST, busy_wait=0.3)
    async with serving(a), serving(b), running_tracker(config, settings=settings) as t:  # type: ignore[arg-type]
        a.behaviour[FULL] = Behaviour(redirect_to=b.url(FULL))
        advertise(t.index, a.base, [(FULL, a.url(FULL), len(DATA))])
        advertise(t.index, b.base, [(FULL, b.url(FULL), len(DATA))])
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):
            bodies: list[bytes] = []

            async def fetch() -> None:
                bodies.append((await client.get(t.url(FULL))).content)

            nursery.start_soon(fetch)  # the refresh into the cache, from B (maybe through A)
            await wait_for(lambda: b.answering == 1)
            # Bytes the refresh has not written yet: a relay, which ends at B either way.
            tail = await client.get(t.url(FULL), headers={"range": f"bytes={2 * MiB}-"})
            assert tail.status_code == 503 and tail.headers["retry-after"]
            assert b.most_at_once == 1
            b.behaviour[FULL].resume.set()
        assert [sha256(x) for x in bodies] == [sha256(DATA)]
        await wait_for(lambda: FULL in t.cached())


async def test_a_speed_test_redirected_to_a_busy_origin_is_skipped() -> None:
    b = FakeUpstream(files={FULL: DATA}, host="127.0.0.2")
    b.behaviour[FULL] = Behaviour(pause_at=MiB)
    a = FakeUpstream()
    config = limited(None, 1, ranking=PROBED, egress=Egress(allow=("127.0.0.0/8",)))
    async with serving(a), serving(b), running_tracker(config) as t:  # type: ignore[arg-type]
        a.behaviour[FULL] = Behaviour(redirect_to=b.url(FULL))
        advertise(t.index, a.base, [(FULL, a.url(FULL), len(DATA))])
        advertise(t.index, b.base, [(FULL, b.url(FULL), len(DATA))])
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):
            bodies: list[bytes] = []

            async def fetch() -> None:
                bodies.append((await client.get(t.url(FULL))).content)

            nursery.start_soon(fetch)
            await wait_for(lambda: b.answering == 1)  # a proxied transfer holds B's slot
            assert await t.parts.speedtests.round() == 0  # A's read would end at B: skipped
            assert b.most_at_once == 1
            b.behaviour[FULL].resume.set()
        assert [sha256(x) for x in bodies] == [sha256(DATA)]


async def test_max_rate_caps_a_relay_and_a_spliced_refresh(tmp_path: Path) -> None:
    rate = MiB  # 3 MiB at 1 MiB/s with a quarter second's burst: about 2.75 s
    up = FakeUpstream(files={FULL: DATA})
    for cache in (None, tmp_path / "cache"):
        async with serving(up), running_tracker(limited(cache, max_rate=rate), up) as t:  # type: ignore[arg-type]
            async with httpx.AsyncClient(verify=client_tls(), timeout=30) as client:
                began = time.monotonic()
                response = await client.get(t.url(FULL))
                took = time.monotonic() - began
            assert sha256(response.content) == sha256(DATA)
            assert took >= 1.5, (cache, took)
            if cache is not None:
                await wait_for(lambda: FULL in t.cached())


async def test_no_cap_is_not_slowed(tmp_path: Path) -> None:
    up = FakeUpstream(files={FULL: DATA})
    config = limited(tmp_path / "cache")
    async with (
        serving(up),
        running_tracker(config, up) as t,  # type: ignore[arg-type]
        httpx.AsyncClient(verify=client_tls(), timeout=30) as client,
    ):
        began = time.monotonic()
        response = await client.get(t.url(FULL))
        assert sha256(response.content) == sha256(DATA)
        # paced, 3 MiB would take seconds at any cap a test could set; unpaced, a blink
        assert time.monotonic() - began < 10


async def test_a_speed_test_skips_a_busy_source_and_measures_it_when_a_slot_is_free() -> None:
    up = FakeUpstream(files={FULL: DATA}, behaviour={FULL: Behaviour(pause_at=MiB)})
    config = limited(None, 1, ranking=PROBED)
    settings = attrs.evolve(FAST, busy_wait=30.0)  # what a round waiting for the slot takes
    async with (
        serving(up),
        running_tracker(config, up, settings=settings) as t,  # type: ignore[arg-type]
    ):
        tests = t.parts.speedtests
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):
            bodies: list[bytes] = []

            async def fetch() -> None:
                bodies.append((await client.get(t.url(FULL))).content)

            nursery.start_soon(fetch)
            await wait_for(lambda: up.answering == 1)  # a proxied transfer holds the slot
            began = time.monotonic()
            assert await tests.round() == 0  # skipped, not waited for
            assert time.monotonic() - began < 10
            assert len(up.gets()) == 1 and up.most_at_once == 1
            [_due] = tests.due(t.config.target_groups[0])  # still due: tried again next round
            t.config = limited(None, 2, ranking=PROBED)  # type: ignore[assignment]
            assert await tests.round() == 1  # a free slot now: measured beside the transfer
            assert up.most_at_once == 2
            assert up.gets()[1].headers["range"] == f"bytes=0-{MiB - 1}"
            up.behaviour[FULL].resume.set()
        assert [sha256(b) for b in bodies] == [sha256(DATA)]


async def test_a_speed_test_is_paced_at_max_rate() -> None:
    up = FakeUpstream(files={FULL: DATA})
    rate = MiB  # 3 MiB at 1 MiB/s with a quarter second's burst: about 2.75 s
    ranking = Ranking(speed_test=SpeedTest(bytes=len(DATA), top=1, interval=600))
    async with serving(up), running_tracker(limited(None, max_rate=rate, ranking=ranking), up) as t:  # type: ignore[arg-type]
        began = time.monotonic()
        assert await t.parts.speedtests.round() == 1
        assert time.monotonic() - began >= 1.5
        [seen] = up.gets()
        assert seen.body_sent == len(DATA)


SIX = {full_name(8100 + i): archive_bytes(2 * MiB, seed=60 + i) for i in range(6)}
RANGE = {"range": f"bytes=0-{2 * MiB - 1}"}  # no early head: the longer queue wait


def queue_count(t: TrackerUnderTest, outcome: str) -> float:
    return t.counter("snapshot_tracker_source_queue_total", outcome=outcome)


async def test_requests_past_max_transfers_wait_in_a_bounded_queue() -> None:
    # Six clients want six archives of one source with max_transfers 2: two run, four wait
    # in its queue (its bound), a seventh is turned away at once with Retry-After; a slot
    # that frees goes to a request that waits.
    up = FakeUpstream(files=dict(SIX), behaviour={n: Behaviour(pause_at=MiB) for n in SIX})
    settings = attrs.evolve(FAST, busy_wait=30.0, busy_queue=4)
    async with serving(up), running_tracker(limited(None, 2), settings=settings) as t:  # type: ignore[arg-type]
        advertise_files(t.index, up, SIX)
        statuses: dict[str, int] = {}
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=40) as client,
            trio.open_nursery() as nursery,
        ):

            async def fetch(name: str) -> None:
                response = await client.get(t.url(name), headers=RANGE)
                assert response.content == SIX[name][: 2 * MiB]
                statuses[name] = response.status_code

            for name in SIX:
                nursery.start_soon(fetch, name)
            waiting = "snapshot_tracker_source_queue_waiting"
            await wait_for(lambda: up.answering == 2 and t.counter(waiting) == 4)
            seventh = await client.get(t.url(next(iter(SIX))), headers=RANGE)
            assert seventh.status_code == 503 and "4 requests wait already" in seventh.text
            assert seventh.headers["retry-after"] == "5"
            assert queue_count(t, "full") == 1
            first = up.gets()[0].target.rsplit("/", 1)[-1]
            up.behaviour[first].resume.set()  # one transfer ends: a waiting request goes on
            await wait_for(lambda: queue_count(t, "served") == 1 and up.answering == 2)
            assert t.counter(waiting) == 3 and up.most_at_once == 2
            for how in up.behaviour.values():
                how.resume.set()
        assert statuses == dict.fromkeys(SIX, 206)
        assert up.most_at_once == 2 and len(up.gets()) == 6
        assert queue_count(t, "served") == 4 and queue_count(t, "timeout") == 0


@pytest.mark.parametrize("plain", [False, True], ids=["range", "plain"])
async def test_a_request_waits_in_the_queue_at_most_busy_wait_then_503_with_retry_after(
    plain: bool,
) -> None:
    # Longer than the early head's 0.5 s: a plain GET still gets its 503, not a 200 head.
    name = next(iter(SIX))
    up = FakeUpstream(files={name: SIX[name]}, behaviour={name: Behaviour(pause_at=MiB)})
    settings = attrs.evolve(EARLY, busy_wait=1.0)
    async with serving(up), running_tracker(limited(None, 1), settings=settings) as t:  # type: ignore[arg-type]
        advertise_files(t.index, up, {name: SIX[name]})
        # The source's measured speed (1 MiB/s): the running 2 MiB transfer ends in ~2 s.
        t.index.record_transfer(TargetKey(GROUP, up.base), 8 * MiB, 8.0)
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=20) as client,
            trio.open_nursery() as nursery,
        ):

            async def hold() -> None:
                await client.get(t.url(name), headers=RANGE)

            nursery.start_soon(hold)
            await wait_for(lambda: up.answering == 1)
            began = time.monotonic()
            busy = await client.get(t.url(name), headers={} if plain else RANGE)
            assert busy.status_code == 503 and "busy" in busy.text
            assert time.monotonic() - began >= 1.0  # it waited in the queue
            assert busy.headers["retry-after"] in ("1", "2")  # when the running one ends
            assert queue_count(t, "timeout") == 1
            up.behaviour[name].resume.set()
        assert len(up.gets()) == 1


@pytest.mark.parametrize("cached", [False, True], ids=["relayed", "refreshed"])
async def test_a_plain_get_waits_in_the_queue_with_no_early_head(
    tmp_path: Path, cached: bool
) -> None:
    # A plain GET of a file of known size would get an early head after 0.5 s; while it
    # waits in a source's queue it gets none: the head of the source once a slot frees (with
    # the source's validators), or a 503 with Retry-After, never a 200 whose body breaks.
    held, best = sorted(SIX)[0], sorted(SIX)[-1]  # another archive holds the one slot
    files = {held: SIX[held], best: SIX[best]}
    settings = attrs.evolve(EARLY, busy_wait=30.0)
    config = limited(tmp_path / "cache" if cached else None, 1)
    up = FakeUpstream(files=files, behaviour={held: Behaviour(pause_at=MiB)})
    async with serving(up), running_tracker(config, settings=settings) as t:  # type: ignore[arg-type]
        advertise_files(t.index, up, files)
        answers: dict[str, httpx.Response] = {}
        async with (
            httpx.AsyncClient(verify=client_tls(), timeout=40) as client,
            trio.open_nursery() as nursery,
        ):

            async def fetch(name: str, headers: dict[str, str]) -> None:
                answers[name] = await client.get(t.url(name), headers=headers)

            nursery.start_soon(fetch, held, RANGE)
            await wait_for(lambda: up.answering == 1)
            nursery.start_soon(fetch, best, {})
            await wait_for(lambda: t.counter("snapshot_tracker_source_queue_waiting") == 1)
            # An early head would be due meanwhile (what must not happen has no event).
            await trio.sleep(t.streamer.settings.early_head_after * 2)
            assert best not in answers
            up.behaviour[held].resume.set()
        plain = answers[best]
        assert plain.status_code == 200 and plain.content == SIX[best]
        assert plain.headers["etag"] == UPSTREAM_ETAG  # the source's head, not an early one
        assert queue_count(t, "served") == 1 and up.most_at_once == 1
