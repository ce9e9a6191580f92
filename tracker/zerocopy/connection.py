"""Zero-copy bodies: file or upstream bytes go to a client's socket without entering Python.

Why: an archive sent with ``os.pread`` + ``send`` crosses Python twice, and the second copy
runs in the event-loop thread for every stream at once (bench/README.md: on 2 cores, 8 cache
hits reached ~0.55x nginx, whose ``sendfile`` copies nothing). ASGI has no way to hand a file
to the server, and hypercorn has none either, so the tracker runs hypercorn's own connection
handler over a socket stream of its own (:class:`ZeroCopyStream`, see tracker/zerocopy/server.py).

How a body uses it: for each piece of the file it calls :meth:`Connection.stage` and yields
the *placeholder* that returns, a preallocated zero-filled ``bytes`` object of the piece's
size (a power of two). Every layer between the body and the socket passes an exact ``bytes``
through untouched for a response with ``content-length`` (Quart's ASGI loop; hypercorn's
``bytes(body)``; h11's ``Data`` and ``b"".join`` of one item), and h11 counts its length, so
the framing stays right. The stream recognises the very object and sends the staged piece in
a worker thread instead of the placeholder's bytes: a file range with ``sendfile``
(:class:`FilePiece`) or the next bytes of an upstream socket with ``splice``
(:class:`SocketPiece`, see tracker/proxy/passthrough.py); the loops are in
tracker/zerocopy/kernelcopy.py.
The worker thread keeps the event loop free (a file not in the page cache blocks only it).

A placeholder can never go out as zeros unnoticed: the stream refuses one that was not staged
on its own connection, and the body checks after each piece that its stream took it
(:meth:`Connection.finish`), so a library that started copying bodies would break every
zero-copy download at its first piece (tests/test_zerocopy.py pins this).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import select
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import trio

from tracker.errors import ClientGone, SourceFailed, TrackerError
from tracker.zerocopy import kernelcopy
from tracker.zerocopy.kernelcopy import CLIENT_GONE, SocketSplice, Wait, send_file

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


#: The most one read of a client connection takes. hypercorn asks for 64 KiB: each read
#: allocates that much and shrinks it to what came (a request head: a few hundred bytes),
#: and with thousands of connections reading at once the heap keeps the holes (2,000
#: keep-alive connections cost 45 MB of RSS; bench/README.md). The tracker's requests are
#: heads and tiny bodies, so small reads cost nothing measurable.
RECEIVE_SIZE = 4096

#: A connection the server ends after an answer (an error, ``Connection: close``) first shuts
#: its sending side, then reads and drops what the client still sends, until the client closes
#: too or for at most this many seconds and bytes, and only then closes (nginx's
#: ``lingering_close``): a socket closed with unread input makes the kernel send a reset, and
#: a reset makes the client's kernel discard the answer it has not read yet (a 400 for a
#: request followed by more bytes was lost in 27 tries of 60).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

#: The ASGI scope key under which a connection that can take pieces is found.
SCOPE_KEY = "tracker.zerocopy.connection"

Address = tuple[Any, ...]


def _placeholders() -> dict[int, bytes]:
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
    #: Why the source failed (raised by :meth:`Connection.finish`); the client's loss shows
    #: as the connection being ``broken`` instead.
    source_error: TrackerError | None = None

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

    async def wait_source(self) -> None:
        """See :meth:`Piece.wait_source`: at most ``read_timeout`` since the last bytes."""
        assert self.sock is not None
        assert self.splice is not None
        silent = time.monotonic() - self.splice.arrived
        with trio.move_on_after(max(0.0, self.read_timeout - silent)) as waited:
            try:
                await trio.lowlevel.wait_readable(self.sock)
            except (trio.ClosedResourceError, trio.BusyResourceError) as exc:
                raise SourceFailed("upstream connection closed") from exc
        if waited.cancelled_caught:
            raise SourceFailed(f"upstream sent nothing for {self.read_timeout:.0f} s")

    def close(self) -> None:
        """See :meth:`Piece.close`."""
        if self.splice is not None:
            self.splice.close()


#: True in the task (and below the call) that sends the last message of an answer.
_SENDING_LAST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tracker_zerocopy_sending_last", default=False
)


@contextlib.contextmanager
def sending_last() -> Iterator[None]:
    """Around the send of an answer's last message (see :meth:`Connection.answer_sent`)."""
    token = _SENDING_LAST.set(True)
    try:
        yield
    finally:
        _SENDING_LAST.reset(token)


