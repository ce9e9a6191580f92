"""Reason phrases in the status lines h11 writes (``HTTP/1.1 303 See Other``).

hypercorn builds its ``h11.Response`` without a reason, and h11 then writes the status line
as ``HTTP/1.1 303 `` (the space is mandatory, the phrase optional: RFC 9112 section 4).
Clients ignore it, but people reading ``curl -I`` and some monitoring checks do not. h11 has
no option for it; :func:`install` replaces the writer of response heads in h11's table of
writers (assumption 11 of this package's README, canary in tests/unit/test_statusline.py)
with one that takes the standard phrase of the code when none is given.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from typing import Any

import h11
import h11._writers

_original: Callable[[Any, Callable[[bytes], Any]], None] = h11._writers.write_any_response


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for a code without one)."""
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _write_any_response(response: Any, write: Callable[[bytes], Any]) -> None:
    """h11's ``write_any_response`` with the standard phrase when the event has none."""
    if response.reason or not (phrase := reason_phrase(response.status_code)):
        _original(response, write)
        return
    head: list[bytes] = []
    _original(response, head.append)
    if head and head[0] == b"HTTP/1.1 %d \r\n" % response.status_code:  # h11's own line
        head[0] = b"HTTP/1.1 %d %s\r\n" % (response.status_code, phrase)
    for part in head:
        write(part)


def install() -> None:
    """Make h11 write a reason phrase in every response's status line (idempotent)."""
    writers: dict[Any, Any] = h11._writers.WRITERS
    for key in ((h11.SERVER, h11.IDLE), (h11.SERVER, h11.SEND_RESPONSE)):
        writers[key] = _write_any_response
