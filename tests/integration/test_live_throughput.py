"""The throughput of a target while bytes come from it: ``/v1/targets`` and the status page
show the rate measured meanwhile, not "—" until the transfer ends (docs/http-api.md)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio
from helpers_bytes import archive_bytes
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, sidecar_listing
from names import full_name

MiB = 1024 * 1024
FULL = full_name(345_600_000)
DATA = archive_bytes(4 * MiB, seed=5)


async def test_a_target_shows_its_rate_while_bytes_come_from_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up = FakeUpstream(files={FULL: DATA})
    up.listing = sidecar_listing({FULL: DATA})
    up.behaviour[FULL] = Behaviour(pause_at=2 * MiB)  # the transfer stays open midway
    await nursery.start(up.run)
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "300ms",
        "verify_archives": False,  # opaque bytes, not an archive
        "proxy_snapshot_downloads": True,
        "target_groups": [
            {"group": "g", "static_targets": {"targets": [up.base.removeprefix("http://")]}}
        ],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    target = f"{up.base}"
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=30) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{public}/v1/snapshots")).json())

        await wait_until(listed)
        got: list[bytes] = []

        async def download() -> None:
            async with client.stream("GET", f"{public}/v1/g/{FULL}") as response:
                got.append(await response.aread())

        nursery.start_soon(download)

        async def rate_shown() -> bool:
            entries = (await client.get(f"{public}/v1/targets")).json()
            [entry] = [e for e in entries if e["target"].rstrip("/") == target]
            return entry.get("throughput_bps", 0) > 0

        await wait_until(rate_shown)
        assert up.gets(FULL) and not got  # still flowing: the transfer has not ended
        page = (await client.get(f"{internal}/")).text
        row = next(r for r in page.split("<tr>") if target.removeprefix("http://") in r)
        assert re.search(r"<td>[\d.]+ [KMG]?i?B/s</td>", row), row
        up.behaviour[FULL].resume.set()
        with trio.fail_after(20):
            while not got:
                await trio.sleep(0.02)
    assert got == [DATA]
