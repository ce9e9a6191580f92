"""Which sources a speed test reads, and how much of what (pure; docs/http-api.md#speed-tests).

Every candidate that could win the ranking should have a measured speed, so each group's
leading full archives are probed: the ``top`` best distinct sources of a full, each one with
a bounded ``Range`` read of the start of that archive. A source measured within ``interval``
(by a speed test or by a real transfer) is not probed again; a local file has no network to
measure. Times are seconds on the caller's one clock, so the rules are tested as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from tracker.core.snapshots import SnapshotFile, SourceFile
from tracker.ordering.index import SnapshotSource, TargetKey


@attrs.frozen
class Probe(SourceFile):
    """One speed test: read ``length`` bytes from the start of ``file`` of ``source``."""

    length: int

    @property
    def range_header(self) -> str:
        """The ``Range`` request header of the read."""
        return f"bytes=0-{self.length - 1}"


def probes_due(
    fulls: Iterable[SnapshotSource],
    *,
    top: int,
    length: int,
    interval: float,
    last: Mapping[TargetKey, float],
    now: float,
) -> list[Probe]:
    """The speed tests due among a group's ``fulls`` (best first): of the first ``top``
    distinct sources that offer a full archive over the network, those with no measurement
    or probe (``last``: the time of the latest one) within ``interval`` of ``now``."""
    probes: list[Probe] = []
    for source, file in leading(fulls, top):
        then = last.get(source.key)
        if then is not None and now - then < interval:
            continue
        size = file.size
        probes.append(Probe(source, file, min(length, size) if size > 0 else length))
    return probes


def leading(fulls: Iterable[SnapshotSource], top: int) -> list[tuple[SnapshotSource, SnapshotFile]]:
    """The first ``top`` distinct sources of ``fulls`` (best first) with a full archive on
    the network, each with that archive."""
    out: list[tuple[SnapshotSource, SnapshotFile]] = []
    seen: set[TargetKey] = set()
    for source in fulls:
        if len(out) >= top:
            break
        if source.key in seen:
            continue
        file = _remote_full(source.info.files)
        if file is None:
            continue
        seen.add(source.key)
        out.append((source, file))
    return out


def _remote_full(files: Sequence[SnapshotFile]) -> SnapshotFile | None:
    """The first full archive of ``files`` reachable over HTTP (not a local path)."""
    for f in files:
        if f.name.is_full and not f.path and f.url.startswith(("http://", "https://")):
            return f
    return None