class Connection:
    """One client connection's side of the handshake between a body and its stream."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._placeholders = connections.placeholders
        self._staged: Piece | None = None
        self.broken = False
        #: Requests of this connection the app is answering now (see ZeroCopyApp).
        self.requests = 0
        #: Set when the answer in progress is over.
        self._answered = trio.Event()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around the app's answer to one request: the connection is busy (never closed as
        idle) and its closing waits for the answer (:meth:`answer_sent`)."""
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1
            self._answered.set()
            self._answered = trio.Event()

    async def answer_sent(self) -> None:
        """Wait (at most LINGER_SECONDS) until the answer in progress has been sent, unless
        the caller is inside the answer's last send (:func:`sending_last`): hypercorn closes
        a ``connection: close`` connection from there.

        hypercorn's reader also closes the connection, as soon as h11 refuses more input
        (bytes after a request answered with ``connection: close``), while the request's
        task may still be sending that answer: without this wait the answer was lost.
        """
        if self.requests and not _SENDING_LAST.get():
            with trio.move_on_after(LINGER_SECONDS):
                await self._answered.wait()

    def stage(self, piece: Piece) -> bytes:
        """Stage ``piece`` and return the placeholder to yield for it.

        Raises ValueError when ``piece.count`` is not a piece size (see :func:`piece_size`).
        """
        placeholder = self._placeholders.get(piece.count)
        if placeholder is None:
            raise ValueError(f"not a piece size: {piece.count}")
        self._staged = piece
        return placeholder

    def finish(self, piece: Piece) -> None:
        """After the placeholder of ``piece`` was handed to the server: check it went out.

        Raises the piece's ``source_error`` when its source failed, ClientGone when the
        connection broke meanwhile, TrackerError when the piece never reached this
        connection's stream (a layer copied the body: a bug, never sent as zeros because the
        connection is then aborted before its content-length is reached).
        """
        if piece.sent:
            return
        self._staged = None
        if piece.source_error is not None:
            raise piece.source_error
        if self.broken:
            raise ClientGone("client connection closed during a zero-copy send")
        raise TrackerError("zero-copy piece did not reach the connection's stream")

    def is_placeholder(self, data: object) -> bool:
        """True when ``data`` is one of the placeholder objects (identity, not equality)."""
        size = len(data) if isinstance(data, bytes) else -1
        return self._placeholders.get(size) is data

    async def send_staged(self, sock: trio.socket.SocketType, data: bytes) -> None:
        """Send the piece staged for placeholder ``data`` on ``sock``.

        The bytes move in worker threads, each call for as long as they flow; whenever the
        client or the source makes them wait, the wait happens here, in the event loop, so a
        slow client holds no thread (the threads are shared by every download). Raises
        trio.BrokenResourceError when nothing was staged for it, the client went away or
        stalled (STALL_TIMEOUT, tracker/zerocopy/kernelcopy.py), or the piece's source
        failed; the connection is then shut down (part of the piece may be out: it must end
        short of its content-length).
        """
        piece, self._staged = self._staged, None
        if piece is None or piece.count != len(data):
            self.broken = True
            raise trio.BrokenResourceError("a zero-copy placeholder that was not staged")
        try:
            while (waiting := await self._transfer(sock, piece)) is not None:
                if waiting is Wait.CLIENT:
                    await _client_room(sock)
                else:
                    await _source_bytes(sock, piece, self)
        except (SourceFailed, OSError) as exc:
            if isinstance(exc, SourceFailed):
                piece.source_error = exc
            self.broken = True
            # hypercorn only marks the connection closed when send_all fails: end it here.
            _shut_down(sock)
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            piece.close()
        piece.sent = True
        self._connections.pieces += 1

    async def _transfer(self, sock: trio.socket.SocketType, piece: Piece) -> Wait | None:
        """One call of ``piece.transfer`` in a worker thread, on duplicated descriptors."""
        connections = self._connections
        descriptors: list[int] = []
        if isinstance(piece, FilePiece):
            piece.crowded = connections.sending > 0
        connections.sending += 1
        try:
            descriptors.append(os.dup(sock.fileno()))
            descriptors += piece.prepare()
            return await trio.to_thread.run_sync(
                piece.transfer,
                descriptors[0],
                tuple(descriptors[1:]),
                limiter=connections.limiter,
            )
        finally:
            connections.sending -= 1
            for fd in descriptors:
                os.close(fd)


