"""Signed statements: signing, parsing and checking, with every way a document can be wrong."""

from __future__ import annotations

import json

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from helpers_statements import NOW, expected, keypair_json, signer, statement
from hypothesis import given
from hypothesis import strategies as st

from tracker.errors import StatementInvalid
from tracker.proof.levels import Level
from tracker.proof.statements import (
    DOMAIN,
    Attestation,
    Signer,
    check,
    parse_document,
    vouching_signers,
)


def test_a_signed_statement_parses_back_and_vouches() -> None:
    key = signer()
    document = key.sign(statement(voted_stake=0.712345678)).encode()
    parsed = parse_document(document)
    assert parsed.statement == statement(voted_stake=0.712346)
    assert parsed.signer == key.public_key
    check(parsed, [key.public_key], expected())


def test_the_signature_covers_the_domain_and_the_exact_text() -> None:
    key = signer()
    attestation = key.sign(statement())
    public = base58.b58decode(key.public_key)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(public).verify(
        base58.b58decode(attestation.signature), DOMAIN + attestation.text
    )


def test_the_keypair_file_is_solana_keygens_array() -> None:
    seed = bytes(range(32))
    key = Signer.from_keypair_json(keypair_json(seed))
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    assert key.public_key == base58.b58encode(public).decode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[1, 2, 3]", "not a JSON array of 64 bytes"),
        (json.dumps([256] * 64).encode(), "not a JSON array of 64 bytes"),
        (json.dumps([True] * 64).encode(), "not a JSON array of 64 bytes"),
        (b"{}", "not a JSON array of 64 bytes"),
        (b"[" * 100_000, "not a keypair"),
        (b"[" + b"9" * 3000 + b"]", "not a JSON array of 64 bytes"),
        (json.dumps(list(bytes([1]) * 32 + bytes([2]) * 32)).encode(), "does not belong"),
    ],
)
def test_a_bad_key_file_is_one_line_that_never_shows_the_key(content: bytes, reason: str) -> None:
    with pytest.raises(StatementInvalid, match=reason) as caught:
        Signer.from_keypair_json(content)
    assert "\n" not in str(caught.value)


def _resigned(text: bytes, key_seed: int = 1) -> bytes:
    """A document whose (possibly malformed) text is validly signed."""
    private = Ed25519PrivateKey.from_private_bytes(bytes([key_seed]) * 32)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return json.dumps(
        {
            "statement": text.decode(),
            "signer": base58.b58encode(public).decode(),
            "signature": base58.b58encode(private.sign(DOMAIN + text)).decode(),
        }
    ).encode()


def _tampered() -> bytes:
    document = json.loads(signer().sign(statement()).encode())
    document["statement"] = document["statement"].replace('"size":3695', '"size":3696')
    return json.dumps(document).encode()


def _other_signer() -> bytes:
    document = json.loads(signer(1).sign(statement()).encode())
    document["signer"] = signer(2).public_key
    return json.dumps(document).encode()


def _signer_with(tail: str) -> bytes:
    """A true statement whose ``signer`` has ``tail`` appended: base58's decoder drops
    trailing blanks, so it read as the signer's key, yet as text another signer."""
    document = json.loads(signer(1).sign(statement()).encode())
    document["signer"] += tail
    return json.dumps(document).encode()


