"""Every 503 the tracker answers says when to come back (``Retry-After``, docs/http-api.md
"Errors"): one case per way to get one, against a real tracker and a real upstream on
127.0.0.1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import FAST, GROUP, TOKEN, TrackerUnderTest, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.config.schema import BearerAuth, SourceLimits, TargetGroup

NAME = full_name(9100)
DATA = archive_bytes(2 * MiB, seed=91)

Case = Callable[[TrackerUnderTest, FakeUpstream, httpx.AsyncClient], Awaitable[httpx.Response]]


async def no_rpc(
    t: TrackerUnderTest, _up: FakeUpstream, client: httpx.AsyncClient
) -> httpx.Response:
    return await client.get(f"{t.base}/v1/health?group={GROUP}")  # "cannot say"


async def downloads_full(
    t: TrackerUnderTest, _up: FakeUpstream, client: httpx.AsyncClient
) -> httpx.Response:
    t.parts.delivery.slots.limit = 0  # as many downloads as the descriptors allow run
    return await client.get(t.url(NAME))


async def sources_busy(
    t: TrackerUnderTest, up: FakeUpstream, client: httpx.AsyncClient
) -> httpx.Response:
    up.behaviour[NAME] = Behaviour(pause_at=MiB)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.get, t.url(NAME))  # holds the source's one slot
        await wait_for(lambda: up.answering == 1)
        busy = await client.get(t.url(NAME))
        up.behaviour[NAME].resume.set()
    return busy


async def stopping(
    t: TrackerUnderTest, _up: FakeUpstream, client: httpx.AsyncClient
) -> httpx.Response:
    t.transfers.close(0)
    return await client.get(t.url(NAME))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (no_rpc, "no rpc configured"),
        (downloads_full, "too many downloads at once (0), try again"),
        (sources_busy, "every source of the file is busy"),
        (stopping, "the tracker is stopping"),
    ],
    ids=["health-no-rpc", "downloads-full", "sources-busy", "stopping"],
)
async def test_every_503_carries_retry_after(case: Case, reason: str) -> None:
    limits = SourceLimits(max_transfers=1)
    group = TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=TOKEN), source_limits=limits)
    up = FakeUpstream(files={NAME: DATA})
    settings = attrs.evolve(FAST, busy_wait=0.3)  # a busy source's queue: 0.3 s, then 503
    tracker = proxy_tracker(None, up, settings=settings, target_groups=(group,))
    async with (
        serving(up),
        tracker as t,
        httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client,
    ):
        response = await case(t, up, client)
    assert response.status_code == 503
    assert reason in response.text
    seconds = response.headers["retry-after"]
    assert seconds.isdigit() and 1 <= int(seconds) <= 300, seconds
