"""``snapshot-tracker fetch`` (README.md#fetching-a-snapshot-into-a-ledger) against real trackers
and upstreams on 127.0.0.1."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_ports import REFUSED
from helpers_process import reaped
from helpers_proxy import GROUP, TrackerUnderTest, advertise, make_config, running_tracker, wait_for
from helpers_upstream import UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED, Behaviour, FakeUpstream, serving
from names import full_name, incremental_name

import tracker.fetch.workers
from tracker.config.schema import TargetGroup
from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import FetchOptions, run_fetch
from tracker.fetch.settings import FetchSettings
from tracker.fetch.state import Identity, State, save_state

FULL = full_name(20_000)
INCR = incremental_name(20_000, 20_800)
FILES = {FULL: archive_bytes(6 * MiB, seed=41), INCR: archive_bytes(MiB, seed=42)}
OPEN_GROUP = TargetGroup(group=GROUP)
# Opaque random blobs, not archives: fetched unchecked (tests/integration/test_fetch_verify.py
# fetches real archives with the check on).
FAST = FetchSettings(connections=4, piece_size=MiB, min_speed=0, request_timeout=3.0, verify=False)


def options(ledger: Path, tracker: str, **overrides: Any) -> FetchOptions:
    settings = overrides.pop("settings", FAST)
    return FetchOptions(
        ledger=str(ledger), tracker=tracker, progress="none", settings=settings, **overrides
    )


def advertise_all(t: TrackerUnderTest, up: FakeUpstream, files: dict[str, bytes]) -> None:
    advertise(t.index, up.base, [(n, up.url(n), len(d)) for n, d in files.items()])


@asynccontextmanager
async def tracker_for(mode: str, tmp_path: Path) -> AsyncIterator[TrackerUnderTest]:
    cache = tmp_path / "cache" if mode == "cache" else None
    config = make_config(
        cache, proxy_snapshot_downloads=mode != "redirect", target_groups=(OPEN_GROUP,)
    )
    async with running_tracker(config) as t:
        yield t


def ledger_of(tmp_path: Path) -> Path:
    ledger = tmp_path / "ledger"
    ledger.mkdir(exist_ok=True)
    return ledger


def contents(ledger: Path) -> dict[str, str]:
    return {p.name: sha256(p.read_bytes()) for p in ledger.iterdir()}


@pytest.mark.parametrize("mode", ["redirect", "proxy", "cache"])
async def test_the_ledger_ends_with_the_best_full_and_its_incremental(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spliced: list[int] = []
    real_splice = tracker.fetch.workers.splice_to_file

    def counting(*args: Any) -> int:
        spliced.append(moved := real_splice(*args))
        return moved

    monkeypatch.setattr(tracker.fetch.workers, "splice_to_file", counting)
    ledger = ledger_of(tmp_path)
    async with serving(FakeUpstream(files=dict(FILES))) as up, tracker_for(mode, tmp_path) as t:
        advertise_all(t, up, FILES)
        results = await run_fetch(options(ledger, t.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert contents(ledger) == {name: sha256(data) for name, data in FILES.items()}
    # The source's Last-Modified becomes the file's mtime (the cache keeps it too).
    expected = parsedate_to_datetime(UPSTREAM_LAST_MODIFIED).timestamp()
    assert all((ledger / name).stat().st_mtime == expected for name in FILES)
    assert not [p for p in ledger.iterdir() if p.name.startswith(".")]
    # Plain HTTP: every body byte went from the socket to the file with splice(2).
    assert sum(spliced) == sum(len(data) for data in FILES.values())


async def test_through_the_object_store(weed: Any, tmp_path: Path) -> None:
    """Object-store mode (docs/http-api.md#with-an-object-store-object_store): the first fetch
    fills the bucket (its Range requests
    start the replica's refresh), the next one follows the tracker's 303s to presigned URLs
    of the bucket: the same bytes, nothing more from the source."""
    from helpers_bucket import store_config

    config = make_config(
        tmp_path / "cache", object_store=store_config(weed), target_groups=(OPEN_GROUP,)
    )
    async with serving(FakeUpstream(files=dict(FILES))) as up, running_tracker(config) as t:
        advertise_all(t, up, FILES)
        await run_fetch(options(ledger_of(tmp_path), t.base), NoProgress())
        objects = t.parts.objects
        assert objects is not None
        keys = [objects.tier.object_key(GROUP, name) for name in FILES]
        prefix = objects.tier.store.prefix
        await wait_for(lambda: set(keys) <= set(weed.objects(prefix)), timeout=30)
        await wait_for(lambda: objects.tier.uploads_running == 0)
        upstream_gets = len(up.seen)
        second = tmp_path / "second"
        second.mkdir()
        results = await run_fetch(options(second, t.base), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert contents(second) == {name: sha256(data) for name, data in FILES.items()}
    assert len(up.seen) == upstream_gets  # every byte came from the bucket
    assert t.outcome("object_redirect") >= 2
    assert not [p for p in second.iterdir() if p.name.startswith(".")]


async def test_a_ledger_with_the_full_fetches_only_the_incremental(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    (ledger / FULL).write_bytes(FILES[FULL])
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        results = await run_fetch(options(ledger, t.base), NoProgress())
        assert not up.gets(FULL)
    assert [Path(r.path).name for r in results] == [INCR]


async def test_min_slots_keeps_a_recent_enough_full(tmp_path: Path) -> None:
    """A ledger full 100 slots older than the offered one (min_slots 500): only an
    incremental on the ledger's own full is fetched."""
    ledger = ledger_of(tmp_path)
    older_full = full_name(19_900)
    on_older = incremental_name(19_900, 20_700)
    (ledger / older_full).write_bytes(b"x" * 1000)
    files = {**FILES, on_older: archive_bytes(MiB, seed=43)}
    async with (
        serving(FakeUpstream(files=files)) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        advertise(t.index, f"{up.base}/b", [(older_full, up.url(older_full), 1000)])
        advertise(t.index, f"{up.base}/c", [(on_older, up.url(on_older), len(files[on_older]))])
        results = await run_fetch(options(ledger, t.base, min_slots=500), NoProgress())
        assert not up.gets(FULL)
    assert [Path(r.path).name for r in results] == [on_older]


async def test_a_newer_incremental_within_min_slots_is_fetched(tmp_path: Path) -> None:
    """The best full and an incremental at 20,400 on it in the ledger, the tracker offers
    one at 20,800 (within the 500 of --min-slots): the full is kept, the incremental
    fetched."""
    ledger = ledger_of(tmp_path)
    (ledger / FULL).write_bytes(FILES[FULL])
    older = incremental_name(20_000, 20_400)
    (ledger / older).write_bytes(b"older")
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        results = await run_fetch(options(ledger, t.base, min_slots=500), NoProgress())
        assert not up.gets(FULL)
    assert [Path(r.path).name for r in results] == [INCR]
    assert sha256((ledger / INCR).read_bytes()) == sha256(FILES[INCR])


@asynccontextmanager
async def up_to_date(
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, FakeUpstream, TrackerUnderTest]]:
    """A ledger holding the best full and its incremental, and a tracker offering the same."""
    ledger = ledger_of(tmp_path)
    (ledger / INCR).write_bytes(FILES[INCR])
    (ledger / FULL).write_bytes(FILES[FULL])
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        yield ledger, up, t


async def test_an_up_to_date_ledger_downloads_nothing(tmp_path: Path) -> None:
    async with up_to_date(tmp_path) as (ledger, up, t):
        assert await run_fetch(options(ledger, t.base), NoProgress()) == []
        assert not up.gets()


@asynccontextmanager
async def two_sources(
    tmp_path: Path, first: FakeUpstream, second: FakeUpstream
) -> AsyncIterator[TrackerUnderTest]:
    async with serving(first), serving(second), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, first, FILES)
        advertise_all(t, second, FILES)
        yield t


async def test_the_fast_source_carries_most_bytes(tmp_path: Path) -> None:
    """Two connections on each source; the slow one's pieces (4 MiB at 1 MiB/s) outlast
    the steal threshold: once the fast one has taken every other piece, its idle
    connections take over the back half of the slow claims."""
    files = {FULL: archive_bytes(32 * MiB, seed=48)}
    fast = FakeUpstream(files=dict(files), behaviour={FULL: Behaviour(rate=40 * MiB)})
    slow = FakeUpstream(files=dict(files), behaviour={FULL: Behaviour(rate=MiB)})
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(FAST, piece_size=4 * MiB)
    async with serving(fast), serving(slow), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, slow, files)
        advertise_all(t, fast, files)
        opts = options(ledger, t.base, incremental=False, settings=settings)
        with trio.fail_after(10):
            [result] = await run_fetch(opts, NoProgress())
    assert contents(ledger) == {FULL: sha256(files[FULL])}
    sent = {up.base: sum(s.body_sent for s in up.gets(FULL)) for up in (fast, slow)}
    assert sent[slow.base] > 64 * 1024, sent  # the slow source was used, not only sampled
    assert result.steals >= 1
    # Without steals the slow source would carry its two whole pieces (8 MiB of 32).
    assert sent[fast.base] > 4 * sent[slow.base], sent


