"""Zero-copy pieces: what a piece is, the placeholders that stand for them, and how one
goes out.

A body sends its file (or an upstream socket's bytes) in pieces of power-of-two sizes
(:func:`piece_size`), each staged on its connection (:mod:`tracker.zerocopy.connection`)
and stood for by a placeholder of its size. The stream sends a piece with
:meth:`PieceSenders.send`: a file range with ``sendfile`` (:class:`FilePiece`) or the next
bytes of an upstream socket with ``splice`` (:class:`SocketPiece`, see
tracker/proxy/passthrough.py), in worker threads (the loops are in
tracker/zerocopy/kernelcopy.py) that keep the event loop free (a file not in the page cache
blocks only its thread), while every wait for a socket happens in the event loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable

import attrs
import trio

from tracker.errors import SourceFailed, TrackerError
from tracker.zerocopy import kernelcopy
from tracker.zerocopy.kernelcopy import (
    CLIENT_GONE,
    ClientTook,
    SocketSplice,
    Wait,
    send_file,
    untaken,
)

#: Piece sizes: powers of two from 64 KiB to 128 MiB. A body sends its file in pieces of the
#: largest size that fits, and anything under the smallest with ordinary bytes.
SMALLEST_PIECE = 64 * 1024
#: Between two pieces nobody feeds the socket (the worker thread returns, the event loop runs
#: the body to its next piece): with 8 MiB pieces a fresh-connection GET of 1 GiB measured
#: 0.86x nginx's sendfile (median of 11), with 128 MiB 1.55x (bench/README.md). Placeholders
#: cost address space only, never resident memory.
LARGEST_PIECE = 128 * 1024 * 1024
#: Upstream bytes (splice) go in pieces of at most 64 MiB (one proxied stream: 1.26-1.34x
#: nginx proxy_pass with 8 MiB pieces, 1.43x with 64 MiB): each is counted when it starts
#: (served-bytes metrics), so a bigger piece would make those coarser still.
LARGEST_SOCKET_PIECE = 64 * 1024 * 1024
#: Seconds between two looks, while a piece waits for room in its client's socket, at
#: whether the client took bytes meanwhile (its acknowledgements): a steady slow client's
#: socket may have no room for seconds (with no ``TCP_NOTSENT_LOWAT``, until a third of what
#: it queues went), and it is told from a stalled one to within this (docs/ranking.md,
#: "Failed transfers"). Only a wait this long looks: a fast client's path is not touched.
CLIENT_LOOK = 1.0


def placeholders() -> dict[int, bytes]:
    """One zero-filled placeholder of every piece size, by size."""
    sizes: dict[int, bytes] = {}
    size = SMALLEST_PIECE
    while size <= LARGEST_PIECE:
        # bytes(n) is calloc'ed: the kernel's zero pages, no resident memory until read,
        # and a placeholder is never read (its piece goes out through sendfile or splice).
        sizes[size] = bytes(size)
        size *= 2
    return sizes


def piece_size(left: int, largest: int = LARGEST_PIECE) -> int:
    """The size of the next piece for ``left`` bytes still to send (0: send plain bytes),
    at most ``largest`` (a power of two from SMALLEST_PIECE to LARGEST_PIECE)."""
    if left < SMALLEST_PIECE:
        return 0
    return min(largest, 1 << (left.bit_length() - 1))


@attrs.define
class Piece:
    """``count`` bytes staged to go out on a connection by a zero-copy system call."""

    count: int
    sent: bool = False
    #: Why the source failed (raised by the connection's ``finish``); the client's loss
    #: shows as the connection being ``broken`` instead.
    source_error: TrackerError | None = None
    #: Bytes of the piece put on the client's socket so far.
    out: int = 0
    #: Seconds the piece waited in the event loop for room in the client's socket.
    client_waited: float = 0.0
    #: The longest of those waits (:meth:`client_wait`).
    client_stalled: float = 0.0

    def went(self) -> int:
        """Bytes of the piece put on the client's socket so far (a piece cut short: the
        bytes the client may have got of it)."""
        return self.out

    def prepare(self) -> tuple[int, ...]:
        """In the event-loop thread: duplicate the descriptors :meth:`transfer` uses, so
        that none can be closed (and its number reused) under the worker thread."""
        return ()

    def transfer(self, out: int, sources: tuple[int, ...]) -> Wait | None:
        """Blocking, in a worker thread: send what can go to socket ``out`` now. Returns
        None once the whole piece went, else the side it waits for (nothing moved for
        ``kernelcopy.LINGER``). Raises SourceFailed for the source's failure, OSError or
        TimeoutError for the client's."""
        raise NotImplementedError

    def waited_for_client(self) -> float:
        """Seconds the piece waited for room in the client's socket so far: a slow client
        paces a spliced relay's source (docs/ranking.md, "Failed transfers")."""
        return self.client_waited

    def client_wait(self, began: float, ended: float, took: ClientTook | None = None) -> None:
        """In the event loop: count a wait for room in the client's socket from ``began``
        to ``ended`` (monotonic), the client seen taking bytes meanwhile as ``took`` says
        (:func:`~tracker.zerocopy.kernelcopy.untaken`)."""
        self.client_waited += ended - began
        self.client_stalled = max(self.client_stalled, untaken(began, ended, took)[0])

    def stalled_client(self) -> float:
        """The longest span, in seconds, in which the client took no byte of the piece while
        it was waited for: a client that stalled (a source's own send timeout may give up on
        it), not one that reads slowly (docs/ranking.md, "Failed transfers")."""
        return self.client_stalled

    async def wait_source(self) -> None:
        """In the event loop: wait until the source has bytes (see :meth:`transfer`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the piece holds between transfers (once it is over)."""


