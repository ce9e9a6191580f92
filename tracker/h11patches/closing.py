"""Bytes a client sends after a request that closes its connection (HTTP/1.0, ``Connection:
close``): read and let go, as nginx does.

h11 reads them with a reader that raises (``expect_nothing``); hypercorn then answers 400 in
place of the request's answer when they came in its segment (a stray CRLF after the request:
RFC 9112 section 2.2 asks a server to ignore one), or closes the connection under an answer
being sent when they came later (a long download cut 2 s after them, the linger of
tracker/zerocopy/stream.py). No request is read after such a one, so they change nothing:
:func:`install` replaces that reader in h11's table of readers (assumption 12 of
tracker/zerocopy/README.md, canary in tests/unit/test_statusline.py) with one that drops them.
"""

from __future__ import annotations

from typing import Any

import h11
import h11._readers


def _drop(buf: Any) -> None:
    """Take and drop what the client sent after its last request; no event."""
    buf.maybe_extract_at_most(len(buf))


def install() -> None:
    """Make h11 drop what follows a request that closes its connection (idempotent)."""
    readers: dict[Any, Any] = h11._readers.READERS
    readers[(h11.CLIENT, h11.MUST_CLOSE)] = _drop
