"""``/v1/targets``' body (tracker.web.wire.targets_body): each target's entry kept between
renderings, its measured figures joined anew to the rest of it when they age (every
``THROUGHPUT_SHOWN`` seconds), byte for byte what a fresh rendering writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.discovery.roster import Target, TargetHealth
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import Flowing, Rejections
from tracker.web import wire
from tracker.web.listings import Fragments

START = 1_000_000.0
WALL = 1.8e9  # the wall clock's reading at START


def _targets(count: int) -> list[TargetHealth]:
    return [
        TargetHealth(
            Target(TargetKey("g", f"http://10.0.0.{n}:8899", True), "http", f"10.0.0.{n}"),
            "up",
            last_scrape=datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
            last_duration=0.05,
        )
        for n in range(count)
    ]


def _deps(index: Index, healths: list[TargetHealth], clock: list[float], **kw: Any) -> Any:
    """What targets_body reads, the index and the targets' health real."""
    parts: dict[str, Any] = {
        "scraper": SimpleNamespace(in_order=lambda: healths),
        "index": index,
        "flowing": Flowing(),
        "wall_clock": lambda: WALL + clock[0] - START,
        "rejections": Rejections(),
        "uncached": dict,
        "sources_used": dict,
        "local_checks": lambda _key: [],
    }
    return SimpleNamespace(**{**parts, **kw})


def _measured(count: int) -> tuple[Index, list[TargetHealth]]:
    """``count`` targets, every one measured a minute ago or less."""
    index = Index(clock=lambda: START)
    healths = _targets(count)
    for n, h in enumerate(healths):
        index.restore_throughput(h.target.key, (20 + n) * 1e6, START - n, "probed")
    return index, healths


def _render(deps: Any, fragments: Fragments, now: float) -> bytes:
    return wire.targets_body(deps, fragments, None, now, shown_at=now - now % 10)


def test_a_new_tick_joins_new_figures_to_the_entries_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The figures of a measured target age: every 10 s each one's whole entry was rendered
    again (~6 µs each, 20 ms of the event loop at 3,000 measured nodes). Its figures alone
    are, joined to the rest of its entry as kept, byte for byte what a fresh rendering
    writes."""
    index, healths = _measured(20)
    clock = [START]
    deps = _deps(index, healths, clock)
    fragments = Fragments()
    before = _render(deps, fragments, START)
    rendered: list[object] = []
    health_json = wire.health_json

    def counted(*args: Any) -> dict[str, object]:
        rendered.append(args[0])
        return health_json(*args)

    monkeypatch.setattr(wire, "health_json", counted)
    clock[0] = START + 10 * 60  # ten minutes on: every figure aged toward the prior
    after = _render(deps, fragments, clock[0])
    assert rendered == []
    assert after != before
    assert after == _render(deps, Fragments(), clock[0])
    assert len(rendered) == len(healths)  # the fresh rendering's
    moved = zip(json.loads(after), json.loads(before), strict=True)
    assert all(now["throughput_bps"] != then["throughput_bps"] for now, then in moved)


@given(
    speeds=st.tuples(*[st.sampled_from([0, 1, 52_000_000]) for _ in range(3)]),
    reason=st.sampled_from(["", 'no room: "4 GiB" left', "ünïcode \\ \n"]),
    measured=st.booleans(),
)
def test_an_entry_is_json_as_json_dumps_writes_it(
    speeds: tuple[int, int, int], reason: str, measured: bool
) -> None:
    """The entry of a target, its figures joined to the rest, is the JSON ``json.dumps``
    writes (compact, ASCII) of its fields in their documented order."""
    index = Index(clock=lambda: START)
    [health] = _targets(1)
    key = health.target.key
    probed, achieved = speeds[1:]
    if measured and probed:
        index.restore_throughput(key, probed, START, "probed")
    if measured and achieved:
        index.restore_throughput(key, achieved, START, "achieved")
    deps = _deps(index, [health], [START], uncached=lambda: {"g": reason} if reason else {})
    body = _render(deps, Fragments(), START)
    [entry] = json.loads(body)
    assert body == json.dumps([entry], separators=(",", ":")).encode()
    keys = list(entry)
    shown = [k for k in ("throughput_bps", "probed_bps", "achieved_bps") if k in entry]
    tail = [
        *shown,
        *(["measured_at"] if "measured_at" in entry else []),
        *(["cache"] * bool(reason)),
    ]
    assert keys[len(keys) - len(tail) :] == tail
    assert entry.get("cache", "") == reason
    assert ("measured_at" in entry) == bool(shown)