async def test_a_source_slower_than_min_speed_is_dropped(tmp_path: Path) -> None:
    files = {FULL: archive_bytes(24 * MiB, seed=49)}
    crawling = FakeUpstream(files=dict(files), behaviour={FULL: Behaviour(rate=128 * 1024)})
    fast = FakeUpstream(files=dict(files), behaviour={FULL: Behaviour(rate=20 * MiB)})
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(FAST, min_speed=2 * MiB, speed_window=0.5)
    async with serving(fast), serving(crawling), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, fast, files)
        advertise_all(t, crawling, files)  # asked first
        opts = options(ledger, t.base, incremental=False, settings=settings)
        with trio.fail_after(30):
            await run_fetch(opts, NoProgress())
    assert contents(ledger) == {FULL: sha256(files[FULL])}
    assert sum(s.body_sent for s in crawling.gets(FULL)) < 2 * MiB


async def test_a_source_that_dies_mid_way_is_dropped(tmp_path: Path) -> None:
    dying = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(drop_after=300_000)})
    good = FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with two_sources(tmp_path, dying, good) as t:
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert contents(ledger) == {FULL: sha256(FILES[FULL])}


async def test_two_sources_with_other_bytes_are_never_mixed(tmp_path: Path) -> None:
    """Same name, same size, other bytes (another node's archive of the slot): the result
    is one source's file byte for byte."""
    other = {FULL: archive_bytes(len(FILES[FULL]), seed=77), INCR: FILES[INCR]}
    a, b = FakeUpstream(files=dict(FILES)), FakeUpstream(files=other)
    ledger = ledger_of(tmp_path)
    async with two_sources(tmp_path, a, b) as t:
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
        assert not (a.gets(FULL) and b.gets(FULL) and _both_sent_ranges(a, b))
    assert sha256((ledger / FULL).read_bytes()) in {sha256(FILES[FULL]), sha256(other[FULL])}


