"""Which sources' copies a head read proves next (pure; docs/architecture.md, "Proven
archives", "Redirect mode").

In redirect mode the tracker never holds the bytes it hands out, but an archive's manifest
comes first in its stream: one bounded read of a copy's head proves it to ``manifest``. The
copies worth that read are those that could be handed out now: the group's best full and
best incremental, from each of their ``top`` best sources. A copy proven (or refused) is not
read again; one whose read failed for a reason that is not the archive's (the source busy,
unreachable, an answer that is not the file) waits ``retry_after`` before it is tried again.
Times are seconds on the caller's one clock, so the rules are tested as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

import attrs

from tracker.core.index import SnapshotSource, TargetKey
from tracker.core.snapshots import SnapshotFile

#: Copies a group's head reads consider per archive (the best sources of it).
TOP_SOURCES = 3


@attrs.frozen
class HeadRead:
    """One head read: prove ``file`` as ``source`` holds it."""

    source: SnapshotSource
    file: SnapshotFile

    @property
    def key(self) -> TargetKey:
        """The target whose copy is read."""
        return self.source.key

    @property
    def copy(self) -> tuple[TargetKey, str]:
        """The copy read: its target and the archive's bare name."""
        return (self.source.key, self.file.bare_name)


def heads_due(
    candidates: Iterable[Iterable[tuple[SnapshotFile, SnapshotSource]]],
    *,
    done: Set[tuple[TargetKey, str]],
    tried: Mapping[tuple[TargetKey, str], float],
    retry_after: float,
    now: float,
    top: int = TOP_SOURCES,
) -> list[HeadRead]:
    """The head reads due: for each archive of ``candidates`` (its sources, best first, as
    :meth:`tracker.core.index.Index.find_file` gives them), its first ``top`` sources over
    the network whose copy is neither ``done`` (proven or refused) nor ``tried`` (a failed
    read, at that time) within ``retry_after`` of ``now``."""
    due: list[HeadRead] = []
    for sources in candidates:
        for file, source in list(sources)[:top]:
            copy = (source.key, file.bare_name)
            if file.path or not file.url or copy in done:
                continue
            then = tried.get(copy)
            if then is not None and now - then < retry_after:
                continue
            due.append(HeadRead(source, file))
    return due
