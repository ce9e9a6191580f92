"""Bounded reads of untrusted upstream answers, and httpx failures told in one line.

Every probe talks to hosts the tracker does not control, so nothing here trusts a peer to be
small or well formed: bodies are read against a hard byte cap, JSON arrays are decoded one
bounded element at a time, and every httpx / JSON failure becomes a :class:`ProbeError` whose
message is a single line an operator can act on.
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import re
from collections.abc import AsyncIterator, Collection, Generator, Iterator, Mapping, Sequence
from types import MappingProxyType

import httpx
import trio

from tracker.core.text import one_line, quoted
from tracker.core.untrusted import JSON_ERRORS, ascii_digits, json_reason, reject_constant
from tracker.errors import ProbeError
from tracker.net.exchange import HTTPX_ERRORS, transport_reason
from tracker.observability.redact import has_secrets

#: Default for the ``headers`` parameter of the probes (an immutable empty mapping).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})

# Python objects take 20-30x the bytes of dense JSON (measured: 8 MiB of ``{},`` is ~200 MiB
# of dicts), so a body is never handed to json.loads whole: each element of the top-level
# array is decoded from a slice of at most this many characters.
MAX_ELEMENT_CHARS = 16 * 1024

_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
    size = ascii_digits(declared.strip())
    if size is not None and size > max_bytes:
        raise ProbeError(f"body of {declared} bytes exceeds the limit of {max_bytes} bytes")


async def read_capped(response: httpx.Response, max_bytes: int) -> bytearray:
    """Read a streamed response body, failing as soon as it passes ``max_bytes``.

    The response must come from ``client.stream(...)``; closing it (the caller's ``async
    with``) drops the connection rather than draining the rest. Raises :class:`ProbeError`
    for a body that is too large or compressed; httpx errors while reading propagate (read it
    inside :func:`tracker.net.exchange.stream`: they come out as TransportError).
    Cancellation propagates.
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
    if _is_html(response.headers.get("content-type", ""), text):
        return html_reason(text)
    return one_line("".join(c if c.isprintable() else " " for c in text), limit)


#: The most of an HTML error page's text a reason quotes: a web server's or a proxy's page
#: says little in its first words ("404 Not Found nginx"), and the markup says nothing.
HTML_REASON = 80
_HTML_DROPPED = re.compile(r"<(head|script|style)\b.*?(</\1\s*>|$)", re.I | re.S)
_HTML_TAG = re.compile(r"<[^>]*(>|$)", re.S)


