"""Replicas of a tracker over one real SeaweedFS bucket, each checking archives, for the tests
of what they keep beside an archive in the bucket (test_verified_store.py,
test_attestations.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from helpers_proxy import (
    FakeUpstream,
    TrackerUnderTest,
    advertise_files,
    make_config,
    running_tracker,
    wait_for,
)
from helpers_s3 import ACCESS_KEY, BUCKET, SECRET_KEY, Weed

from tracker.config.schema import ObjectStore


def store(weed: Weed, prefix: str) -> ObjectStore:
    """The bucket of ``weed`` under ``prefix``, locks that expire fast."""
    return ObjectStore(
        endpoint=weed.endpoint,
        bucket=BUCKET,
        prefix=prefix,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        lock_ttl=3.0,
    )


@asynccontextmanager
async def replica(
    weed: Weed, up: FakeUpstream, tmp_path: Path, prefix: str, **extra: Any
) -> AsyncIterator[TrackerUnderTest]:
    """A tracker with its own disk cache over the bucket, checking archives, ``up``
    advertising every file it serves; ``extra``: more config."""
    config = make_config(
        tmp_path / f"cache-{secrets.token_hex(2)}",
        object_store=store(weed, prefix),
        verify_archives=True,
        **extra,
    )
    async with running_tracker(config) as t:
        advertise_files(t.index, up, up.files)
        yield t


async def idle(t: TrackerUnderTest) -> None:
    """Until the replica's uploads ended."""
    objects = t.parts.objects
    assert objects is not None
    await wait_for(lambda: objects.tier.uploads_running == 0, timeout=30)
