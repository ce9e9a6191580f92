"""Shared in-flight downloads (``cache_share_inflight``): clients read a refresh's temp file.

While a detached refresh (:mod:`tracker.proxy.transfers`) writes an archive to its temp file at the
upstream's pace, every GET of that file, ranges included, is answered from the temp file::

    upstream ──► detached pump ──► temp file ──► reader 1 (os.pread, its own pace)
                   (one stream)       │     └──► reader 2 ...
                                      └── written / ended / verified (Refresh)

A reader opens the temp file when it joins and keeps that descriptor to the end: the rename
that promotes the file keeps the inode, so its reads go on. It sends what is on disk at once
(a late joiner starts with everything written so far), then waits for the refresh's progress.
It is told the full ``content-length`` up front; if the refresh fails, its body raises and
the server breaks the connection (never a short 200). The last byte of the file is sent only
once the refresh ended verified (see :meth:`tracker.cache.store.Refresh.readable`).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.errors import UpstreamError
from tracker.serving.httpanswer import Answer
from tracker.serving.ranges import UNSATISFIABLE, parse_range
from tracker.serving.responsebodies import Body, GeneratorBody
from tracker.zerocopy.connection import Connection, FilePiece, piece_size

#: Bytes read per ``os.pread`` (as for cached files).
CHUNK_SIZE = 4 * 1024 * 1024


def _nothing(*_args: object) -> None:
    return None


@attrs.define(eq=False)
class SharedRefresh:
    """A detached refresh that clients may read while it runs.

    ``stop`` cancels the refresh's pump; with ``keep`` false it is cancelled when the last
    reader leaves (``cache_complete_on_disconnect: false``). ``ready`` is set once the
    refresh is open (:meth:`announce`: size and headers known) or failed to (:meth:`fail`).
    """

    refresh: Refresh
    stop: trio.CancelScope
    keep: bool = True
    ready: trio.Event = attrs.Factory(trio.Event)
    #: The client headers of the upstream's 200 (content-length included).
    headers: dict[str, str] = attrs.Factory(dict)
    readers: int = 0
    _open: bool = False

    @property
    def joinable(self) -> bool:
        """True while a new reader may join: announced, not ended, not being stopped."""
        return self._open and not self.refresh.ended.is_set()

    def announce(self, headers: dict[str, str]) -> None:
        """The refresh is open: readers may join, with these response headers."""
        self.headers = dict(headers)
        self._open = True
        self.ready.set()

    def fail(self) -> None:
        """The refresh could not start (or is being stopped): nobody may join."""
        self._open = False
        self.ready.set()

    def reader_joined(self) -> None:
        self.readers += 1

    def reader_left(self) -> None:
        """A reader is done; the last one stops a refresh that is not to be kept."""
        self.readers -= 1
        if self.readers <= 0 and not self.keep and not self.refresh.ended.is_set():
            self.fail()
            self.stop.cancel()


async def join(
    shared: SharedRefresh,
    method: str,
    range_header: str | None,
    *,
    served: Callable[[int], None] = _nothing,
    chunk_size: int = CHUNK_SIZE,
    connection: Connection | None = None,
) -> Answer | None:
    """Answer a GET (``range_header`` honoured) from ``shared``'s temp file.

    Waits until the refresh is open. Returns None when it cannot be read (it failed or
    ended meanwhile: the caller serves the request another way); otherwise a 200, 206 or 416
    response whose body follows the refresh. With the client's zero-copy ``connection``
    the bytes on disk go out with sendfile, else through ``os.pread``. Cancellation (client
    gone) closes what was opened.
    """
    if method != "GET":
        return None
    await shared.ready.wait()
    refresh = shared.refresh
    if not shared.joinable or not refresh.temp:
        return None
    try:
        fd = await trio.to_thread.run_sync(_open_reader, refresh.temp)
    except OSError:
        return None  # promoted or removed meanwhile
    lease = _Lease(fd, shared)  # before any checkpoint: the descriptor has an owner
    if refresh.failed:
        lease.release()
        return None
    response, offset, length = _plan(shared.headers, refresh.size, range_header)
    if length == 0:
        lease.release()
        return response
    response.body = SharedBody(lease, refresh, offset, length, chunk_size, served, connection)
    return response


def _open_reader(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    if hasattr(os, "posix_fadvise"):  # Linux: larger readahead for sequential reads
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def _plan(
    upstream_headers: dict[str, str], size: int, range_header: str | None
) -> tuple[Answer, int, int]:
    """Status and headers for a reader, and the bytes to send (offset, length)."""
    headers = dict(upstream_headers)
    headers["accept-ranges"] = "bytes"
    headers["content-length"] = str(size)
    wanted = parse_range(range_header, size)
    status, offset, length = 200, 0, size
    if wanted is UNSATISFIABLE:
        status, length = 416, 0
        headers.update({"content-range": f"bytes */{size}", "content-length": "0"})
    elif wanted is not None:
        status, offset, length = 206, wanted.start, wanted.length
        headers["content-range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
        headers["content-length"] = str(length)
    return Answer(status, headers), offset, length


class _Lease:
    """A reader's descriptor of the temp file, and its place among the refresh's readers.

    Released exactly once: explicitly, or when the lease is collected unused (the client
    left before the server started the body, docs/architecture.md#traps-of-the-stack, 4), which may
    happen in another
    thread: the reader count is then updated through the trio token.
    """

    def __init__(self, fd: int, shared: SharedRefresh) -> None:
        self.fd = fd
        self._shared = shared
        shared.reader_joined()
        token = trio.lowlevel.current_trio_token()
        self._finalizer = weakref.finalize(self, _collected, fd, token, shared.reader_left)

    def release(self) -> None:
        """Close the descriptor and leave the readers (idempotent)."""
        if self._finalizer.detach() is not None:
            os.close(self.fd)
            self._shared.reader_left()


def _collected(fd: int, token: trio.lowlevel.TrioToken, left: Callable[[], None]) -> None:
    os.close(fd)
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(left)


@attrs.define(eq=False)
class SharedBody(GeneratorBody):
    """``length`` bytes from ``offset`` of a refresh's temp file, sent as they arrive:
    with sendfile pieces when ``connection`` (the client's zero-copy connection) is given."""

    _lease: _Lease
    _refresh: Refresh
    _offset: int
    _length: int
    _chunk_size: int
    #: Told the bytes of each piece sent (metrics; synchronous and cheap).
    _served: Callable[[int], None]
    _connection: Connection | None = None

    async def _finish(self, error: BaseException | None) -> None:
        self._lease.release()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        position, end = self._offset, self._offset + self._length
        while position < end:
            limit = await _readable(self._refresh, position, end)
            connection = self._connection
            size = piece_size(limit - position) if connection is not None else 0
            if size and connection is not None:
                piece = FilePiece(size, fd=self._lease.fd, offset=position)
                yield connection.stage(piece)
                connection.finish(piece)
            else:
                size = min(self._chunk_size, limit - position)
                # Not abandonable on cancel (trio's default): the descriptor is closed only
                # after the thread has finished reading from it.
                chunk = await trio.to_thread.run_sync(os.pread, self._lease.fd, size, position)
                if not chunk:
                    raise UpstreamError(f"the refresh's file ended at byte {position}")
                size = len(chunk)
                yield chunk
            position += size
            self._served(size)


async def _readable(refresh: Refresh, position: int, end: int) -> int:
    """How far (up to ``end``) a reader at ``position`` may read; waits for progress.
    Raises UpstreamError when the refresh failed."""
    while True:
        if refresh.failed:
            raise UpstreamError("the cache refresh this download followed failed")
        limit = min(end, refresh.readable())
        if limit > position:
            return limit
        await refresh.wait_progress()


@attrs.define(eq=False)
class LateBody(GeneratorBody):
    """The body of an early head (README.md#clients) whose bytes are found only later: ``resolve``
    waits for the shared refresh to open and returns the body to pass on, or raises
    UpstreamError (the server then breaks the connection: never a short 200)."""

    _resolve: Callable[[], Awaitable[Body]]

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        inner = await self._resolve()
        async with inner as chunks:
            async for chunk in chunks:
                yield chunk
