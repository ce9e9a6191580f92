"""What a statement says of a checked copy (core.attesting.statement_of)."""

from __future__ import annotations

from helpers_statements import SHA, signer

from tracker.core.attesting import HeldCopy, statement_of
from tracker.core.snapshots import parse_archive_name
from tracker.core.statements import parse_document
from tracker.proof.levels import Level, Proof

FULL = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
INCREMENTAL = "incremental-snapshot-100-160-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
PROOF = Proof(Level.ACCOUNTS, "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb", "FF2m", 0.75)


def held(name: str) -> HeldCopy:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return HeldCopy(parsed, 3695, SHA, PROOF, 1_000.0)


def test_a_statement_says_what_the_check_proved_and_parses_back() -> None:
    key = signer()
    document = parse_document(key.sign(statement_of(held(FULL), 2_000.0, 600.0)).encode())
    statement = document.statement
    assert (statement.name, statement.size, statement.sha256) == (FULL, 3695, SHA)
    assert (statement.slot, statement.base_slot) == (100, None)
    assert (statement.level, statement.bank_hash, statement.voted_stake) == (
        Level.ACCOUNTS,
        "FF2m",
        0.75,
    )
    assert (statement.checked_at, statement.expires) == (1_000, 2_600)
    assert document.signer == key.public_key
    inc = statement_of(held(INCREMENTAL), 2_000.0, 600.0)
    assert (inc.slot, inc.base_slot) == (160, 100)
