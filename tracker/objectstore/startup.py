"""What a replica does with the bucket when it starts, and the clean-up of uploads whose
replica died: incomplete uploads of this prefix older than ``lock_ttl`` whose file has no
live lock are aborted; expired locks and marks of an older version (keys without a suffix)
are deleted; retention of every group and kind found is due (of an archive, or of a side
object, which retention deletes when its archive is gone)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore import keys
from tracker.objectstore.known import Known
from tracker.objectstore.locks import old_enough
from tracker.objectstore.retainer import HANDOUT_MARGIN, Retainer
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_url

if TYPE_CHECKING:
    # not at run time: a tracker without an object store never loads botocore
    from tracker.objectstore.bucket import Bucket

log = logging.getLogger("tracker.objectstore")


async def start_up(
    store: ObjectStore,
    bucket: Bucket,
    known: Known,
    retainer: Retainer,
    failed: Callable[[str, StoreError], None],
) -> None:
    """Learn what the bucket holds (its archives: not digests, locks, marks or any other
    key) into ``known``; abort incomplete uploads of this prefix older than ``lock_ttl``
    whose file has no live lock (their replica died); delete the expired locks and marks of
    an older version (keys without a suffix). Retention of every group and kind found is due
    (an archive held back by a replica that stopped since would wait for the next upload of
    its kind). Never raises: a store failure is told to ``failed``."""
    prefix = store.prefix
    legacy: list[tuple[str, str]] = []
    try:
        for info in await bucket.list_objects(prefix):
            archive = keys.archive_of(prefix, info.key)
            kind = keys.legacy_kind(prefix, info.key) if archive is None else None
            side = keys.side_of(prefix, info.key) if archive is None else None
            if archive is not None:
                known.remember(info.key, info)
                retainer.schedule(archive.group, archive.full, 0)
            elif kind is not None:
                legacy.append((info.key, kind))
            elif side is not None:
                # a side object whose archive may be gone (left by an older version, or
                # written after another replica deleted it): retention deletes it
                retainer.schedule(side.group, side.full, 0)
        try:
            aborted = await abort_uploads(bucket, store, prefix, only_stale=True)
        except StoreError as exc:
            if not exc.denied:
                raise
            aborted = 0  # the policy refuses the listing of uploads: no clean-up of them
        expired = [key for key, kind in legacy if await _expired(bucket, store, key, kind)]
        for key in expired:
            await bucket.tidy(key)
    except StoreError as exc:
        failed("startup", exc)
        return
    log_event(
        log,
        "info",
        "object_store_ready",
        endpoint=redact_url(store.endpoint or "aws"),
        bucket=store.bucket,
        objects=len(known),
        aborted_uploads=aborted,
        old_keys_deleted=len(expired),
    )


async def _expired(bucket: Bucket, store: ObjectStore, key: str, kind: str) -> bool:
    """True when the lock (``kind`` "lock") or hand-out mark at ``key`` has expired: a
    lock older than ``lock_ttl``, a mark older than ``direct_serve_ttl`` and the margin
    (on the store's clock)."""
    info, now = await bucket.head_dated(key)
    if info is None:
        return False
    if kind == "lock":
        return old_enough(info.last_modified, now, store.lock_ttl)
    age = (now - info.last_modified).total_seconds()
    return age >= store.direct_serve_ttl + HANDOUT_MARGIN


async def abort_uploads(
    bucket: Bucket, store: ObjectStore, prefix: str, *, only_stale: bool = False
) -> int:
    """Abort the incomplete uploads of key ``prefix`` (a lock taken over: that key's only),
    or with ``only_stale`` those of every key under it whose replica is gone; how many."""
    aborted = 0
    for upload in await bucket.list_uploads(prefix):
        if not only_stale and upload.key != prefix:
            continue  # a takeover aborts the uploads of its own key only
        if only_stale and not await _orphaned(bucket, store, upload.key, upload.initiated):
            continue
        await bucket.abort_upload(upload.key, upload.upload_id)
        aborted += 1
        log_event(log, "info", "object_upload_aborted", key=upload.key)
    return aborted


async def _orphaned(bucket: Bucket, store: ObjectStore, key: str, initiated: datetime) -> bool:
    """True when an upload of ``key`` begun at ``initiated`` belongs to nobody alive: an
    upload of an archive key of the prefix (the only uploads the tracker makes), old, its
    lock gone or stale. Any other key's upload is not the tracker's (another application's
    in the bucket, another fleet's under a longer prefix: ``testnet/`` under ``""``), and
    its age alone aborted it, live or not."""
    archive = keys.archive_of(store.prefix, key)
    if archive is None:
        return False
    lock_key = keys.lock_key(store.prefix, archive.group, archive.name)
    lock, now = await bucket.head_dated(lock_key)
    # An upload's ``Initiated`` is in whole seconds like a lock's date (``now`` is the
    # store's, of its answer): a young upload must not look a second older.
    ttl = store.lock_ttl
    if not old_enough(initiated, now, ttl):
        return False
    return lock is None or old_enough(lock.last_modified, now, ttl)
