"""Bounded reads of untrusted upstream answers, and httpx failures told in one line.

Every probe talks to hosts the tracker does not control, so nothing here trusts a peer to be
small or well formed: bodies are read against a hard byte cap, JSON arrays are decoded one
bounded element at a time, and every httpx / JSON failure becomes a :class:`ProbeError` whose
message is a single line an operator can act on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from types import MappingProxyType

import httpx

from tracker.core.text import one_line, quoted
from tracker.errors import ProbeError

#: Default for the ``headers`` parameter of the probes (an immutable empty mapping).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})

# Python objects take 20-30x the bytes of dense JSON (measured: 8 MiB of ``{},`` is ~200 MiB
# of dicts), so a body is never handed to json.loads whole: each element of the top-level
# array is decoded from a slice of at most this many characters.
MAX_ELEMENT_CHARS = 16 * 1024

_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
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


#: Errors of this process running out of something (descriptors, memory, buffers), not of
#: whatever it was talking to.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def exhausted(exc: BaseException) -> bool:
    """True when ``exc`` was caused by this process running out of descriptors or memory
    (CAPACITY_ERRNOS anywhere in its chain of causes, exception groups included)."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in CAPACITY_ERRNOS:
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def _check_body_headers(response: httpx.Response, max_bytes: int) -> None:
    """Refuse a body declared larger than ``max_bytes`` or sent compressed.

    Compressed bodies are refused (we ask for ``identity``) because their decoded size is not
    bounded by the bytes on the wire.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProbeError(f"unsupported content-encoding {quoted(encoding)}")
    declared = response.headers.get("content-length", "")
    # h11 has already refused a malformed Content-Length; this only compares.
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise ProbeError(f"body of {declared} bytes exceeds the limit of {max_bytes} bytes")


async def read_capped(response: httpx.Response, max_bytes: int) -> bytearray:
    """Read a streamed response body, failing as soon as it passes ``max_bytes``.

    The response must come from ``client.stream(...)``; closing it (the caller's ``async
    with``) drops the connection rather than draining the rest. Raises :class:`ProbeError`
    for a body that is too large or compressed; httpx errors while reading propagate for the
    caller to translate. Cancellation propagates.
    """
    _check_body_headers(response, max_bytes)
    body = bytearray()
    chunks = response.aiter_raw()
    async for chunk in chunks:
        if len(body) + len(chunk) > max_bytes:
            await _abandon(response, chunks)
            raise ProbeError(f"body exceeds the limit of {max_bytes} bytes")
        body += chunk
    return body


async def _abandon(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading a body part way without draining the rest.

    httpx 0.28 streams through a chain of async generators that closing the outer one does
    not close (encode/httpx#3686), and trio warns when they are collected unfinished.
    Closing the response first drops the connection, so the chain ends at once (after what
    h11 already buffered) with a ReadError that finishes every generator in it.
    """
    await response.aclose()
    try:
        async for _ in chunks:
            pass
    except httpx.HTTPError:
        pass


async def error_snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of an error answer's body as one printable line ("" when empty/unreadable).

    Reads at most one chunk past ``limit``; httpx errors while reading yield "".
    """
    data = bytearray()
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            data += chunk
            if len(data) >= limit:
                await _abandon(response, chunks)
                break
    except httpx.HTTPError:
        return ""
    text = data[:limit].decode("utf-8", "replace")
    return one_line("".join(c if c.isprintable() else " " for c in text), limit)


def status_reason(response: httpx.Response, snippet: str = "") -> str:
    """``HTTP 500 Internal Server Error: <snippet>`` for an unexpected status."""
    # HTTP/1.1 servers may send no reason phrase (hypercorn does not); name the status anyway.
    phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
    text = f"HTTP {response.status_code} {phrase}".rstrip()
    return one_line(f"{text}: {snippet}" if snippet else text)


def decode_text(body: bytes | bytearray) -> str:
    """Decode a JSON body (UTF-8, as RFC 8259 requires), a BOM tolerated."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProbeError(f"body is not UTF-8 (byte {exc.start})") from exc


def iter_json_array(
    text: str, *, max_items: int, max_item_chars: int = MAX_ELEMENT_CHARS
) -> Iterator[object]:
    """Yield the elements of a top-level JSON array one at a time.

    Memory stays bounded by ``max_item_chars`` per element whatever the array holds: a
    consumer that raises on a bad element stops the decoding there. More than ``max_items``
    elements, NaN/Infinity, nesting deeper than Python's recursion limit, invalid JSON or
    trailing data raise :class:`ProbeError`.
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise ProbeError("answer is not a JSON array")
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        _expect_end(text, pos + 1)
        return
    for index in range(max_items + 1):
        if index == max_items:
            raise ProbeError(f"more than {max_items} entries")
        value, pos = _decode_element(decoder, text, pos, max_item_chars, index)
        yield value
        pos = _skip_ws(text, pos)
        if text.startswith("]", pos):
            _expect_end(text, pos + 1)
            return
        if not text.startswith(",", pos):
            raise ProbeError(f"invalid JSON at character {pos}: expected ',' or ']'")
        pos = _skip_ws(text, pos + 1)


def _decode_element(
    decoder: json.JSONDecoder, text: str, pos: int, max_chars: int, index: int
) -> tuple[object, int]:
    window = text[pos : pos + max_chars]
    try:
        value, end = decoder.raw_decode(window)
    except RecursionError as exc:
        raise ProbeError(f"entry {index}: JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        if pos + max_chars < len(text) and _ran_out(exc, len(window)):
            reason = f"entry {index}: larger than {max_chars} characters"
        else:
            reason = f"invalid JSON at character {pos + exc.pos}: {exc.msg}"
        raise ProbeError(reason) from exc
    except ValueError as exc:  # NaN/Infinity, integers too long to convert
        raise ProbeError(one_line(f"invalid JSON in entry {index}: {exc}")) from exc
    return value, pos + end


def _ran_out(exc: json.JSONDecodeError, window: int) -> bool:
    """True when decoding failed only because the element goes on past the window."""
    return exc.pos >= window - 1 or exc.msg.startswith("Unterminated string")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _skip_ws(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _expect_end(text: str, pos: int) -> None:
    pos = _skip_ws(text, pos)
    if pos != len(text):
        raise ProbeError(f"invalid JSON at character {pos}: data after the array")


async def fetch_capped(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    max_body: int,
    params: Mapping[str, str] = NO_HEADERS,
) -> bytearray:
    """GET ``url`` without following redirects and return its 200 body, at most ``max_body``.

    Sends ``accept-encoding: identity``. Any other status, a redirect, a body that is too
    large or compressed, and every httpx failure (connect, TLS, timeout, protocol) raise
    :class:`ProbeError` with a one-line reason. Cancellation propagates untouched.
    """
    request_headers = {**headers, "accept": "application/json", "accept-encoding": "identity"}
    try:
        async with client.stream(
            "GET", url, headers=request_headers, params=params, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise ProbeError(await _unexpected(response))
            return await read_capped(response, max_body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ProbeError(transport_reason(exc)) from exc


async def _unexpected(response: httpx.Response) -> str:
    location = response.headers.get("location")
    if response.is_redirect and location is not None:
        return status_reason(response, f"redirect to {quoted(location)} not followed")
    return status_reason(response, await error_snippet(response))
