"""The tracker's signatures of what it proved about the archives it holds (docs/http-api.md,
"Signed statements"). No I/O: the clock and the key are passed in.

:class:`Attestor` signs one statement per held, verified copy: the archive's name, size and
SHA-256, what its check proved (:class:`tracker.proof.levels.Proof`), when it was checked and
until when the statement holds (``attest.valid_for`` after it is signed). A statement is signed
once and again only when its copy or proof changes or half its life has passed, so a copy held
for weeks is always served a statement that still holds.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from tracker.core.snapshots import ArchiveName
from tracker.core.statements import Attestation, Signer, Statement
from tracker.proof.levels import Proof


@attrs.frozen
class HeldCopy:
    """One verified copy the tracker holds: its archive, size, SHA-256, proof and the time
    (seconds since the epoch) its check ended."""

    name: ArchiveName
    size: int
    sha256: str
    proof: Proof
    checked_at: float


class Attestor:
    """Signs statements of held copies with one key, each kept until half its life passed."""

    def __init__(self, signer: Signer, valid_for: float, clock: Callable[[], float]) -> None:
        self._signer = signer
        self._valid_for = valid_for
        self._clock = clock
        self._signed: dict[tuple[str, str], tuple[HeldCopy, Attestation]] = {}

    @property
    def public_key(self) -> str:
        """The signer's public key (base58)."""
        return self._signer.public_key

    def attest(self, group: str, held: HeldCopy) -> Attestation:
        """The statement of ``held`` (of ``group``), signed now or earlier."""
        key = (group, held.name.file_name)
        now = self._clock()
        kept = self._signed.get(key)
        if kept is not None and kept[0] == held:
            statement = kept[1].statement
            if statement.expires - now > self._valid_for / 2:
                return kept[1]
        attestation = self._signer.sign(statement_of(held, now, self._valid_for))
        self._signed[key] = (held, attestation)
        return attestation

    def forget(self, group: str, file_name: str) -> None:
        """Drop what was signed for a copy no longer held."""
        self._signed.pop((group, file_name), None)


def statement_of(held: HeldCopy, now: float, valid_for: float) -> Statement:
    """What the tracker says of ``held`` when it signs at ``now`` (seconds since the epoch)."""
    name, proof = held.name, held.proof
    return Statement(
        name=name.file_name,
        size=held.size,
        sha256=held.sha256,
        slot=name.slot,
        base_slot=None if name.is_full else name.base_slot,
        snapshot_hash=proof.snapshot_hash,
        bank_hash=proof.bank_hash,
        level=proof.level,
        voted_stake=proof.voted_stake,
        checked_at=int(held.checked_at),
        expires=int(now + valid_for),
    )
