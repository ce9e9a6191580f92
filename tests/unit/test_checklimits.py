"""What one archive check may cost (tracker.proof.archive.checklimits): every number read from an
archive bounded before it is converted, the memory a decoder may ask for, the expansion ratio,
the member count and the padding after the end blocks bounded, a cancelled check stopped in
its decode loop, and any failure of the check that is not the reading's a rejection. Real
archives of tests/archives.py, no network.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import re
import tarfile
import threading
import time
import zlib

import pytest
import zstandard
from archives import archive_name, build_archive, compress, make_tar, snapshot_entries

import tracker.proof.archive.archivecheck as archivecheck
from tracker.errors import ArchiveInvalid
from tracker.proof.archive import checklimits
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.archive.checklimits import (
    BYTES_PER_UNIT,
    DECODED_FLOOR,
    MAX_END_PADDING,
    MAX_MEMBERS,
    MEMBER_FLOOR,
    UNIT_FLOOR,
    Budget,
    decoded_allowed,
    members_allowed,
    units_allowed,
)
from tracker.proof.formats.writing import write_status_cache

SLOT = 234_567
MiB = 1 << 20


def check_bytes(data: bytes, name: str) -> str:
    return check_stream(io.BytesIO(data).read, name).sha256


def reason_of(data: bytes, name: str) -> str:
    with pytest.raises(ArchiveInvalid) as caught:
        check_bytes(data, name)
    assert "\n" not in caught.value.reason
    return caught.value.reason


def snapshot_tar(accounts: int = 2, account_size: int = 4096) -> bytes:
    return make_tar(snapshot_entries(SLOT, accounts=accounts, account_size=account_size, seed=0))


def tar_end(tar: bytes) -> int:
    """Where the end-of-archive blocks of a plain tar start."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        last = archive.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


# --- the decisions, as tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [(0, DECODED_FLOOR), (1, DECODED_FLOOR + 64), (110 * 10**9, DECODED_FLOOR + 64 * 110 * 10**9)],
)
def test_decoded_allowed(raw: int, decoded: int) -> None:
    assert decoded_allowed(raw) == decoded


@pytest.mark.parametrize(
    ("raw", "members"),
    [
        (0, MEMBER_FLOOR),
        (1023, MEMBER_FLOOR),
        (1024, MEMBER_FLOOR + 1),
        # Never more than agave unpacks ("too many files in snapshot"): 107,521,875 were
        # allowed in a 110 GB archive, which no node loads.
        (110 * 10**9, MAX_MEMBERS),
        ((MAX_MEMBERS - MEMBER_FLOOR) * 1024, MAX_MEMBERS),
        ((MAX_MEMBERS - MEMBER_FLOOR) * 1024 - 1, MAX_MEMBERS - 1),
    ],
)
def test_members_allowed(raw: int, members: int) -> None:
    assert members_allowed(raw) == members


def test_real_shapes_are_far_inside_the_limits() -> None:
    # A mainnet full snapshot: ~110 GB of zstd, ~3x expansion, ~400k account files; an
    # incremental: ~2 GB, ~50k files (docs/architecture.md, "What the check allows").
    for raw, decoded, members in (
        (110 * 10**9, 330 * 10**9, 400_000),
        (2 * 10**9, 6 * 10**9, 50_000),
    ):
        assert decoded * 10 < decoded_allowed(raw)
        assert members * 10 < members_allowed(raw)  # agave unpacks at most 5,000,000


def test_a_budget_says_how_it_was_spent() -> None:
    budget = Budget()
    budget.took(MiB)
    budget.spend(DECODED_FLOOR + 64 * MiB)
    with pytest.raises(ArchiveInvalid, match=r"^the archive expands more than 64 times: "):
        budget.spend(1)


# --- numbers bounded before conversion ----------------------------------------------------------


def _pax_block(record: bytes) -> bytes:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    return pax.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)


