"""The compression layers of snapshot archives, decoded to their end in bounded memory.

Each decoder takes ``chunks()`` (the next piece of the raw archive, ``b""`` at its end) and
``sink(piece)`` (where decompressed bytes go, in pieces of at most :data:`OUT_SIZE`) and
raises :class:`~tracker.errors.ArchiveInvalid` unless the whole input is one or more complete
frames / members / streams of its format with nothing after them.

Why the care: none of the libraries says on its own that a stream was cut short. The standard
library's decompressor objects (``bz2``, ``zlib``, ``lzma``) and ``lz4.frame``'s simply stop
with ``eof`` false; ``zstandard``'s ``stream_reader`` returns what it decoded and then ``b""``,
and ``ZstdDecompressor.decompress`` ignores bytes after the first frame. So every decoder here
checks its end state itself: ``eof`` for the decompressor objects, and for zstd an own parse of
the frame and block headers (:func:`zstd_frames`), which also says where each frame starts so
that a decoding error can name its frame. Output is bounded per step (``max_length``, or
``readinto`` a fixed buffer for zstd), and what a decoder may allocate is capped (the zstd
window, the xz dictionary: :mod:`tracker.proof.archive.checklimits`), so a decompression bomb costs
no memory; the time it costs is bounded by the sink (``checklimits.Budget``).
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable
from typing import IO, Any, cast

import attrs
import lz4.frame
import zstandard

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.checklimits import (
    BLOCK_FLOOR,
    BYTES_PER_BLOCK,
    XZ_MEMLIMIT,
    ZSTD_MAX_WINDOW,
    blocks_allowed,
    too_many_units,
    units_allowed,
)
from tracker.proof.formats.streamparse import MARK, EndOfInput, Feeder, Parser, ParserOf

#: Largest piece of decompressed output handed to the sink at once.
OUT_SIZE = 4 * 1024 * 1024
TRAILING = "trailing bytes after the compressed stream at byte {at}"

Chunks = Callable[[], bytes]
Sink = Callable[[memoryview], None]


def decode_plain(chunks: Chunks, sink: Sink) -> None:
    """``.tar``: no compression layer."""
    while data := chunks():
        sink(memoryview(data))


# --- zstd ------------------------------------------------------------------------------------

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_MAX_BLOCK = 128 * 1024
# Real encoders never write empty blocks that are not the last; a run of them is zero-filled
# data (a sparse file's hole) and would cost a Python step per 3 bytes.
_ZSTD_MAX_EMPTY_BLOCKS = 64


@attrs.define
class FrameState:
    """What :func:`zstd_frames` has seen: where the current frame starts, and whether it is
    reading the magic number of a next frame (and where that starts)."""

    frame_at: int = 0
    in_magic: bool = False
    magic_at: int = 0
    #: Frames (skippable ones included) begun so far, the one being read included.
    frames: int = 0
    #: Blocks so far that may decode to little (compressed, small raw), in every frame
    #: (bounded by :func:`~tracker.proof.archive.checklimits.blocks_allowed`).
    blocks: int = 0


def zstd_frames(state: FrameState, at: int = 0) -> Parser:
    """Parse the framing of a zstd stream (RFC 8878: frames, skippable frames, block headers)
    without decoding it; boundaries between frames are MARKs. ``at``: the offset of its first
    byte in the archive (a stream taken up at a frame's start). At most
    :func:`~tracker.proof.archive.checklimits.units_allowed` frames, ``state.frames``
    counted already (a stream taken up again at a frame's start)."""
    try:
        while True:
            yield MARK
            state.in_magic, state.magic_at = True, at
            magic = int.from_bytes((yield 4), "little")
            state.in_magic = False
            state.frame_at = at
            state.frames += 1
            if state.frames > units_allowed(at):
                raise too_many_units("zstd", "frame", state.frames, at)
            if magic == _ZSTD_MAGIC:
                at = yield from _zstd_frame(at, state)
            elif magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                size = int.from_bytes((yield 4), "little")
                if size:
                    yield -size
                at += 8 + size
            elif at == 0:
                raise ArchiveInvalid("zstd: not a zstd stream (no frame at byte 0)")
            else:
                raise ArchiveInvalid(TRAILING.format(at=at))
    except EndOfInput as end:
        if state.in_magic and at > 0:
            raise ArchiveInvalid(TRAILING.format(at=at)) from None
        raise ArchiveInvalid(
            f"zstd: stream truncated at byte {end.at} (inside the frame at byte {at})"
        ) from None


def _zstd_frame(at: int, state: FrameState) -> ParserOf[int]:
    descriptor = (yield 1)[0]
    if descriptor & 0x08:
        raise ArchiveInvalid(f"zstd: reserved bit set in the frame header at byte {at}")
    single_segment = bool(descriptor & 0x20)
    header = (
        (0 if single_segment else 1)
        + (0, 1, 2, 4)[descriptor & 3]
        + ((1 if single_segment else 0), 2, 4, 8)[descriptor >> 6]
    )
    if header:
        yield -header
    pos = at + 5 + header
    empty = 0
    while True:
        block = int.from_bytes((yield 3), "little")
        kind, size = (block >> 1) & 3, block >> 3
        if kind == 3:
            raise ArchiveInvalid(f"zstd: reserved block type at byte {pos}")
        if size > _ZSTD_MAX_BLOCK:
            raise ArchiveInvalid(f"zstd: block of {size} bytes at byte {pos}")
        # Counted: the blocks that may decode to little. An RLE block, or a raw one of
        # BYTES_PER_BLOCK or more, decodes to its size (the expansion bound's to weigh).
        if kind == 2 or (kind == 0 and size < BYTES_PER_BLOCK):
            state.blocks += 1
            if state.blocks > blocks_allowed(pos):
                raise ArchiveInvalid(
                    f"zstd: more than {state.blocks - 1} small blocks before byte {pos} (at "
                    f"most one per {BYTES_PER_BLOCK} bytes past the first {BLOCK_FLOOR})"
                )
        body = 1 if kind == 1 else size
        if body:
            yield -body
        empty = empty + 1 if size == 0 else 0
        if empty > _ZSTD_MAX_EMPTY_BLOCKS:
            raise ArchiveInvalid(f"zstd: a run of empty blocks at byte {pos} (zero-filled data?)")
        pos += 3 + body
        if block & 1:  # the last block
            break
    if descriptor & 0x04:  # content checksum
        yield -4
        pos += 4
    return pos


class _FramedSource:
    """The raw stream as ``zstandard``'s ``stream_reader`` reads it, each piece checked by
    :func:`zstd_frames` first and never spanning two frames, so that a decoding error belongs
    to the frame of the last piece handed out. ``by_frame``: once a frame's last byte is
    handed out, reads answer ``b""`` (the end of that frame's reader) until
    :attr:`frame_done` is cleared for the next frame's."""

    def __init__(
        self, chunks: Chunks, at: int = 0, frames: int = 0, by_frame: bool = False
    ) -> None:
        self._chunks = chunks
        self._at = at
        self._by_frame = by_frame
        self.state = FrameState(frame_at=at, magic_at=at, frames=frames)
        self.framing = Feeder(zstd_frames(self.state, at))
        self._data = memoryview(b"")
        self._pos = 0
        #: The last piece handed out ended a frame (``by_frame`` only).
        self.frame_done = False
        #: ``chunks`` said the stream ended.
        self.ended = False

    @property
    def position(self) -> int:
        """The archive offset of the next raw byte to be handed out."""
        return self._at + self.framing.offset

    def read(self, size: int) -> memoryview | bytes:
        if self.frame_done or self.ended:
            return b""
        if self._pos >= len(self._data):
            self._data, self._pos = memoryview(self._chunks()), 0
            if not self._data:
                self.ended = True
                return b""
        start = self._pos
        self._pos = self.framing.feed_to_mark(self._data, start, min(len(self._data), start + size))
        self.frame_done = self._by_frame and self.framing.at_mark
        return self._data[start : self._pos]


#: Told ``(decoded, raw)`` before the first decoded byte of each frame that has any: the
#: offset of that byte in the decoded stream, and the archive offset of the frame's start.
FrameStarts = Callable[[int, int], None]


def decode_zstd(
    chunks: Chunks,
    sink: Sink,
    at: int = 0,
    frames: int = 0,
    starts: FrameStarts | None = None,
) -> None:
    """``.tar.zst``: one or more frames (content checksums verified where present), skippable
    frames allowed, nothing after the last frame. ``at``: the archive offset of the first
    byte, ``frames``: the frames before it (a stream taken up at a frame's start, as
    :mod:`tracker.proof.archive.framedecode` does). ``starts`` (if given) is told where each
    frame's output begins (:data:`FrameStarts`, from the thread that decodes): each frame is
    then decoded by a reader of its own, which ends at the frame's last byte."""
    source = _FramedSource(chunks, at, frames, by_frame=starts is not None)
    decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    out = bytearray(OUT_SIZE)
    view = memoryview(out)
    state = source.state
    try:
        if starts is not None:
            _by_frame(decompressor, source, sink, starts, out)
        else:
            reader = decompressor.stream_reader(
                cast(IO[bytes], source),  # it only calls read(size)
                read_size=OUT_SIZE,
                read_across_frames=True,
                closefd=False,
            )
            # readinto1: what there is as soon as there is some (readinto would wait for a
            # full buffer, holding a following check's verdict back until more bytes are
            # written).
            while count := reader.readinto1(out):
                sink(view[:count])
    except zstandard.ZstdError as exc:
        if state.in_magic and state.magic_at > 0:
            # The decoder choked on the first bytes after the last frame, which the framing
            # had handed over before it had all four bytes of a magic number to refuse.
            raise ArchiveInvalid(TRAILING.format(at=state.magic_at)) from None
        reason = zstd_reason(str(exc))
        raise ArchiveInvalid(f"zstd: {reason} in the frame at byte {state.frame_at}") from None
    source.framing.finish()


def _by_frame(
    decompressor: zstandard.ZstdDecompressor,
    source: _FramedSource,
    sink: Sink,
    starts: FrameStarts,
    out: bytearray,
) -> None:
    """:func:`decode_zstd`'s loop, one reader a frame: the output of each is that frame's
    alone (zstd frames are independent), so where each frame's output begins is known."""
    view = memoryview(out)
    decoded = 0
    while not source.ended:
        source.frame_done = False
        raw = source.position
        reader = decompressor.stream_reader(
            cast(IO[bytes], source), read_size=OUT_SIZE, read_across_frames=False, closefd=False
        )
        told = False
        while count := reader.readinto1(out):
            if not told:
                starts(decoded, raw)
                told = True
            sink(view[:count])
            decoded += count
        if not source.frame_done and not source.ended:
            # the decoder ended the frame before the framing did: never for a frame both read
            # alike, but a frame's bytes it left unread would otherwise go unchecked
            raise ArchiveInvalid(f"zstd: the frame at byte {raw} ends before its last block")


def zstd_reason(message: str) -> str:
    """The one-line reason of a zstandard error message."""
    text = message.rsplit(": ", 1)[-1]
    if "checksum" in text.lower():
        return "frame checksum mismatch"
    return text[:1].lower() + text[1:]


# --- decompressor objects: lz4 frames, bz2, gzip, xz -----------------------------------------


@attrs.frozen
class Layer:
    """One format decoded with a decompressor object of the ``bz2.BZ2Decompressor`` kind."""

    label: str  # as in the reasons: "gzip"
    unit: str  # "member", "stream", "frame"
    new: Callable[[], Any]
    starts: Callable[[bytes], bool]  # does a unit start with these bytes (its magic)?
    magic_size: int
    errors: tuple[type[BaseException], ...]
    reason: Callable[[BaseException], str]
    #: Why nothing may follow the first unit ("": several units are one stream): agave's
    #: reader of the format stops at the first unit's end.
    single: str = ""


def _pump(decompressor: Any, data: bytes | memoryview, sink: Sink) -> bytes:
    """Decompress ``data`` in steps of at most OUT_SIZE; returns the input left after the end
    of the unit (``b""`` while it has not ended)."""
    zlib_style = hasattr(decompressor, "unconsumed_tail")
    out = decompressor.decompress(data, OUT_SIZE)
    while True:
        if out:
            sink(memoryview(out))
        if decompressor.eof:
            return decompressor.unused_data or b""
        if zlib_style:
            tail = decompressor.unconsumed_tail
            if not tail and len(out) < OUT_SIZE:
                return b""
            out = decompressor.decompress(tail, OUT_SIZE)
        else:
            if decompressor.needs_input:
                return b""
            out = decompressor.decompress(b"", OUT_SIZE)


def decode_units(layer: Layer, chunks: Chunks, sink: Sink) -> None:
    """Decode one or more units of ``layer`` (multi-stream xz; lz4, gzip and bz2 one
    unit, as agave reads them: ``Layer.single``) and nothing after them."""
    at = 0  # offset of `data` in the raw stream
    unit_at = 0
    units = 0
    decompressor = None
    data = b""
    while True:
        if not data:
            data = chunks()
            if not data:
                break
        if decompressor is None:
            if layer.single and units:
                raise ArchiveInvalid(f"{TRAILING.format(at=at)} ({layer.single})")
            if len(data) < layer.magic_size:
                more = chunks()
                if more:
                    data = bytes(data) + more
                    continue
                break
            if not layer.starts(bytes(data[: layer.magic_size])):
                if at == 0:
                    raise ArchiveInvalid(f"{layer.label}: not a {layer.label} stream")
                raise ArchiveInvalid(TRAILING.format(at=at))
            if units + 1 > units_allowed(at):
                raise too_many_units(layer.label, layer.unit, units + 1, at)
            decompressor, unit_at = layer.new(), at
        try:
            left = _pump(decompressor, data, sink)
        except layer.errors as exc:
            raise ArchiveInvalid(
                f"{layer.label}: {layer.reason(exc)} in the {layer.unit} at byte {unit_at}"
            ) from None
        at += len(data) - len(left)
        data = left
        if decompressor.eof:
            units += 1
            decompressor = None
    if decompressor is not None:
        raise ArchiveInvalid(
            f"{layer.label}: stream truncated at byte {at} (inside the {layer.unit} at byte "
            f"{unit_at})"
        )
    if units == 0:
        raise ArchiveInvalid(f"{layer.label}: not a {layer.label} stream")
    if data:  # fewer bytes than a magic number after the last unit
        raise ArchiveInvalid(TRAILING.format(at=at))


def _lz4_starts(head: bytes) -> bool:
    # a data frame only: agave's reader (lz4-rs's ``Decoder``) ends at the end of the first
    # frame, so a skippable frame first would be all it reads
    return int.from_bytes(head, "little") == 0x184D2204


def _lz4_reason(exc: BaseException) -> str:
    # "LZ4F_decompress failed with code: ERROR_contentChecksum_invalid" -> readable words
    code = str(exc).rsplit("ERROR_", 1)[-1]
    known = {
        "contentChecksum_invalid": "frame checksum mismatch",
        "blockChecksum_invalid": "block checksum mismatch",
    }
    words = re.sub(r"(?<=[a-z])(?=[A-Z])|_", " ", code).lower()
    return known.get(code, words)


def _after_colon(exc: BaseException) -> str:
    text = str(exc).rsplit(": ", 1)[-1]
    return text[:1].lower() + text[1:]


LZ4 = Layer(
    "lz4",
    "frame",
    lz4.frame.LZ4FrameDecompressor,
    _lz4_starts,
    4,
    (RuntimeError,),
    _lz4_reason,
    single="agave reads the first lz4 frame only",
)
# agave read these with the bzip2 crate's ``BzDecoder`` and flate2's ``read::GzDecoder``
# (snapshot_utils, ``untar_snapshot_create_shared_buffer``): each ends at the end of the
# first unit, so a tar split across units (pbzip2's output, gzip files joined by ``cat``)
# ends mid-archive there, and the node cannot start from it
BZ2 = Layer(
    "bz2",
    "stream",
    bz2.BZ2Decompressor,
    b"BZh".__eq__,
    3,
    (OSError,),
    _after_colon,
    single="agave reads the first bz2 stream only",
)
GZIP = Layer(
    "gzip",
    "member",
    lambda: zlib.decompressobj(wbits=31),
    b"\x1f\x8b".__eq__,
    2,
    (zlib.error,),
    _after_colon,
    single="agave reads the first gzip member only",
)


def _xz_reason(exc: BaseException) -> str:
    if "memory" in str(exc).lower():  # liblzma: "Memory usage limit exceeded"
        return f"needs more than {XZ_MEMLIMIT >> 20} MiB of memory (its dictionary)"
    return _after_colon(exc)


XZ = Layer(
    "xz",
    "stream",
    lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT),
    b"\xfd7zXZ\x00".__eq__,
    6,
    (lzma.LZMAError,),
    _xz_reason,
)


def decoder_for(ext: str) -> Callable[[Chunks, Sink], None]:
    """The decoder of an archive extension (``.tar.zst``, ... ``.tar``), on the caller's
    thread (zstd's frames by several threads: :mod:`tracker.proof.archive.framedecode`)."""
    layers = {".tar.lz4": LZ4, ".tar.bz2": BZ2, ".tar.gz": GZIP, ".tar.xz": XZ}
    if ext == ".tar.zst":
        return decode_zstd
    if ext == ".tar":
        return decode_plain
    layer = layers[ext]
    return lambda chunks, sink: decode_units(layer, chunks, sink)
