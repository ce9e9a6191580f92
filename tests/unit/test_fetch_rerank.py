"""fetch's pricing of the tracker's pairs with its own ledger, and the JSON it reads."""

from __future__ import annotations

import math

import base58
import pytest

from tracker.config.schema import Ranking
from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.fetch.listing import RemoteFile, RemoteSnapshot, snapshots_from_json
from tracker.fetch.run import rerank

H = base58.b58encode(bytes(range(32))).decode()
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
