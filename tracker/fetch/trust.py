"""Which signed statements ``fetch`` needs before an archive enters the ledger (``--trust-key``,
``--trust-min``; docs/http-api.md, "Signed statements"). Pure.

A downloaded archive moves into the ledger only when at least ``minimum`` distinct trusted keys
signed valid, unexpired statements that name its exact size and SHA-256 and a level at least
the required one. The statements come from the tracker (each listed file's ``attestations``,
and the archive's ``.attestation`` route); any of them may be malformed or forged, which costs
that statement only.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import base58

from tracker.core.statements import Attestation, Expected, parse_document, vouching_signers
from tracker.errors import StatementInvalid
from tracker.proof.levels import Level


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


def public_key(text: str) -> str:
    """A ``--trust-key`` value: an ed25519 public key in base58 (as ``solana-keygen pubkey``
    prints it); ValueError otherwise."""
    try:
        raw = base58.b58decode(text) if 32 <= len(text) <= 44 else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"not a base58 public key of 32 bytes: {text!r}")
    return text


def unvouched(documents: Iterable[bytes], policy: TrustPolicy, expected: Expected) -> str | None:
    """None when enough trusted keys vouch for the expected file; else one line saying how
    many did of how many needed, and why the others' statements were not taken."""
    attestations: list[Attestation] = []
    reasons: list[str] = []
    for document in documents:
        try:
            attestations.append(parse_document(document))
        except StatementInvalid as exc:
            reasons.append(str(exc))
    vouching, refused = vouching_signers(attestations, policy.keys, expected)
    if len(vouching) >= policy.minimum:
        return None
    reasons += refused
    why = f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else " (none found)"
    return f"{len(vouching)} of the {policy.minimum} trusted statements needed vouch for it{why}"
