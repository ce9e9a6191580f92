"""Alpenglow's formats and decisions as tables (tracker/proof/formats/alpenglow.py,
tracker/proof/cluster/consensus.py): signer bitmaps, finality certificates, footers, vote
accounts' BLS keys, the rank map's order, the thresholds, getAgGenesisCert's answers, the
migration the RPCs agree on and the blocks whose votes count."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import attrs
import base58
import pytest
from test_manifest import DATA as AGAVE_DATA
from test_manifest import MANIFEST as AGAVE_MANIFEST

import tracker.proof.formats.manifest as manifest_module
from tracker.errors import CertificateInvalid, RpcError
from tracker.proof.cluster.bls import valid_key
from tracker.proof.cluster.consensus import (
    UNSUPPORTED,
    Genesis,
    by_certificate,
    genesis_answer,
    migration_known,
    migration_of,
    tally_holds,
    vote_blocks,
)
from tracker.proof.cluster.finality import MAX_UNKNOWN_KEYS, EpochRanks, epoch_rank_map, in_epoch
from tracker.proof.formats.alpenglow import (
    MAX_EPOCH_VOTERS,
    MAX_RANKS,
    Aggregate,
    Candidate,
    EpochVoters,
    FinalCertificate,
    RankMap,
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
from tracker.proof.formats.manifest import Manifest, ManifestDecoder, slot_epoch
from tracker.proof.formats.parsing import run
from tracker.proof.formats.writing import schedule_slot, write_manifest
from tracker.proof.levels import MAX_EPOCH_STAKES_BYTES


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
        _c("k", 10, 90, 10),  # one account listed twice (a forged map): both dropped
        _c("k", 11, 95, 11),
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


_G = Genesis(103, b"")


@pytest.mark.parametrize(
    ("slot", "then", "now", "holds"),
    [
        (100, None, None, True),  # not migrated then nor now
        (100, _G, _G, True),  # read up to the genesis, which never changes
        (90, None, _G, True),  # its 8 blocks all before the genesis: the same ones
        (100, None, _G, False),  # counted blocks 104 to 108, cleared since
        (103, None, _G, False),  # the genesis: its votes count for nothing now
        (104, None, _G, False),  # past it: a certificate's, never the votes'
        (104, None, Genesis(50, b""), False),
    ],
)
def test_a_kept_tally_holds_while_the_migration_leaves_its_blocks(
    slot: int, then: Genesis | None, now: Genesis | None, holds: bool
) -> None:
    assert tally_holds(slot, 8, then, now) is holds


_OTHER = Genesis(80, b"")


@pytest.mark.parametrize(
    ("then", "reported", "known"),
    [
        (None, [], None),  # not migrated then, none reported since: our outage changes nothing
        (_G, [_G], _G),  # reported then, kept for good
        (None, [_G], _G),  # one RPC reported it since (another failed): a fact that changed
        (None, [_G, _OTHER], _OTHER),  # two reports that differ: the earliest (slot 80)
    ],
)
def test_the_migration_a_kept_tally_is_judged_by_when_the_rpcs_cannot_say(
    then: Genesis | None, reported: list[Genesis], known: Genesis | None
) -> None:
    assert migration_known(then, reported) == known


# --- the epoch's stakes a manifest holds ------------------------------------------------------


def _vote_key(n: int) -> bytes:
    return hashlib.sha256(b"vote %d" % n).digest()


def _decoded(data: bytes) -> Manifest:
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    return decoder.result()


@pytest.mark.parametrize(
    ("slot", "epoch"),
    [
        # agave's warmup: epochs of 32 slots doubling, (slot + 33).next_power_of_two()
        (0, 0),
        (31, 0),
        (32, 1),
        (95, 1),
        (96, 2),
        (100, 2),
        (524_255, 13),
        # then 432,000 slots each from slot 524,256 (epoch 14)
        (524_256, 14),
        (956_255, 14),
        (956_256, 15),
        (4_800_000, 23),
    ],
)
def test_a_slots_epoch_is_its_schedules(slot: int, epoch: int) -> None:
    fields = {
        "slot": slot,
        "epoch_schedule.slots_per_epoch": 432_000,
        "epoch_schedule.first_normal_epoch": 14,
        "epoch_schedule.first_normal_slot": 524_256,
    }
    assert slot_epoch(fields) == epoch
    assert slot_epoch({**fields, "epoch_schedule.first_normal_slot": 0, "slot": 999}) == 14
    assert slot_epoch({**fields, "epoch_schedule.slots_per_epoch": 0, "slot": 10**6}) is None


def test_the_manifest_keeps_the_stakes_of_its_slots_epoch() -> None:
    node, key = b"\x01" * 32, b"\x02" * 48
    accounts = [
        (_vote_key(1), 500, _v4(node, key)),
        (_vote_key(2), 0, _v4(b"\x03" * 32, b"\x04" * 48)),  # no stake
        (_vote_key(3), 400, _v4(b"\x05" * 32, None)),  # no BLS key
        (_vote_key(4), 300, struct.pack("<I", 2) + b"\x06" * 32 + bytes(3800)),  # V3
        (_vote_key(5), 200, _v4(b"\x07" * 32, key, tag=3)),  # does not decode
    ]
    slot = schedule_slot(23) + 5
    other = [(_vote_key(9), 900, _v4(b"\x09" * 32, b"\x0a" * 48))]
    stakes = {22: other, 23: accounts, 24: other}
    voters = _decoded(write_manifest(slot, None, epoch_stakes=stakes)).fields["epoch_voters"]
    assert voters == EpochVoters(
        23, (Candidate(base58.b58encode(_vote_key(1)).decode(), node, 500, key),), 1
    )
    assert voters.complete and EpochVoters.from_bytes(voters.to_bytes()) == voters
    # none of its epoch: none kept
    manifest = _decoded(write_manifest(slot, None, epoch_stakes={22: other}))
    assert "epoch_voters" not in manifest.fields


def test_an_account_listed_twice_is_kept_once_as_the_last_one_read() -> None:
    # A forged map listing one vote account twice (agave's map is keyed by the account: the
    # last one read stays) made two candidates of it: the cluster level's look-up of its
    # signers' keys then failed with a ValueError no rule caught, and the service ended.
    first, last = _v4(b"\x01" * 32, b"\x02" * 48), _v4(b"\x03" * 32, b"\x04" * 48)
    accounts = [(_vote_key(1), 500, first), (_vote_key(2), 300, first), (_vote_key(1), 400, last)]
    accounts[1] = (_vote_key(2), 300, _v4(b"\x05" * 32, b"\x06" * 48))
    data = write_manifest(schedule_slot(20), None, epoch_stakes={20: accounts})
    voters = _decoded(data).fields["epoch_voters"]
    vote = base58.b58encode(_vote_key(1)).decode()
    assert [c for c in voters.candidates if c.vote == vote] == [
        Candidate(vote, b"\x03" * 32, 400, b"\x04" * 48)
    ]
    assert (voters.listed, len(voters.candidates), voters.complete) == (2, 2, True)
    # the last one read stays even when it cannot be ranked (no stake, no key): the
    # earlier copy is not (it was kept, unlike agave's map)
    for unranked in ((_vote_key(1), 0, last), (_vote_key(1), 400, _v4(b"\x03" * 32, None))):
        data = write_manifest(schedule_slot(20), None, epoch_stakes={20: [*accounts, unranked]})
        again = _decoded(data).fields["epoch_voters"]
        assert [c.vote for c in again.candidates] == [base58.b58encode(_vote_key(2)).decode()]
        assert again.complete
    # nor is a kept form that lists one twice read back
    twice = EpochVoters(20, (voters.candidates[0],) * 2, 2).to_bytes()
    with pytest.raises(CertificateInvalid, match="list a vote account twice"):
        EpochVoters.from_bytes(twice)


def test_the_stakes_past_the_bound_are_counted_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_EPOCH_VOTERS", 2)
    accounts = [(_vote_key(n), 10 + n, _v4(bytes([n]) * 32, bytes([n]) * 48)) for n in range(3)]
    data = write_manifest(schedule_slot(20), None, epoch_stakes={20: accounts})
    voters = _decoded(data).fields["epoch_voters"]
    assert (voters.listed, len(voters.candidates), voters.complete) == (3, 2, False)
    rpc = EpochRanks(20, 0, 0, RankMap((), (), ()), {}, {}, {})
    with pytest.raises(CertificateInvalid, match="hold 3 staked vote accounts with a BLS key"):
        epoch_rank_map(voters, rpc)


def test_the_agave_archives_manifest_holds_its_epochs_stakes() -> None:
    # Slot 100 is in epoch 2 by its schedule (its bank's own epoch field says 0); its
    # versioned stakes hold epochs 2 and 3, two V4 vote accounts each, with BLS keys: as the
    # archive's decoded contents list them (node, stake), their keys points of the subgroup.
    decoded = json.loads((AGAVE_DATA / "test-snapshot-v4.2.0-beta.1.json").read_text())
    (listed,) = [e for e in decoded["extra_fields"]["versioned_epoch_stakes"] if e["epoch"] == 2]
    voters = _decoded(AGAVE_MANIFEST).fields["epoch_voters"]
    assert (voters.epoch, voters.listed) == (2, 2)
    assert [(c.vote, base58.b58encode(c.node).decode(), c.stake) for c in voters.candidates] == [
        (v["vote_pubkey"], v["node_pubkey"], v["stake"]) for v in listed["vote_accounts"]
    ]
    assert all(c.bls_key is not None and valid_key(c.bls_key) for c in voters.candidates)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"EVS1", "end in their head"),
        (b"EVS2" + bytes(16), "not in their kept form"),
        (b"EVS1" + struct.pack("<QII", 5, 1, 2), "not in their kept form"),  # more than listed
        (b"EVS1" + struct.pack("<QII", 5, 1, 1) + bytes(119), "have 139 bytes for 1"),
    ],
)
def test_kept_stakes_in_another_form_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CertificateInvalid, match=reason):
        EpochVoters.from_bytes(data)


def test_the_most_stakes_kept_are_read_back() -> None:
    one = Candidate(base58.b58encode(bytes(32)).decode(), bytes(32), 1, bytes(48))
    most = EpochVoters(0, (one,) * MAX_EPOCH_VOTERS, MAX_EPOCH_VOTERS).to_bytes()
    assert len(most) <= MAX_EPOCH_STAKES_BYTES


def _rpc(epoch: int = 11, first: int = 4_752_000, length: int = 432_000) -> EpochRanks:
    return EpochRanks(epoch, first, first + length - 1, RankMap((), (), ()), {}, {}, {})


@pytest.mark.parametrize(
    ("slot", "epoch", "weighed"),
    [
        (4_752_000, 11, True),  # the RPC's epoch
        (5_183_999, 11, True),
        (5_184_000, 11, False),  # past it
        (4_751_999, 10, True),  # the epoch before
        (4_320_000, 10, True),
        (4_319_999, 10, False),  # two epochs back, whatever the manifest's schedule says
        (4_319_999, 9, False),
        (4_800_000, 10, False),  # the manifest's schedule and the RPC's disagree
        (4_700_000, 11, False),
    ],
)
def test_a_slot_is_weighed_in_the_rpcs_epoch_or_the_one_before(
    slot: int, epoch: int, weighed: bool
) -> None:
    if weighed:
        in_epoch(slot, epoch, _rpc())
    else:
        with pytest.raises(CertificateInvalid, match="nor in the one before it"):
            in_epoch(slot, epoch, _rpc())


def test_keys_past_the_rpcs_are_counted_before_any_is_decoded() -> None:
    many = tuple(
        Candidate(str(n), n.to_bytes(32, "big"), 1, n.to_bytes(48, "big"))
        for n in range(MAX_UNKNOWN_KEYS + 2)
    )
    voters = EpochVoters(11, many[:-1], len(many) - 1)
    with pytest.raises(CertificateInvalid, match=f"{MAX_UNKNOWN_KEYS + 1} BLS keys no vote"):
        epoch_rank_map(voters, _rpc())
    # those the RPC's vote accounts hold are decoded already: not counted
    known = _rpc()
    known = attrs.evolve(known, points={c.bls_key: None for c in many[:2] if c.bls_key})
    with pytest.raises(CertificateInvalid, match="no vote account with stake has a BLS key"):
        epoch_rank_map(EpochVoters(11, many[: MAX_UNKNOWN_KEYS + 2], MAX_UNKNOWN_KEYS + 2), known)
