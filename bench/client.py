"""A minimal HTTP/1.1 download client over plain blocking sockets.

curl reads 16 KiB per ``recv``; at 2-3 GB/s that is the client's limit, not the server's.
This client reads straight into a 4 MiB buffer (``recv_into``) and throws the bytes away,
so the servers under test are what is measured. It never follows redirects, checks that the
body is exactly ``content-length`` long, and bounds every wait (connect, each read, the whole
download).
"""

from __future__ import annotations

import socket
import threading
import time

import attrs

RECV_SIZE = 4 * 1024 * 1024
HEADER_LIMIT = 64 * 1024


class FetchError(Exception):
    """A download failed: connection, status, framing or timeout."""


@attrs.frozen
class Fetch:
    """One finished download."""

    status: int
    headers: dict[str, str]
    body_bytes: int
    started: float  # time.perf_counter() when the request was sent
    ended: float  # ... when the last byte arrived

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def fetch(
    address: tuple[str, int],
    path: str,
    *,
    read_timeout: float = 30.0,
    deadline: float = 600.0,
    expect: int | None = 200,
    extra: str = "",
) -> Fetch:
    """GET ``path``; read and discard the whole body. Raises FetchError on any failure.
    ``extra``: more header lines, each ending in CRLF (e.g. a ``Range``)."""
    request = _request(address, path, extra)
    try:
        with socket.create_connection(address, timeout=read_timeout) as sock:
            started = time.perf_counter()
            sock.sendall(request)
            status, headers, got = _read_head(sock)
            length = int(headers.get("content-length", "-1"))
            if length < 0:
                raise FetchError(f"{path}: no content-length (status {status})")
            got = _read_body(sock, got, length, started + deadline)
            ended = time.perf_counter()
    except OSError as exc:
        raise FetchError(f"{path}: {exc}") from exc
    if expect is not None and status != expect:
        raise FetchError(f"{path}: status {status}, expected {expect}")
    return Fetch(status, headers, got, started, ended)


def _request(address: tuple[str, int], path: str, extra: str = "", close: bool = True) -> bytes:
    host, port = address
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: sst-bench\r\n"
        f"Accept-Encoding: identity\r\n{connection}{extra}\r\n"
    ).encode()


