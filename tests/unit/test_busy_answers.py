"""A source that answered busy (503, 429) backs off instead of being priced (docs/ranking.md,
"Busy answers"): ``busy_backoff`` and ``stated_retry`` as tables, :class:`BusyAnswers` on
explicit times, which sources a refresh drops for busy answers, and the part of the refresh
such a source took."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from tracker.core.snapshots import SnapshotSource, TargetKey
from tracker.errors import SourceFailed, SourceOverloaded
from tracker.multisource.claims import Pieces
from tracker.multisource.crew import Crew, _failed, lane, watch_speed
from tracker.multisource.judging import laggards
from tracker.multisource.sources import Identity, Source
from tracker.ordering.sourcehistory import MAX_BUSY_BACKOFF, BusyAnswers, busy_backoff
from tracker.proxy.cachefill import SPEED_WINDOW, part_of
from tracker.proxy.upstream import stated_retry

BASE = 10.0
MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("strikes", "retry_after", "expected"),
    [
        # the first busy answer: the base back-off
        (1, None, BASE),
        # each one more in a row (asked again once the last ran out) doubles it
        (2, None, 2 * BASE),
        (4, None, 8 * BASE),
        # up to the longest, however many
        (7, None, MAX_BUSY_BACKOFF),
        (1000, None, MAX_BUSY_BACKOFF),
        # a Retry-After longer than the back-off is honoured, up to the longest
        (1, 30.0, 30.0),
        (1, 86_400.0, MAX_BUSY_BACKOFF),
        # a shorter one (or none: 0) never shortens it: a source answering every real GET
        # busy costs one quick failover per back-off, doubling
        (1, 0.0, BASE),
        (3, 5.0, 4 * BASE),
        (1, float("inf"), BASE),
        (1, float("nan"), BASE),
    ],
)
def test_a_busy_sources_back_off(strikes: int, retry_after: float | None, expected: float) -> None:
    assert busy_backoff(strikes, retry_after, BASE) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        # an HTTP date, anything else, or nothing: the default back-off
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
        ("-5", None),
        ("1.5", None),
        ("١٢", None),  # digits, but not ASCII ones
        ("9" * 13, None),
        ("", None),
        (None, None),
    ],
)
def test_a_retry_after_is_read_in_seconds(value: str | None, expected: float | None) -> None:
    assert stated_retry(value) == expected


def _source(name: str) -> tuple[str, SnapshotSource]:
    key = TargetKey("g", f"http://{name}")
    return name, SnapshotSource(None, key, datetime(2026, 11, 21, tzinfo=UTC))  # type: ignore[arg-type]


def test_busy_answers_back_off_double_and_start_over() -> None:
    busy = BusyAnswers()
    a, b, c = (_source(n) for n in "abc")
    key = a[1].key
    assert busy.until(key) == 0 and busy.behind([a, b, c], 0.0) == [a, b, c]
    assert busy.overloaded(key, None, now=100.0, base=BASE) == 110.0
    # backing off: after the others, never left out
    assert busy.behind([a, b, c], 105.0) == [b, c, a]
    assert busy.behind([a], 105.0) == [a]
    # other requests that found it busy in the same moment do not double it
    assert busy.overloaded(key, None, now=101.0, base=BASE) == 111.0
    assert busy.behind([a, b, c], 111.0) == [a, b, c]  # ran out: its place again
    # asked again once it ran out, and busy again: twice as long
    assert busy.overloaded(key, None, now=112.0, base=BASE) == 132.0
    assert busy.overloaded(key, None, now=133.0, base=BASE) == 173.0
    # an answer that serves: its back-offs start over
    busy.answered(key)
    assert busy.until(key) == 0
    assert busy.overloaded(key, 30.0, now=200.0, base=BASE) == 230.0


def test_busy_answers_are_bounded() -> None:
    busy = BusyAnswers(max_entries=2)
    keys = [TargetKey("g", f"http://{n}") for n in "abc"]
    for key in keys:
        busy.overloaded(key, None, now=0.0, base=BASE)
    assert [busy.until(key) for key in keys] == [0, BASE, BASE]  # the oldest went first


@pytest.mark.parametrize(
    ("seconds", "busy", "expected"),
    [
        # dropped for busy answers: our side stopped asking it then (what it sent before is
        # measured as a transfer our side ended, from 1 MiB on)
        (30.0, 2.0, (2.0, "ours")),
        (30.0, 0.0, (0.0, "ours")),
        (30.0, 31.0, (30.0, "ours")),
    ],
)
def test_a_source_dropped_for_busy_answers_took_part_until_then(
    seconds: float, busy: float, expected: tuple[float, str]
) -> None:
    assert part_of(seconds, None, None, busy) == expected


BUSY, BROKE = SourceOverloaded("HTTP 503 Service Unavailable"), SourceFailed("upstream broke")


@pytest.mark.parametrize(
    ("failures", "busy"),
    [
        # busy three times in a row: dropped, not failing
        ([BUSY, BUSY, BUSY], True),
        # a row with any other failure is failing: a liar cannot end its cuts with a 503
        ([BROKE, BUSY, BUSY], False),
        ([BUSY, BUSY, BROKE], False),
        ([BUSY, BROKE, BUSY], False),
    ],
)
async def test_a_source_is_dropped_as_busy_only_when_its_whole_row_was(
    failures: list[SourceFailed], busy: bool
) -> None:
    crew: Any = SimpleNamespace(settings=SimpleNamespace(max_failures=3))
    source = Source("http://a/f", Identity(1000), ranges=True)
    for failure in failures:
        _failed(crew, source, failure)
    assert source.dropped and source.busy is busy


@pytest.mark.parametrize("served", [0, 1], ids=["then stalls", "serves a piece, then stalls"])
async def test_a_source_dropped_for_its_pace_after_a_busy_answer_is_not_dropped_as_busy(
    autojump_clock: trio.testing.MockClock, served: int
) -> None:
    """A source that answered one piece busy (503), served ``served`` pieces, and then held
    its next piece without a byte is dropped by the refresh's speed judge (stalled): for its
    pace, its own doing, priced as a failure over its part ("Failed transfers"). Left marked
    busy from the 503 (even once a piece it served ended that row), its part was taken for
    one our side ended (nothing under 1 MiB measured): one 503 before stalling spared a liar
    its price (docs/ranking.md, "Busy answers")."""

    class Tunables:
        read_timeout, write_size, write_delay, max_failures = 30.0, 2 * MiB, 0.05, 3

    fast = Source("http://a/f", Identity(64 * MiB), ranges=True)
    liar = Source("http://b/f", Identity(64 * MiB), ranges=True)
    asked = [0]

    async def fetch(crew: Crew, source: Source, claim: object, first: object) -> None:
        if source is fast:
            await trio.sleep(0.1)
            source.sent += MiB
            return
        asked[0] += 1
        if asked[0] == 1:
            raise SourceOverloaded("HTTP 503 Service Unavailable")
        if asked[0] <= 1 + served:
            source.sent += MiB
            return
        await trio.sleep_forever()  # its next piece: not a byte

    judged = trio.Event()

    def judge(
        rates: list[float], live: list[bool], busy: list[bool], overall: list[float]
    ) -> list[str]:
        reasons = laggards(rates, live, busy, overall)
        if reasons[1]:
            judged.set()  # dropped by watch_speed before it sleeps again
        return reasons

    crew = Crew(Tunables(), Pieces(64 * MiB, MiB), -1, open=None, fetch_claim=fetch)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for source in (fast, liar):
            nursery.start_soon(lane, crew, source)
        nursery.start_soon(watch_speed, [fast, liar], SPEED_WINDOW, judge)
        with trio.fail_after(10 * SPEED_WINDOW):
            await judged.wait()
        nursery.cancel_scope.cancel()
    assert liar.dropped.startswith("stalled") and asked[0] == 2 + served
    assert not liar.busy
