"""What a client asked for, built once at the web boundary: the facts the route decides on,
the headers forwarded to a source, the connection that takes zero-copy pieces (:class:`Ask`).

tracker/web/delivery.py builds an :class:`Ask` from the web framework's request; nothing
under it reads the request again (docs/architecture.md, "One request's path"). Which client
headers go on to a source at all is decided here, once (:data:`FORWARDED_REQUEST_HEADERS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from tracker.proxy.decisions import Asked
from tracker.serving.ranges import range_header, range_spec
from tracker.zerocopy.connection import Connection

#: Client request headers sent on upstream (lower case). Everything else stays here.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)


@attrs.frozen
class Ask:
    """One archive request, framework-free."""

    asked: Asked
    #: The client's ``Range``, ``If-Range`` and conditional headers (lower-case names, each
    #: first value): all that goes on to a source.
    headers: Mapping[str, str]
    #: The same header lines, repeated ones included: what a file's answer reads (two
    #: ``Range`` lines make no range, tracker/serving/ranges.py).
    lines: tuple[tuple[str, str], ...] = ()
    #: The client's connection when it takes zero-copy pieces (sendfile, splice).
    connection: Connection | None = None

    @property
    def method(self) -> str:
        return self.asked.method


def ask_of(
    method: str, headers: Iterable[tuple[str, str]], connection: Connection | None = None
) -> Ask:
    """The Ask of a request with ``method`` and every header line ``headers``. A HEAD's
    ``Range`` and ``If-Range`` go on to no source: a range applies to a GET only [RFC 9110
    14.2], and a file's answer to a HEAD is its 200 (a source would answer 206)."""
    lines = list(headers)
    if method != "GET":
        lines = [(k, v) for k, v in lines if k.lower() not in ("range", "if-range")]
    forwarded = upstream_request_headers(lines, None)
    kept = tuple((k.lower(), v) for k, v in lines if k.lower() in FORWARDED_REQUEST_HEADERS)
    user_agent = next((value for key, value in lines if key.lower() == "user-agent"), "")
    asked = Asked(
        method=method,
        range=forwarded.get("range"),
        conditional=any(key != "range" for key in forwarded),
        user_agent=user_agent,
    )
    return Ask(asked, forwarded, kept, connection)


def upstream_request_headers(
    client_headers: Iterable[tuple[str, str]], authorization: str | None
) -> dict[str, str]:
    """The headers of the upstream request: the whitelisted client headers, then the group's
    credentials. A repeated client header keeps its first value; a ``Range`` goes on only
    as a file's answer reads it (:func:`tracker.serving.ranges.range_spec`), written
    plainly: one of several ranges (a list, or repeated lines) or an invalid one
    (``bytes=5-2``) goes on as none (a source would answer ``multipart/byteranges``, no
    archive's answer, or a 416 where a file's answer is the whole file), and an empty list
    element as one range (``bytes=0-99,``).

    A value with a byte past ASCII (obs-text, which HTTP allows a client to send) goes on
    as none, read as a file's answer reads it: no validator of a source matches it, so the
    condition is ignored, and an ``If-Range`` that cannot match takes the ``Range`` with it
    (the whole file, as a failed ``If-Range`` asks). Sent on, httpx refused to encode it:
    the request failed as the source's fault, each such request a failed transfer of a
    healthy source, lowering its measured throughput."""
    lines = list(client_headers)
    ranges = [value for name, value in lines if name.lower() == "range"]
    spec = range_spec(ranges[0]) if len(ranges) == 1 else None
    if_range = next((v for name, v in lines if name.lower() == "if-range"), "")
    if not if_range.isascii():
        spec = None
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in lines:
        key = name.lower()
        if key == "range":
            if spec is not None and key not in out:
                out[key] = range_header(spec)
            continue
        if key in FORWARDED_REQUEST_HEADERS and key not in seen:
            seen.add(key)  # the first value, whether it goes on or not
            if value.isascii():
                out[key] = value
    if authorization:
        out["authorization"] = authorization
    return out