def _canonical_text(**changes: object) -> bytes:
    body = json.loads(statement().canonical())
    body.update(changes)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (_tampered(), "bad signature"),
        (_other_signer(), "bad signature"),
        (b"x" * (10 * 1024 * 1024), "over 16384 bytes"),
        (b"not json", "not a JSON object"),
        (b"[" * 5_000 + b"]" * 5_000, "not a JSON object"),
        (b'{"statement": "a", "statement": "b", "signer": "", "signature": ""}', "not a JSON"),
        (b'{"statement": "a", "signer": "x"}', "not a {statement, signer, signature}"),
        (b'{"statement": 1, "signer": "x", "signature": "y"}', "not a {statement"),
        # A lone surrogate is valid JSON but no text: one line, not UnicodeEncodeError.
        (b'{"statement": "\\ud800", "signer": "x", "signature": "y"}', "not ASCII"),
        (b'{"statement": "\xc3\xa9", "signer": "x", "signature": "y"}', "not ASCII"),
        (b'{"statement": "a", "signer": "0OIl", "signature": "y"}', "signer is not 32 bytes"),
        (_signer_with(" "), "signer is not 32 bytes"),
        (_signer_with("\r"), "signer is not 32 bytes"),
        (
            b'{"statement": "a", "signer": "' + b"1" * 10_000 + b'", "signature": "y"}',
            "signer is not 32 bytes",
        ),
        (_resigned(b"[]"), "statement: not a JSON object"),
        (_resigned(b'{"name": "x"}'), "not the fields of a statement"),
        (_resigned(statement().canonical().replace(b",", b", ")), "not in its canonical form"),
        (_resigned(_canonical_text(level="gold")), "an unknown level"),
        (_resigned(_canonical_text(size=-1)), "size is not a whole number"),
        (_resigned(_canonical_text(size=2**64)), "size is not a whole number"),
        (_resigned(_canonical_text(size=1.5)), "size is not a whole number"),
        (_resigned(_canonical_text(slot="100")), "slot is not a whole number"),
        (_resigned(_canonical_text(sha256="AB" * 32)), "sha256 is not 64 lower-case hex"),
        (_resigned(_canonical_text(voted_stake=1.5)), "voted_stake is not a fraction"),
        (_resigned(_canonical_text(name="")), "name is not a name"),
        (_resigned(statement().canonical().replace(b'"size":3695', b'"size":1e999')), "size"),
        (
            _resigned(statement().canonical().replace(b'"size":3695', b'"size":' + b"9" * 5000)),
            "not a JSON object",
        ),
        (
            _resigned(statement().canonical().replace(b'"voted_stake":null', b'"voted_stake":NaN')),
            "not a JSON object",
        ),
        # 0.0 written -0.0: the same statement, so a second text of it (docs/http-api.md,
        # "Signed statements": one canonical text).
        (
            _resigned(
                statement().canonical().replace(b'"voted_stake":null', b'"voted_stake":-0.0')
            ),
            "not in its canonical form",
        ),
    ],
)
def test_a_bad_document_is_one_line_and_nothing_is_accepted(document: bytes, reason: str) -> None:
    with pytest.raises(StatementInvalid, match=reason) as caught:
        parse_document(document)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "trusted", "reason"),
    [
        ({"expires": NOW}, None, "expired at"),
        ({"checked_at": NOW + 301}, None, f"checked at {NOW + 301}, ahead of now \\({NOW}\\)"),
        ({"checked_at": NOW + 10 * 365 * 86400}, None, "ahead of now"),
        (
            {"name": "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.bz2"},
            None,
            "names snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.bz2, not",
        ),
        ({"size": 3694}, None, "names size 3694, the file has 3695"),
        ({"sha256": "cd" * 32}, None, "names sha256 cdcd"),
        ({"level": Level.STRUCTURE}, None, "level structure, below the required manifest"),
        ({}, "other", "not a trusted key"),
    ],
)
def test_a_statement_that_does_not_vouch_says_what_differs(
    changes: dict[str, object], trusted: str | None, reason: str
) -> None:
    key = signer()
    attestation = parse_document(key.sign(statement(**changes)).encode())
    keys = [signer(2).public_key] if trusted else [key.public_key]
    with pytest.raises(StatementInvalid, match=reason):
        check(attestation, keys, expected())


def test_a_statement_checked_within_the_clock_skew_vouches() -> None:
    key = signer()
    attestation = parse_document(key.sign(statement(checked_at=NOW + 300)).encode())
    check(attestation, [key.public_key], expected())


def test_accounts_required_means_manifest_for_an_incremental() -> None:
    key = signer()
    attestation = key.sign(statement(level=Level.MANIFEST))
    check(attestation, [key.public_key], expected(required=Level.ACCOUNTS, is_full=False))
    with pytest.raises(StatementInvalid, match="below the required accounts"):
        check(attestation, [key.public_key], expected(required=Level.ACCOUNTS, is_full=True))


def test_vouching_signers_are_distinct_trusted_keys() -> None:
    one, two, three = signer(1), signer(2), signer(3)
    documents: list[Attestation] = [
        one.sign(statement()),
        one.sign(statement(checked_at=NOW - 5)),
        two.sign(statement()),
        three.sign(statement()),
        two.sign(statement(sha256="cd" * 32)),
    ]
    vouching, reasons = vouching_signers(documents, [one.public_key, two.public_key], expected())
    assert vouching == {one.public_key, two.public_key}
    assert len(reasons) == 2
    assert any("not a trusted key" in r for r in reasons)
    assert any("names sha256" in r for r in reasons)


@given(st.binary(max_size=600))
def test_any_bytes_are_a_document_or_one_line(raw: bytes) -> None:
    try:
        parse_document(raw)
    except StatementInvalid as exc:
        reason = str(exc)
    else:
        return
    assert "\n" not in reason


@given(st.integers(0, 700), st.integers(0, 255))
def test_any_flipped_byte_of_a_signed_document_is_refused_or_unchanged(at: int, value: int) -> None:
    key = signer()
    document = bytearray(key.sign(statement()).encode())
    original = parse_document(bytes(document))
    at %= len(document)
    document[at] = value
    try:
        parsed = parse_document(bytes(document))
    except StatementInvalid:
        return
    # A change outside the signed parts (JSON spacing) may leave the same statement.
    assert parsed.statement == original.statement
    assert parsed.signer == original.signer
