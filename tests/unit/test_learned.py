"""What the tracker learned as a document (tracker/learning/learned.py): clocks, merging, bounds."""

from __future__ import annotations

import json

import pytest

from tracker.errors import StateError
from tracker.learning.learned import (
    Learned,
    decode,
    encode,
    gather,
    merge,
    plausible,
    restore,
)
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import Rejection, Rejections

A = TargetKey("g", "http://a")
B = TargetKey("g", "http://b", discovered=True)


def test_a_restart_keeps_the_age_of_what_was_learned_across_different_clocks() -> None:
    index, held = Index(), Rejections()
    index.record_transfer(A, 100_000_000, 1.0, now=50.0)  # 100 MB/s measured at t=50
    held.reject(B, "snapshot-1-x.tar.zst", "bad tar", now=50.0, hold=600)
    # 10 s later on the first run's clock, wall clock 1_000_010: written.
    data = encode(gather(index, held, now=60.0, wall=1_000_010.0))
    # The next run's clock starts anew (7.0) 100 s of wall time later.
    index2, held2 = Index(), Rejections()
    restore(decode(data), index2, held2, now=7.0, wall=1_000_110.0)
    # Measured 110 s ago on either clock: the same decayed figure.
    assert index2.throughput(A, 7.0) == pytest.approx(index.throughput(A, 160.0))
    assert held2.rejected(B, "snapshot-1-x.tar.zst", 7.0) is not None
    # Held until t=650 of the first run = 510 s after the restart: run out at 7 + 490.
    assert held2.rejected(B, "snapshot-1-x.tar.zst", 7.0 + 489) is not None
    assert held2.rejected(B, "snapshot-1-x.tar.zst", 7.0 + 491) is None


def test_expired_rejections_are_not_kept_or_restored() -> None:
    held = Rejections()
    held.reject(A, "n", "r", now=0.0, hold=10)
    assert gather(Index(), held, now=11.0, wall=100.0).rejections == ()
    doc = Learned(rejections=(Rejection(A, "n", "r", until=50.0),))
    fresh = Rejections()
    restore(doc, Index(), fresh, now=0.0, wall=60.0)
    assert fresh.held() == []


def test_merge_keeps_the_newest_measurement_and_the_longest_rejection() -> None:
    one = Learned({A: (10.0, 100.0), B: (5.0, 300.0)}, (Rejection(A, "n", "old", 500.0),))
    two = Learned({A: (20.0, 200.0), B: (6.0, 250.0)}, (Rejection(A, "n", "new", 900.0),))
    merged = merge([one, two])
    assert merged.throughputs == {A: (20.0, 200.0), B: (5.0, 300.0)}
    assert [r.reason for r in merged.rejections] == ["new"]


def test_a_measurement_from_a_clock_ahead_counts_as_now() -> None:
    index = Index()
    restore(Learned({A: (10.0, 5_000.0)}), index, Rejections(), now=1.0, wall=1_000.0)
    assert index.throughput(A, 1.0) == 10.0


def test_what_no_replicas_clock_could_have_written_is_dropped() -> None:
    # A replica's 1 TB/s "measured" at 1e10 was taken for now at every read, beating this
    # tracker's own measurements for good; a rejection "until 1e10" was renewed to
    # reject_for at every read and never ended.
    wall = 1_000_000.0
    doc = Learned(
        {A: (1e12, 1e10), B: (5.0, wall + 10)},  # one far ahead, one a clock a bit ahead
        (Rejection(A, "n", "forever", 1e10), Rejection(B, "n", "held", wall + 500)),
        {A: (1e12, 1e10)},
    )
    kept = plausible(doc, wall=wall, longest_hold=600.0)
    assert kept.throughputs == {B: (5.0, wall + 10)} and kept.achieved == {}
    assert [r.reason for r in kept.rejections] == ["held"]
    assert kept.dropped == 3 and merge([kept, Learned(dropped=2)]).dropped == 5
    index = Index()
    index.record_transfer(A, 100_000_000, 1.0, now=1.0)
    restore(merge([kept]), index, Rejections(), now=1.0, wall=wall)
    assert index.throughput(A, 1.0) == pytest.approx(100_000_000)  # its own stays


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"version": 99}', b"\xff\xfe", b"[" * 100_000, b"1" * (5 << 20)],
)
def test_a_corrupt_document_is_a_state_error(data: bytes) -> None:
    with pytest.raises(StateError):
        decode(data)


