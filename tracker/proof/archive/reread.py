"""The second read of an archive on disk, where the accounts proof hashes its newest accounts.

:class:`ArchiveReread` is the ``reread`` that
:meth:`tracker.proof.accounts.accountsproof.AccountsProof. finish` asks for the data of a storage
member from an offset on (docs/architecture.md, "The accounts level"). It decodes the archive
(already checked, on disk) once, from its start, and keeps its place: the proof asks for members in
the order they came, so all its asks cost at most one more decompression of the archive up to the
last member asked for, never one per member; a member before the current place (not asked by the
proof) starts over. Member data before the wanted offset, and members not asked for, are decoded and
dropped, not copied. The raw bytes it reads are held to those the check read
(:mod:`tracker.proof.archive.binding`, :meth:`ArchiveReread.confirm`). A multi-frame
``.tar.zst`` is decoded by ``decoders`` threads where the proof has more than one
(:class:`_Frames`: :mod:`tracker.proof.archive.framedecode`, as the check's read of a file on
disk), so that on a host of many cores the second read is not bound by its decoding.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import gzip
import io
import lzma
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar, cast

import lz4.frame
import zstandard

from tracker.core.libc import keep_large_buffers
from tracker.core.snapshots import parse_archive_name
from tracker.errors import ArchiveInvalid
from tracker.proof.archive.binding import CHANGED, BlockCheck
from tracker.proof.archive.checklimits import ZSTD_MAX_WINDOW
from tracker.proof.archive.framedecode import decode_zstd_frames
from tracker.proof.archive.tarwalk import BLOCK, ZERO_BLOCK, read_header

if TYPE_CHECKING:
    from tracker.proof.accounts.accountsprover import StoragesProver
    from tracker.proof.accounts.budget import AccountsLimits

#: Bytes read from the decoded stream at once: a storage parser's piece, so that each piece it asks
#: for is one chunk, taken as a view rather than copied (proof.formats.parsing.Bulk).
STEP = 4 * 1024 * 1024  # proof.formats.storages.PIECE (numpy is not loaded here)
#: Raw chunks of STEP bytes read and hashed ahead of the decoder.
AHEAD = 2
#: Decoded pieces (whole frames' output, 4 MiB at most) ready ahead of the walk when the
#: frames decode apart (:class:`_Frames`).
PIECES_AHEAD = 2


_C = TypeVar("_C", bytes, memoryview)


class Handover(Generic[_C]):
    """Chunks a thread of its own makes, handed to the reading thread in order, at most
    ``ahead`` waiting (the maker waits for room). The maker ends with None (the end) or an
    exception (what failed); the reader is given either again at every later take. Once
    stopped, :meth:`put` takes nothing more and says so, and :meth:`take` gives the end (a
    reader in a thread of its own, stopped by another: ``archivecheck._Prefetch``'s hash)."""

    def __init__(self, ahead: int) -> None:
        self._room = ahead
        self._ready: collections.deque[_C | BaseException | None] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._ended: BaseException | bool = False  # True: the end was taken

    def put(self, item: _C | BaseException | None) -> bool:
        """Queue ``item`` once there is room; False when the reader stopped meanwhile."""
        with self._cond:
            while len(self._ready) >= self._room and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            self._ready.append(item)
            self._cond.notify_all()
            return True

    def take(self) -> _C | None:
        """The next chunk (None at the end); raises what the maker failed with."""
        if self._ended is False:
            with self._cond:
                while not self._ready and not self._stopped:
                    self._cond.wait()
                item = None if self._stopped else self._ready.popleft()
                self._cond.notify_all()
            if item is not None and not isinstance(item, BaseException):
                return item
            self._ended = True if item is None else item
        if isinstance(self._ended, BaseException):
            raise self._ended
        return None

    def stop(self) -> None:
        """The reader takes no more: a waiting maker is let go."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class _Bound(io.RawIOBase):
    """The raw bytes of a file as they are read, held to the check's (``first``: its blocks'
    digests and size; :mod:`.binding`); the file ends where the check's read ended.

    A thread of its own reads the file and takes each block's BLAKE3 :data:`AHEAD` chunks
    ahead of the decoder (``os.read`` and blake3 release the GIL): the check's thread then
    only decodes, parses and hashes accounts, and a second read of data-heavy storages, where
    reading and holding the bytes is much of the work, takes two cores instead of one."""

    def __init__(self, raw: IO[bytes], first: tuple[bytes, int, int] | None) -> None:
        self._raw = raw
        self.check = BlockCheck(*first) if first is not None else None
        self._left = first[1] if first is not None else None
        self._chunk = memoryview(b"")
        self._ahead: Handover[bytes] = Handover(AHEAD)
        self._thread = threading.Thread(target=self._run, name="second-read", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if not len(self._chunk):
            data = self._next()
            if not data:
                return 0
            self._chunk = memoryview(data)
        count = min(len(view), len(self._chunk))
        view[:count] = self._chunk[:count]
        self._chunk = self._chunk[count:]
        return count

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all of a chunk read ahead: ``size`` -1); a whole chunk
        when ``size`` takes it, not copied (the zstd reader asks for STEP at once)."""
        if not len(self._chunk):
            data = self._next()
            if size < 0 or size >= len(data):
                return data
            self._chunk = memoryview(data)
        count = len(self._chunk) if size < 0 else min(size, len(self._chunk))
        taken = bytes(self._chunk[:count])
        self._chunk = self._chunk[count:]
        return taken

    def close(self) -> None:
        self._ahead.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()  # within one chunk's read and hash
        self._raw.close()
        super().close()

    def _next(self) -> bytes:
        """The next chunk read ahead (b"" at the end); raises what reading it raised."""
        return self._ahead.take() or b""

    def _run(self) -> None:
        try:
            while True:
                want = STEP if self._left is None else min(STEP, self._left)
                data = self._raw.read(want) if want else b""
                if self._left is not None:
                    self._left -= len(data)
                if data and self.check is not None:
                    self.check.update(data)
                if not self._ahead.put(data or None) or not data:
                    return
        except BaseException as exc:  # handed to the reader, in its thread
            self._ahead.put(exc)


