"""Signed statements of what was proven about an archive (attestations). Pure.

A statement names one archive exactly (name, size, SHA-256) and what was proven of it (slot,
base slot, snapshot hash, bank hash, level, voted stake; at level ``cluster`` what proved it,
``cluster_proof``: the votes or a finality certificate), when it was checked and until when it
holds. Its wire form is one canonical JSON text (keys sorted, no spaces, ASCII, no floats but
``voted_stake`` rounded to six decimals), signed with ed25519 over a domain prefix and that
text's bytes, so that a signature for a statement can never be taken for a signature of
anything else. A document carries the text as a string beside the signer's public key and the
signature, both base58 as Solana writes keys and signatures (docs/http-api.md, "Signed
statements").

Checking a document verifies the signature before anything in the statement is believed, and
refuses a statement text that is not canonical (two texts for one statement would make two
signatures for one fact). Keys are Solana keypairs as ``solana-keygen`` writes them (a JSON
array of 64 bytes: the 32-byte seed, then the public key). The cryptography is the
``cryptography`` package's ed25519; nothing here is hand-written crypto.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import attrs
import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tracker.errors import StatementInvalid
from tracker.proof.levels import CLUSTER_PROOFS, Level, required_for

#: What the signature covers before the statement's bytes: no other message of any protocol
#: starts so, so a signature made here is worth nothing elsewhere.
DOMAIN = b"solana-snapshot-tracker statement v1\n"
#: The largest document taken (a real one is about 600 bytes).
MAX_DOCUMENT = 16 * 1024
#: The largest keypair file taken (a real one is about 230 bytes).
MAX_KEYPAIR = 4 * 1024
#: The largest integer a statement may carry (u64 slots and sizes fit).
MAX_INT = 2**64 - 1
#: How far ahead of the reader's clock a statement's ``checked_at`` may lie: clocks of signer
#: and reader differ by seconds, not by more (a statement "checked" in ten years vouches
#: for nothing today).
MAX_CLOCK_SKEW = 300
_MAX_INT_DIGITS = 20
_FIELDS = frozenset(
    (
        "bank_hash",
        "base_slot",
        "checked_at",
        "expires",
        "level",
        "name",
        "sha256",
        "size",
        "slot",
        "snapshot_hash",
        "voted_stake",
    )
)


@attrs.frozen
class Statement:
    """What a signer says it proved about one archive, and for how long it says so."""

    name: str
    size: int
    sha256: str
    slot: int
    base_slot: int | None
    snapshot_hash: str | None
    bank_hash: str | None
    level: Level
    voted_stake: float | None
    checked_at: int
    expires: int
    #: What lifted it to ``cluster`` ("votes" or "certificate"); absent from the text when
    #: None, so that statements made before it was recorded read as they were signed.
    cluster_proof: str | None = None

    def canonical(self) -> bytes:
        """The one text of this statement that is signed and sent."""
        body = {
            "base_slot": self.base_slot,
            "bank_hash": self.bank_hash,
            "checked_at": self.checked_at,
            "expires": self.expires,
            "level": self.level.label,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "slot": self.slot,
            "snapshot_hash": self.snapshot_hash,
            "voted_stake": None if self.voted_stake is None else _stake(self.voted_stake),
        }
        if self.cluster_proof is not None:
            body["cluster_proof"] = self.cluster_proof
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return text.encode("ascii")


@attrs.frozen
class Attestation:
    """A statement, its exact signed text, and who signed it how (base58)."""

    statement: Statement
    text: bytes
    signer: str
    signature: str

    def to_json(self) -> dict[str, str]:
        """The document served at ``/v1/{group}/{name}.attestation``."""
        return {
            "statement": self.text.decode("ascii"),
            "signer": self.signer,
            "signature": self.signature,
        }

    def encode(self) -> bytes:
        """The document as bytes (what is served and kept in the bucket)."""
        return json.dumps(self.to_json(), sort_keys=True).encode("ascii") + b"\n"


class Signer:
    """An ed25519 key that signs statements."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key: str = base58.b58encode(raw).decode("ascii")

    @classmethod
    def from_keypair_json(cls, data: bytes) -> Signer:
        """The signer of a Solana keypair file's contents (``solana-keygen``'s JSON array of
        64 bytes); StatementInvalid, with one line that never shows the key, when it is not
        one or its public half does not belong to its seed."""
        if len(data) > MAX_KEYPAIR:
            raise StatementInvalid(f"key file: over {MAX_KEYPAIR} bytes, not a keypair")
        try:
            values = json.loads(data, parse_int=_bounded_int, parse_constant=_no_constant)
        except (ValueError, RecursionError, StatementInvalid):
            raise StatementInvalid("key file: not a JSON array of 64 bytes") from None
        if (
            not isinstance(values, list)
            or len(values) != 64
            or not all(type(v) is int and 0 <= v <= 255 for v in values)
        ):
            raise StatementInvalid("key file: not a JSON array of 64 bytes")
        raw = bytes(values)
        signer = cls(Ed25519PrivateKey.from_private_bytes(raw[:32]))
        if base58.b58encode(raw[32:]).decode("ascii") != signer.public_key:
            raise StatementInvalid("key file: its public key does not belong to its secret key")
        return signer

    @staticmethod
    def new_keypair_json() -> bytes:
        """A new random keypair in ``solana-keygen``'s format: a JSON array of 64 bytes, the
        32-byte seed then the public key, with no spaces, as ``solana-keygen new`` writes
        it (the operating system's random source, through ``cryptography``)."""
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return json.dumps(list(seed + public), separators=(",", ":")).encode("ascii")

    def sign(self, statement: Statement) -> Attestation:
        """The statement signed."""
        text = statement.canonical()
        signature = self._private.sign(DOMAIN + text)
        return Attestation(
            statement, text, self.public_key, base58.b58encode(signature).decode("ascii")
        )


