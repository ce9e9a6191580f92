"""Serve a file from disk as an :class:`~tracker.serving.httpanswer.Answer`: fast, bounded memory,
no leaked descriptors.

Quart's ``send_file`` is not used (docs/architecture.md#traps-of-the-stack, 1): it reads 8 KiB
per chunk, mishandles suffix ranges and sends ``Accept-Ranges`` only on 206. Here the decisions
come from :func:`tracker.serving.ranges.plan_file_response` and the bytes from ``os.pread`` of
``chunk_size`` (2 MiB by default) in a worker thread, reading one chunk ahead: the next chunk is
read while the server sends the current one, so the two copies (page cache to chunk, chunk to
socket) run on two cores at once. That is ~1.2x the one-chunk-at-a-time speed on one stream, for
the same memory per stream as 4 MiB chunks without read-ahead (two chunks of 2 MiB); see
bench/README.md.

How the pieces fit Quart 0.22 / quart-trio 0.12 / hypercorn 0.18 (read in their source):

- Quart's ASGI layer iterates the body even for HEAD; hypercorn drops the bytes, but a
  file body would still be read to the end. So HEAD (and 304/412/416) get an empty body and
  an explicit ``content-length``. h11 frames a HEAD answer as if it were a GET, so without
  that header it would announce ``transfer-encoding: chunked``.
- Quart sends ``response.response`` as ``async with body: async for chunk in body``, so the
  body is a :class:`tracker.serving.responsebodies.Body` (a ``ResponseBody`` to Quart, see
  tracker/web/delivery.py) whose ``__aexit__`` closes the
  descriptor whatever happens once sending has begun (client gone, read error).
- The descriptor is opened (and fstat'ed) before the headers are planned, so that headers and
  bytes describe the same inode even if the file is replaced by ``os.replace`` meanwhile. If
  the response is dropped before Quart enters the body (the client left while the request
  was still being finished, docs/architecture.md#traps-of-the-stack, 4), a ``weakref.finalize``
  closes the descriptor
  when the response is released.
- No response timeout: Quart's RESPONSE_TIMEOUT would cut long downloads (trap 2); the
  web layer turns every :class:`~tracker.serving.httpanswer.Answer` into a response without one.
- Header names go out lower case (Quart lower-cases them in ``encode_headers``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from functools import partial
from typing import Protocol

import attrs

from tracker.errors import ClientGone, TrackerError
from tracker.serving.httpanswer import Answer
from tracker.serving.ranges import METHODS, RequestHeaders, make_etag, plan_file_response
from tracker.serving.responsebodies import Body, GeneratorBody
from tracker.serving.threads import Background, given_way
from tracker.zerocopy.connection import Connection, FilePiece, piece_size
from tracker.zerocopy.pieces import SMALLEST_PIECE

#: Bytes read per ``os.pread``; large reads are what make a file response fast. A stream
#: holds two chunks at most (the one being sent, the one being read).
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024
#: The last bytes of a zero-copy body are read and sent only once the file is found
#: unchanged (:func:`unchanged`): a piece sent with sendfile cannot be held back once it
#: started. Those are the bytes under the smallest piece that every body ends with anyway,
#: or, when the length is a multiple of it, one smallest piece's worth.
TAIL = SMALLEST_PIECE

# Names put in a Content-Disposition header verbatim (no quoting needed); archive names fit.
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")

OnBytes = Callable[[int], None]
#: Headers added to a file answer: fixed, or made from the opened file's fstat (which may
#: refuse it by raising).
ExtraHeaders = Mapping[str, str] | Callable[[os.stat_result], Mapping[str, str]]


class ChunkBudget:
    """Read-ahead memory shared by every stream of one kind in the process.

    Each stream holds up to ``per_stream`` chunks at once (a file stream two: the one being
    sent, the one being read), so a stream's chunk is ``total / (per_stream * streams)``,
    clamped to ``[smallest, largest]``: one stream reads big chunks (fast), many streams
    share a bounded amount of memory. Measured: 16 cache hits + 4 proxied streams peaked at
    ~166 MB RSS with fixed 2 MiB chunks and ~132 MB with 1 MiB.
    """

    def __init__(
        self,
        total: int = 32 * 1024 * 1024,
        smallest: int = 1024 * 1024,
        largest: int = DEFAULT_CHUNK_SIZE,
        per_stream: int = 2,
    ) -> None:
        self.total, self.smallest, self.largest = total, smallest, largest
        self.per_stream = per_stream
        self.streams = 0

    def chunk(self) -> int:
        """The chunk size for a read now."""
        share = self.total // (self.per_stream * max(1, self.streams))
        return max(self.smallest, min(self.largest, share))


def unchanged(fd: int, opened: os.stat_result, position: int, path: str) -> None:
    """TrackerError when the open file ``fd`` (opened at ``path``) is no longer as it was
    when opened (``opened``), so bytes sent of it may mix two contents (a file overwritten in
    place while it was sent): its size or mtime moved, or its ctime (a write whose mtime was
    set back: no one can set the ctime back) while ``path`` still names it. A file unlinked
    or replaced by a rename over its name moves its ctime too, and its bytes stay what they
    were: its link count moved and its name names another file or none. (The link count
    alone said so: a link added beside a write in place passed for an unlink.) Asked once the
    last bytes are read and before they go, so the client never gets the end of a body that
    changed under it."""
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns) or (
        now.st_ctime_ns != opened.st_ctime_ns
        and (now.st_nlink == opened.st_nlink or _named(path, now))
    ):
        raise TrackerError(f"file changed while being sent (at byte {position})")


def _named(path: str, st: os.stat_result) -> bool:
    """True when ``path`` still names the file of ``st``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino)


