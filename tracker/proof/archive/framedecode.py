"""zstd frames decoded in parallel, handed on in order.

Agave writes a full as independent zstd frames of ~32 MiB of tar each (docs/architecture.md,
"The accounts level" → "Every core"), so frames can be decoded apart. :func:`decode_zstd_frames`
is :func:`tracker.proof.archive.decoders.decode_zstd` with ``workers`` threads (python-zstandard
releases the GIL while it decodes): the framing is parsed here as the raw bytes come
(:func:`tracker.proof.archive.decoders.zstd_frames`, the same checks: truncation, trailing bytes,
reserved bits), each complete frame goes to a thread of its own, and its output is handed to
the sink in order, in pieces of at most ``OUT_SIZE``, while the next frames decode whole.
Memory is bounded: at most ``workers`` frames in flight, each holding its compressed bytes
(the views of the raw chunks they came in, never copied) and a queue of decoded pieces
(:func:`queued_for`). A single-frame archive
decodes on one thread, as before; a decoding error names its frame as the serial decoder
does. The caller's thread only frames, gathers a frame's bytes and runs the sink.

:class:`DecodeAhead` runs the serial decoder in one thread of its own instead, as the raw
bytes come (a check that follows a download, where a frame is decoded apart only once whole).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, cast

import zstandard

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.checklimits import CANCELLED, ZSTD_MAX_WINDOW
from tracker.proof.archive.decoders import (
    OUT_SIZE,
    Chunks,
    FrameState,
    Sink,
    decode_zstd,
    zstd_frames,
    zstd_reason,
)
from tracker.proof.formats.streamparse import Feeder

#: Decoded pieces a frame's thread keeps ready ahead of the sink: an agave frame's whole
#: output (32 MiB of tar: eight pieces, and its end), so that the frames behind the one being
#: handed on decode whole meanwhile. With two, each frame ahead stopped after 8 MiB and the
#: frames decoded nearly one at a time: on 16 cores the second read of 16 million accounts
#: took 2.0-2.3 s with eight or ten against 2.6-3.9 s with two (bench/README.md, "Level
#: `accounts` on 16 cores again").
QUEUED = 10
#: A frame of more compressed bytes than this (not agave's: its frames hold 32 MiB of tar,
#: less compressed) keeps :data:`QUEUED_LARGE` pieces ready, so that what a frame's thread
#: holds (its compressed bytes, the window, its pieces) stays within what the budget pays for
#: it (``budget.FRAME_THREAD_COST``) whatever the frame.
LARGE_FRAME = 32 * 1024 * 1024
QUEUED_LARGE = 2
#: Decoded pieces the decoder ahead (:class:`DecodeAhead`) keeps ready for the walk.
AHEAD = 2
#: Compressed bytes of one frame held to decode it apart (agave's: ~32 MiB of tar, less
#: compressed); a larger frame is decoded as it streams.
MAX_FRAME = 64 * 1024 * 1024
#: Seconds between two looks at the stop flag while a thread waits for the sink.
_POLL = 0.1
_END = object()


def queued_for(compressed: int) -> int:
    """The decoded pieces a frame of ``compressed`` bytes keeps ready ahead of the sink (its
    end counted as one): :data:`QUEUED`, or :data:`QUEUED_LARGE` past :data:`LARGE_FRAME`."""
    return QUEUED if compressed <= LARGE_FRAME else QUEUED_LARGE


class _Views:
    """The compressed bytes of one frame as the views of the raw chunks they came in, read
    in order by the decoder (``read``), never joined into one buffer."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views = deque(views)

    def read(self, size: int = -1) -> memoryview | bytes:
        if not self._views:
            return b""
        view = self._views[0]
        if 0 <= size < len(view):
            self._views[0] = view[size:]
            return view[:size]
        self._views.popleft()
        return view


