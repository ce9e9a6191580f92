"""The network boundary: httpx's failures become :class:`~tracker.errors.TransportError`.

httpx (and httpcore and h11 under it) raise their own exceptions for a connect, TLS, timeout
or protocol failure, a body broken off, or a URL it cannot use. This package is the one place
they are caught (besides the fenced :mod:`tracker.zerocopy`): every request the other
packages make goes through :func:`send`, :func:`head`, :func:`stream` or
:func:`~tracker.net.bodyreads.body_chunks`, which raise :class:`TransportError` with a one-line
reason (:func:`transport_reason`) and the library's exception as its cause. Everything above
catches that one class and words it for its own caller (``ProbeError``...); a source of
archive bytes that fails or falls silent is worded once, by :func:`source_failures`.
Cancellation and the tracker's own errors pass through untouched.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import httpx
import trio

from tracker.core.text import one_line, quoted
from tracker.errors import SourceFailed, TransportError

#: What httpx raises: its failures of a request (``HTTPError``), URLs it cannot parse, and
#: a redirect's host that IDNA refuses (``xn--zz``: ``idna.IDNAError``, a UnicodeError, out
#: of ``URL.host`` as httpx reads the ``Location`` of any redirect, followed or not).
HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, UnicodeError)


class Heads(Protocol):
    """What a probe needs of an HTTP client: ``HEAD`` without following redirects
    (``httpx.AsyncClient``, or the leaner :class:`tracker.clientwire.transport.HeadClient`)."""

    async def head(
        self, url: httpx.URL | str, *, headers: Mapping[str, str], follow_redirects: bool
    ) -> httpx.Response:
        """The answer's status and headers."""
        ...


def transport_reason(exc: Exception) -> str:
    """One line saying why an httpx request failed (connect, TLS, timeout, protocol)."""
    root = _root_cause(exc)
    if isinstance(root, ssl.SSLError):
        return one_line(f"TLS handshake failed: {root}")
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__.replace("Timeout", "").lower() or "request"
        return f"{kind} timeout"
    if isinstance(exc, httpx.ConnectError):
        return one_line(f"cannot connect: {_os_reason(root) or exc}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return one_line(f"malformed HTTP answer: {exc}")
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return one_line(f"connection broken: {str(exc) or type(root).__name__}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | UnicodeError):
        return one_line(f"invalid URL: {exc}")
    return one_line(f"{type(exc).__name__}: {exc}")


def _os_reason(exc: BaseException) -> str:
    """``Connection refused`` rather than trio's ``Error connecting to (...): ...``."""
    if not isinstance(exc, OSError):
        return ""
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return str(exc.strerror or "")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc``, descending into the first member of exception groups."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
            continue
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


@contextmanager
def mapped() -> Iterator[None]:
    """Raise what httpx raises in the block as :class:`TransportError` (one-line reason)."""
    try:
        yield
    except HTTPX_ERRORS as exc:
        raise TransportError(transport_reason(exc)) from exc


def coding_problem(response: httpx.Response) -> str | None:
    """Why the body of ``response`` is not the resource's own bytes: a ``content-encoding``
    other than identity, which the tracker never asks for (a misconfigured nginx's
    ``gzip_static always``, a CDN); None when it is. Relayed or stored, coded bytes under an
    archive's name would look like a complete archive to every client."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    return f"answered with content-encoding {quoted(encoding)}; identity was asked"


@contextmanager
def source_failures(url: str, silence: str) -> Iterator[None]:
    """A source's failure in the block as :class:`SourceFailed`: a TransportError with its
    one-line reason, a ``trio.TooSlowError`` (a deadline set inside the block ran out) as
    ``silence`` (what the source did not do in time, e.g. ``no answer within 3s``); both
    prefixed ``{url}: `` when ``url`` is given. The one place the byte paths word a source's
    transport failure and its silence."""
    prefix = f"{url}: " if url else ""
    try:
        yield
    except trio.TooSlowError:
        raise SourceFailed(prefix + silence) from None
    except TransportError as exc:
        raise SourceFailed(prefix + str(exc)) from exc


async def send(
    client: httpx.AsyncClient, method: str, url: str, headers: Mapping[str, str]
) -> httpx.Response:
    """``method url`` with ``headers`` and the client's settings, the body left unread
    (close the answer). Raises TransportError (an invalid URL included)."""
    with mapped():
        request = client.build_request(method, url, headers=headers)
        return await client.send(request, stream=True)


async def head(client: Heads, url: httpx.URL | str, headers: Mapping[str, str]) -> httpx.Response:
    """``HEAD url`` without following redirects. Raises TransportError."""
    with mapped():
        return await client.head(url, headers=headers, follow_redirects=False)


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, method: str, url: str, **options: Any
) -> AsyncIterator[httpx.Response]:
    """``client.stream(method, url, **options)``: what httpx raises while it is open (the
    body read in the block included) comes out as TransportError. A request body (``json``,
    ``content``) is sent as one :class:`WholeBody`."""
    send = {k: options.pop(k) for k in ("follow_redirects", "auth") if k in options}
    with mapped():
        request = client.build_request(method, url, **options)
        if request.method in ("POST", "PUT", "PATCH"):
            request.stream = WholeBody(await request.aread())
        response = await client.send(request, stream=True, **send)
        try:
            yield response
        finally:
            await response.aclose()


class WholeBody(httpx.AsyncByteStream):
    """A request body of known bytes sent in one piece, whose iterator is a plain object.
    httpx's own body stream is an async generator: a request cancelled while it sends (a
    deadline, the service stopping) leaves it half run, and trio warns when the garbage
    collector finds it; this one leaves nothing to finalize."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return _Once(self._data)

    async def aclose(self) -> None:
        """Nothing to release."""


class _Once:
    """Yields its bytes once."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


def parse_url(text: str) -> httpx.URL:
    """``text`` as a URL; TransportError (httpx's own reason) when httpx cannot take it,
    its host included (see :func:`_host_read`)."""
    try:
        return _host_read(httpx.URL(text))
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise TransportError(one_line(str(exc))) from exc


def join_url(base: httpx.URL, reference: str) -> httpx.URL:
    """``reference`` (a ``Location``) resolved against ``base``, without its fragment;
    TransportError when httpx cannot take it, its host included (see :func:`_host_read`)."""
    try:
        return _host_read(base.join(reference).copy_with(fragment=None))
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise TransportError(one_line(str(exc))) from exc


def _host_read(url: httpx.URL) -> httpx.URL:
    """``url`` once its host was read: httpx decodes a host's IDNA only when it is asked
    for, and raises ``idna.IDNAError`` (a UnicodeError) then for one IDNA refuses
    (``xn--zz``), wherever that happens to be; here it is at parsing, as a TransportError."""
    _ = url.host
    return url
