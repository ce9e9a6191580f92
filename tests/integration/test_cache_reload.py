"""A reload that changes ``proxy_snapshot_cache_dir``: from then on the listings, the archive
answers and the digests say what the new directory holds, never an older one's files; a
refresh the reload left running ends in the old directory and is shown until it does
(docs/configuration.md, ``proxy_snapshot_cache_dir``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import yaml
from archives import build_archive
from helpers_bytes import MiB, archive_bytes
from helpers_ports import REFUSED
from helpers_process import LOCK_HOLDER
from helpers_proxy import GROUP, TrackerUnderTest, advertise, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.cache.store import LOCK_FILE, Cache
from tracker.web.statusgather import gather_status

FULL = full_name(5000)
OLD = full_name(4000)
DATA = archive_bytes(2 * MiB, seed=10)
OLD_DATA = archive_bytes(256 * 1024, seed=13)


async def listed(client: httpx.AsyncClient, base: str, group: str = GROUP) -> set[str]:
    """The archive names ``/v1/snapshots`` lists of ``group``."""
    answer = await client.get(f"{base}/v1/snapshots?group={group}")
    assert answer.status_code == 200, answer.text
    return {f["file_name"].rsplit("/", 1)[1] for s in answer.json() for f in s["files"]}


def reload_to(t: TrackerUnderTest, cache_dir: Path) -> None:
    """What a reload that moves the cache to ``cache_dir`` does (tracker/service.py)."""
    t.config = attrs.evolve(t.config, proxy_snapshot_cache_dir=str(cache_dir))
    t.streamer.cache()


@attrs.define
class HalfWay:
    """A tracker whose refresh of FULL, read by one client, has its first MiB of two."""

    t: TrackerUnderTest
    cache: Cache
    client: httpx.AsyncClient
    up: FakeUpstream
    got: list[httpx.Response]
    paused: Behaviour
    read: trio.Event = attrs.Factory(trio.Event)

    async def finish(self) -> None:
        """The source sends the rest; returns once the refresh ended and the client's read
        with it."""
        self.paused.resume.set()
        await wait_for(lambda: not self.cache.is_refreshing(GROUP, FULL))
        await self.read.wait()


@asynccontextmanager
async def half_way(cache_dir: Path) -> AsyncIterator[HalfWay]:
    """:class:`HalfWay` of a tracker caching in ``cache_dir``; the client's read ends
    (:meth:`HalfWay.finish`, at the latest when the block ends) before the tracker stops."""
    async with serving(FakeUpstream(files={FULL: DATA})) as up:
        up.behaviour[FULL] = paused = Behaviour(pause_at=MiB, resume=trio.Event())
        async with (
            proxy_tracker(cache_dir, up) as t,
            httpx.AsyncClient(verify=client_tls(), timeout=30) as client,
        ):
            cache = t.streamer.cache()
            assert cache is not None
            half = HalfWay(t, cache, client, up, [], paused)

            async def read() -> None:
                half.got.append(await client.get(t.url(FULL)))
                half.read.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await wait_for(lambda: bool(up.gets(FULL)) and up.gets(FULL)[0].body_sent >= MiB)
                yield half
                await half.finish()


@pytest.mark.parametrize("spelled", ["a link to it", "nested in it"])
async def test_a_reload_to_another_spelling_or_a_nested_directory_keeps_refreshes_in_flight(
    tmp_path: Path, spelled: str
) -> None:
    """A reload to a symbolic link naming the cache's own directory made a second cache of
    it: its start-up removed the temp file of the refresh in flight (``cache_commit_failed``,
    nothing cached after a whole download), and the next request could start a second
    refresher of the same file in the same directory. A directory nested in the old one lost
    its in-flight temp files too."""
    a = tmp_path / "A"
    a.mkdir()
    if spelled == "a link to it":
        target = tmp_path / "alias"
        target.symlink_to(a)
    else:
        target = a / GROUP  # the group's own directory, where the temp file lies
    async with half_way(a) as refresh:
        [temp] = refresh.cache.temp_files()
        reload_to(refresh.t, target)
        assert await trio.Path(temp).exists()
        if spelled == "a link to it":
            assert refresh.t.streamer.cache() is refresh.cache  # one refresher of the file
        await refresh.finish()
        got = refresh.got
    assert [(r.status_code, r.content == DATA) for r in got] == [(200, True)]
    assert (a / GROUP / FULL).read_bytes() == DATA  # cached, not lost after the download


async def test_a_refresh_ending_in_the_old_directory_leaves_the_new_ones_holdings(
    tmp_path: Path,
) -> None:
    """A refresh into A runs across a reload to B (which holds OLD): it ends in A, and the
    index still lists what B holds, serves B's OLD, and never lists A's new file as held;
    while it runs, the status page shows it."""
    a, b = tmp_path / "A", tmp_path / "B"
    (b / GROUP).mkdir(parents=True)
    (b / GROUP / OLD).write_bytes(OLD_DATA)
    async with half_way(a) as refresh:
        t, client, up = refresh.t, refresh.client, refresh.up
        reload_to(t, b)
        assert await listed(client, t.base) == {FULL, OLD}
        # the refresh left in A is still shown (it ends there)
        view = await gather_status(t.parts.status_sources(), 0)
        assert view.cache is not None and Path(view.cache.directory) == b.resolve()
        assert [r.name for r in view.cache.refreshes] == [FULL]
        await refresh.finish()
        [got] = refresh.got
        assert got.status_code == 200 and got.content == DATA
        assert (a / GROUP / FULL).exists() and not (b / GROUP / FULL).exists()
        # A's promotion told nothing: B's OLD is listed and served
        assert await listed(client, t.base) == {FULL, OLD}
        answer = await client.get(t.url(OLD))
        assert answer.status_code == 200 and answer.content == OLD_DATA
        assert t.streamer.refreshes() == []
        advertise(t.index, up.base, [])  # the source moved on: only B is held
        assert await listed(client, t.base) == {OLD}
        assert (await client.get(t.url(FULL))).status_code == 404


async def test_a_reload_back_to_a_directory_used_before_lists_what_it_holds(
    tmp_path: Path,
) -> None:
    """A (holding OLD) -> B -> A with no refresh at all: on B, OLD is neither listed nor
    served; back on A, it is both again."""
    a, b = tmp_path / "A", tmp_path / "B"
    (a / GROUP).mkdir(parents=True)
    (a / GROUP / OLD).write_bytes(OLD_DATA)
    async with proxy_tracker(a) as t, httpx.AsyncClient(verify=client_tls(), timeout=30) as client:
        assert await listed(client, t.base) == {OLD}
        reload_to(t, b)
        assert await listed(client, t.base) == set()
        assert (await client.get(t.url(OLD))).status_code == 404
        reload_to(t, a)
        assert await listed(client, t.base) == {OLD}
        answer = await client.get(t.url(OLD))
        assert answer.status_code == 200 and answer.content == OLD_DATA


async def test_a_reload_to_another_directory_takes_the_old_ones_digests_with_it(
    tmp_path: Path,
) -> None:
    """With archive checks: A caches NAME (its digest known); after a reload to an empty B
    no digest of it is claimed (the cache does not hold it); back on A it is again."""
    name, good = build_archive(700, seed=5)
    a, b = tmp_path / "A", tmp_path / "B"
    async with (
        serving(FakeUpstream(files={name: good})) as up,
        proxy_tracker(a, up, verify_archives=True, prove_accounts=False) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=30) as client,
    ):
        digest_url = f"{t.base}/v1/{name}.sha256?group={GROUP}"
        assert (await client.get(t.url(name))).content == good
        cache = t.streamer.cache()
        assert cache is not None
        await wait_for(lambda: cache.servable(GROUP, name))
        digest = (await client.get(digest_url)).text
        advertise(t.index, up.base, [])  # the source moved on: only the cache has it
        reload_to(t, b)
        assert (await client.get(digest_url)).status_code == 404
        assert (await client.get(t.url(name))).status_code == 404
        reload_to(t, a)
        assert (await client.get(digest_url)).text == digest
        assert (await client.get(t.url(name))).content == good


async def test_a_reload_lists_the_new_directorys_files_before_any_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``POST /reload`` moving the cache from A to B: ``/v1/snapshots`` lists B's files at
    once (the cache is taken by the reload, not at the next archive request)."""
    a, b = tmp_path / "A", tmp_path / "B"
    for cache, name, data in ((a, OLD, OLD_DATA), (b, FULL, DATA)):
        (cache / "g").mkdir(parents=True)
        (cache / "g" / name).write_bytes(data)
    settings = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(a),
        "verify_archives": False,  # random bytes, not archives
        "target_groups": [{"group": "g", "static_targets": {"targets": [f"{REFUSED}"]}}],
    }
    path = write_config(tmp_path, settings)
    public, internal = await start_tracker(nursery, path)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:

        async def on_a() -> bool:
            return await listed(client, public, "g") == {OLD}

        await wait_until(on_a)
        path.write_text(
            yaml.safe_dump({**yaml.safe_load(path.read_text()), "proxy_snapshot_cache_dir": str(b)})
        )
        assert (await client.post(f"{internal}/reload")).status_code == 200
        assert await listed(client, public, "g") == {FULL}


