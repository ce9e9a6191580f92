"""tracker.cache.store on its own: name validation, the refresh life cycle, eviction, start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers_process import LOCK_HOLDER
from names import full_name, incremental_name

from tracker.cache.disk import DiskOps
from tracker.cache.refresh import WRITE_WINDOW, Refresh
from tracker.cache.store import LOCK_FILE, TEMP_PREFIX, Cache
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import CacheError, RequestError
from tracker.proof.accounts.budget import CACHE_TEMP, PREFIX

FULL = full_name(300)
OLDER = full_name(200)
NEWER = full_name(400)
INCR = incremental_name(300, 350)


def archive(name: str) -> ArchiveName:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return parsed


def make_cache(root: Path, free: int = 10**12) -> Cache:
    return Cache(str(root), ops=DiskOps(free_space=lambda _path: free))


@pytest.mark.parametrize(
    ("group", "status"),
    [
        ("..", 400),
        (".", 400),
        (".hidden", 400),
        ("a/b", 400),
        ("a\0b", 400),
        ("", 400),
        ("../etc", 400),
        ("x" * 200, 400),
    ],
)
def test_bad_group_names_are_refused(tmp_path: Path, group: str, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        make_cache(tmp_path).path_for(group, archive(FULL))
    assert caught.value.status == status


@pytest.mark.parametrize(
    "name",
    [
        "../" + FULL,
        FULL + "/..",
        "passwd",
        FULL.replace(".tar.zst", ".tar.zst\0"),
        FULL.replace("snapshot-300", "snapshot-0300"),  # not canonical
        TEMP_PREFIX + FULL,
        "",
    ],
)
def test_bad_file_names_are_404(tmp_path: Path, name: str) -> None:
    """A name that comes in as text (from the disk, a refresh's record) is parsed there."""
    with pytest.raises(RequestError) as caught:
        make_cache(tmp_path).lookup("mainnet", name)
    assert caught.value.status == 404


def test_valid_names_map_inside_the_root(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert cache.path_for("main-net_1.x", archive(FULL)) == str(tmp_path / "main-net_1.x" / FULL)


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "mainnet").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RequestError):
        make_cache(tmp_path / "root").path_for("mainnet", archive(FULL))


def test_relative_root_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Cache("relative/cache")


def test_startup_cleanup_removes_only_temp_files(tmp_path: Path) -> None:
    group = tmp_path / "root" / "mainnet"
    group.mkdir(parents=True)
    (group / f"{TEMP_PREFIX}{FULL}.abcd").write_bytes(b"x")
    (group / f"{TEMP_PREFIX}dir").mkdir()
    (group / FULL).write_bytes(b"full")
    (group / "notes.txt").write_bytes(b"keep")
    # the root's own: a learned state's temp file left by a kill before its rename
    (tmp_path / "root" / f"{TEMP_PREFIX}learned.json.x1y2").write_bytes(b"{")
    (tmp_path / "root" / "learned.json").write_bytes(b"{}")
    sizes: list[int] = []
    cache = Cache(str(tmp_path / "root"), on_size=sizes.append)
    assert cache.startup_cleanup() == 2
    assert sorted(p.name for p in group.iterdir()) == sorted(
        [f"{TEMP_PREFIX}dir", FULL, "notes.txt"]
    )
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [
        LOCK_FILE,  # this tracker's, held while it runs
        "learned.json",
        "mainnet",
    ]
    assert sizes == [4]


