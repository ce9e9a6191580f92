"""Clients that pipeline requests and leave without reading the answers cost nothing once
they left: the descriptors and connection slots go back to what they were, the API answers,
a stop is prompt (docs/architecture.md#connections).

A real ``serve`` subprocess under a low descriptor limit (``ulimit -n``), raw sockets on
127.0.0.1; the process's descriptors are counted in /proc. The 303s to an object store's
bucket need a real S3 server (SeaweedFS): those are served by the tracker's components in
this process, through the same listener (tracker/zerocopy/server.py), whose connection limit
is read directly.
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bucket import bucket_tracker, uploaded
from helpers_process import Serve, start_serve
from helpers_proxy import GROUP
from helpers_s3 import Weed
from helpers_tls import client_tls
from helpers_tracker import wait_until
from helpers_upstream import FakeUpstream
from test_exhaustion import descriptor_limit, listed, small_tracker
from test_objectstore import FULL, FULL_DATA

import tracker.zerocopy.server
from tracker.zerocopy.limit import ConnectionLimit

#: 60 requests in one go (~3 KB): h11 pauses after the first until its answer is sent.
PIPELINED = b"GET /v1/best_snapshots?max=1 HTTP/1.1\r\nhost: t\r\n\r\n" * 60
#: Descriptors the tracker may open; each wave of clients alone would take most of them.
LIMIT = 256
WAVE = 100


def open_fds(pid: int) -> int:
    """Descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_for_fds(pid: int, at_most: int, timeout: float = 10.0) -> None:
    """Poll until process ``pid`` has at most ``at_most`` descriptors open."""
    with trio.fail_after(timeout):
        # Polling: /proc has nothing to wait on.
        while open_fds(pid) > at_most:
            await trio.sleep(0.05)


async def pipeline_and_leave(serve: Serve) -> None:
    """A client that sends PIPELINED and closes without reading anything."""
    host, port = serve.base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(PIPELINED)
    await stream.aclose()


async def test_pipelined_requests_of_a_client_that_left_cost_nothing(tmp_path: Path) -> None:
    """Three waves of clients that pipeline requests and close unread: hypercorn's reader
    waited for the next request's turn for ever, so each such connection stayed open;
    with 256 descriptors the tracker ran out in the third wave (the API then timed out),
    and a stop waited the whole grace."""
    serve = await start_serve(
        "--config", str(small_tracker(tmp_path)), preexec_fn=descriptor_limit(LIMIT)
    )
    pid = serve.proc.pid
    baseline = open_fds(pid)
    for _wave in range(3):
        for _ in range(WAVE):
            await pipeline_and_leave(serve)
        await wait_for_fds(pid, baseline)
        # A fresh client each time: its connection ends with it, as the others did.
        async with httpx.AsyncClient(verify=client_tls(), timeout=5, trust_env=False) as client:
            answer = await client.get(f"{serve.base}/v1/best_snapshots?max=1")
        assert answer.status_code == 200
    await wait_for_fds(pid, baseline)
    start = trio.current_time()
    assert await serve.stop() == 0
    stopped_in = trio.current_time() - start
    assert stopped_in < 5, f"the stop took {stopped_in:.1f} s"
    assert "Traceback" not in serve.log, serve.log[-3000:]


#: Each client's flood: up to ~2 MiB of one route's GET, pipelined.
FLOOD = 2 * 1024 * 1024
#: A local archive of the tracker in redirect mode (its best full: the short names' target).
ARCHIVE = "snapshot-700-" + "3" * 44 + ".tar.zst"
#: Every kind of route, each answered by another layer (docs/architecture.md#connections):
#: the short redirects answered before Quart (303 to the archive; a 404 for an alias without
#: an incremental), a digest route and the JSON API in Quart, an archive's zero-copy file body.
ROUTES = [
    "/snapshot.tar.bz2",
    "/v1/snapshot.tar.zst",
    "/incremental-snapshot.tar.zst",
    f"/{ARCHIVE}.sha256",
    "/v1/snapshots",
    f"/{ARCHIVE}",
]
#: Clients per wave: under the connection limit the descriptor limit gives (64 of 256).
FLOOD_WAVE = 60


