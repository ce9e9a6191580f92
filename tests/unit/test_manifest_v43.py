"""Manifests as today's producers write them (docs/architecture.md, "Proven archives"):
agave v4.3's, whose versioned epoch stakes hold V4 vote accounts with BLS keys, decoded and
proven; what agave refuses at load said in the proof (``unloadable``): several account
storages for one slot as Firedancer writes them, an invalid vote account in the stakes.

The v4.3 manifest is built from agave's serializer source (no archive of it ships here):
``runtime/src/serde_snapshot.rs`` ``ExtraFieldsToSerialize`` (``lamports_per_signature``,
two obsolete options, ``versioned_epoch_stakes``, ``accounts_lt_hash``, then the block id
its deserializer reads) and ``runtime/src/epoch_stakes.rs`` (``VersionedEpochStakes::Current``,
variant 0: ``SerializableEpochStakes {vote_accounts, stake_delegations: [], unused: 0,
epoch, stake_history}``, ``total_stake``, ``node_id_to_vote_accounts``,
``epoch_authorized_voters``); the vote states are ``VoteStateVersions::V4`` (solana-sdk
``vote-interface/src/state/vote_state_v4.rs``)."""

from __future__ import annotations

import struct

import base58
import pytest
from test_manifest import MANIFEST, NAME_HASH, decode

from tracker.proof.formats.bankhash import prove_manifest
from tracker.proof.formats.voteaccounts import VOTE_PROGRAM_ID, vote_state_problem
from tracker.proof.formats.writing import Account, archive_hash_of, lattice_of, write_manifest
from tracker.proof.levels import Level

BLOCK_ID = b"\x5a" * 32
V4_SIZE = 3762  # VoteStateV4::size_of(): an account is allocated at it


def b58(raw: bytes) -> str:
    return base58.b58encode(raw).decode()


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def v4_state(node: bytes, bls: bytes | None, *, votes: int = 2, credits: int = 3) -> bytes:
    out = struct.pack("<I", 3) + node + b"\x02" * 32 + b"\x03" * 32 + node
    out += struct.pack("<HHQ", 1000, 500, 0)
    out += (b"\x01" + bls) if bls is not None else b"\x00"
    out += u64(votes) + b"".join(
        bytes([1]) + u64(100 + i) + struct.pack("<I", 31 - i) for i in range(votes)
    )
    out += b"\x01" + u64(99)  # root slot
    out += u64(1) + u64(11) + b"\x04" * 32  # authorized voters
    out += u64(credits) + b"".join(u64(e) + u64(e * 10) + u64(e * 9) for e in range(credits))
    out += u64(101) + struct.pack("<q", 1_700_000_000)
    return out.ljust(V4_SIZE, b"\0")


def vote_account(pubkey: bytes, stake: int, data: bytes, owner: bytes = VOTE_PROGRAM_ID) -> bytes:
    """(pubkey, (stake, Account {lamports, data, owner, executable, rent_epoch}))."""
    return (
        pubkey
        + u64(stake)
        + u64(27_074_400)
        + u64(len(data))
        + data
        + owner
        + b"\0"
        + u64(2**64 - 1)
    )


def epoch_stakes(epoch: int, accounts: list[bytes], nodes: list[bytes]) -> bytes:
    """``VersionedEpochStakes::Current`` as agave serializes it."""
    out = u64(epoch) + struct.pack("<I", 0)
    out += u64(len(accounts)) + b"".join(accounts)
    out += u64(0) + u64(0) + u64(epoch)  # stake_delegations (always empty), unused, epoch
    out += u64(1) + u64(epoch - 1) + u64(10**15) + u64(0) + u64(0)  # stake history
    out += u64(3 * 10**15)  # total_stake
    out += u64(len(nodes)) + b"".join(n + u64(1) + n[::-1] + u64(10**15) for n in nodes)
    out += u64(len(nodes)) + b"".join(n[::-1] + b"\x04" * 32 for n in nodes)
    return out


def manifest_v43(
    slot: int, accounts: list[bytes] | None = None, storages: int = 1
) -> tuple[bytes, bytes]:
    """(manifest, lattice hash) of ``slot`` as agave v4.3 writes it."""
    stored = [Account(bytes([i]) * 32, 1000 + i, b"data") for i in range(3)]
    lt = lattice_of(stored)
    nodes = [bytes([0x10 + i]) * 32 for i in range(3)]
    if accounts is None:
        accounts = [
            vote_account(n[::-1], 10**15, v4_state(n, bytes([0x80 + i]) + bytes(47)))
            for i, n in enumerate(nodes)
        ]
    full = write_manifest(slot, lt, [(slot, i, 120) for i in range(storages)])
    # Its bank hash is over the lattice hash; the empty epoch stakes and what follows are
    # replaced with v4.3's.
    head = full[: -(8 + 1 + len(lt) + 1 + 32)]
    extra = u64(2) + epoch_stakes(11, accounts, nodes) + epoch_stakes(12, accounts, nodes)
    return head + extra + b"\x01" + lt + b"\x01" + BLOCK_ID, lt


def test_a_manifest_as_agave_4_3_writes_it_decodes_and_proves() -> None:
    data, lt = manifest_v43(7)
    manifest = decode(data)
    assert manifest.counts["versioned_epoch_stakes"] == 2
    assert manifest.counts["versioned_epoch_stakes.vote_accounts"] == 3
    assert manifest.fields["block_id"] == BLOCK_ID and manifest.accounts_lt_hash == lt
    proof = prove_manifest(manifest, slot=7, base_slot=0, name_hash=archive_hash_of(lt))
    assert (proof.level, proof.unloadable) == (Level.MANIFEST, None)
    assert proof.block_id == base58.b58encode(BLOCK_ID).decode()
    # A field appended after the block id by a later version is read past, as agave does.
    later = decode(data + b"\x01" + b"\x77" * 40)
    assert later.fields["block_id"] == BLOCK_ID


