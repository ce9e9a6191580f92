"""Proxy mode with the object-store tier (docs/http-api.md#with-an-object-store-object_store): what
the bucket answers, and filling it.

Which of these a request gets is decided by :mod:`tracker.proxy.decisions` (its ``redirect``,
``stored`` and ``claimed`` stages); this module performs it:

1. :meth:`ObjectPath.presigned`: a GET of a file the bucket holds is sent there, ``303`` to
   a presigned URL; :meth:`ObjectPath.head`: a HEAD of one not on disk is answered from the
   object's metadata, without the store's GET;
2. :meth:`ObjectPath.stream_source`: the object streamed through the tracker, Range and
   conditionals passed on to the store (a presigned URL for the tracker itself);
3. on a miss, before a refresh starts, :meth:`ObjectPath.claim`: this replica takes the file's
   lock and fills the bucket (:meth:`ObjectPath.upload`, a multipart upload following the
   refresh's temp file), or the request is proxied from the holder's refresh in flight
   (:meth:`ObjectPath.holder_source`: only where :mod:`tracker.objectstore.replicas` allows,
   and only an answer that states the archive's size), or, when the store is down, the disk
   cache alone works.

Another tracker is known by its ``User-Agent`` (the download client's, ``solana-snapshot-
tracker``): it always gets bytes and is never sent on to a third replica, so two replicas
never forward a request to each other in a loop.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from functools import partial
from urllib.parse import quote, urlsplit

import trio

from tracker.cache.refresh import Refresh
from tracker.config.schema import Config, ObjectStore, TargetGroup
from tracker.core.digests import CACHE, Digests, repr_digest
from tracker.core.snapshots import ArchiveName, SnapshotFile, SnapshotInfo
from tracker.errors import StoreError
from tracker.objectstore.locks import Holder, Lock
from tracker.objectstore.replicas import holder_route
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.objectstore.storehealth import StoreHealth
from tracker.objectstore.tier import RELEASE_WITHIN, ObjectTier, TierEvents
from tracker.observability.folding import log_folded
from tracker.observability.metrics import Metrics
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.serving.httpanswer import Answer
from tracker.serving.ranges import (
    RequestHeaders,
    evaluate_preconditions,
    http_date,
    last_modified_at,
    normalize_headers,
    parse_http_date,
    sent_last_modified,
)

log = logging.getLogger("tracker.objectstore")

Found = list[tuple[SnapshotFile, SnapshotSource]]


class ObjectPath:
    """The bucket's part in answering archive requests; see the module doc."""

    def __init__(self, tier: ObjectTier) -> None:
        self.tier = tier
        #: The uploads running here by (group, name), each set once its lock was let go.
        self._uploading: dict[tuple[str, str], trio.Event] = {}

    @property
    def store(self) -> ObjectStore:
        return self.tier.store

    async def presigned(self, group: str, name: str) -> str | None:
        """A presigned GET URL of the object of ``name``; None when the bucket does not have
        it, signing failed, or the disk cache holds a checked copy of ``name`` that the
        object is not known to equal: two nodes' archives of one slot and hash differ in
        their bytes, and the cache's copy is the one served and listed with its digest
        (:meth:`~tracker.core.digests.Digests.served`; docs/http-api.md, "Verified
        archives")."""
        info = await self.tier.lookup(group, name)
        if info is None:
            return None
        cached = self.tier.digests.of(CACHE, group, name)
        if cached is not None and await self.tier.digest(group, name, info) != cached.sha256:
            return None
        return await self.tier.handout(group, name)

    async def head(self, group: str, name: str, asked: RequestHeaders = ()) -> Answer | None:
        """A HEAD (request header lines ``asked``) answered from the object's metadata; None
        when the bucket does not have it."""
        info = await self.tier.lookup(group, name)
        if info is None:
            return None
        return head_response(info, await self.tier.digest(group, name, info), asked)

    async def stream_source(
        self, group: str, archive: ArchiveName
    ) -> tuple[TargetGroup, Found, str | None] | None:
        """The object as a source to stream from (presigned for the tracker) and its digest
        (None: unknown); None when the bucket does not have it."""
        name = archive.file_name
        info = await self.tier.lookup(group, name)
        url = self.tier.internal_url(group, name) if info is not None else None
        if info is None or url is None:
            return None
        digest = await self.tier.digest(group, name, info)
        return (*_source(group, archive, url, info.size), digest)

    async def claim(self, group: str, name: str) -> Lock | Holder | ObjectInfo | None:
        """Before a refresh of ``name``: this replica's lock, the live holder, the object
        (it landed meanwhile: answered from the bucket), or None (the store is down: the
        disk cache alone)."""
        claimed = await self.tier.claim(group, name)
        if not self._own(claimed):
            return claimed
        # Our own lock, which the upload beside a refresh that just ended (failed) lets go
        # with a store call of its own: taken once let go, so that this refresh fills the
        # bucket too; within the claim's bound, else the disk cache alone.
        releasing = self._uploading.get((group, name))
        if releasing is None:
            return None
        with trio.move_on_after(self.store.request_timeout):
            await releasing.wait()
        claimed = await self.tier.claim(group, name) if releasing.is_set() else None
        return None if self._own(claimed) else claimed

    def _own(self, claimed: Lock | Holder | ObjectInfo | None) -> bool:
        """Whether ``claimed`` is this replica's own lock, held by an upload here."""
        return isinstance(claimed, Holder) and claimed.owner == self.tier.owner

    def holder_source(
        self, holder: Holder, group: str, archive: ArchiveName, size: int
    ) -> tuple[TargetGroup, Found] | None:
        """The holder's refresh in flight as a source of the ``size``-byte archive (its size
        in the index: the route follows a holder only when it is known, and never for a
        request of another replica); None when it cannot be followed: its ``replica_url``
        (read from the bucket: network input) is missing, this replica's own, not a base
        URL, or not in ``object_store.replicas`` when that is set
        (:func:`~tracker.objectstore.replicas.holder_route`). Without that list the egress
        policy applies to the holder's address."""
        store = self.store
        route = holder_route(holder.replica_url, own=store.replica_url, replicas=store.replicas)
        if isinstance(route, str):
            if route:
                log_folded(log, "warning", "replica_not_followed", group=group, reason=route)
            return None
        url = f"{route.base}/v1/{quote(group, safe='')}/{archive.file_name}"
        return _source(group, archive, url, size, from_network=not route.trusted)

    async def upload(self, refresh: Refresh, lock: Lock, group: str, name: str) -> None:
        """Fill the bucket from ``refresh``'s temp file while holding ``lock``; never raises
        but Cancelled (failures are logged and counted; the upload is aborted, the lock
        released)."""
        tier = self.tier
        tier.uploads_running += 1
        self._uploading[group, name] = let_go = trio.Event()
        try:
            info = await self._upload(refresh, lock, group, name)
            if info is not None:
                await tier.completed(group, name, info, refresh.sha256)
        except (StoreError, OSError) as exc:
            tier.events.upload("failed")
            # beside a refresh, which a request starts again after each failure
            log_folded(log, "warning", "object_upload_failed", group=group, file=name, reason=exc)
        finally:
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + RELEASE_WITHIN
                    await lock.release()
            finally:  # whatever the release raised: /v1/store's count must come down
                tier.uploads_running -= 1
                if self._uploading.get((group, name)) is let_go:
                    del self._uploading[group, name]
                let_go.set()

    async def _upload(
        self, refresh: Refresh, lock: Lock, group: str, name: str
    ) -> ObjectInfo | None:
        """The upload with its lock kept renewed; None when the refresh never opened.
        Raises StoreError (or OSError reading the file) when it failed."""
        await refresh.ready.wait()
        path = refresh.temp or (refresh.final if refresh.verified else "")
        if not path or (not refresh.joinable and not refresh.verified):
            return None
        tier = self.tier
        fd = await trio.to_thread.run_sync(_open, path)
        try:
            failure: BaseException | None = None
            info: ObjectInfo | None = None
            lost = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tier.keep_renewed, lock, lost)
                nursery.start_soon(_cancel_when, lost, nursery.cancel_scope)
                try:
                    key = tier.object_key(group, name)
                    metadata = tier.upload_metadata(refresh.headers)
                    info = await tier.upload(key, fd, refresh, metadata, lock)
                except (StoreError, OSError) as exc:  # raised here, not as an ExceptionGroup
                    failure = exc
                nursery.cancel_scope.cancel()
        finally:
            os.close(fd)
        if failure is not None:
            raise failure
        if lost.is_set() or info is None:
            raise StoreError("another replica took the refresh lock over", down=False)
        return info


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def head_response(
    info: ObjectInfo, digest: str | None = None, asked: RequestHeaders = ()
) -> Answer:
    """A HEAD answer from an object's metadata (a presigned GET URL refuses HEAD), with the
    object's ``repr-digest`` when its digest is known. The conditionals of the request
    header lines ``asked`` are evaluated against the validators it gives, as a file's
    HEAD (a disk copy's) and the bucket's GET do: 304 or 412, bodiless."""
    modified = object_last_modified(
        info.metadata.get("upstream-last-modified"), info.last_modified.timestamp(), time.time()
    )
    validators = {"last-modified": modified, **({"etag": info.etag} if info.etag else {})}
    request = normalize_headers(asked)
    seconds = parse_http_date(modified)
    assert seconds is not None  # one of ours (object_last_modified)
    status = evaluate_preconditions("HEAD", request, info.etag, seconds)
    if status is not None:
        return Answer(status, {**validators, **({"content-length": "0"} if status == 412 else {})})
    response = Answer(200)
    response.headers.update(
        {
            "content-length": str(info.size),
            "content-type": "application/octet-stream",
            "accept-ranges": "bytes",
            "last-modified": modified,
        }
    )
    if info.etag:
        response.headers["etag"] = info.etag
    if digest:
        response.headers["repr-digest"] = repr_digest(digest)
    return response


