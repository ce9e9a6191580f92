"""Zero-copy file bodies (tracker/zerocopy/: connection.py, pieces.py, stream.py, server.py)
over real sockets.

tests/integration/test_fileresponse.py runs every file-response case on this server too; here
are the cases of the mechanism itself: pieces of every size, keep-alive framing after pieces,
HTTP/1.0, concurrent streams, a stalled client, and the guard that a placeholder is never sent
as zeros (the pieces without a socket: tests/unit/test_zerocopy_unit.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from helpers_server import file_for_request, serve_app
from helpers_tls import client_tls
from helpers_wire import read_body_to
from quart import Response
from quart_trio import QuartTrio

import tracker.zerocopy.kernelcopy
import tracker.zerocopy.stream as stream_module
from tracker.accounting.downloads import outcome_of
from tracker.serving.fileresponse import TAIL
from tracker.serving.responsebodies import WrappedBody
from tracker.zerocopy.connection import (
    SCOPE_KEY,
    SMALLEST_PIECE,
    Connection,
    Connections,
)
from tracker.zerocopy.stream import ZeroCopyStream

MiB = 1024 * 1024
# Pieces of every size from 8 MiB down to 64 KiB once, and a tail under 64 KiB.
SIZE = 2 * 8 * MiB - SMALLEST_PIECE + 4321


@attrs.define
class Server:
    url: str
    path: Path
    data: bytes
    connections: Connections

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


class Recorded(WrappedBody):
    """Keeps why sending ended (None: complete)."""

    endings: list[BaseException | None]

    async def _finish(self, error: BaseException | None) -> None:
        self.endings.append(error)
        await super()._finish(error)


def file_app(path: Path, endings: list[BaseException | None] | None = None) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/file")
    async def whole() -> Response:
        response = await file_for_request(str(path))
        if endings is not None and response.status_code == 200:
            body = Recorded(response.response)
            body.endings = endings
            response.response = body
        return response

    return app


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "snapshot-100-archive.tar.zst"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    connections = Connections()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_app, file_app(path), connections=connections))
        yield Server(url, path, data, connections)
        nursery.cancel_scope.cancel()


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def test_whole_file_and_ranges_over_one_keep_alive_connection(server: Server) -> None:
    ranges = [(0, SIZE - 1), (1, 3 * MiB + 77), (SIZE - SMALLEST_PIECE - 10, SIZE - 1)]
    async with httpx.AsyncClient(
        verify=client_tls(), base_url=server.url, limits=httpx.Limits(max_connections=1)
    ) as c:
        whole = await c.get("/file")
        assert whole.status_code == 200
        assert digest(whole.content) == digest(server.data)
        for first, last in ranges:
            part = await c.get("/file", headers={"range": f"bytes={first}-{last}"})
            assert part.status_code == 206
            assert part.content == server.data[first : last + 1]
        again = await c.get("/file")
        assert digest(again.content) == digest(server.data)
    # The whole file twice (8 pieces each) and the ranges went out by sendfile.
    assert server.connections.pieces >= 16


async def test_http_1_0_client(server: Server) -> None:
    # (hypercorn keeps an HTTP/1.0 connection open after the answer: read what is framed.)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /file HTTP/1.0\r\n\r\n")
        received = bytearray()
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < SIZE:
            data = await trio.to_thread.run_sync(sock.recv, 4 * MiB)
            assert data, "connection closed early"
            received += data
    head, body = bytes(received).split(b"\r\n\r\n", 1)
    assert head.split(b" ")[1] == b"200"
    assert f"content-length: {SIZE}".encode() in head.lower()
    assert digest(body) == digest(server.data)


async def test_eight_concurrent_streams(server: Server) -> None:
    results: list[bytes] = []

    async def fetch() -> None:
        async with httpx.AsyncClient(verify=client_tls(), base_url=server.url) as client:
            results.append(digest((await client.get("/file")).content))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(fetch)
    assert results == [digest(server.data)] * 8


async def test_a_file_system_without_sendfile_gets_the_same_bytes_copied(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sendfile(*args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    async with httpx.AsyncClient(verify=client_tls(), base_url=server.url) as client:
        response = await client.get("/file")
    assert response.status_code == 200
    assert digest(response.content) == digest(server.data)
    assert server.connections.pieces == 8  # still pieces, copied in the worker thread


async def served_to_a_client_that_leaves(
    path: Path,
    leave: Callable[[trio.socket.SocketType], Awaitable[int]],
    rcvbuf: int | None = None,
) -> tuple[int, BaseException | None]:
    """``path`` asked of the zero-copy server by a raw client (a receive buffer of
    ``rcvbuf``) that ``leave`` reads from, then closes: the body bytes it read, and how the
    file's body ended."""
    endings: list[BaseException | None] = []
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, file_app(path, endings))
        port = int(url.rsplit(":", 1)[1])
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            await sock.connect(("127.0.0.1", port))
            await sock.send(b"GET /file HTTP/1.1\r\nhost: t\r\n\r\n")
            read = await leave(sock)
        with trio.fail_after(10):
            while not endings:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    [error] = endings
    return read, error