async def test_a_reload_onto_a_directory_another_tracker_holds_streams_uncached(
    tmp_path: Path,
) -> None:
    """Nothing of a directory another tracker holds is this one's: after a reload onto it
    every request streams uncached (no temp file, no eviction there), the status says why,
    and a reload back to it once that tracker stopped takes it."""
    a, b = tmp_path / "A", tmp_path / "B"
    b.mkdir()
    holder = await trio.lowlevel.open_process(
        [sys.executable, "-c", LOCK_HOLDER, str(b / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        with trio.fail_after(30):
            said = b""
            while not said.endswith(b"\n"):
                said += await holder.stdout.receive_some(64)
        assert said == b"held\n"
        async with (
            serving(FakeUpstream(files={FULL: DATA})) as up,
            proxy_tracker(a, up) as t,
            httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
        ):
            reload_to(t, b)
            answer = await client.get(t.url(FULL))
            assert (answer.status_code, answer.content) == (200, DATA)
            assert sorted(p.name for p in b.rglob("*")) == [LOCK_FILE]  # nothing written
            assert "another tracker uses this cache directory" in t.streamer.uncached()[GROUP]
            await holder.stdin.aclose()  # it stops: its lock goes
            with trio.fail_after(30):
                await holder.wait()
            reload_to(t, a)
            reload_to(t, b)
            answer = await client.get(t.url(FULL))
            assert (answer.status_code, answer.content) == (200, DATA)
            await wait_for(lambda: (b / GROUP / FULL).exists())
    finally:
        if holder.returncode is None:
            holder.kill()
            with trio.CancelScope(shield=True):
                await holder.wait()
