"""The tracker as :func:`tracker.service.build` wires it counts every bug it contains in its
own tasks (docs/architecture.md, "Failures"): a scrape round and a spawned transfer task that
raise what no rule foresaw are each counted in its metrics
(``snapshot_tracker_internal_errors_total{where="task"}``), as a connection's is, and the
work goes on. They were logged (``task_failed``) and counted nowhere, so no alert told the
operator. No targets, no network; the scrape rounds under trio's mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from tracker.config.schema import Config
from tracker.discovery.scrape import Scraper
from tracker.service import Components, Tracker, build

INTERVAL = 15.0

#: Each test here makes a task fail on purpose: its ``task_failed`` lines fail none
#: (tests/conftest.py).
pytestmark = pytest.mark.expects_task_failure


@pytest.fixture
async def parts() -> AsyncIterator[Components]:
    """A tracker's components as the service builds them; nothing running."""
    async with httpx.AsyncClient(trust_env=False) as rpc:
        built = build(Tracker(Config(scrape_interval=INTERVAL)), rpc)
        try:
            yield built
        finally:
            await built.aclose()


def task_errors(parts: Components) -> float | None:
    """The tracker's count of the bugs contained in its tasks."""
    return parts.tracker.metrics.registry.get_sample_value(
        "snapshot_tracker_internal_errors_total", {"where": "task"}
    )


async def test_a_spawned_task_that_raises_is_counted(parts: Components) -> None:
    transfers, ran = parts.transfers, []

    async def release() -> None:
        raise RuntimeError("no rule for this lock")

    async def prefetch() -> None:
        ran.append("prefetch")

    assert task_errors(parts) == 0
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(transfers.run)
            assert transfers.spawn(release)
            await trio.testing.wait_all_tasks_blocked()
            assert transfers.spawn(prefetch)  # the transfers go on
            await trio.testing.wait_all_tasks_blocked()
            transfers.close(0)
    assert ran == ["prefetch"]
    assert task_errors(parts) == 1


async def test_a_scrape_round_that_raises_is_counted(
    parts: Components, autojump_clock: trio.testing.MockClock
) -> None:
    rounds: list[float] = []
    third = trio.Event()

    def round_done(_scraper: Scraper) -> None:
        rounds.append(trio.current_time())
        if len(rounds) == 1:
            raise RuntimeError("a gauge of no group")
        if len(rounds) == 3:
            third.set()

    parts.scraper.on_round = round_done
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(parts.scraper.run)
        await third.wait()
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in rounds] == [0.0, INTERVAL, 2 * INTERVAL]  # the rounds go on
    assert task_errors(parts) == 1
