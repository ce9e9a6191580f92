"""The network side of archive downloads: big socket reads, exact response heads, a pool.

httpcore asks its network stream for 64 KiB per read, which caps a proxy at about 0.5 GB/s;
:class:`BigReadBackend` opens connections whose every read asks for up to ``read_size``
bytes. On plain TCP its streams also read each response head to its last byte and no further
(peeking first), so that when httpx returns a response its body is still in the socket:
:func:`~tracker.zerocopy.kernelcopy.splice_to_file` can then hand that socket to
``splice(2)``. Whether the body is still whole is an explicit flag
(:attr:`BigReadStream.body_unread`): any read of body bytes through httpcore clears it, and
the splice path checks it before every piece, so a read-ahead can never shift bytes under a
correct ``content-length``.

:class:`PoolTransport` is the httpx transport over an httpcore pool built with that backend
(httpx has no public way to give its own transport a network backend).

Everything here relies on httpcore's documented extension points (network backends and
streams, the ``network_stream`` response extension) and on one behaviour of h11 that is
pinned by a test: it does not read past a response head before handing the head over.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import h11
import httpcore
import httpx
import trio

from tracker.core.text import TRACKER_AGENT
from tracker.net.egress import WrappingBackend

# The ``timeout`` parameters below (ruff ASYNC109) are httpcore's interface, not our choice.


class BigReadStream(httpcore.AsyncNetworkStream):
    """A network stream whose reads ask for at least ``read_size`` bytes.

    With ``exact_heads`` (plain TCP), the response head that follows each request is read to
    its last byte and no further (peeking first), so the body is still in the socket when
    httpx returns the response: :func:`~tracker.zerocopy.kernelcopy.splice_to_file` can then
    hand it to ``splice(2)``.
    """

    def __init__(
        self, inner: httpcore.AsyncNetworkStream, read_size: int, *, exact_heads: bool = False
    ) -> None:
        self._inner = inner
        self._default_read_size = read_size
        #: Bytes the next reads ask for (at least httpcore's own ask); back to ``read_size``
        #: with each request (see :func:`limit_reads`).
        self.read_size = read_size
        self.exact_heads = exact_heads
        #: The part of the response head read so far, while one is expected.
        self._head: bytearray | None = None
        #: Set by any read after the last response head: body bytes left the socket.
        self._body_read = False

    @property
    def body_unread(self) -> bool:
        """True when the socket holds the body of the last response whole: its head was read
        exactly, and nothing was read since (checked before every spliced piece)."""
        return self.exact_heads and self._head is None and not self._body_read

    def take_body(self) -> None:
        """Record that the body is being moved out of the socket by other means (a splice
        into a file): it no longer counts as whole, and nothing splices it again."""
        self._body_read = True

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._head is not None:
            return await self._read_head(timeout)
        self._body_read = True
        return await self._inner.read(max(max_bytes, self.read_size), timeout)

    async def _read_head(self, timeout: float | None) -> bytes:  # noqa: ASYNC109
        assert self._head is not None
        sock = self._inner.get_extra_info("socket")
        exc_map: dict[type[Exception], type[Exception]] = {
            trio.TooSlowError: httpcore.ReadTimeout,
            OSError: httpcore.ReadError,
        }
        with _httpcore_errors(exc_map), trio.fail_after(math.inf if timeout is None else timeout):
            peeked = await sock.recv(_HEAD_PEEK, socket.MSG_PEEK)
            seen = len(self._head)
            end = (self._head[-3:] + peeked).find(b"\r\n\r\n")
            take = len(peeked) if end < 0 else end + 4 - min(3, seen)
            data: bytes = await sock.recv(take) if peeked else b""
        self._head += data
        if end >= 0 and not self._head.startswith(b"HTTP/1.1 1"):
            self._head = None  # the final head; a 1xx one is followed by another
        elif end >= 0:
            self._head = bytearray()
        elif not data or len(self._head) > _HEAD_LIMIT:
            self._head, self.exact_heads = None, False  # h11 will refuse it; stop peeking
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)
        self.read_size = self._default_read_size  # a new request: whoever reads it decides
        if self.exact_heads and buffer:
            self._head = bytearray()  # a request went out: its response head comes next
            self._body_read = False

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return BigReadStream(tls, self._default_read_size)  # bytes come decrypted: no splice

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


#: Bytes peeked at once while reading a response head, and the longest head followed so.
_HEAD_PEEK = 16 * 1024
_HEAD_LIMIT = 64 * 1024


@contextlib.contextmanager
def _httpcore_errors(mapping: dict[type[Exception], type[Exception]]) -> Iterator[None]:
    """Raise exceptions of ``mapping``'s keys as its values (what httpcore's streams raise)."""
    try:
        yield
    except tuple(mapping) as exc:
        for kind, replacement in mapping.items():
            if isinstance(exc, kind):
                raise replacement(str(exc) or type(exc).__name__) from exc
        raise


def splice_stream(response: httpx.Response, length: int) -> BigReadStream | None:
    """The stream of ``response`` when its body can be spliced: all of it still unread in a
    plain TCP socket, exactly ``length`` bytes, no transfer or content coding."""
    stream = response.extensions.get("network_stream")
    if not isinstance(stream, BigReadStream) or not stream.body_unread:
        return None
    headers = response.headers
    if "transfer-encoding" in headers or headers.get("content-encoding", "identity") != "identity":
        return None
    if headers.get("content-length", "").strip() != str(length):
        return None
    sock = stream.get_extra_info("socket")
    return stream if isinstance(sock, trio.socket.SocketType) else None


def limit_reads(response: httpx.Response, size: int) -> None:
    """Make the coming reads of ``response``'s body ask for ``size`` bytes (a connection of
    :class:`BigReadBackend`; others read as they do). What a read asks for is allocated at
    once, so a stream whose memory is budgeted must ask for no more than its share."""
    stream = response.extensions.get("network_stream")
    if isinstance(stream, BigReadStream):
        stream.read_size = size


async def body_started(response: httpx.Response) -> bool | None:
    """Wait until the body of ``response`` has begun to arrive, without reading any of it.

    True once a body byte is in the socket, False when the peer closed the connection
    first; None when this cannot be watched (a TLS connection, or body bytes already read
    past the exact head): the head is then all there is to wait for. Bound it with a
    timeout; it reads nothing, so the body stays whole for the splice path.
    """
    stream = response.extensions.get("network_stream")
    if not isinstance(stream, BigReadStream) or not stream.body_unread:
        return None
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, trio.socket.SocketType):
        return None
    return bool(await sock.recv(1, socket.MSG_PEEK))


class BigReadBackend(WrappingBackend):
    """httpcore's trio backend, with reads of up to ``read_size`` bytes (public httpcore API)."""

    def __init__(self, read_size: int, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        super().__init__(inner if inner is not None else httpcore.TrioBackend())
        self._read_size = read_size

    def _stream(
        self, stream: httpcore.AsyncNetworkStream, *, tcp: bool
    ) -> httpcore.AsyncNetworkStream:
        # Exact heads need the plain TCP socket's peek; a unix socket reads as it does.
        return BigReadStream(stream, self._read_size, exact_heads=tcp)


#: httpcore's exceptions that httpx has one of the same name for, the one a client's callers
#: expect, most specific first.
_ERROR_NAMES = (
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "ConnectError",
    "ReadError",
    "WriteError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "UnsupportedProtocol",
    "TimeoutException",
    "NetworkError",
    "ProtocolError",
)
#: Each of them with its httpx twin: pairing them by name keeps the two lists from parting.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name)) for name in _ERROR_NAMES
)


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's exceptions as the httpx exceptions of ``request``."""
    try:
        yield
    except httpcore.ConnectionNotAvailable as exc:  # pragma: no cover - pool internals
        raise httpx.ConnectError(str(exc), request=request) from exc
    except Exception as exc:
        for kind, replacement in _ERRORS:
            if isinstance(exc, kind):
                raise replacement(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx byte stream, errors translated."""

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class PoolTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through the httpcore ``pool`` given."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the body stays unread (streamed). Raises httpx's exceptions."""
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)  # an async pool's body
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close the pool and every connection in it."""
        await self._pool.aclose()


class HeadClient:
    """``HEAD`` requests over plain TCP with h11, answered as httpx responses.

    A discovered cluster is thousands of plain-HTTP nodes, each probed with two or three
    HEADs every round. Through ``httpx.AsyncClient`` a probe costs about 3.5 ms of CPU on
    the development machine, through an httpcore pool 2.0 ms, this way (a connection per
    request, h11 for the wire) 0.9 ms: what decides whether a round of 3,000 nodes leaves
    the event loop room for the API. It offers the one call the probes make,
    ``head(url, headers=..., follow_redirects=False)`` (redirects are never followed), for
    ``http`` URLs only, and raises httpx's exceptions as a client would. A response head is
    read up to h11's limit (16 KiB); everything is bounded by ``timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def head(
        self,
        url: httpx.URL | str,
        *,
        headers: Any = (),
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """``HEAD url``; the response carries status and headers (no body)."""
        assert not follow_redirects
        target = httpx.URL(url)
        request = httpx.Request("HEAD", target)
        if target.scheme != "http":
            raise httpx.UnsupportedProtocol("only http", request=request)
        items = headers.items() if hasattr(headers, "items") else headers
        sent = [("host", target.netloc.decode("ascii")), ("accept-encoding", "identity")]
        sent += [("user-agent", TRACKER_AGENT), ("connection", "close"), *items]
        path = target.raw_path.decode("ascii")
        port = target.port or 80
        try:
            with trio.fail_after(self._timeout):
                status, answer = await _head(target.host, port, path, sent)
        except trio.TooSlowError:
            raise httpx.ReadTimeout(
                f"no answer within {self._timeout:g}s", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        except (h11.ProtocolError, trio.BrokenResourceError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(status, headers=answer, request=request)


async def _head(
    host: str, port: int, path: str, headers: list[tuple[str, str]]
) -> tuple[int, list[tuple[bytes, bytes]]]:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(h11.Request(method="HEAD", target=path, headers=headers)) or b""
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                conn.receive_data(chunk)  # b"" (closed) makes h11 raise or end
                continue
            if isinstance(event, h11.Response):
                return event.status_code, list(event.headers.raw_items())
            if isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("closed before a response")
