"""The predicted time to a running node and the choice that does not flap, as tables."""

from __future__ import annotations

import math

import pytest

from tracker.config.schema import Ranking
from tracker.ordering.predict import Download, beats, choose, predicted_seconds, priced_throughput

R = Ranking(replay_slots_per_second=25, slot_seconds=0.4, assumed_throughput=50e6)
MB = 1_000_000


@pytest.mark.parametrize(
    ("downloads", "slot", "tip", "ranking", "expected"),
    [
        # Nothing to download, at the tip: running at once.
        ((), 1000, 1000, R, 0.0),
        # Nothing to download, 225 slots behind: 225 / (25 - 2.5) = 10 s of catch-up.
        ((), 775, 1000, R, 10.0),
        # A snapshot above the tip (a node ahead of rpc) is not "negative" behind.
        ((), 1100, 1000, R, 0.0),
        # 900 MB at 100 MB/s: 9 s, 22.5 slots made meanwhile, 1 s to catch them up.
        ((Download(900 * MB, 100 * MB),), 1000, 1000, R, 10.0),
        # Unmeasured: the assumed 50 MB/s -> 18 s + 45 slots / 22.5 = 20 s.
        ((Download(900 * MB),), 1000, 1000, R, 20.0),
        # Full + incremental, each at its own speed: 18 s, then (45 + 45) slots / 22.5.
        ((Download(1800 * MB, 200 * MB), Download(90 * MB, 10 * MB)), 955, 1000, R, 22.0),
        # The case: a newest full at 20 MB/s ...
        ((Download(2000 * MB, 20 * MB),), 1000, 1000, R, 100 + 250 / 22.5),
        # ... against an older full at 200 MB/s with a recent incremental.
        (
            (Download(2000 * MB, 200 * MB), Download(100 * MB, 200 * MB)),
            990,
            1000,
            R,
            10.5 + 36.25 / 22.5,
        ),
        # Replay no faster than the cluster: never catches up.
        ((Download(MB),), 1000, 1000, Ranking(replay_slots_per_second=2.5), math.inf),
        ((), 900, 1000, Ranking(replay_slots_per_second=2), math.inf),
        # ... unless it is at the tip with nothing to download.
        ((), 1000, 1000, Ranking(replay_slots_per_second=2), 0.0),
    ],
)
def test_predicted_seconds(
    downloads: tuple[Download, ...], slot: int, tip: int, ranking: Ranking, expected: float
) -> None:
    assert predicted_seconds(downloads, slot, tip, ranking) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (80e6, 80e6),  # measured: that figure
        (1.0, 1.0),  # however slow
        (0.0, 50e6),  # never measured: the assumed throughput
        (-5.0, 50e6),  # nonsense below zero is no measurement
        (math.nan, 50e6),  # nor is NaN
        (math.inf, math.inf),
    ],
)
def test_priced_throughput(measured: float, expected: float) -> None:
    """The one rule ranking and prediction share (tracker.ordering.ranking prices every
    archive with it, tracker.ordering.predict every download)."""
    assert priced_throughput(measured, R) == expected


@pytest.mark.parametrize(
    ("new", "held", "margin", "expected"),
    [
        (89.0, 100.0, 0.1, True),
        (90.0, 100.0, 0.1, False),  # exactly the margin is not "beats by"
        (95.0, 100.0, 0.1, False),
        (100.0, 100.0, 0.0, False),  # equal never switches, even without a margin
        (99.9, 100.0, 0.0, True),
        (1e9, math.inf, 0.1, True),
        (math.inf, math.inf, 0.1, False),
        (math.inf, 5.0, 0.1, False),
    ],
)
def test_beats(new: float, held: float, margin: float, expected: bool) -> None:
    assert beats(new, held, margin) is expected


@pytest.mark.parametrize(
    ("candidates", "held", "margin", "expected"),
    [
        ([], None, 0.1, None),
        ([("a", 10.0), ("b", 5.0)], None, 0.1, "b"),
        # Equal candidates: the first of the stable order, whatever was held before.
        ([("a", 10.0), ("b", 10.0)], None, 0.1, "a"),
        ([("a", 10.0), ("b", 10.0)], "b", 0.0, "b"),
        ([("a", 10.0), ("b", 10.0)], "a", 0.0, "a"),
        # The held one stays while no other beats it by the margin ...
        ([("a", 9.5), ("b", 10.0)], "b", 0.1, "b"),
        # ... and goes when one does, or when it is no longer on offer.
        ([("a", 8.0), ("b", 10.0)], "b", 0.1, "a"),
        ([("a", 9.5), ("c", 10.0)], "b", 0.1, "a"),
        # Never catching up: anything finite wins.
        ([("a", 500.0), ("b", math.inf)], "b", 0.1, "a"),
    ],
)
def test_choose(
    candidates: list[tuple[str, float]], held: str | None, margin: float, expected: str | None
) -> None:
    assert choose(candidates, held, margin) == expected


def test_choose_does_not_alternate_between_equal_candidates() -> None:
    held = None
    answers = []
    for order in ([("a", 10.0), ("b", 10.0)], [("b", 10.0), ("a", 10.0)]) * 5:
        held = choose(order, held, 0.1)
        answers.append(held)
    assert set(answers) == {"a"}