def _both_sent_ranges(a: FakeUpstream, b: FakeUpstream) -> bool:
    """True when both sent body bytes beyond the identity samples (64 KiB ranges)."""
    return all(any(s.body_sent > 64 * 1024 for s in up.gets(FULL)) for up in (a, b))


async def test_a_source_that_ignores_range_is_fetched_whole(tmp_path: Path) -> None:
    """A source answering 200 and the whole file to every Range request: one request from
    byte 0, never its first bytes written at another piece's offset."""
    data = archive_bytes(6 * MiB + 12_345, seed=50)  # several pieces of 1 MiB
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(ignore_range=True)})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert contents(ledger) == {FULL: sha256(data)}


async def test_a_resume_onto_a_source_that_ignores_range_starts_over(tmp_path: Path) -> None:
    """A state file of the same file (size and validators) with half of it done, and the
    source now ignores Range: the download starts over at byte 0 rather than writing the
    whole-file answer at the first missing offset."""
    data = archive_bytes(6 * MiB, seed=51)
    half = len(data) // 2
    ledger = ledger_of(tmp_path)
    (ledger / f".tmp-{FULL}").write_bytes(data[:half] + bytes(len(data) - half))
    identity = Identity(len(data), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL, identity, ((0, half),)))
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(ignore_range=True)})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert contents(ledger) == {FULL: sha256(data)}
    assert not (ledger / f".tmp-{FULL}.state").exists()


