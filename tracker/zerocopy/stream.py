"""The tracker's socket stream under hypercorn's connection handler: :class:`ZeroCopyStream`.

It sends a placeholder's staged piece instead of its bytes (:mod:`tracker.zerocopy.connection`),
reads in small pieces, and closes a connection the server ends after an answer only once the
client has read it (the lingering close, see LINGER_SECONDS). tracker/zerocopy/server.py wraps
every accepted connection in one; README.md beside this file lists what of hypercorn it
relies on.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

from tracker.zerocopy.connection import Address, Connections
from tracker.zerocopy.pieces import SMALLEST_PIECE, shut_down

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
        self._connection = connections.open(self._key, self.shut_down) if self._key else None
        #: The scope hypercorn's handler of this connection runs in (tracker/zerocopy/
        #: server.py): cancelled once the client is gone (Connection.gone).
        self.handler = self._connection.handler if self._connection else trio.CancelScope()
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
    def client(self) -> str | None:
        """The client this connection counts for
        (:func:`~tracker.zerocopy.connection.client_of`; None: no TCP peer known)."""
        return self._connection.client if self._connection is not None else None

    @property
    def idle(self) -> bool:
        """True when no request of this connection is being answered: between requests,
        or before a complete request head arrived."""
        return self._connection is None or self._connection.requests == 0

    def on_first_request(self, started: Callable[[], None]) -> bool:
        """Call ``started()`` as the app starts answering this connection's next request
        (while it is answered, the connection is not :attr:`idle`); False, and nothing
        called, where requests are not counted (no TCP peer)."""
        if self._connection is None:
            return False
        self._connection.on_request = started
        return True

    def shut_down(self) -> None:
        """End the connection both ways; its handler then sees the end and closes it."""
        shut_down(self.socket)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; a placeholder sends its staged piece instead."""
        self.last_active = trio.current_time()
        connection = self._connection
        try:
            # The size test first: it is all that most sends (heads, small bodies) cost.
            if len(data) >= SMALLEST_PIECE and connection and connection.is_placeholder(data):
                assert isinstance(data, bytes)
                await connection.send_staged(self.socket, data)
                return
            if self._eof_sent:
                # As trio's stream does after send_eof, but before touching it: a send racing
                # the close got trio's BusyResourceError, logged as a failure of the app.
                raise trio.ClosedResourceError("the connection is closed for sending")
            if connection is not None and connection.requests:
                await connection.send_plain(self.socket, data)
            else:
                await self._stream.send_all(data)
        except trio.BrokenResourceError:
            self._client_gone()
            raise

    def _client_gone(self) -> None:
        """A send failed: nothing more can reach the client; the handler ends once nothing
        of it is in progress (:meth:`Connection.gone`)."""
        if self._connection is not None:
            self._connection.gone()

    def end_when_gone(self, between_requests: Callable[[], bool]) -> None:
        """Once a send found the client gone, :attr:`handler` is cancelled as soon as no
        answer is in progress and ``between_requests()`` (:meth:`Connection.gone`)."""
        if self._connection is not None:
            self._connection.between_requests = between_requests

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
                await self._connection.answer_sent(LINGER_SECONDS)
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
