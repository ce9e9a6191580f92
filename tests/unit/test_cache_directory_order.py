"""The changes of one group's cache directory run one at a time (docs/proxy.md, "Proxy mode
and the disk cache"): promotions, the evictions that make room for a refresh, a recheck's
digest, the removal of a copy that fell short, and what each tells the registry of checked
copies. Each test holds one change in its worker thread at the point where another used to
slip in, starts the other, and looks at what the directory and the registry hold after.

What must not happen (the second change ending while the first is held) can only be waited
for a bounded time: those waits cost a second when the order holds, and catch the old
interleaving at once when it does not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from names import full_name, incremental_name

from tracker.cache import checked as checked_module
from tracker.cache import disk
from tracker.cache.checked import CheckedFiles
from tracker.cache.disk import DiskOps
from tracker.cache.store import Cache
from tracker.core.digests import Digests, Verified
from tracker.errors import ArchiveInvalid
from tracker.proof.cluster.lifting import lift_held
from tracker.proof.levels import Level, Proof
from tracker.proof.records.localcopies import identity_of


async def told() -> None:
    """The cache's size told (nothing to tell here)."""


GROUP = "mainnet"
OLD_FULL, NEW_FULL = full_name(300), full_name(400)
SHA_OLD, SHA_NEW = "a" * 64, "b" * 64
#: How long a change that must wait is given to end anyway.
MUST_NOT_END = 1.0


def verified_cache(root: Path, free: Callable[[str], int] = lambda _path: 10**12) -> Cache:
    """A cache at ``root`` that checks archives (as ``verify_archives`` does), its disk's
    free space as ``free`` says."""
    cache = Cache(str(root), ops=DiskOps(free_space=free))
    cache.verify_with(True, Digests())
    return cache


def held(cache: Cache) -> list[str]:
    """The names whose digests the cache's registry holds."""
    return sorted(name for group, name, _proof in cache.checked.held() if group == GROUP)


def files(directory: Path) -> list[str]:
    """Every file in ``directory`` (digest and proof files included)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def promote(cache: Cache, name: str, body: bytes, sha256: str) -> None:
    """Refresh ``name`` with ``body`` and promote it as a copy whose check passed."""
    refresh = cache.begin_refresh(GROUP, name)
    assert refresh is not None and await refresh.open(len(body))
    await refresh.write(body)
    refresh.sha256 = sha256  # what its check said
    await refresh.commit()


async def ended_meanwhile(change: Callable[[], Awaitable[object]], nursery: trio.Nursery) -> bool:
    """Start ``change`` and say whether it ended within :data:`MUST_NOT_END` seconds."""
    ended = trio.Event()

    async def run() -> None:
        await change()
        ended.set()

    nursery.start_soon(run)
    with trio.move_on_after(MUST_NOT_END):
        await ended.wait()
    return ended.is_set()


async def reached_in_time(reached: threading.Event) -> None:
    """Until ``reached`` is set in a worker thread; fails after 30 s."""
    assert await trio.to_thread.run_sync(reached.wait, 30.0)


def left_at_start(root: Path, body: bytes) -> Path:
    """A copy of :data:`OLD_FULL` (``body``) in the cache at ``root`` without a digest, as
    start-up finds one: it is checked again; its path."""
    (root / GROUP).mkdir()
    path = root / GROUP / OLD_FULL
    path.write_bytes(body)
    return path


async def promoted_during_recheck(
    cache: Cache,
    reached: threading.Event,
    let_go: threading.Event,
    body: bytes,
    name: str = OLD_FULL,
) -> bool:
    """Run start-up's check of the cache's unchecked copies until its worker thread sets
    ``reached`` (held there until ``let_go``), and meanwhile a refresh promoting ``body``
    as ``name`` (:data:`SHA_NEW`); whether that promotion ended while the check was held."""
    cache.startup_cleanup()
    root = Path(cache.root)

    async def located(group: str, archive: str) -> str:
        return str(root / group / archive)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.checked.recheck, located, cache.report_size)
            await reached_in_time(reached)
            overlapped = await ended_meanwhile(lambda: promote(cache, name, body, SHA_NEW), nursery)
            let_go.set()
    finally:
        let_go.set()
    return overlapped


async def test_promotions_of_a_group_run_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two refreshes of a group that end together: had both files been renamed in before
    either evicted, each would evict the other's new file and the group would hold
    neither. The second promotion waits for the first (rename, evictions, registry), then
    evicts it: the later one stays."""
    first_name, second_name = incremental_name(300, 350), incremental_name(400, 450)
    first_settling, let_first_go = threading.Event(), threading.Event()
    calls: list[str] = []

    def fsync_dir(directory: str) -> None:  # after each promotion's rename, before evicting
        calls.append(directory)
        if len(calls) == 1:
            first_settling.set()
            let_first_go.wait(timeout=30)

    monkeypatch.setattr(disk, "fsync_dir", fsync_dir)
    cache = Cache(str(tmp_path))  # no full served: an incremental stays only as the newest
    refreshes = []
    for name in (first_name, second_name):
        refresh = cache.begin_refresh(GROUP, name)
        assert refresh is not None and await refresh.open(3)
        await refresh.write(name[-3:].encode())
        refreshes.append(refresh)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refreshes[0].commit)
            await reached_in_time(first_settling)  # renamed in, not evicting
            overlapped = await ended_meanwhile(refreshes[1].commit, nursery)
            let_first_go.set()
    finally:
        let_first_go.set()
    group = tmp_path / GROUP
    assert files(group) == [second_name]
    assert cache.lookup(GROUP, second_name) == str(group / second_name)
    assert cache.lookup(GROUP, first_name) is None
    assert not overlapped


