"""The index ranked by time to a running node: the pair handed out, the predictions, the
choice that does not flap, and the one clock of measured throughputs."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import base58
import pytest

from tracker.config.schema import Ranking
from tracker.core.hosts import machine_voices, voice_of
from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files, parse_archive_name
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.pricing import PairKey, priced_sizes
from tracker.ordering.ranking import choose_pair
from tracker.ordering.sourcehistory import HALF_LIFE as THROUGHPUT_HALF_LIFE

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
H = base58.b58encode(bytes(range(32))).decode()
G = base58.b58encode(bytes(range(1, 33))).decode()
MB = 1_000_000
RANKING = Ranking(replay_slots_per_second=25, slot_seconds=0.4, assumed_throughput=50 * MB)


def infos(*named: tuple[str, int]) -> list[SnapshotInfo]:
    files = []
    for name, size in named:
        parsed = parse_archive_name(name.replace("H", H).replace("G", G))
        assert parsed is not None
        url = f"http://x/{parsed.file_name}"
        files.append(SnapshotFile(parsed, parsed.file_name, size=size, url=url))
    return chains_from_files(files)


SLOW, FAST = TargetKey("g", "slow"), TargetKey("g", "fast")


def still() -> Index:
    """An index on a clock that does not move: a measured throughput does not age between
    its record and the prediction read from it, so the predictions are the formula's (on
    ``time.monotonic`` a loaded host's milliseconds between the two showed in the digits)."""
    return Index(clock=lambda: 0.0)


def two_sources(index: Index) -> None:
    """The issue's case: the newest full on a slow source, an older full on a fast one with
    a recent incremental on it."""
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0)
    fast = infos(
        ("snapshot-900-G.tar.zst", 2000 * MB), ("incremental-snapshot-900-990-H.tar.zst", 50 * MB)
    )
    index.apply(FAST, fast, T0)
    index.record_transfer(SLOW, 20 * MB, 1.0)
    index.record_transfer(FAST, 200 * MB, 1.0)


@pytest.mark.parametrize(
    ("ranking", "full", "incremental", "first"),
    [
        # Without a ranking, or by slot: the newest full, and no incremental on it.
        (None, 1000, None, 1000),
        (Ranking(by="slot"), 1000, None, 1000),
        # By time to running: the older full on the fast source, and its incremental.
        (RANKING, 900, 990, 990),
    ],
)
def test_the_pair_handed_out_follows_the_ranking(
    ranking: Ranking | None, full: int, incremental: int | None, first: int
) -> None:
    index = still()
    index.set_ranking("g", ranking)
    two_sources(index)
    best = index.best_full("g")
    assert best is not None and best.info.slot == full
    incr = index.best_incremental("g")
    assert (incr.info.slot if incr else None) == incremental
    assert index.sources("g")[0].info.slot == first
    assert index.ranked()[0].info.slot == first


def test_every_pair_carries_its_prediction_by_the_formula() -> None:
    index = still()
    index.set_ranking("g", RANKING)
    two_sources(index)
    predicted = {s.info.slot: index.predicted(s) for s in index.sources("g")}
    # 2,000 MB at 20 MB/s: 100 s, then 250 slots at 22.5 a second.
    assert predicted[1000] == pytest.approx(100 + 250 / 22.5)
    # 2,050 MB at 200 MB/s: 10.25 s, then 10 + 25.625 slots behind.
    assert predicted[990] == pytest.approx(10.25 + 35.625 / 22.5)
    # The older full alone: 10 s, then 100 + 25 slots behind.
    assert predicted[900] == pytest.approx(10 + 125 / 22.5)
    by_slot = still()
    two_sources(by_slot)
    assert {by_slot.predicted(s) for s in by_slot.sources("g")} == {None}


def test_the_tip_is_the_cluster_slot_when_known() -> None:
    index = still()
    index.set_ranking("g", RANKING)
    two_sources(index)
    index.set_cluster_slots({"g": 1225})
    [newest] = [s for s in index.sources("g") if s.info.slot == 1000]
    assert index.predicted(newest) == pytest.approx(100 + 475 / 22.5)


def test_an_unmeasured_source_is_priced_at_the_assumed_throughput() -> None:
    index = still()
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 500 * MB)), T0)
    [source] = index.sources("g")
    assert index.predicted(source) == pytest.approx(10 + 25 / 22.5)


