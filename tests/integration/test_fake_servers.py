"""The tests' fake servers keep a connection as the field's servers do: a client that sends
its next request on the same connection gets it answered. A fake that closed where a real
server keeps the connection failed a fetch at random (the next request reset on a loaded
machine), a fault no real tracker has."""

from __future__ import annotations

import h11
import pytest
import trio
from helpers_fetch import FakeTracker
from helpers_upstream import FakeUpstream, serving


async def answers_on_one_connection(base: str, *asked: tuple[str, str]) -> list[int]:
    """The status of each request in ``asked`` ((method, target)), sent one after the other
    on one connection; a request left unanswered ends the list."""
    host, port = base.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    async with stream:
        for method, target in asked:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            request = h11.Request(method=method, target=target, headers=[("host", host)])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    statuses.append(event.status_code)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return statuses
    return statuses


@pytest.mark.parametrize("fake", [FakeUpstream, FakeTracker], ids=["upstream", "tracker"])
async def test_a_head_of_a_missing_file_keeps_the_connection(fake: type[FakeUpstream]) -> None:
    """A HEAD answered 404 (the fetch asks a tracker ``HEAD /v1/snapshot.tar.bz2``), then a
    GET on the same connection: answered, as nginx and a tracker answer it."""
    up = fake(files={"a.tar.zst": b"x"})
    with trio.fail_after(10):
        async with serving(up):
            got = await answers_on_one_connection(
                up.base, ("HEAD", "/v1/snapshot.tar.bz2"), ("GET", "/files/a.tar.zst")
            )
    assert got == [404, 200]
