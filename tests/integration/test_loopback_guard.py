"""The guard of every test (tests/conftest.py) against a real listener: connections stay on the
machine. Loopback goes through (the integration layer's servers live there); any other address
is refused before a packet is sent."""

from __future__ import annotations

import socket
from typing import Any

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


@pytest.mark.parametrize(
    "send",
    [
        lambda sock: sock.sendto(b"x", ("192.0.2.1", 9)),
        lambda sock: sock.sendto(b"x", 0, ("255.255.255.255", 9)),
        lambda sock: sock.sendmsg([b"x"], [], 0, ("192.0.2.1", 9)),
    ],
)
def test_the_test_guard_refuses_datagrams_off_the_machine(send: Any) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(AssertionError, match="off the machine"),
    ):
        send(sock)


def test_the_test_guard_sends_datagrams_on_the_machine() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(b"x", receiver.getsockname())
        assert receiver.recv(1) == b"x"


@pytest.mark.parametrize(
    "lookup",
    [
        lambda: socket.gethostbyname("example.org"),
        lambda: socket.gethostbyname_ex("example.org"),
        lambda: socket.gethostbyaddr("192.0.2.1"),
        lambda: socket.getnameinfo(("192.0.2.1", 80), 0),
    ],
)
def test_the_test_guard_refuses_the_old_resolver_calls(lookup: Any) -> None:
    with pytest.raises(AssertionError, match="lookup"):
        lookup()


def test_the_test_guard_lets_loopback_lookups_through() -> None:
    # the standard library's http.server names its own address with a reverse lookup
    assert socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)[0] == "127.0.0.1"
    assert socket.gethostbyname("127.0.0.1") == "127.0.0.1"
