"""A store's answer that is malformed in a way botocore does not call its own error: a
``Last-Modified`` that is no date (botocore raises a plain ValueError while parsing it), one
it reads as an epoch past the calendar (``1e20``, ``inf``: a RuntimeError), XML that does not
parse (its ResponseParserError is no BotoCoreError) and a ``Date`` of unknown zone (``-0000``,
parsed naive). Each is a StoreError (the store marked down) or the store's time in UTC,
never an exception past the object-store tier (it ended the service: the tier's tasks must
not raise). A real HTTP server on 127.0.0.1 stands in for a store or a proxy in front of
it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bytes import archive_bytes
from helpers_server import serve_app
from helpers_sources import Answer, Request, ScriptedApp
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_upstream import FakeUpstream, sidecar_listing
from names import full_name

from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore.bucket import Bucket
from tracker.objectstore.locks import Holder, Lock, acquire

KEY = "p/.locks/g/snapshot-100.lock"
LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
    "<Prefix>p/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    "<IsTruncated>false</IsTruncated><Contents><Key>p/g/x</Key>"
    "<LastModified>{}</LastModified><ETag>&quot;e&quot;</ETag><Size>5</Size>"
    "</Contents></ListBucketResult>"
)
#: Dates botocore cannot parse, and the reason each failure names: no date at all (its
#: ValueError), and numbers it reads as epochs past the calendar (its RuntimeError).
NO_DATES = [
    ("not a date", "Invalid timestamp"),
    ("Mon, 99 Jan 2024 00:00:00 GMT", "Invalid timestamp"),
    ("1e20", "timezone offset"),
    ("inf", "timezone offset"),
    ("-1e20", "timezone offset"),
]


def store_at(base: str) -> ObjectStore:
    return ObjectStore(
        endpoint=base, bucket="b", prefix="p/", access_key_id="k", secret_access_key="s"
    )


def head_answer(last_modified: str, date: str = "Mon, 01 Jan 2024 00:00:00 GMT") -> Answer:
    headers = (
        ("content-length", "34"),
        ("etag", '"abc"'),
        ("last-modified", last_modified),
        ("date", date),
        ("x-amz-meta-owner", "someone"),
    )
    return Answer(200, headers)


@pytest.mark.parametrize(("last_modified", "reason"), NO_DATES)
async def test_a_last_modified_that_is_no_date_is_a_store_error(
    nursery: trio.Nursery, last_modified: str, reason: str
) -> None:
    app = ScriptedApp({f"/b/{KEY}": head_answer(last_modified)})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    with pytest.raises(StoreError, match=reason):
        await bucket.head(KEY)
    assert not bucket.health.up and reason in bucket.health.last_error


@pytest.mark.parametrize(("last_modified", "reason"), NO_DATES)
async def test_a_listing_of_a_time_that_is_no_date_is_a_store_error(
    nursery: trio.Nursery, last_modified: str, reason: str
) -> None:
    body = LISTING.format(last_modified).encode()
    listing = Answer(200, (("content-type", "application/xml"),), body)
    app = ScriptedApp({"/b": listing, "/b/": listing})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    with pytest.raises(StoreError, match=reason):
        await bucket.list_objects("p/")
    assert not bucket.health.up


@pytest.mark.parametrize(("last_modified", "reason"), NO_DATES)
async def test_a_lock_release_whose_head_answers_no_date_returns(
    nursery: trio.Nursery, last_modified: str, reason: str
) -> None:
    """An upload releases its lock in its ``finally``: anything but a StoreError out of the
    release was raised into the transfers' nursery and ended the daemon."""
    app = ScriptedApp({f"/b/{KEY}": head_answer(last_modified)})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    await Lock(bucket, KEY, "me", "", etag='"abc"').release()
    assert [r.method for r in app.requests] == ["HEAD"]  # nothing deleted on that answer
    assert not bucket.health.up and reason in bucket.health.last_error


async def test_xml_that_does_not_parse_is_a_store_error(nursery: trio.Nursery) -> None:
    """botocore's ResponseParserError (a success's body cut off) is no BotoCoreError. (A
    200's broken XML botocore reads as a 500 to retry; a 201's it parses, and fails.)"""
    cut = b"<InitiateMultipartUploadResult><UploadId>"
    app = ScriptedApp({"/b/p/g/x": Answer(201, (("content-type", "application/xml"),), cut)})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    with pytest.raises(StoreError, match="CreateMultipartUpload: Unable to parse"):
        await bucket.create_upload("p/g/x", {})
    assert not bucket.health.up


