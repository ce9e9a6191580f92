"""The second read of an archive on disk (tracker.proof.archive.reread) for the accounts proof."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import blake3
import pytest
import zstandard
from agave_storages import ARCHIVE, expected_lt_hash, feed, storages
from archives import many_accounts_archive

from tracker.core.digests import Verified
from tracker.errors import ArchiveInvalid
from tracker.proof.accounts import accountsprover, kepthashes
from tracker.proof.accounts.accountsproof import AccountsProof
from tracker.proof.accounts.accountsprover import StoragesProver
from tracker.proof.accounts.budget import AccountsLimits, shared_limits
from tracker.proof.archive import archivecheck, binding
from tracker.proof.archive import reread as reread_module
from tracker.proof.archive.archivecheck import check_file
from tracker.proof.archive.binding import BlockDigests
from tracker.proof.archive.reread import AHEAD, STEP, ArchiveReread, accounts_prover
from tracker.proof.formats import storages as storage_format

pytestmark = pytest.mark.usefixtures("bookkeeping_both_ways")


@pytest.fixture(params=[".tar.zst", ".tar"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    ext: str = request.param
    if ext == ".tar.zst":
        return str(ARCHIVE), ext
    plain = tmp_path / "snapshot-100.tar"
    plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(ARCHIVE.read_bytes()).read())
    return str(plain), ext


@pytest.mark.one_bookkeeping
def test_members_are_read_again_from_an_offset_in_archive_order(archive: tuple[str, str]) -> None:
    reread = ArchiveReread(*archive)
    try:
        for storage in storages():
            assert b"".join(reread(storage.name, 5)) == storage.data[5:]
        # asked again (or out of order), it starts over
        first = storages()[0]
        assert b"".join(reread(first.name, 0)) == first.data
        with pytest.raises(ArchiveInvalid, match=r"no member accounts/7\.7"):
            b"".join(reread("accounts/7.7", 0))
    finally:
        reread.close()


@pytest.mark.one_bookkeeping
def test_the_second_read_stops_once_the_check_is_cancelled(
    archive: tuple[str, str], tmp_path: Path
) -> None:
    # Cancelling a check ended only its wait for memory: the second read decoded the whole
    # archive again and hashed it (minutes of every core for a mainnet full, its temp file
    # held open), and the check then said it passed.
    stop = threading.Event()
    path, ext = archive
    name = f"snapshot-100-{'A' * 44}{ext}"
    prover = accounts_prover(name, AccountsLimits(max_accounts=100), path, stop.is_set)
    assert prover is not None and prover.reread is not None
    reread = prover.reread(None)
    try:
        first, *_, last = storages()
        assert b"".join(reread(first.name, 0)) == first.data  # reading
        stop.set()
        with pytest.raises(ArchiveInvalid, match="check cancelled"):
            list(reread(last.name, 0))
    finally:
        reread.close()
        prover.close()


@pytest.mark.one_bookkeeping
def test_a_cancel_is_seen_inside_a_member_the_second_read_skips() -> None:
    # A member not asked for was skipped to its end before a cancel was looked at: one that
    # decodes to a hundred GiB held the stop for minutes (the tracker waits 10 s).
    asked = iter(range(1_000_000))
    reread = ArchiveReread("unused", ".tar", cancelled=lambda: next(asked) >= 2)
    member = io.BytesIO(bytes(64 * 1024 * 1024))
    assert not reread._skip(member, 64 * 1024 * 1024)
    assert member.tell() == 2 * reread_module.STEP


def test_the_proof_finishes_with_the_archive_read_again(archive: tuple[str, str]) -> None:
    proof = AccountsProof(AccountsLimits(max_accounts=100))
    for storage in storages():  # slot 98 first: its superseded version is read again
        feed(proof, storage, 4096)
    reread = ArchiveReread(*archive)
    try:
        assert proof.finish(reread) == (expected_lt_hash(), None)
    finally:
        reread.close()


@pytest.mark.one_bookkeeping
def test_the_second_read_reads_headers_as_the_check_does(tmp_path: Path) -> None:
    # A pax path naming accounts/2.2 (tar-rs would unpack it so, the check refuses it): the
    # second read does not take it for that member either (docs/architecture.md, "One
    # reading of the tar stream").
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("accounts/1.1")
        info.pax_headers = {"path": "accounts/2.2"}
        info.size = 11
        tar.addfile(info, io.BytesIO(b"wanted data"))
    path = tmp_path / "snapshot-9.tar"
    path.write_bytes(out.getvalue())
    reread = ArchiveReread(str(path), ".tar")
    try:
        with pytest.raises(ArchiveInvalid, match=r"at byte 0 is a pax header"):
            b"".join(reread("accounts/2.2", 7))
    finally:
        reread.close()


@pytest.mark.one_bookkeeping
def test_the_second_read_steps_by_a_storage_parsers_piece() -> None:
    # each piece a storage parser asks for is then one chunk, taken as a view, not copied
    assert STEP == storage_format.PIECE


@pytest.mark.one_bookkeeping
def test_a_file_changed_after_the_check_read_it_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ARCHIVE.name
    path.write_bytes(ARCHIVE.read_bytes())
    blocks = BlockDigests()
    blocks.update(path.read_bytes())  # what the check read
    first, size = (blocks.digests(), blocks.size, blocks.sha_blocks), blocks.size
    member = storages()[0].name
    reread = ArchiveReread(str(path), ".tar.zst", first)
    b"".join(reread(member, 0))
    reread.confirm()  # the same bytes: the rest read to the end, its digests the check's
    reread.close()
    with path.open("ab") as f:  # bytes past what the check read are not its archive's
        f.write(b"more")
    longer = ArchiveReread(str(path), ".tar.zst", first)
    b"".join(longer(member, 0))
    longer.confirm()
    longer.close()
    os.truncate(path, size - 1)  # one of them missing
    shorter = ArchiveReread(str(path), ".tar.zst", first)
    with pytest.raises(ArchiveInvalid, match="the file changed after the check read it"):
        read_and_confirm(shorter, member)
    shorter.close()
    path.write_bytes(ARCHIVE.read_bytes())
    with path.open("r+b") as f:  # the last byte rewritten before the second read
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    changed = ArchiveReread(str(path), ".tar.zst", first)
    with pytest.raises(ArchiveInvalid, match="the file changed after the check read it"):
        read_and_confirm(changed, member)  # refused as soon as its block is read
    changed.close()


@pytest.mark.one_bookkeeping
def test_a_second_read_closed_part_way_stops_its_reading_thread(tmp_path: Path) -> None:
    name, data = many_accounts_archive(900, 160_000, seed=5)
    assert len(data) > (AHEAD + 2) * STEP  # its reading thread waits for room when closed
    path = tmp_path / name
    path.write_bytes(data)
    blocks = BlockDigests()
    blocks.update(data)
    first = (blocks.digests(), blocks.size, blocks.sha_blocks)
    reread = ArchiveReread(str(path), ".tar.zst", first)
    first = min(storages_named(data))
    next(iter(reread(first, 0)))  # one piece of the first storage: the thread reads ahead
    reread.close()
    assert not [t for t in threading.enumerate() if t.name == "second-read"]
    assert not [fd for fd in os.listdir("/proc/self/fd") if _opens(fd, path)]


def storages_named(data: bytes) -> list[str]:
    """The account storages' member names of the ``.tar.zst`` archive ``data``."""
    plain = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        return [m.name for m in tar.getmembers() if m.name.startswith("accounts/")]


