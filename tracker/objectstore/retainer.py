"""Retention applied to the bucket: which objects go (:mod:`tracker.objectstore.retention`
decides), their deletion, and running it again when an archive held back may go.

An archive handed out less than ``direct_serve_ttl`` (and :data:`HANDOUT_MARGIN`) ago is held
back: every URL of it handed out by any replica expires before ``mark + direct_serve_ttl``,
and :meth:`Retainer.retire_when_due` (one timer task) runs retention again at that moment.
An archive goes with its digest, proof, statement and marks. Before it goes it is marked
retiring (:func:`~tracker.objectstore.keys.retiring_key`) and its hand-out mark read again:
a hand-out writes its mark, then looks for that one, so a URL is never handed out of an
object being deleted (docs/replicas.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection

import attrs
import trio

from tracker.config.schema import ObjectStore
from tracker.core.digests import Digests
from tracker.errors import StoreError
from tracker.objectstore import keys
from tracker.objectstore.bucket import Bucket
from tracker.objectstore.known import Known
from tracker.objectstore.retention import clock_ahead, retirement, superseded
from tracker.observability.logs import log_event

log = logging.getLogger("tracker.objectstore")

#: Slack on top of ``direct_serve_ttl`` before an object handed out may be deleted.
HANDOUT_MARGIN = 5.0
#: Seconds before retention that failed (the store down) is tried again.
RETRY_AFTER = 30.0
#: Groups and kinds whose retention may wait for a URL to expire at once (one entry each).
MAX_DUE = 1024


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
        prefix = self.store.prefix
        hold = self.store.direct_serve_ttl + HANDOUT_MARGIN
        try:
            listed = await self.bucket.list_objects(keys.archive_key(prefix, group, ""))
            held = {}
            for o in listed:
                archive = keys.archive_of(prefix, o.key)
                if archive is not None and archive.group == group:
                    held[archive.name] = (archive.name, o.size, o.last_modified.timestamp())
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
            for name in final.delete:
                await self._retire(group, name)
                held.pop(name, None)
            for name in held.keys() - set(old):
                # kept after all (a newer one deleted by hand, a restart with more kept):
                # URLs of it are handed out again
                await self.bucket.delete(keys.retiring_key(self.store.prefix, group, name))
            self.on_listed(group, sorted(held.values()))
        except StoreError as exc:
            self._failed("retention", exc)
            self.schedule(group, full, RETRY_AFTER)
            return
        waits = [w for w in (plan.wait, final.wait) if w is not None]
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
            await self.bucket.delete(other)
        self.known.remember(key, None)
        if self.known.drop_sum(key):
            self.digests.drop("bucket", group, name)
        log_event(log, "info", "object_retired", group=group, file=name)

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