@pytest.mark.parametrize("validators", [True, False])
async def test_a_complete_copy_is_checked_not_fetched_again_from_a_source_without_ranges(
    tmp_path: Path, validators: bool
) -> None:
    """A run stopped in its check (every byte on disk, the state claiming them all), then
    the source as agave's RPC serves a file (200 for any Range, no ETag): nothing is asked
    of it, so the copy is checked and placed, not downloaded again (a mainnet full's 100 GB
    for a check cut short)."""
    data = archive_bytes(6 * MiB, seed=52)
    ledger = ledger_of(tmp_path)
    (ledger / f".tmp-{FULL}").write_bytes(data)
    etag = UPSTREAM_ETAG if validators else ""
    identity = Identity(len(data), etag, UPSTREAM_LAST_MODIFIED if validators else "")
    half = len(data) // 2
    save_state(str(ledger), State(FULL, identity, ((0, half), (half, len(data)))))
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(ignore_range=True)})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert contents(ledger) == {FULL: sha256(data)}
    # its first byte asked (the inspection: is it there, what size), never the file again
    assert {s.headers.get("range") for s in up.gets(FULL)} == {"bytes=0-0"}


async def test_every_source_failing_is_a_one_line_error(tmp_path: Path) -> None:
    broken = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(status=500)})
    ledger = ledger_of(tmp_path)
    async with serving(broken), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, broken, FILES)
        with pytest.raises(FetchError, match="no source could deliver") as info:
            await run_fetch(options(ledger, t.base), NoProgress())
    assert "\n" not in str(info.value)


async def test_an_unreachable_tracker_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=re.escape(f"tracker http://{REFUSED}")):
        await run_fetch(options(ledger_of(tmp_path), f"http://{REFUSED}"), NoProgress())


async def test_credentials_never_go_to_another_origin(tmp_path: Path) -> None:
    """``--tracker http://user:pw@...`` in redirect mode: the tracker's routes get the
    credentials, the upstream it redirects to (another port: another origin) never does,
    nor any cookie."""
    ledger = ledger_of(tmp_path)
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        with_credentials = t.base.replace("http://", "http://user:pw@", 1)
        await run_fetch(options(ledger, with_credentials), NoProgress())
    assert contents(ledger) == {name: sha256(data) for name, data in FILES.items()}
    assert up.gets(FULL) and up.gets(INCR)
    leaked = [s for s in up.seen if {"authorization", "cookie"} & set(s.headers)]
    assert not leaked, leaked


async def test_sources_without_a_tracker(tmp_path: Path) -> None:
    """``--source URL``: validators' aliases probed directly."""
    up = FakeUpstream(files=dict(FILES))
    up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
    up.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    ledger = ledger_of(tmp_path)
    async with serving(up):
        opts = FetchOptions(ledger=str(ledger), sources=(up.base,), settings=FAST)
        await run_fetch(opts, NoProgress())
    assert contents(ledger) == {name: sha256(data) for name, data in FILES.items()}


async def test_a_sources_credentials_go_to_its_own_origin_only(tmp_path: Path) -> None:
    """``--source http://user:pw@validator``: every request to that origin (its aliases'
    probe, its archives) carries the credentials, and the other origin an archive's GET is
    redirected to (a presigned URL) gets none. They were dropped: the probe took
    them off the URL for a caller that never sent them (a 401 behind an auth proxy)."""
    up, other = FakeUpstream(files=dict(FILES)), FakeUpstream(files=dict(FILES))
    ledger = ledger_of(tmp_path)
    async with serving(up), serving(other):
        up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
        up.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
        up.behaviour[INCR] = Behaviour(redirect_to=f"{other.base}/files/{INCR}")  # presigned
        source = up.base.replace("http://", "http://user:pw@", 1)
        opts = FetchOptions(ledger=str(ledger), sources=(source,), settings=FAST)
        await run_fetch(opts, NoProgress())
    assert contents(ledger) == {name: sha256(data) for name, data in FILES.items()}
    assert up.gets(FULL) and other.gets(INCR)
    assert {s.headers.get("authorization") for s in up.seen} == {"Basic dXNlcjpwdw=="}
    assert not [s for s in other.seen if "authorization" in s.headers]