def test_equal_candidates_keep_one_answer_across_changes() -> None:
    index = still()
    index.set_ranking("g", RANKING)
    a, b = TargetKey("g", "a"), TargetKey("g", "b")
    # two copies of one archive (one slot has one hash: two would be screened, the
    # majority's kept)
    index.apply(a, infos(("snapshot-1000-H.tar.zst", 100 * MB)), T0)
    index.apply(b, infos(("snapshot-1000-H.tar.zst", 100 * MB)), T0)
    first = index.best_full("g")
    assert first is not None
    for n in range(10):  # every change re-ranks; the answer stays
        index.apply(TargetKey("g", f"other{n}"), infos((f"snapshot-{10 + n}-H.tar", 1)), T0)
        best = index.best_full("g")
        assert best is not None and best.key == first.key


def test_the_pair_moves_only_by_the_switch_margin() -> None:
    index = still()
    index.set_ranking("g", RANKING)
    a, b = TargetKey("g", "a"), TargetKey("g", "b")
    # two pairs a slot apart (one slot has one hash)
    index.apply(a, infos(("snapshot-1000-H.tar.zst", 1000 * MB)), T0)
    index.apply(b, infos(("snapshot-999-G.tar.zst", 1000 * MB)), T0)
    index.record_transfer(a, 100 * MB, 1.0)
    index.record_transfer(b, 95 * MB, 1.0)
    held = index.best_full("g")
    assert held is not None and held.key == a
    index.record_transfer(b, 115 * MB, 1.0)  # b now averages 105 MB/s: within 10%
    held = index.best_full("g")
    assert held is not None and held.key == a
    index.record_transfer(b, 300 * MB, 1.0)  # b averages 202 MB/s: it wins
    held = index.best_full("g")
    assert held is not None and held.key == b


def test_throughput_ages_on_the_index_clock() -> None:
    """Recorded and aged on one clock: after a half-life, half its weight against the
    group's ``assumed_throughput`` (a clock far from ``time.monotonic``, as trio's is, must
    not freeze the measurement)."""
    now = [1e9]
    index = Index(clock=lambda: now[0])
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", MB)), T0)
    index.record_transfer(SLOW, 400 * MB, 1.0)
    assert index.sources("g")[0].throughput == pytest.approx(400 * MB)
    now[0] += THROUGHPUT_HALF_LIFE
    aged = 0.5 * 400 * MB + 0.5 * RANKING.assumed_throughput  # 225 MB/s
    assert index.throughput(SLOW) == pytest.approx(aged)
    index.apply(FAST, infos(("snapshot-900-H.tar.zst", MB)), T0)  # a change re-ranks
    [slow] = [s for s in index.sources("g") if s.key == SLOW]
    assert slow.throughput == pytest.approx(aged)


def test_a_measured_source_never_falls_below_one_never_measured() -> None:
    """Measured at 100 MB/s, 20 minutes ago: still priced above the 50 MB/s a source never
    measured counts (halving the figure itself handed out the other's older full), and a
    source measured fast hours ago is priced near the assumed figure, not near 0."""
    now = [0.0]
    index = Index(clock=lambda: now[0])
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0)
    index.apply(FAST, infos(("snapshot-990-G.tar.zst", 2000 * MB)), T0)
    index.record_transfer(SLOW, 100 * MB, 1.0)
    best = index.best_full("g")
    assert best is not None and best.key == SLOW
    now[0] += 2 * THROUGHPUT_HALF_LIFE
    index.apply(FAST, infos(("snapshot-990-G.tar.zst", 2000 * MB)), T0)  # a round re-ranks
    best = index.best_full("g")
    assert best is not None and best.key == SLOW
    assert index.throughput(SLOW) > RANKING.assumed_throughput
    now[0] += 18 * THROUGHPUT_HALF_LIFE  # three hours
    assert index.throughput(SLOW) == pytest.approx(RANKING.assumed_throughput, rel=1e-3)


F1, F2, F0, I1 = "full 1000", "full 900", "full 800", "incremental 900-990"


