"""Rendered JSON listings, kept until the index changes.

``/v1/snapshots`` of a fleet with 10,000 snapshots is megabytes of JSON: building and
serialising it took tens of milliseconds per request in the event loop, so 16 clients polling
at once queued behind each other for seconds. What a listing says depends only on the index
(its :attr:`~tracker.ordering.index.Index.generation`), the config in force and the request's
parameters and base URL, so each rendering is kept, keyed by those, until the index changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from tracker.ordering.index import Index

#: Renderings kept at once (distinct groups, filters and base URLs).
MAX_ENTRIES = 64


class ListingCache:
    """JSON bodies by key, for the current generation of ``index``; see the module doc."""

    def __init__(self, index: Index, max_entries: int = MAX_ENTRIES) -> None:
        self._index = index
        self._max = max_entries
        self._generation = index.generation
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        #: Each source's JSON, kept across index changes.
        self.fragments = Fragments()

    def get(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """The body kept for ``key``, or ``render()`` kept for it (least recently used
        renderings go first; all of them when the index changed)."""
        if self._generation != self._index.generation:
            self._bodies.clear()
            self._generation = self._index.generation
            self.fragments.sweep()
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = render()
            if len(self._bodies) > self._max:
                self._bodies.popitem(last=False)
        else:
            self._bodies.move_to_end(key)
        return body


class Fragments:
    """The JSON of each source (or target), kept while it is still being asked for.

    The index reuses a target's source objects until something about that target changes,
    so after a change only the changed targets' JSON is rendered again: a listing of
    thousands of sources is then a join of kept fragments (about 40 ms become a few).
    ``variant`` is what else the JSON depends on (base URLs; a mutable object's state).
    Memory stays bounded by the working set: :meth:`sweep` drops what was not asked for
    since the previous sweep. Each entry holds its object, so an id is never reused while
    it is kept.
    """

    def __init__(self) -> None:
        self._new: dict[int, tuple[object, Hashable, bytes]] = {}
        self._old: dict[int, tuple[object, Hashable, bytes]] = {}

    def get(self, source: object, variant: Hashable, render: Callable[[], bytes]) -> bytes:
        """The JSON of ``source`` for ``variant``, kept or rendered now."""
        key = id(source)
        kept = self._new.get(key) or self._old.pop(key, None)
        if kept is not None and kept[0] is source and kept[1] == variant:
            self._new[key] = kept
            return kept[2]
        body = render()
        self._new[key] = (source, variant, body)
        return body

    def sweep(self) -> None:
        """Forget what was not asked for since the previous sweep."""
        self._old, self._new = self._new, {}
