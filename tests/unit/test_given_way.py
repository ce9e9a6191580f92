"""A call given up by its caller (``tracker.serving.threads``): what it returns is freed
once, whenever it comes, and nothing when it failed (no network, no file system)."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import trio
import trio.testing

from tracker.serving.threads import Background, given_way, hung_for, started_at


async def test_a_value_that_comes_after_its_caller_left_is_released() -> None:
    answers, released = threading.Event(), trio.Event()
    freed: list[int] = []

    def call() -> int:
        answers.wait(30.0)  # released below; the bound only ends a thread a failure left
        return 7

    def release(value: int) -> None:
        freed.append(value)
        released.set()

    with trio.CancelScope() as scope:
        scope.cancel()
        await given_way(call, release, name="test call")
    assert scope.cancelled_caught and freed == []  # left at once, nothing came yet
    answers.set()
    await released.wait()
    assert freed == [7]


@pytest.mark.parametrize(("fails", "freed"), [(False, [7]), (True, [])])
async def test_a_call_abandoned_once_it_ended_is_released_at_once(
    fails: bool, freed: list[int]
) -> None:
    def call() -> int:
        if fails:
            raise OSError("no")
        return 7

    got: list[int] = []
    thread = Background(call)
    await thread.wait()
    thread.abandon(got.append)
    assert got == freed
    thread.abandon(got.append)  # once only
    assert got == freed


async def test_a_place_whose_call_hung_parks_no_thread_more_until_it_ends(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """Each request given up on a hung mount parked a thread for as long as the mount hung,
    however many asked. Once a call on a place has run ``HUNG_AFTER``, the place's next
    calls are refused at once (TimeoutError, no thread), another place's run, and the place
    is free again once the hung call ends."""
    import tracker.serving.threads as threads

    monkeypatch.setattr(threads, "HUNG_AFTER", 5.0)
    answers, ran = threading.Event(), []

    def hung() -> str:
        answers.wait(30.0)  # released below; the bound only ends a thread a failure left
        return "late"

    def call() -> str:
        ran.append(1)
        return "here"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(given_way, hung, print, name="hung", place="/mnt/a"))
        await trio.testing.wait_all_tasks_blocked()
        assert await given_way(call, print, name="soon", place="/mnt/a") == "here"  # 0 s: runs
        mock_clock.jump(5.0)
        with pytest.raises(TimeoutError, match=r"/mnt/a: a read there 5s ago has not ended"):
            await given_way(call, print, name="refused", place="/mnt/a")
        assert ran == [1]  # no thread started for it
        assert await given_way(call, print, name="other", place="/mnt/b") == "here"
        # a call that must run (a promotion's rename) runs there all the same
        assert await given_way(call, print, name="must", place="/mnt/a", must_run=True) == "here"
        answers.set()
    assert await given_way(call, print, name="again", place="/mnt/a") == "here"
    assert ran == [1, 1, 1, 1]


async def test_a_call_that_must_run_counts_at_its_place(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """A call that must run (``must_run``: a promotion's rename) is counted at its place:
    once it has run ``HUNG_AFTER`` the place counts as hung (the other calls there are
    refused), and free again once it ends."""
    import tracker.serving.threads as threads

    monkeypatch.setattr(threads, "HUNG_AFTER", 5.0)
    answers = threading.Event()

    def rename() -> str:
        answers.wait(30.0)  # released below
        return "renamed"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(given_way, rename, print, name="promotion", place="/mnt/a", must_run=True)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert hung_for("/mnt/a", trio.current_time()) is None
        mock_clock.jump(5.0)
        assert hung_for("/mnt/a", trio.current_time()) == 5.0
        answers.set()
    assert hung_for("/mnt/a", trio.current_time()) is None


async def test_a_call_with_a_bound_of_its_own_counts_as_hung_only_past_it(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """A refresh's room (an old full's unlink takes seconds) is counted at the cache
    directory with a longer bound than a look's: the directory counts as hung once it has
    run that long, not the look's bound, and a look that hangs there meanwhile still makes
    it hung after the look's own."""
    import tracker.serving.threads as threads

    monkeypatch.setattr(threads, "HUNG_AFTER", 5.0)
    answers, look_answers, slow_answers = threading.Event(), threading.Event(), threading.Event()
    room = started_at(partial(answers.wait, 30.0), name="room", place="/mnt/a", hung_after=20.0)
    mock_clock.jump(19.0)
    assert hung_for("/mnt/a", trio.current_time()) is None  # past a look's bound, not its own
    mock_clock.jump(1.0)
    assert hung_for("/mnt/a", trio.current_time()) == 20.0
    answers.set()
    await room.wait()
    assert hung_for("/mnt/a", trio.current_time()) is None
    look = started_at(partial(look_answers.wait, 30.0), name="look", place="/mnt/a")
    slow = started_at(
        partial(slow_answers.wait, 30.0), name="room", place="/mnt/a", hung_after=20.0
    )
    mock_clock.jump(5.0)
    assert hung_for("/mnt/a", trio.current_time()) == 5.0  # the look's bound
    look_answers.set()
    await look.wait()
    assert hung_for("/mnt/a", trio.current_time()) is None  # the room: within its own
    slow_answers.set()
    await slow.wait()
    assert hung_for("/mnt/a", trio.current_time()) is None


@pytest.mark.parametrize("place", [None, "/cache"])
async def test_no_thread_to_be_had_is_said_as_such_and_holds_no_place(
    monkeypatch: pytest.MonkeyPatch, place: str | None
) -> None:
    """This process's thread limit reached (threads parked on a hung mount pile up): the
    call does not run, a TimeoutError says why (callers answer it as a hang: a 503, never a
    bug's 500), and the place is not taken for one where a call hangs."""

    def no_thread(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", no_thread)
    ran: list[int] = []
    with pytest.raises(TimeoutError, match="no thread to be had"):
        await given_way(partial(ran.append, 1), lambda _v: None, name="look", place=place)
    assert ran == [] and (place is None or hung_for(place, 1e9) is None)
