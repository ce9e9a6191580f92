"""What a client asked for, built once at the web boundary: the facts the plan decides on,
the headers forwarded to a source, the connection that takes zero-copy pieces.

tracker/web/delivery.py builds an :class:`Ask` from the web framework's request; nothing
under it reads the request again (docs/architecture.md, "One request's path").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from tracker.proxy.decisions import Asked
from tracker.proxy.upstream import FORWARDED_REQUEST_HEADERS, upstream_request_headers
from tracker.zerocopy.connection import Connection


@attrs.frozen
class Ask:
    """One archive request, framework-free."""

    asked: Asked
    #: The client's ``Range``, ``If-Range`` and conditional headers (lower-case names, each
    #: first value): all that goes on to a source.
    headers: Mapping[str, str]
    #: The same header lines, repeated ones included: what a file's answer reads (two
    #: ``Range`` lines make no range, tracker/files/ranges.py).
    lines: tuple[tuple[str, str], ...] = ()
    #: The client's connection when it takes zero-copy pieces (sendfile, splice).
    connection: Connection | None = None

    @property
    def method(self) -> str:
        return self.asked.method

    @property
    def request(self) -> tuple[str, list[tuple[str, str]]]:
        """``(method, header lines)``, as :func:`tracker.files.fileresponse.file_response`
        takes."""
        return self.asked.method, list(self.lines)


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
