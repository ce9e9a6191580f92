"""``fetch`` mixes several sources' pieces into one copy only when what checks the copy
vouches for every byte of it (docs/fetch.md, "How"): the tracker's sha256, the
statements of ``--trust-key``, or a full's ``accounts`` proof. Otherwise the copy is one
source's file: a lower-ranked liar that answers the identity samples honestly and any other
range with its own bytes (same size, the archive still well formed) never writes into it.
Real archives, real upstreams on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from archives import build_archive
from helpers_bytes import MiB, sha256
from helpers_fetch import sidecar_url
from helpers_statements import signer
from helpers_upstream import Behaviour, FakeUpstream
from test_fetch import FAST, ledger_of, options
from test_fetch_sources import body_bytes, tracker_of
from test_refresh_sources import status_cache_twins

from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import run_fetch
from tracker.fetch.state import load_state, temp_path
from tracker.fetch.trust import TrustPolicy
from tracker.proof.levels import Level
from tracker.proof.statements import Statement

FULL_NAME, FULL = build_archive(34_000, compression="tar", accounts=16, account_size=256 * 1024)
INCR_NAME, INCR = build_archive(
    34_100, base_slot=34_000, compression="tar", accounts=16, account_size=256 * 1024
)


def forged(data: bytes) -> bytes:
    """``data`` with a byte of every 4 KiB changed inside its account storages: the same
    size, a tar stream as well formed as the true one."""
    bad = bytearray(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.name.startswith("accounts/"):
                start, end = member.offset_data + 1024, member.offset_data + member.size - 1024
                for at in range(start, end, 4096):
                    bad[at] ^= 0x55
    return bytes(bad)


@attrs.define
class SampleHonestLiar(FakeUpstream):
    """Answers byte 0 and the identity samples (their length gives them away) with the true
    bytes (``truth``), every other range with ``forgery``'s."""

    truth: dict[str, bytes] = attrs.Factory(dict)
    forgery: dict[str, bytes] = attrs.Factory(dict)

    async def _answer(self, conn: Any, stream: Any, req: Any) -> bool:
        asked = {k.decode().lower(): v.decode() for k, v in req.headers}.get("range", "")
        first, _dash, last = asked.removeprefix("bytes=").partition("-")
        honest = not last or int(last) - int(first) + 1 in (1, FAST.sample_size)
        for name, true in self.truth.items():
            self.files[name] = true if honest else self.forgery[name]
        return await super()._answer(conn, stream, req)


