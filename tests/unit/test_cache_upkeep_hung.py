"""The disk cache's upkeep when its directory cannot be looked at (a hung mount: the look,
off the event loop, gave up with RequestError 503; docs/configuration.md, "Paths on a hung
mount"), and when another copy is promoted while a look is out: what is forgotten, what is
checked again, what waits for the next round. The looks are the test's coroutines; the
registry is the real :class:`~tracker.cache.checked.CheckedFiles`."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from names import full_name

import tracker.cache.refresh as refresh_module
import tracker.cache.store as store
from tracker.cache.checked import CheckedFiles
from tracker.cache.disk import TEMP_PREFIX, DiskOps
from tracker.cache.refresh import Refresh
from tracker.cache.store import Cache, CacheContents
from tracker.core.digests import Digests, Verified
from tracker.errors import RequestError
from tracker.proof.levels import Level, Proof
from tracker.proof.records.localcopies import FileIdentity, identity_of


async def told() -> None:
    """The cache's size told (nothing to tell here)."""


GROUP = "mainnet"
NAME = full_name(100)
SHA = "a" * 64
HUNG = RequestError(503, "cannot read the cache directory /c: no answer (a hung mount?)")


def holding(tmp_path: Path) -> tuple[CheckedFiles, Path]:
    """A registry holding one checked copy of :data:`NAME`, and its file."""
    path = tmp_path / NAME
    path.write_bytes(b"copy")
    checked = CheckedFiles(True, Digests(), required=lambda _g: Level.STRUCTURE)
    proof = Proof(Level.STRUCTURE, "s", "")
    checked.promoted(GROUP, NAME, Verified(SHA, proof), identity_of(os.stat(path)), [])
    return checked, path


async def test_a_hung_directory_forgets_nothing_and_is_looked_at_next_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checked, _path = holding(tmp_path)
    looks: list[list[str]] = []

    async def hung(group: str, names: list[str]) -> dict[str, FileIdentity | None]:
        looks.append(names)
        raise HUNG

    await checked.confirm_held(hung)
    assert looks == [[NAME]]
    assert checked.digest(GROUP, NAME) == SHA  # not taken for a copy gone
    assert [r.msg for r in caplog.records].count("cache_unreadable") == 1

    async def answers(group: str, names: list[str]) -> dict[str, FileIdentity | None]:
        return {NAME: None}  # the mount answers: the copy is gone

    await checked.confirm_held(answers)
    assert checked.digest(GROUP, NAME) is None


@pytest.mark.parametrize(
    ("now", "forgotten"),
    [
        pytest.param("same", False, id="the same file: kept"),
        pytest.param("other", True, id="another file under its name: forgotten"),
        pytest.param("gone", True, id="none under its name: forgotten"),
        pytest.param("refused", False, id="its name may not be read: left as it is"),
    ],
)
async def test_what_a_look_of_the_held_copies_forgets(
    tmp_path: Path, now: str, forgotten: bool
) -> None:
    checked, path = holding(tmp_path)
    identity = identity_of(os.stat(path))
    found: dict[str, dict[str, FileIdentity | None]] = {
        "same": {NAME: identity},
        "other": {NAME: (identity[0], identity[1] + 1, *identity[2:])},
        "gone": {NAME: None},
        "refused": {},
    }

    async def identities(group: str, names: list[str]) -> dict[str, FileIdentity | None]:
        return found[now]

    await checked.confirm_held(identities)
    assert (checked.digest(GROUP, NAME) is None) is forgotten


@pytest.mark.parametrize("saw", ["the old file", "the new file"])
async def test_a_copy_promoted_while_a_digest_route_looks_is_not_taken_for_a_replaced_one(
    tmp_path: Path, saw: str
) -> None:
    """The digest route's look sees the old file (just before the rename) or the new one
    (renamed in just before its promotion is told); the promotion is told before the look
    returns: the new copy stays a hit, never forgotten nor checked again for nothing (a
    whole archive read)."""
    checked, path = holding(tmp_path)
    old = identity_of(os.stat(path))
    (tmp_path / "new").write_bytes(b"new copy!")
    os.replace(tmp_path / "new", path)
    placed = identity_of(os.stat(path))
    new = Proof(Level.STRUCTURE, "s", "")

    async def meanwhile() -> FileIdentity | None:
        checked.promoted(GROUP, NAME, Verified("b" * 64, new), placed, [])
        await trio.lowlevel.checkpoint()
        return old if saw == "the old file" else placed

    await checked.confirm(GROUP, NAME, meanwhile)
    assert checked.digest(GROUP, NAME) == "b" * 64
    assert checked.servable(GROUP, NAME)

    async def hung() -> FileIdentity | None:
        raise HUNG

    with pytest.raises(RequestError) as refused:  # the route answers 503
        await checked.confirm(GROUP, NAME, hung)
    assert refused.value.status == 503
    assert checked.digest(GROUP, NAME) == "b" * 64


