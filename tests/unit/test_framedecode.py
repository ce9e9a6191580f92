"""zstd frames decoded in parallel (tracker.proof.archive.framedecode): the same bytes and the same
reasons as the serial decoder, whatever the frames, the chunks and the threads."""

from __future__ import annotations

import io
import random
import threading

import pytest
import zstandard
from archives import EXPECTED_REASONS, bad_variants, build_archive, compress

from tracker.errors import ArchiveInvalid
from tracker.proof.archive import checklimits, framedecode
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.archive.decoders import decode_zstd
from tracker.proof.archive.framedecode import decode_zstd_frames

SLOT = 234_567
SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"


def run(data: bytes, workers: int, chunk: int = 1 << 20) -> bytes | str:
    """What a decoder gives: the output, or the reason it refused."""
    pieces = [data[at : at + chunk] for at in range(0, len(data), chunk)]
    out = bytearray()

    def sink(piece: memoryview) -> None:
        assert len(piece) <= framedecode.OUT_SIZE
        out.extend(piece)

    try:
        if workers:
            decode_zstd_frames(lambda: pieces.pop(0) if pieces else b"", sink, workers)
        else:
            decode_zstd(lambda: pieces.pop(0) if pieces else b"", sink)
    except ArchiveInvalid as exc:
        return exc.reason
    return bytes(out)


