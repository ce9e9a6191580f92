"""An unusable ``proxy_snapshot_cache_dir``: refused by ``check-config`` and ``serve`` with
one line naming the key (exit 2), and shown by a running tracker whose directory became
unusable (the status page and ``/v1/targets``), never as "the cache is empty"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from helpers_ports import REFUSED
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from test_cache import tmpfs

from tracker.cache.store import LOCK_FILE


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args], capture_output=True, text=True, timeout=60
    )


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """A read-only tmpfs at ``path`` (root cannot write there either)."""
    with tmpfs(path, "ro,size=1m"):
        yield


def under_a_file(tmp_path: Path) -> tuple[Path, AbstractContextManager[None], str]:
    (tmp_path / "file").write_text("not a directory")
    return tmp_path / "file" / "cache", nullcontext(), "under a file that is not a directory"


def on_a_read_only_fs(tmp_path: Path) -> tuple[Path, AbstractContextManager[None], str]:
    return tmp_path / "ro" / "cache", read_only(tmp_path / "ro"), "read-only file system"


def a_regular_file(tmp_path: Path) -> tuple[Path, AbstractContextManager[None], str]:
    (tmp_path / "cache").write_text("")
    return tmp_path / "cache", nullcontext(), "not a directory"


Case = Callable[[Path], tuple[Path, AbstractContextManager[None], str]]


@pytest.mark.parametrize("case", [under_a_file, on_a_read_only_fs, a_regular_file])
def test_check_config_and_serve_refuse_an_unusable_cache_dir(case: Case, tmp_path: Path) -> None:
    cache, mounted, reason = case(tmp_path)
    settings = {
        "listen": "127.0.0.1:0",
        "internal_listen": "",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache),
        "target_groups": [{"group": "g"}],
    }
    config = tmp_path / "tracker.yml"
    config.write_text(yaml.safe_dump(settings))
    with mounted:
        checked = run_cli("check-config", "--config", str(config))
        served = run_cli("serve", "--config", str(config))
    for result in (checked, served):
        assert result.returncode == 2, result.stderr
        [line] = [line for line in result.stderr.splitlines() if "proxy_snapshot_cache_dir" in line]
        assert reason in line
        assert "Traceback" not in result.stderr
    assert "listening" not in served.stderr


async def test_a_cache_dir_that_becomes_unusable_is_shown(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    settings = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache),
        "target_groups": [{"group": "g", "static_targets": {"targets": [f"{REFUSED}"]}}],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
        page = (await client.get(f"{internal}/")).text
        assert "The cache is empty" in page and "unusable" not in page
        (cache / LOCK_FILE).unlink()  # the running tracker's lock goes with its directory
        cache.rmdir()
        cache.write_text("someone put a file here")
        page = (await client.get(f"{internal}/")).text
        assert "The cache is empty" not in page
        assert f"The directory is unusable: not a directory: &#x27;{cache}&#x27;" in page

        async def shown_in_targets() -> bool:
            [entry] = (await client.get(f"{public}/v1/targets")).json()
            return "the cache directory is unusable" in entry.get("cache", "")

        await wait_until(shown_in_targets)
