"""The archive check (tracker.proof.archive.archivecheck) on real archives of every compression.

Good archives pass with the SHA-256 hashlib computes; every bad variant of tests/archives.py
fails with its reason; truncation anywhere fails (the decompressors themselves stay silent
about it: the check looks at their end state); decompression bombs stay in bounded memory;
the following check reads a file written in pieces by a trio task. No network here.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import io
import lzma
import os
import re
import resource
import sys
import tarfile
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
import trio
import zstandard
from archives import (
    COMPRESSIONS,
    EXPECTED_REASONS,
    MISSING_STATUS_CACHE,
    archive_name,
    bad_variants,
    build_archive,
    compress,
    make_tar,
    many_accounts_archive,
    snapshot_entries,
)

import tracker.proof.archive.archivecheck as archivecheck
from tracker.cli import main
from tracker.errors import ArchiveInvalid, CopyCutShort
from tracker.proof.accounts.budget import (
    AccountsLimits,
    FrameThreads,
    decodes_ahead,
    paid_within,
    shared_limits,
)
from tracker.proof.archive.archivecheck import (
    FollowingCheck,
    GrowingFile,
    check_file,
    check_stream,
)
from tracker.proof.archive.decoders import decode_zstd
from tracker.proof.archive.tarwalk import Header, UnboundExtent, read_header
from tracker.proof.formats.writing import write_status_cache

SLOT = 123_456
VARIANTS = tuple(EXPECTED_REASONS)
LABELS = {"zst": "zstd", "lz4": "lz4", "bz2": "bz2", "gz": "gzip", "xz": "xz", "tar": "tar"}


def check_bytes(data: bytes, name: str, *, prefetch: bool = True) -> str:
    """The SHA-256 the check returns (what it proved: tests/unit/test_manifest*.py)."""
    return check_stream(io.BytesIO(data).read, name, prefetch=prefetch).sha256


def reason_of(data: bytes, name: str) -> str:
    with pytest.raises(ArchiveInvalid) as caught:
        check_bytes(data, name)
    assert str(caught.value) == caught.value.reason
    assert "\n" not in caught.value.reason
    return caught.value.reason


# --- good archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("base_slot", [None, 100_000])
@pytest.mark.parametrize("prefetch", [True, False])
def test_good_archives_pass_with_their_sha256(
    compression: str, base_slot: int | None, prefetch: bool
) -> None:
    name, good = build_archive(SLOT, base_slot=base_slot, compression=compression)
    assert check_bytes(good, name, prefetch=prefetch) == hashlib.sha256(good).hexdigest()


@pytest.mark.parametrize("compression", ["zst", "xz"])
def test_several_frames_or_streams_pass(compression: str) -> None:
    # agave writes a zstd frame every 32 MiB (its reader reads them all); xz streams may be
    # concatenated too.
    name = archive_name(SLOT, compression=compression)
    tar = make_tar(snapshot_entries(SLOT, accounts=3, account_size=64 * 1024, seed=0))
    data = compress(tar, compression, pieces=5)
    assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("compression", "unit"), [("gz", "gzip member"), ("bz2", "bz2 stream")])
def test_a_tar_split_across_gzip_members_or_bz2_streams_is_refused(
    compression: str, unit: str
) -> None:
    """agave read a ``.tar.gz`` with flate2's ``GzDecoder`` and a ``.tar.bz2`` with the
    bzip2 crate's ``BzDecoder``, which end at the end of the first unit: a tar split across
    two (pbzip2's output, gzip files joined by ``cat``) ends mid-archive for agave, and the
    check passed it."""
    name = archive_name(SLOT, compression=compression)
    tar = make_tar(snapshot_entries(SLOT, accounts=3, account_size=64 * 1024, seed=0))
    data = compress(tar, compression, pieces=2)
    first = len(compress(tar[: -(-len(tar) // 2)], compression))
    assert reason_of(data, name) == (
        f"trailing bytes after the compressed stream at byte {first} (agave reads the first"
        f" {unit} only)"
    )


SKIPPABLE_LZ4 = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"


@pytest.mark.parametrize("shape", ["two frames", "an empty frame first", "a skippable frame"])
def test_an_lz4_archive_is_one_frame_as_agave_reads_it(shape: str) -> None:
    """agave reads a ``.tar.lz4`` with lz4-rs's ``Decoder``, which ends at the end of the
    first frame: what follows it, a second frame of the tar or a whole archive after an
    empty or skippable frame, agave never reads (it unpacked nothing, or no storages, of
    archives the check passed)."""
    name = archive_name(SLOT, compression="lz4")
    tar = make_tar(snapshot_entries(SLOT, accounts=3, account_size=64 * 1024, seed=0))
    whole = compress(tar, "lz4")
    data, at = {
        "two frames": (compress(tar, "lz4", pieces=2), None),
        "an empty frame first": (compress(b"", "lz4") + whole, len(compress(b"", "lz4"))),
        "a skippable frame": (SKIPPABLE_LZ4 + whole, 0),
    }[shape]
    reason = reason_of(data, name)
    if at == 0:
        assert reason == "lz4: not a lz4 stream"
    else:
        assert reason.startswith("trailing bytes after the compressed stream at byte ")
        assert reason.endswith("(agave reads the first lz4 frame only)")
        assert at is None or f"at byte {at} " in reason


def test_zstd_skippable_frames_pass() -> None:
    name, good = build_archive(SLOT)
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    data = skippable + good + skippable
    assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()


def _decoded(data: bytes, cuts: list[int], by_frame: bool) -> tuple[str, bytes, list[object]]:
    """``data`` handed to :func:`decode_zstd` in pieces cut at ``cuts``: its reason ("" when
    it passed), what it decoded, and (``by_frame``: one reader a frame) where it said each
    frame's output begins, as ``(decoded, raw)``."""
    bounds = zip([0, *cuts], [*cuts, len(data)], strict=True)
    pieces = iter([data[a:b] for a, b in bounds if a < b])
    out, told = bytearray(), list[object]()
    starts = (lambda decoded, raw: told.append((decoded, raw))) if by_frame else None
    try:
        decode_zstd(lambda: next(pieces, b""), out.extend, starts=starts)
    except ArchiveInvalid as exc:
        return exc.reason, b"", []
    return "", bytes(out), told


def _skippable(size: int) -> bytes:
    return (0x184D2A5F).to_bytes(4, "little") + size.to_bytes(4, "little") + bytes(size)


@pytest.mark.parametrize(
    "shape",
    ["skippable", "empty frames", "no content size", "cut", "trailing", "short trailing"],
)
def test_the_zstd_decoder_frame_by_frame_reads_every_stream_as_the_serial_one(
    shape: str,
) -> None:
    """The refresh check's zstd decoder (one reader a frame, for the bytes no level binds:
    docs/architecture.md, "Bytes no level binds") passes, decodes and refuses every stream
    as the serial one does, with the same reason, and tells where each frame's output
    begins, however the stream is cut into reads (at every byte)."""
    sized = zstandard.ZstdCompressor(write_checksum=True)
    unsized = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False)
    one, two = b"members " * 40, b"statuses" * 30
    # each part: its raw bytes and what it decodes to
    parts = {
        "skippable": [
            (_skippable(3), b""),
            (sized.compress(one), one),
            (_skippable(0), b""),
            (unsized.compress(two), two),
            (_skippable(2), b""),
        ],
        "empty frames": [
            (sized.compress(b""), b""),
            (sized.compress(one), one),
            (unsized.compress(b""), b""),
            (unsized.compress(two), two),
        ],
        "no content size": [(unsized.compress(two), two), (unsized.compress(one), one)],
        "cut": [(sized.compress(one) + unsized.compress(two)[:-5], b"")],
        "trailing": [(sized.compress(one) + unsized.compress(two) + b"garbage!", b"")],
        "short trailing": [(sized.compress(one) + b"\x28\xb5", b"")],
    }[shape]
    data = b"".join(raw for raw, _ in parts)
    frames, decoded, at = [], 0, 0
    for raw, out in parts:
        if out:
            frames.append((decoded, at))
        decoded, at = decoded + len(out), at + len(raw)
    reason, whole, _ = _decoded(data, [], by_frame=False)
    assert bool(reason) == (shape in ("cut", "trailing", "short trailing"))
    told = [] if reason else frames
    for cuts in [[], list(range(1, len(data))), *([at] for at in range(1, len(data)))]:
        assert _decoded(data, cuts, by_frame=True) == (reason, whole, told), cuts
        assert _decoded(data, cuts, by_frame=False) == (reason, whole, []), cuts