@attrs.define
class FilePiece(Piece):
    """``count`` bytes of open file ``fd`` from ``offset``, sent with sendfile."""

    fd: int = -1
    offset: int = 0
    #: Other pieces are being sent at the same time (set by the connection).
    crowded: bool = False

    def transfer(self, out: int, sources: tuple[int, ...]) -> Wait | None:
        """See :meth:`Piece.transfer`."""
        sent = send_file(
            out, self.fd, self.offset, self.count, crowded=self.crowded, linger=kernelcopy.LINGER
        )
        self.offset, self.count = self.offset + sent, self.count - sent
        self.out += sent
        return Wait.CLIENT if self.count else None


@attrs.define
class SocketPiece(Piece):
    """The next ``count`` bytes arriving on an upstream socket, spliced through a pipe."""

    sock: trio.socket.SocketType | None = None
    #: Longest wait for upstream bytes, seconds.
    read_timeout: float = 60.0
    #: The pipe and its progress, from the first transfer to :meth:`close`.
    splice: SocketSplice | None = None

    def prepare(self) -> tuple[int, ...]:
        """See :meth:`Piece.prepare`."""
        assert self.sock is not None
        if self.sock.fileno() < 0:
            raise SourceFailed("upstream connection closed")
        return (os.dup(self.sock.fileno()),)

    def transfer(self, out: int, sources: tuple[int, ...]) -> Wait | None:
        """See :meth:`Piece.transfer`."""
        if self.splice is None:
            self.splice = SocketSplice(self.count)
        waiting = self.splice.move(sources[0], out, kernelcopy.LINGER)
        self.splice.check(self.read_timeout)
        return waiting

    def went(self) -> int:
        """See :meth:`Piece.went`."""
        return self.splice.sent if self.splice is not None else 0

    def waited_for_client(self) -> float:
        """See :meth:`Piece.waited_for_client`: the event loop's waits and the worker
        thread's (:attr:`SocketSplice.client_waited`)."""
        splice = self.splice
        return self.client_waited + (splice.client_waited if splice is not None else 0.0)

    def client_wait(self, began: float, ended: float, took: ClientTook | None = None) -> None:
        """See :meth:`Piece.client_wait`: counted with the worker thread's waits, one span of
        them running across both while the client takes no byte
        (:meth:`SocketSplice.client_wait`)."""
        if self.splice is None:
            super().client_wait(began, ended, took)
        else:
            self.splice.client_wait(began, ended, took)

    def stalled_client(self) -> float:
        """See :meth:`Piece.stalled_client`: the event loop's waits and the worker thread's
        (:attr:`SocketSplice.client_stalled`)."""
        splice = self.splice
        return max(self.client_stalled, splice.client_stalled if splice is not None else 0.0)

    async def wait_source(self) -> None:
        """See :meth:`Piece.wait_source`: at most ``read_timeout`` since the last bytes."""
        assert self.sock is not None
        assert self.splice is not None
        silent = time.monotonic() - self.splice.arrived
        with trio.move_on_after(max(0.0, self.read_timeout - silent)) as waited:
            try:
                # closed between two waits (the shutdown grace ended: the tracker cut the
                # relays' upstreams), its descriptor is -1: trio's wait raises ValueError
                if self.sock.fileno() < 0:
                    raise trio.ClosedResourceError
                await trio.lowlevel.wait_readable(self.sock)
            except (trio.ClosedResourceError, trio.BusyResourceError, ValueError) as exc:
                raise SourceFailed("upstream connection closed") from exc
        if waited.cancelled_caught:
            raise SourceFailed(f"upstream sent nothing for {self.read_timeout:.0f} s")

    def close(self) -> None:
        """See :meth:`Piece.close`."""
        if self.splice is not None:
            self.splice.close()


