"""A storm of reloads (many ``POST /reload`` at once, a SIGHUP loop) is bounded: the
requests that wait for the reload going on share one reload after it, which reads the file
as it is then; each is answered with that reload's outcome. Each reload wakes the scrape
loop (its settings apply at once): one per request probed every source as many times."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp
from helpers_tracker import start_tracker, wait_until, write_config

REQUESTS = 24  # under the internal listener's 32 connections


async def test_a_storm_of_reloads_is_bounded(tmp_path: Path, client: httpx.AsyncClient) -> None:
    sidecar = ScriptedApp({"/v1/snapshots": Answer(200, (), b"[]")})
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_app, sidecar)
        path = write_config(
            tmp_path,
            {
                "internal_listen": "127.0.0.1:0",
                "scrape_interval": "1h",
                "target_groups": [{"group": "g", "static_targets": {"targets": [base[7:]]}}],
            },
        )
        _public, internal = await start_tracker(nursery, path)

        async def probed_once() -> bool:
            return len(sidecar.requests) >= 1

        await wait_until(probed_once)
        codes: list[int] = []

        async def post() -> None:
            codes.append((await client.post(f"{internal}/reload")).status_code)

        async with trio.open_nursery() as posts:
            for _ in range(REQUESTS):
                posts.start_soon(post)
        assert codes == [200] * REQUESTS
        await trio.sleep(1)  # the rounds the reloads woke
        # the first round, the reload going on when the others came, the one they share
        # (a request may come just after that one took the file: one more)
        assert len(sidecar.requests) <= 4, f"{len(sidecar.requests)} probes of one source"
        nursery.cancel_scope.cancel()