def stream(size: int, frames: int, seed: int = 0) -> tuple[bytes, bytes]:
    """``size`` bytes of half-compressible data, and them as ``frames`` zstd frames."""
    rnd = random.Random(seed)
    raw = b"".join(rnd.randbytes(64) + bytes(64) for _ in range(size // 128))
    return raw, compress(raw, "zst", pieces=frames)


@pytest.mark.parametrize("frames", [1, 2, 7])
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("chunk", [3, 4096, 1 << 20])
def test_the_frames_decode_to_the_serial_output(frames: int, workers: int, chunk: int) -> None:
    raw, data = stream(200_000 if chunk == 3 else 9 << 20, frames)
    assert run(data, workers, chunk) == raw


def test_a_frames_compressed_bytes_are_the_views_of_their_chunks_not_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gathering each frame's bytes into one growing buffer was a third of the first read's
    # reading thread where frames decode apart (docs/architecture.md, "Every core")
    raw, data = stream(9 << 20, 3)
    given = [data[at : at + (1 << 20)] for at in range(0, len(data), 1 << 20)]
    pieces = list(given)
    held: list[list[memoryview]] = []

    class Recorded(framedecode._Frame):
        def __init__(self, at: int, frame: list[memoryview]) -> None:
            held.append(list(frame))
            super().__init__(at, frame)

    monkeypatch.setattr(framedecode, "_Frame", Recorded)
    out = bytearray()
    decode_zstd_frames(lambda: pieces.pop(0) if pieces else b"", out.extend, 2)
    assert bytes(out) == raw
    assert len(held) == 3
    assert all(any(view.obj is chunk for chunk in given) for frame in held for view in frame)
    assert b"".join(bytes(view) for frame in held for view in frame) == data


def test_a_frames_raw_bytes_are_held_as_they_came_and_a_reused_chunk_is_copied() -> None:
    # the frame's compressed bytes are views of the chunks (immutable: never joined), and a
    # chunk its source fills again is copied before it is held
    raw, data = stream(9 << 20, 3)
    reused = bytearray(1 << 20)
    offsets = list(range(0, len(data), 1 << 20))

    def chunks() -> memoryview:
        if not offsets:
            return memoryview(b"")
        at = offsets.pop(0)
        piece = data[at : at + (1 << 20)]
        reused[: len(piece)] = piece
        return memoryview(reused)[: len(piece)]

    out = bytearray()
    decode_zstd_frames(chunks, lambda piece: out.extend(piece), 2)  # type: ignore[arg-type]
    assert bytes(out) == raw


def test_skippable_frames_and_frames_without_checksums_decode_too() -> None:
    raw, data = stream(300_000, 3)
    plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False)
    mixed = SKIPPABLE + data + SKIPPABLE + plain.compress(raw) + SKIPPABLE
    assert run(mixed, 3, 1000) == raw + raw


def test_every_cut_and_flip_gives_the_serial_reason() -> None:
    _, data = stream(60_000, 4, seed=1)
    rnd = random.Random(2)
    cases = [data[:cut] for cut in range(1, len(data), max(1, len(data) // 40))]
    cases += [data + extra for extra in (b"\0", bytes(4), b"x", b"\x28\xb5\x2f")]
    for _ in range(40):
        flipped = bytearray(data)
        flipped[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        cases.append(bytes(flipped))
    for case in cases:
        serial = run(case, 0, 777)
        assert run(case, 3, 777) == serial, serial


@pytest.mark.parametrize("variant", list(EXPECTED_REASONS))
def test_bad_archives_are_refused_as_the_serial_check_refuses_them(variant: str) -> None:
    name, good = build_archive(SLOT)
    bad = bad_variants(name, good)[variant]

    def reason(decoders: int) -> str:
        with pytest.raises(ArchiveInvalid) as caught:
            check_stream(io.BytesIO(bad).read, name, decoders=decoders)
        return caught.value.reason

    assert reason(3) == reason(1)


@pytest.mark.parametrize("compression", ["zst", "lz4"])
@pytest.mark.parametrize("variant", list(EXPECTED_REASONS))
def test_a_decoder_ahead_refuses_what_the_serial_check_refuses(
    compression: str, variant: str
) -> None:
    name, good = build_archive(SLOT, compression=compression)
    bad = bad_variants(name, good)[variant]

    def reason(ahead: bool) -> str:
        with pytest.raises(ArchiveInvalid) as caught:
            check_stream(io.BytesIO(bad).read, name, decode_ahead=ahead)
        return caught.value.reason

    assert reason(True) == reason(False)
    assert check_stream(io.BytesIO(good).read, name, decode_ahead=True) == check_stream(
        io.BytesIO(good).read, name
    )
    assert not [t for t in threading.enumerate() if t.name == "decode-ahead"]


def test_a_decoder_ahead_refuses_a_copy_while_its_source_holds_the_rest_back() -> None:
    # the verdict of a following check comes as soon as the bytes so far fail, as with the
    # serial decoder (frames decoded apart would wait for the frame's end): here a valid zstd
    # stream of what is not a tar, its source paused at 60 %
    name, good = build_archive(SLOT, accounts=16, account_size=512 * 1024)
    bad = bad_variants(name, good)["not_tar"]
    given = [bad[: len(bad) * 6 // 10]]
    more = threading.Event()  # set by the check's unblock, or at the test's end
    ended: list[str] = []

    def read(size: int) -> bytes:
        if given:
            return given.pop()
        more.wait()
        return b""

    def check() -> None:
        try:
            check_stream(read, name, unblock=more.set, decode_ahead=True)
        except ArchiveInvalid as exc:
            ended.append(exc.reason)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    try:
        thread.join(30)
        assert ended and ended[0].startswith("tar: ")
        assert not thread.is_alive()
    finally:
        more.set()
    assert not [t for t in threading.enumerate() if t.name == "decode-ahead"]


def test_a_walk_that_fails_stops_the_decoder_ahead() -> None:
    # the walk refuses the archive early; the decoder ahead, waiting for room or for bytes,
    # ends with the check
    name, good = build_archive(SLOT, accounts=40)
    bad = bad_variants(name, good)["other_slot"]
    with pytest.raises(ArchiveInvalid):
        check_stream(io.BytesIO(bad).read, name, decode_ahead=True)
    assert not [t for t in threading.enumerate() if t.name == "decode-ahead"]


def test_a_frame_larger_than_the_held_bound_is_decoded_as_it_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(framedecode, "MAX_FRAME", 50_000)
    raw, data = stream(2 << 20, 3)
    assert run(data, 2, 4096) == raw
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0xFF  # in the last frame, decoded serially
    assert run(bytes(flipped), 2, 4096) == run(bytes(flipped), 0, 4096)


def test_a_sink_that_fails_ends_the_threads() -> None:
    _, data = stream(9 << 20, 6)
    pieces = [data[at : at + 65536] for at in range(0, len(data), 65536)]

    def sink(piece: memoryview) -> None:
        raise ArchiveInvalid("tar: a bad header")

    with pytest.raises(ArchiveInvalid, match="tar: a bad header"):
        decode_zstd_frames(lambda: pieces.pop(0) if pieces else b"", sink, 3)
    assert not [t for t in threading.enumerate() if t.name.startswith("zstd-frame")]


def test_the_frames_behind_the_one_handed_on_decode_whole_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the sink holds the first frame's first piece, the two frames behind it decode to
    their end (their threads put it): they do not stop a few pieces in and wait their turn."""
    frame = bytes(8 * framedecode.OUT_SIZE)  # an agave frame's 32 MiB of tar: eight pieces
    data = b"".join(zstandard.ZstdCompressor().compress(frame) for _ in range(3))
    ended: list[int] = []
    behind_done = threading.Event()
    put = framedecode._Frame._put

    def noted(self: framedecode._Frame, item: object, stop: threading.Event) -> None:
        put(self, item, stop)
        if item is framedecode._END:
            ended.append(self.at)
            if len([at for at in ended if at > 0]) == 2:
                behind_done.set()

    monkeypatch.setattr(framedecode._Frame, "_put", noted)
    pieces = [data]
    out: list[int] = []

    def sink(piece: memoryview) -> None:
        if not out:
            out.append(behind_done.wait(30))  # held until both frames behind have ended
        out.append(len(piece))

    decode_zstd_frames(lambda: pieces.pop(0) if pieces else b"", sink, 3)
    assert out[0] is True
    assert sum(out[1:]) == 3 * len(frame)


@pytest.mark.parametrize(
    ("compressed", "queued"),
    [
        (1, framedecode.QUEUED),
        (framedecode.LARGE_FRAME, framedecode.QUEUED),
        (framedecode.LARGE_FRAME + 1, framedecode.QUEUED_LARGE),
        (framedecode.MAX_FRAME, framedecode.QUEUED_LARGE),
    ],
)
def test_a_large_frame_keeps_fewer_pieces_ready(compressed: int, queued: int) -> None:
    """What a frame's thread holds stays within budget.FRAME_THREAD_COST: the compressed bytes,
    the window and the pieces ready, the larger frames keeping fewer."""
    assert framedecode.queued_for(compressed) == queued
    window, piece = 8 << 20, framedecode.OUT_SIZE
    held = min(compressed, framedecode.MAX_FRAME) + window + (queued + 1) * piece
    assert held <= 84 << 20


def test_a_frame_thread_that_fails_otherwise_fails_the_check_never_hangs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame's thread raising something else than a zstd error (a MemoryError allocating
    a piece under memory pressure) ends the decoding with that error (the check raises it as
    the tracker's own shortage: ``errors.own_shortage``). The checking
    thread waited on that frame's queue for an end that never came, cancellation too (the
    pool kept the worker's exception to itself)."""
    _, data = stream(9 << 20, 4)
    pieces = [data[at : at + 65536] for at in range(0, len(data), 65536)]
    read = framedecode._Views.read
    calls = 0

    def failing(self: framedecode._Views, size: int = -1) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise MemoryError
        return read(self, size)

    monkeypatch.setattr(framedecode._Views, "read", failing)
    result: list[object] = []

    def decode() -> None:
        try:
            decode_zstd_frames(lambda: pieces.pop(0) if pieces else b"", lambda _: None, 2)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    thread.join(120)  # ends at once; the bound only keeps a regression from hanging the suite
    assert not thread.is_alive(), "the decoding hangs"
    [failed] = result
    assert isinstance(failed, MemoryError)  # the check's OSError (ENOMEM): no verdict


def test_the_frame_threads_refuse_empty_frames_past_the_bound() -> None:
    # A thread-pool task per empty frame: 1 MiB of them took 6 s on two frame threads, and a
    # cancelled check went on for seconds.
    empty = zstandard.ZstdCompressor().compress(b"")
    raw, data = stream(64 * 1024, 4)
    assert run(empty * 500 + data, workers=2) == raw
    reason = run(empty * 50_000 + data, workers=2)
    assert isinstance(reason, str) and reason.startswith("zstd: more than 102"), reason


def test_frames_before_a_large_one_count_once_against_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past a frame larger than the held bound the stream is decoded serially from that
    # frame's start: its count began again at 0, so up to twice the bound's frames passed.
    monkeypatch.setattr(framedecode, "MAX_FRAME", 50_000)
    empty = zstandard.ZstdCompressor().compress(b"")
    raw, large = stream(2 << 20, 1)  # one frame over the held bound
    allowed = checklimits.units_allowed(1000 * len(empty))
    # below the bound before the large frame, and as many again after it: over it in all
    data = empty * 1000 + large + empty * 1000
    assert 1000 < allowed < 2001
    reason = run(data, 2, 4096)
    assert isinstance(reason, str) and reason.startswith("zstd: more than"), reason
    assert run(empty * 1000 + large, 2, 4096) == raw
