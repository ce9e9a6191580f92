"""Plain proxied streams whose body goes from the upstream socket to the client's by splice.

A proxied stream that fills no cache needs none of its bytes in Python. When the client's
connection takes zero-copy pieces (tracker/zerocopy/connection.py) and the upstream's body is still
whole in a plain TCP socket (:func:`tracker.clientwire.transport.splice_stream`), the body is
sent as :class:`~tracker.zerocopy.connection.SocketPiece` pieces: ``splice(2)`` moves the
bytes socket -> pipe -> socket in a worker thread, and the event loop only hands over one
placeholder per piece. bench/README.md has the numbers; without it, every byte is received,
buffered by h11 twice and sent again by the event-loop thread.

The pump (tracker/proxy/transfers.py) keeps the upstream answer open while this body sends from its
socket, and closes it once the body has ended, or when the server never started the body.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import attrs
import trio

from tracker.errors import UpstreamError
from tracker.serving.responsebodies import GeneratorBody
from tracker.zerocopy.connection import LARGEST_SOCKET_PIECE, Connection, SocketPiece, piece_size

#: The largest plain read of a body's last bytes (under the smallest piece).
_TAIL_READ = 64 * 1024


@attrs.define(eq=False)
class SpliceBody(GeneratorBody):
    """``length`` bytes of the upstream socket ``sock``, sent to the client's ``connection``.

    ``started`` is set when the server starts sending it, ``ended`` when it has ended (then
    ``error`` tells why it ended early, None when complete). ``on_upstream(n)`` is called as
    each piece is handed to the server (before the client can have it all), ``on_client(n)``
    once it went out. ``intact()`` tells that the socket still holds the rest of the body
    (nothing read it meanwhile); it is checked before every piece. An upstream that breaks
    or stalls (``read_timeout``) raises UpstreamError: the server aborts the client's
    connection, short of its content-length.
    """

    _connection: Connection
    _sock: trio.socket.SocketType
    _intact: Callable[[], bool]
    length: int
    _read_timeout: float
    _on_upstream: Callable[[int], None]
    _on_client: Callable[[int], None]
    started: trio.Event = attrs.field(init=False, factory=trio.Event)
    ended: trio.Event = attrs.field(init=False, factory=trio.Event)
    error: BaseException | None = attrs.field(default=None, init=False)
    sent: int = attrs.field(default=0, init=False)
    #: The socket piece being spliced now (its progress counts in :attr:`received`).
    _piece: SocketPiece | None = attrs.field(default=None, init=False)
    #: Seconds the pieces that went waited for room in the client's socket.
    _waited: float = attrs.field(default=0.0, init=False)
    #: The longest span of those waits in which the client took no byte.
    _stalled: float = attrs.field(default=0.0, init=False)

    async def _start(self) -> None:
        self.started.set()

    async def _finish(self, error: BaseException | None) -> None:
        self.error = error
        self.ended.set()

    @property
    def received(self) -> int:
        """Body bytes that came from the upstream so far, a piece being spliced included."""
        piece = self._piece
        splice = piece.splice if piece is not None else None
        return self.sent + (piece.count - splice.left if piece and splice else 0)

    @property
    def client_waited(self) -> float:
        """Seconds the body waited for room in the client's socket so far, a piece being
        spliced included: the upstream socket was not read meanwhile (a relay paced by its
        client, docs/ranking.md, "Failed transfers")."""
        piece = self._piece
        return self._waited + (piece.waited_for_client() if piece is not None else 0.0)

    @property
    def client_stalled(self) -> float:
        """The longest span, in seconds, in which the client took no byte while the body
        waited for room in its socket, a piece being spliced included: one that stalled,
        which the source's own send timeout may have given up on (docs/ranking.md, "Failed
        transfers"). A piece goes on only once the client took the last one, so no span
        runs across two."""
        piece = self._piece
        return max(self._stalled, piece.stalled_client() if piece is not None else 0.0)

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        while self.sent < self.length:
            if not self._intact():
                # Something read body bytes out of the socket: what is left there is no
                # longer the rest of this body, and must not be sent as if it were.
                raise UpstreamError("upstream body was read past its head: cannot splice")
            size = piece_size(self.length - self.sent, LARGEST_SOCKET_PIECE)
            if size:
                piece = SocketPiece(size, sock=self._sock, read_timeout=self._read_timeout)
                self._on_upstream(size)
                self._piece = piece
                yield self._connection.stage(piece)
                self._connection.finish(piece, self._on_client)
                self._waited += piece.waited_for_client()
                self._stalled = max(self._stalled, piece.stalled_client())
                self._piece = None
            else:
                data = await self._receive(self.length - self.sent)
                size = len(data)
                self._on_upstream(size)
                yield data
            self.sent += size
            self._on_client(size)

    async def _receive(self, left: int) -> bytes:
        try:
            with trio.fail_after(self._read_timeout):
                data: bytes = await self._sock.recv(min(left, _TAIL_READ))
        except trio.TooSlowError as exc:
            raise UpstreamError(f"upstream sent nothing for {self._read_timeout:.0f} s") from exc
        except (OSError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"upstream read failed: {exc}") from exc
        if not data:
            raise UpstreamError("upstream closed the connection mid-body")
        return data
