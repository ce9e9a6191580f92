"""The archives of a cache directory no configured group names (a group a reload or a new
config dropped): which of them a refresh short of room removes (a pure choice, as a table),
where they are looked for, how they go, and how the cache names them (docs/proxy.md,
"Orphaned archives")."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from names import full_name, incremental_name

from tracker.cache.checked import CheckedFiles
from tracker.cache.disk import (
    DiskOps,
    OrphanedArchive,
    digest_path,
    orphaned_archives,
    orphans_to_remove,
    remove_orphaned,
)
from tracker.cache.store import LOCK_FILE, Cache
from tracker.proof.accounts.budget import CACHE_TEMP


async def told() -> None:
    """The cache's size told (nothing to tell here)."""


FULL = full_name(300)
OLDER = full_name(200)
OLDEST = full_name(100)
INCR = incremental_name(200, 250)


def orphan(name: str, size: int, mtime: float, group: str = "testnet") -> OrphanedArchive:
    return OrphanedArchive(group, name, size, mtime)


A = orphan("a", 10, 1.0)
B = orphan("b", 20, 2.0)
C = orphan("c", 30, 3.0)
#: As old as A: the group, then the name, decides.
A_TOO = orphan("a", 10, 1.0, group="devnet")


@pytest.mark.parametrize(
    ("orphans", "shortfall", "removed"),
    [
        ([A, B, C], 0, []),  # room enough: nothing goes
        ([A, B, C], -5, []),
        ([], 10, []),  # nothing orphaned
        ([C, B, A], 1, [A]),  # the oldest first, whatever the order found
        ([C, B, A], 10, [A]),  # exactly its bytes
        ([C, B, A], 11, [A, B]),  # only as many as make the room
        ([C, B, A], 30, [A, B]),
        ([C, B, A], 31, [A, B, C]),
        ([C, B, A], 60, [A, B, C]),
        ([C, B, A], 61, []),  # all of them would not do: none goes
        ([B, A_TOO, A], 10, [A_TOO]),  # equal times: by group, then name
        ([B, A_TOO, A], 20, [A_TOO, A]),
    ],
)
def test_the_oldest_orphans_go_and_only_as_many_as_make_the_room(
    orphans: list[OrphanedArchive], shortfall: int, removed: list[OrphanedArchive]
) -> None:
    assert orphans_to_remove(orphans, shortfall) == removed


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The fields of every ``event`` line logged so far."""
    return [getattr(r, "tracker_fields", {}) for r in caplog.records if r.msg == event]


def put(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_only_archives_of_real_group_directories_no_group_names_are_orphaned(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "cache", tmp_path / "outside"
    put(root / "mainnet" / FULL, b"configured", 100)
    put(root / "testnet" / OLDER, b"orphaned", 200)
    put(root / "testnet" / INCR, b"orphaned incremental", 300)
    put(root / "testnet" / f".{OLDER}.sha256", b"digest")  # beside an archive, not one
    put(root / "testnet" / f".tmp-{FULL}.0a1b", b"partial")  # a refresh's temp file
    put(root / "testnet" / "notes.txt", b"not an archive")
    put(root / CACHE_TEMP / FULL, b"a dot directory is never a group's")
    put(root / "lost+found" / FULL, b"no group can have this name")
    put(outside / FULL, b"linked to, never followed")
    (root / "linked").symlink_to(outside)
    (root / "testnet" / FULL).symlink_to(outside / FULL)  # a link is no archive
    put(root / LOCK_FILE, b"")
    found = orphaned_archives(str(root), {"mainnet"})
    assert sorted(found, key=lambda o: o.name) == sorted(
        [
            orphan(OLDER, len(b"orphaned"), 200),
            orphan(INCR, len(b"orphaned incremental"), 300),
        ],
        key=lambda o: o.name,
    )
    assert orphaned_archives(str(root), {"mainnet", "testnet"}) == []


def test_an_orphan_goes_with_its_side_files_and_an_emptied_directory_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    archive = put(root / "testnet" / OLDER, b"orphaned", 200)
    for suffix in (".sha256", ".proof", ".stakes"):
        put(Path(digest_path(str(archive), suffix)), b"side")
    kept = put(root / "devnet" / OLDEST, b"orphaned too", 100)
    put(root / "devnet" / "notes.txt", b"not ours: the directory stays")
    chosen = [orphan(OLDEST, 12, 100, group="devnet"), orphan(OLDER, 8, 200)]
    assert remove_orphaned(str(root), chosen, f"mainnet/{FULL}") == chosen
    assert not (root / "testnet").exists()  # left empty: removed
    assert not kept.exists()
    assert sorted(p.name for p in (root / "devnet").iterdir()) == ["notes.txt"]
    assert logged(caplog, "cache_orphan_removed") == [
        {"group": "devnet", "file": OLDEST, "size": 12, "refresh": f"mainnet/{FULL}"},
        {"group": "testnet", "file": OLDER, "size": 8, "refresh": f"mainnet/{FULL}"},
    ]


def test_a_directory_replaced_by_a_link_since_the_scan_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "cache", tmp_path / "outside"
    root.mkdir()
    target = put(outside / OLDER, b"not the cache's")
    (root / "testnet").symlink_to(outside)
    assert remove_orphaned(str(root), [orphan(OLDER, 15, 200)], f"mainnet/{FULL}") == []
    assert target.exists()


def used_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root``."""
    return sum(
        os.lstat(os.path.join(top, name)).st_size
        for top, _dirs, names in os.walk(root)
        for name in names
        if os.path.isfile(os.path.join(top, name)) and not os.path.islink(os.path.join(top, name))
    )