def test_a_directory_another_tracker_holds_is_left_untouched(tmp_path: Path) -> None:
    """Two trackers in one directory deleted each other's live temp files and renamed their
    copies over the other's: the second one touches nothing and says why."""
    group = tmp_path / "root" / "mainnet"
    group.mkdir(parents=True)
    live = group / f"{TEMP_PREFIX}{FULL}.abcd"  # the other tracker's refresh, being written
    live.write_bytes(b"x")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "root" / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        cache = Cache(str(tmp_path / "root"))
        assert cache.startup_cleanup() == 0
        assert live.exists()
        assert "another tracker uses this cache directory" in cache.in_use
        assert cache.problem == cache.in_use
        assert cache.check_directory() == cache.in_use  # the periodic check keeps saying so
    finally:
        holder.communicate(timeout=30)  # stdin closed: it ends, its lock gone with it
    # A cache of the same process in the directory (a reload's) shares this one's lock.
    first, second = Cache(str(tmp_path / "root")), Cache(str(tmp_path / "root"))
    assert first.startup_cleanup() == 1 and not first.in_use
    assert second.startup_cleanup() == 0 and not second.in_use


def test_a_link_where_the_proofs_spill_is_removed_not_followed(tmp_path: Path) -> None:
    # A link planted at .accounts-proof made every proof spill, and clean up, where it
    # pointed: another directory's old accounts-proof-* went at the start.
    outside = tmp_path / "outside"
    leftover = outside / f"{PREFIX}keepme"
    leftover.mkdir(parents=True)
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    root = tmp_path / "root"
    root.mkdir()
    (root / CACHE_TEMP).symlink_to(outside)
    Cache(str(root)).startup_cleanup()
    assert leftover.is_dir()
    assert not (root / CACHE_TEMP).is_symlink()


def test_startup_creates_a_missing_root(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "a" / "b")
    assert cache.startup_cleanup() == 0
    assert (tmp_path / "a" / "b").is_dir()


async def test_one_refresher_per_file(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    first = cache.begin_refresh("mainnet", FULL)
    assert first is not None
    assert cache.begin_refresh("mainnet", FULL) is None
    other = cache.begin_refresh("mainnet", INCR)
    assert other is not None
    assert cache.is_refreshing("mainnet", FULL)
    first.abort()
    first.abort()  # idempotent
    assert not cache.is_refreshing("mainnet", FULL)
    again = cache.begin_refresh("mainnet", FULL)
    assert again is not None and again is not first
    first.abort()  # a stale handle does not release the new refresher
    assert cache.is_refreshing("mainnet", FULL)
    again.abort()
    other.abort()


async def test_refresh_writes_commits_and_evicts_older_of_the_same_kind(tmp_path: Path) -> None:
    group = tmp_path / "mainnet"
    group.mkdir()
    (group / OLDER).write_bytes(b"older full")
    (group / INCR).write_bytes(b"incremental")
    cache = make_cache(tmp_path)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(6)
    [temp] = [p for p in group.iterdir() if p.name.startswith(TEMP_PREFIX)]
    await refresh.write(b"abc")
    await refresh.write(b"def")
    assert cache.lookup("mainnet", FULL) is None
    await refresh.commit(mtime=1_000_000.0)
    assert cache.lookup("mainnet", FULL) == str(group / FULL)
    assert sorted(p.name for p in group.iterdir()) == sorted([FULL, INCR])
    assert (group / FULL).read_bytes() == b"abcdef"
    assert os.stat(group / FULL).st_mtime == 1_000_000
    assert not temp.exists()
    assert not cache.is_refreshing("mainnet", FULL)
    with pytest.raises(CacheError):
        await refresh.commit()


async def test_commit_replaces_every_other_file_of_the_kind(tmp_path: Path) -> None:
    """The caller promotes only the current best: whatever else of its kind is stale, even a
    file with a higher slot (its sources are gone, or it would be the best)."""
    group = tmp_path / "mainnet"
    group.mkdir()
    (group / NEWER).write_bytes(b"newer full, no longer advertised")
    (group / OLDER).write_bytes(b"older full")
    (group / INCR).write_bytes(b"incremental")
    cache = make_cache(tmp_path)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"abc")
    await refresh.commit()
    assert sorted(p.name for p in group.iterdir()) == sorted([FULL, INCR])
    assert not cache.is_refreshing("mainnet", FULL)


async def test_abort_removes_the_temp_file(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"ab")
    refresh.abort()
    assert list((tmp_path / "mainnet").iterdir()) == []
    with pytest.raises(CacheError):
        await refresh.write(b"c")


