"""tracker.serving.fileresponse against a real server on 127.0.0.1, over real sockets.

Every server test runs twice: on the tracker's server (bodies go out with sendfile, in
pieces) and on plain hypercorn (bodies read with pread and sent as bytes, in chunks).

httpx checks what a client sees; raw sockets check the wire itself (framing, header case, HEAD
without a body) and let a test stall or drop a connection at a chosen moment. Open
descriptors of the served file are counted in /proc/self/fd: the server runs in this process.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from helpers_fds import open_fds
from helpers_server import file_for_request, serve_app
from helpers_tls import client_tls
from quart import Response, after_this_request
from quart_trio import QuartTrio
from werkzeug.wrappers.response import Response as WerkzeugResponse

from tracker.serving.fileresponse import content_disposition
from tracker.zerocopy.connection import Connections

AnyResponse = Response | WerkzeugResponse
CHUNK = 64 * 1024
SMALL_RCVBUF = 16 * 1024
# Bigger than what loopback can hold in flight (server send buffer of at most 4 MiB plus the
# client's small receive buffer plus one chunk), so a client that stops reading stalls it.
STALL_SIZE = 16 * 1024 * 1024


@attrs.define
class Served:
    """One running server: its URL, the file it serves and what the server side observed."""

    url: str
    path: Path
    data: bytes
    sent: list[int] = attrs.Factory(list)
    held: trio.Event = attrs.Factory(trio.Event)
    connections: Connections | None = None  # None: plain hypercorn, no sendfile

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


def make_app(served: Served) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/file")
    async def whole() -> Response:
        return await file_for_request(str(served.path), chunk_size=CHUNK, on_bytes=count)

    @app.route("/named")
    async def named() -> Response:
        named = {"content-disposition": content_disposition(served.path.name)}
        return await file_for_request(str(served.path), extra_headers=named)

    @app.route("/held")
    async def held() -> Response:
        @after_this_request
        async def hold(response: AnyResponse) -> AnyResponse:
            # The response (and its open descriptor) exists but Quart has not started to send
            # it: a client leaving now must not leak the descriptor.
            served.held.set()
            await trio.sleep_forever()
            return response  # pragma: no cover

        return await file_for_request(str(served.path))

    def count(n: int) -> None:
        served.sent.append(n)

    return app


@pytest.fixture(params=["sendfile", "pread"])
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    path = tmp_path / "snapshot-100-archive.tar.zst"
    data = os.urandom(3 * 1024 * 1024 + 12345)
    path.write_bytes(data)
    state = Served(url="", path=path, data=data)
    if request.param == "sendfile":
        state.connections = Connections()
    serve = partial(serve_app, connections=state.connections, plain=state.connections is None)
    async with trio.open_nursery() as nursery:
        state.url = await nursery.start(serve, make_app(state))
        yield state
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=client_tls(), base_url=served.url) as http:
        yield http


async def wait_for_fds(path: Path, expected: int) -> None:
    """Poll until ``expected`` descriptors are open on ``path``; give up after 5 s."""
    with trio.fail_after(5):
        # Polling: /proc has nothing to wait on.
        while open_fds(path) != expected:
            await trio.sleep(0.01)


async def settled(count: Callable[[], int], quiet: float = 0.2) -> int:
    """Wait until ``count()`` has not moved for ``quiet`` seconds (a server stuck on a full
    socket); its value then. Gives up after 10 s."""
    with trio.fail_after(10):
        value, since = count(), trio.current_time()
        while trio.current_time() - since < quiet:
            await trio.sleep(0.01)  # polling: the count is a plain list, nothing to wait on
            if count() != value:
                value, since = count(), trio.current_time()
    return value


# --- raw HTTP/1.1 over a socket --------------------------------------------------------------


@attrs.define
class RawResponse:
    status_line: str
    headers: list[tuple[str, str]]

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        assert len(values) <= 1, f"repeated header {name}"
        return values[0] if values else None


class RawConnection:
    """A client socket that reads exactly what the server framed, nothing more."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    async def open(cls, served: Served, rcvbuf: int | None = None) -> RawConnection:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(served.host_port)
        return cls(sock)

    async def send(self, method: str, target: str = "/file", **headers: str) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: test"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        await self.sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def _fill(self) -> bool:
        data = await self.sock.recv(256 * 1024)
        self.buffer += data
        return bool(data)

    async def read_head(self) -> RawResponse:
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(), "connection closed inside the response head"
        end = self.buffer.index(b"\r\n\r\n")
        head = self.buffer[:end].decode("latin-1")
        del self.buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        pairs = [line.split(":", 1) for line in lines]
        return RawResponse(status_line, [(name, value.strip()) for name, value in pairs])

    async def read_body(self, length: int) -> bytes:
        while len(self.buffer) < length:
            assert await self._fill(), "connection closed inside the body"
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    async def read_until_closed(self) -> int:
        total = len(self.buffer)
        self.buffer.clear()
        while data := await self.sock.recv(256 * 1024):
            total += len(data)
        return total

    def reset(self) -> None:
        """Close with an RST (linger 0), as a killed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@pytest.fixture
async def raw(served: Served) -> AsyncIterator[RawConnection]:
    connection = await RawConnection.open(served)
    with connection.sock:
        yield connection


# --- what a client sees ----------------------------------------------------------------------


async def test_get_whole_file(served: Served, client: httpx.AsyncClient) -> None:
    response = await client.get("/file")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(served.data).digest()
    st = served.path.stat()
    assert response.headers["content-length"] == str(len(served.data))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"'
    assert response.headers["last-modified"].endswith(" GMT")
    assert "content-range" not in response.headers
    assert "content-disposition" not in response.headers
    assert sum(served.sent) == len(served.data)
    if served.connections is None:
        assert max(served.sent) == CHUNK
    else:  # 2 MiB and 1 MiB pieces by sendfile, the last 12345 bytes (< 64 KiB) as bytes
        assert served.sent == [2 * 1024 * 1024, 1024 * 1024, 12345]
        assert served.connections.pieces == 2
    assert open_fds(served.path) == 0


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=-100", -100, None), ("bytes=1000-1999", 1000, 2000)],
)
async def test_get_range(
    served: Served,
    client: httpx.AsyncClient,
    range_header: str,
    start: int,
    stop: int | None,
) -> None:
    response = await client.get("/file", headers={"range": range_header})
    size = len(served.data)
    expected = served.data[start:stop]
    assert response.status_code == 206
    assert response.content == expected
    first = start % size
    last = first + len(expected) - 1
    assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers["accept-ranges"] == "bytes"


async def test_open_range_is_clamped(served: Served, client: httpx.AsyncClient) -> None:
    size = len(served.data)
    response = await client.get("/file", headers={"range": f"bytes={size - 10}-{size * 2}"})
    assert response.status_code == 206
    assert response.content == served.data[-10:]
    assert response.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"


async def test_range_past_the_end(served: Served, client: httpx.AsyncClient) -> None:
    size = len(served.data)
    response = await client.get("/file", headers={"range": f"bytes={size}-"})
    assert response.status_code == 416
    assert response.content == b""
    assert response.headers["content-range"] == f"bytes */{size}"
    assert response.headers["content-length"] == "0"
    assert response.headers["accept-ranges"] == "bytes"
    assert open_fds(served.path) == 0


async def test_multi_range_gets_the_whole_file(served: Served, client: httpx.AsyncClient) -> None:
    response = await client.get("/file", headers={"range": "bytes=0-1,5-6"})
    assert response.status_code == 200
    assert response.content == served.data
    assert "content-range" not in response.headers


async def test_if_none_match(served: Served, client: httpx.AsyncClient) -> None:
    etag = (await client.head("/file")).headers["etag"]
    response = await client.get("/file", headers={"if-none-match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    other = await client.get("/file", headers={"if-none-match": '"other"'})
    assert other.status_code == 200
    assert len(other.content) == len(served.data)


async def test_if_range(served: Served, client: httpx.AsyncClient) -> None:
    etag = (await client.head("/file")).headers["etag"]
    fresh = await client.get("/file", headers={"range": "bytes=0-9", "if-range": etag})
    assert fresh.status_code == 206
    assert fresh.content == served.data[:10]
    stale = await client.get("/file", headers={"range": "bytes=0-9", "if-range": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == served.data


async def test_if_modified_since(served: Served, client: httpx.AsyncClient) -> None:
    last_modified = (await client.head("/file")).headers["last-modified"]
    same = await client.get("/file", headers={"if-modified-since": last_modified})
    assert same.status_code == 304
    assert same.content == b""
    older = await client.get(
        "/file", headers={"if-modified-since": "Thu, 01 Jan 1998 00:00:00 GMT"}
    )
    assert older.status_code == 200
    assert older.content == served.data


async def test_if_match_fails(served: Served, client: httpx.AsyncClient) -> None:
    response = await client.get("/file", headers={"if-match": '"other"'})
    assert response.status_code == 412
    assert response.content == b""


async def test_file_name_gives_content_disposition(
    served: Served, client: httpx.AsyncClient
) -> None:
    response = await client.get("/named", headers={"range": "bytes=0-0"})
    assert response.status_code == 206
    expected = f'attachment; filename="{served.path.name}"'
    assert response.headers["content-disposition"] == expected


# --- the wire --------------------------------------------------------------------------------


def assert_wire_headers(response: RawResponse) -> None:
    names = [name for name, _ in response.headers]
    assert names == [name.lower() for name in names]
    assert response.get("transfer-encoding") is None


async def test_wire_get_is_not_chunked(served: Served, raw: RawConnection) -> None:
    await raw.send("GET")
    response = await raw.read_head()
    assert response.status_line == "HTTP/1.1 200 OK"
    assert_wire_headers(response)
    assert response.get("content-length") == str(len(served.data))
    assert await raw.read_body(len(served.data)) == served.data
    # The connection is still in step: the next response starts right after the body.
    await raw.send("GET", range="bytes=0-9")
    response = await raw.read_head()
    assert response.status == 206
    assert await raw.read_body(10) == served.data[:10]


async def test_wire_head_has_length_and_no_body(served: Served, raw: RawConnection) -> None:
    await raw.send("HEAD")
    head = await raw.read_head()
    assert head.status == 200
    assert_wire_headers(head)
    assert head.get("content-length") == str(len(served.data))
    assert head.get("content-type") == "application/octet-stream"
    assert head.get("accept-ranges") == "bytes"
    assert head.get("etag") is not None
    assert open_fds(served.path) == 0
    assert served.sent == []
    # Had the server sent body bytes after the HEAD head, they would come before this status.
    await raw.send("GET", range="bytes=-3")
    response = await raw.read_head()
    assert response.status_line.startswith("HTTP/1.1 206")
    assert await raw.read_body(3) == served.data[-3:]


async def test_wire_head_ignores_range(served: Served, raw: RawConnection) -> None:
    await raw.send("HEAD", range="bytes=0-9")
    head = await raw.read_head()
    assert head.status == 200
    assert head.get("content-length") == str(len(served.data))
    assert head.get("content-range") is None


@pytest.mark.parametrize(
    ("headers", "status", "length"),
    [
        ({"range": "bytes=99999999-"}, 416, "0"),
        ({"if-none-match": "*"}, 304, None),
        ({"if-match": '"nope"'}, 412, "0"),
    ],
)
async def test_wire_bodiless_answers(
    served: Served, raw: RawConnection, headers: dict[str, str], status: int, length: str | None
) -> None:
    await raw.send("GET", **headers)
    response = await raw.read_head()
    assert response.status == status
    assert_wire_headers(response)
    assert response.get("content-length") == length
    assert response.get("accept-ranges") == "bytes"
    assert open_fds(served.path) == 0
    await raw.send("GET", range="bytes=0-0")
    follow_up = await raw.read_head()
    assert follow_up.status == 206
    assert await raw.read_body(1) == served.data[:1]


# --- descriptors and files changing underneath -------------------------------------------------


async def test_client_disconnect_mid_download_closes_the_fd(served: Served) -> None:
    with served.path.open("r+b") as file:
        file.truncate(STALL_SIZE)  # sparse: cheap to create, zeros past the random head
    connection = await RawConnection.open(served, rcvbuf=SMALL_RCVBUF)
    with connection.sock:
        await connection.send("GET")
        assert (await connection.read_head()).get("content-length") == str(STALL_SIZE)
        await connection.read_body(CHUNK)
        await wait_for_fds(served.path, 1)
        progress = sum(served.sent)
        stuck_at = await settled(lambda: sum(served.sent))  # stuck on a full socket...
        assert progress <= stuck_at < STALL_SIZE // 2  # ...far from the end
        connection.reset()
    await wait_for_fds(served.path, 0)
    assert sum(served.sent) < STALL_SIZE


async def test_client_disconnect_before_the_first_chunk_closes_the_fd(served: Served) -> None:
    connection = await RawConnection.open(served)
    with connection.sock:
        await connection.send("GET", "/held")
        with trio.fail_after(5):
            await served.held.wait()
        assert open_fds(served.path) == 1
        connection.reset()
    await wait_for_fds(served.path, 0)


async def test_replaced_file_keeps_serving_the_old_inode(served: Served) -> None:
    old = served.data + os.urandom(STALL_SIZE - len(served.data))
    served.path.write_bytes(old)
    connection = await RawConnection.open(served, rcvbuf=SMALL_RCVBUF)
    with connection.sock:
        await connection.send("GET")
        head = await connection.read_head()
        first = await connection.read_body(CHUNK)
        replacement = served.path.with_name("replacement")
        replacement.write_bytes(b"new content")
        os.replace(replacement, served.path)
        rest = await connection.read_body(STALL_SIZE - CHUNK)
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(old).digest()
    async with httpx.AsyncClient(verify=client_tls(), base_url=served.url) as client:
        response = await client.get("/file")
    assert response.content == b"new content"
    assert response.headers["etag"] != head.get("etag")
    await wait_for_fds(served.path, 0)


async def test_file_shrinking_mid_download_aborts_the_stream(served: Served) -> None:
    with served.path.open("r+b") as file:
        file.truncate(STALL_SIZE)
    connection = await RawConnection.open(served, rcvbuf=SMALL_RCVBUF)
    with connection.sock:
        await connection.send("GET")
        assert (await connection.read_head()).get("content-length") == str(STALL_SIZE)
        await connection.read_body(CHUNK)
        os.truncate(served.path, STALL_SIZE // 2)
        with trio.fail_after(10):
            received = CHUNK + await connection.read_until_closed()
    # Everything up to the new end arrives, then the server drops the connection instead of
    # pretending that a short body is complete.
    assert received == STALL_SIZE // 2
    await wait_for_fds(served.path, 0)