def test_agaves_own_archive_is_loadable() -> None:
    proof = prove_manifest(decode(MANIFEST), slot=100, base_slot=0, name_hash=NAME_HASH)
    assert proof.unloadable is None and proof.level == Level.MANIFEST


def test_several_storages_of_one_slot_say_agave_cannot_load_it() -> None:
    data, lt = manifest_v43(7, storages=3)  # accounts/7.0, 7.1, 7.2 as Firedancer writes them
    proof = prove_manifest(decode(data), slot=7, base_slot=0, name_hash=archive_hash_of(lt))
    assert proof.level == Level.MANIFEST  # still the cluster's state, proven
    assert proof.unloadable == (
        "agave cannot load it: 3 account storages for slot 7 (agave loads one a slot;"
        " Firedancer writes several)"
    )
    assert proof.to_json()["unloadable"] == proof.unloadable


def test_one_storage_listed_twice_is_one_for_agave() -> None:
    # agave collects a slot's list into a map of id to length (the last length wins, as the
    # check reads it): one storage, loaded. It was counted as two: "agave cannot load it".
    lt = lattice_of([Account(b"\x05" * 32, 7)])
    data = write_manifest(10, lt, [(5, 1, 200), (5, 1, 136)])
    manifest = decode(data)
    assert manifest.storages.valid_length(5, 1) == 136
    proof = prove_manifest(manifest, slot=10, base_slot=0, name_hash=archive_hash_of(lt))
    assert (proof.level, proof.unloadable) == (Level.MANIFEST, None)


NODE = b"\x21" * 32
GOOD = v4_state(NODE, b"\x81" + bytes(47))
OTHER_OWNER = b"\x09" * 32
BAD_VOTE = b"\x66" * 32
V3_HEAD = struct.pack("<I", 2) + NODE + b"\x02" * 32 + b"\x05"
V1_HEAD = struct.pack("<I", 1) + NODE + b"\x02" * 32 + b"\x05"
LISTS = b"\x00" + u64(0) + bytes(1545) + u64(0)  # no root, no voters, prior voters, no credits


@pytest.mark.parametrize(
    ("owner", "state", "reason"),
    [
        (
            b"\x09" * 32,
            GOOD,
            f"its owner {b58(OTHER_OWNER)} is not the vote program",
        ),
        (
            VOTE_PROGRAM_ID,
            struct.pack("<I", 0) + bytes(200),
            "its vote state is of the old version 0.23.5",
        ),
        (
            VOTE_PROGRAM_ID,
            struct.pack("<I", 4) + bytes(200),
            "its vote state has the unknown version 4",
        ),
        (VOTE_PROGRAM_ID, GOOD[:193] + u64(256) + GOOD[201:], "its votes count 256 is past 255"),
        (
            VOTE_PROGRAM_ID,
            GOOD[:144] + b"\x02" + GOOD[145:],
            "its BLS key's option tag is not 0 or 1",
        ),
        (VOTE_PROGRAM_ID, GOOD[:300], "its data is too small for its vote state"),
    ],
    ids=["owner", "version-0", "version-4", "votes-256", "bls-tag", "truncated"],
)
def test_an_invalid_vote_account_says_agave_refuses_it(
    owner: bytes, state: bytes, reason: str
) -> None:
    bad = vote_account(BAD_VOTE, 10**15, state, owner)
    accounts = [bad, vote_account(NODE[::-1], 10**15, GOOD)]
    data, lt = manifest_v43(7, accounts=accounts)
    proof = prove_manifest(decode(data), slot=7, base_slot=0, name_hash=archive_hash_of(lt))
    assert proof.level == Level.MANIFEST
    assert proof.unloadable == (
        f"agave 4.3 and later refuse to load it: vote account {b58(BAD_VOTE)}: {reason}"
    )


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (GOOD, None),
        (GOOD + b"\xff" * 42, None),  # trailing bytes are allowed
        (v4_state(NODE, None), None),  # a V4 state without a BLS key loads
        (
            struct.pack("<I", 2)
            + NODE
            + b"\x02" * 32
            + b"\x05"
            + u64(0)
            + b"\x00"
            + u64(0)
            + bytes(1545)
            + u64(0)
            + bytes(16),
            None,
        ),
        (
            struct.pack("<I", 1)
            + NODE
            + b"\x02" * 32
            + b"\x05"
            + u64(1)
            + bytes(12)
            + b"\x00"
            + u64(0)
            + bytes(1545)
            + u64(0)
            + bytes(16),
            None,
        ),
        (
            struct.pack("<I", 2)
            + NODE
            + b"\x02" * 32
            + b"\x05"
            + u64(0)
            + b"\x00"
            + u64(0)
            + bytes(1545)
            + u64(0)
            + bytes(15),
            "its data is too small for its vote state",
        ),
        (b"\x03\x00", "its data is too small"),
    ],
    ids=["v4", "trailing", "v4-no-key", "v3-default", "v1_14_11", "v3-short", "tiny"],
)
def test_vote_states_as_agaves_view_parses_them(state: bytes, problem: str | None) -> None:
    assert vote_state_problem(state) == problem
