"""The splice body without a network: before every piece it checks that the socket still holds
the rest of the body (over a socket pair; splices over real connections:
tests/integration/test_passthrough.py)."""

from __future__ import annotations

import pytest
import trio

from tracker.errors import UpstreamError
from tracker.proxy.passthrough import SpliceBody
from tracker.zerocopy.connection import Connections


async def test_a_splice_refuses_a_socket_whose_body_was_read_meanwhile() -> None:
    """Before every piece the body checks that the socket still holds the rest of it."""
    left, right = trio.socket.socketpair()
    with left, right:
        connection = Connections().open((("a", 1), ("b", 2)))
        body = SpliceBody(connection, left, lambda: False, 10, 1.0, print, print)
        with pytest.raises(UpstreamError, match="read past its head"):
            async for _ in body._generate():
                pass
        assert body.sent == 0
