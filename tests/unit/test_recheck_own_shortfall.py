"""The cache's check of a copy found unchecked (start-up, or a reload that raised its group's
``trust.require``): a copy that falls short for the tracker's own cause (its hashing process
killed, as an OOM kill does; its temporary space or memory short) is never rejected. It stays
on disk, unserved, and is checked again once ``retry_after`` passed (docs/http-api.md,
"Verified archives" and "The accounts level"); only a failure that is the archive's own
removes it. A real check of a small full, its hashing process a real child killed by its pid.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from archives import build_archive
from test_hashworker import workers

from tracker.cache.checked import CheckedFiles, Checking, RecheckVerdict, recheck_verdict
from tracker.proof.accounts import hashworker
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.levels import Level, Proof


async def told() -> None:
    """The cache's size told (nothing to tell here)."""


GROUP = "mainnet"
FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
INCREMENTAL = "incremental-snapshot-90-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
KILLED = (
    "not proven: the hashing process ended"
    " (killed by SIGKILL: out of memory? (the kernel's OOM killer sends it))"
)
BOUND = "not proven: 2000 accounts over the bound of 1000"
UNLOADABLE = "a storage the manifest does not list"
RETRY = 60.0
KEPT: tuple[RecheckVerdict, str] = ("kept", "")

ROWS: list[tuple[Level, str | None, str, Proof, tuple[RecheckVerdict, str]]] = [
    # (require, loadable_by, name, proof, verdict)
    (
        Level.ACCOUNTS,
        None,
        FULL,
        Proof(Level.MANIFEST, note=KILLED, local_cause=True),
        ("retried", f"archive not proven here: proven to manifest, accounts required: {KILLED}"),
    ),
    (
        Level.CLUSTER,  # what a check shows of cluster is accounts: the votes come later
        None,
        FULL,
        Proof(Level.MANIFEST, note=KILLED, local_cause=True),
        ("retried", f"archive not proven here: proven to manifest, accounts required: {KILLED}"),
    ),
    (  # the operator's bound is the archive's size: below the level for good
        Level.ACCOUNTS,
        None,
        FULL,
        Proof(Level.MANIFEST, note=BOUND),
        ("removed", f"proven to manifest, accounts required: {BOUND}"),
    ),
    (  # what the group's validators cannot load is the archive's own fault
        Level.ACCOUNTS,
        "agave",
        FULL,
        Proof(Level.MANIFEST, note=KILLED, local_cause=True, unloadable=UNLOADABLE),
        ("removed", f"trust.loadable_by agave: {UNLOADABLE}"),
    ),
    (Level.MANIFEST, None, FULL, Proof(Level.MANIFEST, note=KILLED, local_cause=True), KEPT),
    (Level.ACCOUNTS, None, INCREMENTAL, Proof(Level.MANIFEST), KEPT),
    (Level.ACCOUNTS, None, FULL, Proof(Level.ACCOUNTS), KEPT),
    (Level.CLUSTER, None, FULL, Proof(Level.ACCOUNTS), KEPT),
]


@pytest.mark.parametrize(("require", "loadable_by", "name", "proof", "verdict"), ROWS)
def test_what_becomes_of_a_copy_checked_again(
    require: Level,
    loadable_by: str | None,
    name: str,
    proof: Proof,
    verdict: tuple[RecheckVerdict, str],
) -> None:
    checking = Checking(verify=True, require=require, loadable_by=loadable_by)
    assert recheck_verdict(checking, name, proof) == verdict


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Killer:
    """Kills every hashing process of a proof (SIGKILL, as the OOM killer) as soon as it
    started while ``on``; ``pids``: those it killed."""

    def __init__(self) -> None:
        self.on = True
        self.pids: list[int] = []


@pytest.fixture
def killer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Killer]:
    """A :class:`Killer` of the real hashing processes; none is left behind, however the
    test ends (the proof's close reaps them)."""
    monkeypatch.setattr(hashworker, "START_FROM", 0)  # a small archive's proof starts one
    start = hashworker.HashWorker._start
    killer = Killer()

    def start_then_kill(self: hashworker.HashWorker) -> None:
        start(self)
        if killer.on and self._proc is not None:
            killer.pids.append(self._proc.pid)
            os.kill(self._proc.pid, signal.SIGKILL)

    monkeypatch.setattr(hashworker.HashWorker, "_start", start_then_kill)
    yield killer
    assert not workers()


