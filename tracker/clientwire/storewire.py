"""The object store's wire, below botocore's public API: every answer botocore reads whole
before it parses it (a listing's page, an error's body, a write's answer; all but an object's
bytes) is read at most :data:`MAX_ANSWER` bytes and only until its call's deadline, then its
connection dropped and a StoreError raised, never retried. botocore has no bound of its own:
a page of a gigabyte or an endless chunked body from a misbehaving or compromised endpoint
grew the tracker's memory for as long as it was sent, and its worker thread read on past the
call's deadline (docs/architecture.md, "Threat model"). Each call runs on a
:class:`CallLine`: when trio gives it up (its deadline, a cancellation), the sockets it is
reading are shut down from the event loop, so that its worker thread ends then, whatever the
store still trickles (the head of an answer, a small object's bytes). tracker/zerocopy/README.md
lists the assumptions this makes of botocore and urllib3 and their canary tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
    AWSPreparedRequest,
    AWSRequest,
    AWSResponse,
)
from botocore.exceptions import ConnectionClosedError, HTTPClientError, ReadTimeoutError, SSLError
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError
from urllib3.exceptions import SSLError as URLLib3SSLError

from tracker.errors import StoreError

_T = TypeVar("_T")

#: The most bytes of one answer read whole (a listing's page, an error, a write's answer; an
#: object's bytes are streamed to callers that bound each read). A page of 1,000 keys of
#: S3's longest (1,024 bytes) is under 1.5 MiB, 3.5 MiB were every byte of each escaped;
#: 4 MiB of XML parses into about 140 MiB at most, in the call's worker thread.
MAX_ANSWER = 4 * 1024 * 1024
#: The most bytes of a listing's page (its call's :class:`CallLine` says so): 1,000 entries
#: of 1,024-byte keys are about 1.3 MiB. botocore's parser takes about a second of the
#: worker thread per MiB of hostile XML (4 s for 4 MiB of tiny entries, against 0.1 s for a
#: real page of 1,000 archive keys), and a listing asks for up to 1,000 pages.
MAX_PAGE = 2 * 1024 * 1024
#: Bytes asked of the socket at once while an answer is read: whatever has come is taken
#: (``read1``), so that a trickled answer is seen to pass its deadline.
_READ_SIZE = 65536


def bound_answers(client: object, seconds: float) -> None:
    """Make the boto3 client ``client`` read each answer it reads whole within
    :data:`MAX_ANSWER` bytes and ``seconds`` from its request's sending. botocore offers no
    public way to its HTTP session (its Config has no bound on answers): the endpoint's own,
    built with the client's proxies, CA bundle and pool, is wrapped in place."""
    transport = cast(Any, client)._endpoint
    inner = transport.http_session
    # the dict its pool managers (direct and through proxies) make their pools of: the
    # connections of every pool are then those a CallLine can hang up
    inner._pool_classes_by_scheme.update(http=_LinedPool, https=_LinedTLSPool)
    transport.http_session = BoundedSession(inner, seconds)


class BoundedSession:
    """botocore's HTTP session (``inner``) whose answers are read whole at most
    :data:`MAX_ANSWER` bytes and ``seconds`` after the request was sent
    (:class:`BoundedAnswer`); an object's bytes stay a stream."""

    def __init__(self, inner: URLLib3Session, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def send(self, request: AWSRequest | AWSPreparedRequest) -> AWSResponse:
        """Send ``request``; its answer, read whole as botocore would but bounded (a
        StoreError past the bound), unless the operation streams it (an object's bytes)."""
        line = _current()
        if line is not None and line.over:
            # botocore's retry of what the hang-up broke: the call is given up, not retried
            raise StoreError("a call given up at its deadline")
        sent = time.monotonic()
        whole = not request.stream_output
        request.stream_output = True  # botocore would read it whole in there, unbounded
        try:
            answer = self._inner.send(request)
        finally:
            request.stream_output = not whole
        most = MAX_ANSWER if line is None else line.most
        bounded = BoundedAnswer(answer, sent, self._seconds, most)
        if whole:
            try:
                body = bounded.read_whole()
            except StoreError:
                raise  # past the bound: never asked again
            except Exception as exc:
                raise transport_error(request, exc) from exc
            if line is not None:
                line.read += len(body)
        return bounded

    def close(self) -> None:
        """Close the connections of the session (the client's endpoint closes)."""
        self._inner.close()


def transport_error(request: AWSRequest | AWSPreparedRequest, exc: Exception) -> Exception:
    """The botocore error ``URLLib3Session.send`` makes of urllib3's ``exc`` raised while an
    answer was read whole: botocore read it inside ``send``, and retries these as transient
    (``retries`` of tracker/objectstore/botoclients.py: a connection reset in a listing's
    page is asked again once). Read here, outside it, urllib3's own errors were not retried:
    a store error at the first reset. Pure."""
    url = request.url or ""
    if isinstance(exc, URLLib3ReadTimeoutError):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, URLLib3SSLError):
        return SSLError(endpoint_url=url, error=exc)
    if isinstance(exc, ProtocolError):
        return ConnectionClosedError(error=exc, request=request, endpoint_url=url)
    return HTTPClientError(error=exc)