async def test_a_liar_of_the_samples_never_writes_into_a_copy_nothing_vouches_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full not proven to accounts (``--prove-accounts false``) and an incremental (no
    level binds its storages), no sha256 listed, no ``--trust-key``: each from one source."""
    true = {FULL_NAME: FULL, INCR_NAME: INCR}
    forgeries = {name: forged(data) for name, data in true.items()}
    assert all(len(forgeries[n]) == len(d) and forgeries[n] != d for n, d in true.items())
    # The honest sidecar is ranked first; slow, so that a pooled liar would carry pieces.
    slow = {name: Behaviour(rate=4 * MiB) for name in true}
    honest = FakeUpstream(files=dict(true), behaviour=slow)
    liar = SampleHonestLiar(files=dict(true), truth=dict(true), forgery=forgeries)
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024, prove_accounts=None)
    caplog.set_level(logging.INFO, logger="tracker.fetch")
    async with tracker_of([honest, liar]) as tracker:
        results = await run_fetch(options(ledger, tracker.base, settings=settings), NoProgress())
    assert sorted(Path(r.path).name for r in results) == sorted(true)
    for result in results:
        name = Path(result.path).name
        assert (ledger / name).read_bytes() == true[name]
        assert [s.url for s in result.sources if s.sent] == [sidecar_url(honest, name)]
        assert body_bytes(liar, name) <= 1  # asked its first byte, never a piece
    assert [r.getMessage() for r in caplog.records].count("fetch_one_source") == 2


async def test_statements_refusing_a_copy_of_several_sources_leave_each_to_be_tried_alone(
    tmp_path: Path,
) -> None:
    """With ``--trust-key`` the liar is pooled (the statements name the copy's SHA-256)
    and its pieces make a copy they refuse: that ended the fetch, though the honest
    source's own copy is vouched for. Each source is tried alone next, as after any copy
    of several sources that failed."""
    true = {FULL_NAME: FULL}
    honest = FakeUpstream(files=dict(true), behaviour={FULL_NAME: Behaviour(rate=4 * MiB)})
    liar = SampleHonestLiar(files=dict(true), truth=dict(true), forgery={FULL_NAME: forged(FULL)})
    key = signer(1)
    now = int(time.time())
    said = Statement(
        name=FULL_NAME,
        size=len(FULL),
        sha256=sha256(FULL),
        slot=34_000,
        base_slot=None,
        snapshot_hash=FULL_NAME.split("-")[2].removesuffix(".tar"),
        bank_hash=None,
        level=Level.MANIFEST,
        voted_stake=None,
        checked_at=now - 10,
        expires=now + 3600,
    )
    document = json.loads(key.sign(said).encode())
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(
        FAST,
        verify=True,
        piece_size=256 * 1024,
        prove_accounts=None,
        trust=TrustPolicy(frozenset({key.public_key})),
    )
    async with tracker_of([honest, liar]) as tracker:
        for entry in tracker.entries:
            for file in entry["files"]:
                file["attestations"] = [document]
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        [result] = await run_fetch(opts, NoProgress())
    assert body_bytes(liar, FULL_NAME) > FAST.sample_size  # pooled: it carried pieces
    assert (ledger / FULL_NAME).read_bytes() == FULL
    assert result.vouched_by == (key.public_key,)


async def test_a_resume_never_joins_an_earlier_runs_bytes_of_another_source(
    tmp_path: Path,
) -> None:
    """A full not proven to accounts (``--prove-accounts false``), no sha256 listed, no
    ``--trust-key``: its copy must be one source's. An earlier run took it from a liar (that
    source alone: the best one then) and was killed half way, leaving its temp file and
    state; the liar sent the honest source's validators. This run has the honest source
    only: resuming joined the liar's half to the honest one's, a copy no check reads whole
    (the state said which bytes were on disk, not who sent them)."""
    from helpers_upstream import UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED

    from tracker.fetch.state import State, save_state, temp_path
    from tracker.multisource.sources import Identity

    ledger = ledger_of(tmp_path)
    half = len(FULL) // 2
    (ledger / Path(temp_path(str(ledger), FULL_NAME)).name).write_bytes(forged(FULL)[:half])
    identity = Identity(len(FULL), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    save_state(str(ledger), State(FULL_NAME, identity, ((0, half),)))
    honest = FakeUpstream(files={FULL_NAME: FULL})
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024, prove_accounts=None)
    async with tracker_of([honest]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        await run_fetch(opts, NoProgress())
    assert (ledger / FULL_NAME).read_bytes() == FULL
    assert body_bytes(honest, FULL_NAME) >= len(FULL)  # its own copy, whole


async def test_a_liars_status_cache_never_reaches_the_ledger_in_a_copy_proven_to_accounts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full proven to ``accounts``, no sha256 listed, no ``--trust-key``: it is pooled,
    but ``accounts`` binds no status (docs/architecture.md, "Bytes no level binds"). A
    liar that answers the samples honestly sends, in its pieces, an archive that differs
    from the honest one in its status cache only: the copy passed every check with those
    statuses, and the validator would load them. The bytes no level binds that the liar
    wrote are asked of the first source again and replaced: the ledger holds the first
    source's archive."""
    name, good, lie = status_cache_twins(9330)
    honest = FakeUpstream(files={name: good}, behaviour={name: Behaviour(rate=4 * MiB)})
    liar = SampleHonestLiar(files={name: good}, truth={name: good}, forgery={name: lie})
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024)
    caplog.set_level(logging.INFO, logger="tracker.fetch")
    async with tracker_of([honest, liar]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        [result] = await run_fetch(opts, NoProgress())
    assert body_bytes(liar, name) > MiB  # pooled: it carried pieces of the head
    assert result.proof is not None and result.proof.level >= Level.ACCOUNTS
    assert sha256((ledger / name).read_bytes()) == sha256(good)
    assert result.sha256 == sha256(good)
    checked = [r for r in caplog.records if r.getMessage() == "fetch_unbound_checked"]
    assert checked and int(getattr(checked[0], "tracker_fields", {})["rewritten"]) > 0


def resumed_from_a_liar(tmp_path: Path) -> tuple[str, bytes, Path, int]:
    """A ledger where an earlier run of a full proven to ``accounts`` took its first half
    from a liar (another status cache, nothing else) and was killed: its temp file and a
    state naming that source. Returns the archive's name, the honest bytes, the ledger and
    the half's length."""
    from helpers_upstream import UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED

    from tracker.fetch.state import State, save_state
    from tracker.multisource.sources import Identity

    name, good, lie = status_cache_twins(9330)
    ledger = ledger_of(tmp_path)
    half = len(lie) // 2
    (ledger / Path(temp_path(str(ledger), name)).name).write_bytes(lie[:half])
    identity = Identity(len(lie), UPSTREAM_ETAG, UPSTREAM_LAST_MODIFIED)
    liar = "http://127.0.0.1:9/v1/snapshot/" + name
    save_state(str(ledger), State(name, identity, ((0, half),), writers=(liar,)))
    return name, good, ledger, half


async def test_a_resumed_copy_proven_to_accounts_keeps_no_earlier_sources_status_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier run took the first half of a full proven to ``accounts`` from a liar
    (another status cache, nothing else) and was killed, leaving its temp file and a state
    naming that source; this run resumes it from the honest source alone. The copy is of
    several sources (the state says so), and the state does not say who wrote which bytes:
    those of its head are asked of this run's first source again, and the ledger holds its
    archive."""
    name, good, ledger, half = resumed_from_a_liar(tmp_path)
    honest = FakeUpstream(files={name: good})
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024)
    caplog.set_level(logging.INFO, logger="tracker.fetch")
    async with tracker_of([honest]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        [result] = await run_fetch(opts, NoProgress())
    assert sha256((ledger / name).read_bytes()) == sha256(good)
    assert result.sha256 == sha256(good)
    assert "fetch_starting_over" not in [r.getMessage() for r in caplog.records]
    [checked] = [r for r in caplog.records if r.getMessage() == "fetch_unbound_checked"]
    fields = getattr(checked, "tracker_fields", {})
    # resumed: the earlier half, all in the head (the status cache is most of the archive),
    # asked again; this run's half is the first source's own
    assert (int(fields["asked"]), int(fields["rewritten"]) > 0) == (half, True)


@attrs.define
class AfterDownload(NoProgress):
    """Calls ``then`` once the download's pieces are all in (:meth:`finish`, before the
    copy's check is read): a fault from that moment on, with no clock involved."""

    then: Any = None

    def finish(self) -> None:
        if self.then is not None:
            self.then()
            self.then = None


@pytest.mark.parametrize("fault", ["stalls", "breaks off"])
async def test_a_copy_whose_unbound_bytes_are_not_sent_again_is_kept_for_the_next_run(
    fault: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full proven to ``accounts`` pooled from two sources; once every piece is in, the
    first source no longer answers the asking again of the bytes no level binds (it never
    answers, or breaks off). That ended in another same-size source (another node's
    archive: other validators, other bytes) being tried, which deleted the whole copy and
    downloaded its own (docs/fetch.md, "How": such a range ends the fetch keeping the temp
    file and state). The fetch ends with one line saying so, nothing else is asked for the
    archive, and the next run resumes the copy: only those bytes are asked again."""
    name, good, lie = status_cache_twins(9330)
    honest = FakeUpstream(files={name: good}, behaviour={name: Behaviour(rate=4 * MiB)})
    liar = SampleHonestLiar(files={name: good}, truth={name: good}, forgery={name: lie})
    another = FakeUpstream(files={name: lie}, behaviour={name: Behaviour(etag='"another"')})
    ledger = ledger_of(tmp_path)
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024)
    failing = Behaviour(delay=math.inf) if fault == "stalls" else Behaviour(drop_after=0)

    def fail() -> None:
        honest.behaviour[name] = failing

    caplog.set_level(logging.INFO, logger="tracker.fetch")
    async with tracker_of([honest, liar, another]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        with pytest.raises(FetchError) as raised:
            await run_fetch(opts, AfterDownload(then=fail))
        kept = ledger / Path(temp_path(str(ledger), name)).name
        assert kept.read_bytes() != good  # the liar's status cache, kept as it is
        assert len(kept.read_bytes()) == len(good)
        assert load_state(str(ledger), name) is not None
        assert f"{len(good)} of {len(good)} bytes kept, run again to resume" in str(raised.value)
        # its first byte and the samples, never a piece
        assert body_bytes(another, name) <= 1 + FAST.samples * FAST.sample_size
        assert "fetch_starting_over" not in [r.getMessage() for r in caplog.records]
        honest.behaviour[name] = Behaviour()
        sent = body_bytes(honest, name) + body_bytes(liar, name)
        [result] = await run_fetch(opts, NoProgress())
    assert sha256((ledger / name).read_bytes()) == sha256(good)
    assert result.sha256 == sha256(good)
    # resumed: the samples, the first bytes and the bytes no level binds asked again
    again = body_bytes(honest, name) + body_bytes(liar, name) - sent
    [*_, checked] = [r for r in caplog.records if r.getMessage() == "fetch_unbound_checked"]
    assert again <= int(getattr(checked, "tracker_fields", {})["asked"]) + 8 * FAST.sample_size


async def test_a_fetch_cancelled_while_its_repaired_copy_is_checked_again_waits_for_that_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed copy proven to ``accounts`` whose bytes no level binds were an earlier
    source's: the first source's are written over them and the copy is checked again, its
    accounts proof with it. The fetch is cancelled then (a signal, ``--download-timeout``):
    that check was cancelled and left running, so the process's exit cut its thread off
    mid-proof (its hashing process and spilled files left behind), as the first check's
    was before (test_cli_signals.py). The fetch now ends once that check stopped."""
    from tracker.fetch import download, unbound
    from tracker.proof.archive.archivecheck import FollowingCheck

    name, good, ledger, _half = resumed_from_a_liar(tmp_path)
    honest = FakeUpstream(files={name: good})
    settings = attrs.evolve(FAST, verify=True, piece_size=256 * 1024)
    again: list[FollowingCheck] = []
    ended: list[bool] = []

    class Recorded:
        """``unbound``'s FollowingCheck: the check of the repaired copy is recorded, and
        the fetch cancelled as it starts."""

        @staticmethod
        def start(*args: Any, **kwargs: Any) -> FollowingCheck:
            again.append(FollowingCheck.start(*args, **kwargs))
            scope.cancel()
            return again[-1]

    async def confirmed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await unbound.confirmed(*args, **kwargs)
        finally:  # no checkpoint since it returned: has its check ended?
            ended.extend(check.done() for check in again)

    monkeypatch.setattr(unbound, "FollowingCheck", Recorded)
    monkeypatch.setattr(download, "confirmed", confirmed)
    async with tracker_of([honest]) as tracker:
        opts = options(ledger, tracker.base, incremental=False, settings=settings)
        with trio.CancelScope() as scope:
            await run_fetch(opts, NoProgress())
    assert scope.cancelled_caught
    assert ended == [True], "the copy's check was left running"
