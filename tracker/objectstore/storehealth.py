"""Whether the object store works: told by every call of the bucket, read by the request
path, the status and the metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from tracker.observability.logs import log_event

log = logging.getLogger("tracker.objectstore")


@attrs.define
class StoreHealth:
    """Whether the store answered its last call; read by the status and metrics
    (``on_change``: told :meth:`reported_up` whenever it changes).

    ``reads_proven``: a GET of an object's bytes worked since the store last failed. A store
    that comes back may answer its metadata (the bucket, HEAD, small writes) before it can
    serve stored bytes (SeaweedFS answers such GETs 500 until its volume servers have
    registered again), so presigned URLs are handed out only once a real GET worked.
    """

    #: Whether requests may ask the store: from the start, before it answered anything
    #: (its first calls tell).
    up: bool = True
    #: The store answered a call since the start: until then it is not reported up
    #: (:meth:`reported_up`), though requests may ask it.
    heard: bool = False
    last_error: str = ""
    on_change: Callable[[bool], None] | None = None
    reads_proven: bool = False
    #: The housekeeping operations the bucket's policy refused (each logged once).
    refused: set[str] = attrs.Factory(set)

    def usable(self) -> bool:
        """True when requests may ask the store (it is up; while it is down only the health
        watcher asks it, and its answer brings it back)."""
        return self.up

    def reported_up(self) -> bool:
        """Up as the metric tells it (``on_change``): the store answered its last call. Not
        before its first answer: a store that never answered (an endpoint that hangs) read
        up on the dashboard and fired no alert (docs/replicas.md, its metrics)."""
        return self.up and self.heard

    def answered(self) -> None:
        if not self.up:
            log_event(log, "info", "object_store_up")
        self._set(True)

    def failed(self, reason: str) -> None:
        if self.up:
            log_event(log, "warning", "object_store_down", reason=reason)
        self.last_error = reason
        self.reads_proven = False
        self._set(False)

    def denied(self, operation: str, reason: str) -> None:
        """The bucket's policy refused a housekeeping call (the store works: that
        housekeeping is skipped); logged the first time of each operation, not at each of
        its calls (every upload, every retention)."""
        if operation not in self.refused:
            self.refused.add(operation)
            log_event(
                log, "warning", "object_store_call_denied", operation=operation, reason=reason
            )

    def read_worked(self) -> None:
        """A GET of an object's bytes worked."""
        self.answered()
        self.reads_proven = True

    def _set(self, up: bool) -> None:
        before = self.reported_up()
        self.up = up
        self.heard = self.heard or up
        if self.on_change is not None and self.reported_up() != before:
            self.on_change(self.reported_up())