def test_zstd_frames_without_checksums_pass() -> None:
    name = archive_name(SLOT)
    tar = make_tar(snapshot_entries(SLOT, accounts=2, account_size=8192, seed=0))
    data = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(tar)
    assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()


# --- the bytes no level binds (docs/architecture.md, "A refresh from several sources") ---------


@pytest.mark.parametrize(
    ("members", "end"),
    [
        # agave's order: what comes before the first storage is decoded by then
        (["version", "snapshots", "snapshots/9/9", "snapshots/status_cache", "accounts/9.0"], 40),
        (["version", "accounts/9.0", "accounts/8.1"], 10),
        # Firedancer's status cache after the storages: to the end
        (["version", "snapshots/9/9", "accounts/9.0", "snapshots/status_cache"], 99),
        (["accounts/9.0", "accounts/8.1"], 0),
        # the directory of the storages is no storage, a name like one is
        (["version", "accounts", "accounts/9.0"], 20),
        (["accounts/9.0", "accounts/9.0x"], 99),
    ],
)
def test_the_extent_of_the_members_no_level_binds(members: list[str], end: int) -> None:
    extent = UnboundExtent()
    for n, name in enumerate(members):
        # the raw bytes the decoder had taken by each header; each member 1,000 tar bytes
        extent.header(name, 10 * n, 1000 * n, 1000 * (n + 1))
    extent.ended(99)
    assert extent.end == end


FIREDANCER = ["version", "snapshots/9/9", "accounts/9.0", "accounts/9.1", "snapshots/status_cache"]


@pytest.mark.parametrize(
    ("members", "frames", "ranges"),
    [
        # agave's order: the head alone, whatever the frames
        (
            ["version", "snapshots/9/9", "snapshots/status_cache", "accounts/9.0"],
            [(0, 0), (1500, 15), (3500, 35)],
            [(0, 30)],
        ),
        # Firedancer's status cache last (its header at tar byte 4000): the head, and the
        # frame its header begins in to the end
        (FIREDANCER, [(0, 0), (1500, 15), (3200, 32)], [(0, 20), (32, 99)]),
        (FIREDANCER, [(0, 0), (1500, 15), (4000, 40)], [(0, 20), (40, 99)]),
        # a frame that begins inside the header (its first bytes are the frame's before)
        (FIREDANCER, [(0, 0), (3200, 32), (4100, 41)], [(0, 20), (32, 99)]),
        # frames past it, told before the header came (a decoder ahead of the walk)
        (FIREDANCER, [(0, 0), (3900, 39), (4400, 44), (4600, 46)], [(0, 20), (39, 99)]),
        # one frame (or no frame told: another compression, frames decoded apart): all of it
        (FIREDANCER, [(0, 0)], [(0, 99)]),
        (FIREDANCER, [], [(0, 99)]),
        # the tail's frame starts before the head's end: one range
        (FIREDANCER, [(0, 0), (1500, 5)], [(0, 99)]),
        # a member no level binds between storages: from its frame on
        (
            ["version", "accounts/9.0", "snapshots/status_cache", "accounts/9.1"],
            [(0, 0), (1500, 15), (2100, 21)],
            [(0, 10), (15, 99)],
        ),
    ],
)
def test_the_extent_s_tail_starts_at_the_frame_of_the_first_member_after_the_storages(
    members: list[str], frames: list[tuple[int, int]], ranges: list[tuple[int, int]]
) -> None:
    extent = UnboundExtent()
    told = iter(frames)
    pending = next(told, None)
    for n, name in enumerate(members):
        # every frame whose output the header's 512 bytes need is told before it completes
        while pending is not None and pending[0] < 1000 * n + 512:
            extent.frame(*pending)
            pending = next(told, None)
        extent.header(name, 10 * n, 1000 * n, 1000 * (n + 1))
    while pending is not None:
        extent.frame(*pending)
        pending = next(told, None)
    extent.ended(99)
    assert extent.ranges == ranges


@pytest.mark.parametrize("last", [False, True], ids=["agave", "status_cache_last"])
def test_the_check_finds_the_extent_of_the_members_no_level_binds(last: bool) -> None:
    """agave writes them before the storages: the check's first raw chunk decodes them all;
    a status cache after the storages (as Firedancer writes it) takes all of the archive."""
    entries = snapshot_entries(SLOT, accounts=8, account_size=1 << 20, seed=0)
    if last:
        entries.sort(key=lambda entry: entry[0] == "snapshots/status_cache")
    data = compress(make_tar(entries), "zst")
    assert len(data) > 2 * archivecheck.READ_SIZE
    extent = UnboundExtent()
    check_stream(io.BytesIO(data).read, archive_name(SLOT), unbound=extent)
    assert extent.end == (len(data) if last else archivecheck.READ_SIZE)


