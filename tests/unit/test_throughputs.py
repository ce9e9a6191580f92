"""A source's figure from what its speed tests read and what real transfers achieved
(tracker/ordering/sourcehistory.py; docs/ranking.md, "Probed and achieved")."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import attrs
import pytest

from tracker.config.schema import Ranking
from tracker.learning.learned import Learned, decode, encode, gather, merge, restore
from tracker.ordering import sourcehistory
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import (
    AGING_STEP,
    DEFAULT_PRIOR,
    HALF_LIFE,
    TRUST_HALF_LIFE,
    Flowing,
    Measured,
    Rejections,
    Shown,
    Throughputs,
    combined,
    ranked_at,
)

H, T = HALF_LIFE, TRUST_HALF_LIFE
T0 = datetime(2026, 11, 21, tzinfo=UTC)


#: The prior in the table: what a source never measured counts (``assumed_throughput``).
P = 1000.0


@pytest.mark.parametrize(
    ("probed", "achieved", "now", "figure"),
    [
        # Nothing measured: 0 (the ranking assumes its figure).
        (None, None, 0.0, 0.0),
        # One of them: that one while new.
        ((100.0, 0.0), None, 0.0, 100.0),
        (None, (10.0, 0.0), 0.0, 10.0),
        # Older, it weighs half every HALF_LIFE against the prior: an old measurement says
        # less, it does not say the source is slow (halving the figure itself priced a
        # source measured fast 20 minutes ago below one never measured), nor that it is
        # as slow as the prior (a mean of seconds per byte, ruled by the slower, priced a
        # source of ten times the prior at less than twice it after one half-life).
        ((100.0, 0.0), None, H, 0.5 * 100 + 0.5 * P),  # 550
        (None, (10.0, 0.0), 2 * H, 0.25 * 10 + 0.75 * P),  # 752.5
        ((10_000.0, 0.0), None, H, 0.5 * 10_000 + 0.5 * P),  # 5,500
        # Long ago: the prior (a weight that underflowed too).
        ((100.0, 0.0), None, 50 * H, pytest.approx(P, rel=1e-9)),
        ((100.0, 0.0), None, 1e9, P),
        # Served slower than probed, no speed test since: what it served.
        ((100.0, 0.0), (10.0, 0.0), 0.0, 10.0),
        ((100.0, 0.0), (10.0, 50.0), 50.0, 10.0),
        # Speed tests after it: the real transfer's weight halves every TRUST_HALF_LIFE
        # between them, in seconds per byte (a source fast on 16 MiB probes recovers slowly).
        ((100.0, T), (10.0, 0.0), T, 1 / (0.5 / 10 + 0.5 / 100)),  # 18.2
        ((100.0, 2 * T), (10.0, 0.0), 2 * T, 1 / (0.25 / 10 + 0.75 / 100)),  # 30.8
        ((100.0, 60.0), (10.0, 0.0), 60.0, pytest.approx(10.0, rel=0.02)),
        ((100.0, 1e9), (10.0, 0.0), 1e9, pytest.approx(100.0)),
        # Served faster than the short probe read: what it served.
        ((10.0, 0.0), (100.0, 0.0), 0.0, 100.0),
        # The blend ages by the age of the newer of the two.
        ((100.0, 0.0), (10.0, 0.0), H, 0.5 * 10 + 0.5 * P),
        ((100.0, T), (10.0, 0.0), T + H, 0.5 / (0.5 / 10 + 0.5 / 100) + 0.5 * P),
        # Figures at the ends of what a float holds: no error, a finite figure.
        ((1e308, 0.0), (1e308, 0.0), 0.0, 1e308),
        ((1e308, 0.0), None, H, 0.5 * 1e308 + 0.5 * P),
        ((5e-324, 0.0), (5e-324, 0.0), 0.0, 0.0),
    ],
)
def test_the_figure_combines_probed_and_achieved(
    probed: Measured | None, achieved: Measured | None, now: float, figure: float
) -> None:
    assert combined(probed, achieved, now, P) == figure


@pytest.mark.parametrize(
    ("old", "rate", "now", "figure"),
    [
        # Averaged with the figure of its kind, which weighs its age's weight: the mean
        # while new, the new one alone once old (averaged with the halved figure, a steady
        # 100 B/s source measured every half-life was kept at 67 then halved to 33).
        ((100.0, 0.0), 100.0, H, 100.0),
        ((100.0, 0.0), 300.0, 0.0, 200.0),
        ((100.0, 0.0), 400.0, H, (0.5 * 100 + 400) / 1.5),
        ((100.0, 0.0), 400.0, 1e9, 400.0),
    ],
)
def test_a_measurement_is_averaged_with_the_kinds_figure_by_its_age(
    old: Measured, rate: float, now: float, figure: float
) -> None:
    speeds = Throughputs(lambda: now)
    speeds.set_prior("g", P)
    speeds.restore(SLY, *old, "probed")
    speeds.record(SLY, int(rate), 1.0, now, "probed")
    assert speeds.measurements("probed")[SLY] == (pytest.approx(figure), now)


SLY, STEADY = TargetKey("g", "http://sly"), TargetKey("g", "http://steady")


@pytest.mark.parametrize(
    ("now", "at"),
    [
        # The start of the step of AGING_STEP (10 s) the re-rank falls in.
        (0.0, 0.0),
        (9.999, 0.0),
        (10.0, 10.0),
        (1e9 + 605.5, 1e9 + 600),  # trio's clock starts far from 0
    ],
)
def test_the_ranking_ages_figures_to_the_start_of_their_step(now: float, at: float) -> None:
    assert ranked_at(now) == at


@pytest.mark.parametrize("measured", [1.0, 999.0, 5000.0, 1e9])
@pytest.mark.parametrize("age", [0.0, 3.0, 9.99, H, 5 * H])
def test_within_a_step_a_figure_ages_by_at_most_1_2_percent_of_its_way(
    measured: float, age: float
) -> None:
    """What docs/ranking.md says the step costs: aged to the step's start instead of the
    instant, a figure stands at most 1.2% of the way from its measurement to the prior
    nearer its measurement."""
    instant = sourcehistory.decayed((measured, 0.0), age, P)
    stepped = sourcehistory.decayed((measured, 0.0), age - AGING_STEP + 1e-9, P)
    assert abs(stepped - instant) <= 0.012 * abs(measured - P)


def test_the_default_prior_is_the_ranking_sections_default() -> None:
    """``ordering`` cannot read ``config`` (siblings in the layers): the prior of a group
    without a ``ranking`` section is written twice, and must be the same figure."""
    assert Ranking().assumed_throughput == DEFAULT_PRIOR


def test_a_steady_fast_source_speed_tested_every_interval_keeps_most_of_its_figure() -> None:
    """500 B/s at every speed test, one each half-life (10 minutes, the default interval),
    100 as prior: just before each test it is still priced above half its speed, and above
    a 200 B/s source measured a moment ago (a mean of seconds per byte toward the prior
    priced it at 167, below that one)."""
    now = [0.0]
    speeds = Throughputs(lambda: now[0])
    speeds.set_prior("g", 100.0)
    for _ in range(20):
        speeds.record(STEADY, 500, 1.0, None, "probed")
        now[0] += HALF_LIFE - 1
    speeds.record(SLY, 200, 1.0, None, "probed")
    assert speeds.rate(STEADY) > 250 > speeds.rate(SLY) == 200


def test_a_source_that_serves_slower_than_it_probes_stays_behind_after_more_probes() -> None:
    index = Index(clock=lambda: 0.0)
    index.record_transfer(SLY, 500, 1.0, 0.0, kind="probed")
    index.record_transfer(STEADY, 100, 1.0, 0.0, kind="probed")
    assert index.throughput(SLY, 0.0) > index.throughput(STEADY, 0.0)
    index.record_transfer(SLY, 10, 1.0, 1.0)  # a real transfer: 10 B/s
    assert index.throughput(SLY, 1.0) == pytest.approx(10.0, rel=0.01)
    index.record_transfer(SLY, 500, 1.0, 600.0, kind="probed")  # fast again on its probe
    index.record_transfer(STEADY, 100, 1.0, 600.0, kind="probed")
    assert index.throughput(SLY, 600.0) < index.throughput(STEADY, 600.0)
    # The probes, each new when the next came: 500; the transfer, 599 s old, weighs about
    # half against the prior (50 MB/s).
    fresh = 0.5 ** (599 / HALF_LIFE)
    assert index.speeds.figures(SLY, 600.0) == (
        500.0,
        pytest.approx(fresh * 10 + (1 - fresh) * DEFAULT_PRIOR),
    )


def test_both_figures_survive_a_restart() -> None:
    index = Index()
    index.record_transfer(SLY, 500, 1.0, 10.0, kind="probed")
    index.record_transfer(SLY, 10, 1.0, 20.0)
    data = encode(gather(index, Rejections(), now=20.0, wall=1_000.0))
    again = Index()
    restore(decode(data), again, Rejections(), now=5.0, wall=1_000.0)
    assert again.speeds.figures(SLY, 5.0) == pytest.approx(index.speeds.figures(SLY, 20.0))
    assert again.throughput(SLY, 5.0) == pytest.approx(index.throughput(SLY, 20.0))


def test_replicas_merge_each_figure_by_its_newest_and_an_older_document_has_none_achieved() -> None:
    one = Learned({SLY: (500.0, 10.0)}, achieved={SLY: (5.0, 30.0)})
    two = Learned({SLY: (400.0, 20.0)}, achieved={SLY: (6.0, 25.0), STEADY: (9.0, 1.0)})
    merged = merge([one, two])
    assert merged.throughputs == {SLY: (400.0, 20.0)}
    assert merged.achieved == {SLY: (5.0, 30.0), STEADY: (9.0, 1.0)}
    older = encode(Learned({SLY: (500.0, 10.0)})).replace(b',"achieved":[]', b"")
    assert b"achieved" not in older
    assert decode(older) == Learned({SLY: (500.0, 10.0)})


def _each_figure(speeds: Throughputs, keys: list[TargetKey], at: float) -> dict[TargetKey, Shown]:
    """What :meth:`Throughputs.shown` must give: each key's figures asked one by one."""
    out = {}
    for key in keys:
        probed, achieved = speeds.figures(key, at)
        if probed or achieved:
            out[key] = (round(speeds.rate(key, at)), round(probed), round(achieved))
    return out


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.record(SLY, 900, 1.0, 5.0, "achieved"),
        lambda s: s.record(STEADY, 70, 1.0, 5.0, "probed"),
        lambda s: s.restore(STEADY, 1234.0, 7.0, "achieved"),
        lambda s: s.drop(SLY),
    ],
    ids=["record", "record-new-key", "restore", "drop"],
)
def test_the_listings_figures_are_each_targets_kept_until_a_measurement_or_the_time_moves(
    change: Callable[[Throughputs], object],
) -> None:
    """/v1/targets asks for every target's figures once a rendering: kept between
    renderings at one time, they must still follow every change (docs/ranking.md)."""
    speeds = Throughputs(lambda: 0.0)
    speeds.record(SLY, 500, 1.0, 0.0, "probed")
    speeds.record(SLY, 10, 1.0, 1.0, "achieved")
    keys = [SLY, STEADY]
    first = speeds.shown(10.0)
    assert first == _each_figure(speeds, keys, 10.0)
    assert speeds.shown(10.0) is first  # kept: nothing moved
    later = speeds.shown(10.0 + HALF_LIFE)
    assert later == _each_figure(speeds, keys, 10.0 + HALF_LIFE) != first
    change(speeds)
    assert speeds.shown(10.0) == _each_figure(speeds, keys, 10.0) != first