async def test_a_recheck_whose_directory_hangs_waits_for_it(tmp_path: Path) -> None:
    """A copy start-up found unchecked whose path cannot be looked at for a hung directory
    stays unchecked and is checked once it answers; one whose name may not be read (a
    symlink planted: 400) is dropped, as before."""
    group_dir = tmp_path / GROUP
    group_dir.mkdir()
    (group_dir / NAME).write_bytes(b"not an archive")
    checked = CheckedFiles(verify=True)
    checked.restore(str(group_dir), GROUP, list(os.scandir(group_dir)))
    answer: RequestError | None = HUNG

    async def path_for(group: str, name: str) -> str:
        if answer is not None:
            raise answer
        return str(tmp_path / group / name)

    await checked.recheck(path_for, told)
    assert (group_dir / NAME).exists()
    answer = None  # the mount answers: checked (not an archive: removed)
    await checked.recheck(path_for, told)
    assert not (group_dir / NAME).exists()

    (group_dir / NAME).write_bytes(b"not an archive")
    checked.restore(str(group_dir), GROUP, list(os.scandir(group_dir)))
    answer = RequestError(400, "a symlink in the cache directory")
    await checked.recheck(path_for, told)
    answer = None
    await checked.recheck(path_for, told)  # dropped: nothing left to check
    assert (group_dir / NAME).exists()


# -- a refresh's end and the cache's listings, on a real cache -----------------------------


def a_cache(root: Path) -> Cache:
    """A cache of ``root`` with room for anything."""
    (root / GROUP).mkdir(exist_ok=True)
    return Cache(str(root), ops=DiskOps(free_space=lambda _path: 10**12))


async def test_a_refresh_s_end_never_looks_at_the_directory_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promoted refresh looks at nothing more (its listing ran in the directory's
    thread); one that could not create its temp file looks why in that thread, and the
    status page shows it."""
    looked_on_loop: list[bool] = []
    why = ["cache directory is not writable"]

    def look(root: str) -> str:
        looked_on_loop.append(threading.current_thread() is threading.main_thread())
        return why[0]

    monkeypatch.setattr(store, "unusable_directory", look)
    cache = a_cache(tmp_path)
    refresh = cache.begin_refresh(GROUP, NAME)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"abc")
    await refresh.commit()
    assert looked_on_loop == [] and (tmp_path / GROUP / NAME).exists()

    real_open = os.open

    def unwritable(path: str, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(path).startswith(TEMP_PREFIX):  # the refresh's temp file
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", unwritable)
    refresh = cache.begin_refresh(GROUP, full_name(200))
    assert refresh is not None
    assert not await refresh.open(3)
    assert looked_on_loop == [False]
    assert cache.problem == why[0]
    assert not cache.is_refreshing(GROUP, full_name(200))
    monkeypatch.setattr(os, "open", real_open)  # writable again: the next refresh says so
    refresh = cache.begin_refresh(GROUP, full_name(300))
    assert refresh is not None
    assert await refresh.open(3)
    assert cache.problem == "" and looked_on_loop == [False]
    refresh.abort()


async def test_an_older_listing_is_never_told_over_a_newer_one(tmp_path: Path) -> None:
    """Two listings in flight (two refreshes ending): the one begun first answers last and
    is not told over the newer (it would list an evicted file, not the promoted one)."""
    cache = a_cache(tmp_path)
    told: list[list[str]] = []
    cache.on_files = lambda files: told.append([f.name for f in files])
    listed_first, answer_first = threading.Event(), threading.Event()
    listings = [0]
    measure = cache.measure

    def slow_first() -> CacheContents:
        listings[0] += 1
        first = listings[0] == 1
        contents = measure()
        if first:  # a slow listing (a large directory on NFS): done, answers late
            listed_first.set()
            answer_first.wait(10)
        return contents

    cache.measure = slow_first  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.report_size)  # lists nothing, answers last
            await trio.to_thread.run_sync(listed_first.wait, 10)
            (tmp_path / GROUP / NAME).write_bytes(b"promoted")
            await cache.report_size()
            answer_first.set()
    finally:
        answer_first.set()
    assert told == [[NAME]]
    reloads = cache.listing_begun()  # a reload's listing in a thread, begun before ...
    cache.tell(cache.measure())  # ... a listing told meanwhile
    cache.tell(CacheContents(None, []), reloads)
    assert told == [[NAME], [NAME]]


async def test_a_listing_with_no_thread_to_be_had_still_ends_the_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads parked on a hung mount pile up: a listing that gets none is the directory
    not answering (503, told again later), and the refresh is released all the same."""
    cache = a_cache(tmp_path)
    refresh = cache.begin_refresh(GROUP, NAME)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"abc")

    given_way = store.given_way

    async def no_thread(*args: Any, **kwargs: Any) -> object:
        if kwargs["name"] == "cache promotion":  # its thread was had: the listings' not
            return await given_way(*args, **kwargs)
        raise TimeoutError(errno.EAGAIN, "cache directory: no thread to be had")

    monkeypatch.setattr(store, "given_way", no_thread)
    await refresh.commit()
    assert not cache.is_refreshing(GROUP, NAME)
    assert "cache_unreadable" in [r.msg for r in caplog.records]
    with pytest.raises(RequestError) as refused:  # a digest route's look: 503, not a 500
        await cache.identities(GROUP, [NAME])
    assert refused.value.status == 503


