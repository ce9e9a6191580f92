"""A hostile source's copy that still decodes: one byte changed inside each zstd raw block
(stored, not compressed) that carries account storage bytes. Without a content checksum
(agave writes none) the stream decodes to a tar whose manifest, names and sizes are the
archive's: only a check that reads the accounts' bytes (the ``accounts`` level) or the
copy's SHA-256 against a trusted one tells it from the true archive."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import zstandard
from archives import make_tar, storage_members

from tracker.proof.formats.writing import (
    Account,
    archive_hash_of,
    lattice_of_slots,
    write_manifest,
    write_status_cache,
)

MAGIC = b"\x28\xb5\x2f\xfd"


def as_agave_writes(data: bytes) -> bytes:
    """The ``.tar.zst`` archive ``data`` compressed again as agave writes it: zstd without
    a content checksum."""
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return zstandard.ZstdCompressor(level=3, write_checksum=False).compress(tar)


def raw_blocks(data: bytes) -> list[tuple[int, int]]:
    """Each raw block of the zstd frames of ``data``: (offset of its content in ``data``,
    its length). Raises ValueError for a frame with a content checksum (a changed byte
    would fail it) or what is not zstd."""
    found: list[tuple[int, int]] = []
    at = 0
    while at < len(data):
        if data[at : at + 4] != MAGIC:
            raise ValueError(f"no zstd frame at {at}")
        descriptor = data[at + 4]
        if descriptor & 0x04:
            raise ValueError("a frame with a content checksum")
        single = bool(descriptor & 0x20)
        fcs = [1 if single else 0, 2, 4, 8][descriptor >> 6]
        dictionary = [0, 1, 2, 4][descriptor & 0x03]
        at += 5 + (0 if single else 1) + dictionary + fcs
        last = 0
        while not last:
            header = int.from_bytes(data[at : at + 3], "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            at += 3
            if kind == 0:  # raw: its bytes as they decode
                found.append((at, size))
            at += 1 if kind == 1 else size  # RLE: one byte, repeated
    return found


def flipped_in_raw_blocks(data: bytes) -> tuple[bytes, int]:
    """``data`` (a ``.tar.zst`` archive) with one byte changed in the middle of each raw
    block that lies inside an account storage's bytes, and how many were changed (at least
    one, else AssertionError)."""
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    storages = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            if member.name.startswith("accounts/") and member.isfile():
                storages.append((member.offset_data, member.offset_data + member.size))
    changed = bytearray(data)
    count = 0
    for offset, size in raw_blocks(data):
        content = data[offset : offset + size]
        decoded = tar.find(content) if size >= 4096 else -1  # random bytes: found once
        middle = decoded + size // 2
        if decoded >= 0 and any(start <= middle < end for start, end in storages):
            changed[offset + size // 2] ^= 0x01
            count += 1
    assert count, "no raw block inside an account storage"
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(changed))).read() != tar
    return bytes(changed), count


def storage_heavy_archive(directory: Path, *, base_slot: int | None = None) -> tuple[str, bytes]:
    """(name, bytes) of a real archive of slot 500 whose 16 account storages each hold one
    account of 256 KiB of random data, compressed as agave writes it: its storages' bytes
    are zstd raw blocks, and every one of them is under the lattice hash (the ``accounts``
    level reads them all). A full, or an incremental on ``base_slot``; written in
    ``directory`` too."""
    rnd = random.Random(f"storage-heavy-{base_slot}")
    state = {
        450 + i: [Account((i + 1).to_bytes(4, "big") * 8, 1_000_000 + i, rnd.randbytes(256 * 1024))]
        for i in range(16)
    }
    lt_hash = lattice_of_slots(state)
    storages, members = storage_members(state)
    entries: list[tuple[str, bytes | None]] = [
        ("version", b"1.2.0"),
        ("snapshots/500/500", write_manifest(500, lt_hash, storages)),
        ("snapshots/status_cache", write_status_cache([500])),
        *members,
    ]
    hash_ = archive_hash_of(lt_hash)
    name = f"snapshot-500-{hash_}.tar.zst"
    if base_slot is not None:
        name = f"incremental-snapshot-{base_slot}-500-{hash_}.tar.zst"
    data = zstandard.ZstdCompressor(level=3, write_checksum=False).compress(make_tar(entries))
    (directory / name).write_bytes(data)
    return name, data
