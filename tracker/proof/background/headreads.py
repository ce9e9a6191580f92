"""Which sources' copies a head read proves next (pure; docs/http-api.md, "Proven
archives", **Redirect mode**).

In redirect mode the tracker never holds the bytes it hands out, but an archive's manifest
comes first in its stream: one bounded read of a copy's head proves it to ``manifest``. The
copies worth that read are those that would be handed out were they proven: the best full
and best incremental a group would rank were every copy proven, from each of their ``top``
best sources (a group that requires a level ranks only proven copies:
:class:`tracker.ordering.screens.ProvenOnly`). A copy proven (or refused) is not read again;
one whose read failed for a reason that is not the archive's (the source busy, unreachable,
an answer that is not the file) waits ``retry_after`` before it is tried again, and the next
source of the archive is read meanwhile. What is remembered of failed reads is bounded
(:func:`failures_kept`). Times are seconds on the caller's one clock, so the rules are tested
as a table.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Set
from math import inf
from typing import TypeVar

import attrs

from tracker.core.snapshots import SourceFile
from tracker.ordering.index import SnapshotSource, TargetKey

#: Copies a group's head reads consider per archive (the best sources of it).
TOP_SOURCES = 3

K = TypeVar("K", bound=Hashable)


@attrs.frozen
class HeadRead(SourceFile):
    """One head read: prove ``file`` as ``source`` holds it."""

    @property
    def copy(self) -> tuple[TargetKey, str]:
        """The copy read: its target and the archive's bare name."""
        return (self.source.key, self.file.bare_name)


def heads_due(
    candidates: Iterable[Iterable[SnapshotSource]],
    *,
    done: Set[tuple[TargetKey, str]],
    tried: Mapping[tuple[TargetKey, str], float],
    retry_after: float,
    now: float,
    top: int = TOP_SOURCES,
) -> list[HeadRead]:
    """The head reads due: for each archive of ``candidates`` (its sources, best first, as
    :func:`tracker.ordering.screens.best_unproven` gives them), its first ``top`` sources over
    the network whose copies are not waiting for a retry: each copy of their chain (an
    incremental's and its target's full) that is neither ``done`` (proven, refused or
    awaiting its votes) nor ``tried`` (a failed read, at that time) within ``retry_after`` of
    ``now``. A source waiting for a retry gives its place to the next one: the archive is
    ranked (and redirected to) only once proven, so another copy of it is read meanwhile."""
    due: list[HeadRead] = []
    seen: set[tuple[TargetKey, str]] = set()
    for sources in candidates:
        counted = 0
        for source in sources:
            if counted >= top:
                break
            copies = [f for f in source.info.files if not f.path]  # a local file: the check's
            if not copies or any(not f.url for f in copies):
                continue  # nothing to read over the network
            waiting = [
                f for f in copies if now - tried.get((source.key, f.bare_name), -inf) < retry_after
            ]
            if any((source.key, f.bare_name) not in done for f in waiting):
                continue  # its read failed lately: the next source instead
            counted += 1
            for f in copies:
                copy = (source.key, f.bare_name)
                if copy not in done and copy not in seen:
                    seen.add(copy)
                    due.append(HeadRead(source, f))
    return due


def failures_kept(
    tried: Mapping[K, float], *, now: float, retry_after: float, most: int
) -> dict[K, float]:
    """What to remember of the failed reads ``tried`` (copy: when its read failed) at
    ``now``: those within ``retry_after`` of it, the newest ``most`` of them.

    A failure older than ``retry_after`` holds its copy back no more (:func:`heads_due` reads
    it as if it never failed), so forgetting it changes no read; kept, it stayed for good
    once its archive moved on (a new incremental every minute is never read again), one
    entry per archive and failing source. ``most`` bounds a burst (thousands of discovered
    nodes refusing connections within ``retry_after``): the oldest go first, and a copy
    forgotten early is at worst read again before its retry is due."""
    held = {copy: at for copy, at in tried.items() if now - at < retry_after}
    if len(held) > most:
        newest = sorted(held.items(), key=lambda item: item[1])  # stable: ties keep order
        held = dict(newest[len(newest) - most :])
    return held
