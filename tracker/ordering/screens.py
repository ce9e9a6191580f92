"""What each target of a group may contribute to its ranking (pure; docs/http-api.md#trust,
"Proven archives"): the group's trust in its sources and the cluster's slot
(:mod:`tracker.ordering.trustscreen`), the copies a proof refused (:class:`Disproven`) and, in a
group that ranks proven copies only, the copies not proven yet
(:mod:`tracker.ordering.provenonly`).

The index asks :meth:`Screens.group` once per group and re-ranking; what a re-ranking found
(the targets whose hash lost, the copies left out with their reasons, what a group that ranks
proven copies only would rank were every copy proven) is kept until the next one.
"""

from __future__ import annotations

from collections.abc import Mapping

from tracker.core.snapshots import SnapshotInfo
from tracker.core.snapshotsources import SnapshotSource, TargetKey
from tracker.ordering.provenonly import ProvenOnly, best_unproven
from tracker.ordering.rankparts import Entry
from tracker.ordering.trustscreen import SourceTrust, needs_screening, screen

#: A target of a group that ranks proven copies only, as it would rank were every copy
#: proven: its entry, its speed, its expected speed and what it may contribute.
Unproven = tuple[TargetKey, Entry, float, float, tuple[SnapshotInfo, ...]]


class Disproven:
    """The copies a proof showed below their group's level, kept out of the ranking, by
    target, each with its reason (docs/architecture.md, "Proven archives").

    A copy is one target's copy of one archive: another target's copy of the same name may
    be fine (archives of one slot and hash made by different nodes are different bytes). A
    chain that needs a refused copy goes with it: an incremental is of no use without its
    full."""

    def __init__(self) -> None:
        self._held: dict[TargetKey, dict[str, str]] = {}

    def set(self, key: TargetKey, name: str, reason: str | None) -> bool:
        """``key``'s copy of ``name`` is refused for ``reason`` (None: it is not);
        True when that changed anything."""
        held = self._held.get(key, {})
        if held.get(name) == reason:
            return False
        if reason is None:
            held.pop(name, None)
        else:
            held[name] = reason
        if held:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        return True

    def view(self) -> Mapping[TargetKey, Mapping[str, str]]:
        """Every refused copy, by target, with its reason (do not modify)."""
        return self._held

    def screen(
        self,
        infos: Mapping[TargetKey, tuple[SnapshotInfo, ...]],
        kept: dict[TargetKey, tuple[SnapshotInfo, ...]],
    ) -> None:
        """Drop from ``kept`` (what each target may contribute; a target not in it keeps
        all of ``infos``) every info whose chain holds a refused copy of that target."""
        for key, names in self._held.items():  # few: only copies a proof refused
            if key in infos:
                mine = kept.get(key, infos[key])
                kept[key] = tuple(i for i in mine if not any(f.bare_name in names for f in i.files))


class Screens:
    """Every group's screens, and what the last re-ranking found."""

    def __init__(self) -> None:
        self.policies: dict[str, SourceTrust] = {}
        #: The cluster's current slot (None: unknown): snapshots far above it are not ranked.
        self.cluster_slot: int | None = None
        #: Copies a proof showed below their group's level: never ranked.
        self.disproven = Disproven()
        #: Groups that rank proven copies only, and the copies proven.
        self.proven_only = ProvenOnly()
        #: Found by the last re-ranking (replaced by the next one: do not keep).
        self.mismatches: dict[TargetKey, str] = {}
        self.refusals: Mapping[TargetKey, Mapping[str, str]] = {}
        self._pending: dict[TargetKey, dict[str, str]] = {}
        self._unproven: dict[str, list[Unproven]] = {}

    def begin(self) -> None:
        """A re-ranking starts: forget what the last one found."""
        self.mismatches, self._pending, self._unproven = {}, {}, {}

    def group(
        self,
        group: str,
        entries: dict[TargetKey, Entry],
        speeds: Mapping[TargetKey, float],
        typical: float,
    ) -> dict[TargetKey, tuple[SnapshotInfo, ...]]:
        """What each target of ``group`` (its ``entries``) may contribute to the ranking (a
        target not in the answer: all it advertises); ``speeds`` and ``typical`` (the group's
        median) are kept with what it would rank were every copy proven."""
        policy = self.policies.get(group, SourceTrust())
        screened = _screen(entries, policy, self.cluster_slot, self.mismatches)
        if self.disproven.view():  # rare: only copies a proof refused
            self.disproven.screen({k: e.infos for k, e in entries.items()}, screened)
        if self.proven_only.gates(group):  # only where a level is required
            if self.proven_only.reads_heads(group):  # redirect mode
                self._unproven[group] = [
                    (key, e, speeds.get(key, 0.0), speeds.get(key, 0.0) or typical, infos)
                    for key, e in entries.items()
                    for infos in [screened.get(key, e.infos)]
                ]
            infos = {key: e.infos for key, e in entries.items()}
            self._pending.update(self.proven_only.screen(infos, screened))
        return screened

    def end(self) -> None:
        """A re-ranking ended: every copy left out, by target, with its reason (a proof's
        refusal after "not proven yet": the last one is what a target's line shows)."""
        refused, pending = self.disproven.view(), self._pending
        if not pending:  # the common case: nothing to merge
            self.refusals = refused
            return
        both = {*pending, *refused}
        self.refusals = {k: {**pending.get(k, {}), **refused.get(k, {})} for k in both}

    def unproven_best(self, group: str) -> list[list[SnapshotSource]]:
        """:func:`tracker.ordering.provenonly.best_unproven` of what ``group`` would rank were
        every copy proven, as the last re-ranking found it (empty: not such a group)."""
        made = [
            SnapshotSource(i, key, entry.updated_at, speed, entry.latency, expected)
            for key, entry, speed, expected, infos in self._unproven.get(group, ())
            for i in infos
        ]
        return best_unproven(made)


def _screen(
    entries: dict[TargetKey, Entry],
    policy: SourceTrust,
    cluster_slot: int | None,
    mismatches: dict[TargetKey, str],
) -> dict[TargetKey, tuple[SnapshotInfo, ...]]:
    """What each target of a group may contribute to the ranking by its trust ``policy``
    (docs/http-api.md#trust); the targets whose hash lost go into ``mismatches``."""
    discovered = {key for key in entries if key.discovered}
    if not needs_screening(policy, cluster_slot, bool(discovered)):
        return {}  # trust everything: nothing to screen (the common, fast path)
    advertised = {key: (entry.infos, key.target) for key, entry in entries.items()}
    screened = screen(advertised, policy, cluster_slot, discovered)
    mismatches.update(screened.mismatches)
    return screened.infos
