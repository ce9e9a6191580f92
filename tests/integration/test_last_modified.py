"""Last-Modified of what the tracker keeps of a source's answer: never later than then.

A real hypercorn tracker, a real :class:`FakeUpstream` on 127.0.0.1 (and a real SeaweedFS
for the bucket). A source whose clock runs ahead answers ``Last-Modified`` in 2099. A relay
passes it on as it is, as a reverse proxy does: the client's ``If-Range`` goes back to the
source, which compares its own date. What the tracker keeps (a cached copy's mtime, the
bucket's metadata) is held to the time it was kept, one fixed date: a copy stamped 2099 would
answer with the time of each answer, a validator that moves every second, and would list a
date in the future (docs/http-api.md#archive-answers).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from helpers_bucket import bucket_tracker, uploaded
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import FAST, TrackerUnderTest, advertise, proxy_tracker, wait_for
from helpers_s3 import Weed
from helpers_tls import client_tls
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

FULL = full_name(9300)
DATA = archive_bytes(1 * MiB, seed=93)
AHEAD = "Thu, 01 Jan 2099 00:00:00 GMT"


def ahead_upstream() -> FakeUpstream:
    """A source whose dates run ahead (no ETag: the date is the only validator, and it
    compares If-Range exactly, as nginx does)."""
    return FakeUpstream(
        files={FULL: DATA},
        behaviour={FULL: Behaviour(last_modified=AHEAD, etag=None, if_range=True)},
    )


def not_ahead(answer: httpx.Response) -> str:
    """The answer's Last-Modified, checked to be no later than its Date."""
    modified = answer.headers["last-modified"]
    assert parsedate_to_datetime(modified) <= parsedate_to_datetime(answer.headers["date"])
    return modified


@asynccontextmanager
async def only_in_the_bucket(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[tuple[TrackerUnderTest, httpx.AsyncClient]]:
    """A tracker with a bucket that fetched and uploaded ``FULL`` from ``upstream``, its
    disk copy gone: a HEAD of it is the bucket's."""
    async with (
        serving(upstream) as up,
        bucket_tracker(weed, up, tmp_path) as t,
        httpx.AsyncClient(verify=client_tls(), trust_env=False) as client,
    ):
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(DATA))])
        assert (await client.get(t.url(FULL))).content == DATA
        await uploaded(weed, t, FULL)
        for path in t.group_dir().iterdir():
            path.unlink()
        yield t, client


async def test_a_relay_passes_the_sources_date_on_and_resumes_with_it(tmp_path: Path) -> None:
    async with (
        serving(ahead_upstream()) as up,
        proxy_tracker(None, settings=FAST) as t,
        httpx.AsyncClient(verify=client_tls(), trust_env=False) as client,
    ):
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(DATA))])
        first = await client.get(t.url(FULL))
        assert (first.status_code, first.headers["last-modified"]) == (200, AHEAD)
        resumed = await client.get(t.url(FULL), headers={"range": "bytes=100-", "if-range": AHEAD})
        assert resumed.status_code == 206 and resumed.content == DATA[100:]


async def test_a_cached_copy_of_a_sources_future_date_keeps_one_date_no_later_than_it(
    tmp_path: Path,
) -> None:
    async with (
        serving(ahead_upstream()) as up,
        proxy_tracker(tmp_path / "cache", settings=FAST) as t,
        httpx.AsyncClient(verify=client_tls(), trust_env=False) as client,
    ):
        advertise(t.index, up.base, [(FULL, up.url(FULL), len(DATA))])
        assert (await client.get(t.url(FULL))).content == DATA
        await wait_for(lambda: FULL in t.cached())
        # the copy's mtime: the time it was kept, not 2099
        mtime = os.stat(t.group_dir() / FULL).st_mtime
        assert mtime <= time.time()
        head = await client.head(t.url(FULL))
        kept = not_ahead(head)
        assert parsedate_to_datetime(kept).timestamp() == mtime
        # the copy's date is a validator: a resume with it gets the rest, from the copy
        resumed = await client.get(t.url(FULL), headers={"range": "bytes=100-", "if-range": kept})
        assert resumed.status_code == 206 and resumed.content == DATA[100:]
        assert resumed.headers["last-modified"] == kept


async def test_the_buckets_copy_of_a_sources_future_date_keeps_one_date_no_later_than_it(
    weed: Weed, tmp_path: Path
) -> None:
    async with only_in_the_bucket(weed, ahead_upstream(), tmp_path) as (t, client):
        head = await client.head(t.url(FULL))
        assert head.status_code == 200
        kept = not_ahead(head)
        again = await client.head(t.url(FULL), headers={"if-modified-since": kept})
        assert (again.status_code, again.headers["last-modified"]) == (304, kept)


async def test_a_sources_date_with_junk_around_it_is_kept_in_its_canonical_form(
    weed: Weed, tmp_path: Path
) -> None:
    """A date the parser takes may carry bytes around it that are no ASCII (``GMT\\xe9``):
    kept as written in the object's metadata, the store's client refused the upload before
    sending it, and the store was marked down for every request."""
    junk = FakeUpstream(
        files={FULL: DATA},
        behaviour={
            FULL: Behaviour(
                last_modified=None,
                etag=None,
                headers=[("last-modified", b"Mon, 01 Jan 2024 00:00:00 GMT\xe9")],
            )
        },
    )
    async with only_in_the_bucket(weed, junk, tmp_path) as (t, client):
        head = await client.head(t.url(FULL))
        assert head.headers["last-modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
