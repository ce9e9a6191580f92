"""Pure parts of ``fetch``: the piece bookkeeping, sizes, file identity (the plan: tests/unit)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers_statements import signer
from hypothesis import given, settings
from hypothesis import strategies as st
from names import full_name

from tracker.config.values import parse_size
from tracker.fetch.state import Identity, State, load_state, save_state, temp_path
from tracker.multisource.claims import MIN_STEAL, Pieces
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.levels import Level

MiB = 1024 * 1024


def test_pieces_cover_the_file_once() -> None:
    pieces = Pieces(10 * MiB + 5, MiB)
    claims = []
    while (claim := pieces.claim()) is not None and claim.start < 10 * MiB + 5:
        claims.append(claim)
        if len(claims) == 11:
            break
    assert [(c.start, c.end) for c in claims][-1] == (10 * MiB, 10 * MiB + 5)
    for claim in claims:
        pieces.advance(claim, claim.take(claim.end - claim.start))
        pieces.finish(claim)
    assert pieces.complete and pieces.done() == [(0, 10 * MiB + 5)]


def test_an_idle_connection_steals_the_back_half_of_the_biggest_claim() -> None:
    pieces = Pieces(8 * MiB, 8 * MiB)
    slow = pieces.claim()
    assert slow is not None
    pieces.advance(slow, slow.take(MiB))  # 1 MiB written, 7 left
    stolen = pieces.claim()
    assert stolen is not None
    assert (stolen.start, stolen.end) == (MiB + 7 * MiB // 2, 8 * MiB)
    assert slow.end == stolen.start  # the slow one stops there
    # A write in flight is never stolen: the reservation moves the middle.
    pieces.advance(stolen, 0)
    reserved = slow.take(2 * MiB)
    assert reserved == 2 * MiB
    again = pieces.claim()
    assert again is not None and again.start >= slow.reserved


def test_a_given_up_claim_returns_what_it_did_not_write() -> None:
    pieces = Pieces(4 * MiB, 4 * MiB)
    claim = pieces.claim()
    assert claim is not None
    pieces.advance(claim, claim.take(MiB))
    pieces.finish(claim)  # its source failed
    assert pieces.done() == [(0, MiB)]
    rest = pieces.claim()
    assert rest is not None and (rest.start, rest.end) == (MiB, 4 * MiB)


def test_small_tails_are_not_stolen() -> None:
    pieces = Pieces(2 * MIN_STEAL - 1, 4 * MiB)
    assert pieces.claim() is not None
    assert pieces.claim() is None


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 64 * MiB),
    piece=st.integers(64 * 1024, 16 * MiB),
    seed=st.integers(0, 2**32),
)
def test_any_interleaving_of_claims_steals_and_failures_covers_the_file(
    size: int, piece: int, seed: int
) -> None:
    """Whatever order connections write, steal and fail in, the done bytes are exactly the
    file once every claim ended, and no byte is claimed twice at a time."""
    rng = random.Random(seed)
    pieces = Pieces(size, piece)
    running = []
    for _ in range(10_000):
        if pieces.complete and not running:
            break
        action = rng.random()
        if action < 0.3 or not running:
            claim = pieces.claim()
            if claim is not None:
                running.append(claim)
            elif not running:
                break
            continue
        claim = rng.choice(running)
        if action < 0.9:
            pieces.advance(claim, claim.take(rng.randint(1, 4 * MiB)))
        if action >= 0.9 or claim.position >= claim.end:
            running.remove(claim)
            pieces.finish(claim)
        spans = sorted((c.start, c.end) for c in running)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert pieces.complete and pieces.done() == [(0, size)]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("10MiB", 10 * MiB),
        ("512KiB", 512 * 1024),
        ("1.5GB", 1_500_000_000),
        ("100M", 100_000_000),
        ("0", 0),
        ("2 GiB", 2 * 1024**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "fast", "-1MiB", "10XB", "1e3"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


def test_identity_needs_a_validator_in_common() -> None:
    a = Identity(10, '"e1"', "Mon")
    assert a.same_file(Identity(10, '"e1"', "Tue"))
    assert not a.same_file(Identity(10, '"e2"', "Mon"))
    assert not a.same_file(Identity(11, '"e1"', "Mon"))
    assert Identity(10, "", "Mon").same_file(Identity(10, "", "Mon"))
    assert not Identity(10).same_file(Identity(10))  # nothing proves it


def test_state_round_trip_and_refusals(tmp_path: Path) -> None:
    name = full_name(5)
    state = State(name, Identity(100, '"e"'), ((0, 40), (60, 100)))
    Path(temp_path(str(tmp_path), name)).write_bytes(b"x" * 100)
    save_state(str(tmp_path), state)
    assert load_state(str(tmp_path), name) == state
    # Shorter than claimed: only the claims on disk are kept.
    Path(temp_path(str(tmp_path), name)).write_bytes(b"x" * 50)
    assert load_state(str(tmp_path), name) == State(name, Identity(100, '"e"'), ((0, 40),))
    assert load_state(str(tmp_path), full_name(6)) is None


async def test_a_whole_file_answer_to_a_retry_skips_the_bytes_already_there() -> None:
    """A source without ranges answers a retry with the file from byte 0: the bytes before
    the claim's position are dropped, never written at it."""
    from tracker.fetch.settings import FetchSettings
    from tracker.fetch.workers import _skipped

    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"abc", b"defg", b"hij"):
            yield piece

    for count, expected in [(0, b"abcdefghij"), (2, b"cdefghij"), (7, b"hij"), (12, b"")]:
        got = [c async for c in _skipped(chunks(), count, FetchSettings())]
        assert b"".join(got) == expected


