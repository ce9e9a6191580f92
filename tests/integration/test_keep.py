"""The newest incremental of every full still served stays cached and listed after its
sources moved on (docs/http-api.md, "Kept incrementals"): real tracker, real upstream."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import trio
from archives import build_archive
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import GROUP, TrackerUnderTest, advertise_files, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name, incremental_name

from tracker.cache import refresh
from tracker.cache.store import Cache
from tracker.fetch.listing import from_tracker

FULL = full_name(5000)
INCR_1 = incremental_name(5000, 5100)
NEWER_FULL = full_name(6000)
INCR_2 = incremental_name(6000, 6100)
DATA = {
    FULL: archive_bytes(2 * MiB, seed=20),
    INCR_1: archive_bytes(MiB // 2, seed=21),
    NEWER_FULL: archive_bytes(2 * MiB, seed=22),
    INCR_2: archive_bytes(MiB // 2, seed=23),
}


async def test_an_incremental_on_a_full_still_served_stays_listed_and_downloads(
    tmp_path: Path,
) -> None:
    up = FakeUpstream(files={FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        advertise_files(t.index, up, {FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            first = await client.get(t.url(INCR_1))
            assert sha256(first.content) == sha256(DATA[INCR_1])
            await wait_for(lambda: INCR_1 in t.cached())
            # The source moves on: a newer full with its incremental; it keeps the older
            # full (as validators keep two) but deletes the incremental on it.
            moved = {name: DATA[name] for name in (FULL, NEWER_FULL, INCR_2)}
            up.files = dict(moved)
            advertise_files(t.index, up, moved)
            newest = await client.get(t.url(INCR_2))
            assert sha256(newest.content) == sha256(DATA[INCR_2])
            await wait_for(lambda: t.holds(INCR_2))
            assert INCR_1 in t.cached()  # kept: FULL is still served
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            assert listed.status_code == 200
            [entry] = [e for e in listed.json() if e["slot"] != 5000]  # the full is listed too
            assert entry["slot"] == 5100 and entry["base_slot"] == 5000
            # the chain down to its full, the size their sum, as every entry's (it was the
            # incremental alone)
            wire, base = entry["files"]
            assert wire["file_name"].endswith(f"/v1/{GROUP}/{INCR_1}")
            assert base["file_name"].endswith(f"/v1/{GROUP}/{FULL}")
            assert entry["size"] == len(DATA[INCR_1]) + len(DATA[FULL])
            gets = len(up.gets())
            again = await client.get(wire["file_name"])
            assert again.status_code == 200
            assert sha256(again.content) == sha256(DATA[INCR_1])
            assert len(up.gets()) == gets  # from the cache: the source has it no more


async def moved_to_a_newer_full(
    t: TrackerUnderTest, up: FakeUpstream, client: httpx.AsyncClient
) -> Cache:
    """INCR_1 read through the tracker and held; then the source moves on to a newer full
    alone (FULL gone) and INCR_2 is read: the cache, whose promotion of INCR_2 evicts."""
    await client.get(t.url(INCR_1))
    await wait_for(lambda: t.holds(INCR_1))
    moved = {name: DATA[name] for name in (NEWER_FULL, INCR_2)}
    up.files = dict(moved)
    advertise_files(t.index, up, moved)
    await client.get(t.url(INCR_2))
    cache = t.streamer.cache()
    assert cache is not None
    return cache


async def test_an_incremental_on_a_full_nobody_serves_goes(tmp_path: Path) -> None:
    up = FakeUpstream(files={FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        advertise_files(t.index, up, {FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            cache = await moved_to_a_newer_full(t, up, client)
            # Promoted, evicted, and the index told what the cache holds now (the refresh is
            # released only after all three).
            await wait_for(lambda: INCR_2 in t.cached() and not cache.refreshes())
            assert INCR_1 not in t.cached()
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            assert listed.json() == []  # neither the full nor an incremental on it
            gone = await client.get(t.url(INCR_1))
            assert gone.status_code == 404


async def test_the_index_knows_a_promotion_before_its_refresh_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion that evicts frees the evicted bytes after the refresh is let go (an old
    full's unlink takes seconds). The index was told what the cache holds only after that:
    meanwhile a request that found no refresh saw the new file on disk but the listings
    still named the evicted ones and not the new one."""
    unlinking = threading.Event()
    freed = threading.Event()
    free_aside = refresh.free_aside

    def slow_free(paths: list[str]) -> None:
        unlinking.set()
        freed.wait(20)
        free_aside(paths)

    monkeypatch.setattr(refresh, "free_aside", slow_free)
    up = FakeUpstream(files={FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        try:
            advertise_files(t.index, up, {FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
            async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
                cache = await moved_to_a_newer_full(t, up, client)
                await wait_for(lambda: unlinking.is_set() and not cache.refreshes())
                assert t.holds(INCR_2) and not t.holds(INCR_1)
        finally:
            freed.set()


async def test_an_incremental_that_came_whole_after_the_sources_moved_on_is_kept(
    tmp_path: Path,
) -> None:
    """A node downloads the incremental on its full through the tracker; meanwhile the
    sources move on to a newer full (still listing the older one). The copy comes whole and
    passes its check, but was thrown away as no longer the best: once the sources deleted
    it, nothing on the older full was left for the nodes still on it (on a slow link, no
    incremental was ever kept)."""
    up = FakeUpstream(files={FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
    up.behaviour[INCR_1] = Behaviour(pause_at=MiB // 4)
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        advertise_files(t.index, up, {FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            got: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:

                async def download() -> None:
                    got.append(await client.get(t.url(INCR_1)))

                nursery.start_soon(download)
                await wait_for(lambda: any(s.body_sent > 0 for s in up.gets(INCR_1)))
                moved = {name: DATA[name] for name in (FULL, NEWER_FULL, INCR_2)}
                up.files.update(moved)
                advertise_files(t.index, up, moved)
                up.behaviour[INCR_1].resume.set()
            assert sha256(got[0].content) == sha256(DATA[INCR_1])
            await wait_for(lambda: t.holds(INCR_1))
            del up.files[INCR_1]
            advertise_files(t.index, up, moved)  # the source no longer lists it
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            assert [e["slot"] for e in listed.json() if e["slot"] != 5000] == [5100]
            # counted after the index is told (Refresh.commit returns first): not the same step
            await wait_for(lambda: t.outcome("refresh_ok") == 1)
            assert t.outcome("refresh_stale") == 0


async def test_a_kept_incremental_is_listed_best_first_on_its_full(tmp_path: Path) -> None:
    """One source lags on the older full (its newest incremental on it is 5050); the tracker
    keeps 5100, which the other source deleted. ``?slot=5000`` listed the kept one after
    every source's (``[5050, 5000, 5100]``), and fetch, which takes the first, replayed 50
    slots more."""
    older = incremental_name(5000, 5050)
    data = {**DATA, older: archive_bytes(MiB // 2, seed=24)}
    up = FakeUpstream(files={FULL: data[FULL], INCR_1: data[INCR_1]})
    lagging = FakeUpstream(files={FULL: data[FULL], older: data[older]})
    async with serving(up), serving(lagging), proxy_tracker(tmp_path / "cache") as t:
        advertise_files(t.index, up, {FULL: data[FULL], INCR_1: data[INCR_1]})
        advertise_files(t.index, lagging, {FULL: data[FULL], older: data[older]})
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            await client.get(t.url(INCR_1))
            await wait_for(lambda: t.holds(INCR_1))
            moved = {name: data[name] for name in (FULL, NEWER_FULL, INCR_2)}
            up.files = dict(moved)
            advertise_files(t.index, up, moved)
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            slots = [e["slot"] for e in listed.json()]
            assert slots.index(5100) < slots.index(5050) < slots.index(5000), slots
            on = await from_tracker(client, t.base, GROUP, slot=5000, within=5)
            first = next(s.incremental for s in on if s.incremental is not None)
            assert first.file_name == INCR_1


class RecheckNotEnded(Cache):
    """A cache whose start-up recheck has not ended (a 100 GB full's takes minutes)."""

    async def recheck(self) -> None:
        await trio.sleep_forever()


async def test_a_copy_found_unchecked_at_start_up_is_listed_once_its_recheck_passed(
    tmp_path: Path,
) -> None:
    """A copy start-up found with no digest that still describes it is not served until
    its recheck passed (and is removed if it fails), but it was listed as held at once:
    ``/v1/snapshots`` named the tracker as a source of a file whose GET found no copy."""
    name, data = build_archive(7000)
    group_dir = tmp_path / "cache" / GROUP
    group_dir.mkdir(parents=True)
    (group_dir / name).write_bytes(data)  # no .sha256 beside it
    async with proxy_tracker(
        tmp_path / "cache", verify_archives=True, cache_factory=RecheckNotEnded
    ) as t:
        assert t.index.held(GROUP) == []
        # ...its full served all the same: the incrementals kept on it stay meanwhile
        assert t.index.served_fulls(GROUP) == {7000}
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            listed = await client.get(f"{t.base}/v1/snapshots")
        assert listed.json() == []
    async with proxy_tracker(tmp_path / "cache", verify_archives=True) as t:
        await wait_for(lambda: [s.info.slot for s in t.index.held(GROUP)] == [7000])
        assert (group_dir / f".{name}.sha256").exists()
