"""The proxy's download client against a real upstream on 127.0.0.1: its own transport and
backend read far more than httpcore's 64 KiB at once (the pure pieces of tracker.proxy.upstream
are in tests/unit/test_proxy_unit.py)."""

from __future__ import annotations

import trio
from helpers_bytes import MiB, archive_bytes
from helpers_upstream import FakeUpstream
from names import full_name

from tracker.proxy.upstream import ProxySettings, download_client

NAME = full_name(77)


async def test_download_client_uses_big_reads() -> None:
    """The download client's own transport and backend are in use: reads far larger than
    httpcore's 64 KiB reach the body (fails if httpcore stopped honouring its backend)."""
    data = archive_bytes(8 * MiB, seed=3)
    up = FakeUpstream(files={NAME: data}, chunk=8 * MiB)
    settings = ProxySettings(read_size=2 * MiB)
    client = download_client(None, settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        async with client, client.stream("GET", up.url(NAME)) as response:
            # the upstream's send blocked: the socket buffers are full
            await trio.testing.wait_all_tasks_blocked()
            sizes = [len(chunk) async for chunk in response.aiter_raw()]
        nursery.cancel_scope.cancel()
    assert sum(sizes) == len(data)
    assert max(sizes) > 64 * 1024  # httpcore alone never reads more than 64 KiB at once