async def refreshed(cache: Cache, name: str) -> Refresh:
    """A refresh of ``name`` with its temp file made and written."""
    refresh = cache.begin_refresh(GROUP, name)
    assert refresh is not None
    assert await refresh.open(3)
    await refresh.write(b"abc")
    await refresh.flush()
    return refresh


async def test_a_failed_refresh_s_temp_file_is_removed_off_the_event_loop_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that ends unpromoted (a failed fill, a stale copy) removes its temp file in
    a thread of its own (a partial full's unlink takes seconds); on a hung mount the refresh
    is released and ended after the bound all the same, and the file goes once the mount
    answers."""
    monkeypatch.setattr(refresh_module, "HUNG_AFTER", 0.2)
    cache = a_cache(tmp_path)
    removed_on_loop: list[bool] = []
    answers, removed = threading.Event(), threading.Event()
    unlink = refresh_module.unlink

    def hung_unlink(path: str) -> bool:
        removed_on_loop.append(threading.current_thread() is threading.main_thread())
        answers.wait(10)
        gone = unlink(path)
        removed.set()
        return gone

    monkeypatch.setattr(refresh_module, "unlink", hung_unlink)
    refresh = await refreshed(cache, NAME)
    temp = tmp_path / GROUP / refresh.temp.rsplit("/", 1)[1]
    try:
        await refresh.end()  # returns after the bound, the mount still hung
        assert refresh.ended.is_set() and not cache.is_refreshing(GROUP, NAME)
        assert removed_on_loop == [False] and temp.exists()
    finally:
        answers.set()
    await trio.to_thread.run_sync(removed.wait, 10)
    assert not temp.exists()
    await refresh.end()  # idempotent
    assert removed_on_loop == [False]


async def test_a_promotion_s_evictions_never_hold_it_past_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evicted full's bytes are freed in a thread of its own: on a hung mount the
    commit returns after the bound (never shielded: a stop is not held), the newer copy
    promoted and listed; the bytes go once the mount answers."""
    monkeypatch.setattr(refresh_module, "HUNG_AFTER", 0.2)
    cache = a_cache(tmp_path)
    told: list[list[str]] = []
    cache.on_files = lambda files: told.append([f.name for f in files])
    await (await refreshed(cache, NAME)).commit()
    answers, freed = threading.Event(), threading.Event()
    free_aside = refresh_module.free_aside
    freed_on_loop: list[bool] = []

    def hung_free(paths: Collection[str]) -> None:
        freed_on_loop.append(threading.current_thread() is threading.main_thread())
        answers.wait(10)
        free_aside(paths)
        freed.set()

    monkeypatch.setattr(refresh_module, "free_aside", hung_free)
    newer = full_name(200)
    try:
        await (await refreshed(cache, newer)).commit()
        assert freed_on_loop == [False] and not freed.is_set()
        assert told[-1] == [newer] and (tmp_path / GROUP / newer).exists()
    finally:
        answers.set()
    await trio.to_thread.run_sync(freed.wait, 10)
    assert sorted(os.listdir(tmp_path / GROUP)) == [newer]


async def test_a_promotion_cancelled_at_its_end_still_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last reader leaves (the fill cancelled) while the promotion is listed: the file
    is promoted and its commit returns (counted `refresh_ok`), the freeing of what it
    evicted bounded, not cut short into a failure."""
    cache = a_cache(tmp_path)
    await (await refreshed(cache, NAME)).commit()
    newer = full_name(200)
    refresh = await refreshed(cache, newer)
    listing = cache.report_size
    returned = False
    with trio.CancelScope() as fill:

        async def listed_as_the_reader_leaves() -> None:
            fill.cancel()
            await listing()

        monkeypatch.setattr(cache, "report_size", listed_as_the_reader_leaves)
        await refresh.commit()
        returned = True
    assert returned and (tmp_path / GROUP / newer).exists()


async def test_a_refresh_s_end_with_no_thread_to_be_had_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No thread to remove the temp file (threads parked on a hung mount pile up): the
    refresh is released and ended all the same, nothing raised into the fill's end; the
    file is left for the next start (closing its descriptor on the event loop could hang
    as the mount does)."""
    cache = a_cache(tmp_path)
    refresh = await refreshed(cache, NAME)

    async def no_thread(*_args: object, **_kwargs: object) -> object:
        raise TimeoutError(errno.EAGAIN, "cache temp file removal: no thread to be had")

    monkeypatch.setattr(refresh_module, "given_way", no_thread)
    await refresh.end()
    assert refresh.ended.is_set() and not cache.is_refreshing(GROUP, NAME)
    assert "cache_unreadable" in [r.msg for r in caplog.records]


async def test_readers_learn_that_a_refresh_ended_before_its_temp_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader waiting for bytes learns at once that the refresh failed, not once its temp
    file is removed (seconds for a partial full, up to the bound on a hung mount); the
    refresh stays registered until then (a new one would find its bytes still on the disk)."""
    answers, removed = threading.Event(), threading.Event()
    unlink = refresh_module.unlink

    def slow_unlink(path: str) -> bool:
        answers.wait(10)
        gone = unlink(path)
        removed.set()
        return gone

    monkeypatch.setattr(refresh_module, "unlink", slow_unlink)
    cache = a_cache(tmp_path)
    refresh = await refreshed(cache, NAME)
    woke = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                await refresh.wait_progress()
                woke.set()

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(refresh.end)
            await woke.wait()
            assert not removed.is_set() and cache.is_refreshing(GROUP, NAME)
            # not refreshed again before the removal freed the room its bytes take
            assert cache.begin_refresh(GROUP, NAME) is None
            answers.set()
    finally:
        answers.set()
    assert removed.is_set() and not cache.is_refreshing(GROUP, NAME)


async def test_a_refresh_on_a_hung_cache_directory_streams_uncached_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh's open looks at the cache directory in its own thread first: on a hung
    mount it creating its temp file (under the group's lock, in a shared thread) held its
    clients and the group's next refreshes until the mount answered. Now the refresh is
    over after the bound, the group's reason says why (the status page, ``/v1/targets``),
    and the next refresh of the group is over at once, no thread parked; nothing was made
    on the disk."""
    import tracker.serving.threads as threads

    monkeypatch.setattr(store, "HUNG_AFTER", 0.2)
    monkeypatch.setattr(threads, "HUNG_AFTER", 0.2)
    cache = a_cache(tmp_path)
    answers, ended = threading.Event(), threading.Event()
    looks: list[str] = []
    real_stat = os.stat

    def hung_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(tmp_path)):
            looks.append(str(path))
            answers.wait(10)
            ended.set()
        return real_stat(path, *args, **kwargs)

    made: list[str] = []
    real_open = refresh_module.open_temp

    def open_temp(*args: Any, **kwargs: Any) -> Any:
        made.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "open_temp", open_temp)
    monkeypatch.setattr(refresh_module.os, "stat", hung_stat)
    try:
        with trio.fail_after(5):  # the bound is 0.2 s: never the mount's hang
            first = cache.begin_refresh(GROUP, NAME)
            assert first is not None
            assert not await first.open(3)
            assert first.ended.is_set() and not cache.is_refreshing(GROUP, NAME)
            assert "cannot read the cache directory" in first.no_room, first.no_room
            assert cache.uncached[GROUP] == first.no_room
            second = cache.begin_refresh(GROUP, full_name(200))
            assert second is not None
            assert not await second.open(3)  # at once: the first look still hangs
            assert "has not ended (a hung mount?)" in second.no_room, second.no_room
        assert looks == [str(tmp_path / GROUP)] and not ended.is_set() and made == []
    finally:
        answers.set()
    await trio.to_thread.run_sync(ended.wait, 10)
    assert os.listdir(tmp_path / GROUP) == []


