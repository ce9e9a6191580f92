"""``fetch`` against hostile answers and a hostile ledger: what one source or a planted file
can do costs that source or that file, never the fetch, and never ends in a traceback."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import attrs
import pytest
from helpers_bytes import MiB, sha256
from helpers_fetch import Canned, HostileUpstream
from helpers_proxy import advertise
from helpers_upstream import (
    UPSTREAM_ETAG,
    UPSTREAM_LAST_MODIFIED,
    Behaviour,
    FakeUpstream,
    agave_rpc,
    serving,
)
from test_fetch import (
    FAST,
    FILES,
    FULL,
    advertise_all,
    fetch_command,
    ledger_of,
    options,
    run_cli,
    the_error_line,
    tracker_for,
)
from test_fetch_sources import tracker_of

import tracker.fetch.workers
from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import run_fetch
from tracker.fetch.state import Identity, State, save_state


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 0-0/²",
        "bytes 0-0/\u0661\u0662",
        "bytes 0-0/" + "9" * 40,
        "bytes 0-0/-5",
        "bytes 0-0/*",
    ],
)
async def test_a_hostile_content_range_costs_that_source_only(
    content_range: str, tmp_path: Path
) -> None:
    """One of two sources answers the first-byte check with a total that is no ASCII size
    (``"²".isdigit()`` is True, ``int("²")`` raises): the fetch ends with the other's bytes."""
    data = FILES[FULL]
    hostile = HostileUpstream(
        canned={
            FULL: Canned(206, [("content-range", content_range), ("content-length", "1")], b"x")
        }
    )
    good = FakeUpstream(files={FULL: data})
    ledger = ledger_of(tmp_path)
    async with serving(hostile), serving(good), tracker_for("redirect", tmp_path) as t:
        # The hostile one is advertised first: the tracker's route redirects there.
        advertise(t.index, hostile.base, [(FULL, hostile.url(FULL), len(data))])
        advertise(t.index, good.base, [(FULL, good.url(FULL), len(data))])
        [result] = await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
        assert hostile.gets(FULL)  # it was asked
    assert Path(result.path).name == FULL
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)


async def test_an_unexpected_error_is_one_line_with_the_traceback_at_debug(
    tmp_path: Path,
) -> None:
    """A bug inside a download's workers (an exception nothing expects, raised through their
    nurseries): exit 1, one ``fetch_failed`` line naming it, no traceback; at debug level
    the traceback is logged (one line, newlines escaped)."""
    inject = (
        "import sys, tracker.fetch.workers as d\n"
        "async def boom(*args, **kwargs):\n"
        "    raise ZeroDivisionError('injected fault')\n"
        "d._fetch_claim = boom\n"
        "from tracker.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    async with (
        serving(FakeUpstream(files=dict(FILES))) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise(t.index, up.base, [(n, up.url(n), len(d)) for n, d in FILES.items()])
        command = fetch_command(ledger_of(tmp_path), t.base, "--progress", "none")
        with_fault = [sys.executable, "-c", inject, *command[3:]]
        done = await run_cli(*with_fault)
        debug = await run_cli(*with_fault, "--log-level", "debug")
    line = the_error_line(done)
    assert "unexpected error: ZeroDivisionError: injected fault" in line, line
    assert debug.returncode == 1
    logged = [row for row in debug.stderr.decode().splitlines() if "fetch_unexpected_error" in row]
    assert logged and "Traceback" in logged[0] and "injected fault" in logged[0], logged


# -- a hostile ledger ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted", [".tmp-{name}.state.new", ".tmp-{name}"])
async def test_a_planted_symlink_is_never_written_through(planted: str, tmp_path: Path) -> None:
    """A killed fetch left half of the file and its state; a symbolic link is planted under
    the state's temp name (or the temp file's): the file it points to is left alone, the
    fetch completes."""
    data = FILES[FULL]
    half = len(data) // 2
    ledger = ledger_of(tmp_path)
    (ledger / f".tmp-{FULL}").write_bytes(data[:half] + bytes(len(data) - half))
    identity = Identity(len(data), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL, identity, ((0, half),)))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n" + bytes(len(data)))
    before = victim.read_bytes()
    link = ledger / planted.format(name=FULL)
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    async with (
        serving(FakeUpstream(files={FULL: data})) as up,
        tracker_for("redirect", tmp_path) as t,
    ):
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(data))])
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert victim.read_bytes() == before
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    assert sorted(p.name for p in ledger.iterdir()) == [FULL]


# -- the state file claims no more than the disk holds --------------------------------------------


