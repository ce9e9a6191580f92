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
once the refresh ended verified (see :meth:`tracker.cache.store.Refresh.readable`), and
while the archive is checked, so is the last byte of every range
(:meth:`tracker.cache.refresh.Refresh.range_end`): a 206 of bytes not checked yet never
looks complete.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncGenerator, Callable

import trio

from tracker.cache.refresh import Refresh
from tracker.errors import UpstreamError
from tracker.serving.httpanswer import Answer
from tracker.serving.ranges import UNSATISFIABLE, parse_range
from tracker.serving.responsebodies import GeneratorBody
from tracker.zerocopy.connection import Connection, FilePiece, piece_size

#: Bytes read per ``os.pread`` (as for cached files).
CHUNK_SIZE = 4 * 1024 * 1024


def _nothing(*_args: object) -> None:
    return None


async def join(
    refresh: Refresh,
    method: str,
    range_header: str | None,
    *,
    served: Callable[[int], None] = _nothing,
    chunk_size: int = CHUNK_SIZE,
    connection: Connection | None = None,
) -> Answer | None:
    """Answer a GET (``range_header`` honoured) from ``refresh``'s temp file: the one place
    a reader joins a refresh (docs/architecture.md, "One refresh, one owner").

    Waits until the refresh is open (:meth:`Refresh.announce`). Returns None when it cannot
    be read (it failed or ended meanwhile: the caller serves the request another way);
    otherwise a 200, 206 or 416 response whose body follows the refresh. With the client's
    zero-copy ``connection`` the bytes on disk go out with sendfile, else through
    ``os.pread``. Cancellation (client gone) closes what was opened.
    """
    if method != "GET":
        return None
    await refresh.ready.wait()
    while refresh.repairing:  # its readers were cut off: the repaired copy, or none
        await refresh.wait_progress()
    if not refresh.joinable or not refresh.temp:
        return None
    try:
        fd = await trio.to_thread.run_sync(_open_reader, refresh.temp)
    except OSError:
        return None  # promoted or removed meanwhile
    response, offset, length = _plan(refresh.headers, refresh.size, range_header)
    # Before any checkpoint: the descriptor has an owner.
    body = SharedBody(fd, refresh, offset, length, chunk_size, served, connection)
    if refresh.failed or length == 0:
        body.release()
        return None if refresh.failed else response
    response.body = body
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


def _collected(fd: int, token: trio.lowlevel.TrioToken, left: Callable[[], None]) -> None:
    os.close(fd)
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(left)


class SharedBody(GeneratorBody):
    """``length`` bytes from ``offset`` of a refresh's temp file, read from the descriptor
    ``fd`` and sent as they arrive: with sendfile pieces when ``connection`` (the client's
    zero-copy connection) is given. ``served`` is told the bytes of each piece sent.

    The body holds its reader's place among the refresh's readers, and its descriptor:
    released exactly once, when it ends, explicitly (:meth:`release`), or when it is
    collected unsent (the client left before the server started the body,
    docs/architecture.md#traps-of-the-stack, 4), which may happen in another thread: the
    reader count is then updated through the trio token.
    """

    def __init__(
        self,
        fd: int,
        refresh: Refresh,
        offset: int,
        length: int,
        chunk_size: int,
        served: Callable[[int], None],
        connection: Connection | None = None,
    ) -> None:
        self.fd = fd
        self._refresh = refresh
        self._offset, self._length, self._chunk_size = offset, length, chunk_size
        self._served = served
        self._connection = connection
        refresh.reader_joined()
        token = trio.lowlevel.current_trio_token()
        self._finalizer = weakref.finalize(self, _collected, fd, token, refresh.reader_left)

    def release(self) -> None:
        """Close the descriptor and leave the readers (idempotent)."""
        if self._finalizer.detach() is not None:
            os.close(self.fd)
            self._refresh.reader_left()

    async def _finish(self, error: BaseException | None) -> None:
        self.release()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        position, end = self._offset, self._offset + self._length
        while position < end:
            limit = await _readable(self._refresh, position, end)
            connection = self._connection
            size = piece_size(limit - position) if connection is not None else 0
            if size and connection is not None:
                piece = FilePiece(size, fd=self.fd, offset=position)
                yield connection.stage(piece)
                connection.finish(piece)
            else:
                size = min(self._chunk_size, limit - position)
                # Not abandonable on cancel (trio's default): the descriptor is closed only
                # after the thread has finished reading from it.
                chunk = await trio.to_thread.run_sync(os.pread, self.fd, size, position)
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
        limit = refresh.range_end(end)  # a range's own end waits for the check too
        if limit > position:
            return limit
        await refresh.wait_progress()
