"""Groups that rank proven copies only, and where their head reads start (pure;
docs/architecture.md, "Proven archives"; docs/http-api.md, "Proven archives").

In redirect mode a group that requires a level above ``structure`` ranks (lists, redirects
to) a copy only once a head read proved it there: until then the copy is out, with the
reason :data:`NOT_YET`. A copy is one target's copy of one archive, and a chain needs each of
its copies: an incremental ranks once its own copy and its target's copy of its full are
proven. A local file (a ``local`` target: the tracker's own disk, never read over the
network) is held back in every mode by a group that gates its local files
(:meth:`ProvenOnly.gate_local`, :mod:`tracker.proof.records.localcopies`): its check, not a head
read, proves it, with the reason :data:`tracker.proof.records.localcopies.NOT_YET`. Which copies a
head read proves next is chosen from what would rank were every copy proven
(:func:`best_unproven`), not from the ranking that leaves them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracker.core.snapshots import SnapshotInfo
from tracker.core.snapshotsources import SnapshotSource, TargetKey
from tracker.ordering.rankparts import first, full_sources, source_order
from tracker.proof.records.localcopies import NOT_YET as LOCAL_NOT_YET

#: Why a copy of a group that ranks proven copies only is out while its proof is awaited.
NOT_YET = "not proven yet: ranked once a head read proves it to trust.require"


def _switch(members: set[str], member: str, on: bool) -> bool:
    """Put ``member`` in ``members`` (``on``) or take it out; True when that changed them
    (the index re-ranks only then)."""
    if (member in members) == on:
        return False
    if on:
        members.add(member)
    else:
        members.discard(member)
    return True


class ProvenOnly:
    """The groups that rank proven copies only (every copy, or their local files only), and
    the copies proven, by target."""

    def __init__(self) -> None:
        self._groups: set[str] = set()
        self._local: set[str] = set()
        self._proven: dict[TargetKey, set[str]] = {}

    def gate_local(self, group: str, on: bool) -> bool:
        """``group`` ranks its local files once proven only (``on``; in either mode), or
        every local file; True when that changed."""
        return _switch(self._local, group, on)

    def reads_heads(self, group: str) -> bool:
        """Whether ``group`` ranks only the copies a head read proved (redirect mode)."""
        return group in self._groups

    def gate(self, group: str, on: bool) -> bool:
        """``group`` ranks proven copies only (``on``) or every copy; True when that changed."""
        return _switch(self._groups, group, on)

    def gates(self, group: str) -> bool:
        """Whether ``group`` holds back any copy not proven (over the network, or local)."""
        return group in self._groups or group in self._local

    def set(self, key: TargetKey, name: str, proven: bool) -> bool:
        """``key``'s copy of ``name`` is proven (or no longer); True when that changed what
        a group that ranks proven copies only ranks."""
        names = self._proven.get(key, set())
        if (name in names) == proven:
            return False
        if proven:
            names.add(name)
            self._proven[key] = names
        else:
            names.discard(name)
            if not names:
                self._proven.pop(key, None)
        return key.group in self._groups or key.group in self._local

    def screen(
        self,
        infos: Mapping[TargetKey, tuple[SnapshotInfo, ...]],
        kept: dict[TargetKey, tuple[SnapshotInfo, ...]],
    ) -> dict[TargetKey, dict[str, str]]:
        """Drop from ``kept`` (what each target of a gated group may contribute; a target not
        in it keeps all of ``infos``) every info whose chain holds a gated copy not proven
        (a copy over the network where the group reads heads, a local file where it gates
        them); the copies left out, by target, with why (:data:`NOT_YET`,
        :data:`tracker.proof.records.localcopies.NOT_YET`)."""
        pending: dict[TargetKey, dict[str, str]] = {}
        for key, advertised in infos.items():
            proven = self._proven.get(key, set())
            remote, local = key.group in self._groups, key.group in self._local
            mine = kept.get(key, advertised)
            ranked = []
            for info in mine:
                missing = {
                    f.bare_name: LOCAL_NOT_YET if f.path else NOT_YET
                    for f in info.files
                    if (local if f.path else remote) and f.bare_name not in proven
                }
                if missing:
                    pending.setdefault(key, {}).update(missing)
                else:
                    ranked.append(info)
            if len(ranked) != len(mine):
                kept[key] = tuple(ranked)
        return pending


def best_unproven(sources: list[SnapshotSource]) -> list[list[SnapshotSource]]:
    """The sources of the best full (by slot, whatever the group's ranking) and of the best
    incremental on it that ``sources`` (a group's, before any copy is held back for want of
    a proof) would rank, each archive's
    best source first (as :meth:`tracker.ordering.index.Index.find_file` orders them): where the
    head reads of a group that ranks proven copies only start."""
    by_target: dict[TargetKey, list[tuple[Any, SnapshotSource]]] = {}
    for s in sources:
        by_target.setdefault(s.key, []).append((s.rank_key(), s))
    ranked = [
        p
        for pairs in by_target.values()
        for p in full_sources(sorted(pairs, key=first, reverse=True))
    ]
    fulls = [s for _key, s in sorted(ranked, key=first, reverse=True)]
    if not fulls:
        return []
    full = fulls[0].info.files[0].bare_name
    found = [_holders(fulls, full)]
    slot = fulls[0].info.slot
    increments = [s for s in sources if not s.info.is_full and s.info.base_slot == slot]
    if increments:
        best = max(increments, key=SnapshotSource.rank_key).info.files[0].bare_name
        found.append(_holders(increments, best))
    return found


def _holders(sources: list[SnapshotSource], name: str) -> list[SnapshotSource]:
    """The sources of ``sources`` whose archive is ``name``, best first, one per target."""
    holders: dict[TargetKey, SnapshotSource] = {}
    for s in sources:
        if s.info.files[0].bare_name == name:
            holders.setdefault(s.key, s)
    return sorted(holders.values(), key=lambda s: source_order((s.info.files[0], s)))