def flood_and_leave(base: str, target: str) -> None:
    """A client that pipelines FLOOD bytes of ``GET target`` (as much as the kernel takes
    without waiting) and closes without reading anything."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    request = f"GET {target} HTTP/1.1\r\nhost: t\r\n\r\n".encode()
    data = memoryview(request * (FLOOD // len(request)))
    with socket.create_connection((host, int(port))) as sock:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionError):
            while data:
                data = data[sock.send(data) :]


@pytest.mark.parametrize("target", ROUTES)
async def test_every_route_gives_back_a_flooding_client_that_left(
    tmp_path: Path, target: str
) -> None:
    """Waves of clients that each pipeline ~2 MiB of one route's requests and leave unread.
    A route that completes its answer although the client is gone (the short redirects
    before Quart, a digest's 404) went on answering every request left in the socket, for
    minutes: the descriptors stayed, and a few waves used up the connection limit."""
    config = small_tracker(tmp_path)
    (tmp_path / "ledger" / ARCHIVE).write_bytes(bytes(range(256)) * 256)  # 64 KiB
    serve = await start_serve("--config", str(config), preexec_fn=descriptor_limit(LIMIT))
    pid = serve.proc.pid
    async with httpx.AsyncClient(verify=client_tls(), timeout=5, trust_env=False) as client:
        await wait_until(partial(listed, client, serve.base))
        baseline = open_fds(pid)
        for _wave in range(3):
            for _ in range(FLOOD_WAVE):
                flood_and_leave(serve.base, target)
            # A fresh client: answered once the flood's connections were accepted (in order).
            async with httpx.AsyncClient(verify=client_tls(), timeout=5, trust_env=False) as fresh:
                answer = await fresh.get(f"{serve.base}/v1/best_snapshots?max=1")
            assert answer.status_code == 200
            await wait_for_fds(pid, baseline)
    assert await serve.stop() == 0
    assert "Traceback" not in serve.log, serve.log[-3000:]


#: What the ``upstream`` fixture serves (tests/integration/conftest.py).
UPSTREAM_FILES = {FULL: FULL_DATA}


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionLimit]:
    """The connection limit of every listener started during the test."""
    made: list[ConnectionLimit] = []

    class Recorded(ConnectionLimit):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            made.append(self)

    monkeypatch.setattr(tracker.zerocopy.server, "ConnectionLimit", Recorded)
    return made


@pytest.mark.parametrize("route", [f"/v1/{GROUP}/{FULL}", f"/{FULL}", "/snapshot.tar.bz2"])
async def test_a_flooding_client_that_left_gives_back_its_connection_slot(
    weed: Weed,
    upstream: FakeUpstream,
    tmp_path: Path,
    limits: list[ConnectionLimit],
    route: str,
) -> None:
    """The same flood on the 303s to the bucket answered before Quart, and on a short
    redirect, through the listener in this process: each connection's slot of
    ``max_connections`` and its descriptor come back within seconds, and the flood cost
    about one answer per client, not one per request it left behind."""
    async with (
        bucket_tracker(weed, upstream, tmp_path) as t,
        httpx.AsyncClient(verify=client_tls(), trust_env=False) as client,
    ):
        assert (await client.get(t.url(FULL))).status_code == 200  # fills the bucket
        await uploaded(weed, t, FULL)
        assert (await client.get(f"{t.base}{route}")).status_code == 303
        (limit,) = limits
        assert t.connections is not None
        baseline = open_fds(os.getpid())
        answered = t.parts.public.answered
        for _ in range(FLOOD_WAVE):
            flood_and_leave(t.base, route)
        # A fresh client: answered once the flood's connections were accepted (in order).
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as fresh:
            assert (await fresh.get(f"{t.base}{route}")).status_code == 303
        with trio.fail_after(10):
            # Polling: the listener has nothing to wait on. The first client's connection
            # may still be open.
            while limit.open > 1 or t.connections.count > 1 or open_fds(os.getpid()) > baseline:
                await trio.sleep(0.05)
        print(f"answers to {FLOOD_WAVE} floods: {t.parts.public.answered - answered}")
        assert FLOOD_WAVE <= t.parts.public.answered - answered < 4 * FLOOD_WAVE