def _stake(value: float) -> float:
    # Six decimals, and one text of zero: -0.0 equals 0.0 but dumps as "-0.0", a second text
    # of one statement that a reader would otherwise take (docs/http-api.md, "Signed
    # statements": the one canonical text).
    return round(float(value), 6) + 0.0


def parse_document(raw: bytes) -> Attestation:
    """A document as served (``{statement, signer, signature}``) whose signature is valid for
    its signer; StatementInvalid (one line) for anything else. Says nothing yet of whether
    the signer is trusted or the statement still holds: :func:`check`."""
    if len(raw) > MAX_DOCUMENT:
        raise StatementInvalid(f"statement: over {MAX_DOCUMENT} bytes")
    outer = _json_object(raw, "statement document")
    if set(outer) != {"statement", "signer", "signature"} or not all(
        isinstance(v, str) for v in outer.values()
    ):
        raise StatementInvalid("statement: not a {statement, signer, signature} document")
    try:  # a canonical text is ASCII; JSON also lets a lone surrogate through, no text at all
        text = outer["statement"].encode("ascii")
    except UnicodeEncodeError:
        raise StatementInvalid("statement: not ASCII, so not a canonical statement") from None
    public = _b58(outer["signer"], 32, "signer")
    signature = _b58(outer["signature"], 64, "signature")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, DOMAIN + text)
    except InvalidSignature:
        raise StatementInvalid(f"statement: bad signature for signer {outer['signer']}") from None
    statement = _statement(text)
    return Attestation(statement, text, outer["signer"], outer["signature"])


@attrs.frozen
class Expected:
    """What a statement must say to vouch for one file: its archive ``name``, size and
    SHA-256, a level at least ``required`` (see :func:`tracker.proof.levels.required_for`),
    checked and unexpired at ``now`` (:func:`check_times`)."""

    name: str
    size: int
    sha256: str
    required: Level
    is_full: bool
    now: int


def check(attestation: Attestation, trusted: Iterable[str], expected: Expected) -> None:
    """None when ``attestation`` vouches for the expected file; else StatementInvalid naming
    the first thing that differs."""
    statement = attestation.statement
    if attestation.signer not in set(trusted):
        raise StatementInvalid(f"statement: signed by {attestation.signer}, not a trusted key")
    check_times(statement, expected.now)
    if statement.name != expected.name:
        raise StatementInvalid(f"statement: names {statement.name}, not {expected.name}")
    if statement.size != expected.size:
        raise StatementInvalid(
            f"statement: names size {statement.size}, the file has {expected.size}"
        )
    if statement.sha256 != expected.sha256:
        raise StatementInvalid(
            f"statement: names sha256 {statement.sha256}, the file has {expected.sha256}"
        )
    needed = required_for(expected.required, is_full=expected.is_full)
    if statement.level < needed:
        raise StatementInvalid(
            f"statement: level {statement.level.label}, below the required {needed.label}"
        )


