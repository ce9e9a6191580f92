"""The cluster's slot the index screens archives with (tracker/reporting.py): the RPC's
answer, carried on for a while when it fails, then none (docs/http-api.md#trust)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import trio
import trio.testing

from tracker.config.schema import Config, TargetGroup
from tracker.errors import RpcError
from tracker.observability.metrics import Metrics
from tracker.reporting import SLOT_KEPT_FOR, cluster_slot_now, slots_kept, track_snapshot_age


@pytest.mark.parametrize(
    ("answered", "last", "now", "slot", "kept"),
    [
        (1000, None, 5.0, 1000, (1000, 5.0)),
        (1200, (1000, 5.0), 85.0, 1200, (1200, 85.0)),
        # the RPC fails: carried on at 0.4 s a slot
        (None, (1000, 5.0), 45.0, 1100, (1000, 5.0)),
        (None, (1000, 5.0), 5.0 + SLOT_KEPT_FOR, 1750, (1000, 5.0)),
        # too long ago: no slot (screened as without rpc)
        (None, (1000, 5.0), 5.1 + SLOT_KEPT_FOR, None, None),
        (None, None, 5.0, None, None),
    ],
)
def test_the_slot_is_the_rpcs_then_carried_then_none(
    answered: int | None,
    last: tuple[int, float] | None,
    now: float,
    slot: int | None,
    kept: tuple[int, float] | None,
) -> None:
    assert cluster_slot_now(answered, last, now) == (slot, kept)


GROUP = TargetGroup(group="g")


def tell(told: list[int | None]) -> Callable[[Mapping[str, int | None]], None]:
    """What the index is told of the one group ``g``'s slot, appended to ``told``."""
    return lambda slots: told.append(slots["g"])


class _Health:
    """The RPC's getSlot: answers once, then fails."""

    def __init__(self) -> None:
        self.answers = [1000]

    async def current_slot(self, url: str) -> int:
        if self.answers:
            return self.answers.pop()
        raise RpcError("getSlot: down")

    def newest_slot(self, group: str) -> int | None:
        return None


async def test_an_rpc_that_fails_stops_holding_the_index_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The index kept the last answer for good: once the cluster moved past it by
    # max_slot_ahead, every newer archive was "too far ahead" and left out.
    told: list[int | None] = []
    config = Config(rpc="http://rpc.invalid/", scrape_interval=60.0, target_groups=(GROUP,))
    health: Any = _Health()
    with trio.move_on_after(SLOT_KEPT_FOR + 130):
        await track_snapshot_age(health, Metrics(process=False), lambda: config, tell(told))
    assert told[0] == 1000 and told[1] == 1150  # carried on a minute later
    assert told[-1] is None  # then none


class _Aged(_Health):
    """Answers once, then fails; the group's newest snapshot is at slot 900."""

    def newest_slot(self, group: str) -> int | None:
        return 900


def age_of(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("snapshot_tracker_snapshot_age_slots", {"group": "g"})


@pytest.mark.parametrize(
    ("seconds", "age"),
    [
        (1, 100),  # the RPC's answer
        (61, 250),  # its failed read: the slot carried on (1150), as the index is told
        (SLOT_KEPT_FOR + 130, None),  # carried too long: no slot, no age
    ],
)
async def test_the_age_is_against_the_slot_the_index_is_told(
    autojump_clock: trio.testing.MockClock, seconds: float, age: int | None
) -> None:
    # The status page ages archives against the index's slot, carried on for minutes when
    # the RPC fails; the metric was dropped at the first failed read (the page said "250
    # slots old", the metric and its alert nothing).
    told: list[int | None] = []
    metrics = Metrics(process=False)
    config = Config(rpc="http://rpc.invalid/", scrape_interval=60.0, target_groups=(GROUP,))
    health: Any = _Aged()
    with trio.move_on_after(seconds):
        await track_snapshot_age(health, metrics, lambda: config, tell(told))
    assert age_of(metrics) == age
    assert age is None or told[-1] == 900 + age


class _Breaking(_Health):
    """Answers once, then fails in a way no rule names (a bug, a library's surprise)."""

    async def current_slot(self, url: str) -> int:
        if self.answers:
            return self.answers.pop()
        raise ValueError("nothing foresaw this")


async def test_an_unforeseen_failure_keeps_the_carried_slot(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # It ended the task: its supervisor started it again without the carried slot, so one
    # odd answer screened the index as without rpc at once.
    told: list[int | None] = []
    config = Config(rpc="http://rpc.invalid/", scrape_interval=60.0, target_groups=(GROUP,))
    health: Any = _Breaking()
    with trio.move_on_after(61):
        await track_snapshot_age(health, Metrics(process=False), lambda: config, tell(told))
    assert told == [1000, 1150]
    assert any(r.msg == "slot_read_error" and r.exc_info for r in caplog.records)


def test_a_reload_keeps_the_slot_of_a_group_only_where_it_kept_its_rpc() -> None:
    # A group moved to another cluster's RPC was screened by its old cluster's slot until
    # the slot loop's next read, up to the old scrape_interval later.
    def config(top: str, own: str) -> Config:
        groups = (TargetGroup(group="a"), TargetGroup(group="b", rpc=own), TargetGroup(group="c"))
        return Config(rpc=top, target_groups=groups)

    old = config("http://main:8899", "http://test:8899")
    held = {"a": 10, "b": 50, "c": 10}
    # the same RPCs, written otherwise: every slot kept
    assert slots_kept(old, config("HTTP://main:8899/", "http://test:8899"), held) == held
    # b moved: its slot goes; a and c keep theirs
    assert slots_kept(old, config("http://main:8899", "http://other:8899"), held) == {
        "a": 10,
        "c": 10,
    }
    # the top-level rpc moved: the groups that take it lose theirs, b keeps its own
    assert slots_kept(old, config("http://other:8899", "http://test:8899"), held) == {"b": 50}
    # a group the reload added has none yet
    assert slots_kept(Config(rpc="http://main:8899"), old, held) == {}


class _Flaky(_Health):
    """Fails its first read, answers the second, fails every one after with another reason."""

    def __init__(self) -> None:
        self.reads = 0

    async def current_slot(self, url: str) -> int:
        self.reads += 1
        if self.reads == 2:
            return 1000
        raise RpcError("HTTP 503" if self.reads == 1 else "cannot connect: Connection refused")


async def test_each_read_tells_which_groups_rpc_failed_and_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The status page showed only "—" in the age columns: nothing said the RPC failed, nor
    # why (docs/http-api.md, "The status page"). Each read tells the groups whose rpc failed
    # it, with the reason, and none once it answers.
    told: list[Mapping[str, tuple[str, str]]] = []
    url = "http://rpc.invalid/"
    config = Config(rpc=url, scrape_interval=60.0, target_groups=(GROUP,))
    health: Any = _Flaky()
    with trio.move_on_after(121):
        await track_snapshot_age(health, Metrics(process=False), lambda: config, on_rpc=told.append)
    assert told == [
        {"g": (url, "HTTP 503")},
        {},
        {"g": (url, "cannot connect: Connection refused")},
    ]


async def test_an_unforeseen_failure_is_told_as_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    told: list[Mapping[str, tuple[str, str]]] = []
    config = Config(rpc="http://rpc.invalid/", scrape_interval=60.0, target_groups=(GROUP,))
    health: Any = _Breaking()
    with trio.move_on_after(61):
        await track_snapshot_age(health, Metrics(process=False), lambda: config, on_rpc=told.append)
    assert told == [{}, {"g": ("http://rpc.invalid/", "not read: ValueError")}]