def holes_are_seen(directory: Path) -> bool:
    """True when the file system of ``directory`` reports a sparse file's holes."""
    probe = directory / "probe"
    with probe.open("wb") as f:
        f.truncate(1024 * 1024)
        try:
            os.lseek(f.fileno(), 0, os.SEEK_DATA)
        except OSError as exc:
            return exc.errno == errno.ENXIO
        finally:
            probe.unlink()
    return False


@pytest.mark.parametrize("temp_file", ["sparse", "short"])
async def test_a_state_claiming_bytes_not_on_disk_is_not_trusted(
    temp_file: str, tmp_path: Path
) -> None:
    """A state claiming the whole file done over a temp file of the right size with nothing
    written (all holes), or over one holding only its first half: the bytes that are not
    there are fetched, the others kept; the archive is the source's."""
    data = FILES[FULL]
    half = len(data) // 2
    ledger = ledger_of(tmp_path)
    if temp_file == "sparse" and not holes_are_seen(ledger):
        pytest.skip("the file system does not report holes")
    with (ledger / f".tmp-{FULL}").open("wb") as f:
        if temp_file == "sparse":
            f.truncate(len(data))
        else:
            f.write(data[:half])
    identity = Identity(len(data), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL, identity, ((0, len(data)),)))
    up = FakeUpstream(files={FULL: data})
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(data))])
        await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    sent = sum(s.body_sent for s in up.gets(FULL))
    if temp_file == "short":  # the half on disk was kept
        assert half <= sent < half + 512 * 1024, sent


async def test_the_temp_file_is_synced_before_a_state_claims_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every state file that claims more bytes than the one before was written after an
    ``fdatasync`` of the temp file that started after those bytes were written."""
    events: list[tuple[str, int]] = []
    real_sync, real_save = os.fdatasync, tracker.fetch.workers.save_state

    def sync(fd: int) -> None:
        events.append(("sync", 0))
        real_sync(fd)

    def save(ledger: str, state: State) -> None:
        events.append(("state", sum(end - start for start, end in state.done)))
        real_save(ledger, state)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(tracker.fetch.workers, "save_state", save)
    data = FILES[FULL]
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=4 * MiB)})
    settings = attrs.evolve(FAST, state_every=0.05)
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(data))])
        opts = options(ledger, t.base, incremental=False, settings=settings)
        await run_fetch(opts, NoProgress())
    assert sha256((ledger / FULL).read_bytes()) == sha256(data)
    claimed, synced_since = 0, False
    growing = 0
    for kind, count in events:
        if kind == "sync":
            synced_since = True
            continue
        if count > claimed:
            assert synced_since, events
            growing += 1
        claimed, synced_since = count, False
    assert growing >= 3, events  # several states while the bytes came in


@pytest.mark.parametrize(
    "date",
    [
        "Mon, 01 Jan 2024 00:00:00 +999999999999999999999999",  # OverflowError
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "not a date",
    ],
)
async def test_a_source_date_that_is_none_leaves_the_download_time(
    date: str, tmp_path: Path
) -> None:
    """The archive is dated as its source says once it is in place: a Last-Modified that
    is no date, or one no clock can hold, leaves the download's time and the fetch goes
    on to the incremental (it was an OverflowError after the full's rename: exit 1, the
    incremental never fetched)."""
    up = FakeUpstream(files=dict(FILES))
    for name in FILES:
        up.behaviour[name] = Behaviour(last_modified=date)
    ledger = ledger_of(tmp_path)
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, FILES)
        results = await run_fetch(options(ledger, t.base), NoProgress())
    assert sorted(r.path for r in results) == sorted(str(ledger / name) for name in FILES)
    assert {p.name: sha256(p.read_bytes()) for p in ledger.iterdir()} == {
        name: sha256(data) for name, data in FILES.items()
    }


async def test_an_empty_answer_is_never_installed_as_the_archive(tmp_path: Path) -> None:
    """No size listed and the one source answers 200 with nothing (agave's RPC serving an
    empty file): no source could deliver it, nothing lands in the ledger (it was a 0-byte
    archive renamed into place as a success)."""
    up = FakeUpstream(files={FULL: b""}, behaviour={FULL: agave_rpc()})
    ledger = ledger_of(tmp_path)
    async with tracker_of([up], sizes=False) as t:
        with pytest.raises(FetchError, match=r"no source could deliver it \(an empty file\)"):
            await run_fetch(options(ledger, t.base, incremental=False), NoProgress())
    assert list(ledger.iterdir()) == []
