"""A local directory whose scan hangs (a stuck network mount): its thread is abandoned at
the probe's timeout and kept until the file system answers. Every round left one more
thread there, in trio's shared pool: after 40 rounds every sidecar's probe and every file
answer stalled. Scans run in threads of their own, and a directory whose last scan has not
ended is not scanned again meanwhile. The local files' checks list the same directories:
their threads are abandoned at the stop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from tracker.config.schema import Config, LocalTargets, TargetGroup
from tracker.core.digests import Digests
from tracker.core.snapshots import SnapshotInfo, TargetKey
from tracker.discovery import probing
from tracker.discovery.probing import SCANS_AT_ONCE, Probes
from tracker.discovery.roster import Target
from tracker.errors import ProbeError
from tracker.net.egress import resolve
from tracker.ordering.index import Index
from tracker.proof.background import localfiles
from tracker.proof.background.localfiles import LocalProofs


async def test_a_hung_scan_keeps_to_its_own_thread_and_is_not_piled_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = threading.Event()
    scans: list[str] = []

    def scan(path: str) -> list[SnapshotInfo]:
        scans.append(path)
        answers.wait(10)
        return []

    monkeypatch.setattr(probing, "scan_local", scan)
    paths = [str(tmp_path / f"mount{n}") for n in range(SCANS_AT_ONCE + 2)]
    group = TargetGroup(group="g", local_targets=LocalTargets(paths=tuple(paths)))
    probes = Probes(Config(target_groups=(group,)), resolve)
    targets = [Target(TargetKey("g", p), "local", p) for p in paths]
    shared = trio.to_thread.current_default_thread_limiter()
    refused: list[str] = []
    try:
        for _round in range(3):
            for target in targets:
                with trio.move_on_after(0.05):
                    try:
                        await probes.probe(target, group)
                    except ProbeError as exc:
                        refused.append(str(exc))
        assert len(refused) == 2 * SCANS_AT_ONCE  # rounds 2 and 3, the hung ones
        assert all("has not ended" in reason for reason in refused)
        assert shared.borrowed_tokens == 0
        assert sorted(scans) == sorted(paths[:SCANS_AT_ONCE])  # one thread each, no more
        with pytest.raises(ProbeError, match="the last scan of this directory has not ended"):
            await probes.probe(targets[0], group)
    finally:
        answers.set()
    with trio.fail_after(10):  # the mount answers: scanned again
        while True:
            try:
                assert await probes.probe(targets[0], group) == []
                break
            except ProbeError:
                await trio.sleep(0.01)


@pytest.mark.parametrize(("hung", "answer"), [("scan_local", []), ("_statement_files", {})])
async def test_a_hung_listing_of_the_local_checks_does_not_hold_the_stop(
    hung: str, answer: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks of local files list their directories, and look for the statement files
    beside their archives, every second in worker threads. Those threads were waited for: a
    ledger on a stuck mount held the tracker's stop (SIGTERM) until the mount answered, or
    systemd killed it. They are abandoned at the stop, as the scrape's own scan is (no
    network: the daemon's own class)."""
    answers, entered = threading.Event(), trio.Event()

    def stuck(_what: object) -> object:
        trio.from_thread.run_sync(entered.set)
        answers.wait(5)
        return answer  # what the mount's answer would have made: an empty directory

    monkeypatch.setattr(localfiles, hung, stuck)
    group = TargetGroup(group="g", local_targets=LocalTargets(paths=(str(tmp_path),)))
    config = Config(target_groups=(group,))
    proofs = LocalProofs(lambda: config, Index(), Digests())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proofs.run)
            with trio.fail_after(5):
                await entered.wait()
            stopped_at = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - stopped_at < 1  # was the mount's answer, 5 s here
        assert proofs.rounds == 0
    finally:
        answers.set()