async def test_free_space_counts_other_running_refreshes(tmp_path: Path) -> None:
    group = tmp_path / "mainnet"
    group.mkdir()
    (group / OLDER).write_bytes(b"older full")
    cache = make_cache(tmp_path, free=100)
    incr = cache.begin_refresh("mainnet", INCR)
    assert incr is not None
    assert await incr.open(60)  # 60 of the 100 free bytes are now promised
    full = cache.begin_refresh("mainnet", FULL)
    assert full is not None
    assert not await full.open(50)
    assert full.no_space
    assert not cache.is_refreshing("mainnet", FULL)
    # Stale files of the same kind went first; the running refresh is untouched.
    assert sorted(p.name for p in group.iterdir() if not p.name.startswith(".")) == []
    await incr.write(b"x" * 60)
    await incr.commit()
    assert cache.lookup("mainnet", INCR) is not None


async def test_unwritable_cache_directory_is_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "mainnet").write_bytes(b"a file where the group directory should be")
    cache = make_cache(tmp_path)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert not await refresh.open(3)
    assert not refresh.no_space
    assert not cache.is_refreshing("mainnet", FULL)


async def test_writes_overlap_up_to_the_window_and_count_in_order(tmp_path: Path) -> None:
    first_may_finish = threading.Event()
    finished: list[int] = []

    def write(fd: int, data: bytes | memoryview, offset: int) -> int:
        if offset == 0:
            first_may_finish.wait(10)  # the first write is slow (a page-cache stall, say)
        written = os.pwrite(fd, data, offset)
        finished.append(offset)
        return written

    cache = Cache(
        str(tmp_path / "cache"), ops=DiskOps(free_space=lambda _path: 10**12, write=write)
    )
    refresh = cache.begin_refresh("g", FULL)
    assert refresh is not None
    assert await refresh.open(10 * (WRITE_WINDOW + 1))
    for n in range(WRITE_WINDOW):
        with trio.fail_after(2):  # room in the window: each returns once its write started
            await refresh.write(bytes([n]) * 10)
    with trio.fail_after(5):
        while len(finished) < WRITE_WINDOW - 1:
            await trio.sleep(0.01)
    assert refresh.written == 0  # later writes are done, but the file has a hole at 0
    with trio.move_on_after(0.3) as waited:
        await refresh.write(b"x" * 10)  # the window is full: this waits for the first
    assert waited.cancelled_caught
    first_may_finish.set()
    await refresh.write(bytes([WRITE_WINDOW]) * 10)
    await refresh.flush()
    assert refresh.written == 10 * (WRITE_WINDOW + 1)
    data = b"".join(bytes([n]) * 10 for n in range(WRITE_WINDOW + 1))
    with open(refresh.temp, "rb") as temp:  # noqa: ASYNC230 (a few bytes, test only)
        assert temp.read() == data
    refresh.abort()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_descriptors_stay_flat_over_many_refreshes(tmp_path: Path) -> None:
    """Each writeback hint runs on a duplicate of the temp file's descriptor that it must
    close: refreshes of the same size repeat the same (descriptor, offset, length), and a
    memoised call would skip the close and pin every deleted archive on the disk."""
    piece = 256 * 1024
    ops = DiskOps(free_space=lambda _path: 10**12, writeback_every=4 * piece)
    cache = Cache(str(tmp_path / "cache"), ops=ops)
    baseline = open_descriptors()
    for n in range(20):
        refresh = cache.begin_refresh("g", full_name(1000 + n))
        assert refresh is not None
        assert await refresh.open(12 * piece)
        for _ in range(12):
            await refresh.write(b"x" * piece)
            await refresh.flush()  # the same offsets every time: writeback at 1 and 2 MiB
        await refresh.commit()
        with trio.fail_after(5):  # the writeback threads close their duplicates
            while open_descriptors() > baseline:
                await trio.sleep(0.01)
    assert os.listdir(tmp_path / "cache" / "g") == [full_name(1019)]