#: Why :class:`_Frames` stops decoding: its reader halted it (never seen by a reader).
_HALTED = "second read: halted"


class _Frames(io.RawIOBase):
    """The decoded stream of a multi-frame ``.tar.zst`` whose raw bytes ``raw`` gives, its
    frames decoded by ``workers`` threads (:func:`~tracker.proof.archive.framedecode.
    decode_zstd_frames`, driven from a thread of its own) and read here in order.

    The decoded pieces (whole frames' output, 4 MiB at most) are immutable bytes: a read
    returns a view of the piece, never a copy, and :data:`PIECES_AHEAD` pieces wait at most.
    :meth:`halt` stops the decoding and lets go of ``raw`` (which it does not close), so
    that its last block can be read to its end in the caller's thread."""

    def __init__(self, raw: _Bound, workers: int) -> None:
        self._raw = raw
        self._chunk = memoryview(b"")
        self._ahead: Handover[memoryview] = Handover(PIECES_AHEAD)
        self._thread = threading.Thread(
            target=self._run, args=(workers,), name="second-read-frames", daemon=True
        )
        self._thread.start()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> memoryview:
        """Up to ``size`` decoded bytes (a whole piece: -1), a view; empty at the end."""
        if not len(self._chunk):
            self._chunk = self._next()
        count = len(self._chunk) if size < 0 else min(size, len(self._chunk))
        taken = self._chunk[:count]
        self._chunk = self._chunk[count:]
        return taken

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def halt(self) -> None:
        """Stop decoding and wait for the thread (within one piece's hand-over)."""
        self._ahead.stop()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.halt()
        super().close()

    def _next(self) -> memoryview:
        piece = self._ahead.take()
        return piece if piece is not None else memoryview(b"")

    def _run(self, workers: int) -> None:
        try:
            decode_zstd_frames(lambda: self._raw.read(-1), self._piece, workers)
        except BaseException as exc:  # handed to the reader, in its thread, unless halted
            self._ahead.put(exc)
        else:
            self._ahead.put(None)

    def _piece(self, piece: memoryview) -> None:
        """Hand on a decoded piece (an empty one is not the end: left out); once the reader
        halted, ArchiveInvalid ends the decoding (never seen by the reader)."""
        if len(piece) and not self._ahead.put(piece):
            raise ArchiveInvalid(_HALTED)


