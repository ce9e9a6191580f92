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
from typing import NamedTuple

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


class _Kept(NamedTuple):
    """One object's JSON as kept: the object, what it was rendered for, the JSON; for a JSON
    made of a head and a tail (:meth:`Fragments.split`), the head's and what it was
    rendered for."""

    source: object
    variant: Hashable
    body: bytes
    head_variant: Hashable = None
    head: bytes | None = None


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
        self._new: dict[int, _Kept] = {}
        self._old: dict[int, _Kept] = {}

    def get(self, source: object, variant: Hashable, render: Callable[[], bytes]) -> bytes:
        """The JSON of ``source`` for ``variant``, kept or rendered now."""
        key = id(source)
        kept = self._new.get(key) or self._old.pop(key, None)
        if kept is not None and kept.source is source and kept.variant == variant:
            self._new[key] = kept
            return kept.body
        body = render()
        self._new[key] = _Kept(source, variant, body)
        return body

    def split(
        self,
        source: object,
        variant: Hashable,
        render: Callable[[], bytes],
        tail: Hashable,
        render_tail: Callable[[], bytes],
    ) -> bytes:
        """:meth:`get` of a JSON made of a head (for ``variant``: ``render()``) and a tail
        that changes more often (for ``tail``: ``render_tail()``): a new tail is joined to
        the head kept, which is not rendered again (a target's measured figures age every
        10 s, the rest of its entry changes with its probe)."""
        key = id(source)
        kept = self._new.get(key) or self._old.pop(key, None)
        if kept is None or kept.source is not source:
            kept = None
        elif kept.variant == (variant, tail):
            self._new[key] = kept
            return kept.body
        if kept is not None and kept.head is not None and kept.head_variant == variant:
            head = kept.head
        else:
            head = render()
        body = head + render_tail()
        self._new[key] = _Kept(source, (variant, tail), body, variant, head)
        return body

    def sweep(self) -> None:
        """Forget what was not asked for since the previous sweep."""
        self._old, self._new = self._new, {}
