"""Clients that pipeline requests and leave without reading the answers cost nothing once
they left: the descriptors go back to what they were, the API answers, a stop is prompt.

A real ``serve`` subprocess under a low descriptor limit (``ulimit -n``), raw sockets on
127.0.0.1; the process's descriptors are counted in /proc.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio
from helpers_process import Serve, start_serve
from test_exhaustion import descriptor_limit, small_tracker

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
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            answer = await client.get(f"{serve.base}/v1/best_snapshots?max=1")
        assert answer.status_code == 200
    await wait_for_fds(pid, baseline)
    start = trio.current_time()
    assert await serve.stop() == 0
    stopped_in = trio.current_time() - start
    assert stopped_in < 5, f"the stop took {stopped_in:.1f} s"
    assert "Traceback" not in serve.log, serve.log[-3000:]