def _open(
    path: str, ext: str, first: tuple[bytes, int, int] | None, decoders: int = 1
) -> tuple[IO[bytes], _Bound]:
    """The decoded stream of the archive at ``path`` (its zstd frames decoded by
    ``decoders`` threads), and its raw bytes held to the check's (the caller closes both: the
    compression modules leave a file object they were given open)."""
    hashing = _Bound(open(path, "rb", buffering=0), first)  # noqa: SIM115 (closed with the reader)
    if ext == ".tar.zst" and decoders > 1:
        return cast(IO[bytes], _Frames(hashing, decoders)), hashing
    if ext == ".tar.zst":  # asks for whole chunks: nothing copied on the way
        reader: Any = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            cast(IO[bytes], hashing), read_size=STEP, read_across_frames=True, closefd=True
        )
        return reader, hashing
    raw = io.BufferedReader(hashing, STEP)
    openers: dict[str, Any] = {
        ".tar.lz4": lz4.frame.open,
        ".tar.bz2": bz2.open,
        ".tar.gz": gzip.open,
        ".tar.xz": lzma.open,
    }
    if ext in openers:
        return openers[ext](raw, "rb"), hashing
    return raw, hashing


def accounts_prover(
    name: str,
    limits: AccountsLimits | None,
    path: str,
    cancelled: Callable[[], bool] | None = None,
    decoders: int | None = None,
) -> StoragesProver | None:
    """The accounts level's part of the check of the archive ``name`` at ``path`` (a path
    that opens the checked file again, e.g. ``/proc/self/fd/N``): a full's, when ``limits``
    (its memory budget, temporary directory, optional bound) are given; None for an
    incremental or when off. Its accounts are hashed in a worker process
    (``proof.accounts.hashworker``); the caller closes it (``StoragesProver.close``) when the check
    is over, whichever way it ended; ``cancelled()`` ends a wait for the budget's room or on
    a hashing process.
    ``decoders``: the threads the second read decodes zstd frames on, held by the caller (the
    check's own, free again once its first read is over); None: the second read takes its
    own from the limits' (``FrameThreads``) and gives them back when it closes."""
    parsed = parse_archive_name(name)
    if limits is None or parsed is None or parsed.base_slot:
        return None
    keep_large_buffers()  # the proof's buffers reused from the first proof of the process on
    # Imported where a proof runs: numpy (about 12 MB of RSS) is then loaded by a tracker that
    # proves an archive, never by one that only serves.
    from tracker.proof.accounts.accountsprover import StoragesProver
    from tracker.proof.accounts.budget import FrameThreads
    from tracker.proof.accounts.hashworker import HashPool

    def reread(first: tuple[bytes, int, int] | None) -> ArchiveReread:
        if decoders is not None:
            return ArchiveReread(path, parsed.ext, first, decoders, cancelled=cancelled)
        frames = FrameThreads(limits)
        return ArchiveReread(
            path, parsed.ext, first, frames.count, frames.release, cancelled=cancelled
        )

    return StoragesProver(
        limits,
        reread,
        # a wait on a stuck child ends once the check is cancelled (a stop waits 10 s)
        lambda: HashPool(limits.hash_workers, limits.slots, cancelled=cancelled),
        cancelled=cancelled,
    )


@contextlib.contextmanager
def proving(accounts: StoragesProver | None) -> Iterator[None]:
    """The span of a check that proves with ``accounts`` (None: nothing): its summer (a
    worker process, once the storages came) ends with it, whichever way it ends."""
    try:
        yield
    finally:
        if accounts is not None:
            accounts.close()


