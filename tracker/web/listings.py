"""Rendered JSON listings, kept until the index changes.

``/v1/snapshots`` of a fleet with 10,000 snapshots is megabytes of JSON: building and
serialising it took tens of milliseconds per request in the event loop, so 16 clients polling
at once queued behind each other for seconds. What a listing says depends only on the index
(its :attr:`~tracker.core.index.Index.generation`), the config in force and the request's
parameters and base URL, so each rendering is kept, keyed by those, until the index changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from tracker.core.index import Index

#: Renderings kept at once (distinct groups, filters and base URLs).
MAX_ENTRIES = 64


class ListingCache:
    """JSON bodies by key, for the current generation of ``index``; see the module doc."""

    def __init__(self, index: Index, max_entries: int = MAX_ENTRIES) -> None:
        self._index = index
        self._max = max_entries
        self._generation = index.generation
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """The body kept for ``key``, or ``render()`` kept for it (least recently used
        renderings go first; all of them when the index changed)."""
        if self._generation != self._index.generation:
            self._bodies.clear()
            self._generation = self._index.generation
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = render()
            if len(self._bodies) > self._max:
                self._bodies.popitem(last=False)
        else:
            self._bodies.move_to_end(key)
        return body
