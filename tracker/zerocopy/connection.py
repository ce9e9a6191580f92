"""Zero-copy bodies: file or upstream bytes go to a client's socket without entering Python.

Why: an archive sent with ``os.pread`` + ``send`` crosses Python twice, and the second copy
runs in the event-loop thread for every stream at once (bench/README.md: on 2 cores, 8 cache
hits reached ~0.55x nginx, whose ``sendfile`` copies nothing). ASGI has no way to hand a file
to the server, and hypercorn has none either, so the tracker runs hypercorn's own connection
handler over a socket stream of its own (:class:`~tracker.zerocopy.stream.ZeroCopyStream`,
see tracker/zerocopy/server.py).

How a body uses it: for each piece of the file it calls :meth:`Connection.stage` and yields
the *placeholder* that returns, a preallocated zero-filled ``bytes`` object of the piece's
size (a power of two). Every layer between the body and the socket passes an exact ``bytes``
through untouched for a response with ``content-length`` (Quart's ASGI loop; hypercorn's
``bytes(body)``; h11's ``Data`` and ``b"".join`` of one item), and h11 counts its length, so
the framing stays right. The stream recognises the very object and sends the staged piece in
a worker thread instead of the placeholder's bytes: a file range with ``sendfile``
(:class:`FilePiece`) or the next bytes of an upstream socket with ``splice``
(:class:`SocketPiece`, see tracker/proxy/passthrough.py); the pieces and how one goes out
are in :mod:`tracker.zerocopy.pieces`, the system-call loops in
tracker/zerocopy/kernelcopy.py. This module holds the handshake: a connection's staged
piece, its placeholders, and whether the answer in progress has gone out.

A placeholder can never go out as zeros unnoticed: the stream refuses one that was not staged
on its own connection, and the body checks after each piece that its stream took it
(:meth:`Connection.finish`), so a library that started copying bodies would break every
zero-copy download at its first piece (tests/test_zerocopy.py pins this).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio

from tracker.core.hosts import canonical_host, machine_of
from tracker.errors import ClientGone, SourceFailed, TrackerError
from tracker.zerocopy.pieces import (
    LARGEST_PIECE,
    LARGEST_SOCKET_PIECE,
    SMALLEST_PIECE,
    ClientProgress,
    FilePiece,
    Piece,
    PieceSenders,
    SocketPiece,
    client_room,
    piece_size,
    placeholders,
    shut_down,
)

# A body stages pieces through its connection: the pieces' names are importable from here.
__all__ = [
    "LARGEST_PIECE",
    "LARGEST_SOCKET_PIECE",
    "SCOPE_KEY",
    "SMALLEST_PIECE",
    "Connection",
    "Connections",
    "FilePiece",
    "Piece",
    "SocketPiece",
    "piece_size",
    "sending_last",
    "zero_copy_connection",
]

#: The ASGI scope key under which a connection that can take pieces is found.
SCOPE_KEY = "tracker.zerocopy.connection"

#: A socket address as hypercorn puts it in the scope.
Address = tuple[Any, ...]


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


def _nothing() -> None:
    """What ending a connection of no socket does."""


class Connection:
    """One client connection's side of the handshake between a body and its stream.

    ``client``: the client it counts for where one client's share is weighed (its address, an
    IPv6 one as its /64: :func:`tracker.zerocopy.limit.fair_share`; None: not known);
    ``end``: ends the connection both ways (its stream's ``shut_down``)."""

    def __init__(
        self,
        connections: Connections,
        client: str | None = None,
        end: Callable[[], None] = _nothing,
    ) -> None:
        self._connections = connections
        self.client = client
        self._end = end
        self._placeholders = connections.placeholders
        self._staged: Piece | None = None
        self.broken = False
        #: Requests of this connection the app is answering now (see ZeroCopyApp).
        self.requests = 0
        #: Called (once) as the app starts answering a request of this connection: a
        #: connection admitted over the limit is weighed then (ConnectionLimit).
        self.on_request: Callable[[], None] | None = None
        #: Set when the answer in progress is over.
        self._answered = trio.Event()
        #: The scope the connection's handler runs in (tracker/zerocopy/server.py), cancelled
        #: once a send found the client gone and no answer is in progress (:meth:`gone`).
        self.handler = trio.CancelScope()
        #: Whether the server has no request of this connection open (set by server.py:
        #: ``_no_request_open``).
        self.between_requests: Callable[[], bool] = lambda: False
        self._gone = False
        self._progress = ClientProgress()
        #: Bytes of the last piece put on the socket before it was cut short (None: none
        #: was, or they were taken already: :meth:`take_cut`).
        self._cut: int | None = None

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around the app's answer to one request: the connection is busy (never closed as
        idle) and its closing waits for the answer (:meth:`answer_sent`)."""
        self.requests += 1
        try:
            if self.on_request is not None:
                started, self.on_request = self.on_request, None
                started()
            yield
        finally:
            self.requests -= 1
            self._answered.set()
            self._answered = trio.Event()
            self._end_if_gone()

    def gone(self) -> None:
        """A send failed: nothing more reaches the client (it reset, or it left with answers
        unread; or a piece broke the framing and the socket was shut down).

        hypercorn swallows a failed send: it closes the request and goes on. An answer that
        completes anyway (the short redirects answered before Quart, a small Quart answer)
        then lets it start the next pipelined request, so a client that left megabytes of
        requests in the socket had each of them answered into the void, for minutes; an
        answer the disconnect cancels instead leaves hypercorn's reader waiting for the next
        request's turn, which never comes. Either way the connection is neither idle nor of
        use, and nothing else would end it (docs/architecture.md#connections). So its
        handler is ended as soon as no answer is in progress and the server has no request
        of it open: the app ends an answer its own way, and nothing of it can reach the
        client any more.
        """
        self.broken = self._gone = True
        self._end_if_gone()

    @property
    def client_left(self) -> bool:
        """A send found the client gone (:meth:`gone`): nothing more reaches it."""
        return self._gone

    def _end_if_gone(self) -> None:
        if self._gone and not self.requests and self.between_requests():
            self.handler.cancel()

    async def answer_sent(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until the answer in progress has been sent, unless
        the caller is inside the answer's last send (:func:`sending_last`): hypercorn closes
        a ``connection: close`` connection from there.

        hypercorn's reader also closes the connection, as soon as h11 refuses more input
        (bytes after a request answered with ``connection: close``), while the request's
        task may still be sending that answer: without this wait the answer was lost.
        """
        if self.requests and not _SENDING_LAST.get():
            with trio.move_on_after(within):
                await self._answered.wait()

    def stalled(self) -> float:
        """Seconds the client has taken no byte while a piece waited for it (0: none waits)."""
        return self._progress.stalled()

    def reclaim(self) -> None:
        """Give up on the client (its download slot went to another): the piece waiting for
        it fails as the client's failure, and the connection ends, also where the answer is
        moving (a slot taken from the client holding the most: its bytes still flowed)."""
        self._progress.reclaim()
        self._end()

    async def send_plain(
        self, sock: trio.socket.SocketType, data: bytes | bytearray | memoryview
    ) -> None:
        """Send ``data`` (a head, a small body, a file's last bytes: what is not a piece)
        on the client's socket ``sock`` while an answer is in progress, waiting for room as
        a piece does (:func:`~tracker.zerocopy.pieces.client_room`): its client's stall is
        measured (:meth:`stalled`), :meth:`reclaim` gives up on it, and a client that takes
        nothing for STALL_TIMEOUT is given up on (tracker/zerocopy/kernelcopy.py). Sent by
        trio's stream, a client that stopped reading in a file's last bytes kept its
        download slot until the kernel dropped it. Raises trio.BrokenResourceError when
        the client is gone or given up on (the connection is then shut down: part of
        ``data`` may be out)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data).cast("B")
        try:
            while view:
                try:
                    # the socket is non-blocking (trio's); SIGPIPE is ignored by Python
                    sent = os.write(sock.fileno(), view)
                except BlockingIOError:
                    await client_room(sock, self._progress)
                    continue
                view = view[sent:]
        except (OSError, TimeoutError) as exc:  # gone, reset, stalled or given up on
            self.broken = True
            shut_down(sock)
            raise trio.BrokenResourceError(str(exc) or type(exc).__name__) from exc

    def stage(self, piece: Piece) -> bytes:
        """Stage ``piece`` and return the placeholder to yield for it.

        Raises ValueError when ``piece.count`` is not a piece size (see :func:`piece_size`).
        """
        placeholder = self._placeholders.get(piece.count)
        if placeholder is None:
            raise ValueError(f"not a piece size: {piece.count}")
        self._staged, self._cut = piece, None
        return placeholder

    def take_cut(self) -> int | None:
        """The bytes of the last piece that went out before it was cut short (the client
        left, the source failed, the tracker stopped); None when none was, or they were
        taken already. Whoever counts the bytes counts these instead of the piece's size:
        hypercorn keeps a failed send to itself (``protocol_send`` ends the connection
        quietly), so the placeholder may come back to the body as if it had gone whole."""
        cut, self._cut = self._cut, None
        return cut

    def finish(self, piece: Piece, on_cut: Callable[[int], None] | None = None) -> None:
        """After the placeholder of ``piece`` was handed to the server: check it went out.

        Raises the piece's ``source_error`` when its source failed, ClientGone when the
        connection broke meanwhile, TrackerError when the piece never reached this
        connection's stream (a layer copied the body: a bug, never sent as zeros because the
        connection is then aborted before its content-length is reached). ``on_cut`` is
        told first the bytes of a piece that did not go whole (what went of it): the
        caller counts its bytes served after this returns, and those counted nowhere.
        """
        if piece.sent:
            return
        self._staged = None
        if on_cut is not None:
            on_cut(piece.went())
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

        The bytes move in worker threads and every wait happens in the event loop
        (:meth:`~tracker.zerocopy.pieces.PieceSenders.send`). Raises
        trio.BrokenResourceError when nothing was staged for it, the client went away or
        stalled (STALL_TIMEOUT, tracker/zerocopy/kernelcopy.py), or the piece's source
        failed; the connection is then shut down (part of the piece may be out: it must end
        short of its content-length).
        """
        piece, self._staged = self._staged, None
        if piece is None or piece.count != len(data):
            self.broken = True
            raise trio.BrokenResourceError("a zero-copy placeholder that was not staged")
        sent = False
        try:
            await self._connections.senders.send(sock, piece, lambda: self.broken, self._progress)
            sent = True
        except (SourceFailed, OSError) as exc:
            if isinstance(exc, SourceFailed):
                piece.source_error = exc
            self.broken = True
            # hypercorn only marks the connection closed when send_all fails: end it here.
            shut_down(sock)
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            piece.close()
            if not sent:  # cut short, also by a cancellation (the tracker stopping)
                self._cut = piece.went()
        piece.sent = True
        self._connections.pieces += 1