async def test_a_refresh_begins_with_no_look_at_the_disk_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh begins on the event loop (synchronously: a request arriving next finds
    it): its real path was a stat of each part there, which a hung mount froze. Its path is
    joined, and the links on the way looked at where its temp file is made, in a thread."""
    cache = a_cache(tmp_path)
    looked_on_loop: list[str] = []
    real = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if threading.current_thread() is threading.main_thread():
            looked_on_loop.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    refresh = cache.begin_refresh(GROUP, NAME)
    assert refresh is not None and refresh.final == str(tmp_path / GROUP / NAME)
    assert looked_on_loop == []
    assert await refresh.open(3)  # the group's directory looked at in the open's thread
    await refresh.end()


async def test_a_group_directory_replaced_by_a_link_is_never_written_through(
    tmp_path: Path,
) -> None:
    """The group's directory is a link (to another group's, or out of the cache): the
    refresh's open refuses it, its reason says so, and nothing is made where it points."""
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    cache = Cache(str(root), ops=DiskOps(free_space=lambda _path: 10**12))
    (root / GROUP).symlink_to(elsewhere)
    refresh = cache.begin_refresh(GROUP, NAME)
    assert refresh is not None
    assert not await refresh.open(3)
    assert "is a symlink in the cache directory" in refresh.no_room, refresh.no_room
    assert cache.uncached[GROUP] == refresh.no_room
    assert list(elsewhere.iterdir()) == [] and not cache.is_refreshing(GROUP, NAME)