async def test_a_full_s_last_sync_holds_no_other_refresh_of_its_group(tmp_path: Path) -> None:
    """A full's promotion syncs its file (seconds for ~100 GB) before it takes the group's
    lock: an incremental's refresh of the group starts meanwhile, its client not held."""
    syncing, let_go = threading.Event(), threading.Event()

    def held_sync(fd: int) -> None:
        syncing.set()
        let_go.wait(timeout=30)
        os.fsync(fd)

    cache = Cache(str(tmp_path), ops=DiskOps(sync=held_sync))
    full = cache.begin_refresh(GROUP, NEW_FULL)
    assert full is not None and await full.open(3)
    await full.write(b"new")
    incremental = cache.begin_refresh(GROUP, incremental_name(400, 450))
    assert incremental is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(full.commit)
            await reached_in_time(syncing)
            with trio.fail_after(10):
                assert await incremental.open(3)  # not after the full's sync
            let_go.set()
    finally:
        let_go.set()
    incremental.abort()
    assert files(tmp_path / GROUP) == [NEW_FULL]


async def test_an_eviction_for_room_is_told_to_the_registry(tmp_path: Path) -> None:
    """A refresh short of room evicts the group's older full: its digest goes with it (it
    was held on, listed and signed for a file no longer there)."""
    room = [True]
    cache = verified_cache(tmp_path, lambda _path: 10**12 if room[0] else 0)
    await promote(cache, OLD_FULL, b"old", SHA_OLD)
    assert held(cache) == [OLD_FULL]
    group = tmp_path / GROUP
    room[0] = False  # short until the old full is gone
    cache.ops = DiskOps(free_space=lambda _path: 10**12 if not (group / OLD_FULL).exists() else 0)
    await promote(cache, NEW_FULL, b"new", SHA_NEW)  # its open evicts OLD_FULL for room
    assert [f for f in files(group) if not f.startswith(".")] == [NEW_FULL]
    assert held(cache) == [NEW_FULL]


async def test_an_eviction_for_room_waits_for_a_promotion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh short of room does not evict a full whose promotion is writing the files
    beside it: it evicts it once promoted, digest and all (not a digest file beside no
    archive, and a registry holding a copy that is gone)."""
    writing, let_go = threading.Event(), threading.Event()
    write_atomically = disk.write_atomically

    def held_write(path: str, data: bytes, *args: object, **kwargs: object) -> None:
        if path.endswith(f"{OLD_FULL}.sha256"):  # the promotion's digest, after its rename
            writing.set()
            let_go.wait(timeout=30)
        write_atomically(path, data, *args, **kwargs)

    monkeypatch.setattr(disk, "write_atomically", held_write)
    room = [True]
    cache = verified_cache(tmp_path, lambda _path: 10**12 if room[0] else 0)
    first = cache.begin_refresh(GROUP, OLD_FULL)
    assert first is not None and await first.open(3)
    await first.write(b"old")
    first.sha256 = SHA_OLD
    second = cache.begin_refresh(GROUP, NEW_FULL)
    assert second is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.commit)
            await reached_in_time(writing)
            room[0] = False  # the disk is short now: the second refresh evicts for room
            overlapped = await ended_meanwhile(lambda: second.open(3), nursery)
            let_go.set()
    finally:
        let_go.set()
    second.abort()
    assert (files(tmp_path / GROUP), held(cache)) == ([], [])
    assert not overlapped


async def test_an_orphan_s_group_configured_again_during_the_scan_keeps_its_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh short of room found a group's full orphaned (its group dropped by a
    reload); a reload configures the group again before the removal: the full stays."""
    testnet = tmp_path / "testnet"
    testnet.mkdir()
    (testnet / OLD_FULL).write_bytes(b"x" * 100)
    configured = {GROUP}
    scanned, let_go = threading.Event(), threading.Event()
    orphaned_archives = disk.orphaned_archives

    def held_scan(root: str, groups: object) -> list[disk.OrphanedArchive]:
        found = orphaned_archives(root, groups)
        scanned.set()
        let_go.wait(timeout=30)
        return found

    monkeypatch.setattr(disk, "orphaned_archives", held_scan)
    short = DiskOps(free_space=lambda _path: 10**12 if not (testnet / OLD_FULL).exists() else 50)
    cache = Cache(str(tmp_path), ops=short)
    cache.groups = lambda: frozenset(configured)
    refresh = cache.begin_refresh(GROUP, NEW_FULL)
    assert refresh is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh.open, 60)
            await reached_in_time(scanned)
            configured.add("testnet")  # the reload that brings the group back
            let_go.set()
    finally:
        let_go.set()
    refresh.abort()
    assert files(testnet) == [OLD_FULL]


