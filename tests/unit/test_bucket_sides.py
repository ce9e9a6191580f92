"""What the bucket keeps beside an archive (tracker.objectstore.sides): the objects written
before an upload completes, and the proof object read back, as tables."""

from __future__ import annotations

import json

import pytest

from tracker.core.digests import Verified
from tracker.objectstore.sides import MAX_PROOF, proof_of, side_objects
from tracker.proof.levels import Level, Proof

KEY = "p/main/snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar.zst"
SHA = "ab" * 32
PROOF = Proof(Level.MANIFEST, "7G3g", "FF2m", None, "not proven: no accounts")


def test_the_digest_is_written_last_after_the_proof_and_the_statement() -> None:
    checked = Verified(SHA, PROOF, 10, 1.0)
    written = side_objects(KEY, checked, b'{"statement": "..."}\n')
    assert [key.removeprefix(KEY) for key, _body in written] == [
        ".proof",
        ".attestation",
        ".sha256",
    ]
    assert Proof.from_json(json.loads(written[0][1])) == PROOF
    assert written[2][1] == f"{SHA}  {KEY.rsplit('/', 1)[1]}\n".encode()
    unsigned = side_objects(KEY, checked, None)  # no attest: no statement object
    assert [key.removeprefix(KEY) for key, _body in unsigned] == [".proof", ".sha256"]


@pytest.mark.parametrize(
    ("raw", "proof", "why"),
    [
        (json.dumps(PROOF.to_json()).encode(), PROOF, ""),
        (None, None, ""),  # an older replica's copy: no proof object, nothing to say
        (b"{" + b" " * MAX_PROOF + b"}", None, f"over {MAX_PROOF} bytes"),
        (b'{"level": "everything"}', None, "not a proof"),
        (b'{"level": "manifest", "voted_stake": 2.0}', None, "not a proof"),
        (b"[" * 2000 + b"]" * 2000, None, "not a proof"),  # deep, within the bound
        (b"\xff\xfe", None, "not a proof"),
        (b"", None, "not a proof"),
    ],
)
def test_a_proof_object_that_is_not_one_counts_as_none(
    raw: bytes | None, proof: Proof | None, why: str
) -> None:
    assert proof_of(raw) == (proof, why)