class BoundedAnswer(AWSResponse):
    """An answer of the store whose body, when it is read whole (any answer of an operation
    that does not stream its bytes, and an error of one that does), is read at most
    ``most`` bytes (:data:`MAX_ANSWER` unless its call says less) and for ``seconds`` from
    its request's sending (``sent``,
    ``time.monotonic()``); past either the connection is closed and StoreError raised."""

    def __init__(
        self, answer: AWSResponse, sent: float, seconds: float, most: int = MAX_ANSWER
    ) -> None:
        super().__init__(answer.url, answer.status_code, answer.raw.headers, answer.raw)
        self._sent = sent
        self._seconds = seconds
        self._most = most
        self._whole: bytes | None = None

    @property
    def content(self) -> bytes:
        """The answer's body, read whole (once) within the bounds."""
        return self.read_whole()

    def read_whole(self) -> bytes:
        """Read the body (once): StoreError past ``most`` bytes or the deadline."""
        if self._whole is None:
            self._whole = _read_bounded(self.raw, self._sent, self._seconds, self._most)
        return self._whole


def _read_bounded(raw: Any, sent: float, seconds: float, most: int) -> bytes:
    """The body of urllib3's answer ``raw``, at most ``most`` bytes, read until
    ``seconds`` after ``sent`` (``time.monotonic()``); the connection closed and StoreError
    past either."""
    parts: list[bytes] = []
    size = 0
    try:
        while chunk := raw.read1(_READ_SIZE):
            size += len(chunk)
            if size > most:
                raise StoreError(f"an answer over {most} bytes")
            if time.monotonic() - sent > seconds:
                raise StoreError(f"an answer still coming after {seconds:g}s")
            parts.append(chunk)
    except BaseException:
        raw.close()  # the rest unread: the connection is not used again
        raise
    return b"".join(parts)


#: Held while a connection's twin socket is made, shut down or closed (one lock for all: each
#: hold is a system call or two).
_TWINS = threading.Lock()
#: The :class:`CallLine` of the store call a worker thread is running (its ``line``).
_running = threading.local()


def _current() -> CallLine | None:
    """The line of the call this thread runs (None outside one)."""
    line: CallLine | None = getattr(_running, "line", None)
    return line


class CallLine:
    """One call to the store (``run`` in its worker thread) and the connections it holds,
    which :meth:`hang_up` shuts down from any thread. boto's timeouts bound each read of a
    socket, never a whole answer: a call trio gave up at its deadline while the store
    trickled an answer's head or a small object's bytes, each byte inside the read timeout,
    kept its worker thread, and the bucket's thread with it, for as long as the store went on
    (docs/architecture.md, "Threat model"). A socket shut down makes the read blocked on it
    return at once (the connection is then dropped, never reused)."""

    def __init__(self, most: int = MAX_ANSWER) -> None:
        self._lock = threading.Lock()
        #: The most bytes of an answer of the call read whole (:data:`MAX_PAGE` a listing's).
        self.most = most
        #: The bytes of the answers the call read whole (a retry's too): a listing counts
        #: its pages' (``tracker.objectstore.bucket.LISTING_BYTES``).
        self.read = 0
        self._held: set[_Hangable] = set()
        #: Given up: every connection it holds, or takes from now on, is shut down.
        self.over = False
        self._ended = False
        #: Twins of connections closed while the call held them, kept until it ends.
        self._kept: list[socket.socket] = []

    def run(self, call: Callable[[], _T]) -> _T:
        """``call()``, in this (worker) thread, as this line's call; StoreError when it was
        given up before it began."""
        with self._lock:
            if self.over:
                raise StoreError("a call given up before it began")
        _running.line = self
        try:
            return call()
        finally:
            _running.line = None
            with self._lock:
                self._ended = True
                for conn in self._held:  # a body streamed on: nothing hangs it up now
                    conn.drop_twin()
                self._held.clear()
                for twin in self._kept:
                    twin.close()
                self._kept.clear()

    def hang_up(self) -> None:
        """Give the call up: shut down the connections it holds and any it takes from now
        on (from any thread). Nothing once it returned."""
        with self._lock:
            if self._ended:
                return
            self.over = True
            for conn in self._held:
                conn.hang_up()
            for twin in self._kept:
                _shut(twin)

    def hold(self, conn: _Hangable) -> None:
        """``conn`` is this call's until :meth:`let_go` (taken from its pool)."""
        with self._lock:
            self._held.add(conn)
            if self.over:
                conn.hang_up()

    def let_go(self, conn: _Hangable) -> None:
        """``conn`` is back in its pool: another call's from now on."""
        with self._lock:
            self._held.discard(conn)

    def keep(self, twin: socket.socket) -> bool:
        """Keep ``twin``, the twin of a connection this call holds that was closed, until
        the call ends (False once it ended: the caller closes it). The connection's socket
        may live on without it: http.client closes a connection whose answer ends with the
        connection ("Connection: close", HTTP/1.0, a body framed by its end) as soon as its
        head is read, and the answer's body is read on from the socket, in this call."""
        with self._lock:
            if self._ended:
                return False
            self._kept.append(twin)
            if self.over:
                _shut(twin)
            return True


