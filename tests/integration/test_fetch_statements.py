"""``snapshot-tracker fetch --trust-key`` (docs/http-api.md, "Signed statements"): a real fetch
against a real tracker-like server on 127.0.0.1 that lists a real archive and serves signed
statements made here, in its listing (each file's ``attestations``) and at its
``/v1/{group}/{name}.attestation`` route. An archive enters the ledger only when enough
trusted keys vouch for its exact size and SHA-256; otherwise exit 1, one line that says why,
and the ledger as it was (no temp file, no state)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import base58
import pytest
import trio
from archives import build_archive
from helpers_bytes import sha256
from helpers_fetch import FakeTracker
from helpers_proxy import GROUP
from helpers_statements import signer
from helpers_upstream import Behaviour, FakeUpstream
from test_fetch import fetch_command, ledger_of, options, run_cli, the_error_line
from test_fetch_sources import tracker_of

from tracker.errors import FetchError
from tracker.fetch.progress import NoProgress
from tracker.fetch.run import run_fetch
from tracker.fetch.settings import FetchSettings
from tracker.fetch.trust import TrustPolicy
from tracker.proof.levels import Level
from tracker.proof.statements import Attestation, Statement

SLOT = 52_000
NAME, GOOD = build_archive(SLOT, accounts=2)
ROUTE = f"{NAME}.attestation"
K1, K2, K3 = signer(1), signer(2), signer(3)
TWO_NEEDED = ("--trust-key", K1.public_key, "--trust-key", K2.public_key, "--trust-min", "2")


def statement(**changes: object) -> Statement:
    """What a tracker that checked GOOD says of it, valid for an hour from now."""
    now = int(time.time())
    base = Statement(
        name=NAME,
        size=len(GOOD),
        sha256=sha256(GOOD),
        slot=SLOT,
        base_slot=None,
        snapshot_hash=NAME.split("-")[2].removesuffix(".tar.zst"),
        bank_hash=None,
        level=Level.ACCOUNTS,
        voted_stake=None,
        checked_at=now - 10,
        expires=now + 3600,
    )
    return attrs.evolve(base, **changes)  # type: ignore[misc, arg-type]


def document(attestation: Attestation) -> dict[str, str]:
    """The object a listing carries (the route serves its encoding)."""
    decoded: dict[str, str] = json.loads(attestation.encode())
    return decoded


def forged(attestation: Attestation) -> Attestation:
    """``attestation`` with a valid signature of another text: a bad signature."""
    other = K2.sign(statement(checked_at=1)).signature
    assert other != attestation.signature and len(base58.b58decode(other)) == 64
    return attrs.evolve(attestation, signature=other)


@asynccontextmanager
async def statements_tracker(
    listed: list[Attestation], route: bytes | None, how: Behaviour | None = None
) -> AsyncIterator[FakeTracker]:
    """A tracker listing GOOD with ``listed`` in its file entry, its ``.attestation`` route
    answering ``route`` (None: 404) as ``how`` says."""
    async with tracker_of([FakeUpstream(files={NAME: GOOD})]) as tracker:
        for entry in tracker.entries:
            for file in entry["files"]:
                file["attestations"] = [document(a) for a in listed]
        if route is not None:
            tracker.files[ROUTE] = route
        if how is not None:
            tracker.behaviour[ROUTE] = how
        yield tracker


async def fetch(
    tmp_path: Path, listed: list[Attestation], route: bytes | None, *flags: str
) -> tuple[int, str, Path, FakeTracker]:
    ledger = ledger_of(tmp_path)
    async with statements_tracker(listed, route) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        done = await run_cli(*command, *flags)
    return done.returncode, the_error_line(done) if done.returncode else "", ledger, tracker


async def test_two_keys_needed_and_two_vouching_put_the_archive_in_the_ledger(
    tmp_path: Path,
) -> None:
    """One statement in the listing, the other at the route: both are gathered."""
    listed, served = K1.sign(statement()), K2.sign(statement()).encode()
    code, _line, ledger, tracker = await fetch(tmp_path, [listed], served, *TWO_NEEDED)
    assert code == 0
    assert [p.name for p in ledger.iterdir()] == [NAME]
    assert (ledger / NAME).read_bytes() == GOOD
    assert [s.target for s in tracker.gets(ROUTE)] == [f"/v1/{GROUP}/{ROUTE}"]


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (None, f"1 of the 2 trusted statements needed vouch for it; none from {K2.public_key}"),
        (K2.sign(statement(expires=int(time.time()) - 1)), "statement: expired at"),
        (K2.sign(statement(sha256=sha256(b"other"))), f"names sha256 {sha256(b'other')}"),
        (K2.sign(statement(size=len(GOOD) + 1)), f"names size {len(GOOD) + 1}"),
        (forged(K2.sign(statement())), f"bad signature for signer {K2.public_key}"),
        (K3.sign(statement()), f"signed by {K3.public_key}, not a trusted key"),
        (K2.sign(statement(level=Level.STRUCTURE)), "level structure, below the required"),
    ],
    ids=["missing", "expired", "digest", "size", "signature", "other-key", "level"],
)
async def test_an_archive_short_of_trusted_statements_stays_out(
    second: Attestation | None, why: str, tmp_path: Path
) -> None:
    """K1 vouches in the listing, K2's statement at the route is missing or not taken: exit
    1, the line says why and which key vouched for nothing; the ledger is as it was."""
    served = None if second is None else second.encode()
    flags = (*TWO_NEEDED, "--require", "manifest")
    code, line, ledger, _tracker = await fetch(tmp_path, [K1.sign(statement())], served, *flags)
    assert code == 1
    assert f"{NAME}: statements: 1 of the 2 trusted statements needed" in line, line
    assert why in line and f"none from {K2.public_key}" in line, line
    assert list(ledger.iterdir()) == []


async def test_a_10_mb_document_costs_only_itself(tmp_path: Path) -> None:
    """The route answers 10 MB: read no further than 16 KiB, named; a 10 MB document in the
    listing would make its entry too large for the listing (docs/http-api.md)."""
    junk = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    code, line, ledger, _tracker = await fetch(tmp_path, [K1.sign(statement())], junk, *TWO_NEEDED)
    assert code == 1
    assert "not read: http://127.0.0.1:" in line and f"/v1/{GROUP}/{ROUTE}: " in line, line
    assert "exceeds the limit of 16384 bytes" in line, line
    assert list(ledger.iterdir()) == []


async def test_junk_from_the_route_costs_only_itself(tmp_path: Path) -> None:
    """Junk at the route is refused with its reason; the listing's statement still counts."""
    listed = [K1.sign(statement())]
    code, line, ledger, _tracker = await fetch(tmp_path, listed, b"<html>", *TWO_NEEDED)
    assert code == 1
    assert "1 of the 2 trusted statements needed" in line, line
    assert "(statement document: not a JSON object)" in line, line
    assert list(ledger.iterdir()) == []


