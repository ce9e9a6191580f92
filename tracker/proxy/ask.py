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
    """The Ask of a request with ``method`` and every header line ``headers``."""
    lines = list(headers)
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
    credentials. A repeated client header keeps its first value; a ``Range`` of several
    ranges (a list, or repeated lines) goes on as none, as a file's answer reads it
    (tracker/serving/ranges.py): a source would answer ``multipart/byteranges``, which is
    no archive's answer (the whole file is)."""
    lines = list(client_headers)
    ranges = [value for name, value in lines if name.lower() == "range"]
    several = len(ranges) > 1 or any("," in value for value in ranges)
    out: dict[str, str] = {}
    for name, value in lines:
        key = name.lower()
        if key == "range" and several:
            continue
        if key in FORWARDED_REQUEST_HEADERS and key not in out:
            out[key] = value
    if authorization:
        out["authorization"] = authorization
    return out
