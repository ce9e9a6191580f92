"""Local-directory probe on a real directory: archives listed, everything else skipped."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers_sources import HASHES

from tracker.config.schema import Config, LocalTargets, TargetGroup
from tracker.discovery.local import LocalListing, readable_archives, scan_local
from tracker.discovery.scrape import Scraper
from tracker.errors import ProbeError
from tracker.net.limits import exhausted
from tracker.ordering.index import Index

FULL = f"snapshot-100-{HASHES[0]}.tar.zst"
INCR = f"incremental-snapshot-100-150-{HASHES[1]}.tar.zst"
OLD = f"snapshot-50-{HASHES[2]}.tar.bz2"
T_FULL, T_INCR = 1_700_000_000, 1_700_000_600.25


def write(path: Path, size: int, mtime: float = T_FULL) -> None:
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


def test_archives_are_listed_chained_with_size_and_mtime(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    write(ledger / FULL, 10)
    write(ledger / INCR, 3, T_INCR)
    write(ledger / OLD, 7)

    incr, full, old = scan_local(str(ledger))

    assert (incr.slot, incr.base_slot, incr.size) == (150, 100, 13)
    assert [f.file_name for f in incr.files] == [INCR, FULL]
    assert incr.files[0].path == str(ledger / INCR)
    assert incr.files[0].mod_time == datetime.fromtimestamp(T_INCR, UTC)
    assert incr.files[0].mod_time.tzinfo == UTC
    assert (full.slot, full.base_slot, full.files[0].size) == (100, 100, 10)
    assert (old.slot, old.files[0].name.ext) == (50, ".tar.bz2")
    assert all(f.url == "" for info in (incr, full, old) for f in info.files)


def test_everything_but_regular_archive_files_is_skipped(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    write(ledger / FULL, 10)
    write(ledger / f".{FULL}", 1)  # hidden (the cache's temp files look like this)
    write(ledger / f"{FULL}.tmp", 1)  # not an archive name
    write(ledger / "snapshot.tar.bz2", 1)
    (ledger / f"tmp-snapshot-archive-{FULL}").mkdir()  # the validator's work directory
    as_dir = ledger / f"snapshot-200-{HASHES[3]}.tar.zst"
    as_dir.mkdir()  # a directory with an archive's name
    write(as_dir / f"snapshot-300-{HASHES[4]}.tar.zst", 1)  # not recursive
    outside = tmp_path / f"snapshot-400-{HASHES[5]}.tar.zst"
    write(outside, 1)
    (ledger / outside.name).symlink_to(outside)  # a link out of the directory
    (ledger / f"snapshot-500-{HASHES[6]}.tar.zst").symlink_to(ledger / FULL)
    (ledger / f"snapshot-600-{HASHES[7]}.tar.zst").symlink_to(tmp_path / "dangling")

    assert [[f.file_name for f in info.files] for info in scan_local(str(ledger))] == [[FULL]]


def test_relative_directory_gives_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ledger").mkdir()
    write(tmp_path / "ledger" / FULL, 1)
    monkeypatch.chdir(tmp_path)
    (info,) = scan_local("ledger")
    assert info.files[0].path == str(tmp_path / "ledger" / FULL)


def test_empty_directory_is_up_with_no_snapshots(tmp_path: Path) -> None:
    assert scan_local(str(tmp_path)) == []


def test_a_directory_past_the_entry_bound_is_a_probe_error_not_a_long_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local target pointed at a directory of hundreds of thousands of files read and
    stat'ed them all, past the scrape's timeout (its thread held on, round after round):
    past ``MAX_ENTRIES`` it is an error of that target, at once."""
    import tracker.discovery.local as local

    monkeypatch.setattr(local, "MAX_ENTRIES", 5)
    for n in range(5):
        (tmp_path / f"other-{n}").write_bytes(b"")
    assert scan_local(str(tmp_path)) == []  # at the bound: listed
    write(tmp_path / FULL, 1)
    with pytest.raises(ProbeError, match="holds more than 5 entries: not a ledger"):
        scan_local(str(tmp_path))