async def test_a_client_leaving_mid_file_ends_the_body_as_client_gone(tmp_path: Path) -> None:
    path = tmp_path / "snapshot-100-archive.tar.zst"
    path.write_bytes(os.urandom(64 * MiB))

    async def ten_mib(sock: trio.socket.SocketType) -> int:
        received = 0
        while received < 10 * MiB:
            received += len(await sock.recv(MiB))
        return received

    received, error = await served_to_a_client_that_leaves(path, ten_mib)
    assert outcome_of(received, 64 * MiB, error) == "client_gone", repr(error)


async def test_a_client_leaving_in_the_last_bytes_ends_the_body_as_client_gone(
    tmp_path: Path,
) -> None:
    """The last 64 KiB go out as plain bytes, whose failed send hypercorn keeps to itself:
    a client that reset there had its download ended as complete, every byte counted."""
    path = tmp_path / "snapshot-100-archive.tar.zst"
    size = 4 * MiB  # its last 64 KiB: the plain tail
    path.write_bytes(os.urandom(size))

    async def into_the_tail_then_reset(sock: trio.socket.SocketType) -> int:
        _head, body = await read_body_to(sock, size - TAIL + 1)  # one byte into the tail
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return body

    body, error = await served_to_a_client_that_leaves(path, into_the_tail_then_reset, 2048)
    assert outcome_of(body, size, error) == "client_gone", repr(error)


async def test_a_plain_send_waits_for_a_client_that_keeps_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain send during an answer (a head, a file's last bytes, a relay's chunk through
    Python) waits for room in the client's socket as a piece does: a client that keeps
    reading gets all of it, however much longer than the stall timeout (0.5 s here) the
    send takes, and is never seen stalled (sent by trio's stream under one deadline, it was
    cut at the deadline, and seen stalled from the start); one that takes nothing is given
    up on after the stall timeout."""
    monkeypatch.setattr(tracker.zerocopy.kernelcopy, "STALL_TIMEOUT", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        accepted.setblocking(False)
        sock = trio.socket.from_stdlib_socket(accepted)
        connection = Connection(Connections(4))
        received = bytearray()
        stalls: list[float] = []
        data = os.urandom(4 * MiB)

        async def slow_reader() -> None:
            while len(received) < len(data):
                chunk = await trio.to_thread.run_sync(client.recv, 64 * 1024)
                assert chunk
                received.extend(chunk)
                stalls.append(connection.stalled())
                await trio.sleep(0.01)  # the client's pace, on purpose

        with sock:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(slow_reader)
                    await connection.send_plain(sock, data)
            assert bytes(received) == data
            assert max(stalls) < 0.5
            # a client that reads nothing more is given up on after the stall timeout
            with trio.fail_after(30), pytest.raises(trio.BrokenResourceError):
                await connection.send_plain(sock, data)
            assert connection.broken


async def test_a_pipelining_client_that_left_ends_its_connection(server: Server) -> None:
    """Three whole-file requests in one go, some bytes of the first answer read, then the
    client leaves. The piece's send fails and hypercorn cancels the answer; its reader waited
    for the second request's turn for ever, and the connection stayed open (the canary of
    assumption 10 in tracker/zerocopy/README.md)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await sock.connect(("127.0.0.1", server.port))
        await sock.send(b"GET /file HTTP/1.1\r\nhost: t\r\n\r\n" * 3)
        assert (await sock.recv(65536)).startswith(b"HTTP/1.1 200")
        assert server.connections.count == 1
    with trio.fail_after(10):
        while server.connections.count:  # polling: the server's side has nothing to wait on
            await trio.sleep(0.01)