def test_bad_entries_cost_only_themselves() -> None:
    good = {"group": "g", "target": "http://a", "discovered": False}
    doc = {
        "version": 1,
        "throughputs": [
            {**good, "bps": 7.0, "at": 1.0},
            {**good, "target": "http://c", "bps": "fast", "at": 1.0},
            {**good, "target": "http://d", "bps": -1, "at": 1.0},
            {"group": "g", "target": "x" * 5000, "discovered": False, "bps": 1, "at": 1},
            "junk",
        ],
        "rejections": [{**good, "name": "n", "reason": "r" * 1000, "until": 9.0}, {"until": 1}],
        "throughputs_extra": 1,
    }
    learned = decode(json.dumps(doc).encode())
    assert learned.throughputs == {A: (7.0, 1.0)}
    [held] = learned.rejections
    assert (held.key, held.name, len(held.reason), held.until) == (A, "n", 300, 9.0)


def test_another_replicas_rejections_never_push_out_this_trackers_own() -> None:
    """A document of as many rejections as the list holds (copies of no source this tracker
    knows): this tracker's own rejection stays (it was pushed out, its source used again)."""
    held = Rejections(max_entries=4)
    held.reject(A, "own", "bad tar", now=0.0, hold=600)
    hostile = tuple(
        Rejection(TargetKey("g", f"http://fake-{i}"), "n", "r", until=900.0) for i in range(4)
    )
    restore(Learned(rejections=hostile), Index(), held, now=0.0, wall=0.0)
    assert held.rejected(A, "own", 1.0) is not None
    assert len(held.held()) == 4


def test_measurements_from_elsewhere_are_bounded() -> None:
    """A replica writing new target names every minute: the throughputs taken from
    documents stop at MAX_RESTORED targets (they grew without bound, each re-rank reading
    them all); one measured here is still taken."""
    from tracker.ordering import sourcehistory

    index = Index()
    over = sourcehistory.MAX_RESTORED + 10
    fake = {TargetKey("g", f"http://fake-{i}"): (1e6, 0.0) for i in range(over)}
    restore(Learned(fake), index, Rejections(), now=0.0, wall=0.0)
    assert len(index.speeds.measurements("probed")) == sourcehistory.MAX_RESTORED
    index.record_transfer(A, 100_000_000, 1.0, now=1.0)
    assert index.throughput(A, 1.0) > 0


def _listed(index: Index, *keys: TargetKey) -> None:
    """Make ``keys`` targets the index has (listing nothing yet)."""
    from datetime import UTC, datetime

    for key in keys:
        index.apply(key, [], datetime(2026, 11, 29, tzinfo=UTC))


def test_a_document_written_is_never_too_big_to_be_read_back() -> None:
    """Texts of 1,024 characters in every entry of every list: 4,096 entries a list came to
    some 17 MB, a document this tracker refused at its next start and every replica
    skipped. What is written stays within the bytes a reader takes, the first entries
    kept."""
    from tracker.learning.learned import MAX_BYTES, MAX_THROUGHPUTS

    long = "x" * 1000
    keys = [TargetKey(long, f"http://{i}-{long}") for i in range(MAX_THROUGHPUTS)]
    speeds = {key: (1e6, 1000.0 - i) for i, key in enumerate(keys)}
    held = tuple(Rejection(key, long, long, until=5000.0) for key in keys)
    data = encode(Learned(speeds, held, speeds))
    assert len(data) <= MAX_BYTES
    read = decode(data)
    assert read.dropped == 0 and read.throughputs and read.rejections
    assert next(iter(read.throughputs)) == keys[0]


def test_this_trackers_own_measurements_are_written_before_anothers() -> None:
    """Another replica's document of as many measurements as a document holds, of targets
    this tracker does not have, all newer than this tracker's own: its own are written all
    the same (they were crowded out of its file and its bucket object, lost at a restart
    and never shared)."""
    from tracker.learning.learned import MAX_THROUGHPUTS

    index = Index()
    own = [TargetKey("g", f"http://own-{i}") for i in range(20)]
    _listed(index, *own)
    for key in own:
        index.record_transfer(key, 100_000_000, 1.0, now=40.0)
    junk = {TargetKey("g", f"http://junk-{i}"): (1e9, 1100.0) for i in range(MAX_THROUGHPUTS)}
    restore(Learned(junk, (), junk), index, Rejections(), now=100.0, wall=1100.0)
    written = decode(encode(gather(index, Rejections(), now=100.0, wall=1100.0)))
    assert set(own) <= set(written.achieved)


