"""A reload while a request waits to ask a source: in the source's queue
(``source_limits.max_transfers``) or for its turn in a hedge (``first_byte_timeout``). What
it then sends is the config's of the moment it asks, not of the moment the client came: the
rotated token, never the old one, and nothing for a group the reload removed. Real tracker
on 127.0.0.1, real upstreams (tests/helpers_upstream.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
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


async def test_a_reload_that_lowers_max_transfers_holds_the_waiting_request_back() -> None:
    """Two transfers run from a source of ``max_transfers: 2``, a third request waits in its
    queue, and a reload lowers the limit to 1. When one of the two ends, the waiting request
    is not let in (one still runs: the limit of now is full); it was, under the 2 it came
    under, so a source an operator had just limited to one transfer got two again."""
    other = incremental_name(8100, 8105)
    files = {**FILES, other: archive_bytes(2 * MiB, seed=83)}
    paused = {name: Behaviour(pause_at=MiB // 2) for name in (HELD, other)}
    up = FakeUpstream(files=files, behaviour=paused)
    two = make_config(
        None, target_groups=(group(TOKEN, source_limits=SourceLimits(max_transfers=2)),)
    )
    settings = attrs.evolve(FAST, busy_wait=30.0)
    answers: dict[str, httpx.Response] = {}
    async with (
        serving(up),
        running_tracker(two, settings=settings) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=40) as client,
        trio.open_nursery() as nursery,
    ):
        advertise_files(t.index, up, files)
        limits, url = t.streamer.clients.limits, up.url(WANTED)

        async def fetch(name: str) -> None:
            answers[name] = await client.get(t.url(name), headers=RANGE)

        nursery.start_soon(fetch, HELD)
        nursery.start_soon(fetch, other)
        await wait_for(lambda: up.answering == 2)
        nursery.start_soon(fetch, WANTED)  # waits: both slots are taken
        await wait_for(lambda: limits.waiting(url) == 1)
        t.config = make_config(None, target_groups=(group(TOKEN, source_limits=ONE_AT_ONCE),))
        up.behaviour[HELD].resume.set()  # one of the two ends
        # its slot went back and the request still waits, or the request was let in (the
        # slot is handed on in the same step that gives it back: (1, 1) is never passed by)
        await wait_for(
            lambda: bool(up.gets(WANTED)) or (limits.running(url), limits.waiting(url)) == (1, 1)
        )
        assert not up.gets(WANTED), "let in under the limit it came under, not the reload's"
        assert (limits.running(url), limits.waiting(url)) == (1, 1)
        up.behaviour[other].resume.set()  # the last one ends: now it is let in
    assert [answers[name].status_code for name in (HELD, other, WANTED)] == [206, 206, 206]
    assert answers[WANTED].content == FILES[WANTED][:MiB]


async def test_a_reload_that_raises_max_transfers_lets_the_waiting_request_in_at_once(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """The daemon's own reload (``POST /reload``): a request waits in the queue of a source
    of ``max_transfers: 1`` while its one transfer runs, and the reload raises the limit to
    2. The request is let in at once; it waited for the running transfer to end (an
    archive's: minutes), under the 1 it came under, and got a 503 after ``busy_wait``."""
    files = {HELD: FILES[HELD], WANTED: FILES[WANTED]}
    up = FakeUpstream(
        files=files,
        listing=sidecar_listing(files),
        behaviour={HELD: Behaviour(pause_at=MiB // 2)},
    )
    await nursery.start(up.run)

    def settings(most: int) -> dict[str, Any]:
        target = up.base.removeprefix("http://")
        return {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "30s",  # only the first round and the reload's
            "verify_archives": False,
            "proxy_snapshot_downloads": True,
            "target_groups": [
                {
                    "group": "g",
                    "static_targets": {"targets": [target]},
                    "source_limits": {"max_transfers": most},
                }
            ],
        }

    path = write_config(tmp_path, settings(1))
    public, internal = await start_tracker(nursery, path)

    async def listed() -> bool:
        answer = await client.get(f"{public}/v1/snapshots", params={"group": "g"})
        return bool(answer.json())

    async def waiting() -> bool:
        metrics = (await client.get(f"{internal}/metrics")).text
        return "snapshot_tracker_source_queue_waiting 1.0" in metrics

    await wait_until(listed)
    answers: dict[str, httpx.Response] = {}

    async def fetch(name: str) -> None:
        async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as own:
            answers[name] = await own.get(f"{public}/v1/g/{name}", headers=RANGE)

    nursery.start_soon(fetch, HELD)
    await wait_for(lambda: up.answering == 1)
    nursery.start_soon(fetch, WANTED)  # waits for the one slot
    await wait_until(waiting)
    write_config(tmp_path, settings(2))
    assert (await client.post(f"{internal}/reload")).status_code == 200
    await wait_for(lambda: WANTED in answers)
    assert not up.behaviour[HELD].resume.is_set()  # in while the first transfer still runs
    assert (answers[WANTED].status_code, answers[WANTED].content) == (206, FILES[WANTED][:MiB])
    up.behaviour[HELD].resume.set()
    await wait_for(lambda: HELD in answers)
    assert answers[HELD].status_code == 206