class ClientProgress:
    """Whether a client whose socket has no room for a piece takes any bytes meanwhile, and
    the way to give up on it (:meth:`reclaim`).

    A piece waits for its client's socket in :func:`client_room`; while it does, the bytes
    the client has not acknowledged (:func:`kernelcopy.unacknowledged`) shrink as it reads
    and stay put while it reads nothing. ``clock`` is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sock: trio.socket.SocketType | None = None
        self._queued = 0
        #: Since when the client took nothing while waited for (None: not waited for).
        self._since: float | None = None
        self._wait: trio.CancelScope | None = None
        self.reclaimed = False
        #: When the client was seen taking bytes during the last wait (None: never).
        self.took: ClientTook | None = None

    def waiting(self, sock: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        """A piece waits for room in ``sock`` within ``scope`` (cancelled by reclaim)."""
        self._sock, self._wait, self.took = sock, scope, None
        self._queued, self._since = kernelcopy.unacknowledged(sock.fileno()), self._clock()

    def moving(self) -> None:
        """The wait is over."""
        self._since = self._wait = None

    def stalled(self) -> float:
        """Seconds the client has taken no byte while a piece waited for it (0: none waits)."""
        if self._since is None or self._sock is None:
            return 0.0
        queued, now = kernelcopy.unacknowledged(self._sock.fileno()), self._clock()
        if queued < self._queued:
            self._queued, self._since = queued, now
            self.took = ClientTook(now, now) if self.took is None else self.took.then(now)
        return now - self._since

    def reclaim(self) -> None:
        """Give up on the client: the piece waiting for it fails (ConnectionResetError)."""
        self.reclaimed = True
        if self._wait is not None:
            self._wait.cancel()


class PieceSenders:
    """The worker threads that send pieces, shared by every connection."""

    def __init__(self, threads: int) -> None:
        #: Bounds the worker threads sending pieces (a stalled client holds one).
        self.limiter = trio.CapacityLimiter(threads)
        #: Pieces being sent now, on every connection.
        self.sending = 0

    async def send(
        self,
        sock: trio.socket.SocketType,
        piece: Piece,
        client_left: Callable[[], bool],
        progress: ClientProgress | None = None,
    ) -> None:
        """Send the whole of ``piece`` on the client's socket ``sock``.

        The bytes move in worker threads, each call for as long as they flow; whenever the
        client or the source makes them wait, the wait happens here, in the event loop, so a
        slow client holds no thread (the threads are shared by every download). Raises
        SourceFailed when the source failed, OSError or TimeoutError when the client went
        away (``client_left``), stalled (STALL_TIMEOUT, tracker/zerocopy/kernelcopy.py) or
        was given up on (``progress``, :meth:`ClientProgress.reclaim`).
        """
        progress = progress if progress is not None else ClientProgress()
        while (waiting := await self._transfer(sock, piece)) is not None:
            if waiting is Wait.CLIENT:
                began = time.monotonic()
                room = False
                try:
                    await client_room(sock, progress)
                    room = True
                finally:
                    ended, took = time.monotonic(), progress.took
                    if room:  # room comes back only as the client acknowledges bytes
                        took = ClientTook(ended, ended) if took is None else took.then(ended)
                    piece.client_wait(began, ended, took)
            else:
                await _source_bytes(sock, piece, client_left)

    async def _transfer(self, sock: trio.socket.SocketType, piece: Piece) -> Wait | None:
        """One call of ``piece.transfer`` in a worker thread, on duplicated descriptors."""
        descriptors: list[int] = []
        if isinstance(piece, FilePiece):
            piece.crowded = self.sending > 0
        self.sending += 1
        try:
            descriptors.append(os.dup(sock.fileno()))
            descriptors += piece.prepare()
            return await trio.to_thread.run_sync(
                piece.transfer,
                descriptors[0],
                tuple(descriptors[1:]),
                limiter=self.limiter,
            )
        finally:
            self.sending -= 1
            for fd in descriptors:
                os.close(fd)


async def client_room(sock: trio.socket.SocketType, progress: ClientProgress) -> None:
    """Wait until the client's socket takes bytes again; TimeoutError after STALL_TIMEOUT,
    ConnectionResetError when the connection is closed or the client given up on
    (``progress``) meanwhile."""
    stall = kernelcopy.STALL_TIMEOUT
    writable = False
    with trio.CancelScope() as waited:
        progress.waiting(sock, waited)
        try:
            # "Took nothing" is the client's acknowledgements (ClientProgress.stalled), not
            # the socket's room: a full socket is writable again only once half of what it
            # queues has gone, which a slow client that keeps reading may take longer for.
            # Every CLIENT_LOOK seconds it looks whether the client took bytes meanwhile
            # (progress.took): its stall span is told from them.
            while not writable and (left := stall - progress.stalled()) > 0:
                with trio.move_on_after(min(left, CLIENT_LOOK)):
                    await trio.lowlevel.wait_writable(sock)
                    writable = True
        except (trio.ClosedResourceError, trio.BusyResourceError) as exc:
            raise ConnectionResetError("client connection closed") from exc
        finally:
            progress.moving()
    if progress.reclaimed:  # meanwhile, or since the last wait
        raise ConnectionResetError("client took nothing while downloads were refused")
    if not writable:
        raise TimeoutError(f"client took nothing for {stall:.0f} s")


async def _source_bytes(
    sock: trio.socket.SocketType, piece: Piece, client_left: Callable[[], bool]
) -> None:
    """Wait until the piece's source has bytes; a client that leaves meanwhile ends the wait
    within a second (ConnectionResetError), as the thread's own wait did."""
    while True:
        with trio.move_on_after(1.0):
            await piece.wait_source()
            return
        if client_left() or _gone(sock):
            raise ConnectionResetError("client closed the connection")


def _gone(sock: trio.socket.SocketType) -> bool:
    """True when the client hung up (a poll() that does not wait)."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), CLIENT_GONE)
    return bool(poller.poll(0))


def shut_down(sock: trio.socket.SocketType) -> None:
    """End the connection both ways (nothing happens when it is gone already)."""
    with contextlib.suppress(OSError):  # gone already
        sock.shutdown(socket.SHUT_RDWR)
