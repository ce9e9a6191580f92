"""What the tracker keeps for nodes still on an older full (tracker.ordering.keeping), what the
bucket's retention keeps, and what the index lists of what the tracker holds: tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from names import full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.objectstore.retention import superseded
from tracker.ordering.index import HELD_TARGET, Index, TargetKey
from tracker.ordering.keeping import cache_keeps, newest_incrementals, worth_keeping

F1, F2, F3 = full_name(100), full_name(200), full_name(300)
I1A, I1B = incremental_name(100, 110), incremental_name(100, 120)
I2A, I2B = incremental_name(200, 210), incremental_name(200, 220)
I3 = incremental_name(300, 310)


@pytest.mark.parametrize(
    ("names", "served", "kept"),
    [
        ([I1A, I1B, I2A], {100, 200}, {I1B, I2A}),
        ([I1A, I1B, I2A], {200}, {I2A}),
        ([I1A, I1B, I2A], set(), set()),
        ([I2B, I2A, F2, "notes.txt"], {200}, {I2B}),
        ([I1A], {100, 300}, {I1A}),
    ],
)
def test_the_newest_incremental_of_every_full_served(
    names: list[str], served: set[int], kept: set[str]
) -> None:
    assert newest_incrementals(names, served) == kept


@pytest.mark.parametrize(
    ("name", "held", "served", "worth"),
    [
        # an incremental on a full still served, nothing newer held on it: stored
        (I1A, [], {100, 200}, True),
        (I1B, [I1A, F1], {100}, True),
        # one newer held on its full: the cache would drop it at once
        (I1A, [I1B], {100}, False),
        # its full served by no one: nobody needs it
        (I1A, [], {200}, False),
        # a full that is not the best is never stored so (it would take the best's place)
        (F1, [], {100}, False),
        ("notes.txt", [], {100}, False),
    ],
)
def test_a_complete_incremental_no_longer_the_best_is_kept_while_its_full_is_served(
    name: str, held: list[str], served: set[int], worth: bool
) -> None:
    assert worth_keeping(name, held, served) is worth


@pytest.mark.parametrize(
    ("names", "promoted", "served", "kept"),
    [
        # A newer incremental on the same full: the older one goes.
        ([F1, I1A], I1B, {100}, {F1, I1B}),
        # The sources moved to F2 but still serve F1: its newest incremental stays.
        ([F1, I1B], I2A, {100, 200}, {F1, I1B, I2A}),
        # A new full: the cached older full goes, the incremental on it stays while F1 is
        # served by a source.
        ([F1, I1B, I2A], F2, {100, 200}, {F2, I1B, I2A}),
        # ... and goes with it once nobody serves F1.
        ([F1, I1B, I2A], F2, {200}, {F2, I2A}),
        # The cached full counts as served even when no source advertises it.
        ([F1, I1A], I1B, set(), {F1, I1B}),
        # Nothing served, no full cached: only what is promoted stays.
        ([I1A, I2A], I3, set(), {I3}),
    ],
)
def test_what_stays_in_the_cache(
    names: list[str], promoted: str, served: set[int], kept: set[str]
) -> None:
    assert cache_keeps(names, promoted, served) == kept


@pytest.mark.parametrize(
    ("served", "gone"),
    [
        (set(), [I2A, I1B, I1A]),
        ({100}, [I2A, I1A]),  # the newest on F1 stays
        ({100, 200}, [I1A]),
    ],
)
def test_bucket_retention_keeps_the_newest_incremental_of_every_full_served(
    served: set[int], gone: list[str]
) -> None:
    names = [F3, I3, I2A, I1A, I1B]
    assert superseded(names, full=False, keep_previous=0, served=served) == gone


def test_a_full_in_the_bucket_counts_as_served() -> None:
    names = [F1, F3, I3, I1A, I1B]
    assert superseded(names, full=False, keep_previous=0) == [I1A]


def _file(name: str, url: str = "") -> SnapshotFile:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return SnapshotFile(name=parsed, file_name=url or name, size=10, url=url)


def test_the_index_lists_what_it_holds_that_no_source_has() -> None:
    index = Index()
    now = datetime.now(UTC)
    files = [_file(name, f"http://127.0.0.1:1/{name}") for name in (F1, F2, I2A)]
    index.apply(TargetKey("g", "http://127.0.0.1:1"), chains_from_files(files), now)
    index.hold("cache", "g", [(I1B, 10, 1.0), (I2A, 10, 1.0), ("junk", 1, 1.0)])
    [held] = index.held("g")
    assert held.key == TargetKey("g", HELD_TARGET)
    assert held.info.files[0].bare_name == I1B
    assert (held.info.files[0].url, held.info.files[0].path) == ("", "")
    # listed as its chain down to the full at its base, which a source still lists
    assert [f.bare_name for f in held.info.files] == [I1B, F1]
    [(file, source)] = index.find_file("g", I1B)
    assert (file, source.key) == (held.info.files[0], held.key)
    assert index.served_fulls("g") == {100, 200}
    index.hold("bucket", "g", [(F3, 10, 2.0)])
    assert index.served_fulls("g") == {100, 200, 300}
    assert [s.info.slot for s in index.held(None)] == [300, 120]
    before = index.generation
    index.hold("bucket", "g", [(F3, 10, 2.0)])
    assert index.generation == before  # nothing changed: the listings stay
    index.hold("cache", "g", [])
    assert index.find_file("g", I1B) == []
