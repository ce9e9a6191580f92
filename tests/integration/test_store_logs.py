"""``--log-level debug`` never prints the object store's credentials (boto's own DEBUG lines
show the access key id and signatures): a real ``serve`` against a real SeaweedFS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from helpers_process import start_serve
from helpers_s3 import ACCESS_KEY, Weed, store_settings
from helpers_tls import client_tls

from tracker.observability.logs import STORE_DEBUG_ENV


async def serve_at_debug(weed: Weed, tmp_path: Path, env: dict[str, str]) -> str:
    """Run ``serve --log-level debug`` with an object store until the store answered; its
    log."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "internal_listen": "",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "object_store": store_settings(weed, f"logs-{tmp_path.name}/"),
        "target_groups": [{"group": "g"}],
    }
    path = tmp_path / "tracker.yml"
    path.write_text(yaml.safe_dump(settings))
    serve = await start_serve("--config", str(path), "--log-level", "debug", env=env)
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            with trio.fail_after(20):
                while (await client.get(f"{serve.base}/v1/store")).status_code != 200:
                    await trio.sleep(0.05)
    finally:
        assert await serve.stop() == 0
    return serve.log


async def test_debug_logs_show_no_access_key_id(weed: Weed, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != STORE_DEBUG_ENV}
    log = await serve_at_debug(weed, tmp_path, env)
    assert ACCESS_KEY not in log
    # Asked for explicitly, boto's DEBUG lines (and the key id in them) are shown.
    shown = await serve_at_debug(weed, tmp_path, {**env, STORE_DEBUG_ENV: "1"})
    assert ACCESS_KEY in shown