@attrs.frozen
class _Last:
    """What the last read of a body checks (:func:`unchanged`): the body's ``end``, the
    file's fstat when it was ``opened``, the ``path`` it was opened at."""

    end: int
    opened: os.stat_result
    path: str


def _read_checked(fd: int, size: int, position: int, last: _Last) -> bytes:
    """``size`` bytes at ``position`` of ``fd``, a duplicate of a body's descriptor that
    this closes (blocking: a worker thread). When they are the body's last bytes, only
    while the file is as it was opened (:func:`unchanged`), asked here, in the read's own
    thread: no hop of its own (a thread each was ~35 us an answer), never on the event
    loop (an ``fstat`` or ``stat`` of a ledger on a hung mount froze it at the end of each
    download: docs/configuration.md, "Paths on a hung mount"). On its own duplicate, the
    read is given up on cancellation: its body closes its descriptor at once, and the
    thread closes this one however late the file system answers (waited for, a hung read
    held the client's connection and its slot after the client left, and a stop past its
    grace)."""
    try:
        chunk = os.pread(fd, size, position)
        if len(chunk) == size and position + size == last.end:
            unchanged(fd, last.opened, position, last.path)
        return chunk
    finally:
        os.close(fd)


@attrs.define(eq=False)
class _FileBody(GeneratorBody):
    """``length`` bytes of the open file ``fd`` from ``offset`` (``opened``: its fstat when it
    was opened at ``path``, for :func:`unchanged`; ``on_bytes(n)`` after each ``n`` bytes
    went). The body
    owns the descriptor: it is closed exactly once, when the body ends or, never sent, when
    the body is collected."""

    _fd: int
    _offset: int
    _length: int
    _on_bytes: OnBytes | None
    _opened: os.stat_result
    _path: str
    _close: Callable[[], object] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # finalize runs os.close at most once, so the explicit close and garbage collection
        # can never close a reused descriptor number twice.
        self._close = weakref.finalize(self, os.close, self._fd)

    async def _finish(self, error: BaseException | None) -> None:
        self._close()

    def _read(self, size: int, position: int) -> Background[bytes]:
        """Start :func:`_read_checked` of ``size`` bytes at ``position`` in a thread of its own
        (trio's limiter is not used: each stream has at most one read in flight), through
        a duplicate of the descriptor (no file system call: a hung mount cannot hold it),
        so that the body's own is closed without waiting for the read."""
        last = _Last(self._offset + self._length, self._opened, self._path)
        fd = os.dup(self._fd)
        try:
            return Background(partial(_read_checked, fd, size, position, last), name="file read")
        except BaseException:  # no thread started: nobody else closes the duplicate
            os.close(fd)
            raise


@attrs.define(eq=False)
class _PreadBody(_FileBody):
    """A file's bytes read ``chunk_size`` at a time (a ``budget``'s chunk instead, when
    given); the last chunk goes only while the file is as it was opened."""

    _chunk_size: int
    _budget: ChunkBudget | None = None

    def _next_size(self, left: int) -> int:
        size = self._budget.chunk() if self._budget is not None else self._chunk_size
        return min(size, left)

    async def _start(self) -> None:
        if self._budget is not None:
            self._budget.streams += 1

    async def _finish(self, error: BaseException | None) -> None:
        if self._budget is not None:
            self._budget.streams -= 1
        await super()._finish(error)

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        position, end = self._offset, self._offset + self._length
        # Read-ahead: the next chunk is read in a worker thread while the server sends the
        # current one, so the two copies (page cache -> chunk, chunk -> socket) overlap.
        ahead: Background[bytes] | None = self._read(self._next_size(end - position), position)
        try:
            while ahead is not None:
                chunk = await ahead.result()
                if not chunk:
                    raise TrackerError(f"file shrank while being sent: ended at byte {position}")
                position += len(chunk)
                ahead = None
                if position < end:
                    ahead = self._read(self._next_size(end - position), position)
                size = len(chunk)
                yield chunk
                del chunk  # sent: free it now, not after the next read has arrived
                if self._on_bytes is not None:
                    self._on_bytes(size)
        finally:
            # A read still in flight reads its own duplicate: not waited for.
            self._close()