def _status_cache_last(compression: str, pieces: int) -> tuple[bytes, bytes]:
    """(tar, archive) of a full whose status cache comes after its storages, as Firedancer
    writes it, about 10 MiB of tar."""
    entries = snapshot_entries(SLOT, accounts=10, account_size=1 << 20, seed=0)
    entries.sort(key=lambda entry: entry[0] == "snapshots/status_cache")
    tar = make_tar(entries)
    return tar, compress(tar, compression, pieces=pieces)


@pytest.mark.parametrize("ahead", [False, True], ids=["serial", "decoded_ahead"])
def test_the_status_cache_last_in_many_zstd_frames_takes_its_frame_to_the_end(
    ahead: bool,
) -> None:
    """Firedancer's layout in zstd frames: the head, and the tail from the start of the frame
    in which the status cache's header begins (frames decode apart) to the end; not the
    whole archive."""
    tar, data = _status_cache_last("zst", 20)
    extent = UnboundExtent()
    check_stream(io.BytesIO(data).read, archive_name(SLOT), unbound=extent, decode_ahead=ahead)
    [head, (tail, end)] = extent.ranges
    assert head == (0, archivecheck.READ_SIZE) and end == len(data)
    assert data[tail : tail + 4] == (0xFD2FB528).to_bytes(4, "little")  # a frame's start
    reader = zstandard.ZstdDecompressor().stream_reader(data[tail:], read_across_frames=True)
    decoded = reader.read()
    header = tar.index(b"snapshots/status_cache\0")
    assert tar.endswith(decoded) and len(tar) - len(decoded) <= header  # its header in it
    # a frame after it (none here: the status cache is in the last) starts past the
    # header's first byte: the tail starts at the latest frame it can
    later = data.find((0xFD2FB528).to_bytes(4, "little"), tail + 1)
    if later > 0:
        rest = zstandard.ZstdDecompressor().stream_reader(data[later:], read_across_frames=True)
        assert len(tar) - len(rest.read()) > header
    assert end - tail < len(data) // 10


@pytest.mark.parametrize(
    ("compression", "pieces", "decoders"),
    [("zst", 1, 1), ("zst", 20, 2), ("lz4", 1, 1), ("gz", 1, 1), ("xz", 3, 1), ("tar", 1, 1)],
)
def test_the_status_cache_last_otherwise_takes_the_whole_archive(
    compression: str, pieces: int, decoders: int
) -> None:
    """One zstd frame, zstd frames decoded apart (which tell no frame's output), another
    compression (its decoder's state runs through the stream): the whole archive, as the
    only start its tail's decoding does not depend on bytes before."""
    _tar, data = _status_cache_last(compression, pieces)
    extent = UnboundExtent()
    name = archive_name(SLOT, compression=compression)
    check_stream(io.BytesIO(data).read, name, unbound=extent, decoders=decoders)
    assert extent.ranges == [(0, len(data))]


def test_agave_s_layout_in_many_zstd_frames_takes_the_head_alone() -> None:
    entries = snapshot_entries(SLOT, accounts=8, account_size=1 << 20, seed=0)
    data = compress(make_tar(entries), "zst", pieces=20)
    extent = UnboundExtent()
    check_stream(io.BytesIO(data).read, archive_name(SLOT), unbound=extent, decode_ahead=True)
    assert extent.ranges == [(0, archivecheck.READ_SIZE)]


@pytest.mark.parametrize(
    ("compression", "pieces"), [("zst", 1), ("zst", 3), ("lz4", 1), ("gz", 1), ("xz", 3)]
)
def test_a_big_archive_in_many_chunks(compression: str, pieces: int) -> None:
    # More than one read and one decompressed piece (4 MiB each), headers across chunks,
    # units that end in the middle of a read and of an output step.
    name = archive_name(SLOT, compression=compression)
    entries = snapshot_entries(SLOT, accounts=16, account_size=1024 * 1024 + 7, seed=0)
    data = compress(make_tar(entries), compression, pieces=pieces)
    assert len(data) > archivecheck.READ_SIZE
    assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()