def test_a_measurement_of_a_listed_target_is_taken_however_many_others_were() -> None:
    """Documents of new target names every minute filled what is taken from elsewhere:
    an honest replica's measurement of a target this tracker has was refused for good."""
    from tracker.ordering import sourcehistory

    index = Index()
    fake = {
        TargetKey("g", f"http://fake-{i}"): (1e6, 0.0) for i in range(sourcehistory.MAX_RESTORED)
    }
    restore(Learned(fake), index, Rejections(), now=0.0, wall=0.0)
    _listed(index, A)
    restore(Learned({A: (5e6, 0.0)}), index, Rejections(), now=0.0, wall=0.0)
    assert index.speeds.measurements("probed")[A] == (5e6, 0.0)


def test_a_full_list_of_rejections_forgets_those_from_elsewhere_first() -> None:
    """Rejections taken from another replica fill the list but one: the next rejection made
    here pushed out this tracker's first one (the oldest), whose source was used again.
    What ran out goes first, then what was taken from elsewhere."""
    held = Rejections(max_entries=4)
    held.reject(A, "own", "bad tar", now=0.0, hold=2000)
    foreign = tuple(
        Rejection(TargetKey("g", f"http://other-{i}"), "n", "r", until=900.0) for i in range(3)
    )
    restore(Learned(rejections=foreign), Index(), held, now=0.0, wall=0.0)
    held.reject(B, "own too", "bad tar", now=1.0, hold=2000)
    assert held.rejected(A, "own", 2.0) is not None
    assert held.rejected(B, "own too", 2.0) is not None
    assert [r.key for r in held.held()][:2] == [A, B]  # what is written first
    held.reject(A, "another", "bad tar", now=950.0, hold=600)  # the foreign ran out: gone
    assert [r.name for r in held.held()] == ["own", "own too", "another"]


def test_a_rejection_held_for_centuries_is_read_back() -> None:
    """``reject_for`` may be as long as a duration goes (2562047h, "forever"): its end was
    written past the latest time a document holds, and every rejection was dropped when
    read back."""
    held = Rejections()
    held.reject(A, "n", "bad tar", now=10.0, hold=9.2e9)
    read = decode(encode(gather(Index(), held, now=20.0, wall=1_800_000_000.0)))
    assert read.dropped == 0 and len(read.rejections) == 1


#: A configured source whose URL carries credentials (userinfo and a query's key).
SECRET = TargetKey("g", "http://operator:pw-s3cret@rpc.example:8899/?api-key=k3y")


def test_a_sources_credentials_are_never_written_and_it_keeps_what_was_learned() -> None:
    index, held = Index(), Rejections()
    index.record_transfer(SECRET, 100_000_000, 1.0, now=50.0)
    why = "bad tar from http://u:pw-s3cret@h/"
    held.reject(SECRET, "snapshot-1-x.tar.zst", why, now=50.0, hold=600)
    data = encode(gather(index, held, now=60.0, wall=1_000_010.0))
    assert b"pw-s3cret" not in data and b"k3y" not in data
    assert json.loads(data)["achieved"][0]["target"] == "http://***@rpc.example:8899/?***"
    # After a restart the config names the source before the index lists it: the entries
    # are its own, not a stranger's of the masked name.
    index2, held2 = Index(), Rejections()
    restore(decode(data), index2, held2, now=7.0, wall=1_000_020.0, named=[SECRET])
    assert index2.throughput(SECRET, 7.0) == pytest.approx(index.throughput(SECRET, 70.0))
    assert held2.rejected(SECRET, "snapshot-1-x.tar.zst", 7.0) is not None


def test_a_document_holding_credentials_in_clear_is_taken_and_written_without_them() -> None:
    # As an older version wrote it: the target as configured.
    doc = {
        "version": 1,
        "throughputs": [
            {
                "group": "g",
                "target": SECRET.target,
                "discovered": False,
                "bps": 1e8,
                "at": 1_000_000.0,
            }
        ],
        "achieved": [],
        "rejections": [],
    }
    index = Index()
    restore(
        decode(json.dumps(doc).encode()),
        index,
        Rejections(),
        now=5.0,
        wall=1_000_000.0,
        named=[SECRET],
    )
    assert index.throughput(SECRET, 5.0) == pytest.approx(1e8, rel=0.01)
    assert b"pw-s3cret" not in encode(gather(index, Rejections(), now=5.0, wall=1_000_005.0))