@pytest.mark.parametrize("digits", [20, 5000, 100_000])
def test_a_pax_size_is_refused_before_its_number_is_read(digits: int) -> None:
    # agave writes no pax header (docs/architecture.md, "One reading of the tar stream"):
    # its records are never parsed, so a size of any length costs nothing.
    tar = snapshot_tar()
    body = b" size=" + b"1" * digits + b"\n"
    length = len(body) + len(str(len(body) + 7))
    record = str(length).encode() + body
    member = tarfile.TarInfo(f"accounts/{SLOT}.9").tobuf(tarfile.USTAR_FORMAT)
    end = tar_end(tar)
    data = tar[:end] + _pax_block(record) + member + tar[end:]
    for compression in ("tar", "zst"):
        name = archive_name(SLOT, compression=compression)
        assert reason_of(compress(data, compression), name) == (
            f"tar: '././@PaxHeader' at byte {end} is a pax header; agave writes only regular "
            "files and directories"
        )


# --- any failure but the reading's rejects the copy ----------------------------------------------


def test_an_unexpected_error_of_a_decoder_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ext: str, workers: int = 1):  # type: ignore[no-untyped-def]
        def decode(chunks, sink):  # type: ignore[no-untyped-def]
            chunks()
            raise ValueError("Exceeds the limit (4300 digits)\nfor integer string conversion")

        return decode

    monkeypatch.setattr(archivecheck, "decoder_for", broken)
    name, good = build_archive(SLOT)
    assert reason_of(good, name) == (
        "check failed: ValueError: Exceeds the limit (4300 digits) for integer string conversion"
    )


def test_a_read_error_stays_a_read_error() -> None:
    name, good = build_archive(SLOT)
    source = io.BytesIO(good)

    def read(size: int) -> bytes:
        if source.tell() > 0:
            raise OSError(5, "Input/output error")
        return source.read(1024)

    for prefetch in (True, False):
        source.seek(0)
        with pytest.raises(OSError, match="Input/output error"):
            check_stream(read, name, prefetch=prefetch)


# --- memory a decoder may ask for ----------------------------------------------------------------


def _xz_with_dictionary(data: bytes, props: int) -> bytes:
    """``data`` as xz whose block header declares LZMA2 dictionary ``props`` (0..40: the
    dictionary is (2 | props & 1) << (props // 2 + 11), 40 is 4 GiB - 1): decodable whatever
    it declares, the data being smaller."""
    xz = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, preset=0))
    size = (xz[12] + 1) * 4
    header = xz[12 : 12 + size]
    at = header.find(b"\x21\x01")  # filter id LZMA2, one byte of properties
    assert at > 0
    header[at + 2] = props
    header[-4:] = zlib.crc32(bytes(header[:-4])).to_bytes(4, "little")
    xz[12 : 12 + size] = header
    return bytes(xz)


@pytest.mark.parametrize(("props", "passes"), [(20, True), (28, True), (30, False), (40, False)])
def test_an_xz_dictionary_over_the_memory_limit_is_refused(props: int, passes: bool) -> None:
    data = _xz_with_dictionary(snapshot_tar(), props)
    name = archive_name(SLOT, compression="xz")
    started = time.process_time()  # the process's CPU (its threads too), not the host's load
    if passes:  # up to 64 MiB: what xz -9 writes
        assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()
    else:
        assert reason_of(data, name) == (
            "xz: needs more than 80 MiB of memory (its dictionary) in the stream at byte 0"
        )
        assert time.process_time() - started < 1.0  # refused at the block header


