"""A background loop's failure is logged, counted and the loop runs again
(``service.supervised``): what no rule foresaw never ends the daemon, nor stops the loop for
good, nor goes unseen (``snapshot_tracker_internal_errors_total{where="task"}``)."""

from __future__ import annotations

import itertools
import logging
from functools import partial

import pytest
import trio
import trio.testing

from tracker.observability.metrics import Metrics
from tracker.service import MAX_RESTART_AFTER, RESTART_AFTER, supervised

#: Each test here makes a task fail on purpose: its ``task_failed`` lines fail none
#: (tests/conftest.py).
pytestmark = pytest.mark.expects_task_failure


async def test_a_failed_loop_runs_again_after_a_doubling_wait(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[float] = []

    async def loop() -> None:
        started.append(trio.current_time())
        if len(started) <= 3:
            raise ValueError(f"failure {len(started)}")

    t0 = trio.current_time()
    with caplog.at_level(logging.ERROR, logger="tracker"):
        await supervised("ages", loop)()
    assert [round(t - t0, 3) for t in started] == [0.0, 1.0, 3.0, 7.0]
    failed = [r for r in caplog.records if r.msg == "task_failed"]
    assert len(failed) == 3 and all(r.exc_info for r in failed)


async def test_each_failure_of_a_loop_is_counted_as_the_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Logged alone, a loop that failed at every run alerted no one: the log line was all.
    metrics = Metrics(process=False)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("no rule for this")

    await supervised("ages", loop, partial(metrics.count_internal_error, "task"))()
    counted = metrics.registry.get_sample_value
    assert runs == 2  # run again after the failure
    assert counted("snapshot_tracker_internal_errors_total", {"where": "task"}) == 1
    assert counted("snapshot_tracker_internal_errors_total", {"where": "connection"}) == 0


async def test_the_wait_stops_doubling_at_a_minute(autojump_clock: trio.testing.MockClock) -> None:
    started: list[float] = []

    async def loop() -> None:
        started.append(trio.current_time())
        if len(started) < 10:
            raise ValueError("again")

    await supervised("ages", loop)()
    waits = [b - a for a, b in itertools.pairwise(started)]
    assert waits[0] == pytest.approx(RESTART_AFTER)
    assert max(waits) == pytest.approx(MAX_RESTART_AFTER) and waits[-1] == waits[-2]


async def test_cancellation_is_not_caught(autojump_clock: trio.testing.MockClock) -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep_forever()

    with trio.move_on_after(5) as scope:
        await supervised("ages", loop)()
    assert scope.cancelled_caught and runs == 1


async def test_a_loop_that_ran_a_while_waits_the_first_wait_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # After failures spread over days every restart waited a minute: the wait doubled for
    # good. A loop that ran longer than the longest wait before failing starts again at 1 s.
    started: list[float] = []

    async def loop() -> None:
        started.append(trio.current_time())
        if len(started) == 4:
            await trio.sleep(3600)  # ran an hour, then failed
        if len(started) <= 4:
            raise ValueError("again")

    await supervised("ages", loop)()
    waits = [b - a for a, b in itertools.pairwise(started)]
    assert waits[:3] == [1.0, 2.0, 4.0]
    assert waits[3] == pytest.approx(3600 + RESTART_AFTER)
