"""The budget of the bodies held at once (``tracker.net.bodyreads.BodyBudget``; docs/http-api.md,
"Limits"): shares taken whole and in turn, at most a part of it by one owner, what a body did
not need given back, a waiter cancelled leaving its place, nothing held once every share is let
go; a body's share from its response's head (``body_share``); a share whose body comes too
slowly to be in by its deadline revoked while another read waits (``revoked_from``)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tracker.errors import TransportError
from tracker.net.bodyreads import BodyBudget, BodyShare, body_share, revoked_from


async def test_shares_are_taken_whole_and_in_turn() -> None:
    """A small share that would fit waits behind a large one that does not: the large one is
    never passed over for good."""
    budget = BodyBudget(100)
    order: list[str] = []
    done = trio.Event()

    async def hold(name: str, count: int) -> None:
        async with budget.held(count):
            order.append(name)
            await done.wait()

    async with trio.open_nursery() as nursery:
        async with budget.held(60):
            nursery.start_soon(hold, "big", 80)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, "small", 10)  # 70 of 100 would fit; it comes after
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and budget.used == 60
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(order) == ["big", "small"] and budget.used == 90
        done.set()
    assert budget.used == 0 and budget.peak == 90


async def test_keep_gives_back_what_the_body_did_not_need() -> None:
    budget = BodyBudget(100)
    async with budget.held(500) as share:  # at most the whole budget
        assert share.count == 100 and budget.used == 100
        share.keep(30)
        assert budget.used == 30
        share.keep(50)  # never more than taken
        assert budget.used == 30
    assert budget.used == 0


async def test_a_waiter_cancelled_leaves_its_place_to_the_next() -> None:
    budget = BodyBudget(100)
    got: list[str] = []
    done = trio.Event()
    big = trio.CancelScope()

    async def take(name: str, count: int) -> None:
        async with budget.held(count):
            got.append(name)
            await done.wait()

    async def take_big() -> None:
        with big:
            await take("big", 80)

    async with trio.open_nursery() as nursery, budget.held(50):
        nursery.start_soon(take_big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "small", 40)  # would fit, waits behind "big"
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        big.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["small"] and budget.used == 90
        done.set()
    assert budget.used == 0


async def test_one_owner_holds_its_part_and_passes_no_one() -> None:
    """An owner at its part (a server drawing its bodies out) waits for its own shares; the
    others' go on past it, its own later ones wait behind it."""
    budget = BodyBudget(100, per_owner=50)
    got: list[str] = []
    done = trio.Event()

    async def take(name: str, count: int, owner: str) -> None:
        async with budget.held(count, owner):
            got.append(name)
            await done.wait()

    async with trio.open_nursery() as nursery:
        async with budget.held(40, "a"):
            nursery.start_soon(take, "a 20", 20, "a")  # 60 of a's 50
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, "a 5", 5, "a")  # would fit a's part: behind a's 20
            nursery.start_soon(take, "b 50", 50, "b")  # goes on past a's
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["b 50"] and budget.used == 90
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(got) == ["a 20", "a 5", "b 50"] and budget.used == 75
        done.set()
    assert budget.used == 0 and budget.peak == 90


async def test_a_share_taken_once_its_size_is_known() -> None:
    budget = BodyBudget(100, per_owner=50)
    async with budget.held(owner="a") as share:
        assert budget.used == 0
        await share.take(80)  # at most the owner's part
        assert share.count == 50 and budget.used == 50
    assert budget.used == 0


async def test_an_owner_waiting_for_its_own_leaves_when_cancelled() -> None:
    budget = BodyBudget(100, per_owner=50)
    got: list[int] = []
    waiting = trio.CancelScope()

    async def take(count: int) -> None:
        with waiting:
            async with budget.held(count, "a"):
                got.append(count)

    async with trio.open_nursery() as nursery, budget.held(40, "a"):
        nursery.start_soon(take, 20)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # its place left: a's next share is not behind it
        with trio.fail_after(5):
            async with budget.held(10, "a"):
                assert budget.used == 50
    assert got == [] and budget.used == 0


@pytest.mark.parametrize(
    ("head", "share"),
    [
        ({"content-length": "1000"}, 1000),
        ({"content-length": "0"}, 0),
        ({"content-length": "4096"}, 4096),  # the cap itself
        ({"content-length": "4097"}, None),  # said longer than the cap: refused unread
        ({}, 4096),  # until the connection closes: the cap
        ({"transfer-encoding": "chunked"}, 4096),
        ({"transfer-encoding": "chunked", "content-length": "10"}, 4096),  # chunked beats it
        ({"content-length": "-1"}, 4096),  # no length h11 reads by
        ([(b"content-length", b"\xb2")], 4096),  # read as "²": a digit, not ASCII
    ],
)
def test_a_body_share_is_its_length_else_its_cap(head: Any, share: int | None) -> None:
    assert body_share(httpx.Headers(head), 4096) == share