async def test_a_turn_is_waited_for_while_its_holder_answers_and_given_up_once_it_hangs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refresh waiting for its group's lock (:func:`~tracker.cache.refresh.take_turn`)
    waits for a holder that is slow but answers (an eviction's unlink of an old full), and
    gives up with the directory's reason, a 503, once the directory counts as hung (a
    promotion holding the lock on a mount that hangs its rename)."""
    from tracker.cache.refresh import TURN_LOOK, take_turn

    turn = trio.Lock()
    why: list[str | None] = [None]
    async with trio.open_nursery() as nursery:

        async def slow_holder() -> None:
            async with turn:
                await trio.sleep(20 * TURN_LOOK)

        nursery.start_soon(slow_holder)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        await take_turn(turn, lambda: why[0])
        assert trio.current_time() - began >= 20 * TURN_LOOK - 1e-9  # waited it out
        turn.release()

        async def hung_holder() -> None:
            async with turn:
                await trio.sleep_forever()

        nursery.start_soon(hung_holder)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()

        def hung() -> str | None:
            if trio.current_time() - began >= 3 * TURN_LOOK:
                why[0] = "cannot read the cache directory /c: a call there 3s ago has not ended"
            return why[0]

        with pytest.raises(RequestError) as info, trio.fail_after(10 * TURN_LOOK):
            await take_turn(turn, hung)
        assert info.value.status == 503 and info.value.reason == why[0]
        assert trio.current_time() - began <= 4 * TURN_LOOK + 1e-9
        nursery.cancel_scope.cancel()
