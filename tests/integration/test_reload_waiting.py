"""A reload while a request waits to ask a source: in the source's queue
(``source_limits.max_transfers``) or for its turn in a hedge (``first_byte_timeout``). What
it then sends is the config's of the moment it asks, not of the moment the client came: the
rotated token, never the old one, and nothing for a group the reload removed. Real tracker
on 127.0.0.1, real upstreams (tests/helpers_upstream.py)."""

from __future__ import annotations

import attrs
import httpx
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import (
    FAST,
    GROUP,
    TOKEN,
    TrackerUnderTest,
    advertise_files,
    make_config,
    running_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name, incremental_name

from tracker.config.schema import BearerAuth, Config, SourceLimits, TargetGroup

HELD, WANTED = full_name(8100), incremental_name(8100, 8110)
FILES = {HELD: archive_bytes(2 * MiB, seed=81), WANTED: archive_bytes(MiB, seed=82)}
RANGE = {"range": f"bytes=0-{MiB - 1}"}
NEW_TOKEN = "rotated-token"
ONE_AT_ONCE = SourceLimits(max_transfers=1)


def group(token: str, **fields: object) -> TargetGroup:
    return TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=token), **fields)  # type: ignore[arg-type]


async def queued_across(reloaded: Config) -> tuple[FakeUpstream, dict[str, httpx.Response]]:
    """HELD holds the source's one slot while WANTED waits in its queue; the tracker is
    reloaded to ``reloaded`` meanwhile, then HELD's transfer goes on. The upstream and the
    answers of both."""
    config = make_config(None, target_groups=(group(TOKEN, source_limits=ONE_AT_ONCE),))
    up = FakeUpstream(files=dict(FILES), behaviour={HELD: Behaviour(pause_at=MiB // 2)})
    settings = attrs.evolve(FAST, busy_wait=30.0)
    answers: dict[str, httpx.Response] = {}
    async with (
        serving(up),
        running_tracker(config, settings=settings) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=40) as client,
        trio.open_nursery() as nursery,
    ):
        advertise_files(t.index, up, FILES)

        async def fetch(name: str) -> None:
            answers[name] = await client.get(t.url(name), headers=RANGE)

        nursery.start_soon(fetch, HELD)
        await wait_for(lambda: up.answering == 1)
        nursery.start_soon(fetch, WANTED)  # waits for the one slot
        await wait_for(lambda: queue_waiting(t) == 1)
        t.config = reloaded
        up.behaviour[HELD].resume.set()
    # the transfer that ran across the reload came whole
    assert (answers[HELD].status_code, answers[HELD].content) == (206, FILES[HELD][:MiB])
    return up, answers


def queue_waiting(t: TrackerUnderTest) -> float:
    return t.counter("snapshot_tracker_source_queue_waiting")


async def test_a_request_waiting_in_a_sources_queue_asks_with_the_token_of_now() -> None:
    rotated = make_config(None, target_groups=(group(NEW_TOKEN, source_limits=ONE_AT_ONCE),))
    up, answers = await queued_across(rotated)
    assert answers[WANTED].status_code == 206
    [asked] = [s for s in up.gets() if s.target.endswith(WANTED)]
    assert asked.headers.get("authorization") == f"Bearer {NEW_TOKEN}"


async def test_a_request_waiting_in_a_queue_asks_nothing_once_its_group_is_removed() -> None:
    others = (TargetGroup(group="testnet"),)
    up, answers = await queued_across(make_config(None, target_groups=others))
    assert answers[WANTED].status_code == 502
    assert "removed by a reload" in answers[WANTED].text
    assert not [s for s in up.gets() if s.target.endswith(WANTED)]


async def test_a_hedge_after_a_reload_asks_with_the_token_of_now() -> None:
    # Both sources are slow to answer: after first_byte_timeout the second one is asked
    # too, by then under the reloaded config.
    data = FILES[WANTED]
    slow = Behaviour(delay=3.0)
    one = FakeUpstream(files={WANTED: data}, behaviour={WANTED: slow})
    two = FakeUpstream(files={WANTED: data}, host="127.0.0.2", behaviour={WANTED: slow})
    config = make_config(None, target_groups=(group(TOKEN),), first_byte_timeout=1.5)
    got: list[httpx.Response] = []
    async with (
        serving(one),
        serving(two),
        running_tracker(config) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=40) as client,
        trio.open_nursery() as nursery,
    ):
        advertise_files(t.index, one, {WANTED: data})
        advertise_files(t.index, two, {WANTED: data})

        async def fetch() -> None:
            got.append(await client.get(t.url(WANTED), headers=RANGE))

        nursery.start_soon(fetch)
        await wait_for(lambda: len(one.seen) + len(two.seen) == 1)
        first, hedge = (one, two) if one.seen else (two, one)
        t.config = attrs.evolve(config, target_groups=(group(NEW_TOKEN),))
    assert got[0].status_code == 206
    assert [s.headers.get("authorization") for s in first.seen] == [f"Bearer {TOKEN}"]
    assert [s.headers.get("authorization") for s in hedge.seen] == [f"Bearer {NEW_TOKEN}"]