def _is_html(content_type: str, text: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("text/html", "application/xhtml+xml") or text.lstrip()[:1] == "<"


def html_reason(text: str) -> str:
    """The start of an HTML error page as plain text: its visible words, tags, head, scripts
    and entities' markup left out, at most :data:`HTML_REASON` characters ("" when it shows
    none). Pure."""
    import html

    words = html.unescape(_HTML_TAG.sub(" ", _HTML_DROPPED.sub(" ", text)))
    return one_line("".join(c if c.isprintable() else " " for c in words), HTML_REASON)


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


#: Bytes of a body checked and narrowed at a time by :func:`narrow_text` (each piece's own
#: text, up to 4 bytes a character, is let go before the next).
_NARROW_PIECE = 1024**2
#: Every byte past ASCII read as ``?``.
_TO_ASCII = bytes(range(128)) + b"?" * 128


def narrow_text(body: bytes | bytearray) -> str:
    """A JSON body (UTF-8, a BOM tolerated) as text of one byte a character, each byte of a
    character past ASCII read as ``?``: for the answers whose strings that count are ASCII
    (keys, base58, numbers), so that one wider character (an emoji in a log) does not make
    the whole text 4 bytes a character, 4 times the body. Past ASCII, JSON holds such
    characters only inside strings: the structure is the body's. A ``bytearray`` is
    narrowed in place (it is the text's bytes after); ProbeError (one line) for a body that
    is not UTF-8."""
    start = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    if not body.isascii():
        narrowed = body if isinstance(body, bytearray) else bytearray(body)
        check = codecs.getincrementaldecoder("utf-8")()
        for at in range(start, len(narrowed), _NARROW_PIECE):
            piece = narrowed[at : at + _NARROW_PIECE]
            pending = len(check.getstate()[0])  # an unfinished character's bytes, kept
            try:
                check.decode(piece, final=at + _NARROW_PIECE >= len(narrowed))
            except UnicodeDecodeError as exc:
                raise ProbeError(f"body is not UTF-8 (byte {at - pending + exc.start})") from exc
            narrowed[at : at + _NARROW_PIECE] = piece.translate(_TO_ASCII)
        body = narrowed
    return str(memoryview(body)[start:], "ascii")


def iter_json_array(
    text: str, *, max_items: int, max_item_chars: int = MAX_ELEMENT_CHARS
) -> Iterator[object]:
    """Yield the elements of a top-level JSON array one at a time.

    Memory stays bounded by ``max_item_chars`` per element whatever the array holds: a
    consumer that raises on a bad element stops the decoding there. More than ``max_items``
    elements, NaN/Infinity, nesting deeper than Python's recursion limit, invalid JSON or
    trailing data raise :class:`ProbeError`.
    """
    decoder = json.JSONDecoder(parse_constant=reject_constant)
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise ProbeError("answer is not a JSON array")
    end = yield from _array_items(decoder, text, pos + 1, max_items, max_item_chars)
    _expect_end(text, end, "array")


def iter_json_member(
    text: str, member: str, *, max_items: int, max_item_chars: int = MAX_ELEMENT_CHARS
) -> Iterator[object]:
    """Yield the elements of the array ``member`` of a top-level JSON object one at a time
    (the ``result`` of a JSON-RPC answer), as :func:`iter_json_array` does.

    The other members are decoded within ``max_item_chars`` each and dropped. Raises
    :class:`ProbeError` as :func:`iter_json_array` does, and when the object has no
    ``member`` array (a JSON-RPC error answer).
    """
    found = False
    for name, value in iter_json_members(
        text, {member}, max_items=max_items, max_item_chars=max_item_chars
    ):
        if name == member + "[]":
            yield value
        elif name == member and isinstance(value, list):
            found = True  # the array ended (its elements were yielded before)
    if not found:
        raise ProbeError(f"no {quoted(member)} array in the answer")


def iter_json_members(
    text: str,
    arrays: Collection[str],
    *,
    within: Sequence[str] = (),
    max_items: int,
    max_item_chars: int = MAX_ELEMENT_CHARS,
) -> Iterator[tuple[str, object]]:
    """Yield ``(name, value)`` for the members of a top-level JSON object, and of the objects
    named by ``within`` inside it (``("result",)``: the ``result`` object of a JSON-RPC
    answer), one bounded value at a time.

    A member named in ``arrays`` whose value is an array yields ``(name + "[]", element)``
    for each element (at most ``max_items`` in all), then ``(name, [])`` once it ended; every
    other member yields ``(name, value)`` decoded within ``max_item_chars``. Raises
    :class:`ProbeError` as :func:`iter_json_array` does.
    """
    decoder = json.JSONDecoder(parse_constant=reject_constant)
    budget = [max_items]
    pos = _skip_ws(text, 0)
    end = yield from _object_members(
        decoder, text, pos, tuple(within), arrays, budget, max_item_chars
    )
    _expect_end(text, end, "object")


def _object_members(
    decoder: json.JSONDecoder,
    text: str,
    pos: int,
    within: tuple[str, ...],
    arrays: Collection[str],
    budget: list[int],
    max_item_chars: int,
) -> Generator[tuple[str, object], None, int]:
    """The members of the object at ``pos`` (see :func:`iter_json_members`); returns the
    position after its closing brace."""
    if not text.startswith("{", pos):
        raise ProbeError("answer is not a JSON object")
    pos = _skip_ws(text, pos + 1)
    while not text.startswith("}", pos):
        name, pos = _decode_element(decoder, text, pos, max_item_chars, "a member name")
        pos = _skip_ws(text, pos)
        if not isinstance(name, str) or not text.startswith(":", pos):
            raise ProbeError(f"invalid JSON at character {pos}: expected a member name and ':'")
        pos = _skip_ws(text, pos + 1)
        if within and name == within[0] and text.startswith("{", pos):
            args = (within[1:], arrays, budget, max_item_chars)
            pos = yield from _object_members(decoder, text, pos, *args)
        elif not within and name in arrays and text.startswith("[", pos):
            items = _array_items(decoder, text, pos + 1, budget[0], max_item_chars)
            while True:
                try:
                    value = next(items)
                except StopIteration as stop:
                    pos = stop.value
                    break
                budget[0] -= 1
                yield name + "[]", value
            yield name, []
        else:
            label = f"member {quoted(name, 40)}"
            value, pos = _decode_element(decoder, text, pos, max_item_chars, label)
            yield name, value
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif not text.startswith("}", pos):
            raise ProbeError(f"invalid JSON at character {pos}: expected ',' or '}}'")
    return pos + 1


def _array_items(
    decoder: json.JSONDecoder, text: str, pos: int, max_items: int, max_item_chars: int
) -> Generator[object, None, int]:
    """Yield the elements of the array opened just before ``pos``; returns the position
    after its closing bracket."""
    pos = _skip_ws(text, pos)
    if text.startswith("]", pos):
        return pos + 1
    for index in range(max_items):
        value, pos = _decode_element(decoder, text, pos, max_item_chars, f"entry {index}")
        yield value
        pos = _skip_ws(text, pos)
        if text.startswith("]", pos):
            return pos + 1
        if not text.startswith(",", pos):
            raise ProbeError(f"invalid JSON at character {pos}: expected ',' or ']'")
        pos = _skip_ws(text, pos + 1)
    raise ProbeError(f"more than {max_items} entries")


#: The first window an element is decoded from: most elements are far smaller than their
#: limit, and slicing the whole limit for each of 100,000 tiny elements copied gigabytes.
_FIRST_WINDOW = 2048


def _decode_element(
    decoder: json.JSONDecoder, text: str, pos: int, max_chars: int, label: str
) -> tuple[object, int]:
    """One JSON value from ``text[pos:]`` that must fit in ``max_chars`` characters."""
    window = min(max_chars, _FIRST_WINDOW)
    while True:
        cut = pos + window < len(text)  # the window may end inside the element
        try:
            value, end = decoder.raw_decode(text[pos : pos + window])
        except json.JSONDecodeError as exc:
            if cut and window < max_chars:
                # The first window may end anywhere in the element: inside a `true`, a
                # `\uXXXX` escape, where the decoder blames the token's start, characters
                # before the cut. Only the whole limit tells.
                window = max_chars
                continue
            if cut and _ran_out(exc, window):
                reason = f"{label}: larger than {max_chars} characters"
            else:
                reason = f"invalid JSON at character {pos + exc.pos}: {exc.msg}"
            raise ProbeError(reason) from exc
        except JSON_ERRORS as exc:  # nesting too deep, NaN/Infinity, integers too long
            raise ProbeError(f"{label}: {json_reason(exc)}") from exc
        if cut and end == window and window < max_chars:
            window = max_chars  # a number may go on past the window: decode it whole
            continue
        return value, pos + end


#: How far before a window's end the decoder may blame a token the window cut: the start
#: of a ``\uXXXX`` escape or of a ``false``.
_CUT_TOKEN = 6


def _ran_out(exc: json.JSONDecodeError, window: int) -> bool:
    """True when decoding failed only because the element goes on past the window."""
    return exc.pos >= window - _CUT_TOKEN or exc.msg.startswith("Unterminated string")


def _skip_ws(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _expect_end(text: str, pos: int, what: str) -> None:
    pos = _skip_ws(text, pos)
    if pos != len(text):
        raise ProbeError(f"invalid JSON at character {pos}: data after the {what}")


async def fetch_capped(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    max_body: int,
    params: Mapping[str, str] = NO_HEADERS,
    head_within: float = math.inf,
    same_host_hops: int = 0,
) -> bytearray:
    """GET ``url`` and return its 200 body, at most ``max_body``; its head within
    ``head_within`` seconds (the body then has the client's read timeout for each read).

    Redirects are not followed, but for ``same_host_hops`` of them to ``url``'s own origin
    or its ``https`` upgrade (:func:`same_host_redirect`), asked with the same headers:
    a sidecar behind a proxy that moves its path, as the Go tracker follows. Sends
    ``accept-encoding: identity``. Any other status, another redirect, a body that is too
    large or compressed, no head in time, and every httpx failure (connect, TLS, timeout,
    protocol) raise :class:`ProbeError` with a one-line reason (an error answer's body
    quoted, unless the request carried a credential: :func:`carried_credentials`).
    Cancellation from outside propagates untouched.
    """
    request_headers = {**headers, "accept": "application/json", "accept-encoding": "identity"}
    deadline = trio.current_time() + head_within
    hops = 0
    while True:
        head = trio.CancelScope(deadline=deadline)
        following: str | None = None
        try:
            with head:
                async with client.stream(
                    "GET", url, headers=request_headers, params=params, follow_redirects=False
                ) as response:
                    head.deadline = math.inf
                    if response.status_code == 200:
                        return await read_capped(response, max_body)
                    if hops < same_host_hops:
                        following = same_host_redirect(str(response.request.url), response)
                    if following is None:
                        raise ProbeError(await _unexpected(response, url))
        except HTTPX_ERRORS as exc:
            raise ProbeError(transport_reason(exc)) from exc
        if following is None:
            raise ProbeError(f"no answer within {head_within:g}s")
        url, params, hops = following, NO_HEADERS, hops + 1


def same_host_redirect(asked: str, response: httpx.Response) -> str | None:
    """Where ``response`` (to the GET of ``asked``) redirects to, when that is ``asked``'s
    own origin or its ``https`` upgrade on the same host and port 443: where the request's
    credentials may go (docs/configuration.md); None for no redirect, another origin, or
    a ``Location`` naming credentials of its own. ``asked``'s own userinfo (a sidecar
    configured with it) goes along. Pure."""
    location = response.headers.get("location")
    if not response.is_redirect or not location:
        return None
    try:
        named, before = httpx.URL(location), httpx.URL(asked)
        after = before.join(named)
    except (httpx.InvalidURL, ValueError):
        return None
    if named.userinfo or after.scheme not in ("http", "https") or after.host != before.host:
        return None
    same = (after.scheme, after.port) == (before.scheme, before.port)
    upgrade = (before.scheme, after.scheme, after.port) == ("http", "https", None)
    if not (same or upgrade):
        return None
    # an absolute Location has none of ``asked``'s userinfo: the sidecar's credentials
    return str(after.copy_with(userinfo=before.userinfo) if before.userinfo else after)


#: Request headers that carry a credential (a group's ``Authorization``, a Consul token).
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "x-consul-token", "cookie")


def carried_credentials(request: httpx.Request, url: str) -> bool:
    """True when ``request`` carried a credential: a header of :data:`CREDENTIAL_HEADERS`
    (userinfo is sent as one), or its configured ``url`` a query (an API key)."""
    return any(h in request.headers for h in CREDENTIAL_HEADERS) or has_secrets(url)


async def _unexpected(response: httpx.Response, url: str) -> str:
    location = response.headers.get("location")
    if response.is_redirect and location is not None:
        return status_reason(response, f"redirect to {quoted(location)} not followed")
    if carried_credentials(response.request, url):
        # Its body is not quoted: an auth proxy's "rejected credentials Bearer …" put the
        # group's token into the target's last_error, shown on the public listener.
        return status_reason(response)
    return status_reason(response, await error_snippet(response))


def run_limiter(
    slot: trio.lowlevel.RunVar[trio.CapacityLimiter], size: int
) -> trio.CapacityLimiter:
    """The limiter kept in ``slot`` for this ``trio.run`` (made of ``size`` tokens on first
    use): threads of their own for calls a hostile or hung peer can keep blocked after
    their caller left (trio's shared pool serves file answers and parsers). One per run: a
    thread abandoned in one run gives its token back to that run only."""
    try:
        return slot.get()
    except LookupError:
        limiter = trio.CapacityLimiter(size)
        slot.set(limiter)
        return limiter
