"""Real download tools against the tracker in proxy mode: curl -L, wget, aria2c.

Each tool must end up with exactly the archive's bytes. A tool that is not installed skips
its test with the reason (CI installs curl, wget and aria2).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import TrackerUnderTest, advertise_files, proxy_tracker, wait_for
from helpers_upstream import FakeUpstream, serving
from names import full_name, incremental_name

FULL = full_name(9000)
INCR = incremental_name(9000, 9050)
FULL_DATA = archive_bytes(4 * MiB, seed=20)
INCR_DATA = archive_bytes(1 * MiB, seed=21)
# No proxy from the environment may stand between the tools and 127.0.0.1.
CLEAN_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


async def run(*args: str, cwd: Path) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            list(args),
            cwd=cwd,
            env=CLEAN_ENV,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])


@pytest.fixture
async def tracker(tmp_path: Path) -> AsyncIterator[tuple[TrackerUnderTest, FakeUpstream]]:
    files = {FULL: FULL_DATA, INCR: INCR_DATA}
    async with (
        serving(FakeUpstream(files=files)) as up,
        proxy_tracker(tmp_path / "cache") as t,
    ):
        advertise_files(t.index, up, files)
        yield t, up


async def test_curl_follows_the_short_redirect(
    tracker: tuple[TrackerUnderTest, FakeUpstream], tmp_path: Path
) -> None:
    t, _up = tracker
    curl = tool("curl")
    await run(curl, "-fsSL", "-o", "full", f"{t.base}/v1/snapshot.tar.bz2", cwd=tmp_path)
    await run(curl, "-fsSL", "-o", "incr", f"{t.base}/incremental-snapshot.tar.bz2", cwd=tmp_path)
    assert sha256((tmp_path / "full").read_bytes()) == sha256(FULL_DATA)
    assert sha256((tmp_path / "incr").read_bytes()) == sha256(INCR_DATA)


async def test_wget_keeps_the_archive_name(
    tracker: tuple[TrackerUnderTest, FakeUpstream], tmp_path: Path
) -> None:
    t, _up = tracker
    wget = tool("wget")
    out = tmp_path / "wget"
    out.mkdir()
    await run(wget, "-q", "--trust-server-names", f"{t.base}/snapshot.tar.bz2", cwd=out)
    assert [p.name for p in out.iterdir()] == [FULL]
    assert sha256((out / FULL).read_bytes()) == sha256(FULL_DATA)


async def test_aria2c_with_four_connections_on_a_cached_file(
    tracker: tuple[TrackerUnderTest, FakeUpstream], tmp_path: Path
) -> None:
    t, up = tracker
    aria2c = tool("aria2c")
    curl = tool("curl")
    await run(curl, "-fsS", "-o", "warm", t.url(FULL), cwd=tmp_path)  # fills the cache
    await wait_for(lambda: t.cached() == [FULL])
    requests = len(up.seen)
    # Each connection paced to 1 MiB/s: the first cannot take all four pieces of 1 MiB before
    # aria2c opens the others, however loaded the machine (the split is what is tested).
    args = ["-q", "-x4", "-s4", "--min-split-size=1M", "--max-download-limit=1M"]
    args.append("--allow-overwrite=true")
    await run(aria2c, *args, "-d", str(tmp_path), "-o", "aria", t.url(FULL), cwd=tmp_path)
    assert sha256((tmp_path / "aria").read_bytes()) == sha256(FULL_DATA)
    assert len(up.seen) == requests  # every range came from the disk cache
    assert t.outcome("cache_hit") >= 2  # several connections, each a ranged hit
