"""The budget of the bodies held at once (``tracker.net.bodyreads.BodyBudget``; docs/http-api.md,
"Limits"): shares taken whole and in turn, what a body did not need given back, a waiter
cancelled leaving its place, nothing held once every share is let go."""

from __future__ import annotations

import trio
import trio.testing

from tracker.net.bodyreads import BodyBudget


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