def test_missing_or_unlistable_directory_is_a_probe_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=f"^cannot list {tmp_path}/nope: No such file or"):
        scan_local(str(tmp_path / "nope"))
    write(tmp_path / FULL, 1)
    with pytest.raises(ProbeError, match=r"Not a directory$"):
        scan_local(str(tmp_path / FULL))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory_is_a_probe_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        with pytest.raises(ProbeError, match=r"Permission denied$"):
            scan_local(str(locked))
    finally:
        locked.chmod(0o700)


def test_what_the_tracker_can_open_is_listed_as_scanned(tmp_path: Path) -> None:
    """Each archive is opened once after the scan (the permissions a tracker run as another
    user than agave's meets: tests/integration/test_local_unreadable.py): when each opens,
    the scan as it was; one gone, or swapped for a link, since the scan is left out unnamed
    (not unreadable), and the chains are made again without it."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    write(ledger / FULL, 10)
    write(ledger / INCR, 3, T_INCR)
    write(ledger / OLD, 7)
    scanned = scan_local(str(ledger))
    assert readable_archives(scanned) == LocalListing(scanned)
    (ledger / FULL).unlink()
    (ledger / OLD).unlink()
    (ledger / OLD).symlink_to(ledger / INCR)
    listing = readable_archives(scanned)
    assert listing.unreadable == ()
    [info] = listing.snapshots
    assert [f.file_name for f in info.files] == [INCR]  # no full under it now


@contextmanager
def out_of_descriptors() -> Iterator[None]:
    """No descriptor left in this process for the block (a real EMFILE on any open), as when
    downloads have taken them all; everything is given back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    try:
        with contextlib.suppress(OSError):
            while len(held) < 10_000:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_scan_that_runs_out_of_descriptors_keeps_the_last_result(tmp_path: Path) -> None:
    """Too many open files is this process's trouble, not the directory's: the target keeps
    its snapshots and its health (it was dropped after max_target_failures such scans)."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    write(ledger / FULL, 10)
    group = TargetGroup(group="g", local_targets=LocalTargets((str(ledger),)))
    index = Index()
    scraper = Scraper(Config(target_groups=(group,), max_target_failures=1), index)
    try:
        await scraper.scrape_round()
        assert [f.file_name for f, _ in index.find_file("g", FULL)] == [FULL]
        with out_of_descriptors():
            with pytest.raises(ProbeError, match=r"Too many open files$"):
                scan_local(str(ledger))
            await scraper.scrape_round()
        (health,) = scraper.health.values()
        assert "Too many open files" in health.last_error
        assert (health.health, health.failures) == ("up", 0)
        assert [f.file_name for f, _ in index.find_file("g", FULL)] == [FULL]
    finally:
        await scraper.aclose()


def test_an_open_short_of_descriptors_is_the_process_s_trouble(tmp_path: Path) -> None:
    """An archive that cannot be opened for want of a descriptor is not taken for one the
    tracker may not read: the probe fails as a shortage (deferred: the target keeps its
    snapshots), nothing is left out."""
    write(tmp_path / FULL, 1)
    scanned = scan_local(str(tmp_path))
    with out_of_descriptors(), pytest.raises(ProbeError, match=r"Too many open files$") as err:
        readable_archives(scanned)
    assert exhausted(err.value)


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ProbeError("cannot list /x: No such file or directory"), False),
        (_caused(ProbeError("cannot list /x"), OSError(errno.EMFILE, "Too many open files")), True),
        (_caused(ProbeError("cannot list /x"), OSError(errno.EACCES, "Permission denied")), False),
        (OSError(errno.ENFILE, "Too many open files in system"), True),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
        # trio's connect: one OSError for all addresses, each attempt's in a group.
        (
            _caused(
                OSError("all attempts failed"),
                ExceptionGroup("attempts", [ConnectionRefusedError(), OSError(errno.EMFILE, "")]),
            ),
            True,
        ),
        (_caused(OSError("all attempts failed"), ExceptionGroup("a", [TimeoutError()])), False),
    ],
)
def test_running_out_of_descriptors_is_told_from_a_failing_target(
    error: BaseException, expected: bool
) -> None:
    assert exhausted(error) is expected