async def test_a_lock_held_at_a_store_time_of_unknown_zone_is_judged(
    nursery: trio.Nursery,
) -> None:
    """A lock's age is the store's ``Date`` less its ``Last-Modified``: with the ``Date`` of
    zone ``-0000`` it was a TypeError (naive less aware) out of ``acquire``."""
    held = head_answer("Mon, 01 Jan 2024 00:00:00 GMT", date="Mon, 01 Jan 2024 00:00:01 -0000")
    refused = Answer(
        412,
        (("content-type", "application/xml"),),
        b"<Error><Code>PreconditionFailed</Code></Error>",
    )

    async def route(request: object) -> Answer:
        return held if getattr(request, "method", "") == "HEAD" else refused

    app = ScriptedApp({f"/b/{KEY}": route})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    taken = await acquire(bucket, KEY, "me", "http://me:8458", 60.0)
    assert isinstance(taken, Holder) and taken.owner == "someone"  # 1 s old of its 60


# -- a tracker whose store answers such dates ------------------------------------------------

#: The tracker's bucket: its config takes S3's names only (3 characters at least).
BUCKET = "snaps"
NAME = full_name(100)
DATA = archive_bytes(256 * 1024, seed=7)
ARCHIVE_KEY = f"p/g/{NAME}"
LOCK_KEY = f"p/.locks/g/{NAME}.lock"
XML = (("content-type", "application/xml"),)
EMPTY_LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>snaps</Name>'
    b"<Prefix>p/</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>false</IsTruncated></ListBucketResult>"
)
NO_UPLOADS = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Bucket>snaps</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"
)


def dating_store(dated: str, last_modified: str) -> ScriptedApp:
    """A bucket that is there and holds nothing, takes the archive's lock, refuses its
    upload (404: the store answered, it is not down for it) and answers the HEAD of the key
    ``dated`` (the archive's or its lock's) with ``last_modified``."""

    async def bucket(request: Request) -> Answer:
        if request.method == "HEAD":
            return Answer(200)
        return Answer(200, XML, NO_UPLOADS if "uploads" in request.query else EMPTY_LISTING)

    def keyed(key: str) -> Callable[[Request], Awaitable[Answer]]:
        async def answer(request: Request) -> Answer:
            if request.method == "HEAD" and key == dated:
                return head_answer(last_modified)
            if request.method == "PUT" and key == LOCK_KEY:
                return Answer(200, (("etag", '"lock"'),))
            return Answer(404)

        return answer

    return ScriptedApp(
        {
            f"/{BUCKET}": bucket,
            f"/{BUCKET}/": bucket,
            f"/{BUCKET}/{ARCHIVE_KEY}": keyed(ARCHIVE_KEY),
            f"/{BUCKET}/{LOCK_KEY}": keyed(LOCK_KEY),
        }
    )


@pytest.mark.parametrize("dated", [ARCHIVE_KEY, LOCK_KEY], ids=["lookup", "lock-release"])
async def test_a_tracker_whose_store_answers_no_date_serves_on(
    nursery: trio.Nursery,
    tmp_path: Path,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    dated: str,
) -> None:
    """The HEAD of a client's GET (is the archive in the bucket?) answered ``1e20`` was a
    500 with a traceback, the store never marked down; that of the lock's release after an
    upload failed ended the daemon. Either is a store failure: the archive is served from
    its source, as when the store is down, and the tracker answers the requests after it.
    (The other dates botocore cannot read fail the same way: the tests above.)"""
    upstream = FakeUpstream(files={NAME: DATA}, listing=sidecar_listing({NAME: DATA}))
    up = await nursery.start(upstream.run)
    store = dating_store(dated, "1e20")
    s3 = await nursery.start(serve_app, store)
    path = write_config(
        tmp_path,
        {
            "proxy_snapshot_downloads": True,
            "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
            "verify_archives": False,  # an opaque blob
            "target_groups": [{"group": "g", "static_targets": {"targets": [up[7:]]}}],
            "object_store": {
                "endpoint": s3,
                "bucket": BUCKET,
                "prefix": "p/",
                "access_key_id": "k",
                "secret_access_key": "s",
            },
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def listed() -> bool:
        return bool((await client.get(f"{base}/v1/snapshots")).json())

    await wait_until(listed)
    first = await client.get(f"{base}/{NAME}")
    assert first.status_code == 200 and first.content == DATA

    async def told() -> bool:
        status = (await client.get(f"{base}/v1/store")).json()
        return "timezone offset" in (status["last_error"] or "") and not status["uploads_running"]

    await wait_until(told)  # the tier's own failure: the store was marked down
    assert ("HEAD", f"/{BUCKET}/{dated}") in [(r.method, r.path) for r in store.requests]
    again = await client.get(f"{base}/{NAME}")
    assert again.status_code == 200 and again.content == DATA
    assert (await client.get(f"{base}/v1/snapshots")).status_code == 200
    assert not [r for r in caplog.records if r.msg == "task_failed"]
