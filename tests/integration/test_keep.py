"""The newest incremental of every full still served stays cached and listed after its
sources moved on (docs/http-api.md, "Kept incrementals"): real tracker, real upstream."""

from __future__ import annotations

from pathlib import Path

import httpx
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_proxy import GROUP, advertise_files, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving
from names import full_name, incremental_name

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
            await wait_for(lambda: INCR_2 in t.cached())
            assert INCR_1 in t.cached()  # kept: FULL is still served
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            assert listed.status_code == 200
            [entry] = [e for e in listed.json() if e["slot"] != 5000]  # the full is listed too
            assert entry["slot"] == 5100 and entry["base_slot"] == 5000
            [wire] = entry["files"]
            assert wire["file_name"].endswith(f"/v1/{GROUP}/{INCR_1}")
            gets = len(up.gets())
            again = await client.get(wire["file_name"])
            assert again.status_code == 200
            assert sha256(again.content) == sha256(DATA[INCR_1])
            assert len(up.gets()) == gets  # from the cache: the source has it no more


async def test_an_incremental_on_a_full_nobody_serves_goes(tmp_path: Path) -> None:
    up = FakeUpstream(files={FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
    async with serving(up), proxy_tracker(tmp_path / "cache") as t:
        advertise_files(t.index, up, {FULL: DATA[FULL], INCR_1: DATA[INCR_1]})
        async with httpx.AsyncClient(verify=client_tls(), timeout=20) as client:
            await client.get(t.url(INCR_1))
            await wait_for(lambda: INCR_1 in t.cached())
            moved = {name: DATA[name] for name in (NEWER_FULL, INCR_2)}
            up.files = dict(moved)
            advertise_files(t.index, up, moved)
            await client.get(t.url(INCR_2))
            cache = t.streamer.cache()
            assert cache is not None
            # Promoted, evicted, and the index told what the cache holds now (the refresh is
            # released only after all three).
            await wait_for(lambda: INCR_2 in t.cached() and not cache.refreshes())
            assert INCR_1 not in t.cached()
            listed = await client.get(f"{t.base}/v1/snapshots", params={"slot": "5000"})
            assert listed.json() == []  # neither the full nor an incremental on it
            gone = await client.get(t.url(INCR_1))
            assert gone.status_code == 404