@pytest.mark.parametrize(
    ("flags", "full", "incremental"),
    [
        ([], True, True),
        (["--full=false"], False, True),
        (["--full"], True, True),
        (["--full=T"], True, True),
        (["--full=0"], False, True),
        (["--incremental=false"], True, False),
        (["--incremental=F", "--full=true"], True, False),
    ],
)
def test_go_boolean_flags(flags: list[str], full: bool, incremental: bool) -> None:
    """Go's ``--flag=false`` forms keep their meaning."""
    from tracker.cli import build_parser
    from tracker.fetch.flags import options_of

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    chosen = options_of(args)
    assert (chosen.full, chosen.incremental) == (full, incremental)


@pytest.mark.parametrize(
    ("flags", "verify"),
    [([], True), (["--verify"], True), (["--verify=false"], False), (["--verify=0"], False)],
)
def test_verify_flag(flags: list[str], verify: bool) -> None:
    """``--verify`` is on by default and parsed as the other boolean flags."""
    from tracker.cli import build_parser
    from tracker.fetch.flags import options_of

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    assert options_of(args).settings.verify is verify


#: Where fetch's proof spills by default: beside the download, in the ledger ("l").
BESIDE = "l/.accounts-proof"


@pytest.mark.parametrize(
    ("flags", "limits"),
    [
        ([], AccountsLimits(temp_dir=BESIDE)),
        (["--prove-accounts"], AccountsLimits(temp_dir=BESIDE)),
        (["--prove-accounts=false"], None),
        (["--prove-accounts-max", "2000"], AccountsLimits(max_accounts=2000, temp_dir=BESIDE)),
        (["--prove-accounts=false", "--prove-accounts-max", "2000"], None),
        (
            ["--prove-accounts-memory", "2GiB"],
            AccountsLimits(memory=2 * 1024**3, temp_dir=BESIDE),
        ),
        (["--prove-accounts-temp-dir", "/x"], AccountsLimits(temp_dir="/x")),
    ],
)
def test_prove_accounts_flags(flags: list[str], limits: AccountsLimits | None) -> None:
    """``--prove-accounts`` (on by default), its memory, temporary directory and optional
    bound reach the download's settings; no count bound unless given. The index spills
    beside the download unless told where, not in the system's temporary directory (a
    tmpfs on many hosts: its tens of GB would count as memory; docs/fetch.md, "Safely")."""
    from tracker.cli import build_parser
    from tracker.fetch.flags import options_of

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    assert options_of(args).settings.prove_accounts == limits


def test_a_memory_below_the_smallest_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tracker.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["verify", "--prove-accounts-memory", "1KiB", "f"])
    assert exited.value.code == 2
    assert "--prove-accounts-memory: expected at least 1048576 bytes" in capsys.readouterr().err


#: A trusted key.
TRUST = "--trust-key=" + signer(1).public_key


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--require", "accounts", "--prove-accounts=false"], True),
        (["--require", "accounts", "--verify=false"], True),
        (["--require", "accounts", "--prove-accounts=false", "--full=false"], False),
        (["--require", "manifest", "--prove-accounts=false"], False),
        (["--require", "accounts"], False),
        # a trusted key's statements carry the level: the tracker proved it once
        (["--require", "accounts", "--prove-accounts=false", TRUST], False),
        (["--require", "cluster", "--prove-accounts=false", TRUST], False),
        (["--require", "accounts", "--verify=false", TRUST], True),
    ],
)
def test_require_accounts_needs_the_accounts_proven(flags: list[str], refused: bool) -> None:
    """No full could reach ``accounts`` without its proof, its own or trusted keys'
    statements: a usage error before any download (an incremental's ``accounts`` is
    ``manifest``)."""
    from tracker.cli import build_parser
    from tracker.fetch.flags import unreachable_level

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    reason = unreachable_level(args)
    assert bool(reason) is refused
    assert not reason or "needs --verify and --prove-accounts true" in reason


