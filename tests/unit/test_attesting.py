"""The tracker's signatures of held copies (core.attesting): what a statement says, and when
it is signed again."""

from __future__ import annotations

import attrs
from helpers_statements import SHA, signer

from tracker.core.attesting import Attestor, HeldCopy
from tracker.core.snapshots import parse_archive_name
from tracker.core.statements import parse_document
from tracker.proof.levels import Level, Proof

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
INCREMENTAL = "incremental-snapshot-100-160-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
PROOF = Proof(Level.ACCOUNTS, "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", "FF2m", 0.75)


def held(name: str = FULL, **changes: object) -> HeldCopy:
    parsed = parse_archive_name(name)
    assert parsed is not None
    copy = HeldCopy(parsed, 3695, SHA, PROOF, 1_000.0)
    return attrs.evolve(copy, **changes)  # type: ignore[misc, arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 2_000.0

    def __call__(self) -> float:
        return self.now


def test_a_statement_says_what_the_check_proved_and_parses_back() -> None:
    clock = Clock()
    attestor = Attestor(signer(), 600.0, clock)
    document = parse_document(attestor.attest("mainnet", held()).encode())
    statement = document.statement
    assert (statement.name, statement.size, statement.sha256) == (FULL, 3695, SHA)
    assert (statement.slot, statement.base_slot) == (100, None)
    assert (statement.level, statement.bank_hash, statement.voted_stake) == (
        Level.ACCOUNTS,
        "FF2m",
        0.75,
    )
    assert (statement.checked_at, statement.expires) == (1_000, 2_600)
    assert document.signer == attestor.public_key
    inc = attestor.attest("mainnet", held(INCREMENTAL)).statement
    assert (inc.slot, inc.base_slot) == (160, 100)


def test_a_statement_is_signed_again_only_past_half_its_life_or_for_another_copy() -> None:
    clock = Clock()
    attestor = Attestor(signer(), 600.0, clock)
    first = attestor.attest("mainnet", held())
    clock.now += 299
    assert attestor.attest("mainnet", held()) is first
    clock.now += 2
    renewed = attestor.attest("mainnet", held())
    assert renewed is not first and renewed.statement.expires == int(clock.now + 600)
    other = attestor.attest("mainnet", held(sha256="cd" * 32))
    assert other.statement.sha256 == "cd" * 32
    attestor.forget("mainnet", FULL)
    assert attestor.attest("mainnet", held(sha256="cd" * 32)) is not other
