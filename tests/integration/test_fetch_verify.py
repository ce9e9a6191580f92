"""``snapshot-tracker fetch`` checks real archives before they enter the ledger
(docs/http-api.md, "Verified archives"): a copy that fails the archive check is deleted and
the next source's copy fetched; with no good copy anywhere, exit 1 with one line."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from archives import bad_variants, build_archive, huge_pax_size_tar
from helpers_bytes import sha256
from helpers_upstream import Behaviour, FakeUpstream
from test_fetch import FAST, fetch_command, ledger_of, options, run_cli, the_error_line
from test_fetch_sources import body_bytes, tracker_of

from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import run_fetch

NAME, GOOD = build_archive(31_000, compression="zst", accounts=4, account_size=256 * 1024)
VERIFYING = attrs.evolve(FAST, verify=True)


@pytest.mark.parametrize("variant", ["truncated_zero_padded", "other_slot", "trailing_bytes"])
async def test_a_copy_that_fails_the_check_is_deleted_and_the_next_source_used(
    tmp_path: Path, variant: str
) -> None:
    bad = bad_variants(NAME, GOOD)[variant]
    first, second = FakeUpstream(files={NAME: bad}), FakeUpstream(files={NAME: GOOD})
    ledger = ledger_of(tmp_path)
    async with tracker_of([first, second]) as tracker:  # no sha256 listed: the check alone
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        [result] = await run_fetch(opts, NoProgress())
    assert body_bytes(first, NAME) >= len(bad)  # a whole bad copy came first
    assert result.sha256 == sha256(GOOD)
    assert sorted(p.name for p in ledger.iterdir()) == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD


async def test_no_good_copy_anywhere_is_exit_1_and_nothing_kept(tmp_path: Path) -> None:
    variants = bad_variants(NAME, GOOD)
    ups = [FakeUpstream(files={NAME: variants[v]}) for v in ("flipped_byte", "not_tar")]
    ledger = ledger_of(tmp_path)
    async with tracker_of(ups) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command)
    line = the_error_line(done)
    assert "no source delivered a good copy" in line, line
    assert list(ledger.iterdir()) == []


async def test_without_verification_the_bad_copy_is_kept_as_sent(tmp_path: Path) -> None:
    """The same scene with ``--verify=false``: what shows the check above is the check."""
    bad = bad_variants(NAME, GOOD)["truncated_zero_padded"]
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={NAME: bad})]) as tracker:
        await run_fetch(options(ledger, tracker.base, incremental=False), NoProgress())
    assert (ledger / NAME).read_bytes() == bad


async def test_the_check_reads_the_copy_while_it_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check follows the gapless prefix on disk: with the source paused at 60 % of the
    archive, it has read more than half of it already (after the download, only the rest
    is left to read)."""
    import trio
    from helpers_proxy import wait_for
    from helpers_upstream import Behaviour

    from tracker.proof.archive import archivecheck

    name, good = build_archive(32_000, compression="zst", accounts=16, account_size=512 * 1024)
    paused = Behaviour(pause_at=len(good) * 6 // 10)
    up = FakeUpstream(files={name: good}, behaviour={name: paused})
    read = [0]
    original = archivecheck.GrowingFile.read

    def counted(self: archivecheck.GrowingFile, size: int) -> bytes:
        data = original(self, size)
        read[0] += len(data)
        return data

    monkeypatch.setattr(archivecheck.GrowingFile, "read", counted)
    ledger = ledger_of(tmp_path)
    one = attrs.evolve(VERIFYING, connections=1, piece_size=len(good))  # one request
    async with tracker_of([up]) as tracker, trio.open_nursery() as nursery:
        opts = options(ledger, tracker.base, incremental=False, settings=one)
        nursery.start_soon(run_fetch, opts, NoProgress())
        await wait_for(lambda: read[0] > len(good) // 2, timeout=20)
        assert not (ledger / name).exists()  # still downloading: paused
        paused.resume.set()
    assert (ledger / name).read_bytes() == good
    assert read[0] == len(good)  # every byte read once


async def test_a_copy_that_fails_part_way_is_dropped_then(tmp_path: Path) -> None:
    """A copy whose first bytes already fail the check (valid zstd, not a tar) is dropped
    as soon as the check sees it, while its source still holds the rest back: the good
    copy comes from the other source (without the early stop the fetch would wait for the
    paused source until its 60 s request timeout)."""
    import trio
    from helpers_upstream import Behaviour

    name, good = build_archive(32_000, compression="zst", accounts=16, account_size=512 * 1024)
    bad = bad_variants(name, good)["not_tar"]
    held = Behaviour(pause_at=len(bad) * 6 // 10)
    first = FakeUpstream(files={name: bad}, behaviour={name: held})
    second = FakeUpstream(files={name: good})
    ledger = ledger_of(tmp_path)
    patient = attrs.evolve(VERIFYING, connections=1, piece_size=len(good), request_timeout=60.0)
    async with tracker_of([first, second]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=patient)
        with trio.fail_after(20):
            [result] = await run_fetch(opts, NoProgress())
        held.resume.set()
    # Its copy's request never went past the pause (the others are 64 KiB samples).
    assert max(s.body_sent for s in first.gets(name)) == held.pause_at
    assert result.sha256 == sha256(good)
    assert sorted(p.name for p in ledger.iterdir()) == [name]


@pytest.mark.parametrize(
    ("variant", "reason", "kept"),
    [
        # valid zstd, not a tar: the bytes that came fail the check
        ("not_tar", "no source delivered a good copy: .*tar: bad header checksum", False),
        # the good archive: the bytes that came pass as far as they go, kept to resume
        ("good", "every source failed: ", True),
    ],
)
async def test_a_copy_its_source_breaks_off_is_judged_on_the_bytes_that_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, reason: str, kept: bool
) -> None:
    """The one source breaks off every answer after 100 kB, and is dropped after the third
    with 300 kB of the copy on disk, while the check that follows them lags behind (held
    back here: never told of a byte during the download, as on a loaded machine). The bytes
    on disk get the check's verdict before the fetch fails: a bad copy is rejected and
    deleted (it failed "every source failed: ...: source closed the connection mid-body",
    and the bad bytes were kept to resume, whenever the check had not caught up yet), a
    good one kept as the source's failure."""
    monkeypatch.setattr("tracker.fetch.download.FOLLOW_EVERY", 3600.0)
    data = GOOD if variant == "good" else bad_variants(NAME, GOOD)[variant]
    up = FakeUpstream(files={NAME: data}, behaviour={NAME: Behaviour(drop_after=100_000)})
    ledger = ledger_of(tmp_path)
    async with tracker_of([up]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        with pytest.raises(FetchError, match=reason):
            await run_fetch(opts, NoProgress())
    assert body_bytes(up, NAME) >= 3 * 100_000  # three answers broken off
    left = sorted(p.name for p in ledger.iterdir())
    assert left == ([f".tmp-{NAME}", f".tmp-{NAME}.state"] if kept else [])


async def test_a_copy_the_check_cannot_parse_is_deleted_and_the_next_source_used(
    tmp_path: Path,
) -> None:
    # A pax size of 5,000 digits (more than Python converts to an int) in a plain tar of the
    # good copy's size: rejected like any bad copy, the other source tried, nothing left.
    name, good = build_archive(33_000, compression="tar", accounts=4, account_size=256 * 1024)
    bad = huge_pax_size_tar(name, good)
    first, second = FakeUpstream(files={name: bad}), FakeUpstream(files={name: good})
    ledger = ledger_of(tmp_path)
    async with tracker_of([first, second]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        [result] = await run_fetch(opts, NoProgress())
    assert body_bytes(first, name) >= len(bad) // 2  # the bad copy came first
    assert result.sha256 == sha256(good)
    assert sorted(p.name for p in ledger.iterdir()) == [name]  # no temp or state file
    assert (ledger / name).read_bytes() == good


async def test_a_resumed_copy_rejected_blames_no_source_of_this_run(tmp_path: Path) -> None:
    """A fetch resumes from what an interrupted run left: its pool had a liar, whose piece
    (in the middle) is wrong. The copy fails its check; no source of this run sent those
    bytes, so none is blamed for them: the same sources give a fresh copy, which passes. It
    ended "no source delivered a good copy" with the one honest source (a pool of one was
    not tried again), and a pool of several left out the one that sent the missing tail
    as the liar (``alone``)."""
    from helpers_upstream import UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED

    from tracker.fetch.state import State, save_state, temp_path
    from tracker.multisource.sources import Identity

    ledger = ledger_of(tmp_path)
    size = len(GOOD)
    bad = bytearray(GOOD)
    middle = size // 2
    bad[middle : middle + 4096] = bytes(b ^ 0xFF for b in bad[middle : middle + 4096])
    kept = size - 100_000
    temp = ledger / Path(temp_path(str(ledger), NAME)).name  # what the earlier run wrote
    temp.write_bytes(bytes(bad[:kept]))
    identity = Identity(size, UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(NAME, identity, ((0, kept),)))
    honest = FakeUpstream(files={NAME: GOOD})
    async with tracker_of([honest]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=VERIFYING)
        [result] = await run_fetch(opts, NoProgress())
    assert result.sha256 == sha256(GOOD)
    assert sorted(p.name for p in ledger.iterdir()) == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD
    assert body_bytes(honest, NAME) >= size  # a fresh copy came whole
