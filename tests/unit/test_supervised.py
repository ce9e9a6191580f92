"""A background loop's failure is logged and the loop runs again (``service.supervised``):
what no rule foresaw never ends the daemon, nor stops the loop for good."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from tracker.service import MAX_RESTART_AFTER, RESTART_AFTER, supervised


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
