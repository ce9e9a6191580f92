"""Each target's part of a group's ranking, reused between re-rankings, and the order of the
sources of one file (pure; docs/architecture.md, "Packages and their layers": ``ordering.index``).

A round of thousands of targets hands results over several times a second, each time a few
dozen of them new: a target's sources, their ranking keys and its fulls are built once and
kept while nothing about the target changed (:class:`Built`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, info_from_files
from tracker.core.snapshotsources import SnapshotSource, TargetKey


@attrs.frozen
class Entry:
    """What one target reported last: its snapshots, when, and how long its probe took."""

    infos: tuple[SnapshotInfo, ...]
    updated_at: datetime
    latency: float | None = None


def copies_of(
    sources: Iterable[SnapshotSource], name: str
) -> list[tuple[SnapshotFile, SnapshotSource]]:
    """Every source of ``sources`` advertising the archive ``name`` (one per target, with
    its file), best first by :func:`source_order`."""
    found: list[tuple[SnapshotFile, SnapshotSource]] = []
    seen: set[TargetKey] = set()
    for source in sources:
        if source.key in seen:
            continue
        for f in source.info.files:
            if f.bare_name == name:
                found.append((f, source))
                seen.add(source.key)
                break
    found.sort(key=source_order)
    return found


def source_order(found: tuple[SnapshotFile, SnapshotSource]) -> tuple[object, ...]:
    """Sources of one file: a local copy first (no network at all), then the measured
    fastest, the quickest to answer a probe, the most recently scraped, and the target name
    (a stable order for failover; docs/http-api.md#trust)."""
    f, source = found
    latency = source.latency if source.latency is not None else math.inf
    recency = -source.updated_at.timestamp()
    return (not f.path, -source.expected, latency, recency, source.key)


def first(pair: tuple[Any, SnapshotSource]) -> Any:
    """A ranked pair's ranking key (the sort key of ranked pairs)."""
    return pair[0]


@attrs.frozen(eq=False)
class Built:
    """A target's sources with their ranking keys, and what they were built from."""

    entry: Entry
    speed: float
    expected: float
    infos: tuple[SnapshotInfo, ...]
    sources: list[tuple[Any, SnapshotSource]]
    #: Every full archive among them as a source of its own (see :func:`full_sources`).
    fulls: list[tuple[Any, SnapshotSource]]

    @classmethod
    def of(
        cls,
        key: TargetKey,
        entry: Entry,
        speed: float,
        expected: float,
        infos: tuple[SnapshotInfo, ...],
    ) -> Built:
        """Build the sources of ``key`` (and their ranking keys)."""
        made = [
            SnapshotSource(i, key, entry.updated_at, speed, entry.latency, expected) for i in infos
        ]
        sources = sorted(((s.rank_key(), s) for s in made), key=first, reverse=True)
        return cls(entry, speed, expected, infos, sources, full_sources(sources))

    def fits(
        self, entry: Entry, speed: float, expected: float, infos: tuple[SnapshotInfo, ...]
    ) -> bool:
        """True when building again from these would give the same sources."""
        return (
            entry is self.entry
            and speed == self.speed
            and expected == self.expected
            and (infos is self.infos or infos == self.infos)
        )


def full_sources(pairs: list[tuple[Any, SnapshotSource]]) -> list[tuple[Any, SnapshotSource]]:
    """Every full archive advertised by one target's ``pairs`` (best first) as a source of
    its own, with its ranking key (a full's own info is reused as it is; a chain's base gets
    an info of its own)."""
    seen: set[str] = set()
    fulls: list[tuple[Any, SnapshotSource]] = []
    for rank, source in pairs:
        if source.info.is_full:
            name = source.info.files[0].bare_name
            if name not in seen:
                seen.add(name)
                fulls.append((rank, source))
            continue
        for f in source.info.files:
            if f.name.is_full and f.bare_name not in seen:
                seen.add(f.bare_name)
                full = attrs.evolve(source, info=info_from_files([f]))
                fulls.append((full.rank_key(), full))
    return fulls
