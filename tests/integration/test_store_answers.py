"""A store's answer that is malformed in a way botocore does not call its own error: a
``Last-Modified`` that is no date (botocore raises a plain ValueError while parsing it) and
a ``Date`` of unknown zone (``-0000``, parsed naive). Each is a StoreError or the store's
time in UTC, never an exception past the object-store tier (it ended the service: the tier's
tasks must not raise). A real HTTP server on 127.0.0.1 stands in for a store or a proxy in
front of it."""

from __future__ import annotations

import pytest
import trio
from helpers_server import serve_app
from helpers_sources import Answer, ScriptedApp

from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore.bucket import Bucket
from tracker.objectstore.locks import Holder, acquire

KEY = "p/.locks/g/snapshot-100.lock"
LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
    "<Prefix>p/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    "<IsTruncated>false</IsTruncated><Contents><Key>p/g/x</Key>"
    "<LastModified>not a date</LastModified><ETag>&quot;e&quot;</ETag><Size>5</Size>"
    "</Contents></ListBucketResult>"
)


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


@pytest.mark.parametrize("last_modified", ["not a date", "Mon, 99 Jan 2024 00:00:00 GMT"])
async def test_a_last_modified_that_is_no_date_is_a_store_error(
    nursery: trio.Nursery, last_modified: str
) -> None:
    app = ScriptedApp({f"/b/{KEY}": head_answer(last_modified)})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    with pytest.raises(StoreError, match="Invalid timestamp"):
        await bucket.head(KEY)


async def test_a_listing_of_a_time_that_is_no_date_is_a_store_error(nursery: trio.Nursery) -> None:
    listing = Answer(200, (("content-type", "application/xml"),), LISTING.encode())
    app = ScriptedApp({"/b": listing, "/b/": listing})
    bucket = Bucket(store_at(await nursery.start(serve_app, app)))
    with pytest.raises(StoreError, match="Invalid timestamp"):
        await bucket.list_objects("p/")


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