def test_an_unchanged_restore_or_drop_keeps_the_listings_figures() -> None:
    speeds = Throughputs(lambda: 0.0)
    speeds.record(SLY, 500, 1.0, 5.0, "probed")
    first = speeds.shown(10.0)
    assert not speeds.restore(SLY, 400.0, 1.0, "probed")  # older than its own: not taken
    speeds.drop(STEADY)  # never measured
    assert speeds.shown(10.0) is first


def _node(target: str, group: str = "g") -> TargetKey:
    return TargetKey(group, target, discovered=True)


@pytest.mark.parametrize(
    ("back", "kept"),
    [
        (_node("http://[2001:db8::1]:8899"), True),  # the same node, back after a round
        (_node("http://[2001:db8::1]:9000"), True),  # another port of its machine
        (_node("http://[2001:db8::ff]:8899"), True),  # another address of its /64
        (_node("http://[2001:db8:0:1::1]:8899"), False),  # another /64: another machine
        (_node("http://[2001:db8::1]:8899", "other"), False),  # another group
        (TargetKey("g", "http://[2001:db8::1]:8899"), False),  # the operator's: its own
    ],
)
def test_a_discovered_nodes_measurements_wait_for_its_machine(back: TargetKey, kept: bool) -> None:
    """A node measured slow that dropped out of the cluster's list for one round came back
    unmeasured (priced at the assumed throughput): its machine's measurements wait for the
    next discovered node of that machine in its group."""
    speeds = Throughputs(lambda: 0.0)
    gone = _node("http://[2001:db8::1]:8899")
    speeds.record(gone, 10, 1.0, 1.0, "probed")
    speeds.record(gone, 20, 1.0, 2.0, "achieved")
    speeds.drop(gone)
    assert speeds.measured_at(gone) is None
    assert speeds.resume(back) is kept
    expected = {"probed": (10.0, 1.0), "achieved": (20.0, 2.0)} if kept else {}
    assert {
        k: m[back] for k in ("probed", "achieved") if back in (m := speeds.measurements(k))
    } == (expected)
    assert not speeds.resume(back)  # taken once


