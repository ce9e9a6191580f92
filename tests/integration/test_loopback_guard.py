"""The guard of every test (tests/conftest.py) against a real listener: connections stay on the
machine. Loopback goes through (the integration layer's servers live there); any other address
is refused before a packet is sent."""

from __future__ import annotations

import socket

import pytest
import trio


def test_the_test_guard_refuses_connections_off_the_machine() -> None:
    """The conftest guard itself: a bug in the policy must never reach the network."""
    with socket.socket() as sock, pytest.raises(AssertionError, match="off the machine"):
        sock.connect(("192.0.2.1", 80))


async def test_the_test_guard_lets_loopback_through() -> None:
    """A real listener on 127.0.0.1 is reached through the guard (the refusal above is the
    guard's, not a machine without a network)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"x")
        async with await listeners[0].accept() as accepted:
            assert await accepted.receive_some(1) == b"x"