@attrs.define(eq=False)
class _SendfileBody(_FileBody):
    """A file's bytes sent by the server with sendfile on the client's ``connection``.

    Yields placeholders (see tracker/zerocopy/connection.py) for pieces of 64 KiB to 128 MiB,
    and reads the last bytes itself (those under 64 KiB, else the last 64 KiB: :data:`TAIL`): they
    go only while the file is as it was opened (``opened``: :func:`unchanged`). Holds no
    file data in memory but that tail.
    """

    _connection: Connection

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        position, end = self._offset, self._offset + self._length
        # the tail is read, checked, then sent
        pieces_end = end - (self._length % TAIL or min(TAIL, self._length))
        while position < end:
            size = piece_size(pieces_end - position)
            if size:
                piece = FilePiece(size, fd=self._fd, offset=position)
                yield self._connection.stage(piece)
                self._connection.finish(piece, self._on_bytes)
            else:
                size = (pieces_end if position < pieces_end else end) - position
                # read (and, the last bytes, checked) in one thread, given up on cancellation
                chunk = await self._read(size, position).result()
                if len(chunk) != size:
                    raise TrackerError(f"file shrank while being sent: ended at byte {position}")
                yield chunk
                if self._connection.broken:
                    # hypercorn keeps a failed send to itself: without this the answer
                    # ended as complete (tracker/zerocopy/README.md, assumption 10)
                    raise ClientGone("client connection closed during the last bytes")
            position += size
            if self._on_bytes is not None:
                self._on_bytes(size)


@attrs.define(eq=False)
class OpenFile:
    """A regular file opened to be answered (read-only, no link followed: :func:`open_file`):
    its descriptor, its fstat when it was opened, the ``path`` it was opened at. It owns the
    descriptor until an answer takes it (:func:`file_answer`): closed once, by
    :meth:`close` or when collected."""

    path: str
    fd: int
    st: os.stat_result
    _closer: weakref.finalize = attrs.field(init=False)  # type: ignore[type-arg]

    def __attrs_post_init__(self) -> None:
        self._closer = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        """Close the descriptor (once; nothing when an answer took it)."""
        self._closer()

    def take(self) -> int:
        """The descriptor, its owner the caller from now on (:func:`file_answer`'s body)."""
        if self._closer.detach() is None:
            raise ValueError(f"{self.path}: the file was closed or taken already")
        return self.fd


def open_file(path: str) -> OpenFile:
    """The regular file at ``path`` opened read-only, with its fstat. Blocking: run it in a
    worker thread (:func:`opened`). Raises OSError (FileNotFoundError, PermissionError,
    IsADirectoryError, ELOOP for a symlink, EINVAL for anything else that is not a regular
    file)."""
    # O_NOFOLLOW: a name swapped for a symlink since it was listed would serve whatever the
    # link points at (ELOOP instead). O_NONBLOCK keeps a FIFO put at the path from blocking
    # the open; it changes nothing for the regular file we require.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # OSError(EISDIR, ...) is an IsADirectoryError; anything else is EINVAL.
            code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
            raise OSError(code, "not a regular file", path)
        if hasattr(os, "posix_fadvise"):  # Linux: larger readahead for sequential reads
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(path, fd, st)


async def opened(path: str) -> OpenFile:
    """:func:`open_file` in a thread of its own, given up on cancellation: an ``open`` on a
    hung NFS or FUSE mount waits in the kernel for as long as the mount hangs, and its
    request leaves at once; the descriptor opened once the mount answers is closed then
    (:func:`tracker.serving.threads.given_way`). Raises TimeoutError at once, no thread
    started, while an open in the same directory has hung for a while."""
    place = os.path.dirname(path)
    return await given_way(partial(open_file, path), OpenFile.close, name="file open", place=place)


def content_disposition(file_name: str) -> str:
    """The ``content-disposition`` that names the saved file (ValueError: not a safe name),
    for :func:`file_response`'s ``extra_headers``."""
    if not _SAFE_FILE_NAME.fullmatch(file_name):
        raise ValueError(f"file name not safe for content-disposition: {file_name!r}")
    return f'attachment; filename="{file_name}"'