@pytest.mark.parametrize(
    ("listed", "priced"),
    [
        # One source's size is the archive's.
        ([(F1, True, 2000, "a")], {F1: 2000}),
        # Two voices: the smaller, so a source listing another's archive as huge changes
        # nothing (the largest was taken: one liar priced the honest full out).
        ([(F1, True, 2000, "a"), (F1, True, 2**63, "b")], {F1: 2000}),
        ([(F1, True, 2**63, "a"), (F1, True, 2000, "b"), (F1, True, 0, "c")], {F1: 2000}),
        # Three voices: the middle, so one listing an older archive as tiny does not send
        # the fleet to it either (the smallest was taken: 1 byte).
        ([(F2, True, 2000, "a"), (F2, True, 2000, "b"), (F2, True, 1, "c")], {F2: 2000}),
        ([(F2, True, 2000, "a"), (F2, True, 2**63, "b"), (F2, True, 1, "c")], {F2: 2000}),
        # A voice is a host: three ports of the liar's machine are one (counted as three,
        # the tiny size was the middle of five).
        (
            [(F2, True, 2000, "a"), (F2, True, 2000, "b")] + [(F2, True, 1, "c")] * 3,
            {F2: 2000},
        ),
        # Two voices, one lying tiny: the smaller (which of two is the liar is not known).
        ([(F2, True, 2000, "a"), (F2, True, 1, "c")], {F2: 1}),
        # No size given: the largest of its kind on offer, never free (it was 0 seconds).
        (
            [(F1, True, 2000, "a"), (F2, True, 0, "a"), (I1, False, 50, "a")],
            {F1: 2000, F2: 2000, I1: 50},
        ),
        ([(F1, True, 2000, "a"), (I1, False, 0, "a")], {F1: 2000, I1: 0}),
        ([(F1, True, 0, "a"), (F2, True, 0, "a")], {F1: 0, F2: 0}),
        # Without a size, the typical one of its kind, never the largest on offer: one
        # source listing an old full it alone holds as huge priced the newest out...
        (
            [
                (F1, True, 0, "a"),
                (F1, True, 0, "b"),
                (F2, True, 2000, "c"),
                (F0, True, 10**18, "c"),
            ],
            {F1: 2000, F2: 2000, F0: 10**18},
        ),
        # ... and so did one giving the only size of the newest, which its hosts list
        # without one: they vote the typical size.
        (
            [
                *[(F1, True, 0, voice) for voice in "ab"],
                *[(F2, True, 2000, voice) for voice in "ab"],
                (F1, True, 10**18, "c"),
            ],
            {F1: 2000, F2: 2000},
        ),
    ],
)
def test_priced_sizes(listed: list[tuple[str, bool, int, str]], priced: dict[str, int]) -> None:
    assert priced_sizes(listed) == priced


