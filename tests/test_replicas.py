"""Several replicas, one bucket (SPEC §10): ``snapshot-tracker serve`` subprocesses sharing a
real SeaweedFS bucket, a real upstream, real download clients."""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers_process import Serve, start_serve
from helpers_proxy import (
    GROUP,
    Behaviour,
    FakeUpstream,
    MiB,
    archive_bytes,
    serving,
    sha256,
    sidecar_listing,
    wait_for,
)
from helpers_s3 import Weed, free_ports, store_settings
from names import full_name
from test_clients_real import run, tool

SIZE = 256 * MiB
FULL = full_name(12000)
# 256 MiB of distinct bytes (randbytes takes at most 2**31 bits at once).
DATA = b"".join(archive_bytes(16 * MiB, seed=120 + i) for i in range(SIZE // (16 * MiB)))
DIGEST = sha256(DATA)
LOCK_TTL = 2.0


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    files = {FULL: DATA}
    up = FakeUpstream(files=files, listing=sidecar_listing(files), chunk=1024 * 1024)
    async with serving(up) as served:
        yield served


def write_config(tmp_path: Path, up: FakeUpstream, port: int, store: dict[str, Any]) -> Path:
    directory = tmp_path / str(port)
    directory.mkdir()
    settings = {
        "listen": f"127.0.0.1:{port}",
        "internal_listen": "",
        "scrape_interval": "30s",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": "cache",
        "shutdown_grace": "1s",
        "object_store": store,
        "target_groups": [
            {"group": GROUP, "static_targets": {"targets": [up.base.removeprefix("http://")]}}
        ],
    }
    path = directory / "config.yml"
    path.write_text(json.dumps(settings))
    return path


async def start_replicas(
    count: int, tmp_path: Path, up: FakeUpstream, weed: Weed, prefix: str
) -> list[Serve]:
    replicas = []
    for port in free_ports(count):
        store = store_settings(
            weed, prefix, replica_url=f"http://127.0.0.1:{port}", lock_ttl=f"{LOCK_TTL}s"
        )
        replicas.append(await start_serve("--config", str(write_config(tmp_path, up, port, store))))
    async with httpx.AsyncClient(trust_env=False) as client:
        for replica in replicas:  # each has scraped the upstream
            with trio.fail_after(10):
                while not (await client.get(f"{replica.base}/v1/snapshots")).json():
                    await trio.sleep(0.05)
    return replicas


def upstream_bytes(up: FakeUpstream) -> int:
    return sum(seen.body_sent for seen in up.gets(FULL))


async def digest_of(client: httpx.AsyncClient, url: str) -> str:
    digest = hashlib.sha256()
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


async def test_three_replicas_pull_each_archive_from_upstream_once(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    prefix = "fleet-a/"
    upstream.behaviour[FULL] = Behaviour(rate=256 * MiB)  # a refresh lasts about a second
    replicas = await start_replicas(3, tmp_path, upstream, weed, prefix)
    digests: list[str] = []
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        async with trio.open_nursery() as nursery:
            for i in range(9):
                url = f"{replicas[i % 3].base}/v1/{GROUP}/{FULL}"
                nursery.start_soon(lambda url=url: _append(digests, digest_of(client, url)))
        assert digests == [DIGEST] * 9
        assert upstream_bytes(upstream) <= 1.1 * SIZE
        await wait_for(lambda: f"{prefix}{GROUP}/{FULL}" in weed.objects(prefix), timeout=60)
        assert weed.objects(prefix)[f"{prefix}{GROUP}/{FULL}"] == SIZE
        assert weed.uploads(prefix) == []

        # Every replica now sends clients to the bucket, and HEAD is its own answer.
        locations = []
        for replica in replicas:
            url = f"{replica.base}/v1/{GROUP}/{FULL}"
            with trio.fail_after(30):
                while (hit := await client.get(url)).status_code != 303:
                    await trio.sleep(0.1)  # a replica looks again after a miss (1 s)
            locations.append(hit.headers["location"])
            head = await client.head(url)
            assert head.status_code == 200
            assert head.headers["content-length"] == str(SIZE)
            assert "location" not in head.headers
        ranged = await client.get(locations[0], headers={"range": "bytes=1000-1999"})
        assert ranged.status_code == 206 and ranged.content == DATA[1000:2000]
        metrics_free = upstream_bytes(upstream)
    assert all(loc.startswith(weed.endpoint) for loc in locations)

    # Real clients follow the 303 to the bucket.
    url = f"{replicas[1].base}/v1/{GROUP}/{FULL}"
    await run(tool("curl"), "-sSfL", "-o", "curl.out", url, cwd=tmp_path)
    (tmp_path / "wget-dir").mkdir()
    await run(tool("wget"), "-q", "--content-disposition", url, cwd=tmp_path / "wget-dir")
    await run(tool("aria2c"), "-q", "-x4", "-s4", "-o", "aria.out", url, cwd=tmp_path)
    assert sha256((tmp_path / "curl.out").read_bytes()) == DIGEST
    assert sha256((tmp_path / "wget-dir" / FULL).read_bytes()) == DIGEST
    assert sha256((tmp_path / "aria.out").read_bytes()) == DIGEST
    assert upstream_bytes(upstream) == metrics_free  # nothing more from upstream
    for replica in replicas:
        assert await replica.stop() == 0
        assert "Traceback" not in replica.log


async def _append(out: list[str], value: Any) -> None:
    out.append(await value)


async def test_a_killed_refresher_is_taken_over_and_leaves_no_parts(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    prefix = "fleet-b/"
    key = f"{prefix}{GROUP}/{FULL}"
    paused = Behaviour(pause_at=SIZE // 2)
    upstream.behaviour[FULL] = paused
    first, second = await start_replicas(2, tmp_path, upstream, weed, prefix)
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        broken: list[str] = []

        async def doomed() -> None:
            try:
                await digest_of(client, f"{first.base}/v1/{GROUP}/{FULL}")
            except httpx.HTTPError as exc:
                broken.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed)
            await wait_for(lambda: weed.uploads(prefix) == [key], timeout=30)  # parts are up
            assert key not in weed.objects(prefix)  # nothing partial is ever an object
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
        assert broken  # the killed replica's client saw a broken stream, not a short 200
        upstream.behaviour[FULL] = Behaviour()
        paused.resume.set()

        # Within lock_ttl the lock is live but its holder gone: served from upstream.
        url = f"{second.base}/v1/{GROUP}/{FULL}"
        assert await digest_of(client, url) == DIGEST
        # After lock_ttl the next request takes the lock over and fills the bucket.
        await trio.sleep(LOCK_TTL + 1)  # and a second: lock ages are whole seconds
        assert await digest_of(client, url) == DIGEST
        await wait_for(lambda: key in weed.objects(prefix), timeout=60)
        await wait_for(lambda: weed.uploads(prefix) == [], timeout=30)
        assert weed.objects(prefix)[key] == SIZE
    assert "object_lock_taken_over" in second.log
    assert await second.stop() == 0
