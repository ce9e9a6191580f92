"""Which copies a head read proves next (redirect mode, docs/architecture.md "Proven
archives"): the decision as a table."""

from __future__ import annotations

from datetime import UTC, datetime

import base58
import pytest

from tracker.core.snapshots import SnapshotFile, info_from_files, parse_archive_name
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.proof.background.headreads import heads_due
from tracker.proof.background.heads import SharedStakes
from tracker.proof.levels import Level, Proof

T0 = datetime(2026, 11, 25, tzinfo=UTC)
HASH = base58.b58encode(bytes(32)).decode()
NAME = f"snapshot-100-{HASH}.tar.zst"
INC = f"incremental-snapshot-100-150-{HASH}.tar.zst"


def file_of(name: str, target: str, *, local: bool = False) -> SnapshotFile:
    parsed = parse_archive_name(name)
    assert parsed is not None
    if local:
        return SnapshotFile(parsed, name, path=f"/ledger/{name}")
    return SnapshotFile(parsed, name, url=f"http://{target}/{name}")


def copy_of(target: str, *, local: bool = False) -> SnapshotSource:
    info = info_from_files([file_of(NAME, target, local=local)])
    return SnapshotSource(info, TargetKey("g", target), T0)


def chain_of(target: str) -> SnapshotSource:
    info = info_from_files([file_of(INC, target), file_of(NAME, target)])
    return SnapshotSource(info, TargetKey("g", target), T0)


A, B, C, D = (copy_of(t) for t in "abcd")
LOCAL = copy_of("ledger", local=True)


@pytest.mark.parametrize(
    ("sources", "done", "tried", "due"),
    [
        pytest.param([A, B], set(), {}, ["a", "b"], id="nothing read yet: each copy"),
        pytest.param([A, B, C, D], set(), {}, ["a", "b", "c"], id="the top three sources only"),
        pytest.param([A, B], {"a"}, {}, ["b"], id="a copy proven or refused is not read again"),
        pytest.param(
            [A, B, C, D], {"a"}, {}, ["b", "c"], id="and counts among the three: d is not read"
        ),
        pytest.param([A, B], set(), {"a": 50.0}, ["b"], id="a failed read waits its retry"),
        pytest.param(
            [A, B, C, D],
            set(),
            {"a": 50.0},
            ["b", "c", "d"],
            id="meanwhile the next source is read in its place",
        ),
        pytest.param([A, B], set(), {"a": 30.0}, ["a", "b"], id="and is tried after it"),
        pytest.param([LOCAL, A], set(), {}, ["a"], id="a local file is the check's, not a read's"),
    ],
)
def test_heads_due(
    sources: list[SnapshotSource],
    done: set[str],
    tried: dict[str, float],
    due: list[str],
) -> None:
    found = heads_due(
        [sources],
        done={(TargetKey("g", t), NAME) for t in done},
        tried={(TargetKey("g", t), NAME): at for t, at in tried.items()},
        retry_after=60.0,
        now=100.0,
    )
    assert [read.key.target for read in found] == due
    assert all(read.file.bare_name == NAME for read in found)


@pytest.mark.parametrize(
    ("done", "due"),
    [
        pytest.param(
            set(), [("a", INC), ("a", NAME)], id="an incremental: its copy and its full's"
        ),
        pytest.param({("a", NAME)}, [("a", INC)], id="its full proven: its own copy only"),
        pytest.param({("a", INC), ("a", NAME)}, [], id="both proven: nothing"),
    ],
)
def test_an_incremental_is_read_with_its_targets_full(
    done: set[tuple[str, str]], due: list[tuple[str, str]]
) -> None:
    """An incremental ranks once its copy and its target's copy of its full are proven: both
    are read, each once even when the full is a candidate of its own too."""
    found = heads_due(
        [[copy_of("a")], [chain_of("a")]],
        done={(TargetKey("g", t), n) for t, n in done},
        tried={},
        retry_after=60.0,
        now=100.0,
    )
    got = sorted((read.key.target, read.file.bare_name) for read in found)
    assert got == sorted(due)


def test_equal_epoch_stakes_are_held_once_and_their_bytes_bounded() -> None:
    # Each head read decodes its own copy of the epoch's stakes (~180 KB on mainnet); the
    # copies of one archive from hundreds of sources hold one object between them.
    shared = SharedStakes(most=3000)
    first = Proof(Level.MANIFEST, epoch_stakes=bytes(range(200)) * 10)
    again = Proof(Level.MANIFEST, epoch_stakes=bytes(range(200)) * 10)
    assert first.epoch_stakes is not again.epoch_stakes
    assert shared.shared(first) == (first, [])
    kept, gone = shared.shared(again)
    assert kept.epoch_stakes is first.epoch_stakes and gone == []
    none = Proof(Level.MANIFEST)
    assert shared.shared(none) == (none, [])
    # Forged copies each bring their own: past the bytes held, the least recently seen go
    other = Proof(Level.MANIFEST, epoch_stakes=b"\1" * 900)
    assert shared.shared(other) == (other, [])  # 2,900 bytes held
    third = Proof(Level.MANIFEST, epoch_stakes=b"\2" * 900)
    assert shared.shared(third) == (third, [first.epoch_stakes])
    late = Proof(Level.MANIFEST, epoch_stakes=bytes(range(200)) * 10)
    assert shared.shared(late)[0] is late  # not held any more: its own again