def _shut(twin: socket.socket) -> None:
    """Shut down the socket ``twin`` duplicates: a read blocked on it returns."""
    with contextlib.suppress(OSError):
        twin.shutdown(socket.SHUT_RDWR)


class _Hangable:
    """What botocore's connection classes get: a twin of the connection's socket (a
    duplicate descriptor of the same socket) that another thread may shut down, made when it
    connects or a call takes it from its pool and closed when it goes back there, when the
    call ends (a body streamed on), or with the connection (kept by the call holding it
    until it ends: :meth:`CallLine.keep`); an idle connection holds one descriptor, as the
    start's split of the descriptor limit counts it (tracker/zerocopy/limit.py). A twin and
    not the socket itself: TLS takes the socket's descriptor over
    (its handshake reads a socket object that has none), and a descriptor closed by the
    connection's thread could be another file's by the time it is shut down."""

    line: CallLine | None = None
    _twin: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._twin_of(sock)
        line = _current()
        if line is not None and line.over:  # given up while it connected
            self.hang_up()
        return sock

    def _twin_of(self, sock: socket.socket) -> None:
        """Make the twin of ``sock`` (any twin before closed)."""
        twin = socket.socket(fileno=os.dup(sock.fileno()))  # an SSLSocket has no dup()
        with _TWINS:
            if self._twin is not None:
                self._twin.close()
            self._twin = twin

    def twin_up(self) -> None:
        """Make the connection's twin, when it is connected and has none: it is taken by a
        call (only a call's line hangs it up, so an idle one in its pool holds no twin)."""
        sock = cast(Any, self).sock
        if sock is not None and self._twin is None:
            with contextlib.suppress(OSError):  # closed: connected again, with a twin
                self._twin_of(sock)

    def drop_twin(self) -> None:
        """Close the connection's twin: no call holds it (the pool's descriptor split
        counts one descriptor per connection, tracker/zerocopy/limit.py)."""
        with _TWINS:
            twin, self._twin = self._twin, None
        if twin is not None:
            twin.close()

    def hang_up(self) -> None:
        """Shut the connection's socket down: a read blocked on it returns."""
        with _TWINS:
            if self._twin is not None:
                _shut(self._twin)

    def close(self) -> None:
        """Close the connection and its twin, which the call holding it keeps until it ends
        (:meth:`CallLine.keep`): its answer may still be read from the socket."""
        try:
            super().close()  # type: ignore[misc]
        finally:
            with _TWINS:
                twin, self._twin = self._twin, None
            line = self.line
            if twin is not None and (line is None or not line.keep(twin)):
                twin.close()


# botocore-stubs: AWSConnection's request/send differ from urllib3's (botocore's own classes)
class _LinedConnection(_Hangable, AWSHTTPConnection):  # type: ignore[misc]
    """botocore's connection over plain TCP, hangable (:class:`_Hangable`)."""


class _LinedTLSConnection(_Hangable, AWSHTTPSConnection):  # type: ignore[misc]
    """botocore's connection over TLS, hangable (:class:`_Hangable`)."""


class _Lined:
    """What botocore's connection pools get: a connection taken from the pool by a
    :class:`CallLine`'s thread is held by that call until it is put back."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        line = _current()
        if line is not None and isinstance(conn, _Hangable):
            conn.twin_up()  # before the line holds it: a hang-up from then on reaches it
            conn.line = line
            line.hold(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _Hangable):
            if conn.line is not None:
                conn.line.let_go(conn)
                conn.line = None
            conn.drop_twin()  # idle: one descriptor
        super()._put_conn(conn)  # type: ignore[misc]


class _LinedPool(_Lined, AWSHTTPConnectionPool):
    """botocore's pool of plain connections, lined (:class:`_Lined`)."""

    ConnectionCls = _LinedConnection


class _LinedTLSPool(_Lined, AWSHTTPSConnectionPool):
    """botocore's pool of TLS connections, lined (:class:`_Lined`)."""

    ConnectionCls = _LinedTLSConnection