class Connections:
    """The client connections able to take zero-copy pieces, by (client, server) address."""

    def __init__(self, threads: int = 256) -> None:
        self.placeholders = placeholders()
        #: The worker threads sending pieces (``threads`` at most: a stalled client holds one).
        self.senders = PieceSenders(threads)
        #: Pieces sent with sendfile so far, on every connection.
        self.pieces = 0
        self._open: dict[tuple[Address, Address], Connection] = {}

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def open(self, key: tuple[Address, Address], end: Callable[[], None] = _nothing) -> Connection:
        """Register a new connection (its stream calls this with its ``shut_down``)."""
        connection = Connection(self, client_of(key[0]), end)
        self._open[key] = connection
        return connection

    def close(self, key: tuple[Address, Address]) -> None:
        """Forget a connection (its stream calls this when it closes)."""
        self._open.pop(key, None)

    def for_scope(self, scope: dict[str, Any]) -> Connection | None:
        """The connection an HTTP/1.x request arrived on, when it can take pieces."""
        if scope.get("type") != "http" or not http1(scope):
            return None  # HTTP/2 frames bodies itself: a placeholder would be copied
        client, server = scope.get("client"), scope.get("server")
        if not client or not server:
            return None
        return self._open.get((tuple(client), tuple(server)))


def client_of(address: Address) -> str:
    """The client a connection from ``address`` (host, port) counts for: its host as one
    spelling (an IPv4-mapped address as the IPv4 one), an IPv6 address as its /64, which one
    machine is routinely given whole (:func:`tracker.core.hosts.machine_of`). Pure."""
    return machine_of(canonical_host(str(address[0])))


def http1(scope: Mapping[str, Any]) -> bool:
    """Whether the request of ``scope`` is HTTP/1.x (a later minor version is served as
    1.1, RFC 9112 section 2.3)."""
    return str(scope.get("http_version", "")).startswith("1.")


def zero_copy_connection(scope: Mapping[str, Any]) -> Connection | None:
    """The request's connection (from its ASGI ``scope``) when it takes zero-copy pieces."""
    connection = scope.get(SCOPE_KEY)
    return connection if isinstance(connection, Connection) else None
