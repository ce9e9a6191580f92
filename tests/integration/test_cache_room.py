"""A refresh starts only when the cache's file system has room for the whole archive plus
``proxy_snapshot_cache_min_free``; otherwise the request streams uncached and the reason
shows in the log, on the status page and in ``/v1/targets`` (docs/http-api.md#archive-answers).

Real parts: the tracker from a config file (``run_tracker``), a sidecar upstream, the real
file system's free space (a ``min_free`` beyond any disk here, then a small one).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bytes import archive_bytes, sha256
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import FakeUpstream, sidecar_listing
from names import full_name

MiB = 1024 * 1024
FULL = full_name(7000)
DATA = archive_bytes(2 * MiB, seed=30)


async def _tracker(nursery: trio.Nursery, tmp_path: Path, min_free: str) -> tuple[str, str]:
    up = FakeUpstream(files={FULL: DATA})
    up.listing = sidecar_listing({FULL: DATA})
    await nursery.start(up.run)
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "300ms",
        "verify_archives": False,  # an opaque blob
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "proxy_snapshot_cache_min_free": min_free,
        "target_groups": [
            {"group": "mainnet", "static_targets": {"targets": [up.base.removeprefix("http://")]}}
        ],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    return public, internal


async def _listed(client: httpx.AsyncClient, public: str) -> bool:
    return bool((await client.get(f"{public}/v1/snapshots")).json())


async def test_no_room_streams_uncached_and_says_why(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    public, internal = await _tracker(nursery, tmp_path, "1000TiB")
    async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
        await wait_until(lambda: _listed(client, public))
        response = await client.get(f"{public}/v1/mainnet/{FULL}")
        assert response.status_code == 200
        assert sha256(response.content) == sha256(DATA)
        assert not (tmp_path / "cache" / "mainnet" / FULL).exists()  # streamed uncached
        [target] = (await client.get(f"{public}/v1/targets")).json()
        assert "streamed uncached" in target["cache"]
        assert "proxy_snapshot_cache_min_free" in target["cache"]
        page = (await client.get(f"{internal}/")).text
        assert f"{FULL} streamed uncached" in page
    assert any("cache_no_space" in r.getMessage() for r in caplog.records)


async def test_room_for_the_archive_and_min_free_caches(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    public, _internal = await _tracker(nursery, tmp_path, "1MiB")
    async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
        await wait_until(lambda: _listed(client, public))
        response = await client.get(f"{public}/v1/mainnet/{FULL}")
        assert sha256(response.content) == sha256(DATA)
        await wait_until(_exists(tmp_path / "cache" / "mainnet" / FULL))
        [target] = (await client.get(f"{public}/v1/targets")).json()
        assert "cache" not in target


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await trio.Path(path).exists()

    return check
