"""The bucket's archives listed by ``/v1/snapshots`` are those of the groups configured now
(docs/http-api.md#with-an-object-store-object_store): a shared bucket holds the groups of
other replicas, and a reload may drop one of this replica's (its URLs answer 404 then). A
real tracker over a real SeaweedFS bucket, reloaded through its internal listener.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from helpers_bucket import put
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_ports import REFUSED
from helpers_proxy import GROUP
from helpers_s3 import Weed, store_settings
from helpers_tls import client_tls
from helpers_tracker import start_tracker, write_config
from names import full_name

ARCHIVE = full_name(4000)
DATA = archive_bytes(1 * MiB, seed=41)
NOWHERE = {"static_targets": {"targets": [REFUSED]}}


def _settings(tmp_path: Path, weed: Weed, prefix: str, groups: list[str]) -> dict[str, Any]:
    return {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "300ms",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "verify_archives": False,
        "target_groups": [{"group": g, **NOWHERE} for g in groups],
        "object_store": store_settings(weed, prefix, lock_ttl=3.0, request_timeout=10.0),
    }


def _put_archive(weed: Weed, prefix: str, group: str, slot: int) -> str:
    name = full_name(slot)
    put(weed, f"{prefix}{group}/{name}", DATA)
    put(weed, f"{prefix}{group}/{name}.sha256", f"{sha256(DATA)}  {name}\n".encode())
    return name


async def _listed(client: httpx.AsyncClient, public: str) -> list[tuple[str, int]]:
    answer = await client.get(f"{public}/v1/snapshots")
    return [(s["group"], s["slot"]) for s in answer.json()]


async def _wait_listed(client: httpx.AsyncClient, public: str, want: list[tuple[str, int]]) -> None:
    with trio.fail_after(30):
        while await _listed(client, public) != want:
            await trio.sleep(0.05)


async def test_a_group_a_reload_dropped_has_its_bucket_archives_listed_no_more(
    nursery: trio.Nursery, tmp_path: Path, weed: Weed
) -> None:
    prefix = f"t-{secrets.token_hex(4)}/"
    name = _put_archive(weed, prefix, "testnet", 4000)
    settings = _settings(tmp_path, weed, prefix, [GROUP, "testnet"])
    path = write_config(tmp_path, settings)
    public, internal = await start_tracker(nursery, path)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        await _wait_listed(client, public, [("testnet", 4000)])  # start-up listed the bucket
        settings["target_groups"] = settings["target_groups"][:1]
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **settings}))
        assert (await client.post(f"{internal}/reload")).status_code == 200
        assert (await client.get(f"{public}/v1/testnet/{name}")).status_code == 404
        assert await _listed(client, public) == []


async def test_a_group_another_replica_keeps_in_the_bucket_is_not_listed(
    nursery: trio.Nursery, tmp_path: Path, weed: Weed
) -> None:
    prefix = f"t-{secrets.token_hex(4)}/"
    # Start-up runs the retention of each group it finds in the listing's order (keys
    # sorted): devnet's, which lists its archive, ends before mainnet's begins.
    _put_archive(weed, prefix, "devnet", 3000)
    _put_archive(weed, prefix, GROUP, 4000)
    assert GROUP > "devnet"
    path = write_config(tmp_path, _settings(tmp_path, weed, prefix, [GROUP]))
    public = (await start_tracker(nursery, path))[0]
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        await _wait_listed(client, public, [(GROUP, 4000)])