def test_a_nodes_own_newer_measurement_is_not_replaced_and_configured_ones_are_forgotten() -> None:
    speeds = Throughputs(lambda: 0.0)
    old, new = _node("http://10.0.0.1:1"), _node("http://10.0.0.1:2")
    speeds.record(old, 10, 1.0, 1.0, "achieved")
    speeds.drop(old)
    speeds.record(new, 500, 1.0, 5.0, "achieved")
    assert not speeds.resume(new)
    assert speeds.measurements("achieved") == {new: (500.0, 5.0)}
    configured = TargetKey("g", "http://10.0.0.2:1")
    speeds.record(configured, 10, 1.0, 1.0, "achieved")
    speeds.drop(configured)
    assert not speeds.resume(_node("http://10.0.0.2:1"))


def test_the_departed_measurements_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_DEPARTED machines wait, the oldest departures forgotten first."""
    monkeypatch.setattr(sourcehistory, "MAX_DEPARTED", 3)
    speeds = Throughputs(lambda: 0.0)
    nodes = [_node(f"http://10.0.0.{n}:1") for n in range(5)]
    for key in nodes:
        speeds.record(key, 10, 1.0, 1.0, "probed")
        speeds.drop(key)
    assert [speeds.resume(key) for key in nodes] == [False, False, True, True, True]


def test_an_index_gives_a_node_back_its_machines_measurements() -> None:
    """Through the index: a discovered node dropped (gone from the list, or down) and
    applied again ranks by its measurement, not as one never measured."""
    index = Index(clock=lambda: 0.0)
    key = _node("http://10.0.0.1:8899")
    index.apply(key, [], T0)
    index.record_transfer(key, 10, 1.0, 0.0)
    index.drop(key)
    assert index.throughput(key) == 0.0
    index.apply(key, [], T0)
    assert index.throughput(key) == 10.0


@attrs.frozen
class _Answer:
    moved: int
    opened_at: float


def test_the_live_rates_are_those_of_the_sources_bytes_come_from() -> None:
    flowing = Flowing()
    assert flowing.rates(5.0) == {}
    stop = flowing.start(SLY, _Answer(moved=400, opened_at=1.0))
    assert flowing.rates(5.0) == {SLY: 100.0}
    stop()
    assert flowing.rates(5.0) == {}
