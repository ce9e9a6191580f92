"""Which copies a head read proves next (redirect mode, docs/architecture.md "Proven
archives"): the decision as a table."""

from __future__ import annotations

from datetime import UTC, datetime

import base58
import pytest

from tracker.core.headreads import heads_due
from tracker.core.index import SnapshotSource, TargetKey
from tracker.core.snapshots import SnapshotFile, info_from_files, parse_archive_name

T0 = datetime(2026, 11, 25, tzinfo=UTC)
NAME = f"snapshot-100-{base58.b58encode(bytes(32)).decode()}.tar.zst"


def copy_of(target: str, *, local: bool = False) -> tuple[SnapshotFile, SnapshotSource]:
    parsed = parse_archive_name(NAME)
    assert parsed is not None
    file = (
        SnapshotFile(parsed, NAME, path=f"/ledger/{NAME}")
        if local
        else SnapshotFile(parsed, NAME, url=f"http://{target}/{NAME}")
    )
    return file, SnapshotSource(info_from_files([file]), TargetKey("g", target), T0)


A, B, C, D = (copy_of(t) for t in "abcd")
LOCAL = copy_of("ledger", local=True)


@pytest.mark.parametrize(
    ("sources", "done", "tried", "due"),
    [
        pytest.param([A, B], set(), {}, ["a", "b"], id="nothing read yet: each copy"),
        pytest.param([A, B, C, D], set(), {}, ["a", "b", "c"], id="the top three sources only"),
        pytest.param([A, B], {"a"}, {}, ["b"], id="a copy proven or refused is not read again"),
        pytest.param([A, B], set(), {"a": 50.0}, ["b"], id="a failed read waits its retry"),
        pytest.param([A, B], set(), {"a": 30.0}, ["a", "b"], id="and is tried after it"),
        pytest.param([LOCAL, A], set(), {}, ["a"], id="a local file is the check's, not a read's"),
    ],
)
def test_heads_due(
    sources: list[tuple[SnapshotFile, SnapshotSource]],
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
