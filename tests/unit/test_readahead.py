"""tracker.proxy.channel.ReadAhead on its own: pieces join what arrived, never wait for more."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tracker.errors import UpstreamError
from tracker.proxy.channel import ReadAhead


async def test_a_take_gets_everything_held_at_once() -> None:
    ahead = ReadAhead(100)
    for n in (3, 4, 10):
        await ahead.put(b"x" * n)
    assert ahead.held == 17
    assert await ahead.take() == b"x" * 17
    await ahead.put(b"y")
    assert await ahead.take() == b"y"  # one chunk goes on alone, not waiting for more
    ahead.end()
    assert await ahead.take() is None


async def test_a_take_waits_for_the_first_chunk_only() -> None:
    ahead = ReadAhead(100)
    got: list[bytes | None] = []
    async with trio.open_nursery() as nursery:
        taken = trio.Event()

        async def consumer() -> None:
            got.append(await ahead.take())
            taken.set()

        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await ahead.put(b"abc")
        with trio.fail_after(2):
            await taken.wait()
    assert got == [b"abc"]


async def test_the_reader_waits_while_the_limit_is_held() -> None:
    ahead = ReadAhead(10)
    await ahead.put(b"x" * 10)
    with trio.move_on_after(0.05) as waited:
        await ahead.put(b"y")  # the consumer has not taken anything: backpressure
    assert waited.cancelled_caught
    assert await ahead.take() == b"x" * 10
    with trio.fail_after(2):
        await ahead.put(b"y")
    assert await ahead.take() == b"y"


async def test_the_limit_follows_a_shared_budget() -> None:
    ahead = ReadAhead(10)
    await ahead.put(b"x" * 6)
    ahead.limit = 4  # others joined: less to hold
    with trio.move_on_after(0.05) as waited:
        await ahead.put(b"y")
    assert waited.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ahead.put, b"z")
        await trio.testing.wait_all_tasks_blocked()
        ahead.limit = 100  # they left: the waiting reader goes on at once
        with trio.fail_after(2):
            while ahead.held < 7:
                await trio.lowlevel.checkpoint()
    with pytest.raises(ValueError, match="positive"):
        ahead.limit = 0


async def test_a_break_comes_after_the_bytes_before_it() -> None:
    ahead = ReadAhead(100)
    await ahead.put(b"abc")
    ahead.end(UpstreamError("upstream broke"))
    assert await ahead.take() == b"abc"
    with pytest.raises(UpstreamError, match="upstream broke"):
        await ahead.take()


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReadAhead(0)


async def test_the_time_a_put_waits_for_room_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What a relay's client paced (docs/ranking.md, "Failed transfers"): the reader waits
    for room while the consumer holds back, and only then."""
    ahead = ReadAhead(4)
    await ahead.put(b"abcd")  # room for it: no wait
    assert ahead.waited == 0.0
    async with trio.open_nursery() as nursery:

        async def slow_consumer() -> None:
            await trio.sleep(3)  # the client's pace, on the mock clock
            await ahead.take()

        nursery.start_soon(slow_consumer)
        await ahead.put(b"e")  # full: waits until the consumer took what was held
    assert ahead.waited == pytest.approx(3.0)


async def test_the_longest_span_the_consumer_took_nothing_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stalled client, not a slow one (docs/ranking.md, "Failed transfers"): the longest
    span of waits for room with no take between them, the one still running when the reader
    stopped included. A take ends a span; a raised limit that lets one put go on does not."""
    ahead = ReadAhead(4)
    await ahead.put(b"abcd")
    async with trio.open_nursery() as nursery:

        async def consumer() -> None:
            await trio.sleep(1)
            await ahead.take()  # the client took bytes: the span of 1 s ends

        nursery.start_soon(consumer)
        await ahead.put(b"efgh")
    assert ahead.stalled == pytest.approx(1.0)
    async with trio.open_nursery() as nursery:

        async def raise_limit() -> None:
            await trio.sleep(2)
            ahead.limit = 8

        nursery.start_soon(raise_limit)
        await ahead.put(b"ijkl")  # waits 2 s, goes on: nothing was taken
    with trio.move_on_after(3):
        await ahead.put(b"m")  # waits again, still nothing taken, until the reader stops
    assert ahead.stalled == pytest.approx(5.0)  # one span: 2 s, then 3 s
    assert ahead.waited == pytest.approx(6.0)