async def test_refreshes_and_files_list_what_the_cache_holds(tmp_path: Path) -> None:
    group = tmp_path / "mainnet"
    group.mkdir()
    (group / INCR).write_bytes(b"incremental")
    (group / f"{TEMP_PREFIX}{OLDER}.1234").write_bytes(b"a temp file")
    (group / "notes.txt").write_bytes(b"not an archive")
    cache = make_cache(tmp_path)
    assert cache.refreshes() == []
    before = time.time()
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    [waiting] = cache.refreshes()
    assert (waiting.group, waiting.name, waiting.size, waiting.written) == ("mainnet", FULL, 0, 0)
    assert before <= waiting.started_at <= time.time()
    assert waiting.readers is None  # the cache does not know who reads it
    assert await refresh.open(6)
    await refresh.write(b"abc")
    await refresh.flush()
    [running] = cache.refreshes()
    assert (running.size, running.written, running.started_at) == (6, 3, waiting.started_at)
    assert [(f.group, f.name, f.size) for f in cache.files()] == [("mainnet", INCR, 11)]
    await refresh.write(b"def")
    await refresh.commit()
    assert cache.refreshes() == []
    listed = cache.files()
    assert [(f.name, f.size) for f in listed] == [(INCR, 11), (FULL, 6)]  # by name
    assert listed[1].mtime == os.stat(group / FULL).st_mtime


def test_a_fifo_put_where_an_archive_was_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO in place of a cached or local archive (swapped in after the scan): its open is
    refused at once (OSError, as any file that is not one), not blocked until a writer comes,
    with the worker thread it runs in and whoever waits on it (cancellation cannot reach a
    thread)."""
    from tracker.cache.checked import open_copy

    path = tmp_path / full_name(100)
    os.mkfifo(path)
    ended: list[BaseException] = []

    def opening() -> None:
        try:
            trio.run(open_copy, str(path))
        except BaseException as exc:  # what ended it is the test's answer
            ended.append(exc)

    thread = threading.Thread(target=opening, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # blocked in open(2): a writer lets it go, the test fails
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail("the open of a FIFO waited for a writer")
    assert len(ended) == 1 and isinstance(ended[0], OSError)
    assert "not a regular file" in str(ended[0])


#: How long a hung open is held unless released: far beyond the test, so an open that gave
#: way before it did not wait for the mount.
HELD = 60.0


class _WatchedOpens:
    """``os.open`` of one path through the test (``then`` runs in the opening thread, after
    the real open, before the descriptor is handed back), and ``os.close`` of what it opened
    watched: :attr:`closed` is set once each is closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path, then: Any) -> None:
        self.opened: list[int] = []
        self.closed = threading.Event()
        real_open, real_close = os.open, os.close

        def opening(name: Any, flags: int, *args: Any) -> int:
            if os.fspath(name) != str(path):
                return real_open(name, flags, *args)
            then(before=True)
            fd = real_open(name, flags, *args)
            self.opened.append(fd)
            then(before=False)
            return fd

        def closing(fd: int) -> None:
            real_close(fd)
            if fd in self.opened:
                self.closed.set()

        monkeypatch.setattr(os, "open", opening)
        monkeypatch.setattr(os, "close", closing)