def disk_of(root: Path, capacity: int) -> Callable[[str], int]:
    """The free space of a disk of ``capacity`` bytes holding the cache at ``root`` alone."""
    return lambda _path: capacity - used_bytes(root)


def configured(cache: Cache, *groups: str) -> Cache:
    cache.groups = lambda: groups
    return cache


async def test_a_refresh_short_of_room_removes_the_oldest_orphan_it_needs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two orphans, either of which makes the room: the older one goes, with its digest;
    an older archive of another configured group stays."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    oldest = put(root / "testnet" / OLDEST, b"o" * 100, 100)
    put(Path(digest_path(str(oldest))), b"digest")
    put(root / "testnet" / OLDER, b"n" * 100, 200)
    configured_older = put(root / "devnet" / full_name(50), b"c" * 100, 50)
    capacity = used_bytes(root) + 60
    cache = configured(
        Cache(str(root), ops=DiskOps(free_space=disk_of(root, capacity))), "mainnet", "devnet"
    )
    cache.startup_cleanup()
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(100)
    await refresh.write(b"f" * 100)
    await refresh.commit()
    assert cache.lookup("mainnet", FULL) is not None
    # the oldest orphan went with its digest; the newer one and the configured group's stay
    assert [p.name for p in (root / "testnet").iterdir()] == [OLDER]
    assert configured_older.exists()
    assert cache.uncached == {}
    assert [f["file"] for f in logged(caplog, "cache_orphan_removed")] == [OLDEST]


async def test_orphans_that_cannot_make_the_room_all_stay(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    archive = put(root / "testnet" / OLDER, b"o" * 10, 100)
    capacity = used_bytes(root) + 50
    cache = configured(Cache(str(root), ops=DiskOps(free_space=disk_of(root, capacity))), "mainnet")
    cache.startup_cleanup()
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert not await refresh.open(100)  # 50 free and 10 orphaned: 100 needed
    assert refresh.no_space and archive.exists()
    assert "streamed uncached" in cache.uncached["mainnet"]


async def test_a_cache_that_does_not_know_the_groups_removes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    archive = put(root / "testnet" / OLDER, b"o" * 100, 100)
    cache = Cache(str(root), ops=DiskOps(free_space=disk_of(root, used_bytes(root) + 50)))
    cache.startup_cleanup()
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert not await refresh.open(100)
    assert archive.exists()


def test_start_up_names_each_orphaned_directory_once_per_change_of_the_groups(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    put(root / "mainnet" / FULL, b"configured")
    put(root / "testnet" / OLDER, b"o" * 7)
    put(root / "testnet" / INCR, b"i" * 5)
    (root / "empty").mkdir()  # no archive: nothing to say
    groups = ["mainnet"]
    cache = Cache(str(root))
    cache.groups = lambda: groups
    cache.startup_cleanup()
    directory = os.path.join(os.path.realpath(root), "testnet")
    assert logged(caplog, "cache_orphaned") == [
        {"group": "testnet", "dir": directory, "archives": 2, "size": 12}
    ]
    cache.report_orphaned()  # the same groups: said already
    assert len(logged(caplog, "cache_orphaned")) == 1
    groups.append("testnet")  # a reload brought it back: nothing is orphaned
    cache.report_orphaned()
    assert len(logged(caplog, "cache_orphaned")) == 1
    groups.remove("testnet")  # dropped again
    cache.report_orphaned()
    assert len(logged(caplog, "cache_orphaned")) == 2


async def test_the_start_up_check_of_an_orphaned_archive_waits_for_its_group(
    tmp_path: Path,
) -> None:
    """Found at start-up without a digest, an orphaned group's archive is not checked (a
    whole archive read for a group nobody asks) until a reload configures its group again:
    then it is, as any copy found unchecked."""
    group_dir = tmp_path / "testnet"
    group_dir.mkdir()
    (group_dir / FULL).write_bytes(b"not an archive")
    checked = CheckedFiles(verify=True)
    checked.restore(str(group_dir), "testnet", list(os.scandir(group_dir)))
    configured = {"mainnet"}
    checked.configured = lambda group: group in configured
    asked: list[tuple[str, str]] = []

    async def path_for(group: str, name: str) -> str:
        asked.append((group, name))
        return str(tmp_path / group / name)

    await checked.recheck(path_for, told)
    assert asked == []
    assert (group_dir / FULL).exists()
    configured.add("testnet")  # a reload configures it again
    await checked.recheck(path_for, told)
    assert asked == [("testnet", FULL)]
    assert not (group_dir / FULL).exists()  # checked: not an archive, removed
