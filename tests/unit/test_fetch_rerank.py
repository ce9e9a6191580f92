"""fetch's pricing of the tracker's pairs with its own ledger, and the JSON it reads."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import base58
import pytest

from tracker.config.schema import Ranking
from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    TargetKey,
    chains_from_files,
    parse_archive_name,
)
from tracker.fetch.listing import RemoteFile, RemoteSnapshot, snapshots_from_json
from tracker.fetch.run import rerank
from tracker.ordering.index import Index
from tracker.web.wire import source_json

H = base58.b58encode(bytes(range(32))).decode()
G = base58.b58encode(bytes(range(1, 33))).decode()
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
MB = 1_000_000


def remote(name: str, size: int, speed: float = 0.0) -> RemoteFile:
    parsed = parse_archive_name(name.replace("H", H))
    assert parsed is not None
    return RemoteFile(parsed, size, (f"http://t/{parsed.file_name}",), throughput=speed)


def ledger(*names: str) -> list:  # type: ignore[type-arg]
    files = []
    for n in names:
        parsed = parse_archive_name(n.replace("H", H))
        assert parsed is not None
        files.append(SnapshotFile(parsed, parsed.file_name))
    return chains_from_files(files)


def unranked(s: RemoteSnapshot) -> RemoteSnapshot:
    """``s`` as a tracker ranking by slot lists it: no prediction."""
    return RemoteSnapshot(s.full, s.incremental, None)


NEW = RemoteSnapshot(remote("snapshot-1000-H.tar", 2000 * MB, 100 * MB), predicted=21.0)
OLD = RemoteSnapshot(
    remote("snapshot-500-H.tar", 2000 * MB, 100 * MB),
    remote("incremental-snapshot-500-990-H.tar", 100 * MB, 100 * MB),
    predicted=23.0,
)
OLDER = RemoteSnapshot(remote("snapshot-400-H.tar", 2000 * MB, 100 * MB), predicted=60.0)


@pytest.mark.parametrize(
    ("offered", "held", "expected"),
    [
        # Nothing in the ledger: the tracker's order (its first pair is within the margin).
        ([NEW, OLD, OLDER], (), [NEW, OLD, OLDER]),
        # The ledger holds the older full: its pair costs 1 s of download, not 21.
        ([NEW, OLD, OLDER], ("snapshot-500-H.tar",), [OLD, NEW, OLDER]),
        # A tracker ranking by slot (no predictions): its order, whatever the ledger holds.
        (
            [unranked(NEW), unranked(OLD)],
            ("snapshot-500-H.tar",),
            [unranked(NEW), unranked(OLD)],
        ),
        # An incremental listed without its full never wins.
        ([RemoteSnapshot(None, OLD.incremental, predicted=1.0), NEW], (), None),
    ],
)
def test_rerank(
    offered: list[RemoteSnapshot], held: tuple[str, ...], expected: list[RemoteSnapshot] | None
) -> None:
    ranked = rerank(offered, ledger(*held))
    if expected is None:
        assert ranked[0] is NEW
    else:
        assert ranked == expected


def test_predictions_and_throughputs_are_read_from_the_json() -> None:
    full = {"file_name": f"snapshot-1000-{H}.tar", "size": 10}
    incr = {"file_name": f"incremental-snapshot-1000-1100-{H}.tar", "size": 5}
    entries = [
        {"group": "g", "files": [incr, full], "predicted_seconds": 12.5, "throughput_bps": 7},
        {"group": "g", "files": [full], "predicted_seconds": None, "throughput_bps": 9},
        {"group": "g", "files": [full], "predicted_seconds": "x", "throughput_bps": -1},
    ]
    pair, alone = snapshots_from_json("http://t", entries)
    assert pair.predicted == 12.5 and alone.predicted == math.inf
    assert pair.full is not None and pair.full.throughput == 9
    assert pair.incremental is not None and pair.incremental.throughput == 7
    assert snapshots_from_json("http://t", entries[2:])[0].predicted is None


def test_the_replay_speed_prices_the_catch_up() -> None:
    """A held full far behind the tip: cheap to download, slow to catch up. A fast node takes
    it; a slow one (``--replay-slots-per-second 5``) downloads the newer full instead."""
    newer = RemoteSnapshot(remote("snapshot-1000-H.tar", 2000 * MB, 100 * MB), predicted=22.0)
    behind = RemoteSnapshot(
        remote("snapshot-500-H.tar", 2000 * MB, 100 * MB),
        remote("incremental-snapshot-500-600-H.tar", 100 * MB, 100 * MB),
        predicted=40.0,
    )
    held = ledger("snapshot-500-H.tar")
    assert rerank([newer, behind], held) == [behind, newer]
    slow = Ranking(replay_slots_per_second=5.0)
    assert rerank([newer, behind], held, slow) == [newer, behind]


def _tracker_listing(index: Index, group: str) -> list[dict[str, object]]:
    """``/v1/best_snapshots?group=`` as the tracker renders it (redirect mode)."""
    entries = [source_json(s, None, predicted=index.predicted(s)) for s in index.sources(group)]
    return [json.loads(json.dumps(e)) for e in entries]


def _infos(*named: tuple[str, int]) -> list[SnapshotInfo]:
    files = []
    for name, size in named:
        parsed = parse_archive_name(name.replace("H", H).replace("G", G))
        assert parsed is not None
        files.append(SnapshotFile(parsed, parsed.file_name, size=size, url=f"http://x/{name}"))
    return chains_from_files(files)


def test_fetch_keeps_the_trackers_choice_beside_a_source_never_measured() -> None:
    """Nothing in the ledger: fetch follows the tracker's choice. The newest full is on a
    source measured at 5 MB/s and on one never measured (the tracker prices it at the
    assumed 50 MB/s); fetch saw only the measured one's ``throughput_bps``, priced the
    newest at 5 MB/s and downloaded the older full."""
    index = Index(clock=lambda: 0.0)
    index.set_ranking("g", Ranking())
    a, b, c = (TargetKey("g", f"http://10.0.0.{n}:80") for n in (1, 2, 3))
    newest = ("snapshot-1000-H.tar.zst", 2000 * MB)
    index.apply(a, _infos(newest), T0, latency=0.01)
    index.apply(b, _infos(newest), T0, latency=0.02)
    index.apply(c, _infos(("snapshot-900-G.tar.zst", 2000 * MB)), T0, latency=0.03)
    index.record_transfer(a, 5 * MB, 1.0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000
    chosen = rerank(snapshots_from_json("http://t", _tracker_listing(index, "g")), [])
    assert chosen[0].full is not None and chosen[0].full.name.slot == 1000


def test_fetch_is_not_priced_out_by_one_source_listing_a_huge_size() -> None:
    """The tracker prices the newest full at its hosts' middle size; fetch took the first
    size listed (the liar's: it answers probes fastest) and went to the older full."""
    index = Index(clock=lambda: 0.0)
    index.set_ranking("g", Ranking())
    liar, h1, h2, c = (TargetKey("g", f"http://10.0.0.{n}:80") for n in (1, 2, 3, 4))
    index.apply(liar, _infos(("snapshot-1000-H.tar.zst", 2_000_000 * MB)), T0, latency=0.001)
    index.apply(h1, _infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0, latency=0.05)
    index.apply(h2, _infos(("snapshot-1000-H.tar.zst", 2000 * MB)), T0, latency=0.05)
    index.apply(c, _infos(("snapshot-900-G.tar.zst", 2000 * MB)), T0, latency=0.05)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000
    offered = snapshots_from_json("http://t", _tracker_listing(index, "g"))
    chosen = rerank(offered, [])
    assert chosen[0].full is not None and chosen[0].full.name.slot == 1000
    # the size a download is checked against is still the best source's, the one listed first
    assert chosen[0].full.size == 2_000_000 * MB and chosen[0].full.priced_size == 2000 * MB


def test_fetch_counts_a_discovered_machine_on_its_ipv6_64_once() -> None:
    """Three discovered nodes on three addresses of one IPv6 /64 list the newest full as
    huge, two nodes of other /64s its true size: the tracker counts the /64 as one machine
    (its price the honest size) and ranks the newest first; fetch counted three hosts
    against two, priced it huge and went to the older full."""
    index = Index(clock=lambda: 0.0)
    index.set_ranking("g", Ranking())
    newest, older = "snapshot-1000-H.tar.zst", "snapshot-900-G.tar.zst"
    liars = [TargetKey("g", f"http://[2001:db8:1::{n}]:8899", discovered=True) for n in (1, 2, 3)]
    honest = [TargetKey("g", f"http://[2001:db8:{n}::1]:8899", discovered=True) for n in (2, 3)]
    for key in liars:
        index.apply(key, _infos((newest, 2_000_000 * MB)), T0, latency=0.01)
    for key in honest:
        index.apply(key, _infos((newest, 2000 * MB)), T0, latency=0.05)
    for n in (1, 2):
        key = TargetKey("g", f"http://10.0.0.{n}:80")
        index.apply(key, _infos((older, 2000 * MB)), T0, latency=0.05)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000
    offered = snapshots_from_json("http://t", _tracker_listing(index, "g"))
    newest_full = next(s.full for s in offered if s.full and s.full.name.slot == 1000)
    assert newest_full.priced_size == 2000 * MB
    chosen = rerank(offered, [])
    assert chosen[0].full is not None and chosen[0].full.name.slot == 1000


def test_fetch_moves_to_a_newer_incremental_on_the_trackers_full() -> None:
    """The tracker hands out the best pair on its full: a listing whose first pair carries
    an older incremental (an older tracker) is not kept by the margin against a newer one
    on the same full."""
    full = remote("snapshot-900-H.tar", 2000 * MB, 100 * MB)
    older = RemoteSnapshot(
        full, remote("incremental-snapshot-900-990-H.tar", 50 * MB, 100 * MB), predicted=30.0
    )
    newer = RemoteSnapshot(
        full, remote("incremental-snapshot-900-1000-H.tar", 50 * MB, 100 * MB), predicted=29.0
    )
    assert rerank([older, newer], []) == [newer, older]


def test_fetch_prices_its_ledger_when_the_incrementals_carry_no_size() -> None:
    """Sources list the fulls' sizes and not the incrementals': the pairs with one carry no
    prediction. One pair without it made fetch take the listing as a tracker's that ranks
    by slot, and a ledger holding the older full no longer made that full's pair win."""
    index = Index(clock=lambda: 0.0)
    index.set_ranking("g", Ranking())
    a = TargetKey("g", "http://10.0.0.1:80")
    listed = _infos(
        ("snapshot-30000-H.tar.zst", 6000 * MB),
        ("incremental-snapshot-30000-30100-H.tar.zst", 0),
        ("snapshot-20000-G.tar.zst", 6000 * MB),
        ("incremental-snapshot-20000-29990-G.tar.zst", 0),
    )
    index.apply(a, listed, T0, latency=0.01)
    index.record_transfer(a, 100 * MB, 1.0)  # 60 s a full
    offered = snapshots_from_json("http://t", _tracker_listing(index, "g"))
    assert offered[0].full is not None and offered[0].full.name.slot == 30_000
    assert any(s.predicted is None for s in offered)
    [older] = [i for i in listed if i.slot == 20_000]
    chosen = rerank(offered, [older])
    assert chosen[0].full is not None and chosen[0].full.name.slot == 20_000