async def _client_room(sock: trio.socket.SocketType) -> None:
    """Wait until the client's socket takes bytes again; TimeoutError after STALL_TIMEOUT,
    ConnectionResetError when the connection is closed meanwhile."""
    stall = kernelcopy.STALL_TIMEOUT
    with trio.move_on_after(stall) as waited:
        try:
            await trio.lowlevel.wait_writable(sock)
        except (trio.ClosedResourceError, trio.BusyResourceError) as exc:
            raise ConnectionResetError("client connection closed") from exc
    if waited.cancelled_caught:
        raise TimeoutError(f"client took nothing for {stall:.0f} s")


async def _source_bytes(sock: trio.socket.SocketType, piece: Piece, connection: Connection) -> None:
    """Wait until the piece's source has bytes; a client that leaves meanwhile ends the wait
    within a second (ConnectionResetError), as the thread's own wait did."""
    while True:
        with trio.move_on_after(1.0):
            await piece.wait_source()
            return
        if connection.broken or _gone(sock):
            raise ConnectionResetError("client closed the connection")


def _gone(sock: trio.socket.SocketType) -> bool:
    """True when the client hung up (a poll() that does not wait)."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), CLIENT_GONE)
    return bool(poller.poll(0))


def _shut_down(sock: trio.socket.SocketType) -> None:
    with contextlib.suppress(OSError):  # gone already
        sock.shutdown(socket.SHUT_RDWR)


class Connections:
    """The client connections able to take zero-copy pieces, by (client, server) address."""

    def __init__(self, threads: int = 256) -> None:
        self.placeholders = _placeholders()
        #: Bounds the worker threads sending pieces (a stalled client holds one).
        self.limiter = trio.CapacityLimiter(threads)
        #: Pieces sent with sendfile so far, on every connection.
        self.pieces = 0
        #: Pieces being sent now, on every connection.
        self.sending = 0
        self._open: dict[tuple[Address, Address], Connection] = {}

    def open(self, key: tuple[Address, Address]) -> Connection:
        """Register a new connection (its stream calls this)."""
        connection = Connection(self)
        self._open[key] = connection
        return connection

    def close(self, key: tuple[Address, Address]) -> None:
        """Forget a connection (its stream calls this when it closes)."""
        self._open.pop(key, None)

    def for_scope(self, scope: dict[str, Any]) -> Connection | None:
        """The connection an HTTP/1.x request arrived on, when it can take pieces."""
        if scope.get("type") != "http" or scope.get("http_version") not in ("1.0", "1.1"):
            return None  # HTTP/2 frames bodies itself: a placeholder would be copied
        client, server = scope.get("client"), scope.get("server")
        if not client or not server:
            return None
        return self._open.get((tuple(client), tuple(server)))


def zero_copy_connection(scope: Mapping[str, Any]) -> Connection | None:
    """The request's connection (from its ASGI ``scope``) when it takes zero-copy pieces."""
    connection = scope.get(SCOPE_KEY)
    return connection if isinstance(connection, Connection) else None


