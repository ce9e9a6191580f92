"""tracker.service.SharedReload: one reload at a time, the calls made meanwhile sharing the
next one and its outcome."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tracker.errors import ConfigError
from tracker.service import SharedReload


class Reloads:
    """A reload that waits for ``go`` and counts its runs; refused while ``refuse``."""

    def __init__(self) -> None:
        self.runs = 0
        self.go = trio.Event()
        self.refuse = False

    async def __call__(self) -> None:
        self.runs += 1
        await self.go.wait()
        if self.refuse:
            raise ConfigError([f"refused {self.runs}"])


async def outcome(reload: SharedReload, seen: list[str]) -> None:
    try:
        await reload()
    except ConfigError as exc:
        seen.append(exc.problems[0])
    else:
        seen.append("applied")


@pytest.mark.parametrize(("refuse", "told"), [(False, "applied"), (True, "refused 2")])
async def test_calls_made_meanwhile_share_the_next_reload(refuse: bool, told: str) -> None:
    reloads = Reloads()
    shared = SharedReload(reloads)
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, shared, seen)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(50):  # while the first runs
            nursery.start_soon(outcome, shared, seen)
        await trio.testing.wait_all_tasks_blocked()
        assert reloads.runs == 1
        reloads.refuse = refuse
        reloads.go.set()
    assert reloads.runs == 2  # the first, and the one the 50 shared
    assert len(seen) == 51 and seen[1:] == [told] * 50


async def test_a_sharer_asks_again_when_the_turn_it_shared_was_cancelled() -> None:
    reloads = Reloads()
    shared = SharedReload(reloads)
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, shared, seen)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as leaving:  # the next turn's caller, whose client left
            leaving.start_soon(shared)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(outcome, shared, seen)  # shares the leaver's turn
            await trio.testing.wait_all_tasks_blocked()
            leaving.cancel_scope.cancel()
        reloads.go.set()
    assert seen == ["applied", "applied"]
    assert reloads.runs == 2  # the sharer's own turn, not none
