"""Plain proxied streams spliced socket to socket (tracker/proxy/passthrough.py), over real sockets.

tests/integration/test_proxy.py runs its cases on both byte paths (splice and the pump's
channel); these are the cases of the splice path itself: every piece size, a stall on either
side, and upstreams that send their head and body in one segment, or a 1xx head first.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import (
    EARLY,
    FAST,
    GROUP,
    TrackerUnderTest,
    advertise,
    proxy_tracker,
    wait_for,
)
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream
from helpers_wire import raw_request
from names import full_name

from tracker.proxy.upstream import ProxySettings, download_client
from tracker.zerocopy.connection import SMALLEST_PIECE

NAME = full_name(1000)
# Pieces of every size from 8 MiB down to 64 KiB once, and a tail under 64 KiB.
DATA = archive_bytes(2 * 8 * MiB - SMALLEST_PIECE + 4321, seed=3)


@asynccontextmanager
async def proxying(
    upstream_url: str, *, settings: ProxySettings = FAST
) -> AsyncIterator[TrackerUnderTest]:
    async with proxy_tracker(settings=settings) as t:
        advertise(t.index, upstream_url, [(NAME, f"{upstream_url}/{NAME}", len(DATA))])
        yield t


#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {NAME: DATA}


async def test_every_piece_size_arrives_byte_exact(upstream: FakeUpstream) -> None:
    async with proxying(upstream.base) as t:
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            response = await client.get(t.url(NAME))
        assert response.status_code == 200
        assert sha256(response.content) == sha256(DATA)
        assert t.connections is not None
        assert t.connections.pieces == 8  # 8 MiB .. 64 KiB; the tail went as plain bytes
        await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0)
        read = t.counter("snapshot_tracker_upstream_bytes_total", group=GROUP, kind="full")
        assert read == t.counter("snapshot_tracker_served_bytes_total", source="upstream")
        assert read == len(DATA)


async def test_a_large_range_is_spliced_too(upstream: FakeUpstream) -> None:
    first, last = 100, 5 * MiB + 99  # 206 of 5 MiB: pieces of 4 MiB and 1 MiB
    async with proxying(upstream.base) as t:
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            part = await client.get(t.url(NAME), headers={"range": f"bytes={first}-{last}"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
        assert part.content == DATA[first : last + 1]
        connections = t.connections
        assert connections is not None
        # No plain tail: the client may hold every byte before the last piece is counted.
        await wait_for(lambda: connections.pieces == 2)


async def test_the_body_of_an_early_head_is_spliced_too(upstream: FakeUpstream) -> None:
    """A source slower than early_head_after gets the client its head first; its body then
    takes the splice like a prompt one, not the channel through Python (that held ~7 MB per
    stream for slow clients: bench/README.md, "memory")."""
    upstream.behaviour[NAME] = Behaviour(delay=EARLY.early_head_after + 0.3)
    async with proxying(upstream.base, settings=EARLY) as t:
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            response = await client.get(t.url(NAME))
        assert response.status_code == 200
        assert "etag" not in response.headers  # the early head: sent before the answer
        assert sha256(response.content) == sha256(DATA)
        assert t.connections is not None
        assert t.connections.pieces == 8


async def test_a_client_leaving_during_an_upstream_stall_ends_both_at_once(
    upstream: FakeUpstream,
) -> None:
    upstream.behaviour[NAME] = Behaviour(pause_at=9 * MiB)  # in the second piece; never resumed
    slow = attrs.evolve(FAST, read_timeout=60.0)
    async with proxying(upstream.base, settings=slow) as t:
        wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}", read_limit=9 * MiB)
        assert wire.status == 200
        # The splice waits on the upstream; the client's close must end it well before
        # read_timeout, and close the upstream connection.
        await wait_for(lambda: upstream.seen[0].aborted, timeout=5)
        await wait_for(lambda: t.counter("snapshot_tracker_active_streams") == 0, timeout=5)


async def test_an_upstream_stalling_mid_piece_breaks_the_client_after_read_timeout(
    upstream: FakeUpstream,
) -> None:
    upstream.behaviour[NAME] = Behaviour(pause_at=3 * MiB)  # inside the first 8 MiB piece
    quick = attrs.evolve(FAST, read_timeout=1.0)
    async with proxying(upstream.base, settings=quick) as t:
        with trio.fail_after(10):
            wire = await raw_request(t.base, f"/v1/{NAME}?group={GROUP}")
        assert wire.status == 200
        assert len(wire.body) == 3 * MiB  # everything that came, then the connection closed
        assert wire.closed
        await wait_for(lambda: upstream.seen[0].aborted, timeout=5)


# -- upstreams that are not FakeUpstream --------------------------------------------------------


async def one_segment_upstream(
    prefix: bytes, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """A raw HTTP/1.1 server: after each request head, ``prefix``, the 200 head and the
    body in a single write, so the head and the first body bytes share a segment."""
    answer = prefix + f"HTTP/1.1 200 OK\r\ncontent-length: {len(DATA)}\r\n\r\n".encode() + DATA

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                request += chunk
            await stream.send_all(answer)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started(f"http://127.0.0.1:{port}")
    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize(
    "prefix",
    [b"", b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"],
    ids=["head-and-body-together", "early-hints-first"],
)
async def test_upstream_head_and_body_in_one_segment(prefix: bytes) -> None:
    async with trio.open_nursery() as nursery:
        base = await nursery.start(one_segment_upstream, prefix)
        async with proxying(base) as t:
            async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
                response = await client.get(t.url(NAME))
            assert response.status_code == 200
            assert sha256(response.content) == sha256(DATA)
            assert t.connections is not None and t.connections.pieces == 8
        nursery.cancel_scope.cancel()


async def test_download_client_leaves_the_body_in_the_socket() -> None:
    # The response head is read to its last byte and no further; a body read the usual way
    # (what a cache refresh does) still gets every byte.
    async with trio.open_nursery() as nursery:
        base = await nursery.start(one_segment_upstream, b"")
        async with download_client(None, ProxySettings()) as client:
            request = client.build_request("GET", f"{base}/{NAME}")
            response = await client.send(request, stream=True)
            stream = response.extensions["network_stream"]
            assert stream.body_unread
            sock = stream.get_extra_info("socket")
            with trio.fail_after(5):
                waiting = await sock.recv(len(DATA), socket.MSG_PEEK)
            assert DATA.startswith(waiting) and waiting
            assert sha256(await response.aread()) == sha256(DATA)
            assert not stream.body_unread  # read through httpcore: nothing left to splice
            await response.aclose()
        nursery.cancel_scope.cancel()
