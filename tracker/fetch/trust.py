"""Which signed statements ``fetch`` needs before an archive enters the ledger (``--trust-key``,
``--trust-min``; docs/http-api.md, "Signed statements"). Pure.

A downloaded archive moves into the ledger only when at least ``minimum`` distinct trusted keys
signed valid, unexpired statements that name its exact size and SHA-256 and a level at least
the required one. The statements come from the tracker (each listed file's ``attestations``,
and the archive's ``.attestation`` route); any of them may be malformed or forged, which costs
that statement only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
import base58

from tracker.errors import StatementInvalid
from tracker.proof.levels import Level

if TYPE_CHECKING:
    from tracker.proof.statements import Attestation, Expected

# tracker.proof.statements (and with it cryptography) is imported where statements are read:
# ``fetch``'s settings hold a TrustPolicy, and the command line is built for every command.

#: Statements of one archive read from a listing at most (a tracker and its replicas sign one
#: each; a listing is network input).
MAX_LISTED = 32
#: Reasons of refused statements named in one line at most; the others are counted.
MAX_REASONS = 6
#: The encodings of ed25519's low-order points (the eight points and six other encodings of
#: them), as the C2SP/CCTV ed25519 test vectors flag them ``low_order_A``. For such a key,
#: signatures are forged without any secret (OpenSSL, under ``cryptography``, takes the
#: all-zero signature of one message in four for the all-zero key), so trusting one would
#: trust anyone; the all-zero one is ``11111111111111111111111111111111`` in base58, the
#: System Program's address, a string Solana operators know.
LOW_ORDER_KEYS = frozenset(
    bytes.fromhex(key)
    for key in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)


@attrs.frozen
class TrustPolicy:
    """The keys whose statements ``fetch`` believes (base58 ed25519 public keys), how many
    distinct ones must vouch, and the level their statements must name at least."""

    keys: frozenset[str] = frozenset()
    minimum: int = 1
    required: Level = Level.STRUCTURE

    @property
    def active(self) -> bool:
        """True when statements are asked for at all (a ``--trust-key`` was given)."""
        return bool(self.keys)

    def checked_here(self, require: Level) -> Level:
        """The level the download's own check must show, of ``--require``: all of it without
        trusted keys; with them, only that the check passes (``structure``: its SHA-256 is
        the one the statements name), their signed level standing in for the rest. A fleet
        whose tracker proved an archive once takes that proof instead of proving it again on
        every validator (docs/http-api.md, "Signed statements"). Pure."""
        return Level.STRUCTURE if self.active else require


def public_key(text: str) -> str:
    """A ``--trust-key`` value: an ed25519 public key in base58 (as ``solana-keygen pubkey``
    prints it) that is not a low-order point; ValueError otherwise."""
    try:
        raw = base58.b58decode(text) if 32 <= len(text) <= 44 else b""
    except ValueError:
        raw = b""
    # Canonical only: base58's decoder drops trailing blanks ("K " and "K\r" read as K), and
    # keys are compared as text: K and "K " would be two keys of one signer.
    if len(raw) != 32 or base58.b58encode(raw).decode("ascii") != text:
        raise ValueError(f"not a base58 public key of 32 bytes: {text!r}")
    if raw in LOW_ORDER_KEYS:
        raise ValueError(f"a low-order point, whose signatures anyone can forge: {text!r}")
    return text


def listed_documents(value: object) -> tuple[bytes, ...]:
    """The documents of a listed file's ``attestations`` (a JSON list of the objects the
    ``.attestation`` route serves) as bytes for :func:`unvouched`, at most MAX_LISTED of them,
    duplicates once; anything but a list gives none. A member that is no such object stays,
    re-encoded, and is refused with its reason when read."""
    if not isinstance(value, list):
        return ()
    documents: dict[bytes, None] = {}
    for item in value[:MAX_LISTED]:
        try:
            documents[json.dumps(item, sort_keys=True).encode()] = None
        except (ValueError, TypeError, RecursionError):  # not from json.loads: never seen
            documents[b"[]"] = None
    return tuple(documents)


def unvouched(documents: Iterable[bytes], policy: TrustPolicy, expected: Expected) -> str | None:
    """None when enough trusted keys vouch for the expected file; else one line saying how
    many did of how many needed, why the others' statements were not taken, and which
    trusted keys vouched for nothing."""
    return weighed(documents, policy, expected)[0]


def weighed(
    documents: Iterable[bytes], policy: TrustPolicy, expected: Expected
) -> tuple[str | None, tuple[str, ...]]:
    """:func:`unvouched`'s answer, and the trusted keys that vouched (sorted): a fetch that
    takes the archive says whose statements it took."""
    from tracker.proof.statements import parse_document, vouching_signers

    attestations: list[Attestation] = []
    reasons: list[str] = []
    for document in documents:
        try:
            attestations.append(parse_document(document))
        except StatementInvalid as exc:
            reasons.append(str(exc))
    vouching, refused = vouching_signers(attestations, policy.keys, expected)
    if len(vouching) >= policy.minimum:
        return None, tuple(sorted(vouching))
    distinct = list(dict.fromkeys(reasons + refused))
    shown = "; ".join(distinct[:MAX_REASONS])
    if len(distinct) > MAX_REASONS:
        shown += f"; and {len(distinct) - MAX_REASONS} more"
    why = f" ({shown})" if shown else "" if vouching else " (none found)"
    silent = sorted(policy.keys - vouching)
    missing = f"; none from {', '.join(silent)}" if silent else ""
    line = f"{len(vouching)} of the {policy.minimum} trusted statements needed vouch for it"
    return line + why + missing, tuple(sorted(vouching))
