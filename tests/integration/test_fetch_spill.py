"""Where ``snapshot-tracker fetch`` spills a full's accounts proof (docs/fetch.md, "Safely"):
beside its download, in the ledger's ``.accounts-proof``, not in the system's temporary
directory (a tmpfs on many hosts, where tens of GB count as memory; a small root disk on
others), gone when the fetch ends, leaving the download the room it still needs; and a
spill directory on a memory-backed file system said once before the download."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import attrs
import pytest
import trio
from archives import build_archive, many_accounts_archive
from helpers_proxy import wait_for
from helpers_upstream import Behaviour, FakeUpstream
from test_fetch import fetch_command, ledger_of, options
from test_fetch_sources import body_bytes, tracker_of
from test_fetch_verify import VERIFYING

from tracker.errors import NoRoom
from tracker.fetch import download
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import run_fetch
from tracker.proof.accounts.budget import CACHE_TEMP, PREFIX, AccountsLimits
from tracker.proof.accounts.spill import KEEP_FREE, SpillDir
from tracker.proof.levels import Level

SLOT = 52_000
MiB = 1024**2


async def _run(
    command: list[str], env: dict[str, str], into: list[subprocess.CompletedProcess[bytes]]
) -> None:
    with trio.fail_after(120):
        into.append(
            await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False, env=env
            )
        )


async def test_the_proof_spills_beside_the_download_and_is_gone_after(tmp_path: Path) -> None:
    """A full whose index passes its 1 MiB budget spills into the ledger's
    ``.accounts-proof`` while it downloads (the upstream holds the rest back meanwhile),
    not into ``TMPDIR``; an earlier fetch's leftover there goes at the start, and the ledger
    ends with the archive alone."""
    name, data = many_accounts_archive(SLOT + 1, 40_000, seed=3)
    paused = Behaviour(pause_at=len(data) // 2)
    up = FakeUpstream(files={name: data}, behaviour={name: paused})
    ledger = ledger_of(tmp_path)
    left = ledger / CACHE_TEMP / f"{PREFIX}killed"  # a fetch killed mid-proof: no lock held
    left.mkdir(parents=True)
    (left / "lock").write_bytes(b"")
    (left / "p00").write_bytes(bytes(400))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    done: list[subprocess.CompletedProcess[bytes]] = []
    async with tracker_of([up]) as tracker, trio.open_nursery() as nursery:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        command += ["--connections", "1", "--require", "accounts"]
        nursery.start_soon(_run, [*command, "--prove-accounts-memory", "1MiB"], env, done)
        spill = ledger / CACHE_TEMP
        await wait_for(lambda: not left.exists(), timeout=60)  # removed at the start
        await wait_for(lambda: spill.is_dir() and any(spill.iterdir()), timeout=60)
        assert [p.name.startswith(PREFIX) for p in spill.iterdir()] == [True]
        assert body_bytes(up, name) < len(data)  # spilled while the download waits
        assert list(tmpdir.iterdir()) == []  # not the system's temporary directory
        paused.resume.set()
    [result] = done
    assert result.returncode == 0, result.stderr
    assert f"fetch_done file={name}" in result.stderr.decode()
    assert "proven=accounts" in result.stderr.decode()
    assert sorted(p.name for p in ledger.iterdir()) == [name]  # .accounts-proof gone too


async def test_a_spill_directory_in_memory_is_said_before_the_download(
    tmp_path: Path, shm_dir: Path
) -> None:
    """``--prove-accounts-temp-dir`` on a tmpfs: one ``fetch_spill_in_memory`` line, the
    fetch goes on (a warning: the operator may mean it)."""
    name, data = build_archive(SLOT + 2)
    ledger = ledger_of(tmp_path)
    async with tracker_of([FakeUpstream(files={name: data})]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        command += ["--prove-accounts-temp-dir", str(shm_dir)]
        with trio.fail_after(120):
            result = await trio.run_process(
                [*command], capture_stdout=True, capture_stderr=True, check=False
            )
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.decode().splitlines() if "fetch_spill_in_memory" in line]
    assert len(said) == 1, result.stderr
    assert (
        f"--prove-accounts-temp-dir {str(shm_dir)!r} is on a memory-backed file system" in said[0]
    )
    assert sorted(p.name for p in ledger.iterdir()) == [name]


async def test_the_spill_leaves_the_download_the_room_it_still_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without ``fallocate`` (or a resumed temp file) the download's bytes
    still to come hold no room: the spill beside it leaves that room free, so its proof
    stops short ("not proven") where it would otherwise take it and fail the download."""
    name, data = many_accounts_archive(SLOT + 3, 40_000, seed=4)
    paused = Behaviour(pause_at=len(data) // 2)
    up = FakeUpstream(files={name: data}, behaviour={name: paused})
    ledger = ledger_of(tmp_path)
    # no preallocation here; room for the spill alone (~1.6 MB), not beside half the archive
    monkeypatch.setattr(download, "preallocate", os.ftruncate)
    monkeypatch.setattr(SpillDir, "free", lambda self: KEEP_FREE + MiB)
    stopped: list[str] = []
    need = SpillDir.need

    def watched(self: SpillDir, count: int) -> None:
        try:
            need(self, count)
        except NoRoom as exc:
            stopped.append(str(exc))
            raise

    monkeypatch.setattr(SpillDir, "need", watched)
    limits = AccountsLimits(memory=MiB, temp_dir=str(ledger / CACHE_TEMP))
    one = attrs.evolve(VERIFYING, connections=1, piece_size=len(data), prove_accounts=limits)
    results: list[download.Result] = []

    async def fetch() -> None:
        opts = options(ledger, tracker.base, incremental=False, settings=one)
        results.extend(await run_fetch(opts, NoProgress()))

    async with tracker_of([up]) as tracker, trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        await wait_for(lambda: bool(stopped), timeout=60)  # before the download's second half
        assert body_bytes(up, name) < len(data)
        paused.resume.set()
    assert "bytes the download beside it still needs" in stopped[0], stopped
    [result] = results
    assert result.proof is not None and result.proof.level == Level.MANIFEST
    assert (ledger / name).read_bytes() == data  # the download had its room
    assert sorted(p.name for p in ledger.iterdir()) == [name]
