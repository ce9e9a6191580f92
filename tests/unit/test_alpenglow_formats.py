"""Alpenglow's formats and decisions as tables (tracker/proof/formats/alpenglow.py,
tracker/proof/cluster/consensus.py): signer bitmaps, finality certificates, footers, vote
accounts' BLS keys, the rank map's order, the thresholds, getAgGenesisCert's answers, the
migration the RPCs agree on and the blocks whose votes count."""

from __future__ import annotations

import json
import re
import struct

import pytest

from tracker.errors import CertificateInvalid, RpcError
from tracker.proof.cluster.consensus import (
    UNSUPPORTED,
    Genesis,
    by_certificate,
    genesis_answer,
    migration_of,
    vote_blocks,
)
from tracker.proof.formats.alpenglow import (
    MAX_RANKS,
    Aggregate,
    Candidate,
    FinalCertificate,
    decode_bitmap,
    decode_final_certificate,
    encode_bitmap,
    encode_final_certificate,
    footer_bank_hash,
    meets,
    rank_map,
    vote_account_keys,
    vote_payload,
)


@pytest.mark.parametrize(
    ("data", "ranks", "expected"),
    [
        (b"\x00\x05\x00\x0f", 5, (0, 1, 2, 3)),
        (b"\x00\x09\x00\x01\x01", 9, (0, 8)),
        (b"\x00\x00\x00", 5, ()),
        (b"\x00\x05\x00\x0f", 4, "names 5 ranks, the rank map holds 4"),
        (b"\x01\x05\x00\x0f", 5, "not base 2 (version 1)"),
        (b"\x00\x05\x00\x0f\x00", 5, "has 2 bytes for 5 bits"),
        (b"\x00\x05\x00\x2f", 5, "padding bits set"),
        (b"\x00\x05", 5, "shorter than its header"),
    ],
)
def test_signer_bitmaps(data: bytes, ranks: int, expected: tuple[int, ...] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(CertificateInvalid, match=re.escape(expected)):
            decode_bitmap(data, ranks)
    else:
        assert decode_bitmap(data, ranks) == expected
        assert encode_bitmap(expected, int.from_bytes(data[1:3], "little")) == data


SIG = bytes(range(96))


def test_a_final_certificate_round_trips_and_hostile_ones_are_refused() -> None:
    fast = FinalCertificate(9, b"\x33" * 32, Aggregate(SIG, (0, 2)), None)
    slow = FinalCertificate(9, b"\x33" * 32, Aggregate(SIG, (1,)), Aggregate(SIG, (0, 1)))
    for cert in (fast, slow):
        data = encode_final_certificate(cert, 3)
        assert decode_final_certificate(data, 3) == cert
        with pytest.raises(CertificateInvalid, match="ends at byte"):
            decode_final_certificate(data[:-1], 3)
        with pytest.raises(CertificateInvalid, match="1 bytes after it"):
            decode_final_certificate(data + b"\x00", 3)
    data = bytearray(encode_final_certificate(fast, 3))
    data[-1] = 2
    with pytest.raises(CertificateInvalid, match="option tag 2"):
        decode_final_certificate(bytes(data), 3)
    # The layout: slot, block id, 96-byte signature, u16 bitmap length, bitmap, option.
    assert encode_final_certificate(fast, 3) == (
        struct.pack("<Q", 9) + b"\x33" * 32 + SIG + b"\x04\x00" + b"\x00\x03\x00\x05" + b"\x00"
    )


def test_a_footers_bank_hash() -> None:
    footer = b"\x01" + b"\x99" * 32 + bytes(8) + b"\x02ab" + b"\x00\x00\x00"
    assert footer_bank_hash(footer) == b"\x99" * 32
    with pytest.raises(CertificateInvalid, match="version 2"):
        footer_bank_hash(b"\x02" + footer[1:])
    with pytest.raises(CertificateInvalid, match="ends at byte"):
        footer_bank_hash(footer[:40])


def test_vote_payloads() -> None:
    assert (
        vote_payload(1, 1, b"\x33" * 32, 2)
        == b"\x01" + struct.pack("<Q", 1) + b"\x33" * 32 + b"\x02\x00"
    )
    assert vote_payload(2, 1, None, 2) == b"\x02" + struct.pack("<Q", 1) + b"\x02\x00"


def _v4(node: bytes, key: bytes | None, tag: int | None = None) -> bytes:
    head = struct.pack("<I", 3) + node + bytes(96) + struct.pack("<HHQ", 0, 0, 0)
    if key is None:
        return head + bytes([tag or 0]) + bytes(60)
    return head + bytes([1 if tag is None else tag]) + key + bytes(12)


def test_vote_account_keys() -> None:
    node, key = b"\x01" * 32, b"\x02" * 48
    assert vote_account_keys(_v4(node, key)) == (node, key)
    assert vote_account_keys(_v4(node, None)) == (node, None)
    assert vote_account_keys(struct.pack("<I", 2) + node + bytes(100)) == (node, None)  # V3
    with pytest.raises(CertificateInvalid, match="does not decode"):
        vote_account_keys(_v4(node, key, tag=3))
    with pytest.raises(CertificateInvalid, match="ends before its BLS key"):
        vote_account_keys(_v4(node, key)[:100])


def _c(vote: str, node: int, stake: int, key: int | None) -> Candidate:
    return Candidate(vote, bytes([node]) * 32, stake, None if key is None else bytes([key]) * 48)


def test_the_rank_map_is_agaves() -> None:
    candidates = [
        _c("a", 1, 100, 9),
        _c("b", 2, 300, 5),
        _c("c", 3, 100, 4),  # ties with a: the smaller key first
        _c("d", 4, 0, 7),  # no stake
        _c("e", 5, 500, None),  # no key
        _c("f", 6, 400, 8),  # its key is invalid
        _c("g", 7, 50, 2),  # g and h share a key: both dropped
        _c("h", 8, 60, 2),
        _c("i", 9, 70, 3),  # i and j share a node: both dropped
        _c("j", 9, 80, 6),
    ]
    ranks = rank_map(candidates, lambda k: k != bytes([8]) * 48)
    assert ranks.votes == ("b", "c", "a")
    assert ranks.stakes == (300, 100, 100) and ranks.total == 500
    with pytest.raises(CertificateInvalid, match="no vote account with stake has a BLS key"):
        rank_map([_c("d", 4, 0, 7)], lambda k: True)
    many = [_c(str(n), 0, 1, 0) for n in range(MAX_RANKS + 1)]
    many = [
        Candidate(c.vote, n.to_bytes(32, "big"), 1, n.to_bytes(48, "big"))
        for n, c in enumerate(many)
    ]
    with pytest.raises(CertificateInvalid, match="at most 2000 admitted"):
        rank_map(many, lambda k: True)


@pytest.mark.parametrize(
    ("stake", "total", "percent", "met"),
    [
        (80, 100, 80, True),
        (79, 100, 80, False),
        (3, 5, 60, True),
        (2, 3, 67, False),
        (0, 1, 60, False),
    ],
)
def test_thresholds_compare_in_integers(stake: int, total: int, percent: int, met: bool) -> None:
    assert meets(stake, total, percent) is met


def _answer(result: object = None, error: object = None) -> bytes:
    body: dict[str, object] = {"jsonrpc": "2.0", "id": 1}
    body["error" if error is not None else "result"] = error if error is not None else result
    return json.dumps(body).encode()


CERT = {"block": {"slot": 459652999, "blockId": list(range(32))}, "signature": {}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_answer(None), None),
        (_answer(CERT), Genesis(459652999, bytes(range(32)))),
        (_answer(error={"code": -32601, "message": "Method not found"}), UNSUPPORTED),
        (_answer(error={"code": -32005}), "error"),
        (_answer({"block": {"slot": True, "blockId": list(range(32))}}), "without a block slot"),
        (_answer({"block": {"slot": 1, "blockId": [256] * 32}}), "not 32 bytes"),
        (b'{"jsonrpc": "2.0", "id": 1}', "without a result"),
        (b"[", "getAgGenesisCert"),
    ],
)
def test_get_ag_genesis_cert_answers(body: bytes, expected: object) -> None:
    if isinstance(expected, str) and expected != UNSUPPORTED:
        with pytest.raises(RpcError, match=expected):
            genesis_answer(body)
    else:
        assert genesis_answer(body) == expected