async def test_two_sources_on_the_command_line(tmp_path: Path) -> None:
    """``--source A --source B``: both validators' archives, proven the same bytes, are
    fetched from both with ranges."""
    ups = [FakeUpstream(files=dict(FILES)) for _ in range(2)]
    for up in ups:
        up.behaviour["snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{FULL}")
        up.behaviour["incremental-snapshot.tar.bz2"] = Behaviour(redirect_to=f"/files/{INCR}")
    ledger = ledger_of(tmp_path)
    async with serving(ups[0]), serving(ups[1]):
        command = [sys.executable, "-m", "tracker", "fetch", "--ledger", str(ledger)]
        command += ["--source", ups[0].base, "--source", ups[1].base, "--min-speed", "0"]
        command += ["--verify=false"]  # opaque blobs
        done = await run_cli(*command, "--connections", "4", "--progress", "none")
    assert done.returncode == 0, done.stderr
    assert contents(ledger) == {name: sha256(data) for name, data in FILES.items()}
    for up in ups:  # beyond the identity samples (64 KiB ranges)
        assert any(s.body_sent > 64 * 1024 and "range" in s.headers for s in up.gets(FULL))


async def test_a_failed_ask_after_the_full_keeps_the_incremental_planned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the full is in place, fetch asks for the newest incremental on it again: that
    one request failing (a tracker restarting: 503) failed the whole run, the full
    downloaded, the incremental planned at the start and the retention left undone."""
    from helpers_fetch import FakeTracker, tracker_entries

    ledger = ledger_of(tmp_path)
    old = [full_name(10_000 + n) for n in range(2)]
    for name in old:
        (ledger / name).write_bytes(b"old")
    async with serving(FakeUpstream(files=dict(FILES))) as up, serving(FakeTracker()) as t:
        # best first, as a tracker lists them: the full with its incremental
        t.entries = sorted(tracker_entries(up, FILES), key=lambda e: -e["slot"])
        t.unavailable = {"/v1/snapshots"}  # the listing on a full (/v1/best_snapshots: up)
        results = await run_fetch(options(ledger, t.base, group=GROUP, keep=2), NoProgress())
    assert [Path(r.path).name for r in results] == [FULL, INCR]
    assert any(s.target.startswith("/v1/snapshots?") for s in t.seen)  # asked, refused
    assert contents(ledger) == {
        **{name: sha256(data) for name, data in FILES.items()},
        old[1]: sha256(b"old"),
    }
    assert "fetch_reask_failed" in caplog.text


async def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    old = [full_name(10_000 + n) for n in range(3)]
    for name in old:
        (ledger / name).write_bytes(b"old")
    (ledger / "notes.txt").write_text("not an archive")
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        await run_fetch(options(ledger, t.base, keep=2), NoProgress())
    assert sorted(p.name for p in ledger.iterdir()) == sorted([FULL, INCR, old[2], "notes.txt"])


# -- killed and resumed ------------------------------------------------------------------------


def fetch_command(ledger: Path, tracker: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tracker",
        "fetch",
        "--ledger",
        str(ledger),
        "--tracker",
        tracker,
        "--incremental=false",
        "--connections",
        "4",
        "--min-speed",
        "0",
        "--verify=false",  # opaque blobs
        *extra,
    ]


@attrs.define
class Killed:
    ledger: Path
    size: int


async def kill_half_way(ledger: Path, tracker: str, size: int) -> None:
    """Start a fetch subprocess and SIGKILL it once about half the file is on disk."""
    process = await trio.lowlevel.open_process(
        fetch_command(ledger, tracker, "--progress", "none"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = ledger / f".tmp-{FULL}.state"

    def half() -> bool:
        try:
            text = state.read_text()
        except OSError:
            return False
        import json

        try:
            done = sum(e - s for s, e in json.loads(text)["done"])
        except ValueError:
            return False
        return done >= size // 2

    try:
        await wait_for(half, timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


async def run_cli(*command: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(120):
        return await trio.run_process(
            list(command), capture_stdout=True, capture_stderr=True, check=False
        )


async def test_a_killed_fetch_resumes(tmp_path: Path) -> None:
    """What is lost: the bytes in flight at the kill and those since the last state save
    (0.25 s), a few MiB: 48 MiB keeps that well under a tenth."""
    data = archive_bytes(48 * MiB, seed=44)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=6 * MiB)})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await kill_half_way(ledger, t.base, len(data))
        saved = saved_ranges(ledger / f".tmp-{FULL}.state")
        before = len(up.gets(FULL))
        up.behaviour[FULL] = Behaviour()
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in ledger.iterdir()) == [FULL]
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    assert sum(e - s for s, e in saved) >= len(data) // 2
    # The resumed run asks only for what the state saved at the kill says is missing: the
    # bytes the killed run had in flight are lost, nothing it had saved is asked for again.
    # (Counting bytes sent instead would also count what a steal cuts off in the socket
    # buffers, which depends on the host's load.)
    for seen in up.gets(FULL)[before:]:
        if seen.headers["range"] == "bytes=0-0":
            continue  # the probe of a source for its size and validators
        start, end = requested(seen.headers["range"], len(data))
        assert all(end <= s or e <= start for s, e in saved), (start, end, saved)


def saved_ranges(state: Path) -> list[tuple[int, int]]:
    import json

    return [(s, e) for s, e in json.loads(state.read_text())["done"]]


def requested(header: str, size: int) -> tuple[int, int]:
    """The half-open byte range of a ``bytes=a-b`` or ``bytes=a-`` request."""
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), int(last) + 1 if last else size


@pytest.mark.parametrize("change", ["etag", "size"])
async def test_a_changed_file_behind_the_same_name_restarts(change: str, tmp_path: Path) -> None:
    """Another ETag (same size), or another size (same ETag and Last-Modified): the bytes
    on disk are of another file, the fetch starts over."""
    data = archive_bytes(24 * MiB, seed=45)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=6 * MiB)})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        await kill_half_way(ledger, t.base, len(data))
        if change == "etag":
            changed = archive_bytes(len(data), seed=46)
            up.behaviour[FULL] = Behaviour(etag='"another-etag"')
        else:
            changed = archive_bytes(len(data) + MiB + 7, seed=46)
            up.behaviour[FULL] = Behaviour()  # the same validators
            advertise_all(t, up, {FULL: changed})  # the listing says the new size
        up.files[FULL] = changed
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
        assert done.returncode == 0, done.stderr
    assert sha256((ledger / FULL).read_bytes()) == sha256(changed)


# -- command line ------------------------------------------------------------------------------


def the_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``fetch_failed`` line of a fetch that exited 1 (and no traceback)."""
    assert done.returncode == 1, done.stderr
    text = done.stderr.decode()
    assert "Traceback" not in text, text
    failed = [line for line in text.splitlines() if "fetch_failed" in line]
    assert len(failed) == 1, text
    return failed[0]


