"""Proxy mode through the real daemon: ``snapshot-tracker serve`` as a subprocess, a sidecar
upstream it scrapes, the cache directory on disk, SIGTERM in the middle of a refresh."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_process import start_serve
from helpers_proxy import GROUP, TOKEN, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving, sidecar_listing
from names import full_name, incremental_name

FULL = full_name(7000)
INCR = incremental_name(7000, 7100)
FILES = {FULL: archive_bytes(4 * MiB, seed=30), INCR: archive_bytes(1 * MiB, seed=31)}


@pytest.fixture
async def sidecar() -> AsyncIterator[FakeUpstream]:
    async with serving(FakeUpstream(files=dict(FILES), listing=sidecar_listing(FILES))) as up:
        yield up


def write_config(tmp_path: Path, sidecar: FakeUpstream) -> Path:
    settings = {
        "listen": "127.0.0.1:0",
        "internal_listen": "",
        "scrape_interval": "30s",
        "proxy_snapshot_downloads": True,
        "verify_archives": False,  # opaque blobs
        "proxy_snapshot_cache_dir": "cache",  # relative to the config file
        "shutdown_grace": "1s",
        "target_groups": [
            {
                "group": GROUP,
                "bearer_auth": {"token": TOKEN},
                "static_targets": {"targets": [sidecar.base.removeprefix("http://")]},
            }
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


async def test_daemon_proxies_caches_and_cleans_up_on_stop(
    sidecar: FakeUpstream, tmp_path: Path
) -> None:
    group_dir = tmp_path / "cache" / GROUP
    group_dir.mkdir(parents=True)
    (group_dir / f".tmp-{FULL}.left-over").write_bytes(b"from a crash")
    serve = await start_serve("--config", str(write_config(tmp_path, sidecar)))
    async with httpx.AsyncClient(
        verify=client_tls(), timeout=20, trust_env=False, follow_redirects=True
    ) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{serve.base}/v1/snapshots")).json())

        with trio.fail_after(10):
            while not await listed():
                await trio.sleep(0.05)
        assert list(group_dir.iterdir()) == []  # start-up removed the temp file
        # Proxy mode's JSON points at the tracker's query-free archive URLs (README.md#clients).
        listing = (await client.get(f"{serve.base}/v1/snapshots")).json()
        names = {f["file_name"] for source in listing for f in source["files"]}
        assert names == {f"{serve.base}/v1/{GROUP}/{name}" for name in (FULL, INCR)}
        incr = await client.get(f"{serve.base}/v1/incremental-snapshot.tar.bz2")
        assert sha256(incr.content) == sha256(FILES[INCR])
        await wait_for(lambda: sorted(p.name for p in group_dir.iterdir()) == [INCR])
        assert sidecar.gets(INCR)[0].headers["authorization"] == f"Bearer {TOKEN}"

        # A refresh of the full stalls half way; SIGTERM arrives meanwhile.
        sidecar.behaviour[FULL] = Behaviour(pause_at=1 * MiB)
        results: list[BaseException | httpx.Response] = []

        async def fetch() -> None:
            try:
                results.append(await client.get(f"{serve.base}/snapshot.tar.bz2"))
            except httpx.HTTPError as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await wait_for(lambda: any(p.name.startswith(".tmp-") for p in group_dir.iterdir()))
            assert await serve.stop(timeout=10) == 0
    [result] = results
    # the client's stream broke, or (the stop came before its head) it was told 503: never
    # a short 200
    assert isinstance(result, httpx.HTTPError) or result.status_code == 503, result
    assert sorted(p.name for p in group_dir.iterdir()) == [INCR]
    assert "stream_stopped" in serve.log
    assert "Traceback" not in serve.log  # a stream broken on purpose is one log line


async def test_a_stream_broken_on_purpose_is_one_log_line(
    sidecar: FakeUpstream, tmp_path: Path
) -> None:
    serve = await start_serve("--config", str(write_config(tmp_path, sidecar)))
    sidecar.behaviour[FULL] = Behaviour(drop_after=1 * MiB)
    async with httpx.AsyncClient(verify=client_tls(), timeout=20, trust_env=False) as client:

        async def listed() -> bool:
            return bool((await client.get(f"{serve.base}/v1/snapshots")).json())

        with trio.fail_after(10):
            while not await listed():
                await trio.sleep(0.05)
        # A Range request is proxied uncached (no resume): the upstream's drop breaks it.
        with pytest.raises(httpx.HTTPError):
            await client.get(f"{serve.base}/v1/{FULL}?group={GROUP}", headers={"range": "bytes=0-"})
    await wait_for(lambda: "stream_failed" in serve.log)
    assert await serve.stop(timeout=10) == 0
    assert "Traceback" not in serve.log and "Error in ASGI" not in serve.log
