"""What the certificate relays' documents decide together, as a table
(tracker/proof/cluster/certrelays.py; docs/http-api.md, "After the migration: finality
certificates"): every configured relay must answer and all must say the same of the block,
the bank hash and the shred version before any certificate is weighed; the claim they share
must be the manifest's; the distinct certificates are weighed, each at every RPC."""

from __future__ import annotations

import struct

import base58
import pytest
from helpers_alpenglow import BLOCK_ID, OTHER_BLOCK, footer

from tracker.proof.cluster.certrelays import RelayVerdict, relays_decide, weakest
from tracker.proof.cluster.finality import Document, Finality

S = 4_800_000
H = b"\x11" * 32  # the manifest's bank hash
FORGED = b"\x22" * 32  # a forger's, written into a footer of its own
SHRED = 50093
A, B, C = "http://a.example/c", "http://b.example/c", "http://c.example/c"


def doc(
    bank: bytes = H,
    *,
    block_id: bytes = BLOCK_ID,
    shred: int = SHRED,
    cert_slot: int = S,
    signatures: bytes = b"\x01",
) -> Document:
    """A document: ``signatures`` stands for what follows the certificate's block (the
    aggregates, weighed at the RPCs, not here)."""
    certificate = struct.pack("<Q", cert_slot) + block_id + signatures
    return Document(S, shred, footer(bank), certificate)


def b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode()


def verdict(*answers: tuple[str, Document | str], block_id: bytes = BLOCK_ID) -> RelayVerdict:
    return relays_decide(answers, S, block_id, H)


REAL = doc()


@pytest.mark.parametrize(
    ("answers", "documents", "refused"),
    [
        pytest.param([(A, REAL)], (REAL,), None, id="one relay: as before"),
        pytest.param([(A, REAL), (B, doc())], (REAL,), None, id="two alike: weighed once"),
        pytest.param(
            [(A, REAL), (B, doc(signatures=b"\x02")), (C, doc())],
            (REAL, doc(signatures=b"\x02")),
            None,
            id="one claim, two certificates: each weighed",
        ),
        pytest.param(
            [(A, doc(FORGED)), (B, REAL)],
            (),
            f"the certificate relays disagree ({A}: bank hash {b58(FORGED)}; {B}: bank hash"
            f" {b58(H)})",
            id="the forged footer beside the real one",
        ),
        pytest.param(
            [(A, REAL), (B, doc(shred=7))],
            (),
            f"the certificate relays disagree ({A}: shred version {SHRED}; {B}: shred version 7)",
            id="another shred version",
        ),
        pytest.param(
            [(A, REAL), (B, doc(block_id=OTHER_BLOCK))],
            (),
            f"the certificate relays disagree ({A}: block id {b58(BLOCK_ID)}; {B}: block id"
            f" {b58(OTHER_BLOCK)})",
            id="another block",
        ),
        pytest.param(
            [(A, REAL), (B, doc(FORGED)), (C, doc())],
            (),
            f"the certificate relays disagree ({A}, {C}: bank hash {b58(H)}; {B}: bank hash"
            f" {b58(FORGED)})",
            id="no quorum: two of three do not outvote a liar",
        ),
        pytest.param(
            [(A, REAL), (B, f"{B}/{S}.json: GET: 503 Service Unavailable")],
            (),
            f"{B}/{S}.json: GET: 503 Service Unavailable",
            id="one relay down: not proven now",
        ),
        pytest.param(
            [(A, f"{A}/{S}.json: not read within the deadline"), (B, doc(FORGED))],
            (),
            f"{A}/{S}.json: not read within the deadline",
            id="the honest relay silent: the liar does not decide alone",
        ),
        pytest.param(
            [(A, "down"), (B, REAL), (C, doc(FORGED))],
            (),
            f"the certificate relays disagree ({B}: bank hash {b58(H)}; {C}: bank hash"
            f" {b58(FORGED)})",
            id="a disagreement is named whoever failed",
        ),
        pytest.param(
            [(A, doc(FORGED)), (B, doc(FORGED))],
            (),
            f"the block footer's bank hash is {b58(FORGED)}, the manifest's is {b58(H)}",
            id="agreed, but not on the manifest's bank",
        ),
        pytest.param(
            [(A, doc(block_id=OTHER_BLOCK))],
            (),
            f"the finality certificate is for block id {b58(OTHER_BLOCK)}, the manifest's is"
            f" {b58(BLOCK_ID)}",
            id="agreed, but on another block",
        ),
        pytest.param(
            [(A, REAL), (B, doc(cert_slot=S + 1))],
            (),
            f"the certificate relays disagree ({A}: certificate slot {S}; {B}: certificate"
            f" slot {S + 1})",
            id="a certificate of another slot",
        ),
        pytest.param(
            [(A, REAL), (B, Document(S, SHRED, b"\x02" + H, REAL.certificate))],
            (),
            f"{B}: the block footer has version 2, not 1",
            id="a malformed footer: that relay failed",
        ),
        pytest.param(
            [(A, Document(S, SHRED, footer(H), b"\x00" * 39)), (B, REAL)],
            (),
            f"{A}: the finality certificate ends in its block",
            id="a certificate cut in its block: that relay failed",
        ),
        pytest.param([], (), "no certificate relay is configured", id="none"),
    ],
)
def test_the_relays_decide_together(
    answers: list[tuple[str, Document | str]], documents: tuple[Document, ...], refused: str | None
) -> None:
    assert verdict(*answers) == RelayVerdict(documents, refused)


def test_a_disagreement_among_many_relays_stays_one_line() -> None:
    answers = [(f"http://relay-{n}.example/certificates", doc(bytes([n]) * 32)) for n in range(8)]
    refused = verdict(*answers).refused
    assert refused is not None and "\n" not in refused and len(refused) <= 300
    assert refused.startswith("the certificate relays disagree (http://relay-0.example/")


def final(fraction: float, met: bool, fast: bool = True) -> Finality:
    return Finality(fast, fraction, met, "80% needed")


@pytest.mark.parametrize(
    ("finals", "expected"),
    [
        pytest.param([final(0.9, True)], final(0.9, True), id="one"),
        pytest.param([final(0.9, True), final(0.85, True)], final(0.85, True), id="the least"),
        pytest.param(
            [final(0.95, True), final(0.7, False, fast=False), final(0.75, False)],
            final(0.7, False, fast=False),
            id="one short: the least of those short",
        ),
        pytest.param(
            [final(0.6, True, fast=False), final(0.75, False)],
            final(0.75, False),
            id="a short one wins over a weaker one that holds",
        ),
    ],
)
def test_every_relays_certificate_must_hold_at_an_rpc(
    finals: list[Finality], expected: Finality
) -> None:
    assert weakest(finals) == expected