async def test_cli_an_unreachable_tracker_is_one_line(tmp_path: Path) -> None:
    done = await run_cli(*fetch_command(ledger_of(tmp_path), f"http://user:pw@{REFUSED}"))
    line = the_error_line(done)
    assert done.stderr.decode() == line + "\n"  # nothing else on stderr
    assert f"tracker http://***@{REFUSED}" in line and "pw" not in line


async def test_cli_every_source_failing_while_downloading_is_one_line(tmp_path: Path) -> None:
    """Inspection works (one byte), every piece dies after 200 kB: exit 1, one line that
    names the source once."""
    up = FakeUpstream(files=dict(FILES), behaviour={FULL: Behaviour(drop_after=200_000)})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, FILES)
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
        assert [s for s in up.gets(FULL) if s.body_sent >= 200_000]  # it got that far
    line = the_error_line(done)
    assert "every source failed" in line
    assert line.count(up.url(FULL)) == 1, line


async def test_cli_nothing_newer_than_the_ledger_exits_0(tmp_path: Path) -> None:
    async with up_to_date(tmp_path) as (ledger, _, t):
        done = await run_cli(*fetch_command(ledger, t.base))
    assert done.returncode == 0, done.stderr
    assert b"fetch_nothing_to_do" in done.stderr and b"fetch_failed" not in done.stderr


