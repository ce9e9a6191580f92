"""Serve an ASGI app on one listening socket with hypercorn's connection handler.

This is hypercorn's ``trio.serve`` (hypercorn/trio/run.py ``worker_serve``) cut down to what
the tracker uses — one plain TCP listener, lifespan, graceful stop — with one change: each
accepted connection is wrapped in a :class:`tracker.zerocopy.stream.ZeroCopyStream` before
hypercorn's ``TCPServer`` sees it, so file bodies can go out with ``sendfile``. hypercorn's
``serve`` builds its listeners itself and offers no hook for that.

It uses hypercorn's ``TCPServer``, ``Lifespan`` and ``WorkerContext``, which are not
documented API: tests/integration/test_zerocopy.py serves real downloads through this module
and fails if their signatures or behaviour change.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import hypercorn.protocol.h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from tracker.errors import TrackerError
from tracker.h11patches.closing import install as bytes_after_the_last_request_dropped
from tracker.h11patches.headers import install as lower_case_headers
from tracker.h11patches.statusline import install as reason_phrases
from tracker.observability.folding import log_folded
from tracker.observability.logs import ExpectedErrors
from tracker.zerocopy.connection import SCOPE_KEY, Connections, http1, sending_last
from tracker.zerocopy.keepalive import KeepAlive
from tracker.zerocopy.limit import CAPACITY_ERRNOS, ConnectionLimit
from tracker.zerocopy.stream import ZeroCopyStream

log = logging.getLogger(__name__)

#: The largest request head served (hypercorn's ``h11_max_incomplete_size``, h11's default).
MAX_HEAD = 16 * 1024


class ZeroCopyApp:
    """Puts the request's :class:`~tracker.zerocopy.connection.Connection` in the scope, and
    refuses requests whose framing is ambiguous, or whose head is over ``max_head`` bytes,
    before the app sees them."""

    def __init__(self, app: Any, connections: Connections, max_head: int = MAX_HEAD) -> None:
        self.app = app
        self._connections = connections
        self._max_head = max_head

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        send = partial(_send_last_shielded, send)
        connection = self._connections.for_scope(scope)
        if connection is None:
            await self._answer(scope, receive, send)
            return
        if connection.client_left:
            # A pipelined request of a client a send found gone: nothing of an answer could
            # reach it, and the connection's handler is cancelled meanwhile, so an answer
            # would stop half way into hypercorn (docs/architecture.md#connections).
            return
        scope[SCOPE_KEY] = connection  # each request's scope is its own dict
        # Busy: the connection limit never closes it now, and a close waits for the answer.
        with connection.answering():
            await self._answer(scope, receive, send)

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and head_size(scope) > self._max_head:
            # h11 bounds a head only while it is incomplete: one whose last bytes came in
            # the read that crossed the bound (up to 20 KiB in 4 KiB reads) was served, the
            # same head cut otherwise by the network refused (docs/http-api.md, "Errors").
            await _refuse(send, REFUSALS[431], 431)
            return
        if scope.get("type") == "http" and not http1(scope):
            # HTTP/2's prior-knowledge preface (``PRI * HTTP/2.0``), read as a request now
            # that no request switches protocols (:func:`http1_only`).
            await _refuse(send, b"only HTTP/1.1 is served\n", 505)
            return
        if scope.get("type") == "http" and _ambiguous_length(scope.get("headers", ())):
            await _refuse(send, b"content-length and transfer-encoding together\n")
            return
        await self.app(scope, receive, send)


async def _send_last_shielded(send: Any, message: Any) -> None:
    """``send(message)``; the last (small) message of a response shielded from cancellation.

    Sending it makes hypercorn end the request and, in the same call, either close the
    connection (``Connection: close``, HTTP/1.0) or start its idle timer. quart-trio cancels
    the request's task as soon as hypercorn reports the request over, in the middle of that
    call: unshielded, the connection then stayed open, with no idle timer, until the client
    gave up. The message is at most a few bytes (Quart ends every body with an empty one).
    """
    last = message.get("type") == "http.response.body" and not message.get("more_body")
    if not last:
        await send(message)
        return
    with sending_last():
        if len(message.get("body", b"")) <= _SHIELDED_BODY:
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)


#: The largest last message of a response sent shielded (a few bytes in practice).
_SHIELDED_BODY = 64 * 1024


def head_size(scope: Any) -> int:
    """The bytes of an HTTP scope's request head written as tightly as HTTP/1.1 allows
    (``name:value`` fields): never more than the head the client sent."""
    target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    if scope.get("query_string"):
        target += 1  # its "?"
    line = len(scope.get("method", "")) + 1 + target + len(" HTTP/1.1\r\n")
    fields = sum(len(name) + 1 + len(value) + 2 for name, value in scope.get("headers", ()))
    return line + fields + 2


def _ambiguous_length(headers: Any) -> bool:
    """A request with both ``Content-Length`` and ``Transfer-Encoding``: h11 obeys the
    latter, a proxy in front of the tracker may have obeyed the former, and the two would
    disagree on where the next request starts (request smuggling)."""
    names = {bytes(name).lower() for name, _value in headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def _refuse(send: Any, reason: bytes, status: int = 400) -> None:
    """A ``status`` (400) with a one-line reason; ``connection: close`` ends the connection
    after it."""
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(reason)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": reason, "more_body": False})


async def _served_as_http1(_protocol: H11Protocol, _event: object) -> None:
    """hypercorn's ``H11Protocol._check_protocol`` replaced: no request switches the
    connection to HTTP/2."""


def http1_only() -> None:
    """Keep every connection in HTTP/1.1: hypercorn answers ``upgrade: h2c`` with a 101 and
    takes ``PRI * HTTP/2.0`` as HTTP/2, whose streams bypass the zero-copy sends and whose
    flow control hypercorn does not wait for (a stream whose window stays 0 had the whole
    archive buffered in memory: 1 GB for a 1 GiB file, per stream). A server may ignore
    ``upgrade`` (RFC 9110, section 7.8): the request is answered in HTTP/1.1; the preface
    gets a 505 (:meth:`ZeroCopyApp._answer`). tracker/zerocopy/README.md, assumption 14."""
    H11Protocol._check_protocol = _served_as_http1  # type: ignore[method-assign,assignment]


def _the_same_connection(connection: h11.Connection) -> h11.Connection:
    """hypercorn's ``H11WSConnection`` replaced: the request's h11 connection goes on."""
    return connection


def http_streams_only() -> None:
    """Make hypercorn's ``H11Protocol`` take a WebSocket upgrade (a GET with ``upgrade:
    websocket``) as the HTTP request it is: no route speaks WebSocket, and the app refuses
    it in one line, closing the connection (:func:`tracker.web.shortcuts.refuse_websocket`).
    hypercorn's WebSocket stream handed every byte the client sent behind the upgrade (a
    pipelined request, an eager first frame) to a handshake not accepted, which answered
    them with a 400 of its own in the middle of the app's: h11 raised, and the error ended
    the listener's nursery and the process (one packet of any client stopped the
    tracker). tracker/zerocopy/README.md, assumption 16."""
    hypercorn.protocol.h11.WSStream = HTTPStream  # type: ignore[attr-defined,assignment]
    hypercorn.protocol.h11.H11WSConnection = _the_same_connection  # type: ignore[misc,assignment]


#: The one-line reasons of the refusals h11 decides before a request reaches the app, by the
#: status it hints (its own words are not sent: some repeat the client's bytes).
REFUSALS = {
    400: b"malformed request\n",
    431: b"request head too large\n",
    501: b"only transfer-encoding: chunked is taken\n",
}


async def _refuse_in_one_line(protocol: H11Protocol, status_code: int) -> None:
    """hypercorn's ``H11Protocol._send_error_response`` replaced: its answer (``connection:
    close``, the configured response headers) with a one-line ``text/plain`` body where it
    sent none (docs/http-api.md, "Errors")."""
    reason = REFUSALS.get(status_code, b"malformed request\n")
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(reason)).encode()),
        (b"connection", b"close"),
        *protocol.config.response_headers("h11"),
    ]
    await protocol._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await protocol._send_h11_event(h11.Data(data=reason))
    await protocol._send_h11_event(h11.EndOfMessage())


def refusals_in_one_line() -> None:
    """Give the requests h11 refuses (a head over 16 KiB: 431; conflicting
    ``content-length``s, a missing ``host``, a malformed line: 400; a ``transfer-encoding``
    other than ``chunked``: 501) a one-line reason, as every other refusal has: hypercorn
    answers them with an empty body. tracker/zerocopy/README.md, assumption 15."""
    H11Protocol._send_error_response = _refuse_in_one_line  # type: ignore[method-assign,assignment]


async def serve(
    app: Any,
    config: HypercornConfig,
    sock: socket.socket,
    connections: Connections,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    grace: Callable[[], float] | None = None,
    max_connections: int = 4096,
    on_failure: Callable[[], object] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening TCP socket ``sock`` until ``shutdown_trigger`` returns.

    At most ``max_connections`` client connections are open at once (see
    :mod:`tracker.zerocopy.limit`). An exception no rule foresaw in one connection's handler
    costs that connection only: it is closed, logged as ``connection_failed`` and
    ``on_failure()`` is called (:func:`unforeseen`). Once ``shutdown_trigger`` returned, stop
    accepting, give open connections ``grace()`` seconds to finish (read then; without
    ``grace``, ``config.graceful_timeout``), and run the app's lifespan shutdown.
    ``sock`` is closed on return. Starts with the bound address (``http://host:port``) as
    hypercorn's ``serve`` does.
    """
    lower_case_headers()  # `connection: close` as the clients of README.md#clients expect it
    reason_phrases()  # `HTTP/1.1 303 See Other`, not `HTTP/1.1 303 `
    bytes_after_the_last_request_dropped()  # a stray CRLF after an HTTP/1.0 request
    http1_only()  # no h2c upgrade, no HTTP/2 preface
    http_streams_only()  # no WebSocket stream: the app refuses an upgrade itself
    refusals_in_one_line()  # a 431 or 400 of h11's says why
    zero_copy = ZeroCopyApp(app, connections, config.h11_max_incomplete_size)
    wrapped = wrap_app(zero_copy, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    bind = f"http://{repr_socket_addr(sock.family, sock.getsockname())}"

    limit = ConnectionLimit(max_connections)
    keep_alive = KeepAlive(config.keep_alive_timeout)
    failed = partial(_connection_failed, listener=bind, on_failure=on_failure)

    async def handle(stream: ZeroCopyStream) -> None:
        try:
            state = ConnectionState(lifespan_state.copy())
            server = TCPServer(wrapped, config, context, state, stream)  # type: ignore[arg-type]
            # One keep-alive task for the listener instead of one per connection (keepalive.py).
            server.idle_task = keep_alive.timer(stream)  # type: ignore[assignment]
            stream.end_when_gone(partial(_no_request_open, server))
            # Cancelled when a send found the client gone (Connection.gone).
            with stream.handler:
                await server
        except BaseException as ended:
            # What no rule foresaw, in hypercorn, h11 or the tracker's code under them, ended
            # the listener's nursery and the process: every client's download with it
            # (docs/architecture.md, "Failures"). It costs this connection; cancellation and
            # the interpreter's own exits go on up.
            failure, rest = unforeseen(ended)
            if failure is None:
                raise
            await failed(failure, stream)
            if rest is not None:
                raise rest from None
        finally:
            keep_alive.busy(stream)
            limit.release(stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections_nursery:
            async with listener, trio.open_nursery() as accepting:
                accepting.start_soon(
                    _accept, listener, connections, limit, handle, connections_nursery, failed
                )
                accepting.start_soon(keep_alive.run)
                task_status.started([bind])
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()
            keep_alive.stop()
            # The grace in force now, not the one at the start: a reload may have changed
            # it, and the caller's own stop reads the same value (docs/configuration.md,
            # `shutdown_grace`).
            seconds = config.graceful_timeout if grace is None else grace()
            connections_nursery.cancel_scope.deadline = trio.current_time() + seconds
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def unforeseen(
    ended: BaseException,
) -> tuple[Exception | None, BaseException | None]:
    """What of ``ended`` (what ended a connection's handler) was unforeseen, and what must go
    on up: every ``Exception``, also inside a group (trio's nurseries, hypercorn's
    among them, group what their tasks raise), is the connection's failure; a
    cancellation (``trio.Cancelled``), ``KeyboardInterrupt``, ``SystemExit`` and anything
    else that is no ``Exception`` go on, in a group of their own where they came in one.
    ``(None, ended)`` when nothing failed. Pure."""
    if isinstance(ended, BaseExceptionGroup):
        failure, rest = ended.split(Exception)
        return (None, ended) if failure is None else (failure, rest)
    if isinstance(ended, Exception):
        return ended, None
    return None, ended


def failure_text(failure: BaseException) -> str:
    """``Type: message`` of ``failure``; of each exception in it for a group (``; ``
    between them), whose own text says only how many it holds. Pure."""
    if isinstance(failure, BaseExceptionGroup):
        return "; ".join(failure_text(inner) for inner in failure.exceptions)
    return f"{type(failure).__name__}: {failure}"


async def _connection_failed(
    failure: Exception,
    stream: ZeroCopyStream | trio.SocketStream,
    *,
    listener: str,
    on_failure: Callable[[], object] | None,
) -> None:
    """``failure`` ended the connection of ``stream`` (its handler, or its admission by the
    accept loop): count it, log it (one line, with its traceback), close the connection.
    A client that can trigger the bug can repeat it: the line is folded past the log's rate
    (tracker/observability/folding.py), the count stays exact."""
    if on_failure is not None:
        on_failure()
    log_folded(
        log,
        "error",
        "connection_failed",
        exc_info=failure,
        listener=listener,
        client=stream.client if isinstance(stream, ZeroCopyStream) else None,
        error=failure_text(failure),
    )
    if isinstance(stream, ZeroCopyStream):
        # Whatever the protocol's state, nothing more of this connection is sent or read.
        stream.shut_down()
    await stream.aclose()


def _no_request_open(server: TCPServer) -> bool:
    """hypercorn has no request of ``server``'s connection open: between two requests, or
    its reader waits for a pipelined request's turn (h11 paused), or it is about to start
    the next one. No task of the connection is then in a request hypercorn has not closed,
    so cancelling the handler breaks nothing (tasks it starts later begin cancelled). False
    for anything else (HTTP/2 included: its requests are not counted by the connection)."""
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    return isinstance(protocol, H11Protocol) and protocol.stream is None


async def _accept(
    listener: trio.SocketListener,
    connections: Connections,
    limit: ConnectionLimit,
    handle: Callable[[ZeroCopyStream], Awaitable[None]],
    nursery: trio.Nursery,
    failed: Callable[[Exception, ZeroCopyStream | trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept connections for ``handle`` within ``limit``, for ever (until cancelled).

    trio's ``serve_listeners`` logs every accept() that fails for lack of descriptors, ten
    times a second while it lasts; here such failures and refusals make one summary line a
    minute (:class:`ConnectionLimit`) and the loop backs off a little. What no rule foresaw
    while one connection is admitted costs that connection (``failed``), not the listener.
    """
    while True:
        try:
            socket_stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            limit.exhausted(exc)
            await trio.sleep(ACCEPT_BACKOFF)
            continue
        stream: ZeroCopyStream | None = None
        try:
            stream = ZeroCopyStream(socket_stream, connections)
            admitted = limit.admit(stream)
        except Exception as failure:  # docs/architecture.md, "Failures"
            if stream is not None:
                limit.release(stream)
            await failed(failure, socket_stream if stream is None else stream)
            continue
        if admitted:
            nursery.start_soon(handle, stream)
        else:
            await stream.aclose()


#: Seconds accept() waits after failing for lack of descriptors.
ACCEPT_BACKOFF = 0.1


#: Seconds an idle client connection is kept open.
KEEP_ALIVE_TIMEOUT = 5.0


def hypercorn_config(grace: float) -> HypercornConfig:
    """A hypercorn config for one listener: no read timeout, no access log on the hot path."""
    cfg = HypercornConfig()
    cfg.graceful_timeout = grace
    # A download sends nothing upstream for hours: no read timeout .
    cfg.read_timeout = None
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    if not any(isinstance(f, ExpectedErrors) for f in cfg.errorlog.filters):
        # Deliberately broken streams were logged already, as one line each (during a stop
        # the server reports them grouped with the cancellation of the request).
        cfg.errorlog.addFilter(ExpectedErrors((TrackerError, trio.Cancelled)))
    # Idle connections (between requests, or before a request head is complete) are closed
    # after this: a client that means to send another request does so at once, and each idle
    # connection holds a descriptor. A request in flight (a download) is never idle.
    cfg.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    return cfg
