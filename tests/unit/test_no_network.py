"""The guard of the unit layer (tests/unit/conftest.py): an IP socket may not connect, bind or
send, not even on loopback, so that a unit test needing the network fails on any machine, not
only in the namespace without a network that CI runs this layer in."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio
from helpers_tls import client_tls

REFUSED = "a unit test tried to use the network"


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_an_ip_socket_may_not_bind_or_connect_even_on_loopback(family: socket.AddressFamily):
    loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(AssertionError, match=REFUSED):
            sock.bind((loopback, 0))
        with pytest.raises(AssertionError, match=REFUSED):
            sock.connect((loopback, 9))
        with pytest.raises(AssertionError, match=REFUSED):
            sock.connect_ex((loopback, 9))
    with (
        socket.socket(family, socket.SOCK_DGRAM) as udp,
        pytest.raises(AssertionError, match=REFUSED),
    ):
        udp.sendto(b"x", (loopback, 9))


async def test_trio_and_httpx_are_refused_too() -> None:
    """trio (and httpx through httpcore's trio backend) tries each address in a task of its
    own: the refusal comes out inside their exception group, never as a plain OSError."""
    refused = pytest.RaisesGroup(
        pytest.RaisesExc(AssertionError, match=REFUSED), flatten_subgroups=True
    )
    with pytest.raises(AssertionError, match=REFUSED):
        await trio.open_tcp_listeners(0, host="127.0.0.1")
    with refused:
        await trio.open_tcp_stream("127.0.0.1", 9)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        with refused:
            await client.get("http://127.0.0.1:9/")


async def test_unix_sockets_and_memory_streams_stay_allowed() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(b"y")
    assert await receive.receive_some(1) == b"y"
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://127.0.0.1:9/")).text == "ok"
