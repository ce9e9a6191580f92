"""Retention applied to the bucket: which objects go (:mod:`tracker.objectstore.retention`
decides), their deletion, and running it again when an archive held back may go.

An archive handed out less than ``direct_serve_ttl`` (and :data:`HANDOUT_MARGIN`) ago is held
back: every URL of it handed out by any replica expires before ``mark + direct_serve_ttl``,
and :meth:`Retainer.retire_when_due` (one timer task) runs retention again at that moment.
An archive goes with its digest, proof, statement and marks. Before it goes it is marked
retiring (:func:`~tracker.objectstore.keys.retiring_key`) and its hand-out mark read again:
a hand-out writes its mark, then looks for that one, so a URL is never handed out of an
object being deleted (docs/replicas.md).

The listing is also what this replica's memory is held to (docs/replicas.md, "What a
replica remembers"): in a fleet, most archives one replica uploaded or read are deleted by
another's retention, so what the listing shows gone is forgotten (its object, URL, digest
and the statements signed of it: :func:`~tracker.objectstore.retention.gone`), and side
objects left beside an archive that is gone are deleted
(:func:`~tracker.objectstore.retention.stray_sides`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import attrs
import trio

from tracker.config.schema import ObjectStore
from tracker.core.digests import BUCKET, Digests
from tracker.errors import StoreError
from tracker.objectstore import keys
from tracker.objectstore.known import KNOWN_FOR, Known
from tracker.objectstore.retention import (
    clock_ahead,
    gone,
    retirement,
    side_expired,
    stray_sides,
    superseded,
)
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.observability.logs import log_event

if TYPE_CHECKING:
    # not at run time: a tracker without an object store never loads botocore
    from tracker.objectstore.bucket import Bucket

log = logging.getLogger("tracker.objectstore")

#: Slack on top of ``direct_serve_ttl`` before an object handed out may be deleted.
HANDOUT_MARGIN = 5.0
#: Seconds before retention that failed (the store down) is tried again.
RETRY_AFTER = 30.0
#: Groups and kinds whose retention may wait for a URL to expire at once (one entry each).
MAX_DUE = 1024
#: Seconds after this replica learned of an archive (a lookup found it, an upload of its own
#: completed) before retention lists its group and kind again, at most once that often: a
#: replica that seldom uploads there forgets what other replicas' retention deleted too.
LIST_AGAIN = 300.0


def _none_served(_group: str) -> Collection[int]:
    return ()


def _ignore_listed(_group: str, _held: list[tuple[str, int, float]]) -> None:
    pass


@attrs.define(eq=False)
class Retainer:
    """Applies retention to ``bucket`` (of ``store``), keeping ``known`` and ``digests``
    current; ``failed(operation, exc)`` is told of every store failure."""

    store: ObjectStore
    bucket: Bucket
    known: Known
    digests: Digests
    _failed: Callable[[str, StoreError], None]
    #: (group, full) -> when (trio's clock) its retention runs again.
    _due: dict[tuple[str, bool], float] = attrs.field(init=False, factory=dict)
    _due_changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    #: The full slots of a group still served (the index's, set by the service): the
    #: newest incremental on each is kept (:func:`~tracker.objectstore.retention.superseded`).
    served: Callable[[str], Collection[int]] = attrs.field(default=_none_served, init=False)
    #: Told the archives (name, bytes, Unix time stored) of a group the bucket holds
    #: after each retention (the index lists them: :class:`tracker.ordering.index.Holdings`).
    on_listed: Callable[[str, list[tuple[str, int, float]]], None] = attrs.field(
        default=_ignore_listed, init=False
    )

    async def retain(self, group: str, *, full: bool) -> None:
        """Delete ``group``'s objects of one kind beyond the newest ``1 + keep_previous``,
        none handed out less than ``direct_serve_ttl`` (and a margin) ago: those are deleted
        once their last URL has expired (:meth:`retire_when_due` runs this again then). A
        store that fails is asked again :data:`RETRY_AFTER` seconds later."""
        # the bucket's module is loaded with the first bucket, never at this one's import
        from tracker.objectstore.bucket import MAX_LISTED

        prefix = self.store.prefix
        hold = self.store.direct_serve_ttl + HANDOUT_MARGIN
        try:
            # before the listing, never after: what this replica learns meanwhile is newer
            started = trio.current_time()
            listed = await self.bucket.list_objects(keys.archive_key(prefix, group, ""))
            held = {}
            versions: dict[str, str] = {}  # archive key -> its ETag
            kinds: dict[str, bool] = {}  # archive name -> is a full
            sides: dict[str, tuple[str, ObjectInfo]] = {}
            for o in listed:
                archive = keys.archive_of(prefix, o.key)
                side = keys.side_of(prefix, o.key) if archive is None else None
                if archive is not None and archive.group == group:
                    held[archive.name] = (archive.name, o.size, o.last_modified.timestamp())
                    kinds[archive.name] = archive.full
                    versions[o.key] = o.etag
                elif side is not None and side.group == group and side.full == full:
                    sides[o.key] = (side.name, o)
            listed_names = set(held)
            self._forget_replaced(group, versions, started)
            keep = self.store.keep_previous
            old = superseded(held, full=full, keep_previous=keep, served=self.served(group))
            handed = {name: await self._handed_age(group, name) for name in old}
            plan = retirement(handed, hold=hold)
            # Each marked retiring, then its hand-out mark read again: a hand-out writes its
            # mark before it looks for this one, so either it hands no URL out or its mark
            # is read here (a hand-out between the first read and the delete got a URL of a
            # deleted object)
            for name in plan.delete:
                await self.bucket.put(keys.retiring_key(self.store.prefix, group, name), b"")
            again = {name: await self._handed_age(group, name) for name in plan.delete}
            final = retirement(again, hold=hold)
            refused = False
            for name in final.delete:
                try:
                    await self._retire(group, name)
                except StoreError as exc:
                    if not exc.denied:
                        raise
                    refused = True  # the policy keeps it (logged once): the rest goes on
                    continue
                held.pop(name, None)
            for name in held.keys() - set(old):
                # kept after all (a newer one deleted by hand, a restart with more kept):
                # URLs of it are handed out again. Of this kind only: the other kind's
                # marks are its own retention's, which may be deleting that archive now (a
                # retention of fulls took an incremental's mark away, and a hand-out then
                # got a URL of an object deleted a moment later)
                if kinds[name] == full:
                    await self.bucket.tidy(keys.retiring_key(self.store.prefix, group, name))
            # A listing cut at its bound does not show all that is there: nothing is judged
            # gone for not being in it
            if len(listed) < MAX_LISTED:
                self._forget_gone(group, held.keys(), started)
                await self._delete_strays(group, full, listed_names, sides)
            self.on_listed(group, sorted(held.values()))
        except StoreError as exc:
            if not exc.denied:  # a refusal is logged once (the archive's delete refused)
                self._failed("retention", exc)
            self.schedule(group, full, RETRY_AFTER)
            return
        waits = [w for w in (plan.wait, final.wait) if w is not None]
        if refused:  # asked again: a policy changed since deletes it
            waits.append(RETRY_AFTER)
        if waits:
            self.schedule(group, full, min(waits))

    async def _handed_age(self, group: str, name: str) -> float | None:
        """Seconds since a URL of ``name`` was last handed out (on the store's clock, less
        what the replica that handed it out said its clock ran ahead: its URL is valid that
        much longer, :func:`~tracker.objectstore.retention.clock_ahead`), None when it never
        was (the mark of an older version counts too)."""
        ages = []
        for key in self._mark_keys(group, name):
            mark, now = await self.bucket.head_dated(key)
            if mark is not None:
                age = (now - mark.last_modified).total_seconds()
                ages.append(age - clock_ahead(mark.metadata))
        return min(ages, default=None)

    def _mark_keys(self, group: str, name: str) -> tuple[str, str]:
        prefix = self.store.prefix
        return keys.mark_key(prefix, group, name), keys.legacy_mark_key(prefix, group, name)

    async def _retire(self, group: str, name: str) -> None:
        """Delete the archive, then its digest, proof, statement and marks (no error for
        those not there)."""
        key = keys.archive_key(self.store.prefix, group, name)
        await self.bucket.delete(key)
        for other in (
            *keys.side_keys(self.store.prefix, group, name),
            *self._mark_keys(group, name),
            keys.retiring_key(self.store.prefix, group, name),
        ):
            # one the bucket's policy refuses to delete stays: a hand-out mark holds an
            # upload of the name again back at most direct_serve_ttl, a retiring mark has it
            # streamed through the tracker, never handed out
            await self.bucket.tidy(other)
        self.known.forget(key)  # no miss: one a retired archive would stay for good
        self.digests.drop(BUCKET, group, name)
        log_event(log, "info", "object_retired", group=group, file=name)

    def _forget_gone(self, group: str, there: Collection[str], started: float) -> None:
        """Forget what this replica knows of ``group``'s archives that a listing begun at
        ``started`` (trio's clock) shows gone (``there``: the names it shows, less those
        this retention deleted): their objects, URLs and digests, and so the statements
        signed of them (:meth:`~tracker.proof.records.attestations.Attestations.sync` drops
        those of copies no longer held, and nothing is written beside them again). One seen
        less than KNOWN_FOR before the listing began is kept
        (:func:`~tracker.objectstore.retention.gone`)."""
        prefix = self.store.prefix
        seen: dict[str, float | None] = {}
        for key, when in self.known.seen().items():
            archive = keys.archive_of(prefix, key)
            if archive is not None and archive.group == group:
                seen[key] = when
        for held_group, name, holder, _copy in self.digests.held():
            if holder == BUCKET and held_group == group:
                seen.setdefault(keys.archive_key(prefix, group, name), None)
        listed = [keys.archive_key(prefix, group, name) for name in there]
        for key in gone(seen, listed, before=started - KNOWN_FOR):
            self.known.forget(key)
            self.digests.drop(BUCKET, group, key.rsplit("/", 1)[-1])

    def _forget_replaced(self, group: str, versions: dict[str, str], started: float) -> None:
        """Forget what this replica knows of ``group``'s archives that the listing begun at
        ``started`` (trio's clock) shows as another object (``versions``: its ETag of each
        archive key) than the one it learned of before: the digest and proof of other bytes,
        and the statement it signed of its own upload, are never served or written beside
        the new object (docs/replicas.md, "What a replica remembers"); the next look at it
        reads what lies beside it."""
        for key, etag in versions.items():
            if self.known.outdated(key, etag, started):
                self.known.forget(key)
                self.digests.drop(BUCKET, group, key.rsplit("/", 1)[-1])
                why = "listed as another object"
                log_event(log, "info", "object_replaced", key=key, reason=why)

    async def _delete_strays(
        self,
        group: str,
        full: bool,
        listed: Collection[str],
        sides: dict[str, tuple[str, ObjectInfo]],
    ) -> None:
        """Delete the side objects of ``group``'s archives of one kind (``sides``: key ->
        archive name, listed object) whose archive is not in the listing (``listed``: the
        archive names it shows), would be superseded, is still not there when asked again,
        and that were written at least ``lock_ttl`` ago (the store's clock)
        (:func:`~tracker.objectstore.retention.stray_sides`,
        :func:`~tracker.objectstore.retention.side_expired`)."""
        named = {key: name for key, (name, _info) in sides.items()}
        served = self.served(group)
        keep = self.store.keep_previous
        strays = stray_sides(named, listed, full=full, keep_previous=keep, served=served)
        asked: dict[str, tuple[bool, float]] = {}  # by archive name: there?, store's time
        for key in strays:
            name, info = sides[key]
            if name not in asked:
                there, now = await self.bucket.head_dated(
                    keys.archive_key(self.store.prefix, group, name)
                )
                asked[name] = (there is not None, now.timestamp())
            there_now, now_ts = asked[name]
            age = now_ts - info.last_modified.timestamp()
            if side_expired(age, there_now, settle=self.store.lock_ttl):
                await self.bucket.tidy(key)
                log_event(log, "info", "object_side_deleted", key=key)

    def schedule(self, group: str, full: bool, delay: float) -> None:
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
                try:
                    await self.retain(group, full=full)
                except Exception as exc:
                    # the last guard (docs/architecture.md, "Failures"): what no rule names
                    # costs this group and kind one round, asked again as after a store's
                    # failure; a restart of the loop would have lost its schedule
                    log_event(log, "error", "retention_error", group=group, exc_info=exc)
                    self.schedule(group, full, RETRY_AFTER)
            with trio.move_on_at(min(self._due.values(), default=math.inf)):
                await self._due_changed.wait()
