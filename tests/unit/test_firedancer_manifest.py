"""Fulls as Firedancer v26.08 writes them, and the Alpenglow marker in vote epoch credits
(docs/architecture.md, "The accounts level" → "Fulls as today's producers write them").

The manifest is built field by field from Firedancer's writer (firedancer-io/firedancer
v26.08.1, ``src/discof/backup/fd_ssmanifest_encoder.c``; no archive of it ships here): an
empty ancestors list, zero timestamps in the blockhash queue, empty bank stakes, **no account
storage listed**, three ``VersionedEpochStakes::Current`` entries (epochs E-1, E, E+1) whose
vote accounts are ``VoteStateV4`` of 186 + 24 x credits bytes (no BLS key, no votes, no
authorized voter; owner the vote program, executable set), then the lattice hash and the
block id. The archive written with it (``tests/archives.py``, ``layout="firedancer"``,
``listed=False``) holds the storages (``accounts/{S}.{id}``, valid to their end, as
Firedancer's loader reads them) and the status cache last (``fd_snapmk_tile.c``).

The marker is agave's ``AG_MIGRATION_EPOCH_CREDIT = (Epoch::MAX, u64::MAX, u64::MAX)``
(``votor-messages/src/migration.rs``), spliced into every vote account's epoch credits at
the tower-to-Alpenglow migration: a 24-byte entry like any other, which agave's
``VoteStateView`` frame and our check read past by length."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
import zstandard
from archives import build_archive, compress, make_tar, snapshot_entries

from tracker.errors import ArchiveInvalid
from tracker.proof.accounts.accountsprover import MISMATCH
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.archive.headproof import prove_head
from tracker.proof.formats.bankhash import UNLISTED, bank_hash, prove_manifest
from tracker.proof.formats.manifest import Manifest, ManifestDecoder
from tracker.proof.formats.parsing import run
from tracker.proof.formats.voteaccounts import VOTE_PROGRAM_ID, vote_state_problem
from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of,
    write_manifest,
    write_status_cache,
    write_storage,
)
from tracker.proof.levels import Level

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")

SLOT = 1100
EPOCH = 2
LT_HASH = lattice_of([Account(b"\x09" * 32, 5, b"data")])
BLOCK_ID = b"\x5b" * 32
#: agave's AG_MIGRATION_EPOCH_CREDIT (votor-messages/src/migration.rs).
MARKER = (2**64 - 1, 2**64 - 1, 2**64 - 1)
#: A vote account's epoch credits across the migration in epoch 1: its tower half, the
#: marker, its Alpenglow half (credits become lamports: far past u32).
CREDITS = [(0, 7488, 0), (1, 11584, 7488), MARKER, (1, 4_643_428_456, 11584)]


def q(n: int) -> bytes:
    return struct.pack("<Q", n)


def v4_firedancer(node: bytes, credits: list[tuple[int, int, int]]) -> bytes:
    """A vote state as fd_ssmanifest_encoder.c writes one (186 + 24 x credits bytes)."""
    out = struct.pack("<I", 3) + node + bytes(32) + b"\x07" * 32 + node
    out += struct.pack("<HHQ", 500, 0, 0)  # commissions (bps), pending delegator rewards
    out += b"\x00" + q(0) + b"\x00" + q(0)  # no BLS key, no votes, no root, no voters
    out += q(len(credits)) + b"".join(q(e) + q(c) + q(p) for e, c, p in credits)
    return out + q(0) + q(0)  # last timestamp


def firedancer_manifest(bank_hash_: bytes = b"\x55" * 32, lt_hash: bytes = LT_HASH) -> bytes:
    """The bytes fd_ssmanifest_encoder.c writes for a bank of ``SLOT`` (its states in order)."""
    last = b"\x41" * 32
    out = q(0) + b"\x01" + last + q(1) + last + q(5000) + q(0) + q(0) + q(299)  # queue
    out += q(0) + bank_hash_ + b"\x22" * 32 + q(SLOT - 1)  # no ancestors; hashes
    out += q(0)  # hard forks
    out += q(10) + q(64 * SLOT) + q(3) + q(10**15) + q(64 * (SLOT + 1))  # counters
    out += b"\x01" + q(12_500) + q(64) + (400_000_000).to_bytes(16, "little")
    out += q(1_700_000_000) + struct.pack("<d", 78_892_314.98) + q(0) + q(SLOT) + q(EPOCH)
    out += q(SLOT - 5) + bytes(32) + q(0) + q(0)  # block height, leader, fees, calculator
    out += q(10_000) + q(20_000) + q(5_000) + q(100_000) + b"\x32" + q(0) + q(EPOCH)
    schedule = q(432_000) + q(432_000) + b"\x01" + q(14) + q(524_256)
    out += schedule + struct.pack("<d", 78_892_314.98) + q(3480) + struct.pack("<d", 2.0)
    out += b"\x32" + schedule + struct.pack("<6d", 0.08, 0.015, 0.15, 0.05, 7.0, 0.0)
    out += q(0) + q(0) + q(0) + q(EPOCH) + q(0)  # bank stakes: none; stake history: none
    out += q(0) + q(0) + q(0) + q(0) + b"\x00"  # unused accounts, epoch stakes, is_delta
    out += q(0)  # account storage entries: none listed
    out += q(0) + q(SLOT) + bytes(64) + q(0) * 5 + q(0) + q(0)  # accounts-db fields
    out += q(5000) + b"\x00" + b"\x00" + q(3)  # lamports/signature, two Nones, 3 epochs
    for index in range(3):
        voters = [(bytes([0x60 + i]) * 32, bytes([0x70 + i]) * 32) for i in range(2)]
        out += q(EPOCH - 1 + index) + struct.pack("<I", 0) + q(len(voters))
        for vote, node in voters:
            data = v4_firedancer(node, CREDITS)
            assert len(data) == 186 + 24 * len(CREDITS)
            out += vote + q(1_000_000) + q(0) + q(len(data)) + data
            out += VOTE_PROGRAM_ID + b"\x01" + q(0)  # owner, executable, rent epoch
        out += q(0) + q(0) + q(EPOCH - 1 + index) + q(0) + q(2_000_000) + q(0) + q(0)
    return out + b"\x01" + lt_hash + b"\x01" + BLOCK_ID


def decode(data: bytes) -> Manifest:
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    assert decoder.done
    return decoder.result()


@pytest.mark.one_bookkeeping
def test_firedancers_manifest_is_decoded_and_proven() -> None:
    first = decode(firedancer_manifest())
    manifest = decode(firedancer_manifest(bank_hash(first)))
    assert (manifest.slot, manifest.parent_slot, manifest.accounts_db_slot) == (
        SLOT,
        SLOT - 1,
        SLOT,
    )
    assert len(manifest.storages) == 0  # Firedancer lists none
    assert manifest.accounts_lt_hash == LT_HASH
    assert manifest.fields["block_id"] == BLOCK_ID
    assert manifest.counts["versioned_epoch_stakes"] == 3
    assert manifest.counts["versioned_epoch_stakes.vote_accounts"] == 2
    assert manifest.counts["ancestors"] == 0
    assert "invalid_vote_account" not in manifest.fields  # agave's frame takes them
    proof = prove_manifest(manifest, slot=SLOT, base_slot=0, name_hash=archive_hash_of(LT_HASH))
    # no storage listed for a state that holds accounts: agave cannot load it
    assert (proof.level, proof.unloadable) == (Level.MANIFEST, UNLISTED)


@pytest.mark.one_bookkeeping
def test_an_empty_state_listing_no_storage_is_not_said_unloadable() -> None:
    empty = lattice_of([])
    manifest = decode(firedancer_manifest(lt_hash=empty))
    manifest = decode(firedancer_manifest(bank_hash(manifest), lt_hash=empty))
    proof = prove_manifest(manifest, slot=SLOT, base_slot=0, name_hash=archive_hash_of(empty))
    assert (proof.level, proof.unloadable) == (Level.MANIFEST, None)


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize("version", [2, 3])
def test_the_alpenglow_marker_in_epoch_credits_is_read_past(version: int) -> None:
    """64 entries (the vote program's history), one of them the marker: agave's frame reads
    them by length, and so does the check."""
    credits = [*[(e, 10 * e + 10, 10 * e) for e in range(62)], MARKER, (61, 10**12, 620)]
    if version == 3:
        state = v4_firedancer(b"\x01" * 32, credits)
    else:  # V3: node, withdrawer, commission, votes, root, voters, prior voters
        state = struct.pack("<I", 2) + b"\x01" * 64 + b"\x05" + q(0) + b"\x00" + q(0)
        state += bytes(1545) + q(len(credits))
        state += b"".join(q(e) + q(c) + q(p) for e, c, p in credits) + q(0) + q(0)
    assert vote_state_problem(state) is None
    assert vote_state_problem(state[:-1]) == "its data is too small for its vote state"


def test_a_firedancer_full_is_proven_to_accounts_and_said_unloadable(tmp_path: Path) -> None:
    """Its manifest lists no storage: each is valid to its end (as Firedancer loads them), and
    agave, which takes a storage's length from that list, cannot load it."""
    name, data = build_archive(SLOT, accounts=3, layout="firedancer", listed=False)
    path = tmp_path / name
    path.write_bytes(data)
    proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof
    assert (proof.level, proof.unloadable) == (Level.ACCOUNTS, UNLISTED)
    plain = check_file(str(path)).proof  # the manifest level says it too
    assert (plain.level, plain.unloadable) == (Level.MANIFEST, UNLISTED)
    head = prove_head(io.BytesIO(data).read, name, 1 << 20)  # and so before the download
    assert (head.level, head.unloadable) == (Level.MANIFEST, UNLISTED)


def test_a_firedancer_full_with_a_changed_account_is_refused(tmp_path: Path) -> None:
    name, _ = build_archive(SLOT, accounts=3, layout="firedancer", listed=False)
    entries = snapshot_entries(
        SLOT, accounts=3, account_size=0, seed=0, layout="firedancer", listed=False
    )
    at = next(i for i, (member, _) in enumerate(entries) if member.startswith("accounts/"))
    changed = bytearray(entries[at][1] or b"")
    changed[48] ^= 0x01  # the first record's lamports
    entries[at] = (entries[at][0], bytes(changed))
    path = tmp_path / name
    path.write_bytes(compress(make_tar(entries), "zst"))
    with pytest.raises(ArchiveInvalid) as caught:
        check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000))
    assert caught.value.reason == MISMATCH