G50 = Genesis(50, b"\x01" * 32)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"a": None, "b": UNSUPPORTED}, None),
        ({"a": G50, "b": UNSUPPORTED}, G50),
        ({"a": G50, "b": G50}, G50),
        ({"a": G50, "b": None}, "disagree"),
        ({"a": G50, "b": Genesis(51, b"\x01" * 32)}, "disagree"),
        ({"a": G50, "b": Genesis(50, b"\x02" * 32)}, "disagree"),
    ],
)
def test_the_migration_the_rpcs_agree_on(answers: dict[str, object], expected: object) -> None:
    if expected == "disagree":
        with pytest.raises(RpcError, match="the RPCs disagree on the Alpenglow migration"):
            migration_of(answers)  # type: ignore[arg-type]
    else:
        assert migration_of(answers) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("slot", "genesis", "blocks", "certificate"),
    [
        (100, None, range(101, 109), False),
        (100, Genesis(200, b""), range(101, 109), False),
        (100, Genesis(103, b""), range(101, 104), False),
        (100, Genesis(100, b""), range(101, 101), False),
        (100, Genesis(99, b""), range(101, 101), True),
    ],
)
def test_the_blocks_whose_votes_count(
    slot: int, genesis: Genesis | None, blocks: range, certificate: bool
) -> None:
    assert vote_blocks(slot, 8, genesis) == blocks
    assert by_certificate(slot, genesis) is certificate
