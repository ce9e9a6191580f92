"""The in-memory index of what every target holds, ranked best first per group.

Synchronous and free of I/O: the scrape loop feeds it results, the API reads it. Every read
sees a consistent state because trio only switches tasks at ``await``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import attrs

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, info_from_files


@attrs.frozen(order=True)
class TargetKey:
    """A target's stable identity: its group and its display name (URL or path)."""

    group: str
    target: str


@attrs.frozen
class SnapshotSource:
    """A snapshot as one target holds it (the §6 ``snapshot source``)."""

    info: SnapshotInfo
    key: TargetKey
    updated_at: datetime

    def rank_key(self) -> tuple[tuple[int, int, int, bytes], datetime, str]:
        """Ascending ranking key; the best source has the largest key.

        Between sources of the same snapshot the one scraped successfully most recently wins;
        the target name makes the order total (deterministic answers).
        """
        return (self.info.rank_key(), self.updated_at, _reverse(self.key.target))


def _reverse(text: str) -> str:
    # Descending sort of the whole key must list equal-rank targets in ascending name order.
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


@attrs.frozen
class _Entry:
    infos: tuple[SnapshotInfo, ...]
    updated_at: datetime


class Index:
    """Snapshots per target, with ranked views per group."""

    def __init__(self) -> None:
        self._entries: dict[TargetKey, _Entry] = {}
        #: Bumped by every change: what was computed from an older generation is stale.
        self.generation = 0
        self._everything: list[SnapshotSource] | None = None
        self._ranked: dict[str, list[SnapshotSource]] | None = None
        self._fulls: dict[str, list[SnapshotSource]] = {}

    def apply(self, key: TargetKey, infos: Iterable[SnapshotInfo], updated_at: datetime) -> None:
        """Replace everything ``key`` reported before with ``infos``."""
        self._entries[key] = _Entry(tuple(infos), updated_at)
        self._changed()

    def drop(self, key: TargetKey) -> None:
        """Forget a target's snapshots (dead target, or no longer configured)."""
        if self._entries.pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._ranked = self._everything = None
        self.generation += 1

    def keys(self) -> list[TargetKey]:
        """Every target that currently contributes snapshots."""
        return list(self._entries)

    def count(self, key: TargetKey) -> int:
        """How many snapshots ``key`` currently contributes."""
        entry = self._entries.get(key)
        return len(entry.infos) if entry else 0

    def _rank(self) -> dict[str, list[SnapshotSource]]:
        # Ranked lists are rebuilt lazily once per change, not per request: requests far
        # outnumber scrape results.
        if self._ranked is None:
            ranked: dict[str, list[SnapshotSource]] = {}
            for key, entry in self._entries.items():
                group = ranked.setdefault(key.group, [])
                group.extend(SnapshotSource(i, key, entry.updated_at) for i in entry.infos)
            for sources in ranked.values():
                sources.sort(key=SnapshotSource.rank_key, reverse=True)
            self._ranked = ranked
            self._fulls = {group: _full_sources(sources) for group, sources in ranked.items()}
        return self._ranked

    def sources(self, group: str | None = None) -> list[SnapshotSource]:
        """Every source of ``group`` (or of all groups, by group name), best first."""
        ranked = self._rank()
        if group is not None:
            return list(ranked.get(group, ()))
        return [s for name in sorted(ranked) for s in ranked[name]]

    def ranked(self) -> list[SnapshotSource]:
        """Every source of every group, best first (ties: group name, then as in a group).

        Computed once per change, like the groups' own rankings; do not modify the list.
        """
        if self._everything is None:
            everything = self.sources()
            everything.sort(key=SnapshotSource.rank_key, reverse=True)
            self._everything = everything
        return self._everything

    def best_full(self, group: str) -> SnapshotSource | None:
        """The source of the group's highest full snapshot, or None.

        A full counts wherever it is advertised: as an info of its own or as the base of an
        incremental's chain (a sidecar may list only the chain).
        """
        self._rank()
        fulls = self._fulls.get(group)
        return fulls[0] if fulls else None

    def best_incremental(self, group: str) -> SnapshotSource | None:
        """The highest incremental whose base is the best full's slot, or None.

        That is the validator's own rule: a client that fetches both gets a usable pair.
        """
        full = self.best_full(group)
        if full is None:
            return None
        return next(
            (
                s
                for s in self._rank().get(group, ())
                if not s.info.is_full and s.info.base_slot == full.info.slot
            ),
            None,
        )

    def find_file(self, group: str, name: str) -> list[tuple[SnapshotFile, SnapshotSource]]:
        """Every source of ``group`` advertising the archive ``name``, best source first.

        Best is a local copy first (no network at all), then the target scraped successfully
        most recently, then the target name (a stable order for failover).
        """
        found: list[tuple[SnapshotFile, SnapshotSource]] = []
        seen: set[TargetKey] = set()
        for source in self._rank().get(group, ()):
            if source.key in seen:
                continue
            for f in source.info.files:
                if f.bare_name == name:
                    found.append((f, source))
                    seen.add(source.key)
                    break
        found.sort(key=lambda fs: (not fs[0].path, -fs[1].updated_at.timestamp(), fs[1].key))
        return found


def _full_sources(sources: list[SnapshotSource]) -> list[SnapshotSource]:
    """Every full archive advertised by ``sources`` as a source of its own, best first."""
    seen: set[tuple[TargetKey, str]] = set()
    fulls: list[SnapshotSource] = []
    for source in sources:
        for f in source.info.files:
            if f.name.is_full and (source.key, f.bare_name) not in seen:
                seen.add((source.key, f.bare_name))
                info = source.info if source.info.is_full else info_from_files([f])
                fulls.append(SnapshotSource(info, source.key, source.updated_at))
    fulls.sort(key=SnapshotSource.rank_key, reverse=True)
    return fulls