def check_times(statement: Statement, now: float) -> None:
    """None when ``statement`` holds at ``now`` (seconds since the epoch): unexpired, and
    checked no later than :data:`MAX_CLOCK_SKEW` ahead of ``now``; else StatementInvalid."""
    if statement.expires <= now:
        raise StatementInvalid(f"statement: expired at {statement.expires} (now {int(now)})")
    if statement.checked_at > now + MAX_CLOCK_SKEW:
        raise StatementInvalid(
            f"statement: checked at {statement.checked_at}, ahead of now ({int(now)}) by more "
            f"than {MAX_CLOCK_SKEW} s",
            valid_from=statement.checked_at - MAX_CLOCK_SKEW,
        )


def vouching_signers(
    attestations: Iterable[Attestation], trusted: Iterable[str], expected: Expected
) -> tuple[set[str], list[str]]:
    """The distinct trusted signers whose statements vouch for the expected file, and one
    reason for each statement that does not."""
    keys = set(trusted)
    vouching: set[str] = set()
    reasons: list[str] = []
    for attestation in attestations:
        try:
            check(attestation, keys, expected)
        except StatementInvalid as exc:
            reasons.append(str(exc))
        else:
            vouching.add(attestation.signer)
    return vouching, reasons


def _statement(text: bytes) -> Statement:
    body = _json_object(text, "statement")
    if set(body) - {"cluster_proof"} != _FIELDS:
        raise StatementInvalid("statement: not the fields of a statement")
    level = Level.parse(body["level"]) if isinstance(body["level"], str) else None
    if level is None:
        raise StatementInvalid("statement: an unknown level")
    kind = body.get("cluster_proof")
    if "cluster_proof" in body and (kind not in CLUSTER_PROOFS or level != Level.CLUSTER):
        raise StatementInvalid("statement: cluster_proof is not votes or certificate at cluster")
    stake = body["voted_stake"]
    if stake is not None and (
        type(stake) not in (int, float) or not (math.isfinite(stake) and 0 <= stake <= 1)
    ):
        raise StatementInvalid("statement: voted_stake is not a fraction")
    statement = Statement(
        name=_text(body, "name"),
        size=_int(body, "size"),
        sha256=_hex64(body),
        slot=_int(body, "slot"),
        base_slot=None if body["base_slot"] is None else _int(body, "base_slot"),
        snapshot_hash=_optional_text(body, "snapshot_hash"),
        bank_hash=_optional_text(body, "bank_hash"),
        level=level,
        voted_stake=None if stake is None else float(stake),
        checked_at=_int(body, "checked_at"),
        expires=_int(body, "expires"),
        cluster_proof=kind if isinstance(kind, str) else None,
    )
    if statement.canonical() != text:
        raise StatementInvalid("statement: not in its canonical form")
    return statement


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            raw,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (ValueError, RecursionError, StatementInvalid):
        raise StatementInvalid(f"{what}: not a JSON object") from None
    if not isinstance(value, dict):
        raise StatementInvalid(f"{what}: not a JSON object")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise StatementInvalid("a number of too many digits")
    return int(text)


def _no_constant(text: str) -> Any:
    raise StatementInvalid(f"{text} is not a number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise StatementInvalid("a key given twice")
    return body


def _b58(text: str, size: int, what: str) -> bytes:
    # Canonical only: base58's decoder drops trailing blanks, so "K " would read as K's
    # bytes and yet, compared as text, be another signer (one key counted twice).
    try:
        raw = base58.b58decode(text) if len(text) <= 2 * size else b""
    except ValueError:
        raw = b""
    if len(raw) != size or base58.b58encode(raw).decode("ascii") != text:
        raise StatementInvalid(f"statement: the {what} is not {size} bytes of base58")
    return bytes(raw)


def _int(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise StatementInvalid(f"statement: {key} is not a whole number")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value or len(value) > 255:
        raise StatementInvalid(f"statement: {key} is not a name")
    return value


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    return None if body[key] is None else _text(body, key)


def _hex64(body: dict[str, Any]) -> str:
    value = body["sha256"]
    if not (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise StatementInvalid("statement: sha256 is not 64 lower-case hex digits")
    return value
