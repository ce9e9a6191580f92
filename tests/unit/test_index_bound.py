"""What one target contributes is bounded, an unchanged answer changes nothing, and an
archive request is a lookup (docs/http-api.md, "Snapshot sources")."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from names import archive_hash, full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, parse_archive_name
from tracker.discovery.batches import ResultBatches
from tracker.ordering.index import Holdings, Index, TargetKey
from tracker.ordering.ranking import (
    MAX_FULLS,
    MAX_INFOS,
    bounded,
    copies_by_name,
    copies_of,
)

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _file(name: str, path: str = "") -> SnapshotFile:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return SnapshotFile(parsed, name, url=f"http://x/{name}", path=path)


def full(slot: int, seed: int | None = None) -> SnapshotInfo:
    f = _file(full_name(slot, archive_hash(seed) if seed is not None else None))
    return SnapshotInfo(slot, slot, f.name.hash, (f,))


def incr(base: int, slot: int) -> SnapshotInfo:
    f = _file(incremental_name(base, slot))
    return SnapshotInfo(slot, base, f.name.hash, (f, _file(full_name(base))))


def incr_alone(base: int, slot: int) -> SnapshotInfo:
    """An incremental listed without its full (an HTTP target holding only the chain's head)."""
    f = _file(incremental_name(base, slot))
    return SnapshotInfo(slot, base, f.name.hash, (f,))


def slots(infos: tuple[SnapshotInfo, ...]) -> list[tuple[int, int]]:
    return [(i.base_slot, i.slot) for i in infos]


# -- the bound: a pure function, as a table ---------------------------------------------------

FULLS_10 = [full(s) for s in range(100, 1100, 100)]
ON_ONE = [full(100), *(incr(100, 100 + n) for n in range(1, 101))]
ONE_SLOT = [full(100, seed=n) for n in range(100)]

CASES = [
    # (what the target answered, (base, slot) of what is kept, how many were dropped)
    ([full(100), incr(100, 150)], [(100, 100), (100, 150)], 0),
    ([full(100), full(100), incr(100, 150)], [(100, 100), (100, 150)], 0),  # once each
    (FULLS_10, [(s, s) for s in range(300, 1100, 100)], 2),  # the newest 8 fulls, in order
    # an incremental goes with its full: on one of the oldest, both go
    (
        [*FULLS_10, incr(100, 150), incr(1000, 1050)],
        [(s, s) for s in range(300, 1100, 100)] + [(1000, 1050)],
        3,
    ),
    # an incremental's base counts as a full slot though its full is not listed
    (
        [*(full(s) for s in range(200, 1000, 100)), incr_alone(1000, 1050)],
        [(s, s) for s in range(300, 1000, 100)] + [(1000, 1050)],
        1,
    ),
    # the fulls first, then the newest incrementals, 64 in all
    (ON_ONE, [(100, 100), *((100, 100 + n) for n in range(38, 101))], 100 + 1 - MAX_INFOS),
    (ONE_SLOT, [(100, 100)] * MAX_INFOS, 100 - MAX_INFOS),  # one slot, many hashes
]


@pytest.mark.parametrize(("answer", "kept", "dropped"), CASES)
def test_what_one_target_contributes_is_bounded(
    answer: list[SnapshotInfo], kept: list[tuple[int, int]], dropped: int
) -> None:
    infos, cut = bounded(answer)
    assert (slots(infos), cut) == (kept, dropped)
    assert len(infos) <= MAX_INFOS and len({i.base_slot for i in infos}) <= MAX_FULLS
    shuffled = list(answer)
    random.Random(7).shuffle(shuffled)  # the same answer in another order: the same snapshots
    assert set(bounded(shuffled)[0]) == set(infos)


def test_every_kind_of_source_is_bounded_where_it_enters_the_index_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tracker.scrape")
    index = Index()
    results = ResultBatches(index, lambda: None)
    key = TargetKey("g", "http://sidecar")
    answer = [full(s) for s in range(1, 10_001)]  # a sidecar's answer at its cap
    results.add(key, answer, T0, 0.1)
    assert index.count(key) == MAX_FULLS and index.trimmed(key) == 10_000 - MAX_FULLS
    assert [s.info.slot for s in index.sources("g")] == list(range(10_000, 9_992, -1))
    results.add(key, answer[1:], T0 + timedelta(seconds=60), 0.1)  # still cut: not again
    [record] = [r for r in caplog.records if r.getMessage() == "listing_trimmed"]
    assert record.tracker_fields == {  # type: ignore[attr-defined]
        "group": "g",
        "target": "http://sidecar",
        "kept": MAX_FULLS,
        "dropped": 10_000 - MAX_FULLS,
    }
    results.add(key, answer[-3:], T0, 0.1)  # fits: not trimmed any more
    assert index.trimmed(key) == 0 and index.count(key) == 3
    results.drop(key)
    assert index.trimmed(key) == 0


# -- an unchanged answer -------------------------------------------------------------------


def test_the_same_answer_again_is_taken_with_its_time() -> None:
    """A source's ``updated_at`` is when it was last scraped (the Go tracker's), also when
    it lists what it listed before."""
    index = Index()
    a = TargetKey("g", "a")
    index.apply(a, [full(100)], T0, 0.1)
    later = T0 + timedelta(seconds=60)
    index.apply(a, [full(100)], later, 0.3)
    [source] = index.sources("g")
    assert (source.updated_at, source.latency) == (later, 0.3)


# -- an archive request is a lookup ----------------------------------------------------------


class CountingFiles(tuple[SnapshotFile, ...]):
    """A chain that counts how often it is walked."""

    walked = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountingFiles.walked += 1
        return super().__iter__()


def test_an_archive_request_found_or_not_scans_no_source() -> None:
    index = Index()
    for t in range(20):
        answer = [
            SnapshotInfo(i.slot, i.base_slot, i.hash, CountingFiles(i.files))
            for i in [full(100), incr(100, 150), incr(100, 160)]
        ]
        index.apply(TargetKey("g", f"t{t}"), answer, T0 + timedelta(seconds=t))
    held = full_name(90)
    index.hold("cache", "g", [(held, 10, 1.0)])
    present, absent = incremental_name(100, 160), full_name(95)
    first = [index.find_file("g", present), index.find_file("g", held), index.held("g")]
    walked = CountingFiles.walked
    for _ in range(5):
        assert index.find_file("g", present) == first[0]
        assert index.find_file("g", absent) == []
        assert index.find_file("g", held) == first[1]
        assert index.held("g") == first[2]
    assert CountingFiles.walked == walked  # the map made with the ranking answered them all
    assert [s.key.target for _f, s in first[0]] == [f"t{t}" for t in range(19, -1, -1)]
    assert [f.bare_name for f, _s in first[1]] == [held]


# -- the lookups answer as the scans did --------------------------------------------------------

NAMES = [full_name(100), full_name(200), incremental_name(100, 150), incremental_name(200, 250)]
targets = st.lists(
    st.tuples(
        st.sets(st.integers(0, len(NAMES) - 1)),
        st.booleans(),  # a local copy (a path)
        st.one_of(st.none(), st.floats(0, 5)),  # latency
        st.integers(0, 3),  # seconds since its scrape
    ),
    max_size=6,
)


@given(targets)
def test_copies_by_name_answers_as_copies_of(
    given_targets: list[tuple[set[int], bool, float | None, int]],
) -> None:
    index = Index()
    for t, (chosen, local, latency, age) in enumerate(given_targets):
        files = [_file(NAMES[i], path=f"/l/{NAMES[i]}" if local else "") for i in sorted(chosen)]
        infos = [
            SnapshotInfo(f.name.slot, f.name.base_slot or f.name.slot, f.name.hash, (f,))
            for f in files
        ]
        index.apply(TargetKey("g", f"t{t}"), infos, T0 - timedelta(seconds=age), latency)
    sources = index.sources("g")
    copies = copies_by_name(sources)
    assert set(copies) == {f.bare_name for s in sources for f in s.info.files}
    for name in [*NAMES, full_name(300)]:
        assert copies.get(name, []) == copies_of(sources, name)
        assert index.find_file("g", name) == copies_of(sources, name)


def test_holdings_find_answers_as_of() -> None:
    holdings = Holdings()
    a, b = full_name(100), full_name(200)
    holdings.put("cache", "g", [(a, 1, 10.0), (b, 1, 30.0)])
    holdings.put("bucket", "g", [(a, 2, 20.0), (b, 2, 30.0)])  # a: newer here; b: a tie
    holdings.put("cache", "h", [(full_name(300), 1, 10.0)])
    for group in ("g", "h", "none"):
        for name in (a, b, full_name(300), full_name(400)):
            assert holdings.find(group, name) == holdings.of(group).get(name)
