"""Redirect mode's head read (docs/architecture.md, "Proven archives"): the manifest proven
from the head of an archive, at most ``manifest_read`` bytes of it, stopping once it ends."""

from __future__ import annotations

import io

import pytest
from archives import build_archive, compress, lattice_hash, make_tar, snapshot_entries
from test_manifest import ARCHIVE, NAME, NAME_HASH

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.archivecheck import READ_SIZE
from tracker.proof.archive.headproof import prove_head
from tracker.proof.formats.writing import write_manifest
from tracker.proof.levels import Level


class Counted:
    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.taken = 0

    def read(self, count: int) -> bytes:
        data = self.stream.read(count)
        self.taken += len(data)
        return data


def test_the_head_of_agave_archive_proves_it() -> None:
    proof = prove_head(io.BytesIO(ARCHIVE).read, NAME, 1 << 20)
    assert (proof.level, proof.snapshot_hash) == (Level.MANIFEST, NAME_HASH)


def test_the_read_stops_after_the_manifest() -> None:
    name, data = build_archive(5000, compression="zst", accounts=48, account_size=1 << 20)
    source = Counted(data)
    assert prove_head(source.read, name, len(data)).level == Level.MANIFEST
    # a read or two (the decoder fills a piece first): the accounts after them not
    assert source.taken <= 2 * READ_SIZE < len(data) // 3


def test_a_manifest_past_the_bound_stays_at_structure_with_its_note() -> None:
    proof = prove_head(io.BytesIO(ARCHIVE).read, NAME, 600)
    assert proof.level == Level.STRUCTURE
    assert proof.note == "its manifest does not end within the first 600 bytes (manifest_read)"


def test_a_forged_head_is_refused() -> None:
    entries = snapshot_entries(5100, accounts=1, account_size=1024, seed=0)
    forged = [
        (n, write_manifest(5100, lattice_hash(1)) if n == "snapshots/5100/5100" else d)
        for n, d in entries
    ]
    name = build_archive(5100)[0]
    with pytest.raises(ArchiveInvalid) as caught:
        prove_head(io.BytesIO(compress(make_tar(forged), "zst")).read, name, 1 << 20)
    assert caught.value.reason.startswith("manifest: name hash ")