class HeldVotes:
    """A cluster's votes answering ``answer`` once the test lets them."""

    def __init__(self, answer: Proof) -> None:
        self.answer = answer
        self.asked, self.answer_now = trio.Event(), trio.Event()

    def rpcs(self) -> tuple[str, ...]:
        return ("http://127.0.0.1:1/",)  # never asked: lift answers

    def of(self, _group: str) -> HeldVotes:
        return self

    async def lift(self, _slot: int, _proof: Proof) -> Proof:
        self.asked.set()
        await self.answer_now.wait()
        return self.answer


async def test_a_tally_asked_for_one_copy_is_not_applied_to_the_next(tmp_path: Path) -> None:
    """The votes were asked for the copy held at ``accounts``; meanwhile a refresh promoted
    another copy of the name, lifted by its own tally. The first tally (below the group's
    level) arrives: it removes nothing and leaves the new copy's proof as it is."""
    group = tmp_path / GROUP
    group.mkdir()
    path = group / OLD_FULL
    bank_hash = "1" * 43
    minority = Proof(Level.ACCOUNTS, "s", bank_hash, 0.3, "cluster not proven: 30%")
    votes = HeldVotes(minority)
    checked = CheckedFiles(True, Digests(), required=lambda _g: Level.CLUSTER, voter=votes)
    path.write_bytes(b"old")
    was = Proof(Level.ACCOUNTS, "s", bank_hash)
    checked.promoted(GROUP, OLD_FULL, Verified(SHA_OLD, was), identity_of(os.stat(path)), [])
    lifted = Proof(Level.CLUSTER, "s", bank_hash, 0.9)

    async def path_for(_group: str, archive: str) -> str:
        return str(group / archive)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lift_held, checked, path_for, told)
        await votes.asked.wait()
        (group / "new").write_bytes(b"new")
        os.replace(group / "new", path)  # a refresh's promotion, with its own tally
        checked.promoted(GROUP, OLD_FULL, Verified(SHA_NEW, lifted), identity_of(os.stat(path)), [])
        votes.answer_now.set()
    assert path.read_bytes() == b"new"
    assert checked.digest(GROUP, OLD_FULL) == SHA_NEW
    assert checked.servable(GROUP, OLD_FULL)