class _Frame:
    """One frame in flight: its decoded pieces as they come, then the end (or the error)."""

    def __init__(self, at: int, data: list[memoryview]) -> None:
        self.at = at
        self.data = data  # views of immutable chunks: never changed once launched
        self.pieces: queue.Queue[object] = queue.Queue(queued_for(sum(map(len, data))))

    def decode(self, stop: threading.Event) -> None:
        """Decode the frame into :attr:`pieces` (in a worker thread)."""
        try:
            reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                cast(IO[bytes], _Views(self.data)),  # it only calls read(size)
                read_size=OUT_SIZE,
                read_across_frames=False,
            )
            with reader:
                while not stop.is_set():
                    piece = reader.read(OUT_SIZE)
                    if not piece:
                        break
                    self._put(piece, stop)
            self.data = []
            self._put(_END, stop)
        except zstandard.ZstdError as exc:
            reason = zstd_reason(str(exc))
            self._put(ArchiveInvalid(f"zstd: {reason} in the frame at byte {self.at}"), stop)
        except BaseException as exc:
            # Anything else (a MemoryError allocating a piece): the checking thread waits on
            # this frame's queue, so it must be told, or it would wait for an end that never
            # comes (the pool keeps a worker's exception to itself).
            self._put(exc, stop)

    def _put(self, item: object, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.pieces.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue


def decode_zstd_frames(chunks: Chunks, sink: Sink, workers: int) -> None:
    """``.tar.zst`` (one or more frames, skippable frames allowed, nothing after the last)
    decoded by up to ``workers`` threads; raises ArchiveInvalid as the serial decoder. A
    frame of more than :data:`MAX_FRAME` compressed bytes (not agave's: a single-frame
    archive of another tool) is decoded as it streams, in this thread, as is the rest."""
    state = FrameState()
    framing = Feeder(zstd_frames(state))
    stop = threading.Event()
    flight: deque[_Frame] = deque()
    current: list[memoryview] = []  # the frame's raw bytes so far, views of their chunks
    held = 0  # their length

    def drain(keep: int) -> None:
        """Hand on the output of the oldest frames until ``keep`` are in flight."""
        while len(flight) > keep:
            frame = flight.popleft()
            while (item := frame.pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                sink(memoryview(item))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zstd-frame") as pool:
        try:
            while data := chunks():
                # kept as views until the frame is decoded: a chunk its source may fill
                # again is copied first
                view = memoryview(data if isinstance(data, bytes) else bytes(data))
                pos = 0
                while pos < len(view):
                    start = pos
                    try:
                        pos = framing.feed_to_mark(view, start, len(view))
                    except ArchiveInvalid:
                        drain(0)  # what came before the bad framing goes first, as serially
                        raise
                    # ``current`` starts at a frame's first byte (its magic number): the
                    # framing stops at every end of a frame, where it is handed on
                    if pos > start:
                        current.append(view[start:pos])
                        held += pos - start
                    if framing.at_mark and current:
                        _launch(pool, flight, state.frame_at, current, stop)
                        current, held = [], 0
                    elif held > MAX_FRAME:
                        drain(0)
                        rest = [*map(bytes, current), bytes(view[pos:])]
                        # taken up at the large frame's start: the frames before it counted
                        decode_zstd(_then(rest, chunks), sink, state.frame_at, state.frames - 1)
                        return
                    drain(workers - 1)
            try:
                framing.finish()  # a frame cut short is refused here, before its output
            except ArchiveInvalid:
                drain(0)
                raise
            drain(0)
        finally:
            stop.set()  # threads waiting for the sink end


class DecodeAhead:
    """One decoder, of any format (``decode(chunks, sink)``: the serial decoder's), run in a
    thread of its own a step ahead of the thread that walks what it decodes: the reading thread
    then only walks and scans (docs/architecture.md, "The accounts level" → "Every core").

    Unlike frames decoded apart, it decodes the raw bytes as they come: a bad byte is refused
    as soon as it is decoded, whatever follows it, so a following check's verdict is never held
    back by a source that stops sending. At most :data:`AHEAD` pieces wait; a piece of a buffer
    the decoder fills again is copied first. :meth:`run` hands the pieces to its sink in the
    calling thread and raises what either thread raised; :meth:`close`, once whatever
    ``chunks`` may wait on was stopped (the check's reading of the raw bytes), joins the
    thread."""

    def __init__(self) -> None:
        self._pieces: queue.Queue[object] = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, decode: Callable[[Chunks, Sink], None], chunks: Chunks, sink: Sink) -> None:
        """Decode ``chunks`` with ``decode`` in the thread; hand its pieces to ``sink`` here."""
        self._thread = threading.Thread(
            target=self._decode, args=(decode, chunks), name="decode-ahead", daemon=True
        )
        self._thread.start()
        try:
            while (item := self._pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, memoryview)
                sink(item)
        finally:
            self._stop.set()  # a decoder that waits for room ends; one that reads, at close

    def close(self) -> None:
        """Stop the thread and wait for it (it may be in ``chunks``: stop that first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _decode(self, decode: Callable[[Chunks, Sink], None], chunks: Chunks) -> None:
        try:
            decode(chunks, self._put)
            item: object = _END
        except BaseException as exc:  # raised in the reading thread (unless it stopped)
            item = exc
        self._offer(item)

    def _put(self, piece: memoryview) -> None:
        # a view of bytes stays valid; the serial zstd decoder fills one buffer again
        if not self._offer(piece if isinstance(piece.obj, bytes) else memoryview(bytes(piece))):
            raise ArchiveInvalid(CANCELLED)  # the reader stopped: the decoder ends here

    def _offer(self, item: object) -> bool:
        """Queue ``item`` once there is room; False when the reader stopped first."""
        while not self._stop.is_set():
            try:
                self._pieces.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False


def _then(held: list[bytes], chunks: Chunks) -> Chunks:
    """The chunks ``held`` (the empty ones left out), then those of ``chunks``."""
    left = [piece for piece in held if piece]

    def read() -> bytes:
        return left.pop(0) if left else chunks()

    return read


def _launch(
    pool: ThreadPoolExecutor,
    flight: deque[_Frame],
    at: int,
    data: list[memoryview],
    stop: threading.Event,
) -> None:
    frame = _Frame(at, data)
    flight.append(frame)
    pool.submit(frame.decode, stop)
