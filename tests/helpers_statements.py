"""Signed statements for tests: keys as solana-keygen writes them, a statement of the shared
agave archive, and what a fetch expects of it (tests/unit/test_statements.py and
test_fetch_trust.py)."""

from __future__ import annotations

import json

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tracker.proof.levels import Level
from tracker.proof.statements import Expected, Signer, Statement

SHA = "ab" * 32
NOW = 1_800_000_000
NAME = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"


def keypair_json(seed: bytes) -> bytes:
    """A keypair file as solana-keygen writes it: the seed, then the public key."""
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    return json.dumps(list(seed + public)).encode()


def signer(n: int = 1) -> Signer:
    return Signer.from_keypair_json(keypair_json(bytes([n]) * 32))


def statement(**changes: object) -> Statement:
    base = Statement(
        name=NAME,
        size=3695,
        sha256=SHA,
        slot=100,
        base_slot=None,
        snapshot_hash="7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb",
        bank_hash="FF2m56Z7VbuL5fhNTfNzzH41ZP45CYzxZGocL9RqmRck",
        level=Level.ACCOUNTS,
        voted_stake=None,
        checked_at=NOW - 10,
        expires=NOW + 3600,
    )
    return attrs.evolve(base, **changes)  # type: ignore[misc, arg-type]


def expected(**changes: object) -> Expected:
    base = Expected(
        name=NAME, size=3695, sha256=SHA, required=Level.MANIFEST, is_full=True, now=NOW
    )
    return attrs.evolve(base, **changes)  # type: ignore[misc, arg-type]
