"""A cached copy is served and its digest told only while the file under its name is the copy
that passed its check (docs/http-api.md, "Verified archives"): a real tracker on 127.0.0.1, a
real upstream, real archives checked as they are cached (``verify_archives``).

A file replaced or written under its name while the tracker runs is not a hit under the old
digest, and its ``.sha256`` is not the old one: it is checked again. A start-up check that
fails on an old copy leaves the copy a refresh promoted meanwhile as it is.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from archives import build_archive
from helpers_proxy import GROUP, TrackerUnderTest, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving

import tracker.cache.checked as checked_module
from tracker.core.digests import Verified
from tracker.proof.accounts.budget import AccountsLimits

NAME, GOOD = build_archive(700, seed=5)


def hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(response: httpx.Response) -> str | None:
    """The hex SHA-256 a ``repr-digest`` header says (None: no header)."""
    header = response.headers.get("repr-digest")
    return None if header is None else base64.b64decode(header.split(":")[1]).hex()


async def get(t: TrackerUnderTest, path: str = "") -> httpx.Response:
    async with httpx.AsyncClient(verify=client_tls(), timeout=30) as client:
        return await client.get(t.url(NAME + path))


async def digest_route(t: TrackerUnderTest) -> httpx.Response:
    return await get(t, ".sha256")


def flip_byte(path: Path, at: int) -> None:
    """Flip the byte at ``at`` of the file at ``path`` in place."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0xFF]), at)
    finally:
        os.close(fd)


def hits(t: TrackerUnderTest) -> float:
    return t.outcome("cache_hit")


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with serving(FakeUpstream(files={NAME: GOOD})) as upstream:
        yield upstream


@asynccontextmanager
async def checked_copy(up: FakeUpstream, tmp_path: Path) -> AsyncIterator[TrackerUnderTest]:
    """A tracker checking archives whose cache holds the good copy, checked (its GET was a
    hit with its digest)."""
    async with proxy_tracker(tmp_path / "c", up, verify_archives=True, prove_accounts=False) as t:
        await cached_and_hit(t, up)
        yield t


async def cached_and_hit(t: TrackerUnderTest, up: FakeUpstream) -> None:
    """Fill the cache with the good copy; its next GET is a hit with its digest."""
    assert (await get(t)).content == GOOD
    await wait_for(lambda: t.streamer.cache().servable(GROUP, NAME))  # type: ignore[union-attr]
    hit = await get(t)
    assert hit.content == GOOD and digest_of(hit) == hexdigest(GOOD)
    assert len(up.gets(NAME)) == 1


async def not_a_hit_under_the_old_digest(t: TrackerUnderTest, up: FakeUpstream) -> None:
    """The file under the name is no longer the copy checked: its GET is no hit, the route
    goes on as for a copy not checked yet (a refresh from the upstream here), and then
    serves the good copy promoted again. (The GET that began the refresh counts as a hit
    only when the refresh was promoted before its answer began: it is then served the new
    copy, which a slow host may do.)"""
    answer = await get(t)
    assert answer.content == GOOD and digest_of(answer) in (None, hexdigest(GOOD))
    assert len(up.gets(NAME)) == 2
    await wait_for(lambda: t.streamer.cache().servable(GROUP, NAME))  # type: ignore[union-attr]
    before = hits(t)
    again = await get(t)
    assert again.content == GOOD and digest_of(again) == hexdigest(GOOD)
    assert hits(t) == before + 1 and len(up.gets(NAME)) == 2


async def test_a_cached_file_replaced_under_its_name_is_not_a_hit_under_its_old_digest(
    up: FakeUpstream, tmp_path: Path
) -> None:
    _, other = build_archive(700, seed=6)  # another archive's bytes (they fail this name)
    async with checked_copy(up, tmp_path) as t:
        path = t.group_dir() / NAME
        swap = t.group_dir() / "by-hand"
        swap.write_bytes(other)
        os.replace(swap, path)  # another inode under the name
        await not_a_hit_under_the_old_digest(t, up)  # its GET first: the hit finds it out


async def test_a_cached_file_written_in_place_with_its_mtime_set_back_is_not_a_hit(
    up: FakeUpstream, tmp_path: Path
) -> None:
    async with checked_copy(up, tmp_path) as t:
        path = t.group_dir() / NAME
        st = path.stat()
        flip_byte(path, len(GOOD) // 2)  # the same inode and size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime tells
        assert (await digest_route(t)).status_code == 404  # its digest route first
        await not_a_hit_under_the_old_digest(t, up)


async def test_a_cached_file_touched_is_checked_again_then_a_hit_again(
    up: FakeUpstream, tmp_path: Path
) -> None:
    async with checked_copy(up, tmp_path) as t:
        path = t.group_dir() / NAME
        os.utime(path)  # the same bytes, another mtime: not the copy checked any more
        assert (await digest_route(t)).status_code == 404
        # checked again in the background: its digest is told again once it passed
        cache = t.streamer.cache()
        assert cache is not None
        await wait_for(lambda: cache.servable(GROUP, NAME))
        told = await digest_route(t)
        assert told.status_code == 200 and told.text.split()[0] == hexdigest(GOOD)
        hit = await get(t)
        assert hit.content == GOOD and digest_of(hit) == hexdigest(GOOD)
        assert len(up.gets(NAME)) == 1  # never fetched again


async def test_a_failed_start_up_check_keeps_the_copy_a_refresh_promoted_meanwhile(
    up: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = bytearray(GOOD)
    bad[len(bad) // 2] ^= 0xFF
    group_dir = tmp_path / "c" / GROUP
    group_dir.mkdir(parents=True)
    (group_dir / NAME).write_bytes(bytes(bad))  # found at start-up without a digest file
    entered, go, ended = trio.Event(), trio.Event(), trio.Event()
    check_opened = checked_module.check_opened

    async def held_check(
        fd: int, st: os.stat_result, name: str, limits: AccountsLimits | None
    ) -> Verified:
        # The start-up check of a big file takes long: held here until the refresh of the
        # same name promoted its good copy.
        entered.set()
        await go.wait()
        try:
            return await check_opened(fd, st, name, limits)
        finally:
            ended.set()

    monkeypatch.setattr(checked_module, "check_opened", held_check)
    async with proxy_tracker(tmp_path / "c", up, verify_archives=True, prove_accounts=False) as t:
        cache = t.streamer.cache()
        assert cache is not None
        await entered.wait()
        assert (await get(t)).content == GOOD  # not a hit: a refresh promotes the good copy
        await wait_for(lambda: cache.servable(GROUP, NAME))
        go.set()
        await ended.wait()
        await trio.testing.wait_all_tasks_blocked()  # the failed check was dealt with
        assert cache.servable(GROUP, NAME)
        assert (group_dir / NAME).read_bytes() == GOOD
        told = await digest_route(t)
        assert told.status_code == 200 and told.text.split()[0] == hexdigest(GOOD)
        hit = await get(t)
        assert hit.content == GOOD and digest_of(hit) == hexdigest(GOOD)
        assert len(up.gets(NAME)) == 1
        # the copy that failed was replaced before its check ended: no rejection to count
        assert t.counter("snapshot_tracker_archives_rejected_total", group=GROUP) == 0