def first_byte(address: tuple[str, int], path: str, *, timeout: float = 30.0) -> float:
    """Seconds from sending a GET of ``path`` on a fresh connection to the first body byte
    (the connection is then closed: the rest of the body is not wanted)."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            started = time.perf_counter()
            sock.sendall(_request(address, path))
            status, _headers, got = _read_head(sock)
            if status != 200:
                raise FetchError(f"{path}: status {status}")
            if not got and not sock.recv(1):
                raise FetchError(f"{path}: no body")
            return time.perf_counter() - started
    except OSError as exc:
        raise FetchError(f"{path}: {exc}") from exc


#: Seconds after which a held keep-alive connection asks again (the tracker closes one idle
#: for 5 s: on a busy machine opening 2,000 took longer than that).
KEEP_FRESH = 2.5


def hold_keepalive(address: tuple[str, int], path: str, count: int) -> list[socket.socket]:
    """Open ``count`` connections, each asking ``path`` (an answer without a body, such as a
    redirect) and kept open afterwards; the caller closes them. A connection idle for
    KEEP_FRESH seconds asks again meanwhile, as a polling client does. Raises FetchError
    when a connection fails or its server closed it."""
    socks: list[socket.socket] = []
    asked: list[float] = []
    try:
        # One after the other, as clients come and stay: what is measured is what an idle
        # connection keeps, not the peak of thousands of requests answered at once.
        for _ in range(count):
            sock = socket.create_connection(address, timeout=10)
            socks.append(sock)
            _ask(sock, address, path)
            asked.append(time.monotonic())
            _refresh(socks, asked, address, path)
        for sock in socks:
            sock.setblocking(False)
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    raise FetchError("the server closed a keep-alive connection")
            except BlockingIOError:
                pass  # open and idle: what is wanted
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _ask(sock: socket.socket, address: tuple[str, int], path: str) -> None:
    sock.sendall(_request(address, path, close=False))
    _read_head(sock)


def _refresh(
    socks: list[socket.socket], asked: list[float], address: tuple[str, int], path: str
) -> None:
    """Ask again on every connection idle for KEEP_FRESH seconds (oldest first)."""
    now = time.monotonic()
    for i, when in enumerate(asked):
        if now - when < KEEP_FRESH:
            break  # ``asked`` is in the order of the last ask: the rest are fresher
        _ask(socks[i], address, path)
    else:
        i = len(asked)
    if i:
        # Move the refreshed ones to the end, keeping the list ordered by last ask.
        socks[:] = socks[i:] + socks[:i]
        asked[:] = asked[i:] + [time.monotonic()] * i


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], int]:
    """Status, lower-case headers, and how many body bytes came along with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(HEADER_LIMIT)
        if not chunk:
            raise FetchError("connection closed before the response head")
        data += chunk
        if len(data) > HEADER_LIMIT:
            raise FetchError("response head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, len(rest)


def _read_body(sock: socket.socket, got: int, length: int, deadline: float) -> int:
    view = memoryview(bytearray(RECV_SIZE))
    while got < length:
        n = sock.recv_into(view, min(RECV_SIZE, length - got))
        if n == 0:
            raise FetchError(f"body ended after {got} of {length} bytes")
        got += n
        if time.perf_counter() > deadline:
            raise FetchError(f"download not done within its deadline ({got} of {length} bytes)")
    return got


@attrs.frozen
class Paced:
    """Downloads read at a client-limited rate for a while: bytes each got, and how many
    were still in flight (connected, body not complete) when the window ended."""

    received: list[int]
    in_flight: int
    seconds: float

    @property
    def rate(self) -> float:
        """Aggregate bytes per second over the window."""
        return sum(self.received) / self.seconds


#: Bytes a paced client reads per ``recv_into`` (its own buffer: the client's memory).
PACED_READ = 256 * 1024


def fetch_paced(
    address: tuple[str, int],
    paths: list[str],
    *,
    rate: float,
    seconds: float,
    connect_timeout: float = 60.0,
) -> Paced:
    """GET every path at once (one thread each), each read at most ``rate`` bytes/s, for
    ``seconds`` after the last one got its head; then every connection is closed (the
    bodies are not read to their end: a slow client of a 100 GB archive is in flight for
    hours, and this keeps them all in flight). Raises FetchError when a request fails or a
    body ends short of its ``content-length``."""
    count = len(paths)
    received = [0] * count
    complete = [False] * count
    errors: list[BaseException] = []
    headed = threading.Barrier(count + 1)
    stop = threading.Event()

    def one(i: int) -> None:
        view = memoryview(bytearray(PACED_READ))
        try:
            with socket.create_connection(address, timeout=connect_timeout) as sock:
                sock.sendall(_request(address, paths[i]))
                status, headers, got = _read_head(sock)
                length = int(headers.get("content-length", "-1"))
                if status not in (200, 206) or length < 0:
                    raise FetchError(f"{paths[i]}: status {status}, length {length}")
                headed.wait(timeout=connect_timeout)
                _read_paced(sock, view, got, length, rate, stop, received, i)
                complete[i] = received[i] >= length
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
            headed.abort()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    try:
        headed.wait(timeout=connect_timeout)
    except threading.BrokenBarrierError:
        stop.set()
        for t in threads:
            t.join(connect_timeout)
        reason = errors[0] if errors else "not every download got its head in time"
        raise FetchError(f"a paced download failed: {reason}") from None
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    window = time.perf_counter() - started
    for t in threads:
        t.join(connect_timeout)
    if errors:
        raise FetchError(f"a paced download failed: {errors[0]}") from errors[0]
    return Paced(received, count - sum(complete), window)


def _read_paced(
    sock: socket.socket,
    view: memoryview,
    got: int,
    length: int,
    rate: float,
    stop: threading.Event,
    received: list[int],
    i: int,
) -> None:
    """Read the body at ``rate`` bytes/s at most until ``stop`` or its end."""
    begun = time.perf_counter()
    base = got
    while got < length and not stop.is_set():
        ahead = (got - base) / rate - (time.perf_counter() - begun)
        if ahead > 0:
            stop.wait(ahead)
            continue
        n = sock.recv_into(view, min(len(view), length - got))
        if n == 0:
            raise FetchError(f"body ended after {got} of {length} bytes")
        got += n
        received[i] = got


@attrs.frozen
class Batch:
    """Downloads run at once: their results and the wall time from first start to last end."""

    fetches: list[Fetch]

    @property
    def body_bytes(self) -> int:
        return sum(f.body_bytes for f in self.fetches)

    @property
    def seconds(self) -> float:
        return max(f.ended for f in self.fetches) - min(f.started for f in self.fetches)

    @property
    def rate(self) -> float:
        """Aggregate bytes per second."""
        return self.body_bytes / self.seconds


def fetch_sequence(address: tuple[str, int], path: str, count: int) -> Batch:
    """Download ``path`` ``count`` times, one after the other, on fresh connections."""
    return Batch([fetch(address, path) for _ in range(count)])


def fetch_many(
    address: tuple[str, int],
    paths: list[str],
    *,
    deadline: float = 600.0,
    expect: int | None = 200,
    extra: str = "",
) -> Batch:
    """Download every path at once, one thread each; raises the first FetchError, if any."""
    results: list[Fetch | BaseException | None] = [None] * len(paths)
    barrier = threading.Barrier(len(paths))

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fetch(address, paths[i], deadline=deadline, expect=expect, extra=extra)
        except BaseException as exc:  # reported to the caller below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline + 60)
    fetches = []
    for r in results:
        if isinstance(r, BaseException):
            raise FetchError(str(r)) from r
        if r is None:
            raise FetchError("a download thread did not finish")
        fetches.append(r)
    return Batch(fetches)
