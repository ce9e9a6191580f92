"""What this replica knows of the shared bucket, and what it does there (SPEC §10).

Keys (:mod:`~tracker.objectstore.keys`): the archive ``name`` of ``group`` is
``{prefix}{group}/{name}``, next to its digest ``{name}.sha256``; its refresh lock is
``{prefix}.locks/{group}/{name}.lock`` (:mod:`~tracker.objectstore.locks`), the mark of its
last hand-out ``{prefix}.handed/{group}/{name}.handed``. Every listing keeps archive keys
only. A presigned URL is reused for a quarter of ``direct_serve_ttl`` and the mark is
rewritten with each new URL, so every URL handed out by any replica expires before
``mark + direct_serve_ttl``; retention deletes nothing younger, and runs again
(:meth:`ObjectTier.retire_when_due`, one timer task) at the moment the object it held back
may go. It deletes an archive's digest and mark with it.

Objects known to be there are remembered for :data:`KNOWN_FOR` seconds (then looked at
again: another replica's retention may have removed one), misses for :data:`MISSED_FOR`.
Nothing here raises for the store being down: the caller then uses another path. What a
request waits for (lookup, lock, hand-out) and the health check go through
:meth:`~tracker.objectstore.bucket.Bucket.on_request_path` (``request_timeout``); while the
store is down only :meth:`ObjectTier.watch` asks it.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from tracker.core.config import ObjectStore
from tracker.core.digests import Digests, parse_sha256sum_line
from tracker.core.logs import log_event
from tracker.core.redact import redact_url
from tracker.core.snapshots import parse_archive_name
from tracker.errors import StoreConflict, StoreError
from tracker.objectstore import keys
from tracker.objectstore.bucket import Bucket, ObjectInfo
from tracker.objectstore.locks import Holder, Lock, acquire, old_enough
from tracker.objectstore.retention import retirement, superseded

log = logging.getLogger("tracker.objectstore")

#: Seconds between checks of the store's health (:meth:`ObjectTier.watch`).
CHECK_EVERY = 5.0
KNOWN_FOR = 30.0
MISSED_FOR = 1.0
#: Slack on top of ``direct_serve_ttl`` before an object handed out may be deleted.
HANDOUT_MARGIN = 5.0
#: Seconds before retention that failed (the store down) is tried again.
RETRY_AFTER = 30.0
#: Known objects the health watcher tries to read a byte of, newest first.
PROBED = 3
#: Groups and kinds whose retention may wait for a URL to expire at once (one entry each).
MAX_DUE = 1024


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
        #: (group, full) -> when (trio's clock) its retention runs again.
        self._due: dict[tuple[str, bool], float] = {}
        self._due_changed = trio.Event()
        self.uploads_running = 0
        #: Digests of the bucket's objects: (object ETag, hex), read from ``{key}.sha256``.
        self._sums: dict[str, tuple[str, str]] = {}
        #: Told every digest of an object this replica knows (the JSON's ``sha256``).
        self.digests = digests if digests is not None else Digests()
        #: Health checks done (:meth:`watch`).
        self.probes = 0

    # -- keys ----------------------------------------------------------------------------

    def object_key(self, group: str, name: str) -> str:
        return keys.archive_key(self.store.prefix, group, name)

    def lock_key(self, group: str, name: str) -> str:
        return keys.lock_key(self.store.prefix, group, name)

    def mark_key(self, group: str, name: str) -> str:
        return keys.mark_key(self.store.prefix, group, name)

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
        """The hex SHA-256 of object ``info`` of ``name`` from its digest object, asked once
        per object version (an answer without one is remembered too); None when it has none,
        or after a failure of the store until it reads again (unknown is the safe answer)."""
        key = info.key
        known = self._sums.get(key)
        if known is not None and known[0] == info.etag:
            return known[1] or None
        health = self.bucket.health
        if health.last_error and not health.reads_proven:
            return None  # back from a failure, not reading yet: the digest stays unknown
        try:
            text = await self.quick.get_small(keys.digest_key(self.store.prefix, group, name))
        except StoreError as exc:
            self._failed("GET", exc)
            return None
        hex_digest = None
        if text is not None:
            hex_digest = parse_sha256sum_line(text.decode("utf-8", "replace"), name)
        self._sums[key] = (info.etag, hex_digest or "")
        if hex_digest is not None:
            self.digests.put("bucket", group, name, hex_digest)
        return hex_digest

    async def handout(self, group: str, name: str) -> str | None:
        """A presigned GET URL of the object for a client; None when it cannot be given (not
        in the bucket any more, store down, signing failed). No URL is handed out before a
        GET of stored bytes worked since the store last failed (this object's first byte when
        the health watcher has not read one yet)."""
        key = self.object_key(group, name)
        now = trio.current_time()
        cached = self._urls.get(key)
        health = self.bucket.health
        if cached is not None and now < cached.reuse_until and health.up and health.reads_proven:
            self.events.redirect()
            return cached.url
        ttl = self.store.direct_serve_ttl
        try:
            info = await self.quick.head(key)  # still there? (another replica's retention)
            if info is not None and not health.reads_proven:
                info = info if await self.quick.read_first_byte(key) else None
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
        none handed out less than ``direct_serve_ttl`` (and a margin) ago: those are deleted
        once their last URL has expired (:meth:`retire_when_due` runs this again then). A
        store that fails is asked again :data:`RETRY_AFTER` seconds later."""
        prefix = self.store.prefix
        hold = self.store.direct_serve_ttl + HANDOUT_MARGIN
        try:
            listed = await self.bucket.list_objects(self.object_key(group, ""))
            found = filter(None, (keys.archive_of(prefix, o.key) for o in listed))
            names = [archive.name for archive in found if archive.group == group]
            old = superseded(names, full=full, keep_previous=self.store.keep_previous)
            handed = {name: await self._handed_age(group, name) for name in old}
            plan = retirement(handed, hold=hold)
            for name in plan.delete:
                await self._retire(group, name)
        except StoreError as exc:
            self._failed("retention", exc)
            self._schedule(group, full, RETRY_AFTER)
            return
        if plan.wait is not None:
            self._schedule(group, full, plan.wait)

    async def _handed_age(self, group: str, name: str) -> float | None:
        """Seconds since a URL of ``name`` was last handed out (on the store's clock), None
        when it never was (the mark of an older version counts too)."""
        ages = []
        for key in self._mark_keys(group, name):
            mark, now = await self.bucket.head_dated(key)
            if mark is not None:
                ages.append((now - mark.last_modified).total_seconds())
        return min(ages, default=None)

    def _mark_keys(self, group: str, name: str) -> tuple[str, str]:
        prefix = self.store.prefix
        return keys.mark_key(prefix, group, name), keys.legacy_mark_key(prefix, group, name)

    async def _retire(self, group: str, name: str) -> None:
        """Delete the archive, then its digest and marks (no error for those not there)."""
        key = self.object_key(group, name)
        await self.bucket.delete(key)
        for other in (
            keys.digest_key(self.store.prefix, group, name),
            *self._mark_keys(group, name),
        ):
            await self.bucket.delete(other)
        self._remember(key, None)
        if self._sums.pop(key, None) is not None:
            self.digests.drop("bucket", group, name)
        log_event(log, "info", "object_retired", group=group, file=name)

    def _schedule(self, group: str, full: bool, delay: float) -> None:
        """Run retention of ``group``'s fulls or incrementals again in ``delay`` seconds (or
        sooner when already due sooner)."""
        key = (group, full)
        at = trio.current_time() + max(0.0, delay)
        if key not in self._due and len(self._due) >= MAX_DUE:
            log_event(log, "warning", "object_retention_not_scheduled", group=group)
            return
        if at < self._due.get(key, math.inf):
            self._due[key] = at
            self._due_changed.set()

    async def retire_when_due(self) -> None:
        """Run retention again for each group and kind at the moment an archive it held back
        may go (its last URL expired), until cancelled (the service stops). Never raises."""
        while True:
            self._due_changed = trio.Event()
            now = trio.current_time()
            for key in [key for key, at in self._due.items() if at <= now]:
                del self._due[key]
                group, full = key
                await self.retain(group, full=full)
            with trio.move_on_at(min(self._due.values(), default=math.inf)):
                await self._due_changed.wait()

    # -- start-up ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Learn what the bucket holds (its archives: not digests, locks, marks or any other
        key); abort incomplete uploads of this prefix older than ``lock_ttl`` whose file has
        no live lock (their replica died); delete the expired locks and marks of an older
        version (keys without a suffix). Retention of every group and kind found is due (an
        archive held back by a replica that stopped since would wait for the next upload of
        its kind). Never raises."""
        prefix = self.store.prefix
        legacy: list[tuple[str, str]] = []
        try:
            for info in await self.bucket.list_objects(prefix):
                archive = keys.archive_of(prefix, info.key)
                kind = keys.legacy_kind(prefix, info.key) if archive is None else None
                if archive is not None:
                    self._remember(info.key, info)
                    self._schedule(archive.group, archive.full, 0)
                elif kind is not None:
                    legacy.append((info.key, kind))
            aborted = await self._abort_uploads(prefix, only_stale=True)
            expired = [key for key, kind in legacy if await self._expired(key, kind)]
            for key in expired:
                await self.bucket.delete(key)
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
            old_keys_deleted=len(expired),
        )

    async def _expired(self, key: str, kind: str) -> bool:
        """True when the lock (``kind`` "lock") or hand-out mark at ``key`` has expired: a
        lock older than ``lock_ttl``, a mark older than ``direct_serve_ttl`` and the margin
        (on the store's clock)."""
        info, now = await self.bucket.head_dated(key)
        if info is None:
            return False
        if kind == "lock":
            return old_enough(info.last_modified, now, self.store.lock_ttl)
        age = (now - info.last_modified).total_seconds()
        return age >= self.store.direct_serve_ttl + HANDOUT_MARGIN

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
        archive = keys.archive_of(self.store.prefix, key)
        lock, now = None, datetime.now(UTC)
        if archive is not None:  # (anything else has no lock: its age alone decides)
            lock, now = await self.bucket.head_dated(self.lock_key(archive.group, archive.name))
        # An upload's ``Initiated`` is in whole seconds like a lock's date (and ``now`` is our
        # own clock when there is no lock): a young upload must not look a second older.
        ttl = self.store.lock_ttl
        if not old_enough(initiated, now, ttl):
            return False
        return lock is None or old_enough(lock.last_modified, now, ttl)

    async def watch(self, every: float = CHECK_EVERY) -> None:
        """Check the store every ``every`` seconds until cancelled, so that a store that went
        down stops getting clients redirected to it (URLs are reused between calls) and one
        that came back gets them again (:meth:`probe`)."""
        while True:
            try:
                await self.probe()
            except StoreError as exc:
                self._failed("check", exc)
            self.probes += 1
            await trio.sleep(every)

    async def probe(self) -> None:
        """Ask the store whether it serves stored bytes: a GET of the first byte of an
        object this replica knows (the newest first, at most :data:`PROBED` of them: one may
        have been deleted by another replica's retention); the bucket's HEAD when it knows
        none. A HEAD or a listing is not enough: a store that comes back answers those before
        it can read what it stored. Raises StoreError when the store failed."""
        for key in list(reversed(self._known))[:PROBED]:
            if await self.quick.read_first_byte(key):
                return
            self._remember(key, None)
        await self.quick.check()

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