async def test_the_route_is_asked_only_when_the_listing_is_not_enough(tmp_path: Path) -> None:
    listed = [K1.sign(statement()), K2.sign(statement())]
    code, _line, ledger, tracker = await fetch(tmp_path, listed, b"<html>", *TWO_NEEDED)
    assert code == 0
    assert (ledger / NAME).read_bytes() == GOOD
    assert not tracker.gets(ROUTE)


TRUST_TWO = FetchSettings(
    connections=4,
    min_speed=0,
    verify=True,
    trust=TrustPolicy(frozenset({K1.public_key, K2.public_key}), 2),
    statements_timeout=0.5,
)


async def test_a_route_that_hangs_costs_only_its_statements(tmp_path: Path) -> None:
    """The route never answers: after ``statements_timeout`` the listing's statement decides
    alone, and the line says what was not read."""
    ledger = ledger_of(tmp_path)
    hang = Behaviour(delay=float("inf"))
    with trio.fail_after(30):  # the route's hang must not hold the fetch
        async with statements_tracker([K1.sign(statement())], b"{}", hang) as tracker:
            run = run_fetch(options(ledger, tracker.base, settings=TRUST_TWO), NoProgress())
            with pytest.raises(FetchError, match=r"1 of the 2 .* no answer within 0\.5s$"):
                await run
            assert len(tracker.gets(ROUTE)) == 1
    assert list(ledger.iterdir()) == []


async def test_an_unchecked_fetch_cannot_ask_for_statements(tmp_path: Path) -> None:
    """Statements name the SHA-256 the check computes: without it, a usage error."""
    async with statements_tracker([K1.sign(statement())], None) as tracker:
        command = fetch_command(ledger_of(tmp_path), tracker.base, "--trust-key", K1.public_key)
        done = await run_cli(*command)
    assert done.returncode == 2
    assert b"--trust-key needs --verify true" in done.stderr
    assert not tracker.gets(NAME)


INCREMENTAL, INCR = build_archive(SLOT + 100, base_slot=SLOT, accounts=2)


async def test_each_archive_needs_its_own_statements(tmp_path: Path) -> None:
    """The full is vouched for and moves in; the incremental (listed again after the full,
    with its own statements) is not, and stays out with the reason."""
    ledger = ledger_of(tmp_path)
    files = {NAME: GOOD, INCREMENTAL: INCR}
    full = K1.sign(statement())
    other = K1.sign(statement(name=INCREMENTAL, size=len(INCR), sha256=sha256(b"other")))
    async with tracker_of([FakeUpstream(files=files)]) as tracker:
        for entry in tracker.entries:
            for file in entry["files"]:
                signed = full if file["file_name"] == NAME else other
                file["attestations"] = [document(signed)]
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        command.remove("--incremental=false")
        done = await run_cli(*command, "--trust-key", K1.public_key)
    line = the_error_line(done)
    assert f"{INCREMENTAL}: statements: 0 of the 1 trusted statements needed" in line, line
    assert f"names sha256 {sha256(b'other')}, the file has {sha256(INCR)}" in line, line
    assert [p.name for p in ledger.iterdir()] == [NAME]
    assert [s.target for s in tracker.gets(f"{INCREMENTAL}.attestation")] == [
        f"/v1/{GROUP}/{INCREMENTAL}.attestation"
    ]


@pytest.mark.parametrize(
    ("level", "code"), [(Level.ACCOUNTS, 0), (Level.MANIFEST, 1)], ids=["accounts", "manifest"]
)
async def test_a_trusted_statement_stands_in_for_proving_the_accounts_again(
    level: Level, code: int, tmp_path: Path
) -> None:
    """``--require accounts`` without ``--prove-accounts``: the download's own check passes
    and computes the SHA-256; the trusted key's statement of that SHA-256 at ``accounts``
    carries the level (the tracker proved it once, the validator does not again). A
    statement at ``manifest`` leaves it out."""
    flags = ("--trust-key", K1.public_key, "--require", "accounts", "--prove-accounts=false")
    got, line, ledger, _tracker = await fetch(
        tmp_path, [K1.sign(statement(level=level))], None, *flags
    )
    assert got == code, line
    if code == 0:
        assert (ledger / NAME).read_bytes() == GOOD
    else:
        assert "level manifest, below the required accounts" in line, line
        assert list(ledger.iterdir()) == []