@pytest.mark.parametrize(
    ("taken", "ends", "received", "count", "revoked"),
    [
        (0.0, 30.0, 0, 100, 2.0),  # nothing came: at the grace
        (0.0, 30.0, 10, 100, 3.0),  # a tenth in 3 s is its whole in 30 s
        (10.0, 40.0, 50, 100, 25.0),  # half of it by half its time
        (0.0, 30.0, 1, 100, 2.0),  # never within the grace
        (0.0, 30.0, 100, 100, math.inf),  # in: never
        (0.0, math.inf, 0, 100, math.inf),  # no deadline: never
        (5.0, 4.0, 0, 100, 7.0),  # its deadline passed: at the grace
    ],
)
def test_a_share_is_revoked_once_its_pace_misses_its_deadline(
    taken: float, ends: float, received: int, count: int, revoked: float
) -> None:
    assert revoked_from(taken, ends, received, count) == revoked


@pytest.mark.parametrize(("idle", "waits"), [(0.0, 2.0), (10.0, 0.0)])
async def test_a_share_read_too_slowly_is_revoked_while_another_waits(
    autojump_clock: trio.testing.MockClock, idle: float, waits: float
) -> None:
    """Two owners' bodies that never come hold the whole budget, kept while no read waits for
    room (``idle`` seconds; an owner at its part waits for its own). A third owner's share
    then waits for the grace (2 s from their taking) at most: both slow ones are revoked
    (TransportError, one line), the owners' own waiting shares refused, and it is given."""
    budget = BodyBudget(100, per_owner=50)
    failures: list[str] = []
    given: list[float] = []

    async def slow(owner: str, count: int) -> None:
        with trio.move_on_after(30):  # the read's deadline
            try:
                async with budget.held(owner=owner) as share:
                    await share.take(count)
                    with share.reading():
                        await trio.sleep_forever()
            except TransportError as exc:
                failures.append(f"{owner}: {exc}")

    async def waiter() -> None:
        async with budget.held(10, "c"):
            given.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for owner in ("a", "b"):
            nursery.start_soon(slow, owner, 50)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(slow, "a", 10)  # a at its part: waits behind its own
        await trio.sleep(idle)
        assert budget.used == 100 and not failures  # no one waits for room: kept
        start = trio.current_time()
        nursery.start_soon(waiter)
    assert given == [start + waits]
    assert sorted(failures) == [
        "a: a body of 50 bytes came at 0 B/s: it would not be in by its deadline, and other"
        " answers waited for its room",
        "a: another body of its server came at 0 B/s: it would not be in by its deadline,"
        " and other answers waited for its room",
        "b: a body of 50 bytes came at 0 B/s: it would not be in by its deadline, and other"
        " answers waited for its room",
    ]
    assert budget.used == 0


async def test_a_share_on_pace_is_not_revoked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A body that comes at a pace bringing it in by its deadline keeps its room while
    another read waits for it (past the grace and to its end)."""
    budget = BodyBudget(100, per_owner=60)
    order: list[str] = []

    async def steady(share: BodyShare) -> None:
        with share.reading():
            for _ in range(25):
                await trio.sleep(1)  # 50 bytes in 25 s, its deadline 60 s away
                share.received += 2
        order.append("steady in")

    async def waiter(owner: str, count: int) -> None:
        async with budget.held(count, owner):
            order.append(f"{owner} given")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, budget.held(owner="a") as share:
            await share.take(50)
            nursery.start_soon(waiter, "a", 20)  # a's part is 60: waits for its own
            nursery.start_soon(waiter, "b", 60)  # 110 of 100: waits for room
            await steady(share)
    assert order[0] == "steady in" and sorted(order[1:]) == ["a given", "b given"]


async def test_a_body_read_after_a_read_began_waiting_is_revoked_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A share given while a read waits (its owner's own turn, passed meanwhile) whose body
    never comes is revoked at its grace (2 s from its taking): the waiting read looks again
    when a body starts being read, not only at the revocations it knew of when it began
    waiting (there were none)."""
    budget = BodyBudget(100, per_owner=50)
    failures: list[str] = []
    given: list[float] = []
    got = trio.Event()

    async def slow_b() -> None:
        with trio.move_on_after(30):
            try:
                async with budget.held(10, "b") as share:
                    await trio.sleep(1)  # its body begins a second after its share
                    with share.reading():
                        await trio.sleep_forever()
            except TransportError as exc:
                failures.append(str(exc))

    async def waiter() -> None:
        async with budget.held(40, "c"):
            given.append(trio.current_time())
            got.set()

    # b's 50: an answer read, waiting for a parse thread (its share not revocable)
    async with (
        trio.open_nursery() as nursery,
        budget.held(50, "a"),
        budget.held(50, "b") as parsed,
    ):
        nursery.start_soon(slow_b)  # b at its part: waits for its own
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)  # 140 of 100: waits for room
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        parsed.keep(5)  # b's next is given (65 held), c's 40 still lacks room
        with trio.fail_after(10):
            await got.wait()
    assert given == [start + 2.0]
    assert len(failures) == 1 and "would not be in by its deadline" in failures[0]
