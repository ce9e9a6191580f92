"""The budget of the bodies held at once (``tracker.net.bodyreads.BodyBudget``; docs/http-api.md,
"Limits"): shares taken whole and in turn, at most a part of it by one owner, what a body did
not need given back, a waiter cancelled leaving its place, nothing held once every share is let
go; a body's share from its response's head (``body_share``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tracker.net.bodyreads import BodyBudget, body_share


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