async def test_cli_nothing_on_offer_exits_1(tmp_path: Path) -> None:
    async with tracker_for("redirect", tmp_path) as t:
        done = await run_cli(*fetch_command(ledger_of(tmp_path), t.base))
    assert "no snapshot is available" in the_error_line(done)


async def test_cli_full_false(tmp_path: Path) -> None:
    """Go's ``--full=false``: an incremental on the ledger's own full (even an old one), never
    a full; with no full in the ledger there is nothing it may fetch (exit 1, one line)."""
    old_full = full_name(10_000)
    on_old = incremental_name(10_000, 20_700)
    files = {**FILES, on_old: archive_bytes(MiB, seed=53)}
    empty, ledger = tmp_path / "empty", ledger_of(tmp_path)
    empty.mkdir()
    (ledger / old_full).write_bytes(b"old")
    async with (
        serving(FakeUpstream(files=files)) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        advertise(t.index, f"{up.base}/b", [(old_full, up.url(old_full), 3)])
        advertise(t.index, f"{up.base}/c", [(on_old, up.url(on_old), MiB)])
        command = [*fetch_command(empty, t.base, "--full=false"), "--incremental=true"]
        refused = await run_cli(*command)
        assert not up.gets()
        command = [*fetch_command(ledger, t.base, "--full=false"), "--incremental=true"]
        done = await run_cli(*command)
        assert done.returncode == 0, done.stderr
        assert not up.gets(FULL) and not up.gets(INCR)
    assert "--full=false" in the_error_line(refused)
    assert list(empty.iterdir()) == []
    assert contents(ledger) == {old_full: sha256(b"old"), on_old: sha256(files[on_old])}


async def test_cli_group_selects_another_group(tmp_path: Path) -> None:
    """``--group``: that group's best snapshot, not the default group's."""
    other_full, other_incr = full_name(30_000), incremental_name(30_000, 30_400)
    other = {other_full: archive_bytes(2 * MiB, seed=54), other_incr: archive_bytes(MiB, seed=55)}
    config = make_config(
        None,
        proxy_snapshot_downloads=False,
        target_groups=(OPEN_GROUP, TargetGroup(group="testnet")),
    )
    ledger = ledger_of(tmp_path)
    async with (
        serving(FakeUpstream(files={**FILES, **other})) as up,
        running_tracker(config) as t,
    ):
        advertise_all(t, up, FILES)
        advertise(
            t.index,
            f"{up.base}/testnet",
            [(n, up.url(n), len(d)) for n, d in other.items()],
            group="testnet",
        )
        command = [*fetch_command(ledger, t.base, "--group", "testnet"), "--incremental=true"]
        done = await run_cli(*command)
        assert done.returncode == 0, done.stderr
        assert not up.gets(FULL) and not up.gets(INCR)
    assert contents(ledger) == {name: sha256(data) for name, data in other.items()}


@asynccontextmanager
async def tmpfs(path: Path, options: str) -> AsyncIterator[None]:
    """A tmpfs mounted at ``path`` (created) for the block; skips the test where mounting
    is not allowed."""
    os.mkdir(path)
    mounted = await trio.run_process(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        await trio.run_process(["umount", str(path)], check=False)


async def test_a_read_only_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    """OSError from the ledger (EROFS here; ENOSPC and EACCES take the same way): exit 1,
    one line, no traceback."""
    ledger = tmp_path / "readonly"
    async with (
        tmpfs(ledger, "ro,size=64m"),
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        done = await run_cli(*fetch_command(ledger, t.base, "--progress", "none"))
    assert "Read-only file system" in the_error_line(done)


async def test_a_failing_write_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while the workers write (raised inside their nursery, naming no file, as the
    kernel's does): a FetchError naming the temp file and what a next run resumes."""

    def full(*args: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tracker.fetch.workers, "splice_to_file", full)
    monkeypatch.setattr(tracker.fetch.workers, "_write_all", full)
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise_all(t, up, FILES)
        with pytest.raises(FetchError, match="No space left on device") as info:
            await run_fetch(options(ledger_of(tmp_path), t.base), NoProgress())
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(str(ledger_of(tmp_path) / f".tmp-{FULL}: No space left on device"))
    assert line.endswith(f"0 of {len(FILES[FULL])} bytes kept, run again to resume")


async def test_no_space_fails_before_downloading(tmp_path: Path) -> None:
    small = tmp_path / "small"
    async with tmpfs(small, "size=2m"):
        async with (
            serving(FakeUpstream(files=dict(FILES))) as up,
            tracker_for("redirect", tmp_path) as t,
        ):
            advertise_all(t, up, FILES)
            done = await run_cli(*fetch_command(small, t.base, "--progress", "none"))
            assert not [s for s in up.gets(FULL) if s.body_sent > 1]
        assert done.returncode == 1
        assert b"not enough space" in done.stderr
        assert list(small.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["fetch", "--ledger", "x"],
        ["fetch", "--ledger", "x", "--tracker", "http://t", "--source", "http://s"],
        ["fetch", "--ledger", "x", "--tracker", "http://t", "--full=false", "--incremental=no"],
        ["fetch", "--ledger", "x", "--tracker", "http://t", "--min-speed", "fast"],
        # "\u0662".isdigit() and int() takes it: a bug would fetch (from a refused port).
        ["fetch", "--ledger", "x", "--tracker", f"http://{REFUSED}", "--connections", "\u0662"],
    ],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    done = await run_cli(sys.executable, "-m", "tracker", *args)
    assert done.returncode == 2, done.stderr


async def test_progress_log_lines_without_a_terminal(tmp_path: Path) -> None:
    """``--progress auto`` with stderr a pipe: ``fetch_progress`` lines at the interval
    asked (hidden ``--progress-every``), and the summary line of each file."""
    data = archive_bytes(6 * MiB, seed=52)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=2 * MiB)})
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        extra = ("--progress", "auto", "--progress-every", "100ms")
        done = await run_cli(*fetch_command(ledger, t.base, *extra))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    progress = [line for line in lines if "fetch_progress" in line]
    assert len(progress) >= 2, lines  # about 0.75 s of download
    assert all(f"file={FULL}" in line and "percent=" in line for line in progress)
    [summary] = [line for line in lines if "fetch_done" in line]
    assert f"bytes={len(data)}" in summary
    assert re.search(r" seconds=[0-9.]+", summary) and re.search(r" rate=[0-9.]+MiB/s", summary)
    assert re.search(rf'sources="{re.escape(up.url(FULL))} \d+B"', summary), summary


async def test_progress_bar_in_a_terminal_and_log_lines_without(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    data = archive_bytes(12 * MiB, seed=47)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=8 * MiB)})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        # Without a terminal: log lines (every 5 s: the download takes about 6 s at 2 MiB/s
        # per connection... so the final summary line is what is certain).
        plain = tmp_path / "plain"
        plain.mkdir()
        done = await run_cli(*fetch_command(plain, t.base, "--progress", "log"))
        assert done.returncode == 0, done.stderr
        assert b"fetch_done" in done.stderr and b"\r" not in done.stderr
        # In a pseudo-terminal: a tqdm bar (carriage returns, a percentage, a rate).
        tty = tmp_path / "tty"
        tty.mkdir()
        controller, terminal = pty.openpty()
        os.set_blocking(controller, False)
        # A terminal of 24 rows and 100 columns (a fresh pty has 0x0, where tqdm hides bars).
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        try:
            process = await trio.lowlevel.open_process(
                fetch_command(tty, t.base), stdin=terminal, stdout=terminal, stderr=terminal
            )
        finally:
            os.close(terminal)
        output = bytearray()
        try:
            async with reaped(process):
                with trio.fail_after(60):
                    while True:
                        try:
                            # in the event loop: fail_after cancels the wait, a blocked
                            # read in a thread would not end (a hung fetch hung the test)
                            await trio.lowlevel.wait_readable(controller)
                            chunk = os.read(controller, 65536)
                        except BlockingIOError:
                            continue
                        except OSError:  # EIO: the terminal's last user closed it
                            break
                        if not chunk:
                            break
                        output += chunk
                    await process.wait()
        finally:
            os.close(controller)
    assert process.returncode == 0, bytes(output[-2000:])
    assert b"\r" in output and b"100%" in output and b"B/s" in output