def _zstd(data: bytes, window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters(window_log=window_log, compression_level=3)
    compressor = zstandard.ZstdCompressor(compression_params=params)
    out = io.BytesIO()
    with compressor.stream_writer(out, closefd=False) as writer:
        writer.write(data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("window_log", "passes"), [(21, True), (23, True), (24, False), (27, False)]
)
def test_zstd_windows_over_8_mib_are_refused(window_log: int, passes: bool) -> None:
    data = _zstd(snapshot_tar(), window_log)
    assert zstandard.get_frame_parameters(data).window_size == 1 << window_log
    name = archive_name(SLOT, compression="zst")
    if passes:  # agave's default level 3: 2 MiB; zstd -19: 8 MiB
        assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()
    else:
        assert reason_of(data, name) == (
            "zstd: frame requires too much memory for decoding in the frame at byte 0"
        )


# --- time: padding, expansion, members ----------------------------------------------------------


@pytest.mark.parametrize(
    ("padding", "passes"), [(10240, True), (MAX_END_PADDING, True), (MAX_END_PADDING + 512, False)]
)
def test_zeros_after_the_end_blocks_are_bounded(padding: int, passes: bool) -> None:
    tar = snapshot_tar()
    end = tar_end(tar)
    data = tar[: end + 1024] + bytes(padding)
    for compression in ("tar", "zst"):
        packed = compress(data, compression)
        name = archive_name(SLOT, compression=compression)
        if passes:
            assert check_bytes(packed, name) == hashlib.sha256(packed).hexdigest()
        else:
            assert reason_of(packed, name) == (
                f"tar: more than {MAX_END_PADDING} bytes of padding after the end-of-archive "
                f"blocks at byte {end + 1024}"
            )


def test_gigabytes_of_zeros_after_the_end_blocks_end_at_once() -> None:
    tar = snapshot_tar()
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(16 * MiB)
    data = b"".join(
        [
            compressor.compress(tar),
            *(compressor.compress(zeros) for _ in range(64)),
            compressor.flush(),
        ]
    )
    started = time.process_time()
    reason = reason_of(data, archive_name(SLOT))
    assert reason.startswith(f"tar: more than {MAX_END_PADDING} bytes of padding after")
    assert time.process_time() - started < 2.0


def _member_then_zeros(
    size: int, compressor: zstandard.ZstdCompressionObj | bz2.BZ2Compressor
) -> bytes:
    info = tarfile.TarInfo("snapshots/status_cache")  # read to its valid start only
    info.size = size
    zeros = bytes(16 * MiB)
    head = info.tobuf(tarfile.GNU_FORMAT) + write_status_cache([SLOT])
    parts = [compressor.compress(head)]
    parts += [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def test_an_archive_that_expands_too_much_is_refused_early() -> None:
    # ~50 KB of zstd that would expand to 2 GiB of member data.
    data = _member_then_zeros(2 << 30, zstandard.ZstdCompressor(level=1).compressobj())
    assert len(data) < 200_000
    budget_end = decoded_allowed(len(data))
    started = time.process_time()
    reason = reason_of(data, archive_name(SLOT))
    assert reason.startswith("the archive expands more than 64 times: ")
    decoded = int(reason.split(": ")[1].split()[0])
    assert budget_end < decoded <= budget_end + 4 * MiB  # stopped within a piece
    assert time.process_time() - started < 5.0


def _empty_storage(ident: int) -> bytes:
    # The header of an empty storage accounts/0.{ident}: tarfile's tobuf costs ~30 µs a call.
    block = bytearray(TEMPLATE)
    block[:100] = f"accounts/0.{ident}".encode().ljust(100, b"\0")
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


TEMPLATE = tarfile.TarInfo("accounts/0.0").tobuf(tarfile.GNU_FORMAT)


def test_empty_members_are_bounded_by_the_archive_size() -> None:
    # Empty storages again and again: 512 bytes of tar each that compress to almost nothing.
    head = snapshot_tar(accounts=0)
    end = tar_end(head)
    count = MEMBER_FLOOR + 50_000
    members = b"".join(_empty_storage(i) for i in range(count))
    data = compress(head[:end] + members + bytes(1024), "zst")
    reason = reason_of(data, archive_name(SLOT))
    allowed = MEMBER_FLOOR + len(data) // 1024
    assert reason.startswith(f"tar: more than {allowed} members by byte ")


def test_more_members_than_agave_unpacks_are_refused_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past agave's count (5,000,000: held here to a few, the walk reading the bound where
    the limits put it) the reason names agave's limit, not the archive's size."""
    from tracker.proof.archive import checklimits, tarwalk

    monkeypatch.setattr(checklimits, "MAX_MEMBERS", 12)
    monkeypatch.setattr(tarwalk, "MAX_MEMBERS", 12)
    head = snapshot_tar(accounts=0)
    end = tar_end(head)
    members = b"".join(_empty_storage(i) for i in range(20))
    data = compress(head[:end] + members + bytes(1024), "zst")
    reason = reason_of(data, archive_name(SLOT))
    assert reason.startswith("tar: more than 12 members by byte ")
    assert reason.endswith("(agave unpacks no more)")


def test_real_archives_of_the_tests_pass_far_inside_the_limits() -> None:
    for compression in ("zst", "bz2", "xz"):
        name, good = build_archive(SLOT, compression=compression, accounts=16, account_size=MiB)
        assert check_bytes(good, name) == hashlib.sha256(good).hexdigest()


# --- cancellation inside the decode loop -------------------------------------------------------


def test_a_cancelled_check_stops_in_its_decode_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bz2 archive read whole in its first chunk, decoding for seconds (eight streams of
    # 256 MiB, the expansion limit raised): cancelled once it was all read, it stops within
    # one decoded piece, not after decoding all of it.
    monkeypatch.setattr(checklimits, "DECODED_FLOOR", 64 << 30)
    data = _member_then_zeros(256 * MiB, bz2.BZ2Compressor(1)) * 8
    assert len(data) < 16384
    name = archive_name(SLOT, compression="bz2")
    source = io.BytesIO(data)
    all_read = threading.Event()
    cancel = threading.Event()

    def read(size: int) -> bytes:
        chunk = source.read(size)
        if not chunk:
            all_read.set()
        return chunk

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            check_stream(read, name, cancelled=cancel.is_set)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert all_read.wait(10)
    cancel.set()
    started = time.perf_counter()
    thread.join(10)
    assert not thread.is_alive()
    assert time.perf_counter() - started < 5.0  # all of it: ~10 s
    [error] = outcome
    assert isinstance(error, ArchiveInvalid) and error.reason == "check cancelled"


#: One empty unit of each format that has several: a zstd frame, a skippable frame, an xz
#: stream (of lz4, gzip and bz2 agave reads the first unit only: a second is refused).
EMPTY_UNITS = {
    "zst": zstandard.ZstdCompressor().compress(b""),
    "zst-skippable": (0x184D2A50).to_bytes(4, "little") + bytes(4),
    "xz": compress(b"", "xz"),
}


@pytest.mark.parametrize(("count", "passes"), [(500, True), (50_000, False)])
@pytest.mark.parametrize("kind", sorted(EMPTY_UNITS))
def test_empty_compression_units_are_bounded_by_the_archive_size(
    kind: str, count: int, passes: bool
) -> None:
    # Units that decode to nothing cost a decoder's start each and the ratio bound never saw
    # them: 16 MiB of empty zstd frames took 9 s of a core before the tar walk refused them.
    compression = kind.split("-")[0]
    name, real = build_archive(SLOT, compression=compression, accounts=2, account_size=4096)
    data = EMPTY_UNITS[kind] * count + real
    if passes:
        assert check_bytes(data, name) == hashlib.sha256(data).hexdigest()
        return
    reason = reason_of(data, name)
    label, unit = {"zst": ("zstd", "frame")}.get(compression, (compression, "stream"))
    found = re.match(rf"{label}: more than (\d+) {unit}s before byte (\d+) \(at most one", reason)
    assert found, reason
    # refused at the first unit past the bound, not after the 50,000
    assert int(found[1]) == units_allowed(int(found[2])) < 1100


def test_units_allowed() -> None:
    assert units_allowed(0) == UNIT_FLOOR
    assert units_allowed(110 * 10**9) == UNIT_FLOOR + 110 * 10**9 // BYTES_PER_UNIT
