"""The wire as a client sees it: :func:`raw_request` talks HTTP over a plain socket to see
the framing, and a connection closed after a broken body."""

from __future__ import annotations

import attrs
import trio

#: Seconds a server has to close the connection once :func:`raw_request` ended its side (a
#: bound, not a wait: the servers under test close within milliseconds, 27 ms at most over
#: 1,260 calls on a loaded host; one that kept a half-closed connection open would cost this).
CLOSED_AFTER_EOF = 5.0


@attrs.define
class Wire:
    """A raw HTTP exchange: status line, header lines as sent, body bytes, how it ended."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the server closed the connection (raw_request: before the body ended)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


async def raw_request(
    base: str,
    target: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    read_limit: int | None = None,
    idle: float | None = None,
) -> Wire:
    """Send one request over a fresh socket and read until the server closes it, the body
    announced by Content-Length is complete, or ``read_limit`` bytes of body arrived (then
    close our side).

    Past a complete body, by default our side is shut for sending and every byte read up to
    the server's close: a server closes the connection its client ended, after anything it
    sent past its Content-Length, which is then in ``body`` (at once: waited for, not timed;
    ``closed`` says the server closed it before the body was complete). With ``idle``
    seconds the connection is kept open that long instead, and ``closed`` also says whether
    the server closed it meanwhile: a test that a complete answer keeps its connection
    passes one (``idle=0``: nothing read past the body)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = bytearray()
    closed = False
    async with stream:
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"connection closed before headers: {bytes(data)!r}")
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = [tuple(line.split(": ", 1)) for line in header_lines]
        wire = Wire(int(status_line.split()[1]), [(k, v) for k, v in parsed], b"", False)
        body = bytearray(rest)
        length = wire.header("content-length")
        expected = int(length) if length is not None and method != "HEAD" else None
        if method == "HEAD" or wire.status in (304,):
            expected = 0
        while read_limit is None or len(body) < read_limit:
            if expected is not None and len(body) >= expected:
                if idle is None:
                    # Each call waited 0.3 s here for bytes that never came (a complete
                    # answer keeps its connection): 289 calls, 87 s of the suite's workers.
                    await stream.send_eof()
                    with trio.move_on_after(CLOSED_AFTER_EOF):
                        while extra := await stream.receive_some(65536):
                            body += extra
                else:
                    with trio.move_on_after(idle):
                        extra = await stream.receive_some(65536)
                        body += extra
                        closed = not extra
                break
            chunk = await stream.receive_some(65536)
            if not chunk:
                closed = True
                break
            body += chunk
    wire.body = bytes(body)
    wire.closed = closed
    return wire


async def read_body_to(sock: trio.socket.SocketType, upto: int) -> tuple[bytes, int]:
    """Read an answer on ``sock`` (a request sent) to byte ``upto`` of its body, 4 KiB at a
    time at most, no further: its head, and the body bytes read (``upto``, or more when
    they came with the head)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += await sock.recv(1024)
    head, _, body = received.partition(b"\r\n\r\n")
    read = len(body)
    while read < upto:
        read += len(await sock.recv(min(4096, upto - read)))
    return head, read
