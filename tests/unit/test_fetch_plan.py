"""The plan of ``fetch`` (what to download) as tables: a pure function, no network."""

from __future__ import annotations

import pytest
from names import full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files
from tracker.core.snapshots import parse_archive_name as parse
from tracker.fetch.listing import RemoteFile, RemoteSnapshot
from tracker.fetch.plan import Plan, choose_incremental, plan


def remote_file(name: str) -> RemoteFile:
    parsed = parse(name)
    assert parsed is not None
    return RemoteFile(parsed, 10, (f"http://t/{name}",))


def offer(full_slot: int, incr_slot: int | None = None) -> RemoteSnapshot:
    """A snapshot on offer: the full at ``full_slot`` and, if given, an incremental on it."""
    incr = remote_file(incremental_name(full_slot, incr_slot)) if incr_slot else None
    return RemoteSnapshot(remote_file(full_name(full_slot)), incr)


def ledger(*archives: int | tuple[int, int]) -> list[SnapshotInfo]:
    """A ledger's archives: a slot is a full, (base, slot) an incremental."""
    files = []
    for archive in archives:
        name = full_name(archive) if isinstance(archive, int) else incremental_name(*archive)
        parsed = parse(name)
        assert parsed is not None
        files.append(SnapshotFile(name=parsed, file_name=name, size=1, path=f"/l/{name}"))
    return chains_from_files(files)


def summary(chosen: Plan) -> tuple[int | None, int | None, int, bool]:
    """(full slot, incremental slot, incremental_on, failed) of a plan."""
    return (
        chosen.full.name.slot if chosen.full else None,
        chosen.incremental.name.slot if chosen.incremental else None,
        chosen.incremental_on,
        chosen.failed,
    )


@pytest.mark.parametrize(
    ("held", "offered", "flags", "expected"),
    [
        # An empty ledger: the best full and its incremental.
        ((), [offer(1000, 1800)], {}, (1000, 1800, 0, False)),
        ((), [offer(1000)], {}, (1000, None, 0, False)),
        # Nothing complete on offer (an incremental without its full): exit 1.
        ((), [RemoteSnapshot(None, remote_file(incremental_name(1000, 1800)))], {}, None),
        ((), [], {}, None),
        # The best full is in the ledger: its incremental, however close (the finding:
        # within min_slots of the ledger's newest used to download nothing).
        ((1000,), [offer(1000, 1200)], {}, (None, 1200, 0, False)),
        ((1000, (1000, 1100)), [offer(1000, 1200)], {}, (None, 1200, 0, False)),
        ((1000, (1000, 1800)), [offer(1000, 1800)], {}, (None, None, 0, False)),
        ((1000, (1000, 1900)), [offer(1000, 1800)], {}, (None, None, 0, False)),
        ((1000,), [offer(1000)], {}, (None, None, 0, False)),
        # A full within min_slots of the offered one: ask for an incremental on it.
        ((900,), [offer(1000, 1800)], {}, (None, None, 900, False)),
        ((900, (900, 1700)), [offer(1000, 1800)], {}, (None, None, 900, False)),
        ((1100,), [offer(1000, 1800)], {}, (None, None, 1100, False)),  # ledger's is newer
        # An older full: the offered full and its incremental.
        ((100,), [offer(1000, 1800)], {}, (1000, 1800, 0, False)),
        ((100, (100, 1900)), [offer(1000, 1800)], {}, (1000, 1800, 0, False)),
        ((500,), [offer(1000, 1800)], {}, (1000, 1800, 0, False)),  # exactly min_slots off
        # The offered incremental is in the ledger already (its full deleted, or a half
        # copy dropped): the full alone, not the incremental a second time.
        (((1000, 1800),), [offer(1000, 1800)], {}, (1000, None, 0, False)),
        ((100, (1000, 1800)), [offer(1000, 1800)], {}, (1000, None, 0, False)),
        ((501,), [offer(1000, 1800)], {}, (None, None, 501, False)),
        # min_slots 0: only the offered full itself is recent enough.
        ((999,), [offer(1000, 1800)], {"min_slots": 0}, (1000, 1800, 0, False)),
        ((1000,), [offer(1000, 1800)], {"min_slots": 0}, (None, 1800, 0, False)),
        ((1000, (1000, 1800)), [offer(1000, 1800)], {"min_slots": 0}, (None, None, 0, False)),
        ((1100,), [offer(1000, 1800)], {"min_slots": 0}, (None, None, 1100, False)),
        # --incremental=false: the full alone, or nothing when it (or a recent one) is here.
        ((), [offer(1000, 1800)], {"want_incremental": False}, (1000, None, 0, False)),
        ((1000,), [offer(1000, 1800)], {"want_incremental": False}, (None, None, 0, False)),
        ((900,), [offer(1000, 1800)], {"want_incremental": False}, (None, None, 0, False)),
        # --full=false: an incremental on the ledger's own full, however old; none: exit 1.
        ((100,), [offer(1000, 1800)], {"want_full": False}, (None, None, 100, False)),
        ((1000,), [offer(1000, 1800)], {"want_full": False}, (None, 1800, 0, False)),
        ((), [offer(1000, 1800)], {"want_full": False}, None),
    ],
)
def test_plan(
    held: tuple[int | tuple[int, int], ...],
    offered: list[RemoteSnapshot],
    flags: dict[str, object],
    expected: tuple[int | None, int | None, int, bool] | None,
) -> None:
    settings: dict[str, object] = {"min_slots": 500, **flags}
    chosen = plan(ledger(*held), offered, **settings)  # type: ignore[arg-type]
    if expected is None:
        assert chosen.failed and chosen.reason and summary(chosen)[:3] == (None, None, 0)
        return
    assert summary(chosen) == expected
    if chosen.full is None and chosen.incremental is None and not chosen.incremental_on:
        assert chosen.reason  # "nothing to do" always says why


