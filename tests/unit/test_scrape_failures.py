"""A scrape round that raises what no rule of its own caught costs that round, never the
daemon (docs/architecture.md, "Failures"): it is logged once as ``task_failed``, counted
(``snapshot_tracker_internal_errors_total{where="task"}``) and the next round starts on
schedule. The round's hook (what the service runs after each round: the
metrics, the status line, the prefetch) is the failure here, under trio's mock clock; no
targets, no network."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing

from tracker.config.schema import Config
from tracker.discovery.scrape import Scraper
from tracker.observability.logs import record_fields
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index

INTERVAL = 15.0

#: Each test here makes a task fail on purpose: its ``task_failed`` lines fail none
#: (tests/conftest.py).
pytestmark = pytest.mark.expects_task_failure


async def test_a_round_whose_hook_raises_costs_that_round(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rounds: list[float] = []
    third = trio.Event()

    def round_done(_scraper: Scraper) -> None:
        rounds.append(trio.current_time())
        if len(rounds) == 1:
            raise RuntimeError("a gauge of no group")
        if len(rounds) == 3:
            third.set()

    metrics = Metrics(process=False)
    scraper = Scraper(
        Config(scrape_interval=INTERVAL),
        Index(),
        on_round=round_done,
        on_failure=partial(metrics.count_internal_error, "task"),
    )
    t0 = trio.current_time()
    try:
        with caplog.at_level(logging.ERROR, logger="tracker"):
            async with trio.open_nursery() as nursery:
                await nursery.start(scraper.run)
                await third.wait()
                nursery.cancel_scope.cancel()
    finally:
        await scraper.aclose()
    assert [t - t0 for t in rounds] == [0.0, INTERVAL, 2 * INTERVAL]  # on schedule
    failed = [record_fields(r)[1] for r in caplog.records if r.msg == "task_failed"]
    assert len(failed) == 1
    assert failed[0]["task"] == "scrape_round" and failed[0]["round"] == 1
    assert failed[0]["error"] == "RuntimeError: a gauge of no group"
    # counted: the log line alone alerted no one
    counted = metrics.registry.get_sample_value
    assert counted("snapshot_tracker_internal_errors_total", {"where": "task"}) == 1
