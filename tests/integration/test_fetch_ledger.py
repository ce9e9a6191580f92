"""``fetch`` and the ledger directory (README.md#fetching-a-snapshot-into-a-ledger): one fetch
per ledger, only the checked file renamed into place, files already under an archive's name,
room on the disk, and a bad source among good ones. Real trackers and upstreams on 127.0.0.1,
real archives where the check is on."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from archives import build_archive
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_process import reaped
from helpers_proxy import wait_for
from helpers_upstream import (
    UPSTREAM_ETAG,
    UPSTREAM_LAST_MODIFIED,
    Behaviour,
    FakeUpstream,
    serving,
)
from names import full_name
from test_fetch import (
    FAST,
    FILES,
    FULL,
    INCR,
    advertise_all,
    fetch_command,
    kill_half_way,
    ledger_of,
    options,
    run_cli,
    the_error_line,
    tracker_for,
)
from test_fetch_sources import body_bytes, tracker_of

from tracker.core import smallfiles
from tracker.errors import FetchError
from tracker.fetch import download, space
from tracker.fetch import state as state_module
from tracker.fetch.download import Result
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import FetchOptions, run_fetch
from tracker.fetch.state import Identity, State, save_state

NAME, GOOD = build_archive(33_000, compression="zst", accounts=16, account_size=256 * 1024)
VERIFYING = attrs.evolve(FAST, verify=True)


def has_state(ledger: Path, name: str) -> bool:
    return (ledger / f".tmp-{name}.state").exists()


# -- one fetch per ledger ------------------------------------------------------------------------


async def test_a_second_fetch_into_the_same_ledger_stops_at_once(tmp_path: Path) -> None:
    """Sources without validators, a second fetch while the first runs: it stops with one
    line and touches nothing; the first ends with the right bytes."""
    data = archive_bytes(24 * MiB, seed=61)
    # The first fetch's every request waits after 1 MiB until the second fetch has ended,
    # however slow the host (one started after the first ended finds nothing to do).
    plain = Behaviour(pause_at=MiB, etag=None, last_modified=None)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: plain})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        first = await trio.lowlevel.open_process(
            fetch_command(ledger, t.base, "--progress", "none"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with reaped(first):
            await wait_for(lambda: has_state(ledger, FULL), timeout=30)
            second = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
            plain.resume.set()
            with trio.fail_after(60):
                assert await first.wait() == 0
    assert "another fetch is running" in the_error_line(second)
    assert sorted(p.name for p in ledger.iterdir()) == [FULL]
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_only_the_checked_file_is_renamed_into_place(tmp_path: Path) -> None:
    """Another file put under the temp file's name while the download is checked is never
    renamed into the ledger: the fetch fails with one line and the ledger has no archive."""
    paused = Behaviour(pause_at=len(GOOD) // 2)
    up = FakeUpstream(files={NAME: GOOD}, behaviour={NAME: paused})
    ledger = ledger_of(tmp_path)
    one = attrs.evolve(VERIFYING, connections=1, piece_size=len(GOOD))
    temp = ledger / f".tmp-{NAME}"
    failed: list[FetchError] = []

    async def fetch() -> None:
        try:
            await run_fetch(options(ledger, base, incremental=False, settings=one), NoProgress())
        except FetchError as exc:
            failed.append(exc)

    async with tracker_of([up]) as tracker, trio.open_nursery() as nursery:
        base = tracker.base
        nursery.start_soon(fetch)
        await wait_for(lambda: body_bytes(up, NAME) >= paused.pause_at, timeout=20)
        temp.unlink()
        temp.write_bytes(bytes(len(GOOD)))  # someone else's file, all zeros
        paused.resume.set()
    assert failed and "the temp file was replaced" in str(failed[0])
    assert not (ledger / NAME).exists()


# -- what the ledger already holds ---------------------------------------------------------------


async def test_a_half_copy_under_the_archive_name_is_fetched_again(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    (ledger / NAME).write_bytes(GOOD[: len(GOOD) // 2])  # an interrupted wget
    up = FakeUpstream(files={NAME: GOOD})
    async with tracker_of([up]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        [result] = await run_fetch(opts, NoProgress())
    assert result.sha256 == sha256(GOOD)
    assert sorted(p.name for p in ledger.iterdir()) == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD


async def test_a_good_archive_of_another_size_is_kept(tmp_path: Path) -> None:
    """Archives of one slot made by two nodes differ in size: a copy that passes its check
    stays, nothing is downloaded."""
    name, other = build_archive(33_000, compression="zst", accounts=15, account_size=256 * 1024)
    assert name == NAME and len(other) != len(GOOD)
    ledger = ledger_of(tmp_path)
    (ledger / NAME).write_bytes(other)
    up = FakeUpstream(files={NAME: GOOD})
    async with tracker_of([up]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        assert await run_fetch(opts, NoProgress()) == []
    assert not up.gets(NAME)
    assert (ledger / NAME).read_bytes() == other


@pytest.mark.parametrize("whole", [False, True])
async def test_with_no_size_listed_the_check_tells_a_half_copy(whole: bool, tmp_path: Path) -> None:
    """``--source``: a validator's alias gives no size, so the check alone decides what a
    file under the archive's name is: a half copy (an interrupted ``wget``) is fetched
    again, a whole one kept with nothing asked of its bytes (the half copy was taken as
    held: nothing to do, exit 0, half an archive left for the validator)."""
    ledger = ledger_of(tmp_path)
    (ledger / NAME).write_bytes(GOOD if whole else GOOD[: len(GOOD) // 2])
    up = FakeUpstream(files={NAME: GOOD})
    up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{NAME}")
    async with serving(up):
        opts = FetchOptions(
            ledger=str(ledger), sources=(up.base,), settings=VERIFYING, incremental=False
        )
        results = await run_fetch(opts, NoProgress())
    assert [r.sha256 for r in results] == ([] if whole else [sha256(GOOD)])
    assert bool(up.gets(NAME)) is not whole
    assert sorted(p.name for p in ledger.iterdir()) == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD


async def test_an_incremental_the_ledger_holds_is_not_fetched_again_with_its_full(
    tmp_path: Path,
) -> None:
    """The ledger held the offered incremental, whole, and half a copy of its full (an
    interrupted ``wget``): the full was fetched, then the incremental a second time, its good
    copy replaced by the same bytes."""
    ledger = ledger_of(tmp_path)
    (ledger / FULL).write_bytes(FILES[FULL][: len(FILES[FULL]) // 2])
    (ledger / INCR).write_bytes(FILES[INCR])
    up = FakeUpstream(files=dict(FILES))
    async with tracker_of([up]) as tracker:
        results = await run_fetch(options(ledger, tracker.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL]
    assert not up.gets(INCR)
    assert (ledger / INCR).read_bytes() == FILES[INCR]


async def test_a_directory_at_the_archive_name_fails_before_the_download(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    (ledger / FULL).mkdir()
    up = FakeUpstream(files=dict(FILES))
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, FILES)
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
    assert f"{ledger / FULL} is a directory" in the_error_line(done)
    assert not up.gets(FULL)


# -- room on the disk ----------------------------------------------------------------------------


async def test_no_room_for_the_full_and_its_incremental_fails_before_the_first_byte(
    tmp_path: Path,
) -> None:
    """Room for the full alone, not for both: nothing is downloaded; the line says what is
    needed and what is free."""
    free = len(FILES[FULL]) + len(FILES[INCR]) // 2
    ledger = ledger_of(tmp_path)
    up = FakeUpstream(files=dict(FILES))
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, FILES)
        opts = attrs.evolve(options(ledger, t.base), free_bytes=lambda _: free)
        with pytest.raises(FetchError, match="not enough space") as info:
            await run_fetch(opts, NoProgress())
        assert not up.gets(FULL) and not up.gets(INCR)
    needed = space.room_needed([len(FILES[FULL]), len(FILES[INCR])], space.block_size(str(ledger)))
    assert f"{needed} bytes needed, {free} free" in str(info.value)
    assert list(ledger.iterdir()) == []


async def test_with_no_size_listed_the_room_for_both_is_checked_before_the_first_byte(
    tmp_path: Path,
) -> None:
    """``--source`` lists no size: the room was checked for the state files alone, the full
    downloaded whole, and only then did the incremental find no room. The sizes the
    sources announce are asked first."""
    free = len(FILES[FULL]) + len(FILES[INCR]) // 2
    up = FakeUpstream(files=dict(FILES))
    up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
    up.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    ledger = ledger_of(tmp_path)
    async with serving(up):
        opts = FetchOptions(
            ledger=str(ledger), sources=(up.base,), settings=FAST, free_bytes=lambda _: free
        )
        with pytest.raises(FetchError, match="not enough space"):
            await run_fetch(opts, NoProgress())
    # the first byte of each, to learn its size: not the full, downloaded in vain
    assert body_bytes(up, FULL) <= 1 and body_bytes(up, INCR) <= 1
    assert list(ledger.iterdir()) == []


async def test_room_for_the_archive_alone_not_its_state_fails_before_the_first_byte(
    tmp_path: Path,
) -> None:
    """Room for the archive's blocks and one more, as on a ledger that was just full enough:
    the state file's save (``.state.new`` beside ``.state``) found no room after the
    download, and every run downloaded the whole archive to record none of it. Now the check
    counts the state file too (docs/fetch.md, "Safely"), and says so before the first byte."""
    data = FILES[FULL]
    ledger = ledger_of(tmp_path)
    block = space.block_size(str(ledger))
    free = space.on_disk(len(data), block) + block
    up = FakeUpstream(files={FULL: data})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        opts = attrs.evolve(options(ledger, t.base, incremental=False), free_bytes=lambda _: free)
        with pytest.raises(FetchError, match="not enough space") as info:
            await run_fetch(opts, NoProgress())
        assert body_bytes(up, FULL) == 0
    needed = space.room_needed([len(data)], block)
    assert needed > free
    assert f"{needed} bytes needed, {free} free" in str(info.value)
    assert list(ledger.iterdir()) == []


def failing_state_writes(
    monkeypatch: pytest.MonkeyPatch, fails: Callable[[dict[str, Any]], bool]
) -> None:
    """Writes of a fetch's state file for which ``fails(state)`` fail as a full disk's do
    (ENOSPC from ``write(2)``, naming no file); every other small file is written."""
    real = smallfiles._write_all

    def write(fd: int, data: bytes) -> None:
        try:
            state = json.loads(data)
        except ValueError:
            state = None
        if isinstance(state, dict) and "done" in state and fails(state):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(smallfiles, "_write_all", write)


def claimed(state: dict[str, Any]) -> int:
    return sum(end - start for start, end in state["done"])


@asynccontextmanager
async def saving_twice(tmp_path: Path, ledger: Path) -> AsyncIterator[FetchOptions]:
    """The options of a ``fetch`` of FULL into ``ledger`` from a source a redirect-mode
    tracker advertises, its state saved at the first piece and at the end only."""
    data = FILES[FULL]
    rare = attrs.evolve(FAST, state_every=3600.0)  # the first save and the last one only
    up = FakeUpstream(files={FULL: data})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        yield options(ledger, t.base, incremental=False, settings=rare)


async def test_a_failing_last_state_save_keeps_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte is on disk when the state's last save fails (the disk full): the archive
    is still checked and put in place; that state was to be deleted anyway."""
    failing_state_writes(monkeypatch, lambda state: claimed(state) > 0)
    data = FILES[FULL]
    ledger = ledger_of(tmp_path)
    async with saving_twice(tmp_path, ledger) as opts:
        [result] = await run_fetch(opts, NoProgress())
    assert result.size == len(data)
    assert [p.name for p in ledger.iterdir()] == [FULL]
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_a_failing_sync_of_the_archive_at_the_last_save_fails_the_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last save's ``fdatasync`` of the archive itself fails (a writeback error: NFS
    says ENOSPC there): its bytes may not be on disk, so the fetch fails and nothing is put
    in place; only the state file's own failure is let go."""
    real_sync, real_last_save, last = os.fdatasync, download._last_save, [False]

    async def last_save(saver: Any, name: str) -> None:
        last[0] = True  # every worker ended: the save that follows is the last one
        await real_last_save(saver, name)

    def fdatasync(fd: int) -> None:
        if last[0] and os.readlink(f"/proc/self/fd/{fd}").endswith(f".tmp-{FULL}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(fd)

    monkeypatch.setattr(download, "_last_save", last_save)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    ledger = ledger_of(tmp_path)
    async with saving_twice(tmp_path, ledger) as opts:
        with pytest.raises(FetchError, match=f"\\.tmp-{FULL}: Input/output error"):
            await run_fetch(opts, NoProgress())
    assert last[0]
    assert not (ledger / FULL).exists()


async def test_a_failing_state_save_mid_download_names_the_file_and_what_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state save that fails before the last byte (the source pauses there) stops the
    fetch with one line naming the state file, why, and the bytes a next run resumes; the
    temp file and the last state saved stay, and the next run fetches only the rest."""
    failing_state_writes(monkeypatch, lambda state: claimed(state) >= 2 * MiB)
    data = FILES[FULL]
    paused = Behaviour(pause_at=2 * MiB, rate=4 * MiB)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: paused})
    ledger = ledger_of(tmp_path)
    one = attrs.evolve(FAST, connections=1, piece_size=len(data), state_every=0.02)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        opts = options(ledger, t.base, incremental=False, settings=one)
        with pytest.raises(FetchError) as info:
            await run_fetch(opts, NoProgress())
        state = ledger / f".tmp-{FULL}.state"
        kept = claimed(json.loads(state.read_text())) if state.exists() else 0
        assert str(info.value) == (
            f"{state}: No space left on device: the download's state could not be saved; "
            f"{kept} of {len(data)} bytes kept, run again to resume"
        )
        assert (ledger / f".tmp-{FULL}").exists()
        monkeypatch.undo()
        paused.resume.set()
        before = body_bytes(up, FULL)
        await run_fetch(opts, NoProgress())
        again = body_bytes(up, FULL) - before
    # the rest, and the first byte asked of each URL of the source when it is inspected
    assert again <= len(data) - kept + 16
    assert [p.name for p in ledger.iterdir()] == [FULL]
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_a_new_temp_file_is_preallocated(tmp_path: Path) -> None:
    """While the first bytes come in, the temp file already takes its whole size on disk."""
    data = archive_bytes(8 * MiB, seed=62)
    paused = Behaviour(pause_at=MiB)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: paused})
    ledger = ledger_of(tmp_path)
    one = attrs.evolve(FAST, connections=1, piece_size=len(data))
    temp = ledger / f".tmp-{FULL}"
    async with serving(up), tracker_for("redirect", tmp_path) as t, trio.open_nursery() as n:
        advertise_all(t, up, {FULL: data})
        opts = options(ledger, t.base, incremental=False, settings=one)
        n.start_soon(run_fetch, opts, NoProgress())
        await wait_for(lambda: body_bytes(up, FULL) >= MiB, timeout=20)
        allocated = temp.stat().st_blocks * 512
        paused.resume.set()
    assert allocated >= len(data)
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_keep_removes_old_archives_only_once_the_new_ones_are_in_place(
    tmp_path: Path,
) -> None:
    """``--keep 1``: the full is fetched, its incremental fails: the older full stays (the
    new set is not complete); a later fetch that completes removes it."""
    old = full_name(10_000)
    ledger = ledger_of(tmp_path)
    (ledger / old).write_bytes(b"older")
    up = FakeUpstream(files=dict(FILES), behaviour={INCR: Behaviour(status=500)})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, FILES)
        with pytest.raises(FetchError):
            await run_fetch(options(ledger, t.base, keep=1), NoProgress())
        assert sorted(p.name for p in ledger.iterdir()) == sorted([old, FULL])
        up.behaviour[INCR] = Behaviour()
        await run_fetch(options(ledger, t.base, keep=1), NoProgress())
    assert sorted(p.name for p in ledger.iterdir()) == sorted([FULL, INCR])


async def test_each_archive_s_name_is_synced_before_the_next_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive's bytes are synced before its rename; its name is on disk only once the
    ledger directory is: after each rename into place, that sync comes before anything else
    renamed (the next download's state), before ``--keep`` removes the older full (a power
    cut could leave neither) and before the exit that tells the validator to start."""
    old = full_name(10_000)
    ledger = ledger_of(tmp_path)
    (ledger / old).write_bytes(b"older")
    directory = (ledger.stat().st_dev, ledger.stat().st_ino)
    events: list[tuple[str, str]] = []
    real_replace, real_fsync, real_unlink = os.replace, os.fsync, os.unlink

    def replace(src: str, dst: str, **kwargs: Any) -> None:
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst, **kwargs)

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == directory:
            events.append(("sync", "ledger"))
        real_fsync(fd)

    def unlink(path: str, **kwargs: Any) -> None:
        events.append(("unlink", os.path.basename(path)))
        real_unlink(path, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        await run_fetch(options(ledger, t.base, keep=1), NoProgress())
    assert sorted(p.name for p in ledger.iterdir()) == sorted([FULL, INCR])
    for name in (FULL, INCR):
        after = events[events.index(("replace", name)) + 1 :]
        following = [e for e in after if e[0] == "replace" or e == ("unlink", old)]
        before_next = after[: after.index(following[0])] if following else after
        assert ("sync", "ledger") in before_next, (name, events)


# -- a bad source among good ones ---------------------------------------------------------------


def corrupt_between_samples(good: bytes) -> bytes:
    """``good`` with a byte changed every 4 KiB, except in the sampled ranges (at 0, the
    middle and the end: 64 KiB each) that prove two sources hold the same bytes."""
    size, sample = len(good), 64 * 1024
    spared = [(0, sample), (size // 2, size // 2 + sample), (size - sample, size)]
    bad = bytearray(good)
    for at in range(0, size, 4096):
        if not any(start <= at < end for start, end in spared):
            bad[at] ^= 0xFF
    return bytes(bad)


async def test_a_source_bad_outside_the_samples_does_not_sink_a_good_one(tmp_path: Path) -> None:
    """Two sources pass the sampled comparison and are used together; the copy fails its
    check (the first one's bytes are bad between the samples): each is then tried alone,
    the best first, and the good one's copy is kept."""
    bad = corrupt_between_samples(GOOD)
    assert bad != GOOD
    # Both must send pieces of the combined copy (not only the 64 KiB samples and byte 0),
    # whichever connection the scheduler runs first: in pieces of 256 KiB (six), the good
    # source holds each piece after its first 64 KiB + 1 bytes until the bad one has sent
    # more than that of a piece. Its two connections hold two pieces meanwhile, so the bad
    # one's connections claim the others.
    sample = 64 * 1024
    held = Behaviour(rate=2 * MiB, pause_at=sample + 1)
    first, second = (
        FakeUpstream(files={NAME: bad}),
        FakeUpstream(files={NAME: GOOD}, behaviour={NAME: held}),
    )
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(VERIFYING, piece_size=256 * 1024)
    results: list[Result] = []

    async def fetch() -> None:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        results.extend(await run_fetch(opts, NoProgress()))

    async with tracker_of([first, second]) as tracker, trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        await wait_for(lambda: any(s.body_sent > sample + 1 for s in first.gets(NAME)), 20)
        held.resume.set()
    [result] = results
    assert len(GOOD) > 4 * settings.piece_size
    assert result.sha256 == sha256(GOOD)
    assert [s.url for s in result.sources] == [second.base + f"/v1/snapshot/{NAME}"]
    assert sorted(p.name for p in ledger.iterdir()) == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD


async def test_the_one_source_that_sent_a_rejected_copy_is_not_asked_for_it_again(
    tmp_path: Path,
) -> None:
    """Two sources pass the samples; the good one dies right after them, so the bad one
    alone sends the copy, which fails its check: it is the bad one and is not tried alone
    (it was: a second whole copy from a source known bad), only the other is."""
    bad = corrupt_between_samples(GOOD)
    first = FakeUpstream(files={NAME: bad})
    second = FakeUpstream(files={NAME: GOOD}, dies_after=1 + 3 * 64 * 1024)
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(VERIFYING, piece_size=256 * 1024)
    async with tracker_of([first, second]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        with pytest.raises(FetchError, match="no source delivered a good copy") as failed:
            await run_fetch(opts, NoProgress())
    assert first.body_sent < 2 * len(GOOD)  # the samples and one copy
    assert str(failed.value).count(first.base) == 1
    assert not (ledger / NAME).exists()


# -- a resume that starts over says why -----------------------------------------------------------


async def test_a_resume_that_starts_over_says_why(tmp_path: Path) -> None:
    data = archive_bytes(24 * MiB, seed=63)
    plain = Behaviour(rate=6 * MiB, etag=None, last_modified=None)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: plain})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await kill_half_way(ledger, t.base, len(data))
        up.behaviour[FULL] = Behaviour(etag=None, last_modified=None)
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.decode().splitlines() if "fetch_starting_over" in line]
    assert len(lines) == 1 and "the source sent no validator; starting over" in lines[0]
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_an_earlier_run_s_download_of_what_is_no_longer_offered_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An interrupted fetch left a full's temp file (preallocated: its whole room) and
    state; the offer moved on to a newer full before the next run: nothing would ever
    resume them, so that run removes them (and only them) and says what it freed."""
    stale = full_name(100)
    ledger = ledger_of(tmp_path)
    (ledger / f".tmp-{stale}").write_bytes(os.urandom(MiB))
    identity = Identity(4 * MiB, UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(stale, identity, ((0, MiB),)))
    (ledger / ".tmp-notes").write_text("not a download of an archive")
    data = FILES[FULL]
    async with (
        serving(FakeUpstream(files={FULL: data})) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, {FULL: data})
        caplog.set_level(logging.INFO, logger="tracker.fetch")
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert sorted(p.name for p in ledger.iterdir()) == sorted([FULL, ".tmp-notes"])
    [removed] = [
        getattr(r, "tracker_fields", {}) for r in caplog.records if r.msg == "fetch_removed_stale"
    ]
    assert removed["file"] == stale and removed["bytes"] >= MiB


async def test_a_temp_file_with_another_hard_link_is_not_written_through(tmp_path: Path) -> None:
    """A file outside the ledger hard-linked under the temp file's name, with a state
    claiming half of it: the fetch starts over in a file of its own, the other untouched."""
    data = FILES[FULL]
    ledger = ledger_of(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious" + bytes(len(data) - 8))
    before = sha256(outside.read_bytes())
    os.link(outside, ledger / f".tmp-{FULL}")
    identity = Identity(len(data), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL, identity, ((0, len(data) // 2),)))
    async with (
        serving(FakeUpstream(files={FULL: data})) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, {FULL: data})
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert sha256(outside.read_bytes()) == before
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    assert outside.stat().st_ino != (ledger / FULL).stat().st_ino


async def test_a_temp_file_linked_after_it_was_looked_at_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hard link comes between the look at the temp file and its opening (the look
    is made to miss it): the opened file is refused, one line, the other file untouched."""
    data = FILES[FULL]
    ledger = ledger_of(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(bytes(len(data)))
    os.link(outside, ledger / f".tmp-{FULL}")
    identity = Identity(len(data), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL, identity, ((0, len(data) // 2),)))
    monkeypatch.setattr(state_module, "_data_on_disk", lambda _path: [(0, len(data))])
    async with (
        serving(FakeUpstream(files={FULL: data})) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, {FULL: data})
        with pytest.raises(FetchError, match="has another link; not written through"):
            await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert outside.read_bytes() == bytes(len(data))
