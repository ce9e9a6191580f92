"""The log lines a remote party can multiply are folded past a rate into one summary line a
window (tracker/observability/folding.py; docs/http-api.md, "Connections"): the decision
as a table, the folder with a clock of the test's."""

from __future__ import annotations

import logging
import math

import pytest

from tracker.observability import folding
from tracker.observability.folding import (
    EACH_EVENT,
    LINES_PER_WINDOW,
    WINDOW,
    FoldVerdict,
    LineFolder,
    bulk,
    fold_verdict,
    log_folded,
)
from tracker.observability.logs import record_fields
from tracker.observability.metrics import Metrics


@pytest.mark.parametrize(
    ("started", "logged", "of_event", "now", "unfolded", "expected"),
    [
        # the first line ever: no window yet, one starts with it
        (-math.inf, 0, 0, 0.0, False, FoldVerdict(log=True, closes=True)),
        (0.0, 0, 0, 1.0, False, FoldVerdict(log=True, closes=False)),
        (0.0, 9, 9, 59.9, False, FoldVerdict(log=True, closes=False)),  # the budget's last
        (0.0, 10, 10, 59.9, False, FoldVerdict(log=False, closes=False)),  # past it: folded
        (0.0, 10, 10, 59.9, True, FoldVerdict(log=True, closes=False)),  # a real transfer's
        (0.0, 10, 10, 60.0, False, FoldVerdict(log=True, closes=True)),  # the window ended
        (0.0, 500, 500, 3600.0, False, FoldVerdict(log=True, closes=True)),
        (0.0, 0, 0, 60.0, True, FoldVerdict(log=True, closes=True)),
        # the budget spent by other events: this one's first lines (``each``) still go
        (0.0, 10, 0, 59.9, False, FoldVerdict(log=True, closes=False)),
        (0.0, 10, 1, 59.9, False, FoldVerdict(log=True, closes=False)),
        (0.0, 10, 2, 59.9, False, FoldVerdict(log=False, closes=False)),
        (0.0, 30, 2, 60.0, False, FoldVerdict(log=True, closes=True)),
    ],
)
def test_fold_verdict(
    started: float,
    logged: int,
    of_event: int,
    now: float,
    unfolded: bool,
    expected: FoldVerdict,
) -> None:
    got = fold_verdict(
        started, logged, now, of_event=of_event, unfolded=unfolded, budget=10, each=2, every=60.0
    )
    assert got == expected


@pytest.mark.parametrize(
    ("moved", "expected"),
    [(0, False), (1, False), ((1 << 30) - 1, False), (1 << 30, True), (100 * 10**9, True)],
)
def test_a_gib_moved_is_never_folded(moved: int, expected: bool) -> None:
    assert bulk(moved) is expected


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def folded_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record_fields(r)[1] for r in caplog.records if r.getMessage() == "log_lines_folded"]


def test_a_flood_is_logged_up_to_the_budget_then_summed_up_once_a_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    folder = LineFolder(budget=3, every=60.0, each=0, clock=clock)
    caplog.set_level(logging.INFO)
    admitted = [folder.admit("download") for _ in range(5)]
    admitted += [folder.admit("upstream_failed") for _ in range(2)]
    assert admitted == [True] * 3 + [False] * 4
    assert folder.admit("download", unfolded=True)  # a real transfer's, whatever the rate
    folder.flush()  # the window has not ended: nothing yet
    assert folded_lines(caplog) == []
    clock.now += 60.0
    folder.flush()
    [summary] = folded_lines(caplog)
    assert summary == {"seconds": 60.0, "total": 4, "download": 2, "upstream_failed": 2}
    # a new window: its budget whole again, and the counts since the start kept
    assert [folder.admit("download") for _ in range(4)] == [True] * 3 + [False]
    assert folder.totals() == {"download": 3, "upstream_failed": 2}
    clock.now += 59.0
    folder.flush(final=True)  # the tracker stops: what the window folded, now
    assert folded_lines(caplog)[-1] == {"seconds": 60.0, "total": 1, "download": 1}


def test_a_flood_of_one_event_leaves_every_other_event_its_first_lines() -> None:
    """A client's flood of tiny requests spent the window's budget within seconds: a
    refresh failing for every client after it was only a count in the summary, its reason
    never written. Each event's first lines of a window are written whatever the others
    spent (the product's numbers)."""
    clock = Clock()
    folder = LineFolder(clock=clock)
    flood = [folder.admit("download") for _ in range(3 * LINES_PER_WINDOW)]
    assert flood.count(True) == LINES_PER_WINDOW
    failed = [folder.admit("cache_refresh_ended") for _ in range(2 * EACH_EVENT)]
    assert failed == [True] * EACH_EVENT + [False] * EACH_EVENT
    assert folder.admit("upstream_failed")  # another event: its own first lines
    clock.now += WINDOW  # a new window: each event's first lines again
    assert [folder.admit("cache_refresh_ended") for _ in range(EACH_EVENT)] == [True] * EACH_EVENT


def test_an_ended_window_is_summed_up_by_the_next_line_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    folder = LineFolder(budget=1, every=60.0, each=0, clock=clock)
    caplog.set_level(logging.INFO)
    assert [folder.admit("probe_failed") for _ in range(3)] == [True, False, False]
    clock.now += 61.0
    assert folder.admit("probe_failed")  # a new window
    [summary] = folded_lines(caplog)
    assert summary["probe_failed"] == 2
    folder.flush(final=True)  # nothing folded since: no line
    assert len(folded_lines(caplog)) == 1


def test_only_lines_someone_wants_spend_the_budget(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A level the log does not show neither logs nor folds its line (``--log-level
    warning`` and a flood of info lines): the budget is the lines written."""
    folder = LineFolder(budget=1, each=0, clock=Clock())
    monkeypatch.setattr(folding, "FOLDER", folder)
    log = logging.getLogger("tracker.test_folding")
    caplog.set_level(logging.WARNING, logger="tracker.test_folding")
    for _ in range(5):
        log_folded(log, "info", "download", bytes=1)
    log_folded(log, "warning", "download", bytes=1)
    log_folded(log, "warning", "download", bytes=1)
    assert [r.levelname for r in caplog.records if r.getMessage() == "download"] == ["WARNING"]
    assert folder.totals() == {"download": 1}


def test_the_folded_lines_are_counted_in_the_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = LineFolder(budget=0, each=0, clock=Clock())
    monkeypatch.setattr(folding, "FOLDER", folder)
    for _ in range(3):
        folder.admit("download")
    folder.admit("probe_failed")
    metrics = Metrics(process=False)
    sample = metrics.registry.get_sample_value
    name = "snapshot_tracker_log_lines_folded_total"
    assert sample(name, {"event": "download"}) == 3
    assert sample(name, {"event": "probe_failed"}) == 1
