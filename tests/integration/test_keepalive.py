"""The keep-alive timeout kept by one task per listener (tracker/zerocopy/keepalive.py).

It replaces hypercorn's per-connection idle task through ``TCPServer.idle_task``: these tests
are the canary for that hook. They serve a small app with the tracker's server on 127.0.0.1
and a keep-alive timeout of 1 s, and talk to it over raw sockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial

import attrs
import pytest
import trio
import trio.testing
from helpers_server import local_config, serve_app
from quart_trio import QuartTrio

TIMEOUT = 1.0
#: Slack for a loaded machine when a close is expected "after the timeout".
LATE = 5.0
REQUEST = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"


def small_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/")
    async def index() -> str:
        return "ok"

    return app


@attrs.define
class Server:
    host: str
    port: int
    nursery: trio.Nursery


@contextlib.asynccontextmanager
async def serving(graceful: float = 2.0) -> AsyncIterator[Server]:
    """The small app on the tracker's server until the block ends (a graceful stop of at
    most ``graceful`` seconds)."""
    async with trio.open_nursery() as nursery:
        config = local_config(keep_alive_timeout=TIMEOUT, graceful_timeout=graceful)
        url = await nursery.start(partial(serve_app, small_app(), config=config))
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield Server(host, int(port), nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving() as running:
        yield running


async def connect(server: Server) -> trio.SocketStream:
    return await trio.open_tcp_stream(server.host, server.port)


async def ask(stream: trio.SocketStream) -> None:
    """One request and its whole (small) answer."""
    await stream.send_all(REQUEST)
    got = b""
    while not got.endswith(b"ok"):
        data = await stream.receive_some(65536)
        assert data, f"closed before the answer: {got!r}"
        got += data


async def seconds_until_closed(stream: trio.SocketStream) -> float:
    start = trio.current_time()
    with trio.fail_after(TIMEOUT + LATE):
        while await stream.receive_some(65536):
            pass
    return trio.current_time() - start


async def test_an_idle_connection_is_closed_after_the_timeout(server: Server) -> None:
    async with await connect(server) as stream:
        await ask(stream)
        idle_for = await seconds_until_closed(stream)
    assert TIMEOUT - 0.05 < idle_for < TIMEOUT + LATE


async def test_the_timeout_runs_from_the_end_of_the_last_answer(server: Server) -> None:
    """Idle for most of the timeout, then a request: the connection stays open for a whole
    timeout after that answer, not until the first timeout would have run out."""
    async with await connect(server) as stream:
        await ask(stream)
        await trio.sleep(TIMEOUT * 0.7)
        await ask(stream)
        idle_for = await seconds_until_closed(stream)
    assert TIMEOUT - 0.05 < idle_for < TIMEOUT + LATE


async def test_a_head_trickled_byte_by_byte_does_not_keep_a_connection(server: Server) -> None:
    """Bytes coming in do not restart the timeout: it runs until a request head is whole."""
    async with await connect(server) as stream:
        start = trio.current_time()
        closed = False
        with trio.fail_after(TIMEOUT + LATE):
            for byte in REQUEST[:-2]:
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    closed = True
                    break
                with trio.move_on_after(TIMEOUT / 8):
                    if not await stream.receive_some(65536):
                        closed = True
                        break
        assert closed
    assert trio.current_time() - start < TIMEOUT + LATE


async def test_stopping_waits_for_nothing_idle() -> None:
    """At stop idle connections are closed at once: the stop takes far less than the
    graceful timeout (30 s here, which a stop waiting for them would take)."""
    streams = []
    async with serving(graceful=30.0) as server:
        for _ in range(5):
            streams.append(await connect(server))
            await ask(streams[-1])
        stopping = trio.current_time()
    assert trio.current_time() - stopping < 10
    for stream in streams:
        await stream.aclose()


async def test_an_idle_connection_runs_no_task_of_its_own(server: Server) -> None:
    """Each open connection runs one task (its handler); none sleeps through its timeout."""
    before = count_tasks()
    streams = [await connect(server) for _ in range(20)]
    try:
        for stream in streams:
            await ask(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() - before == len(streams)
    finally:
        for stream in streams:
            await stream.aclose()


def count_tasks() -> int:
    """Every task in this trio run."""
    count, nurseries = 0, list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        nursery = nurseries.pop()
        for task in nursery.child_tasks:
            count += 1
            nurseries.extend(task.child_nurseries)
    return count