def fd_tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    """A header as ``fd_backup_tar_file_hdr``/``fd_backup_tar_dir_hdr`` write it (GNU magic,
    short mode, octal fields of width-1 digits and a NUL, no mtime)."""
    block = bytearray(512)
    block[: len(name)] = name.encode()
    mode = b"755" if directory else b"644"
    block[100 : 100 + len(mode)] = mode
    block[108:109] = block[116:117] = b"0"
    block[124:136] = f"{size:011o}".encode() + b"\0"
    block[148:156] = b" " * 8
    block[156:157] = b"5" if directory else b"0"
    block[257:265] = b"ustar  \0"
    block[148:156] = f"{sum(block):07o}".encode() + b"\0"
    return bytes(block)


def padded512(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def firedancer_zst(entries: list[tuple[str, bytes | None]]) -> bytes:
    """The ``.tar.zst`` of ``entries`` framed as fd_snapmk_tile.c and fd_snapzp_tile.c write
    it: the heads and the manifest in frames of their own; each storage a raw-block frame
    holding its 512-byte tar header, its content's frame, then a skippable frame that aligns
    the member to 4 KiB; the status cache's frame; the end-of-archive blocks' frame."""
    zstd = zstandard.ZstdCompressor(write_checksum=True)
    out = bytearray()
    head = b""
    for name, data in entries:
        if data is None:
            head += fd_tar_header(name + "/", 0, directory=True)
        elif name == "version":
            head += fd_tar_header(name, len(data)) + padded512(data)
        elif name.startswith("snapshots/") and name != "snapshots/status_cache":
            out += zstd.compress(head + fd_tar_header(name, len(data)))
            out += zstd.compress(padded512(data))
        elif name.startswith("accounts/"):
            framed = b"\x28\xb5\x2f\xfd\x60\x00\x01\x01\x10\x00" + fd_tar_header(name, len(data))
            framed += zstd.compress(padded512(data))
            pad = -len(framed) % 4096
            pad += 4096 if 0 < pad < 8 else 0
            if pad:
                framed += struct.pack("<II", 0x184D2A50, pad - 8) + bytes(pad - 8)
            out += framed
        else:  # the status cache
            out += zstd.compress(fd_tar_header(name, len(data)) + padded512(data))
    return bytes(out + zstd.compress(bytes(1024)))


def test_a_firedancer_full_framed_as_firedancer_writes_it_is_proven(tmp_path: Path) -> None:
    name, _ = build_archive(SLOT, accounts=3, layout="firedancer", listed=False)
    entries = snapshot_entries(
        SLOT, accounts=3, account_size=0, seed=0, layout="firedancer", listed=False
    )
    # the status cache as fd_txncache_encoder.c writes it: one rooted delta, the snapshot's
    # slot, holding every rooted blockhash (agave writes a delta a slot)
    status = q(1) + q(SLOT) + b"\x01" + q(2)
    for n, count in ((0x31, 3), (0x32, 0)):
        status += bytes([n]) * 32 + q(7) + q(count)
        status += b"".join(bytes([n + i]) * 20 + struct.pack("<I", 0) for i in range(count))
    entries = [(n, status if n == "snapshots/status_cache" else d) for n, d in entries]
    path = tmp_path / name
    path.write_bytes(firedancer_zst(entries))
    proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof
    assert (proof.level, proof.unloadable) == (
        Level.ACCOUNTS,
        UNLISTED,
    )


def test_storages_under_an_empty_states_manifest_that_lists_none_are_said_unloadable(
    tmp_path: Path,
) -> None:
    """The empty state's lattice hash listing no storage is said unloadable once a storage
    member comes (the manifest alone cannot tell)."""
    empty = lattice_of([])
    storage = write_storage([Account(b"\x09" * 32, 0)])  # a closed account: counts nothing
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        (f"snapshots/{SLOT}/{SLOT}", write_manifest(SLOT, empty)),
        (f"accounts/{SLOT}.0", storage),
        ("snapshots/status_cache", write_status_cache([SLOT])),
    ]
    path = tmp_path / f"snapshot-{SLOT}-{archive_hash_of(empty)}.tar.zst"
    path.write_bytes(compress(make_tar(entries), "zst"))
    proof = check_file(str(path), prove_accounts=AccountsLimits(max_accounts=1000)).proof
    assert (proof.level, proof.unloadable) == (Level.ACCOUNTS, UNLISTED)