def object_last_modified(metadata: str | None, stored: float, now: float) -> str:
    """The Last-Modified of an object answered at ``now`` (POSIX seconds): the source's
    date kept in its ``metadata`` (the one its first clients were sent: tier.py), else the
    object's own date ``stored`` (its metadata had none, garbled or in the future: a copy
    written before the tracker held dates to now), either never later than now
    (:func:`~tracker.serving.ranges.sent_last_modified`, docs/http-api.md#archive-answers)."""
    kept = sent_last_modified(metadata, now)
    if kept is not None and kept == metadata:
        return kept
    # timestamp() of the aware date: astimezone(UTC) overflows at the calendar's edges
    # (a store's 0001-01-01T00:00:00+05:00); http_date holds it to 1970-9999. The object's
    # date, not now's: the same for every HEAD, a date precondition's to compare with.
    return http_date(last_modified_at(stored, now))


def _source(
    group: str, archive: ArchiveName, url: str, size: int, *, from_network: bool = False
) -> tuple[TargetGroup, Found]:
    """A one-source list for the proxy: ``url`` of ``name`` in a group with no credentials
    (neither the store's nor the group's are ever sent there; a store's URL is presigned).
    ``from_network``: an address read from the bucket, reached only where the egress policy
    allows (as a discovered node's)."""
    f = SnapshotFile(name=archive, file_name=archive.file_name, size=size, url=url)
    info = SnapshotInfo(archive.slot, archive.base_slot or archive.slot, archive.hash, (f,))
    # The source's own origin is the URL's: the store's endpoint and a replica listed in
    # object_store.replicas are addresses the operator configured; any other replica_url came
    # from the network and is checked by the egress policy.
    parts = urlsplit(url)
    home = f"{parts.scheme}://{parts.netloc}"
    source = SnapshotSource(info, TargetKey(group, home, from_network), datetime.now(UTC))
    return TargetGroup(group=group), [(f, source)]


def object_path(
    config: Config, metrics: Metrics, digests: Digests | None = None
) -> ObjectPath | None:
    """The object-store tier of ``config`` (docs/http-api.md#with-an-object-store-object_store),
    None without one. It is made once:
    a reload that changes ``object_store`` takes effect at the next start."""
    store = config.object_store
    if store is None:
        return None
    # here, not at the module's import: a tracker without an object store never loads
    # botocore (a tenth of a second of every start)
    from tracker.objectstore.bucket import Bucket

    health = StoreHealth(on_change=partial(metrics.set_object_store_up, store.bucket))
    # 0 until the store's first answer (StoreHealth.reported_up): not up on a guess
    metrics.set_object_store_up(store.bucket, health.reported_up())
    events = TierEvents(
        upload=metrics.count_object_upload,
        takeover=metrics.count_object_takeover,
        error=metrics.count_object_error,
        refused=metrics.count_bucket_side_refused,
    )
    return ObjectPath(ObjectTier(store, Bucket(store, health), events, digests))
