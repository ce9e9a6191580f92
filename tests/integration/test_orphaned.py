"""The cache directory of a group no longer configured (dropped by a reload or a restart with
another config): its archives stay, named in the log at start-up and after a reload that
changed the groups, and go, oldest first, only when a refresh of a configured group lacks the
room (docs/proxy.md, "Orphaned archives").

Real parts: the tracker's components on hypercorn with a fake upstream and a disk of a fixed
capacity holding the cache alone (its free space is the capacity less the cache's files), and
the tracker from a config file (``run_tracker``) reloaded by ``POST /reload``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_ports import REFUSED
from helpers_proxy import GROUP, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_tracker import start_tracker, write_config
from helpers_upstream import FakeUpstream
from names import full_name

from tracker.cache.disk import DiskOps, digest_path
from tracker.cache.store import Cache

FULL = full_name(5000)
FULL_DATA = archive_bytes(2 * MiB, seed=40)
#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA}
#: The archive a group dropped from the config left in the cache.
DROPPED = "testnet"
ORPHAN = full_name(4000)
ORPHAN_DATA = archive_bytes(1 * MiB, seed=41)


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The fields of every ``event`` line logged so far."""
    return [getattr(r, "tracker_fields", {}) for r in caplog.records if r.msg == event]


def used_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root`` (links not followed)."""
    total = 0
    for top, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def plant(root: Path) -> Path:
    """The dropped group's archive in the cache at ``root``, with its digest beside it."""
    orphan = root / DROPPED / ORPHAN
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(ORPHAN_DATA)
    Path(digest_path(str(orphan))).write_text(f"{sha256(ORPHAN_DATA)}  {ORPHAN}\n")
    return orphan


def small_disk(capacity: int) -> Callable[[str], Cache]:
    """A cache factory: the cache on a disk of ``capacity`` bytes that holds nothing else."""

    def factory(path: str) -> Cache:
        return Cache(path, ops=DiskOps(free_space=lambda _dir: capacity - used_bytes(Path(path))))

    return factory


async def test_a_refresh_short_of_room_removes_an_orphaned_archive_and_is_cached(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk has room for the refresh only without the dropped group's archive: that
    archive goes (with its digest, and its directory left empty), the refresh is cached,
    and the group is not shown as streamed uncached."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    plant(root)
    # Room for the full, less a byte, while the orphan stays.
    capacity = used_bytes(root) + len(FULL_DATA) - 1
    factory = small_disk(capacity)
    async with proxy_tracker(
        root, upstream, cache_factory=factory, proxy_snapshot_cache_min_free=0
    ) as t:
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            response = await client.get(t.url(FULL))
        assert sha256(response.content) == sha256(FULL_DATA)
        # refused, the refresh would have said so before the first byte
        assert t.outcome("refresh_no_space") == 0
        assert t.streamer.uncached() == {}
        await wait_for(lambda: t.cached() == [FULL])
        assert not (root / DROPPED).exists()
        assert logged(caplog, "cache_orphan_removed") == [
            {
                "group": DROPPED,
                "file": ORPHAN,
                "size": len(ORPHAN_DATA),
                "refresh": f"{GROUP}/{FULL}",
            }
        ]


async def test_start_up_names_the_directory_of_a_group_no_longer_configured(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart with a config that no longer has the group: one warning names its
    directory, how many archives it holds and their bytes; nothing of it is removed."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    orphan = plant(root)
    (root / GROUP).mkdir()  # a configured group's directory, empty: never named
    async with proxy_tracker(root, upstream) as t:
        assert t.index.find_file(DROPPED, ORPHAN) == []  # not listed: its group is refused
        assert logged(caplog, "cache_orphaned") == [
            {
                "group": DROPPED,
                "dir": str(root.resolve() / DROPPED),
                "archives": 1,
                "size": len(ORPHAN_DATA),
            }
        ]
    assert orphan.read_bytes() == ORPHAN_DATA


async def test_a_reload_that_drops_a_group_names_its_directory_and_keeps_it(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is orphaned while both groups are configured; ``POST /reload`` without one
    names its directory once (not again for a reload that leaves the groups as they are),
    and removes nothing."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "cache"
    orphan = plant(root)
    group: dict[str, Any] = {"static_targets": {"targets": [REFUSED]}}
    settings: dict[str, Any] = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(root),
        "verify_archives": False,  # random bytes, not archives
        "target_groups": [{"group": GROUP, **group}, {"group": DROPPED, **group}],
    }
    path = write_config(tmp_path, settings)
    public, internal = await start_tracker(nursery, path)
    assert logged(caplog, "cache_orphaned") == []
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        listed = (await client.get(f"{public}/v1/snapshots")).json()
    assert [(s["group"], s["slot"]) for s in listed] == [(DROPPED, 4000)]
    settings["target_groups"] = settings["target_groups"][:1]
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **settings}))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        assert (await client.post(f"{internal}/reload")).status_code == 200
        assert logged(caplog, "cache_orphaned") == [
            {
                "group": DROPPED,
                "dir": str(root.resolve() / DROPPED),
                "archives": 1,
                "size": len(ORPHAN_DATA),
            }
        ]
        # the dropped group's archive is not listed (its URL would be refused)
        assert (await client.get(f"{public}/v1/snapshots")).json() == []
        assert (await client.post(f"{internal}/reload")).status_code == 200
    assert len(logged(caplog, "cache_orphaned")) == 1
    assert orphan.read_bytes() == ORPHAN_DATA