@pytest.mark.parametrize(
    ("keys", "require", "here"),
    [
        (frozenset(), Level.ACCOUNTS, Level.ACCOUNTS),
        (frozenset(), Level.CLUSTER, Level.CLUSTER),
        (frozenset({"k"}), Level.ACCOUNTS, Level.STRUCTURE),
        (frozenset({"k"}), Level.CLUSTER, Level.STRUCTURE),
    ],
)
def test_trusted_statements_stand_in_for_the_level_past_the_check(
    keys: frozenset[str], require: Level, here: Level
) -> None:
    from tracker.fetch.trust import TrustPolicy

    policy = TrustPolicy(keys, 1, require)
    assert policy.checked_here(require) is here
    assert policy.required is require  # what the statements must name stays all of it


def test_an_unreachable_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tracker.cli import main

    argv = ["fetch", "--ledger", "l", "--tracker", "http://t", "--require", "accounts"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--prove-accounts=false"])
    assert exited.value.code == 2
    assert "--require accounts needs --verify and --prove-accounts true" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "replay", "slot"),
    [
        ([], 25.0, 0.4),
        (["--replay-slots-per-second", "5", "--slot-seconds", "1s"], 5.0, 1.0),
        (["--slot-seconds=250ms"], 25.0, 0.25),
    ],
)
def test_the_catch_up_flags_price_the_pairs(flags: list[str], replay: float, slot: float) -> None:
    """``--replay-slots-per-second`` and ``--slot-seconds`` reach fetch's ranking."""
    from tracker.cli import build_parser
    from tracker.fetch.flags import options_of

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    ranking = options_of(args).ranking
    assert (ranking.replay_slots_per_second, ranking.slot_seconds) == (replay, slot)


@pytest.mark.parametrize("bad", ["0", "-3", "nan", "inf", "fast", "²"])
def test_a_bad_replay_speed_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tracker.cli import build_parser

    argv = ["fetch", "--ledger", "l", "--tracker", "http://t", "--replay-slots-per-second", bad]
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert "expected a positive number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("done", "written", "prefix"),
    [
        ([], [], 0),
        ([(0, 10)], [], 10),
        ([(5, 10)], [], 0),  # a gap at the start: nothing to read in order
        ([(0, 10), (20, 30)], [], 10),
        ([(0, 10), (10, 30)], [], 30),
        ([(0, 10)], [(10, 4)], 14),  # a running claim's writes count
        ([(20, 30)], [(0, 10), (10, 10)], 30),  # and close the gap
        ([], [(10, 5)], 0),
    ],
)
def test_the_gapless_prefix(
    done: list[tuple[int, int]], written: list[tuple[int, int]], prefix: int
) -> None:
    """How far a check reading in order may read: done intervals and what running claims
    wrote so far, from byte 0 without a gap."""
    pieces = Pieces(100, 10, done)
    claims = {}
    while (claim := pieces.claim()) is not None:
        claims[claim.start] = claim
    for start, count in written:
        pieces.advance(claims[start], count)
    assert pieces.prefix == prefix


def test_a_check_cancelled_stops_at_its_next_read(tmp_path: Path) -> None:
    """The check of a ledger copy asks ``cancelled`` before each read."""
    from archives import build_archive

    from tracker.errors import ArchiveInvalid
    from tracker.proof.archive.archivecheck import check_file

    name, data = build_archive(100)
    path = tmp_path / name
    path.write_bytes(data)
    assert check_file(str(path), cancelled=lambda: False).sha256
    with pytest.raises(ArchiveInvalid, match="check cancelled"):
        check_file(str(path), cancelled=lambda: True)


async def test_a_signal_does_not_wait_for_the_check_of_a_ledger_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full of the offered name but another size in the ledger is checked before the plan:
    a 100 GB copy takes minutes, and a signal (or ``--download-timeout``) waited for all of
    it, past a service manager's stop timeout, and the fetch went on after it. The stand-in
    reads on until it is told to stop (or for 20 s)."""
    import threading
    import time

    import trio

    import tracker.fetch.run as fetch_run
    from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
    from tracker.fetch.listing import RemoteFile, RemoteSnapshot

    started, stopped = threading.Event(), threading.Event()

    def reading_on(path: str, cancelled: object = None) -> bool:
        started.set()
        until = time.monotonic() + 20
        while time.monotonic() < until and not (callable(cancelled) and cancelled()):
            time.sleep(0.005)  # a read of the next block
        stopped.set()
        return True

    monkeypatch.setattr(fetch_run, "passes_check", reading_on)
    name = full_name(100)
    parsed = parse_archive_name(name)
    assert parsed is not None
    local = chains_from_files([SnapshotFile(parsed, name, 500, path=str(tmp_path / name))])
    offered = [RemoteSnapshot(RemoteFile(parsed, 1000, ("http://t/x",)), None)]
    began = trio.current_time()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch_run._really_held, local, offered, True)
            assert await trio.to_thread.run_sync(started.wait, 10)
            scope.cancel()  # the signal
    assert trio.current_time() - began < 10  # not the 20 s the check read on
    assert await trio.to_thread.run_sync(stopped.wait, 10)  # the thread left stops too