class FileRequest(Protocol):
    """What a file's answer reads of a request: its method and its header lines (repeated
    ones included: two ``Range`` lines make no range). A proxy's ``Ask`` is one, and so is
    :class:`PlainRequest`."""

    @property
    def method(self) -> str: ...

    @property
    def lines(self) -> RequestHeaders: ...


@attrs.frozen
class PlainRequest:
    """A :class:`FileRequest` from a method and header lines."""

    method: str
    lines: RequestHeaders = ()


async def file_response(
    path: str,
    request: FileRequest,
    *,
    connection: Connection | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_bytes: OnBytes | None = None,
    budget: ChunkBudget | None = None,
    extra_headers: ExtraHeaders | None = None,
) -> Answer:
    """Answer a GET or HEAD of the regular file at ``path`` (200/206/304/412/416): the file
    opened in a thread of its own (:func:`opened`), then :func:`file_answer`, whose
    arguments these are.

    Raises OSError (FileNotFoundError, PermissionError, IsADirectoryError, ELOOP for a
    symlink, ...) when the file cannot be opened or is not a regular file; ValueError for a
    method other than GET/HEAD or a non-positive ``chunk_size``, before anything is opened.
    On cancellation the open is given up at once (a hung mount's): its descriptor is closed
    whenever it comes."""
    _check_asked(request, chunk_size)
    found = await opened(path)
    return file_answer(
        found,
        request,
        connection=connection,
        chunk_size=chunk_size,
        on_bytes=on_bytes,
        budget=budget,
        extra_headers=extra_headers,
    )


def _check_asked(request: FileRequest, chunk_size: int) -> None:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive: {chunk_size}")
    if request.method not in METHODS:
        raise ValueError(f"cannot serve a file to {request.method!r}")


def file_answer(
    found: OpenFile,
    request: FileRequest,
    *,
    connection: Connection | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_bytes: OnBytes | None = None,
    budget: ChunkBudget | None = None,
    extra_headers: ExtraHeaders | None = None,
) -> Answer:
    """Answer a GET or HEAD of the file ``found`` (opened by :func:`open_file`), with no
    call to the file system: the answer's descriptor is taken from ``found``.

    ``request`` is what was asked (its method and header lines); ``connection`` the client's
    zero-copy connection, when it has one. The file's size, mtime and inode (its fstat when
    opened) give ``content-length``, ``last-modified`` and ``etag``, and the body streams
    that same inode in ``chunk_size`` reads even if the path is replaced meanwhile (with a
    ``connection``, one served by :mod:`tracker.zerocopy.server`: with ``sendfile``, no
    reads, no buffers). ``on_bytes(n)`` is called after each chunk of ``n`` bytes has been
    handed to the server (metrics). With a ``budget`` the chunk size follows it instead of
    ``chunk_size`` (see :class:`ChunkBudget`). ``extra_headers`` are added to a 200 or 206
    (e.g. the file's ``repr-digest``, or :func:`content_disposition`); given as a function,
    it is asked of the opened file's status before anything is planned, and raises
    (RequestError) to refuse that very file (a local file's check:
    :mod:`tracker.proof.background.localfiles`).

    Only a GET answered 200/206 keeps the descriptor: it is closed when the body ends, fails
    or is abandoned (client disconnect), or when the unsent response is released. HEAD,
    bodiless answers and a refusal close it before returning. While the body streams, a
    file that shrinks under it raises TrackerError into the server, which aborts the
    connection (never a silently short body); so does one changed in place (its size, mtime
    or ctime moved), before its last bytes. Raises ValueError for a method other than
    GET/HEAD or a non-positive ``chunk_size``.
    """
    method, headers, st = request.method, request.lines, found.st
    try:
        _check_asked(request, chunk_size)
        extra = extra_headers(st) if callable(extra_headers) else extra_headers
        etag = make_etag(st.st_size, st.st_mtime_ns, st.st_ino)
        # now: Last-Modified may not be later than the Date the server adds to this answer
        # (RFC 9110 8.8.2.1; docs/http-api.md, "Archive answers").
        plan = plan_file_response(method, headers, st.st_size, st.st_mtime, etag, now=time.time())
    except BaseException:
        found.close()
        raise
    body: Body | bytes = b""
    if plan.send_body and plan.length > 0:
        fd, path = found.take(), found.path
        if connection is not None:
            body = _SendfileBody(fd, plan.offset, plan.length, on_bytes, st, path, connection)
        else:
            body = _PreadBody(fd, plan.offset, plan.length, on_bytes, st, path, chunk_size, budget)
    else:
        found.close()
    # Exactly the planned headers (no text/html default type, no content-length 0 of an
    # empty body: tracker/web/delivery.py sends these only).
    answer = Answer(plan.status, dict(plan.headers), body)
    if extra and plan.status in (200, 206):
        answer.headers.update(extra)
    return answer