# --- bad archives -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_variants_fail_with_their_reason(compression: str, variant: str) -> None:
    name, good = build_archive(SLOT, compression=compression)
    bad = bad_variants(name, good)[variant]
    assert len(bad) == len(good)
    reason = reason_of(bad, name)
    assert re.match(EXPECTED_REASONS[variant][compression], reason), reason


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_anywhere_fails(compression: str) -> None:
    # The decompressors say nothing when their input stops: bz2, zlib, lzma and lz4 end with
    # eof false, zstandard's stream_reader returns b"". Cut at 60 places, the last bytes too.
    name, good = build_archive(SLOT, compression=compression, account_size=16 * 1024)
    # (A plain tar may lose zeros after its two end blocks and stay whole.)
    size = tar_end(good) + 1024 if compression == "tar" else len(good)
    cuts = {size * i // 50 for i in range(1, 50)} | {size - k for k in range(1, 11)}
    for cut in sorted(cuts):
        with pytest.raises(ArchiveInvalid):
            check_bytes(good[:cut], name)


UNITS = {"zst": "frame", "lz4": "frame", "bz2": "stream", "gz": "member", "xz": "stream"}


@pytest.mark.parametrize(
    ("compression", "pieces"),
    [(c, p) for c in COMPRESSIONS[:-1] for p in (1, 2) if p == 1 or c in ("zst", "xz")],
)
def test_a_cut_in_the_last_bytes_is_a_truncated_stream(compression: str, pieces: int) -> None:
    # The tar inside is whole (the cut takes a trailer or checksum byte): only the decoder's
    # end state tells, and with two units the first one has ended well.
    name = archive_name(SLOT, compression=compression)
    tar = make_tar(snapshot_entries(SLOT, accounts=2, account_size=8192, seed=0))
    data = compress(tar, compression, pieces=pieces)
    last = len(data) - len(compress(tar[len(tar) - len(tar) // pieces :], compression))
    if pieces == 1:
        last = 0
    assert reason_of(data[:-1], name) == (
        f"{LABELS[compression]}: stream truncated at byte {len(data) - 1} "
        f"(inside the {UNITS[compression]} at byte {last})"
    )


@pytest.mark.parametrize("compression", COMPRESSIONS[:-1])
@pytest.mark.parametrize("extra", [b"\0", bytes(4), bytes(4096), b"x", b"\x28\xb5\x2f"])
def test_bytes_after_the_compressed_stream_fail(compression: str, extra: bytes) -> None:
    name, good = build_archive(SLOT, compression=compression)
    first = {"lz4": "lz4 frame", "gz": "gzip member", "bz2": "bz2 stream"}.get(compression)
    why = f" (agave reads the first {first} only)" if first else ""
    assert reason_of(good + extra, name) == (
        f"trailing bytes after the compressed stream at byte {len(good)}{why}"
    )


@pytest.mark.parametrize("compression", ["zst", "xz"])
def test_the_start_of_another_unit_is_a_truncated_one(compression: str) -> None:
    name, good = build_archive(SLOT, compression=compression)
    start = compress(bytes(1000), compression)[:12]  # zeros: nothing for the tar walk to see
    assert reason_of(good + start, name) == (
        f"{LABELS[compression]}: stream truncated at byte {len(good) + 12} "
        f"(inside the {UNITS[compression]} at byte {len(good)})"
    )


def test_zeros_after_a_plain_tar_are_blocks_of_its_end() -> None:
    name, good = build_archive(SLOT, compression="tar")
    data = good + bytes(10240)
    assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()


def test_empty_and_tiny_files_fail() -> None:
    name = archive_name(SLOT)
    assert reason_of(b"", name) == "empty file"
    assert reason_of(b"\x28\xb5", name).startswith("zstd: stream truncated at byte 2")
    assert reason_of(b"BZ", archive_name(SLOT, compression="bz2")) == "bz2: not a bz2 stream"
    assert reason_of(b"hello", archive_name(SLOT, compression="gz")) == "gzip: not a gzip stream"
    assert reason_of(b"x", archive_name(SLOT, compression="tar")).startswith(
        "tar: the stream ends inside a header at byte 1"
    )


def test_a_name_that_is_no_archive_name_fails() -> None:
    _, good = build_archive(SLOT)
    assert reason_of(good, "snapshot.tar.zst") == "not a snapshot archive name: 'snapshot.tar.zst'"


def test_the_slot_comes_from_the_name() -> None:
    _, good = build_archive(SLOT)
    other = archive_name(SLOT + 1)
    assert reason_of(good, other) == (
        f"tar: 'snapshots/{SLOT}' at byte 1536 is of slot {SLOT}, not the slot {SLOT + 1} the "
        "archive's name says"
    )


def test_an_incremental_needs_its_own_slot_not_its_base() -> None:
    _, good = build_archive(SLOT, base_slot=100_000)
    renamed = archive_name(200_000, base_slot=SLOT)
    assert reason_of(good, renamed) == (
        f"tar: 'snapshots/{SLOT}' at byte 1536 is of slot {SLOT}, not the slot 200000 the "
        "archive's name says"
    )


def test_every_missing_entry_is_named() -> None:
    name = archive_name(SLOT)
    tar = make_tar([("accounts", None)])
    assert reason_of(compress(tar, "zst"), name) == (
        f"tar: missing version, snapshots/status_cache, snapshots/{SLOT}/{SLOT}"
    )


def test_entries_must_be_regular_files() -> None:
    name = archive_name(SLOT)
    entries = snapshot_entries(SLOT, accounts=1, account_size=1024, seed=0)
    entries = [("version", None) if n == "version" else (n, d) for n, d in entries]
    assert reason_of(compress(make_tar(entries), "zst"), name) == (
        "tar: directory 'version' at byte 0 is not an entry agave writes in this archive"
    )


@pytest.mark.parametrize(
    "odd",
    [
        "snapshots/./status_cache",
        "snapshots//status_cache",
        "./version",
        "/version",
        "version/",
        "snapshots/../version",
        f"accounts/0{SLOT}.0",
        f"accounts/{SLOT}.00",
        f"accounts/{SLOT}.1.2",
        "accounts/" + "9" * 21 + ".1",
        "notes.txt",
    ],
)
def test_a_name_agave_does_not_write_is_refused(odd: str) -> None:
    # Names are compared as agave's writer writes them, not normalised: a name two readers
    # could read two ways is refused (docs/architecture.md, "One reading of the tar stream").
    name = archive_name(SLOT)
    entries = snapshot_entries(SLOT, accounts=1, account_size=1024, seed=0)
    tar = make_tar([*entries, (odd, b"x" * 10)])
    at = _member_offsets(tar)[odd]
    assert reason_of(compress(tar, "zst"), name) == (
        f"tar: file {odd!r} at byte {at} is not an entry agave writes in this archive"
    )


def _member_offsets(tar: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {m.name + ("/" if m.isdir() else ""): m.offset for m in archive.getmembers()}


@pytest.mark.parametrize(
    "twice", ["version", "snapshots/status_cache", f"snapshots/{SLOT}/{SLOT}", f"accounts/{SLOT}.0"]
)
def test_a_member_twice_is_refused(twice: str) -> None:
    # A disk unpacker keeps the last of two; the proof would have counted both.
    name = archive_name(SLOT)
    entries = snapshot_entries(SLOT, accounts=1, account_size=1024, seed=0)
    tar = make_tar([*entries, (twice, dict(entries)[twice])])
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        at = archive.getmembers()[-1].offset
    assert reason_of(compress(tar, "zst"), name) == (
        f"tar: {twice!r} twice in the archive (again at byte {at})"
    )


def test_the_manifest_after_the_storages_is_refused_as_such() -> None:
    name = archive_name(SLOT)
    entries = snapshot_entries(SLOT, accounts=2, account_size=1024, seed=0)
    manifest = f"snapshots/{SLOT}/{SLOT}"
    moved = [e for e in entries if e[0] != manifest] + [e for e in entries if e[0] == manifest]
    tar = make_tar(moved)
    at = _member_offsets(tar)[f"accounts/{SLOT}.0"]
    assert reason_of(compress(tar, "zst"), name) == (
        f"tar: manifest after the account storages ('accounts/{SLOT}.0' at byte {at} comes "
        f"before {manifest})"
    )


def tar_end(tar: bytes) -> int:
    """Where the end-of-archive blocks of a plain tar start."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        last = archive.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


def _block(info: tarfile.TarInfo, edit: Callable[[bytearray], None] | None = None) -> bytes:
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    if edit is not None:
        edit(block)
        block[148:156] = b" " * 8
        block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def test_data_after_the_end_blocks_fails() -> None:
    name, good = build_archive(SLOT, compression="tar")
    tar = bytearray(good)
    tar[-100] = 1
    assert reason_of(bytes(tar), name) == (
        f"tar: data after the end-of-archive blocks at byte {len(good) - 100}"
    )


def test_a_single_end_block_is_not_the_end() -> None:
    name, good = build_archive(SLOT, compression="tar")
    end = tar_end(good)
    assert reason_of(good[: end + 512], name) == (
        f"tar: the stream ends inside the end-of-archive blocks at byte {end + 512}"
    )
    assert reason_of(good[:end] + bytes(512) + b"\1" + bytes(511), name) == (
        f"tar: data after the end-of-archive block at byte {end + 512}"
    )


def test_a_truncated_member_is_named() -> None:
    name, good = build_archive(SLOT, compression="tar")
    cut = good.index(f"accounts/{SLOT - 1}.1".encode()) + 1000
    assert reason_of(good[:cut], name) == (
        f"tar: the stream ends inside 'accounts/{SLOT - 1}.1' at byte {cut}"
    )


def test_header_fields() -> None:
    info = tarfile.TarInfo("a/b")
    info.size = 12345
    block = info.tobuf(tarfile.GNU_FORMAT)
    assert read_header(block, 0) == Header("a/b", 12345, directory=False)
    huge = bytearray(block)
    huge[124:136] = b"\x80" + (9 << 30).to_bytes(11, "big")  # base-256: 9 GiB
    huge[148:156] = b" " * 8
    huge[148:155] = b"%06o\0" % sum(huge)
    assert read_header(bytes(huge), 0).size == 9 << 30
    directory = tarfile.TarInfo("accounts")
    directory.type = tarfile.DIRTYPE
    assert read_header(directory.tobuf(tarfile.USTAR_FORMAT), 0) == Header("accounts", 0, True)
    with pytest.raises(ArchiveInvalid, match="bad header checksum at byte 512"):
        read_header(block[:10] + b"X" + block[11:], 512)


# --- bounded memory -------------------------------------------------------------------------------

_ZEROS = bytes(16 << 20)


def _bomb(compression: str, size: int) -> bytes:
    """A tar header of a status cache of ``size`` bytes: a valid start (all that is read of
    it), then zeros to ``size``, compressed in a stream (never all in memory): zeros that are
    member data, read to the end or to the expansion limit."""
    info = tarfile.TarInfo("snapshots/status_cache")
    info.size = size
    start = write_status_cache([SLOT])
    chunks = [
        info.tobuf(format=tarfile.GNU_FORMAT) + start,
        *[_ZEROS] * (size // len(_ZEROS) - 1),
        _ZEROS[len(start) :],
    ]
    if compression == "zst":
        z = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join([*(z.compress(c) for c in chunks), z.flush()])
    if compression == "lz4":
        lz = lz4.frame.LZ4FrameCompressor()
        return b"".join([lz.begin(), *(lz.compress(c) for c in chunks), lz.flush()])
    compressor = {
        "gz": lambda: zlib.compressobj(1, wbits=31),
        "bz2": lambda: bz2.BZ2Compressor(1),
        "xz": lambda: lzma.LZMACompressor(preset=0),
    }[compression]()
    return b"".join([*(compressor.compress(c) for c in chunks), compressor.flush()])


@pytest.mark.parametrize(
    ("compression", "size"),
    [("zst", 1 << 30), ("lz4", 1 << 30), ("gz", 1 << 30), ("bz2", 128 << 20), ("xz", 256 << 20)],
)
def test_a_decompression_bomb_stays_in_bounded_memory(compression: str, size: int) -> None:
    bomb = _bomb(compression, size)
    assert len(bomb) < size // 200
    name = archive_name(SLOT, compression=compression)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        # Member data to the end of the stream, or to the expansion limit.
        reason = reason_of(bomb, name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert re.match(r"the archive expands more than 64 times|tar: no end-of-archive blocks", reason)
    assert peak < 48 << 20, peak
    assert rss_growth < 256 << 20, rss_growth


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def test_a_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    # A window of 2 GiB (descriptor: exponent 21 + 10) would be allocated before any output.
    last_raw_block = (1 | 0 << 1 | 1000 << 3).to_bytes(3, "little") + b"x" * 1000
    data = ZSTD_MAGIC + b"\x00" + bytes([21 << 3]) + last_raw_block
    assert reason_of(data, archive_name(SLOT)) == (
        "zstd: frame requires too much memory for decoding in the frame at byte 0"
    )


def test_zero_filled_zstd_blocks_end_fast() -> None:
    # Three zero bytes are an empty raw block: a hole of zeros inside a frame is refused
    # after a few of them instead of costing a Python step per three bytes.
    header = ZSTD_MAGIC + b"\x00" + bytes([10 << 3])  # no content size, 1 MiB window
    data = header + bytes(64 << 20)
    assert reason_of(data, archive_name(SLOT)) == (
        f"zstd: a run of empty blocks at byte {len(header) + 3 * 64} (zero-filled data?)"
    )


def one_frame_of_raw_blocks(data: bytes, size: int) -> bytes:
    """``data`` as one zstd frame (8 KiB window) of raw blocks of ``size`` bytes."""
    out = bytearray(ZSTD_MAGIC + b"\x00" + bytes([3 << 3]))
    for at in range(0, len(data), size):
        piece = data[at : at + size]
        last = at + size >= len(data)
        out += (int(last) | len(piece) << 3).to_bytes(3, "little") + piece
    return bytes(out)


@pytest.mark.parametrize("decoders", [1, 2])
def test_a_frame_of_tiny_blocks_is_refused_early(decoders: int) -> None:
    # A valid archive in blocks of one byte: a Python step of the framing walk per four bytes
    # (7.6 s for 3 MB of tar) is refused past one block per 512 bytes (beyond 8,192)...
    name = archive_name(SLOT)
    tar = make_tar(snapshot_entries(SLOT, accounts=3, account_size=64 * 1024, seed=0))
    data = one_frame_of_raw_blocks(tar, 1)
    assert zstandard.ZstdDecompressor().stream_reader(data).read() == tar  # valid zstd
    with pytest.raises(ArchiveInvalid) as caught:
        check_stream(io.BytesIO(data).read, name, decoders=decoders)
    found = re.fullmatch(
        r"zstd: more than (\d+) small blocks before byte (\d+) \(at most one per 512 bytes "
        r"past the first 8192\)",
        caught.value.reason,
    )
    assert found is not None, caught.value.reason
    blocks, at = int(found[1]), int(found[2])
    assert blocks == 8192 + at // 512 and at < 64 * 1024  # at the bound, not at the end
    # ... while the same tar in blocks of 2 KiB (as small as blocks get within the ratio
    # bound) passes.
    assert check_bytes(one_frame_of_raw_blocks(tar, 2048), name)


# --- files ---------------------------------------------------------------------------------------


def open_descriptors(path: Path) -> int:
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor of the listing itself
            count += os.readlink(f"/proc/self/fd/{entry}") == str(path)
    return count


def test_check_file(tmp_path: Path) -> None:
    name, good = build_archive(SLOT, compression="lz4")
    path = tmp_path / name
    path.write_bytes(good)
    assert check_file(str(path)).sha256 == hashlib.sha256(good).hexdigest()
    other = tmp_path / "download.part"
    other.write_bytes(good)
    assert check_file(str(other), name).sha256 == hashlib.sha256(good).hexdigest()
    with pytest.raises(ArchiveInvalid, match="not a snapshot archive name"):
        check_file(str(other))
    with pytest.raises(FileNotFoundError):
        check_file(str(tmp_path / "missing.tar.zst"))
    assert open_descriptors(path) == open_descriptors(other) == 0


def test_a_failed_check_returns_only_once_its_reading_thread_has_ended() -> None:
    # A check that fails early calls unblock() and waits for the read in flight, so that the
    # caller can close the file: a read must never run on a descriptor closed under it.
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    bad = bad_variants(name, good)["not_tar"]
    release, returned, calls = threading.Event(), threading.Event(), []

    def read(size: int) -> bytes:
        calls.append(size)
        if len(calls) == 1:
            return bad[:size]
        release.wait(10)  # the next read waits, as on a file still being written
        returned.set()
        return b""

    def unblock() -> None:
        threading.Timer(0.1, release.set).start()  # the read ends a little later

    with pytest.raises(ArchiveInvalid, match="bad header checksum"):
        check_stream(read, name, unblock=unblock)
    assert returned.is_set()


def _reader_thread(
    growing: GrowingFile, size: int
) -> tuple[threading.Thread, list[bytes | BaseException]]:
    results: list[bytes | BaseException] = []

    def run() -> None:
        try:
            results.append(growing.read(size))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def test_growing_file_reads_what_is_written(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    with open(path, "wb") as f:
        growing = GrowingFile(f.fileno())
        assert open_descriptors(path) == 2
        thread, results = _reader_thread(growing, 100)
        thread.join(0.05)
        assert thread.is_alive() and not results  # nothing written yet: it waits
        f.write(b"abcdef")
        f.flush()
        growing.advance(4)
        thread.join(5)
        assert results == [b"abcd"]  # never past what advance() said
        growing.finish(6)
        assert growing.read(100) == b"ef"
        assert growing.read(100) == b""
        assert growing.closed and open_descriptors(path) == 1  # its own duplicate only


def test_growing_file_cancel_unblocks_a_read(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    with open(path, "wb") as f:
        growing = GrowingFile(f.fileno())
        thread, results = _reader_thread(growing, 100)
        thread.join(0.05)
        assert thread.is_alive()
        growing.cancel()
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(results[0], ArchiveInvalid) and str(results[0]) == "check cancelled"
        assert growing.closed and open_descriptors(path) == 1
        with pytest.raises(ArchiveInvalid, match="check cancelled"):
            growing.read(10)


def test_growing_file_never_closes_under_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 100)
    entered, release = threading.Event(), threading.Event()
    real_pread = os.pread

    def slow_pread(fd: int, count: int, offset: int) -> bytes:
        entered.set()
        release.wait(10)
        return real_pread(fd, count, offset)

    monkeypatch.setattr(archivecheck.os, "pread", slow_pread)
    with open(path, "rb") as f:
        growing = GrowingFile(f.fileno())
        growing.advance(100)
        thread, results = _reader_thread(growing, 10)
        assert entered.wait(5)
        growing.cancel()  # while the read is in os.pread
        assert not growing.closed and open_descriptors(path) == 2
        release.set()
        thread.join(5)
        assert results == [b"x" * 10]
        assert growing.closed and open_descriptors(path) == 1


def test_growing_file_stopped_short_ends_its_reads_at_what_is_written(tmp_path: Path) -> None:
    # The writer's sources failed: a read waiting past the bytes written ends, and every
    # byte written is read first (the check's verdict is on all of them).
    path = tmp_path / "growing"
    with open(path, "wb") as f:
        growing = GrowingFile(f.fileno())
        f.write(b"abcdef")
        f.flush()
        growing.advance(4)
        assert growing.read(100) == b"abcd"
        thread, results = _reader_thread(growing, 100)
        thread.join(0.05)
        assert thread.is_alive() and not results  # waits for more
        growing.advance(6)
        growing.stop_short()
        thread.join(5)
        assert results == [b"ef"]
        with pytest.raises(CopyCutShort, match="stops at byte 6"):
            growing.read(100)
        growing.cancel()
        assert growing.closed


@pytest.mark.parametrize("decode_ahead", [False, True])
@pytest.mark.parametrize(
    ("variant", "verdict"),
    [("good", CopyCutShort), ("not_tar", ArchiveInvalid), ("other_slot", ArchiveInvalid)],
)
def test_a_check_cut_short_gives_its_verdict_on_the_bytes_read(
    decode_ahead: bool, variant: str, verdict: type[Exception]
) -> None:
    """Half an archive, then the read that ends it short (GrowingFile.stop_short): bytes
    that fail the check fail it with their reason, whichever thread decodes them (the
    pieces a decoder ahead queued come before the read's end); bytes that pass end it with
    CopyCutShort as raised, no verdict."""
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    data = good if variant == "good" else bad_variants(name, good)[variant]
    half = io.BytesIO(data[: len(data) // 2])
    cut = CopyCutShort("cut")

    def read(size: int) -> bytes:
        if chunk := half.read(size):
            return chunk
        raise cut

    with pytest.raises(verdict) as caught:
        check_stream(read, name, decode_ahead=decode_ahead)
    assert (caught.value is cut) == (verdict is CopyCutShort)
    if variant != "good":
        assert re.match(EXPECTED_REASONS[variant]["zst"], str(caught.value))


def test_growing_file_shorter_than_announced(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 10)
    with open(path, "rb") as f:
        growing = GrowingFile(f.fileno())
        growing.finish(20)
        assert growing.read(100) == b"x" * 10
        with pytest.raises(OSError, match="ends at byte 10, before the 20 bytes written"):
            growing.read(100)
        growing.cancel()
        assert growing.closed


def part_file(path: Path) -> io.BufferedWriter:
    """The temp file a download writes (opened before the check starts)."""
    return open(path, "wb")


async def write_in_pieces(
    f: io.BufferedWriter, check: FollowingCheck, data: bytes, pieces: int, finish: bool = True
) -> None:
    """Write ``data`` in ``pieces`` as a download does, reporting each to the check."""
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        f.write(data[start : start + step])
        f.flush()
        check.advance(min(len(data), start + step))
        await trio.lowlevel.checkpoint()
    if finish:
        check.finish(len(data))


@pytest.mark.parametrize("compression", ["zst", "gz"])
async def test_following_check_of_a_good_download(tmp_path: Path, compression: str) -> None:
    name, good = build_archive(SLOT, compression=compression, accounts=6, account_size=1 << 20)
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        await write_in_pieces(f, check, good, 17)
        with trio.fail_after(30):
            assert (await check.result()).sha256 == hashlib.sha256(good).hexdigest()
        assert check.done()
    assert open_descriptors(path) == 0


@pytest.mark.parametrize("variant", ["flipped_byte", "truncated_zero_padded", "other_slot"])
async def test_following_check_of_a_bad_download(tmp_path: Path, variant: str) -> None:
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    bad = bad_variants(name, good)[variant]
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        await write_in_pieces(f, check, bad, 9)
        with trio.fail_after(30), pytest.raises(ArchiveInvalid) as caught:
            await check.result()
    assert re.match(EXPECTED_REASONS[variant]["zst"], caught.value.reason)
    assert open_descriptors(path) == 0


async def test_following_check_fails_before_the_download_ends(tmp_path: Path) -> None:
    # The check fails on the first piece; its reading thread, waiting for more, is released
    # and the duplicate descriptor closed, although the writer never finishes.
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    bad = bad_variants(name, good)["not_tar"]
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        await write_in_pieces(f, check, bad[: len(bad) // 2], 3, finish=False)
        with trio.fail_after(30), pytest.raises(ArchiveInvalid, match="bad header checksum"):
            await check.result()
        with trio.fail_after(10):
            while open_descriptors(path) != 1:
                await trio.sleep(0.01)


@pytest.mark.parametrize(("variant", "failed"), [("good", False), ("not_tar", True)])
async def test_following_check_judges_the_bytes_written_when_the_writer_stops_short(
    tmp_path: Path, variant: str, failed: bool
) -> None:
    # Half the archive is on disk, the check told of none of it yet (it lags): asked for
    # its verdict on those bytes, it reads them all and ends, failed or without a verdict.
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    data = good if variant == "good" else bad_variants(name, good)["not_tar"]
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        f.write(data[: len(data) // 2])
        f.flush()
        with trio.fail_after(30):
            assert await check.fails_short_of_end(len(data) // 2) is failed
        assert check.done()
        with pytest.raises(ArchiveInvalid if failed else CopyCutShort):
            await check.result()
    assert open_descriptors(path) == 0


async def test_following_check_cancelled(tmp_path: Path) -> None:
    name, good = build_archive(SLOT, accounts=6, account_size=1 << 20)
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        await write_in_pieces(f, check, good[: len(good) // 2], 4, finish=False)
        check.cancel()
        with trio.fail_after(10), pytest.raises(ArchiveInvalid, match=r"^check cancelled$"):
            await check.result()
        with trio.fail_after(10):
            while open_descriptors(path) != 1:
                await trio.sleep(0.01)


async def test_following_check_cancelled_before_any_byte(tmp_path: Path) -> None:
    name = archive_name(SLOT)
    path = tmp_path / "part"
    with part_file(path) as f:
        check = FollowingCheck.start(f.fileno(), name)
        await trio.sleep(0.01)
        assert not check.done()  # waiting for bytes
        check.cancel()
        with trio.fail_after(10), pytest.raises(ArchiveInvalid, match=r"^check cancelled$"):
            await check.result()
    assert open_descriptors(path) == 0


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def archive_files(tmp_path: Path) -> tuple[Path, Path, str]:
    name, good = build_archive(SLOT)
    good_path = tmp_path / name
    good_path.write_bytes(good)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad_path = bad_dir / name
    bad_path.write_bytes(bad_variants(name, good)["missing_status_cache"])
    return good_path, bad_path, hashlib.sha256(good).hexdigest()


def test_verify_prints_a_line_per_file(
    archive_files: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good, bad, digest = archive_files
    missing = tmp_path / "missing.tar.zst"
    assert main(["verify", str(good)]) == 0
    assert capsys.readouterr().out == f"ok accounts {digest} {good}\n"
    assert main(["verify", str(good), str(bad), str(missing), str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ok accounts {digest} {good}"
    assert re.fullmatch(re.escape(f"bad {bad}: ") + MISSING_STATUS_CACHE, lines[1]), lines[1]
    assert lines[2:] == [
        f"bad {missing}: No such file or directory",
        f"bad {tmp_path}: Is a directory",
    ]


def test_verify_as_a_command(archive_files: tuple[Path, Path, str]) -> None:
    import subprocess

    good, bad, digest = archive_files
    ok = subprocess.run(
        [sys.executable, "-m", "tracker", "verify", good.name],
        cwd=good.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"ok accounts {digest} {good.name}\n", "")
    failed = subprocess.run(
        [sys.executable, "-m", "tracker", "verify", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    line = failed.stdout.splitlines()[1]
    assert re.fullmatch(re.escape(f"bad {bad}: ") + MISSING_STATUS_CACHE, line), line
    usage = subprocess.run(
        [sys.executable, "-m", "tracker", "verify"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2


@pytest.mark.parametrize(
    ("total_mib", "workers", "threads"),
    [
        (512, 2, 0),  # two cores: SHA-256 keeps one, a frame thread alone is no gain
        (512, 16, 0),  # the default budget: the hashing processes take what it pays for
        (1024, 3, 2),  # three cores: two frame threads beside the SHA-256's core
        (1024, 16, 0),  # seven hashing processes come first
        (2048, 16, 3),  # eight hashing processes, then three frame threads (then three more)
        (2048, 4, 3),
        (3072, 16, 3),  # fifteen hashing processes paid, then three frame threads
        (100_000, 64, 3),  # more would only hold memory: the reading thread is the floor
        (100_000, 1, 0),
    ],
)
def test_frame_threads_are_what_the_budget_pays_for_after_the_hashing(
    total_mib: int, workers: int, threads: int
) -> None:
    # docs/architecture.md, "Every core" and "Bounded memory": each frame thread holds a
    # frame (~70 MiB measured); the SHA-256 keeps a core of its own
    assert paid_within(total_mib * 1024**2, workers)[1] == threads
    limits = AccountsLimits(memory=total_mib * 1024**2, workers=workers)
    assert limits.frame_threads == threads
    assert FrameThreads(limits).count == max(1, threads)
    assert FrameThreads(None).count == 1


def test_concurrent_checks_share_the_frame_threads_and_give_them_back() -> None:
    budget, slots, frames = shared_limits(3 * 1024**3, 16)
    limits = AccountsLimits(workers=16, budget=budget, slots=slots, frames=frames)
    first, second = FrameThreads(limits), FrameThreads(limits)
    assert (first.count, second.count) == (3, 1)  # the second decodes serially
    assert frames.used == 3
    first.release()
    first.release()  # idempotent
    assert frames.used == 0
    third = FrameThreads(limits)
    assert third.count == 3
    third.release()
    second.release()
    assert frames.used == 0


@pytest.mark.parametrize(("memory", "threads"), [(512 * 1024**2, None), (3 * 1024**3, 3)])
def test_a_check_of_a_file_decodes_on_the_frame_threads_its_budget_pays_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory: int, threads: int | None
) -> None:
    # the default budget pays for none (the serial decoder); 3 GiB on 16 workers for three,
    # taken from those the checks share for the check and given back at its end
    name, data = many_accounts_archive(820, 3000, seed=5, pieces=6)
    path = tmp_path / name
    path.write_bytes(data)
    used: list[int] = []
    frames_decoder = archivecheck.decode_zstd_frames

    def counted(chunks: Callable[[], bytes], sink: Callable[[memoryview], None], n: int) -> None:
        used.append(n)
        frames_decoder(chunks, sink, n)

    monkeypatch.setattr(archivecheck, "decode_zstd_frames", counted)
    budget, slots, frames = shared_limits(memory, 16)
    limits = AccountsLimits(memory=memory, workers=16, budget=budget, slots=slots, frames=frames)
    assert check_file(str(path), prove_accounts=limits).proof.level.label == "accounts"
    assert used == ([] if threads is None else [threads])
    assert frames.used == 0


@pytest.mark.parametrize(
    ("memory_mib", "workers", "frame_threads", "ahead"),
    [
        (512, 2, 1, False),  # two cores: the SHA-256, the reading thread and the hashing
        (512, 16, 1, False),  # two hashing processes paid: the hashing is the floor
        (1024, 16, 1, True),  # seven: the serial reading thread is
        (1024, 6, 1, False),  # five (one less than the workers): the hashing still is
        (3072, 16, 1, True),  # a following check at a budget that pays for frame threads
        (3072, 16, 3, False),  # frames decoded apart already
    ],
)
def test_the_serial_decoder_runs_ahead_where_the_reading_thread_is_the_floor(
    memory_mib: int, workers: int, frame_threads: int, ahead: bool
) -> None:
    limits = AccountsLimits(memory=memory_mib * 1024**2, workers=workers)
    assert decodes_ahead(limits, frame_threads) is ahead
    assert not decodes_ahead(None, frame_threads)  # no accounts to prove: one thread


@pytest.mark.parametrize(("memory_mib", "ahead"), [(512, False), (1024, True)])
def test_a_check_of_a_file_that_decodes_serially_decodes_ahead_where_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_mib: int, ahead: bool
) -> None:
    name, data = many_accounts_archive(820, 3000, seed=5, pieces=6)
    path = tmp_path / name
    path.write_bytes(data)
    threads: list[str] = []

    class Watched(archivecheck.DecodeAhead):
        def run(self, *args: Any) -> None:
            super().run(*args)
            assert self._thread is not None
            threads.append(self._thread.name)

    monkeypatch.setattr(archivecheck, "DecodeAhead", Watched)
    memory = memory_mib * 1024**2  # on 16 workers: 2 hashing processes paid, or 7
    budget, slots, frames = shared_limits(memory, 16)
    limits = AccountsLimits(memory=memory, workers=16, budget=budget, slots=slots, frames=frames)
    assert check_file(str(path), prove_accounts=limits).proof.level.label == "accounts"
    assert threads == (["decode-ahead"] if ahead else [])


# --- the raw chunks' SHA-256 in a thread of its own (archivecheck.SHA_APART) ---------------


def _sha_apart(monkeypatch: pytest.MonkeyPatch, behind: int) -> None:
    """The SHA-256 in a thread of its own, ``behind`` chunks of 4 KiB at most."""
    monkeypatch.setattr(archivecheck, "SHA_APART", True)
    monkeypatch.setattr(archivecheck, "SHA_BEHIND", behind)
    monkeypatch.setattr(archivecheck, "READ_SIZE", 4096)


def _read_all(prefetch: Any) -> bytes:
    out = bytearray()
    with prefetch:
        while data := prefetch.next():
            out += data
        digest = prefetch.hexdigest()
    assert digest == hashlib.sha256(bytes(out)).hexdigest()
    return bytes(out)


@pytest.mark.parametrize("behind", [1, 3, 32])
def test_the_sha256_apart_is_the_files_and_its_blocks_the_inline_ones(
    monkeypatch: pytest.MonkeyPatch, behind: int
) -> None:
    from tracker.proof.archive import binding

    _sha_apart(monkeypatch, behind)
    monkeypatch.setattr(binding, "BLOCK", 3 * 4096 + 5)  # blocks across chunks
    data = os.urandom(200_000)
    hashed_in: set[str] = set()
    update = binding.BlockDigests.update

    def noted(self: binding.BlockDigests, chunk: bytes) -> None:
        hashed_in.add(threading.current_thread().name)
        update(self, chunk)

    monkeypatch.setattr(binding.BlockDigests, "update", noted)
    apart = archivecheck._Prefetch(io.BytesIO(data).read)
    assert _read_all(apart) == data
    assert hashed_in == {"archive-check-sha"}  # not the reading thread
    monkeypatch.setattr(binding.BlockDigests, "update", update)
    assert not [t for t in threading.enumerate() if t.name == "archive-check-sha"]
    inline = binding.BlockDigests()
    for at in range(0, len(data), 4096):
        inline.update(data[at : at + 4096])
    assert apart.blocks().digests() == inline.digests()
    assert apart.blocks().size == len(data)


def test_a_whole_check_with_the_sha256_apart_gives_the_same_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archivecheck, "SHA_APART", True)
    monkeypatch.setattr(archivecheck, "READ_SIZE", 64 * 1024)
    name, good = build_archive(SLOT, compression="zst")
    assert check_bytes(good, name) == hashlib.sha256(good).hexdigest()
    for variant, bad in bad_variants(name, good).items():
        assert re.match(EXPECTED_REASONS[variant]["zst"], reason_of(bad, name)), variant


def test_a_hashing_thread_that_fails_fails_the_read_and_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tracker.proof.archive import binding

    _sha_apart(monkeypatch, 2)
    update = binding.BlockDigests.update

    def failing(self: binding.BlockDigests, data: bytes) -> None:
        if self.size >= 5 * 4096:
            raise MemoryError("no room to hash")
        update(self, data)

    monkeypatch.setattr(binding.BlockDigests, "update", failing)
    with pytest.raises(MemoryError, match="no room to hash"):
        _read_all(archivecheck._Prefetch(io.BytesIO(os.urandom(100 * 4096)).read))
    assert not [t for t in threading.enumerate() if t.name.startswith("archive-check")]


def test_a_reader_that_stops_early_ends_the_hashing_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sha_apart(monkeypatch, 2)
    prefetch = archivecheck._Prefetch(io.BytesIO(os.urandom(100 * 4096)).read)
    with prefetch:
        assert prefetch.next()
    assert not [t for t in threading.enumerate() if t.name.startswith("archive-check")]