async def test_a_check_s_open_on_a_hung_mount_gives_way_and_its_late_descriptor_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open on a hung NFS or FUSE mount waits in the kernel: ``open_copy`` ran it in a
    thread cancellation could not reach, so a check whose directory hung held the local
    files' one-at-a-time turn (and the stop) for as long as the mount hung. It gives way at
    once now, and the descriptor its thread gets once the mount answers is closed there."""
    from tracker.cache.checked import open_copy

    path = tmp_path / full_name(100)
    path.write_bytes(b"archive")
    token = trio.lowlevel.current_trio_token()
    opening, answers, returned = trio.Event(), threading.Event(), threading.Event()

    def hang(*, before: bool) -> None:
        if before:  # the mount hangs under the open
            trio.from_thread.run_sync(opening.set, trio_token=token)
            answers.wait(HELD)
        else:
            returned.set()

    opens = _WatchedOpens(monkeypatch, path, hang)
    scope = trio.CancelScope()

    async def check() -> None:
        with scope:
            await open_copy(str(path))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check)
            await opening.wait()
            scope.cancel()
        assert not returned.is_set()  # it gave way while the open still hung
    finally:
        answers.set()  # the mount answers: the thread's open ends, and its descriptor
    assert await trio.to_thread.run_sync(opens.closed.wait, HELD)
    assert len(opens.opened) == 1


async def test_a_descriptor_opened_as_its_open_is_cancelled_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open ends as its caller is cancelled: trio drops the thread's answer (the
    descriptor in it), so whoever comes second, the thread or the cancelled caller, closes
    it (either order closes it once)."""
    from tracker.cache.checked import open_copy

    path = tmp_path / full_name(100)
    path.write_bytes(b"archive")
    token = trio.lowlevel.current_trio_token()
    scope = trio.CancelScope()

    def cancel(*, before: bool) -> None:
        if not before:  # opened: the caller is cancelled before the answer comes
            trio.from_thread.run_sync(scope.cancel, trio_token=token)

    opens = _WatchedOpens(monkeypatch, path, cancel)
    with scope:
        await open_copy(str(path))
    assert scope.cancelled_caught
    assert await trio.to_thread.run_sync(opens.closed.wait, HELD)


async def test_a_commit_whose_digest_cannot_be_written_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after the archive was renamed into place, before its digest and proof
    were written beside it: the refresh failed (CacheError), and the archive stayed,
    neither served (no digest) nor evicted (the cache knows only what it promoted), its
    space taken until a restart, every later refresh refused for want of it. It goes with
    what was written beside it."""
    import errno

    from tracker.cache import disk

    def full_disk(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = make_cache(tmp_path)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"abc")
    refresh.sha256 = "ab" * 32  # as a check that passed sets it
    monkeypatch.setattr(disk, "write_side", full_disk)
    with pytest.raises(CacheError, match="No space left"):
        await refresh.commit()
    assert os.listdir(tmp_path / "mainnet") == []
    assert cache.lookup("mainnet", FULL) is None
    assert not cache.is_refreshing("mainnet", FULL)


async def _write_and_commit(refresh: Refresh, data: bytes) -> None:
    """Write ``data`` (a failed write is raised by the next step: the commit's flush), then
    promote it as a copy whose check passed."""
    await refresh.write(data)
    refresh.sha256 = "ab" * 32  # as a check that passed sets it
    await refresh.commit()


@pytest.mark.parametrize("where", ["write", "commit"])
async def test_a_full_disk_under_a_refresh_is_its_groups_uncached_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ENOSPC from a write of the temp file, or from its commit: the refresh fails, and the
    group's uncached record (the status page, ``cache`` in ``/v1/targets``) says the disk
    ran out of room, not that a source failed; a later refresh that finds room clears it
    (docs/http-api.md#archive-answers)."""
    import errno

    from tracker.cache import disk

    def full_disk(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = Cache(str(tmp_path), ops=DiskOps(free_space=lambda _path: 10**12, write=full_disk))
    if where == "commit":
        cache = make_cache(tmp_path)
        monkeypatch.setattr(disk, "write_side", full_disk)
    refresh = cache.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(3)
    with pytest.raises(CacheError, match="No space left on device"):
        await _write_and_commit(refresh, b"abc")
    assert cache.uncached == {
        "mainnet": f"{FULL} not cached: the cache's disk ran out of room while it was "
        "written (No space left on device)"
    }
    refresh.abort()
    monkeypatch.undo()
    again = make_cache(tmp_path)
    again.uncached = dict(cache.uncached)
    refresh = again.begin_refresh("mainnet", FULL)
    assert refresh is not None
    assert await refresh.open(3)
    assert again.uncached == {}
    refresh.abort()