async def test_a_recheck_s_digest_never_lands_beside_a_copy_promoted_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up found a copy without a digest and checked it; while its digest was written,
    a refresh of the name (the copy was not servable yet) ended: the new copy's digest
    stands, held, on disk and after a restart, and a hit of it is served."""
    group, path = tmp_path / GROUP, left_at_start(tmp_path, b"old")

    async def check_opened(fd: int, *_args: object) -> Verified:
        os.close(fd)
        return Verified(SHA_OLD, Proof(Level.ACCOUNTS, "s", "1" * 43))

    writing, let_go = threading.Event(), threading.Event()
    write_checked = checked_module.write_checked

    def held_write(at: str, verified: Verified, name: str) -> None:
        writing.set()
        let_go.wait(timeout=30)
        write_checked(at, verified, name)

    monkeypatch.setattr(checked_module, "check_opened", check_opened)
    monkeypatch.setattr(checked_module, "write_checked", held_write)
    cache = verified_cache(tmp_path)
    overlapped = await promoted_during_recheck(cache, writing, let_go, b"new!")
    assert path.read_bytes() == b"new!"
    assert (group / f".{OLD_FULL}.sha256").read_text().split()[0] == SHA_NEW
    assert cache.digest(GROUP, OLD_FULL) == SHA_NEW
    assert cache.opened(GROUP, OLD_FULL, os.stat(path)) == SHA_NEW
    restarted = verified_cache(tmp_path)
    restarted.startup_cleanup()
    assert restarted.digest(GROUP, OLD_FULL) == SHA_NEW
    assert not overlapped


async def test_a_failed_copy_s_removal_never_takes_a_new_copy_s_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up's check of a copy failed and the copy is being removed (a 100 GB unlink
    takes seconds); a refresh of the name ends meanwhile: the new copy keeps its digest
    and proof files, servable after a restart."""
    group, path = tmp_path / GROUP, left_at_start(tmp_path, b"bad")

    async def check_opened(fd: int, *_args: object) -> Verified:
        os.close(fd)
        raise ArchiveInvalid("a bad copy")

    unlinked, let_go = threading.Event(), threading.Event()
    unlink = disk.unlink

    def held_unlink(at: str) -> bool:
        # the archive gone from its name (unlinked, or set aside), its sides not yet
        if at == str(group / f".{OLD_FULL}.sha256") and not unlinked.is_set():
            unlinked.set()
            let_go.wait(timeout=30)
        return unlink(at)

    monkeypatch.setattr(checked_module, "check_opened", check_opened)
    monkeypatch.setattr(disk, "unlink", held_unlink)
    cache = verified_cache(tmp_path)
    overlapped = await promoted_during_recheck(cache, unlinked, let_go, b"good")
    assert path.read_bytes() == b"good"
    assert files(group) == sorted([OLD_FULL, f".{OLD_FULL}.sha256", f".{OLD_FULL}.proof"])
    assert cache.digest(GROUP, OLD_FULL) == SHA_NEW
    restarted = verified_cache(tmp_path)
    restarted.startup_cleanup()
    assert restarted.servable(GROUP, OLD_FULL)
    assert not overlapped


def held_freeing(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> tuple[threading.Event, threading.Event]:
    """Hold the unlink of the bytes of the archive ``name`` (under its name, or the temp
    name it was set aside to) in its worker thread: (reached, let go)."""
    reached, let_go = threading.Event(), threading.Event()
    unlink = disk.unlink

    def held_unlink(at: str) -> bool:
        base = os.path.basename(at)
        if base == name or base.startswith(f"{disk.TEMP_PREFIX}{name}."):
            reached.set()
            let_go.wait(timeout=30)
        return unlink(at)

    monkeypatch.setattr(disk, "unlink", held_unlink)
    monkeypatch.setattr(checked_module, "unlink", held_unlink)
    return reached, let_go


async def test_an_evicted_full_s_bytes_are_freed_after_its_group_s_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new full's promotion evicts the old one (an unlink of ~100 GB takes seconds): an
    incremental of the group promoted meanwhile does not wait for it."""
    cache = verified_cache(tmp_path)
    await promote(cache, OLD_FULL, b"old", SHA_OLD)
    reached, let_go = held_freeing(monkeypatch, OLD_FULL)
    incremental = incremental_name(400, 450)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(promote, cache, NEW_FULL, b"new", SHA_NEW)
            await reached_in_time(reached)
            overlapped = await ended_meanwhile(
                lambda: promote(cache, incremental, b"inc", "c" * 64), nursery
            )
            let_go.set()
    finally:
        let_go.set()
    assert overlapped
    assert files(tmp_path / GROUP) == sorted(
        [
            NEW_FULL,
            incremental,
            *(f".{n}{s}" for n in (NEW_FULL, incremental) for s in (".sha256", ".proof")),
        ]
    )
    assert held(cache) == sorted([NEW_FULL, incremental])


async def test_a_failed_copy_s_bytes_are_freed_after_its_group_s_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up's check of a copy failed: while its bytes are freed, a refresh of another
    archive of the group is promoted."""
    path = left_at_start(tmp_path, b"bad")

    async def check_opened(fd: int, *_args: object) -> Verified:
        os.close(fd)
        raise ArchiveInvalid("a bad copy")

    monkeypatch.setattr(checked_module, "check_opened", check_opened)
    reached, let_go = held_freeing(monkeypatch, OLD_FULL)
    cache = verified_cache(tmp_path)
    assert await promoted_during_recheck(cache, reached, let_go, b"new", NEW_FULL)
    assert not path.exists()
    assert [f for f in files(tmp_path / GROUP) if not f.startswith(".")] == [NEW_FULL]
    assert not [f for f in files(tmp_path / GROUP) if f.startswith(disk.TEMP_PREFIX)]