async def test_a_copy_whose_hashing_process_was_killed_stays_and_is_checked_again(
    tmp_path: Path, killer: Killer, caplog: pytest.LogCaptureFixture
) -> None:
    name, good = build_archive(1100, accounts=7)
    group_dir = tmp_path / GROUP
    group_dir.mkdir()
    (group_dir / name).write_bytes(good)
    rejected: list[tuple[str, str, str]] = []
    clock = Clock()
    checked = CheckedFiles(
        verify=True,
        on_rejected=lambda *a: rejected.append(a),
        required=lambda group: Level.ACCOUNTS,
        prove_accounts=AccountsLimits(memory=64 * 1024**2, workers=2),
        retry_after=RETRY,
        monotonic=clock,
    )
    checked.restore(str(group_dir), GROUP, list(os.scandir(group_dir)))

    asked: list[str] = []

    async def path_for(group: str, archive: str) -> str:
        asked.append(archive)
        return str(tmp_path / group / archive)

    await checked.recheck(path_for, told)
    assert len(killer.pids) == 1
    assert (group_dir / name).exists(), rejected
    assert rejected == []
    assert not [r for r in caplog.records if r.msg == "archive_rejected"]
    assert not checked.servable(GROUP, name)
    [failed] = [r for r in caplog.records if r.msg == "cache_recheck_failed"]
    assert failed.tracker_fields["reason"] == (  # type: ignore[attr-defined]
        f"archive not proven here: proven to manifest, accounts required: {KILLED}"
    )
    # Before retry_after: not read again (each try reads a whole archive).
    clock.now += RETRY - 1
    await checked.recheck(path_for, told)
    assert len(killer.pids) == 1
    assert asked == [name]
    # Memory again: the next try after retry_after proves it, a hit from then on.
    killer.on = False
    clock.now += 1
    await checked.recheck(path_for, told)
    assert checked.servable(GROUP, name)
    proof = checked.proof(GROUP, name)
    assert proof is not None and proof.level == Level.ACCOUNTS
    assert rejected == []
    clock.now += RETRY
    await checked.recheck(path_for, told)  # nothing left to check
    assert asked == [name, name]


async def test_a_copy_whose_checks_keep_falling_short_waits_longer_each_time(
    tmp_path: Path, killer: Killer
) -> None:
    """Each try reads the whole archive: a shortage that lasts (the OOM killer at every try)
    doubles the wait before the next one, and a try that proves it ends the waits."""
    name, good = build_archive(1100, accounts=7)
    group_dir = tmp_path / GROUP
    group_dir.mkdir()
    (group_dir / name).write_bytes(good)
    clock = Clock()
    checked = CheckedFiles(
        verify=True,
        required=lambda group: Level.ACCOUNTS,
        prove_accounts=AccountsLimits(memory=64 * 1024**2, workers=2),
        retry_after=RETRY,
        monotonic=clock,
    )
    checked.restore(str(group_dir), GROUP, list(os.scandir(group_dir)))

    async def path_for(group: str, archive: str) -> str:
        return str(tmp_path / group / archive)

    await checked.recheck(path_for, told)  # killed: waits RETRY
    clock.now += RETRY
    await checked.recheck(path_for, told)  # killed again: waits twice as long
    assert len(killer.pids) == 2
    clock.now += RETRY
    await checked.recheck(path_for, told)
    assert len(killer.pids) == 2 and not checked.servable(GROUP, name)
    killer.on = False
    clock.now += RETRY
    await checked.recheck(path_for, told)
    assert checked.servable(GROUP, name)


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (0, "exit status 0"),
        (2, "exit status 2"),
        (-signal.SIGKILL, "killed by SIGKILL: out of memory? (the kernel's OOM killer sends it)"),
        (-signal.SIGSEGV, "killed by SIGSEGV"),
        (-200, "killed by signal 200"),
    ],
)
def test_how_a_child_ended_is_said_for_an_operator(code: int, said: str) -> None:
    """A killed hashing process was "exit status -9": the proof's note and the
    ``local_checked`` line now name the signal, and a SIGKILL points at memory."""
    assert hashworker.how_ended(code) == said
