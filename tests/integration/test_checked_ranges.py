"""Ranges of an archive while a checked refresh of it runs, end to end (docs/architecture.md,
"The release rule"; docs/http-api.md, "Archive answers").

Real hypercorn tracker checking archives, real :class:`FakeUpstream` on 127.0.0.1 serving a
real agave archive that holds the rest of its body until the test lets it go: the refresh
cannot end meanwhile. A ``Range`` that ends before the file's end (aria2c's segments, a
``bytes=0-0`` probe) is relayed from the source and answered while the refresh is held,
where read from the refresh its last byte would wait for the whole file and its check; a
``Range`` to the file's end reads the refresh, its end going once the copy passed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from archives import build_archive
from helpers_proxy import GROUP, TrackerUnderTest, proxy_tracker, wait_for
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from test_share import refresh_written

NAME, DATA = build_archive(9100, accounts=16, seed=11, compression="tar")
HALF = len(DATA) // 2


@asynccontextmanager
async def held_refresh(
    tmp_path: Path, share: bool
) -> AsyncIterator[tuple[TrackerUnderTest, FakeUpstream, httpx.AsyncClient]]:
    """A checking tracker whose refresh of NAME (started by a plain GET with sharing on, by a
    Range GET's interest with it off) has written HALF and waits for the upstream's
    ``resume``; set on leaving, after which the first request's answer is the whole archive
    and the copy is cached."""
    up = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(pause_at=HALF)})
    checking = {"verify_archives": True, "prove_accounts": False}
    async with (
        serving(up),
        proxy_tracker(tmp_path / "cache", up, cache_share_inflight=share, **checking) as t,
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client,
        trio.open_nursery() as nursery,
    ):
        first: list[httpx.Response] = []

        async def starter() -> None:
            # Unshared, only a background refresh (a Range's interest) is read by others.
            headers = {} if share else {"range": "bytes=5-9"}
            first.append(await client.get(t.url(NAME), headers=headers))

        nursery.start_soon(starter)
        await wait_for(lambda: refresh_written(t, NAME) == HALF)
        try:
            yield t, up, client
        finally:
            up.behaviour[NAME].resume.set()
        await wait_for(lambda: t.streamer.cache().servable(GROUP, NAME))  # type: ignore[union-attr]
    [answer] = first
    assert answer.content == (DATA if share else DATA[5:10])


@pytest.mark.parametrize("share", [True, False], ids=["shared", "background"])
async def test_a_range_that_ends_before_the_file_is_answered_while_the_refresh_is_held(
    tmp_path: Path, share: bool
) -> None:
    async with held_refresh(tmp_path, share) as (t, up, client):
        # Written already (the refresh holds HALF): read from the refresh, its last byte
        # would wait for the held half and the check of the whole file.
        with trio.fail_after(10):
            head = await client.get(t.url(NAME), headers={"range": "bytes=0-100"})
            probe = await client.get(t.url(NAME), headers={"range": "bytes=0-0"})
        assert (head.status_code, head.content) == (206, DATA[:101])
        assert (probe.status_code, probe.content) == (206, DATA[:1])
        assert refresh_written(t, NAME) == HALF  # the refresh is still held
        asked = [g.headers.get("range") for g in up.gets(NAME)]
        assert "bytes=0-100" in asked and "bytes=0-0" in asked  # relayed from the source


async def test_a_range_to_the_files_end_reads_the_refresh_and_ends_once_checked(
    tmp_path: Path,
) -> None:
    tail: list[httpx.Response] = []
    start = HALF - 1000
    # The reader's nursery and client outlive the held refresh: it is let go first.
    async with (
        httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as own,
        trio.open_nursery() as n,
        held_refresh(tmp_path, share=True) as (t, up, _client),
    ):

        async def reader() -> None:
            tail.append(await own.get(t.url(NAME), headers={"range": f"bytes={start}-"}))

        n.start_soon(reader)
        # Joined the refresh (a shared reader), not relayed; its end is held with the file's.
        await wait_for(lambda: t.counter("snapshot_tracker_shared_readers_total") == 1)
        assert tail == []
    [answer] = tail
    assert (answer.status_code, answer.content) == (206, DATA[start:])
    assert [g.headers.get("range") for g in up.gets(NAME)] == [None]  # the one refresh
