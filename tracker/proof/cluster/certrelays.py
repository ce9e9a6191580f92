"""What the certificate relays' documents decide together (pure; docs/http-api.md, "After the
migration: finality certificates").

A document's certificate is verified against the stakes the RPCs confirm, so no relay can
forge it; its footer's bank hash and the shred version are the relay's word (the footer's
tie to the block id needs the block's shreds, which no RPC serves). So one relay alone
would decide which bank a certificate vouches for: a liar serves block N's real certificate
beside a footer of its own and lifts a forged archive of N's slot and block id. With
several relays (``certificates``, :meth:`~tracker.config.schema.Config.group_certificates`)
an archive is weighed only when **every** one answered and all say the same of what the
level relies on (the block the certificate is for, the bank hash, the shred version): a
quorum would let a liar decide again once the honest relays are down or slow, which an
attacker who can lie can often also arrange. A relay that fails leaves the archive not
proven now (asked again after the back-off); relays that disagree are named each with its
answer, as RPCs that disagree are.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import base58

from tracker.core.text import one_line
from tracker.errors import CertificateInvalid
from tracker.proof.cluster.finality import Document, Finality, check_block
from tracker.proof.formats.alpenglow import footer_bank_hash

#: A claim's fields, in the order a note names them.
_FIELDS = ("slot", "block_id", "bank_hash", "shred_version")


@attrs.frozen
class RelayClaim:
    """What a relay's document says that the level relies on beside the signatures: the
    slot and block id its certificate is for, its footer's bank hash, the shred version
    the votes are read with."""

    slot: int
    block_id: bytes
    bank_hash: bytes
    shred_version: int

    def describe(self, fields: Sequence[str]) -> str:
        """``fields`` of this claim as a note names them (hashes in base58)."""
        shown = {
            "slot": f"certificate slot {self.slot}",
            "block_id": f"block id {_b58(self.block_id)}",
            "bank_hash": f"bank hash {_b58(self.bank_hash)}",
            "shred_version": f"shred version {self.shred_version}",
        }
        return ", ".join(shown[f] for f in fields)


def claim_of(doc: Document) -> RelayClaim:
    """The claim of ``doc``. Raises CertificateInvalid (one line) when its certificate ends
    before its block or its footer does not decode. Pure."""
    head = doc.certificate[:40]
    if len(head) < 40:
        raise CertificateInvalid("the finality certificate ends in its block")
    slot = int.from_bytes(head[:8], "little")
    return RelayClaim(slot, head[8:40], footer_bank_hash(doc.footer), doc.shred_version)


@attrs.frozen
class RelayVerdict:
    """What the relays' documents decide: the documents whose certificates are weighed
    next (one per distinct certificate, in the relays' order; their claims are one), or
    why none is (one line)."""

    documents: tuple[Document, ...] = ()
    refused: str | None = None


def relays_decide(
    answers: Sequence[tuple[str, Document | str]], slot: int, block_id: bytes, bank_hash: bytes
) -> RelayVerdict:
    """The verdict of every configured relay's answer (``(name, document)``, or ``(name,
    reason)`` for one that failed: the reason one line naming it) for the archive's
    ``slot``, ``block_id`` and ``bank_hash``: relays whose documents say different things
    are refused with each answer (whether or not another failed: that is a liar, or a
    relay of another cluster, to be seen); then a relay that failed (the first: not proven
    now); then the claim they share must be the manifest's
    (:func:`~tracker.proof.cluster.finality.check_block`'s refusals). Pure."""
    claims: list[tuple[str, RelayClaim, Document]] = []
    failures: list[str] = []
    for name, answer in answers:
        if isinstance(answer, str):
            failures.append(answer)
            continue
        try:
            claims.append((name, claim_of(answer), answer))
        except CertificateInvalid as exc:
            failures.append(one_line(f"{name}: {exc}"))
    if not answers:
        return RelayVerdict(refused="no certificate relay is configured")
    distinct = list(dict.fromkeys(claim for _, claim, _ in claims))
    if len(distinct) > 1:
        return RelayVerdict(refused=_disagreement(claims, distinct))
    if failures:
        return RelayVerdict(refused=failures[0])
    first = claims[0][2]
    try:
        check_block(first, slot, block_id, bank_hash)
    except CertificateInvalid as exc:
        return RelayVerdict(refused=str(exc))
    by_certificate: dict[bytes, Document] = {}
    for _, _, doc in claims:
        by_certificate.setdefault(doc.certificate, doc)
    return RelayVerdict(documents=tuple(by_certificate.values()))


def _disagreement(
    claims: list[tuple[str, RelayClaim, Document]], distinct: list[RelayClaim]
) -> str:
    """One line naming each answer (the fields in which the answers differ) with the
    relays that gave it."""
    differ = [f for f in _FIELDS if len({getattr(claim, f) for claim in distinct}) > 1]
    seen = "; ".join(
        ", ".join(name for name, said, _ in claims if said == claim) + f": {claim.describe(differ)}"
        for claim in distinct
    )
    return one_line(f"the certificate relays disagree ({seen})")


def weakest(finals: Sequence[Finality]) -> Finality:
    """What one RPC says of the relays' certificates together: the least stake behind one
    that does not reach its thresholds, else the least behind any (every certificate read
    must hold: each relay vouches for the block through its own). Pure."""
    short = [f for f in finals if not f.supermajority]
    return min(short or finals, key=lambda f: f.fraction)


def _b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")