def test_a_full_listed_without_its_size_is_not_handed_out_as_free() -> None:
    """A source that leaves out its size (a sidecar may; an HTTP target redirecting to
    another origin does) and holds an older full: priced as the newest one's size, the
    newest wins (the older was priced at 0 s and handed out)."""
    index = still()
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0)
    index.apply(FAST, infos(("snapshot-900-G.tar.zst", 0)), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000
    predicted = {s.info.slot: index.predicted(s) for s in index.sources("g")}
    assert predicted[900] == pytest.approx(40 + (100 + 100) / 22.5)


def test_one_source_cannot_price_another_sources_full_out() -> None:
    """A source lists the honest full under its name at 2**63 bytes, and its own older full
    at its real size: the honest one is priced at its own size and handed out."""
    index = still()
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0)
    lying = TargetKey("g", "lying")
    index.apply(lying, infos(("snapshot-1000-H.tar.zst", 2**63)), T0)
    index.apply(FAST, infos(("snapshot-900-G.tar.zst", 2000 * MB)), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000


def test_one_source_listing_an_older_full_as_tiny_does_not_send_the_fleet_to_it() -> None:
    """Three hosts hold the newest full and an older one at their real sizes; a fourth
    lists the older under its name at 1 byte: it was priced at the smallest size any
    source listed (a download of no time) and handed out over the newest."""
    index = still()
    index.set_ranking("g", RANKING)
    for n in range(3):
        index.apply(
            TargetKey("g", f"http://10.0.0.{n}:8899"),
            infos(("snapshot-1000-H.tar.zst", 2000 * MB), ("snapshot-900-G.tar.zst", 2000 * MB)),
            T0,
        )
    index.apply(TargetKey("g", "http://10.0.0.9:8899"), infos(("snapshot-900-G.tar.zst", 1)), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000


def test_one_ipv6_machine_on_many_addresses_is_one_voice_in_the_sizes() -> None:
    """Trust counts a discovered IPv6 node as its /48 (one site may answer on as many of
    its addresses as it likes); the sizes counted each address: four addresses of one /64
    listing the older full at 1 byte outvoted three honest hosts, and it was handed out
    over the newest."""
    index = still()
    index.set_ranking("g", RANKING)
    honest = infos(("snapshot-1000-H.tar.zst", 2000 * MB), ("snapshot-900-G.tar.zst", 2000 * MB))
    for n in range(3):
        index.apply(TargetKey("g", f"http://203.0.113.{n + 1}:8899", discovered=True), honest, T0)
    for n in range(4):
        liar = TargetKey("g", f"http://[2001:db8:0:1::{n + 1}]:8899", discovered=True)
        index.apply(liar, infos(("snapshot-900-G.tar.zst", 1)), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000


@pytest.mark.parametrize(
    ("targets", "voices"),
    [
        # discovered IPv6 nodes of one /48 (of one /64 or another): one site; of another
        # /48: another
        (
            ["+http://[2001:db8::1]:1", "+http://[2001:db8:0:1::1]:1", "+http://[2001:db8:1::1]:1"],
            ["2001:db8::/48", "2001:db8::/48", "2001:db8:1::/48"],
        ),
        # configured targets: each its own host, as the operator listed it
        (["http://[2001:db8::1]:1", "http://[2001:db8::2]:1"], ["2001:db8::1", "2001:db8::2"]),
        # a discovered node on a configured target's host is that target's voice, and so
        # is one on another address of its /48 (one site; it was a second voice)
        (
            ["http://[2001:db8::1]:1", "+http://[2001:db8::1]:2", "+http://[2001:db8::2]:1"],
            ["2001:db8::1", "2001:db8::1", "2001:db8::1"],
        ),
        # a configured IPv4 target's machine under its 6to4 and NAT64 forms: its voice
        (
            [
                "http://198.51.100.5:1",
                "+http://[2002:c633:6405::1]:1",
                "+http://[64:ff9b::c633:6405]:1",
            ],
            ["198.51.100.5", "198.51.100.5", "198.51.100.5"],
        ),
        # IPv4 and names: their hosts, discovered or not
        (
            ["+http://10.0.0.1:1", "+http://10.0.0.1:2", "http://a.example:1"],
            ["10.0.0.1", "10.0.0.1", "a.example"],
        ),
    ],
)
def test_whose_voice_each_source_is(targets: list[str], voices: list[str]) -> None:
    hosts = [voice_of(t.removeprefix("+")) for t in targets]
    discovered = {n for n, t in enumerate(targets) if t.startswith("+")}
    assert machine_voices(hosts, discovered) == voices


def test_the_listing_of_every_group_keeps_a_time_ranked_groups_order() -> None:
    # /v1/snapshots without ?group= listed a time-ranked group by slot: not the pair handed
    # out first, as it is with ?group=
    index = still()
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0)
    index.apply(
        FAST,
        infos(
            ("snapshot-900-G.tar.zst", 2000 * MB), ("incremental-snapshot-900-990-H.tar.zst", MB)
        ),
        T0,
    )
    index.record_transfer(SLOW, 20 * MB, 1.0)
    index.record_transfer(FAST, 200 * MB, 1.0)
    by_group = [s.info.slot for s in index.sources("g")]
    assert by_group[0] == 990  # the fast pair first
    assert [s.info.slot for s in index.sources(None)] == by_group


def test_the_copy_handed_out_is_the_one_the_prediction_priced() -> None:
    """One full on a source measured at 10 MB/s (quickest to answer a probe) and on one
    never measured: the pair is priced at the unmeasured one's ``assumed_throughput``
    (50 MB/s), so that one is handed out (an unmeasured source counted as the group's
    median handed out the 10 MB/s one under a prediction five times too short)."""
    index = still()
    index.set_ranking("g", RANKING)
    full = ("snapshot-1000-H.tar.zst", 1000 * MB)
    index.apply(SLOW, infos(full), T0, latency=0.01)
    index.apply(FAST, infos(full), T0, latency=0.2)
    index.record_transfer(SLOW, 10 * MB, 1.0)
    best = index.best_full("g")
    assert best is not None and best.key == FAST
    download = 1000 * MB / RANKING.assumed_throughput
    assert index.predicted(best) == pytest.approx(download + download / 0.4 / 22.5)
    [(_file, first), *_] = index.find_file("g", best.info.files[0].bare_name)
    assert first.key == FAST


def test_a_newer_incremental_on_the_held_full_is_handed_out_at_once() -> None:
    """The pair held is (F, incremental 990); the source now lists 1000 on F too: the same
    full, fewer slots to replay. Handed out at once (the margin on the pair kept the older
    one: F's download, the same in both, made 10% out of reach)."""
    index = still()
    index.set_ranking("g", RANKING)
    full = ("snapshot-900-H.tar.zst", 2000 * MB)
    older = ("incremental-snapshot-900-990-H.tar.zst", 50 * MB)
    index.apply(SLOW, infos(full, older), T0)
    incremental = index.best_incremental("g")
    assert incremental is not None and incremental.info.slot == 990
    index.apply(SLOW, infos(full, older, ("incremental-snapshot-900-1000-G.tar.zst", 50 * MB)), T0)
    incremental = index.best_incremental("g")
    assert incremental is not None and incremental.info.slot == 1000
    first = index.sources("g")[0]
    assert first.info.slot == 1000


def test_a_group_without_any_full_size_ranks_but_predicts_nothing() -> None:
    """No source gives the size of any full: nothing to price its download at. The group
    still ranks (by the rest of the prediction, the same for every full), and no pair says
    "running in ~0 s"."""
    index = still()
    index.set_ranking("g", RANKING)
    index.apply(SLOW, infos(("snapshot-1000-H.tar.zst", 0)), T0)
    index.apply(FAST, infos(("snapshot-900-G.tar.zst", 0)), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000
    assert [index.predicted(s) for s in index.sources("g")] == [None, None]
    # one full's size given: every full is priced (the others at the typical size)
    index.apply(FAST, infos(("snapshot-900-G.tar.zst", 2000 * MB)), T0)
    assert all(index.predicted(s) for s in index.sources("g"))


@pytest.mark.parametrize(
    ("offered", "held", "chosen"),
    [
        # Nothing offered: nothing.
        ([], None, None),
        ([], ("F", "a"), None),
        # Nothing held: the fastest pair, the first of equals.
        ([(("F", "a"), 100.0), (("G", None), 120.0)], None, ("F", "a")),
        ([(("F", "a"), 100.0), (("G", None), 100.0)], None, ("F", "a")),
        # The held full stays unless another full's best pair beats its best by the margin.
        ([(("G", None), 95.0), (("F", "a"), 100.0)], ("F", "a"), ("F", "a")),
        ([(("G", None), 85.0), (("F", "a"), 100.0)], ("F", "a"), ("G", None)),
        # On the held full its best pair, without a margin: a newer incremental on it.
        ([(("F", "b"), 99.0), (("F", "a"), 100.0)], ("F", "a"), ("F", "b")),
        ([(("G", None), 95.0), (("F", "b"), 99.0), (("F", "a"), 100.0)], ("F", "a"), ("F", "b")),
        # The held incremental dropped by its sources: the full stays, its best pair.
        ([(("G", None), 95.0), (("F", "b"), 100.0)], ("F", "a"), ("F", "b")),
        # The held full gone: the fastest.
        ([(("G", None), 95.0), (("H", "c"), 100.0)], ("F", "a"), ("G", None)),
        # Infinite against finite: the finite one, whatever the margin.
        ([(("G", None), 1e9), (("F", "a"), math.inf)], ("F", "a"), ("G", None)),
    ],
)
def test_the_full_moves_by_the_margin_and_the_pair_on_it_at_once(
    offered: list[tuple[PairKey, float]], held: PairKey | None, chosen: PairKey | None
) -> None:
    assert choose_pair(offered, held, 0.1) == chosen