class ZeroCopyStream(trio.abc.HalfCloseableStream):
    """A TCP socket stream that sends staged pieces with sendfile, everything else as is.

    Only what hypercorn's TCPServer uses is provided: ``socket``, ``send_all``,
    ``receive_some``, ``send_eof``, ``aclose``. It has no ``do_handshake`` on purpose:
    TCPServer tells a plain stream from a TLS one by that AttributeError.
    """

    def __init__(self, stream: trio.SocketStream, connections: Connections) -> None:
        self._stream = stream
        self.socket = stream.socket
        self._connections = connections
        self._key = _addresses(stream.socket)
        self._connection = connections.open(self._key) if self._key else None
        #: When bytes last came in or went out (trio's clock).
        self.last_active = trio.current_time()
        #: Our side is shut for sending (``send_eof``); the client's side ended.
        self._eof_sent = False
        self._eof_received = False
        #: The lingering close has taken the reading over (see LINGER_SECONDS); set when it
        #: is over.
        self._lingering = False
        self._lingered = trio.Event()
        #: The read hypercorn is waiting in, cancelled when the lingering close starts.
        self._reading: trio.CancelScope | None = None
        self._read_done = trio.Event()

    @property
    def idle(self) -> bool:
        """True when no request of this connection is being answered: between requests,
        or before a complete request head arrived."""
        return self._connection is None or self._connection.requests == 0

    def shut_down(self) -> None:
        """End the connection both ways; its handler then sees the end and closes it."""
        _shut_down(self.socket)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; a placeholder sends its staged piece instead."""
        self.last_active = trio.current_time()
        connection = self._connection
        # The size test first: it is all that most sends (heads, small bodies) cost.
        if len(data) >= SMALLEST_PIECE and connection and connection.is_placeholder(data):
            assert isinstance(data, bytes)
            await connection.send_staged(self.socket, data)
            return
        if self._eof_sent:
            # As trio's stream does after send_eof, but before touching it: a send racing
            # the close got trio's BusyResourceError, logged as a failure of the app.
            raise trio.ClosedResourceError("the connection is closed for sending")
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream's."""
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """As the wrapped stream's; a ``max_bytes`` (hypercorn's reads) is capped at
        RECEIVE_SIZE. The end of the input (``b""``) once a lingering close has begun."""
        if self._lingering:
            return b""
        if max_bytes is not None:
            max_bytes = min(max_bytes, RECEIVE_SIZE)
        with trio.CancelScope() as scope:
            self._reading, self._read_done = scope, trio.Event()
            try:
                data = await self._stream.receive_some(max_bytes)
            finally:
                self._reading = None
                self._read_done.set()
        if scope.cancelled_caught:
            return b""  # the lingering close took the reading over
        self.last_active = trio.current_time()
        self._eof_received = self._eof_received or not data
        return data

    # hypercorn closes a connection that must not be kept (``Connection: close``, HTTP/1.0,
    # an error) from the task that ran the request, which quart-trio cancels as soon as the
    # response is complete: unshielded, that cancellation interrupts send_eof and aclose, and
    # the socket stays open until the client gives up. Both are a system call each.

    async def send_eof(self) -> None:
        """As the wrapped stream's, whatever cancellation is pending, once the answer in
        progress (if any) has been sent (:meth:`Connection.answer_sent`)."""
        with trio.CancelScope(shield=True):
            if self._connection is not None:
                await self._connection.answer_sent()
            self._eof_sent = True
            await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the socket and forget the connection, whatever cancellation is pending.

        After ``send_eof`` (hypercorn's close of a connection it ends: an error answer,
        ``Connection: close``, HTTP/1.0) and before the client closed its side, the close
        lingers first (see LINGER_SECONDS); an idle connection closed by the timeout or the
        connection limit (no ``send_eof``, or shut down both ways) closes at once.
        """
        if self._connection is not None:
            # A body still sending learns that its client is gone (not a bug of ours).
            self._connection.broken = True
        if self._key:
            self._connections.close(self._key)
        with trio.CancelScope(shield=True):
            if self._lingering:
                # hypercorn closes from the request's task and from the reader's: the second
                # close must not cut the first one's lingering short.
                await self._lingered.wait()
            elif self._eof_sent and not self._eof_received:
                try:
                    await self._linger()
                finally:
                    self._lingered.set()
            await self._stream.aclose()

    async def _linger(self) -> None:
        """Read and drop the client's input until it closes, LINGER_BYTES or LINGER_SECONDS."""
        self._lingering = True
        if self._reading is not None:
            # hypercorn's reader is waiting in receive_some: it gets b"" and stops reading.
            self._reading.cancel()
            await self._read_done.wait()
        left = LINGER_BYTES
        with trio.move_on_after(LINGER_SECONDS):
            try:
                while left > 0:
                    data = await self._stream.receive_some(min(left, 64 * 1024))
                    if not data:
                        return
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


def _addresses(sock: trio.socket.SocketType) -> tuple[Address, Address] | None:
    """(client, server) as hypercorn puts them in the scope; None for non-TCP sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        peer, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return None
    return (peer[0], peer[1]), (local[0], local[1])