async def test_a_stalled_client_is_dropped(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker.zerocopy.kernelcopy, "STALL_TIMEOUT", 0.5)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    with sock:
        await sock.connect(("127.0.0.1", server.port))
        await sock.send(b"GET /file HTTP/1.1\r\nhost: t\r\n\r\n")
        await trio.sleep(3)  # read nothing: the server's piece cannot progress
        received = 0
        with trio.fail_after(10):
            while data := await sock.recv(MiB):
                received += len(data)
    # The connection ended (instead of waiting forever), short of head + SIZE.
    assert received < SIZE


def inject_connection(app: Any, connections: Connections) -> Any:
    """An ASGI wrapper that hands the app a Connection no stream will ever take pieces for."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            key = (tuple(scope["client"]), tuple(scope["server"]))
            scope = {**scope, SCOPE_KEY: connections.open(key)}
        await app(scope, receive, send)

    return wrapped


async def test_a_placeholder_that_bypasses_the_stream_never_completes_a_response(
    tmp_path: Path,
) -> None:
    # Plain hypercorn writes a placeholder as the zeros it holds; the body must notice its
    # piece was not taken and abort the connection short of content-length.
    path = tmp_path / "snapshot-100-archive.tar.zst"
    path.write_bytes(os.urandom(3 * MiB))
    app = inject_connection(file_app(path), Connections())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_app, app, plain=True))
        received = await receive_until_broken(url)
        nursery.cancel_scope.cancel()
    assert 0 < received < 3 * MiB


async def receive_until_broken(url: str) -> int:
    """Bytes of body received before the server broke the connection (fails if it didn't)."""
    received = 0
    async with (
        httpx.AsyncClient(verify=client_tls(), base_url=url) as client,
        client.stream("GET", "/file") as response,
    ):
        assert response.headers["content-length"] == str(3 * MiB)
        try:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
        except httpx.RemoteProtocolError:
            return received
    raise AssertionError(f"a complete response of {received} bytes")


async def zero_copy_pair() -> tuple[ZeroCopyStream, ZeroCopyStream]:
    """Two ends of one real TCP connection on 127.0.0.1, each a ZeroCopyStream."""
    connections = Connections()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    with listener:
        await client.connect(listener.getsockname())
        accepted, _ = await listener.accept()
    return (
        ZeroCopyStream(trio.SocketStream(client), connections),
        ZeroCopyStream(trio.SocketStream(accepted), connections),
    )


async def clogged_zero_copy_pair() -> tuple[ZeroCopyStream, ZeroCopyStream]:
    """A pair whose send buffers are full, so that ``send_all`` blocks."""
    left, right = await zero_copy_pair()
    for end in (left, right):
        # Fill the kernel's buffers of this direction until it refuses more (nobody reads).
        with socket.socket(fileno=os.dup(end.socket.fileno())) as raw:
            raw.setblocking(False)
            try:
                while True:
                    raw.send(b"x" * 65536)
            except BlockingIOError:
                pass
    return left, right


async def test_the_zero_copy_stream_is_a_well_behaved_half_closeable_stream() -> None:
    """hypercorn drives the stream only through trio's stream interface: it must keep every
    promise of that interface (trio's own conformance check)."""
    await trio.testing.check_half_closeable_stream(zero_copy_pair, clogged_zero_copy_pair)


async def test_a_stream_closed_after_its_answer_lingers_until_the_client_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After ``send_eof`` (hypercorn ending a connection after an answer), ``aclose`` reads
    and drops what the client still sends until the client closes too, instead of closing
    with unread input (which makes the kernel reset the connection and drop what of the
    answer is still queued); a client that never closes is given LINGER_SECONDS."""
    monkeypatch.setattr(stream_module, "LINGER_SECONDS", 0.5)
    client, server = await zero_copy_pair()
    await client.send_all(b"x" * 10_000)  # never read by the server's app
    closed = trio.Event()

    async def close() -> None:
        await server.send_eof()
        await server.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close)
        assert await client.receive_some(10) == b""  # the server's answer ended
        await client.send_all(b"y" * 10_000)  # more input: a closed socket would reset
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # still reading what the client sends
        await client.send_eof()
        with trio.fail_after(5):
            await closed.wait()  # the client's end: closed at once
    await client.aclose()
    client, server = await zero_copy_pair()
    start = trio.current_time()
    with trio.fail_after(5):
        await server.send_eof()
        await server.aclose()  # the client never closes: bounded
    assert 0.4 < trio.current_time() - start < 3
    await client.aclose()
