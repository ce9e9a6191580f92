"""A local directory whose listing hangs (a stuck network mount): its thread is abandoned
at the probe's timeout and kept until the file system answers. Every round left one more
thread there, in trio's shared pool: after 40 rounds every sidecar's probe and every file
answer stalled. Listings run in threads of their own, a directory whose last listing has not
ended is not listed again meanwhile, and a hung one takes nothing the others wait for: four
hung mounts held the four slots the scans shared, and every other local target timed out,
round after round. The local files' checks list the same directories: their threads are
abandoned at the stop."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import attrs
import pytest
import trio

from tracker.config.schema import Config, LocalTargets, TargetGroup
from tracker.core.digests import Digests
from tracker.core.snapshots import SnapshotInfo, TargetKey
from tracker.discovery import probing
from tracker.discovery.probing import Probes
from tracker.discovery.roster import Target
from tracker.errors import ProbeError
from tracker.net.egress import resolve
from tracker.ordering.index import Index
from tracker.proof.background import localfiles
from tracker.proof.background.localfiles import LocalProofs

#: More hung mounts than the four scans the probes once shared.
HUNG = 6
#: A full's name as agave writes it (the listing reads names, never bytes).
FULL = "snapshot-100-11111111111111111111111111111111.tar.zst"


async def test_hung_mounts_cost_their_own_targets_one_thread_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = threading.Event()
    listed: list[str] = []
    real_scan = probing.scan_local

    def scan(path: str) -> list[SnapshotInfo]:
        listed.append(path)
        if Path(path).name.startswith("mount"):
            answers.wait(30)
        return real_scan(path)

    monkeypatch.setattr(probing, "scan_local", scan)
    mounts = [tmp_path / f"mount{n}" for n in range(HUNG)]
    ledger = tmp_path / "ledger"
    for directory in (*mounts, ledger):
        directory.mkdir()
    (ledger / FULL).write_bytes(b"")
    paths = tuple(str(p) for p in (*mounts, ledger))
    group = TargetGroup(group="g", local_targets=LocalTargets(paths=paths))
    hurried = Config(target_groups=(group,), scrape_interval=1, scrape_timeout=0.1)
    probes = Probes(hurried, resolve)
    hung = [Target(TargetKey("g", p), "local", p) for p in paths[:HUNG]]
    shared = trio.to_thread.current_default_thread_limiter()
    refused: list[str] = []
    try:
        for target in hung:  # the first round: each abandoned at the scrape's timeout
            with trio.move_on_after(0.1), contextlib.suppress(ProbeError):
                await probes.probe(target, group)
        for target in hung:  # the next: each refused at once
            with trio.move_on_after(0.1):
                try:
                    await probes.probe(target, group)
                except ProbeError as exc:
                    refused.append(str(exc))
        # the ledger beside them, its probe given all the time it needs: listed at once
        probes.use(attrs.evolve(hurried, scrape_timeout=30))
        with trio.fail_after(20):
            [info] = await probes.probe(
                Target(TargetKey("g", paths[-1]), "local", paths[-1]), group
            )
        assert [f.file_name for f in info.files] == [FULL]
        assert len(refused) == HUNG
        assert all("has not ended" in reason for reason in refused), refused
        assert sorted(listed) == sorted(paths)  # one thread each, no more
        assert shared.borrowed_tokens == 0
    finally:
        answers.set()
    with trio.fail_after(20):  # the mounts answer: each is listed again (after its last)
        for target in hung:
            assert await probes.probe(target, group) == []
    await probes.aclose()


@pytest.mark.parametrize(("hung", "answer"), [("scan_local", []), ("_statement_files", {})])
async def test_a_hung_listing_of_the_local_checks_does_not_hold_the_stop(
    hung: str, answer: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks of local files list their directories, and look for the statement files
    beside their archives, every second in worker threads. Those threads were waited for: a
    ledger on a stuck mount held the tracker's stop (SIGTERM) until the mount answered, or
    systemd killed it. They are abandoned at the stop, as the scrape's own scan is (no
    network: the daemon's own class; a real archive, whose statement file is looked for once
    it is checked)."""
    from archives import build_archive

    answers, entered = threading.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()

    def stuck(_what: object) -> object:
        trio.from_thread.run_sync(entered.set, trio_token=token)
        answers.wait(5)
        return answer  # what the mount's answer would have made: an empty directory

    monkeypatch.setattr(localfiles, hung, stuck)
    name, data = build_archive(100)
    (tmp_path / name).write_bytes(data)
    group = TargetGroup(group="g", local_targets=LocalTargets(paths=(str(tmp_path),)))
    config = Config(target_groups=(group,))
    proofs = LocalProofs(lambda: config, Index(), Digests())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proofs.run)
            with trio.fail_after(5):
                await entered.wait()
            stopped_at, rounds = trio.current_time(), proofs.rounds
            nursery.cancel_scope.cancel()
        assert trio.current_time() - stopped_at < 1  # was the mount's answer, 5 s here
        assert proofs.rounds == rounds  # (the statements are read once a file was checked)
    finally:
        answers.set()