class ArchiveReread:
    """Member data of the archive at ``path`` (extension ``ext``, e.g. ``.tar.zst``), asked
    for in archive order, its zstd frames decoded by ``decoders`` threads; :meth:`close` when
    done."""

    def __init__(
        self,
        path: str,
        ext: str,
        first: tuple[bytes, int, int] | None = None,
        decoders: int = 1,
        release: Callable[[], None] | None = None,
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self._path = path
        # the check's: each piece read again looks (a mainnet full is minutes of every core)
        self._cancelled = cancelled
        self._release = release  # what close gives back: the frame threads it was lent
        self._ext = ext
        self._decoders = decoders
        self._first = first  # the first read's block digests and size
        self._stream: IO[bytes] | None = None
        self._hashing: _Bound | None = None
        self._at = 0  # decoded offset of the next header
        self._seen: set[str] = set()

    def close(self) -> None:
        """Close the decoded stream; give back what it was lent."""
        self._close_stream()
        if self._release is not None:
            self._release()
            self._release = None

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._hashing is not None:
            self._hashing.close()

    def __call__(self, name: str, start: int) -> Iterator[bytes]:
        """The data of member ``name`` from byte ``start`` to its end, in pieces."""
        if self._stream is None or name in self._seen:
            self._close_stream()
            self._stream, self._hashing = _open(self._path, self._ext, self._first, self._decoders)
            self._at = 0
            self._seen = set()
        size = self._find(self._stream, name)
        padded = -(-size // BLOCK) * BLOCK
        if not self._skip(self._stream, min(start, size)):
            raise ArchiveInvalid("check cancelled")
        left = max(0, size - start)
        try:
            while left:
                self._stop_if_cancelled()
                piece = self._stream.read(min(STEP, left))
                if not piece:
                    raise ArchiveInvalid(f"second read: the archive ends inside {name}")
                left -= len(piece)
                yield piece
        finally:  # (also as the generator is closed: it raises nothing here)
            if not self._skip(self._stream, padded - size + left):
                self._close_stream()  # cancelled inside the member: read anew if asked
            self._at += padded + BLOCK

    def confirm(self) -> None:
        """ArchiveInvalid unless every block of raw bytes the second read read is the one the
        check read (the last one read to its end now; :mod:`.binding`). A proof that reads
        the archive twice holds its second read to its first, so that bytes written in
        between can never be proven under the first read's SHA-256."""
        if self._hashing is None or self._hashing.check is None:
            return
        if isinstance(self._stream, _Frames):
            self._stream.halt()  # its thread reads the raw bytes no more: they are read here
        check = self._hashing.check
        check.confirm()  # a block its reading thread read ahead differed
        while left := check.left_in_block():
            rest = bytearray(left)
            if not self._hashing.readinto(rest):  # the file ends before the check's did
                raise ArchiveInvalid(CHANGED)
        check.confirm()

    def _stop_if_cancelled(self) -> None:
        if self._cancel_seen():
            raise ArchiveInvalid("check cancelled")

    def _cancel_seen(self) -> bool:
        return self._cancelled is not None and self._cancelled()

    def _find(self, stream: IO[bytes], name: str) -> int:
        # The archive passed the check: every header is one read_header takes, read the one
        # way the check read it (docs/architecture.md, "One reading of the tar stream").
        while True:
            self._stop_if_cancelled()
            block = self._exactly(stream, BLOCK)
            if block == ZERO_BLOCK:
                raise ArchiveInvalid(f"second read: no member {name}")
            header = read_header(block, self._at)
            self._seen.add(header.name)
            if header.name == name and not header.directory:
                return header.size
            padded = -(-header.size // BLOCK) * BLOCK
            if not self._skip(stream, padded):
                raise ArchiveInvalid("check cancelled")
            self._at += BLOCK + padded

    @staticmethod
    def _exactly(stream: IO[bytes], count: int) -> bytes:
        # a read may end where a decoded piece does (a frame's end, :class:`_Frames`)
        parts = [bytes(stream.read(count))]
        got = len(parts[0])
        while got < count and (part := bytes(stream.read(count - got))):
            parts.append(part)
            got += len(part)
        if got != count:
            raise ArchiveInvalid("second read: the archive ends early")
        return b"".join(parts)

    def _skip(self, stream: IO[bytes], count: int) -> bool:
        """Read ``count`` bytes of ``stream`` past; False when the check was cancelled
        meanwhile (the stream left where it stopped). A member not asked for may decode to a
        hundred GiB (the check bounded the ratio by the bytes read before it, not the
        member): a cancel is seen within a step."""
        while count > 0:
            if self._cancel_seen():
                return False
            piece = stream.read(min(STEP, count))
            if not piece:
                return True  # the archive ends: the next read of it says so
            count -= len(piece)
        return True