def written(
    tmp_path: Path, slot: int, count: int, seed: int = 0, pieces: int = 4
) -> tuple[Path, bytes]:
    """A many-account full of ``pieces`` zstd frames written under ``tmp_path``: its path and
    bytes."""
    name, data = many_accounts_archive(slot, count, seed=seed, pieces=pieces)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def _opens(fd: str, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def read_and_confirm(reread: ArchiveReread, member: str) -> None:
    b"".join(reread(member, 0))
    reread.confirm()


def told_first_read(path: Path) -> tuple[Verified, tuple[bytes, int, int]]:
    """The check of ``path`` proving accounts, and what it told the accounts prover its
    first read kept (the blocks' digests, the size, how many are prefixes' SHA-256)."""
    told: list[tuple[bytes, int, int]] = []
    real = StoragesProver.first_read

    def first_read(self: StoragesProver, digests: bytes, size: int, sha_blocks: int) -> None:
        told.append((digests, size, sha_blocks))
        real(self, digests, size, sha_blocks)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StoragesProver, "first_read", first_read)
        verified = check_file(str(path), prove_accounts=AccountsLimits())
    assert verified.proof.level.label == "accounts"
    (kept,) = told
    return verified, kept


def assert_kept(digests: bytes, data: bytes, block: int, sha_blocks: int) -> None:
    """Each ``block`` of ``data`` kept as its kind's digest: its prefix's SHA-256 for the first
    ``sha_blocks``, its own BLAKE3 after them."""
    for number in range(-(-len(data) // block)):
        kept = digests[number * 32 : (number + 1) * 32]
        if number < sha_blocks:
            assert kept == hashlib.sha256(data[: (number + 1) * block]).digest()
        else:
            assert kept == blake3.blake3(data[number * block : (number + 1) * block]).digest()


def test_the_check_binds_its_second_read_to_the_prefixes_it_read(tmp_path: Path) -> None:
    # a short second read (the storages far below BLAKE3_FROM): held by the SHA-256 of every
    # prefix the check read, copies of its running digest
    path, data = written(tmp_path, 300_000_000, 3000)
    verified, (digests, size, sha_blocks) = told_first_read(path)
    blocks = BlockDigests()
    blocks.update(data)
    assert (digests, size, sha_blocks) == (blocks.digests(), len(data), blocks.sha_blocks)
    assert sha_blocks == -(-len(data) // binding.BLOCK)  # every one a prefix
    assert digests[-32:].hex() == verified.sha256  # the last: the file's SHA-256


def test_a_long_second_read_is_held_by_each_blocks_blake3_from_the_manifests_word(
    tmp_path: Path,
) -> None:
    # the manifest's storages pass BLAKE3_FROM: from the block after it said so, the check
    # keeps each block's own BLAKE3, and the second read, held to them, passes
    path, data = written(tmp_path, 300_000_000, 6000)
    small = 16 * 1024
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", small)
        patch.setattr(archivecheck, "READ_SIZE", small)  # the reading thread a few blocks ahead
        patch.setattr(accountsprover, "BLAKE3_FROM", 0)
        # the switch at the manifest, not at the first batch the second read will need: a
        # lane behind the reading thread (one under load) sets that blocks later (CI: 36 of 40)
        patch.setattr(AccountsProof, "rereads", property(_rereads, _rereads_set_at_once), False)
        verified, (digests, size, sha_blocks) = told_first_read(path)
    count = -(-len(data) // small)
    assert size == len(data) and len(digests) == count * binding.DIGEST
    assert 0 < sha_blocks < count - 4  # switched once the manifest was read, early on
    assert_kept(digests, data, small, sha_blocks)
    assert verified.sha256 == hashlib.sha256(data).hexdigest()


def test_no_blake3_of_blocks_when_the_second_read_will_read_no_storage(tmp_path: Path) -> None:
    # every version hashed where it lay and kept (KEEP_FROM 0): no storage is read again, so
    # however large its storages the check takes no block's BLAKE3 (its prefixes' SHA-256 are
    # all it keeps, at no cost), and the proof still reaches ``accounts``
    path, data = written(tmp_path, 300_000_000, 6000)
    small = 16 * 1024
    taken: list[int] = []
    real = binding.BlockDigests._blake3

    def blake3_of(self: BlockDigests, view: memoryview) -> None:
        taken.append(len(view))
        real(self, view)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", small)
        patch.setattr(archivecheck, "READ_SIZE", small)
        patch.setattr(accountsprover, "BLAKE3_FROM", 0)
        patch.setattr(kepthashes, "KEEP_FROM", 0)
        patch.setattr(binding.BlockDigests, "_blake3", blake3_of)
        verified, (digests, size, sha_blocks) = told_first_read(path)
    assert taken == []
    assert size == len(data) and sha_blocks == -(-len(data) // small)
    assert len(digests) == sha_blocks * binding.DIGEST
    assert verified.proof.level.label == "accounts"


def _rereads(proof: AccountsProof) -> threading.Event | None:
    event: threading.Event | None = proof.__dict__.get("rereads")
    return event


def _rereads_set_at_once(proof: AccountsProof, event: threading.Event | None) -> None:
    proof.__dict__["rereads"] = event
    if event is not None:
        event.set()


def test_a_check_that_fails_after_the_switch_ends_its_blake3_thread(tmp_path: Path) -> None:
    name, data = many_accounts_archive(300_000_000, 6000)
    path = tmp_path / name
    path.write_bytes(data[: len(data) * 3 // 4])  # cut: the check fails at its end
    small = 16 * 1024
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binding, "BLOCK", small)
        patch.setattr(archivecheck, "READ_SIZE", small)
        patch.setattr(accountsprover, "BLAKE3_FROM", 0)
        started: list[str] = []
        real = binding.BlockDigests._blake3

        def blake3_of(self: BlockDigests, view: memoryview) -> None:
            started.append("switched")
            real(self, view)

        patch.setattr(binding.BlockDigests, "_blake3", blake3_of)
        # the switch at the manifest, not at the first batch the second read will need: a
        # lane behind the reading thread (one under load) would set that after the cut
        patch.setattr(AccountsProof, "rereads", property(_rereads, _rereads_set_at_once), False)
        with pytest.raises(ArchiveInvalid):
            check_file(str(path), prove_accounts=AccountsLimits())
    assert started  # it did switch before the cut
    assert not [t for t in threading.enumerate() if t.name == "archive-check-bind"]


# --- frames decoded by several threads (a proof with more than two workers) ------------------


@pytest.mark.one_bookkeeping
@pytest.mark.parametrize("pieces", [1, 7, 40])
def test_frames_decoded_by_threads_read_what_one_decoder_reads(tmp_path: Path, pieces: int) -> None:
    # frames cut anywhere in the tar (headers and records across them): every member read
    # again the same, from any offset, and the read held to the check's bytes to the end
    path, data = written(tmp_path, 700, 4000, 3, pieces)
    blocks = BlockDigests()
    blocks.update(data)
    first = (blocks.digests(), blocks.size, blocks.sha_blocks)
    serial = ArchiveReread(str(path), ".tar.zst", first)
    threads = ArchiveReread(str(path), ".tar.zst", first, decoders=3)
    try:
        for member in storages_named(data):
            for start in (0, 9):
                assert b"".join(threads(member, start)) == b"".join(serial(member, start))
        threads.confirm()
    finally:
        serial.close()
        threads.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("second-read", "zstd"))]


def test_a_proof_whose_frames_are_decoded_by_threads_gives_the_lattice_hash(
    tmp_path: Path,
) -> None:
    path, _ = written(tmp_path, 800, 3000, 4, 9)
    limits = AccountsLimits(workers=4, memory=2 * 1024**3)  # pays three frame threads
    assert limits.frame_threads == 3  # in both reads
    assert check_file(str(path), prove_accounts=limits).proof.level.label == "accounts"


@pytest.mark.one_bookkeeping
def test_a_second_read_takes_frame_threads_and_gives_them_back_when_it_closes(
    tmp_path: Path,
) -> None:
    # a following check (a download) decodes its first read as the bytes come; its second
    # read takes the frame threads the budget pays for from those the checks share
    path, _ = written(tmp_path, 810, 3000, 4, 9)
    budget, slots, frames = shared_limits(3 * 1024**3, 16)
    limits = AccountsLimits(workers=16, budget=budget, slots=slots, frames=frames)
    prover = accounts_prover(path.name, limits, str(path))
    assert prover is not None and prover.reread is not None
    reread = prover.reread(None)
    assert frames.used == 3
    reread.close()
    reread.close()
    assert frames.used == 0
    # a check of a file on disk lends its own to its second read: none taken again
    lent = accounts_prover(path.name, limits, str(path), decoders=3)
    assert lent is not None and lent.reread is not None
    lent.reread(None).close()
    assert frames.used == 0


@pytest.mark.one_bookkeeping
def test_a_file_changed_is_refused_when_its_frames_are_decoded_by_threads(
    tmp_path: Path,
) -> None:
    path, data = written(tmp_path, 900, 3000, 6, 9)
    blocks = BlockDigests()
    blocks.update(data)
    changed = bytearray(data)
    changed[-1] ^= 1  # the last byte: past every member, found by confirm
    path.write_bytes(bytes(changed))
    first = (blocks.digests(), blocks.size, blocks.sha_blocks)
    reread = ArchiveReread(str(path), ".tar.zst", first, decoders=3)
    try:
        with pytest.raises(ArchiveInvalid, match="the file changed after the check read it"):
            read_and_confirm(reread, storages_named(data)[0])
    finally:
        reread.close()


@pytest.mark.one_bookkeeping
def test_frames_decoded_by_threads_stop_when_the_second_read_closes_part_way(
    tmp_path: Path,
) -> None:
    path, data = written(tmp_path, 900, 160_000, 5, 12)
    reread = ArchiveReread(str(path), ".tar.zst", None, decoders=3)
    next(iter(reread(min(storages_named(data)), 0)))  # the decoders run ahead, then wait
    reread.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("second-read", "zstd"))]
    assert not [fd for fd in os.listdir("/proc/self/fd") if _opens(fd, path)]


def test_the_sha256_apart_binds_the_second_read_as_the_inline_one(tmp_path: Path) -> None:
    # the raw chunks' SHA-256 in a thread of its own (archivecheck.SHA_APART): it may switch
    # to the blocks' BLAKE3 at another block than the reading thread would, each block still
    # kept as the digest of its kind, and the second read, held to them, proves the accounts
    path, data = written(tmp_path, 300_000_000, 6000)
    small = 16 * 1024
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(archivecheck, "SHA_APART", True)
        patch.setattr(archivecheck, "SHA_BEHIND", 4)
        patch.setattr(binding, "BLOCK", small)
        patch.setattr(archivecheck, "READ_SIZE", small // 2)
        patch.setattr(accountsprover, "BLAKE3_FROM", 0)
        verified, (digests, size, sha_blocks) = told_first_read(path)
    count = -(-len(data) // small)
    assert size == len(data) and len(digests) == count * binding.DIGEST
    assert sha_blocks < count
    assert_kept(digests, data, small, sha_blocks)
    assert verified.sha256 == hashlib.sha256(data).hexdigest()
