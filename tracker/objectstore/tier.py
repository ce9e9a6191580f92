"""What this replica knows of the shared bucket, and what it does there (SPEC §10).

Keys: the archive ``name`` of ``group`` is ``{prefix}{group}/{name}``, its refresh lock
``{prefix}.locks/{group}/{name}`` (:mod:`~tracker.objectstore.locks`), and the mark of its
last hand-out ``{prefix}.handed/{group}/{name}``: a presigned URL is reused for a quarter of
``direct_serve_ttl`` and the mark is rewritten with each new URL, so every URL handed out by
any replica expires before ``mark + direct_serve_ttl``; retention deletes nothing younger.

Objects known to be there are remembered for :data:`KNOWN_FOR` seconds (then looked at
again: another replica's retention may have removed one), misses for :data:`MISSED_FOR`.
Nothing here raises for the store being down: the caller then uses another path. What a
request waits for (lookup, lock, hand-out) and the health check go through
:meth:`~tracker.objectstore.bucket.Bucket.on_request_path` (``request_timeout``); while the
store is down only :meth:`ObjectTier.watch` asks it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs
import trio

from tracker.core.config import ObjectStore
from tracker.core.digests import Digests, parse_sha256sum_line
from tracker.core.logs import log_event
from tracker.core.redact import redact_url
from tracker.core.snapshots import parse_archive_name
from tracker.errors import StoreConflict, StoreError
from tracker.objectstore.bucket import Bucket, ObjectInfo
from tracker.objectstore.locks import Holder, Lock, acquire, old_enough
from tracker.objectstore.retention import superseded
from tracker.objectstore.upload import digest_key

log = logging.getLogger("tracker.objectstore")

#: Seconds between checks of the store's health (:meth:`ObjectTier.watch`).
CHECK_EVERY = 5.0
KNOWN_FOR = 30.0
MISSED_FOR = 1.0
#: Slack on top of ``direct_serve_ttl`` before an object handed out may be deleted.
HANDOUT_MARGIN = 5.0


def _nothing(*_args: object) -> None:
    return None


@attrs.frozen
class TierEvents:
    """Callbacks for metrics (synchronous, cheap)."""

    redirect: Callable[[], None] = _nothing
    upload: Callable[[str], None] = _nothing  # "ok" | "failed"
    takeover: Callable[[], None] = _nothing
    error: Callable[[str], None] = _nothing  # the operation


@attrs.define
class _Url:
    url: str
    reuse_until: float


class ObjectTier:
    """This replica's side of the shared bucket; made by the service when configured."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: Bucket,
        events: TierEvents | None = None,
        digests: Digests | None = None,
    ) -> None:
        self.store = store
        self.bucket = bucket
        #: The same bucket for calls a client waits for: a deadline of ``request_timeout``.
        self.quick = bucket.on_request_path()
        self.events = events if events is not None else TierEvents()
        #: This process's id in the locks it holds.
        self.owner = secrets.token_hex(8)
        self._known: dict[str, tuple[ObjectInfo, float]] = {}
        self._missed: dict[str, float] = {}
        self._urls: dict[str, _Url] = {}
        self.uploads_running = 0
        #: Digests of the bucket's objects: (object ETag, hex), read from ``{key}.sha256``.
        self._sums: dict[str, tuple[str, str]] = {}
        #: Told every digest of an object this replica knows (the JSON's ``sha256``).
        self.digests = digests if digests is not None else Digests()

    # -- keys ----------------------------------------------------------------------------

    def object_key(self, group: str, name: str) -> str:
        return f"{self.store.prefix}{group}/{name}"

    def lock_key(self, group: str, name: str) -> str:
        return f"{self.store.prefix}.locks/{group}/{name}"

    def mark_key(self, group: str, name: str) -> str:
        return f"{self.store.prefix}.handed/{group}/{name}"

    @property
    def usable(self) -> bool:
        """False while the store is down (between retries)."""
        return self.bucket.health.usable()

    # -- reading -------------------------------------------------------------------------

    async def lookup(self, group: str, name: str) -> ObjectInfo | None:
        """The object of ``name`` when the bucket has it; None when not (or the store is
        down)."""
        key = self.object_key(group, name)
        now = trio.current_time()
        known = self._known.get(key)
        if known is not None and now - known[1] < KNOWN_FOR:
            return known[0]
        if now - self._missed.get(key, -MISSED_FOR) < MISSED_FOR or not self.usable:
            return None
        try:
            info = await self.quick.head(key)
        except StoreError as exc:
            self._failed("HEAD", exc)
            return None
        self._remember(key, info)
        return info

    def _remember(self, key: str, info: ObjectInfo | None) -> None:
        now = trio.current_time()
        if info is None:
            self._known.pop(key, None)
            self._urls.pop(key, None)
            self._missed[key] = now
        else:
            self._known[key] = (info, now)
            self._missed.pop(key, None)

    async def digest(self, group: str, name: str, info: ObjectInfo) -> str | None:
        """The hex SHA-256 of object ``info`` of ``name`` (from its digest object, read once
        per object); None when it has none or the store does not answer."""
        key = info.key
        known = self._sums.get(key)
        if known is not None and known[0] == info.etag:
            return known[1]
        try:
            text = await self.quick.get_small(digest_key(key))
        except StoreError as exc:
            self._failed("GET", exc)
            return None
        hex_digest = None
        if text is not None:
            hex_digest = parse_sha256sum_line(text.decode("utf-8", "replace"), name)
        if hex_digest is not None:
            self._sums[key] = (info.etag, hex_digest)
            self.digests.put("bucket", group, name, hex_digest)
        return hex_digest

    async def handout(self, group: str, name: str) -> str | None:
        """A presigned GET URL of the object for a client; None when it cannot be given (not
        in the bucket any more, store down, signing failed)."""
        key = self.object_key(group, name)
        now = trio.current_time()
        cached = self._urls.get(key)
        if cached is not None and now < cached.reuse_until and self.bucket.health.up:
            self.events.redirect()
            return cached.url
        ttl = self.store.direct_serve_ttl
        try:
            info = await self.quick.head(key)  # still there? (another replica's retention)
            self._remember(key, info)
            if info is None:
                return None
            await self.quick.put(self.mark_key(group, name), b"")
            url = self.bucket.presign_get(key, ttl, file_name=name)
        except StoreError as exc:
            self._failed("handout", exc)
            return None
        self._urls[key] = _Url(url, now + ttl / 4)
        self.events.redirect()
        return url

    def internal_url(self, group: str, name: str) -> str | None:
        """A short-lived presigned URL for the tracker's own streaming of the object."""
        try:
            return self.bucket.presign_get(self.object_key(group, name), 3600, public=False)
        except StoreError as exc:
            self._failed("presign", exc)
            return None

    # -- refreshing ----------------------------------------------------------------------

    async def claim(self, group: str, name: str) -> Lock | Holder | None:
        """Take the refresh lock of ``name``: the Lock, the live Holder, or None when the
        store cannot be used (down, or no answer within ``request_timeout``). A lock taken
        over from a dead replica has that replica's incomplete uploads of the key aborted
        first."""
        if not self.usable:
            return None
        store = self.store
        key = self.lock_key(group, name)
        try:
            got = await acquire(self.quick, key, self.owner, store.replica_url, store.lock_ttl)
            if isinstance(got, Lock):
                got.bucket = self.bucket  # renewals run beside the refresh, not on a request
            if isinstance(got, Lock) and got.took_over:
                self.events.takeover()
                log_event(log, "warning", "object_lock_taken_over", group=group, file=name)
                await self._abort_uploads(self.object_key(group, name))
        except StoreError as exc:
            self._failed("lock", exc)
            return None
        return got

    async def keep_renewed(self, lock: Lock, lost: trio.Event) -> None:
        """Renew ``lock`` every third of ``lock_ttl`` until cancelled; sets ``lost`` and
        returns when another replica took it over. A store that is down is retried."""
        while True:
            await trio.sleep(self.store.lock_ttl / 3)
            try:
                await lock.renew()
            except StoreConflict:
                log_event(log, "warning", "object_lock_lost", key=lock.key)
                lost.set()
                return
            except StoreError as exc:
                self._failed("lock", exc)

    def upload_metadata(self, headers: dict[str, str]) -> dict[str, str]:
        """The object's metadata: the upstream's ``last-modified``, kept for HEAD answers."""
        modified = headers.get("last-modified", "")
        return {"upstream-last-modified": modified} if modified.isascii() and modified else {}

    async def completed(self, group: str, name: str, info: ObjectInfo, sha256: str = "") -> None:
        """An upload of ``name`` (of digest ``sha256``) completed: remember it, then apply
        retention."""
        self._remember(info.key, info)
        if sha256:
            self._sums[info.key] = (info.etag, sha256)
            self.digests.put("bucket", group, name, sha256)
        self.events.upload("ok")
        log_event(log, "info", "object_uploaded", group=group, file=name, size=info.size)
        parsed = parse_archive_name(name)
        if parsed is not None:
            await self.retain(group, full=parsed.is_full)

    async def retain(self, group: str, *, full: bool) -> None:
        """Delete ``group``'s objects of one kind beyond the newest ``1 + keep_previous``,
        none handed out less than ``direct_serve_ttl`` (and a margin) ago."""
        folder = self.object_key(group, "")
        try:
            listed = await self.bucket.list_objects(folder)
            names = [o.key[len(folder) :] for o in listed if "/" not in o.key[len(folder) :]]
            for name in superseded(names, full=full, keep_previous=self.store.keep_previous):
                await self._retire(group, name)
        except StoreError as exc:
            self._failed("retention", exc)

    async def _retire(self, group: str, name: str) -> None:
        mark, now = await self.bucket.head_dated(self.mark_key(group, name))
        if mark is not None:
            age = (now - mark.last_modified).total_seconds()
            if age < self.store.direct_serve_ttl + HANDOUT_MARGIN:
                return  # a URL handed out may still be valid: next time
        key = self.object_key(group, name)
        await self.bucket.delete(key)
        await self.bucket.delete(digest_key(key))
        if mark is not None:
            await self.bucket.delete(mark.key)
        self._remember(key, None)
        if self._sums.pop(key, None) is not None:
            self.digests.drop("bucket", group, name)
        log_event(log, "info", "object_retired", group=group, file=name)

    # -- start-up ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Learn what the bucket holds; abort incomplete uploads of this prefix older than
        ``lock_ttl`` whose file has no live lock (their replica died). Never raises."""
        prefix = self.store.prefix
        try:
            for info in await self.bucket.list_objects(prefix):
                if not info.key[len(prefix) :].startswith("."):
                    self._remember(info.key, info)
            aborted = await self._abort_uploads(prefix, only_stale=True)
        except StoreError as exc:
            self._failed("startup", exc)
            return
        log_event(
            log,
            "info",
            "object_store_ready",
            endpoint=redact_url(self.store.endpoint or "aws"),
            bucket=self.store.bucket,
            objects=len(self._known),
            aborted_uploads=aborted,
        )

    async def _abort_uploads(self, prefix: str, *, only_stale: bool = False) -> int:
        aborted = 0
        for upload in await self.bucket.list_uploads(prefix):
            if not only_stale and upload.key != prefix:
                continue  # a takeover aborts the uploads of its own key only
            if only_stale and not await self._orphaned(upload.key, upload.initiated):
                continue
            await self.bucket.abort_upload(upload.key, upload.upload_id)
            aborted += 1
            log_event(log, "info", "object_upload_aborted", key=upload.key)
        return aborted

    async def _orphaned(self, key: str, initiated: datetime) -> bool:
        """True when an upload of ``key`` begun at ``initiated`` belongs to nobody alive."""
        prefix = self.store.prefix
        group, _, name = key[len(prefix) :].partition("/")
        lock, now = await self.bucket.head_dated(self.lock_key(group, name))
        # An upload's ``Initiated`` is in whole seconds like a lock's date (and ``now`` is our
        # own clock when there is no lock): a young upload must not look a second older.
        ttl = self.store.lock_ttl
        if not old_enough(initiated, now, ttl):
            return False
        return lock is None or old_enough(lock.last_modified, now, ttl)

    async def watch(self, every: float = CHECK_EVERY) -> None:
        """Check the store every ``every`` seconds until cancelled, so that a store that went
        down stops getting clients redirected to it (URLs are reused between calls) and one
        that came back gets them again."""
        while True:
            try:
                await self.quick.check()
            except StoreError as exc:
                self._failed("check", exc)
            await trio.sleep(every)

    # -- status --------------------------------------------------------------------------

    def _failed(self, operation: str, exc: StoreError) -> None:
        self.events.error(operation)
        log_event(log, "warning", "object_store_error", operation=operation, reason=str(exc))

    def status(self) -> dict[str, Any]:
        """The store's health for ``/v1/store``."""
        health = self.bucket.health
        return {
            "endpoint": redact_url(self.store.endpoint) if self.store.endpoint else "aws",
            "bucket": self.store.bucket,
            "prefix": self.store.prefix,
            "up": health.up,
            "last_error": health.last_error or None,
            "objects_known": len(self._known),
            "uploads_running": self.uploads_running,
            "direct_serve": self.store.direct_serve,
            "replica_url": self.store.replica_url or None,
        }