@pytest.mark.parametrize(
    ("held", "offered", "on_ledger_full", "expected"),
    [
        # The ledger's full at 900 (within 500 of the offered 1000): the incrementals on it.
        ((900,), [offer(1000, 1800)], [offer(900, 1700)], (None, 1700, 0, False)),
        # Only newer than the ledger's newest archive.
        ((900, (900, 1700)), [offer(1000, 1800)], [offer(900, 1700)], (None, None, 0, False)),
        ((900, (900, 1600)), [offer(1000, 1800)], [offer(900, 1700)], (None, 1700, 0, False)),
        # One on another full is never taken.
        ((900,), [offer(1000, 1800)], [offer(950, 1750)], (None, None, 0, True)),
        # None newer while the ledger is within min_slots of the best: up to date (exit 0);
        # while it is further behind: exit 1.
        ((900, (900, 1500)), [offer(1000, 1800)], [offer(900)], (None, None, 0, False)),
        ((900,), [offer(1000, 1800)], [offer(900)], (None, None, 0, True)),
        ((900,), [offer(1000, 1800)], [], (None, None, 0, True)),
        # --full=false on an old full: the best incremental on it.
        ((100,), [offer(1000, 1800)], [offer(100, 1700), offer(100, 1600)], (None, 1700, 0, False)),
    ],
)
def test_choose_incremental_on_the_ledgers_full(
    held: tuple[int | tuple[int, int], ...],
    offered: list[RemoteSnapshot],
    on_ledger_full: list[RemoteSnapshot],
    expected: tuple[int | None, int | None, int, bool],
) -> None:
    first = plan(ledger(*held), offered, min_slots=500, want_full=900 in held)
    assert first.incremental_on
    chosen = choose_incremental(first, on_ledger_full)
    assert summary(chosen) == expected
    assert chosen.incremental is not None or chosen.reason
