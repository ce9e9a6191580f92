"""A tracker over a real SeaweedFS bucket (tests/helpers_s3.py runs the server): the
``object_store`` section of a prefix of its own, the tracker with its upstream, the tier
alone, objects put by hand, and waiting for an upload."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from helpers_proxy import GROUP, TrackerUnderTest, proxy_tracker, wait_for
from helpers_s3 import ACCESS_KEY, SECRET_KEY, Weed
from helpers_upstream import FakeUpstream

from tracker.config.schema import ObjectStore
from tracker.objectstore.tier import ObjectTier


def store_config(weed: Weed, **overrides: Any) -> ObjectStore:
    """The ``object_store`` section of a prefix of its own of ``weed``'s bucket."""
    settings: dict[str, Any] = {
        "endpoint": weed.endpoint,
        "bucket": "snapshots",
        "prefix": f"t-{secrets.token_hex(4)}/",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "lock_ttl": 3.0,
        # The product's 2 s: a loaded host's SeaweedFS answered a HEAD later than that, the
        # store counted as down and a test waiting for an upload waited in vain. The tests
        # of a hung store set their own.
        "request_timeout": 10.0,
    }
    settings.update(overrides)
    return ObjectStore(**settings)


@asynccontextmanager
async def bucket_tracker(
    weed: Weed, up: FakeUpstream, tmp_path: Path, **store: Any
) -> AsyncIterator[TrackerUnderTest]:
    """A tracker with a cache in ``tmp_path`` over a prefix of its own of ``weed``'s bucket
    (``store``: the other ``object_store`` settings), ``up`` advertising what it serves."""
    async with proxy_tracker(tmp_path / "cache", up, object_store=store_config(weed, **store)) as t:
        yield t


def prefix_of(t: TrackerUnderTest) -> str:
    """The bucket prefix of ``t``."""
    store = t.config.object_store
    assert store is not None
    return store.prefix


async def uploaded(weed: Weed, t: TrackerUnderTest, name: str) -> None:
    """Wait until ``t`` uploaded ``name`` to the bucket and no upload runs any more."""
    key = f"{prefix_of(t)}{GROUP}/{name}"
    objects = t.parts.objects
    assert objects is not None
    await wait_for(lambda: key in weed.objects(prefix_of(t)), timeout=30)
    await wait_for(lambda: objects.tier.uploads_running == 0, timeout=30)


def tier_of(weed: Weed, **store: Any) -> ObjectTier:
    """A tier of its own prefix of ``weed``'s bucket (no tracker around it)."""
    from tracker.objectstore.bucket import Bucket

    settings = store_config(weed, **store)
    return ObjectTier(settings, Bucket(settings))


def put(weed: Weed, key: str, body: bytes = b"x", **extra: Any) -> None:
    """Put an object in the bucket by hand."""
    weed.client().put_object(Bucket="snapshots", Key=key, Body=body, **extra)
