"""The in-memory index of what every target holds, ranked best first per group, and of what
the tracker itself holds.

Synchronous and free of I/O: the scrape loop feeds it results, the API reads it. Every read
sees a consistent state because trio only switches tasks at ``await``.

**What the tracker holds** (:class:`Holdings`: its disk cache's and its bucket's archives,
per group) is listed, served from where it is held, once no source advertises it any more
(docs/http-api.md, "Kept incrementals"), and its fulls count as served when deciding which
incrementals are kept (:mod:`tracker.ordering.keeping`). The cache and the bucket tell what
they hold after every change: that changes listings (a new :attr:`Index.generation`), not
the ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    SnapshotSource,
    TargetKey,
    info_from_files,
    parse_archive_name,
)
from tracker.core.untrusted import utc_time
from tracker.ordering.keeping import worth_keeping
from tracker.ordering.predict import RankingSettings
from tracker.ordering.ranking import (
    Built,
    Entry,
    RankedPairs,
    TimedGroups,
    bounded,
    copies_by_name,
    first,
)
from tracker.ordering.screens import Screens, SourceTrust
from tracker.ordering.sourcehistory import Kind, Rejections, Throughputs, ranked_at

__all__ = ["Index", "SnapshotSource", "TargetKey"]


class Index:
    """Snapshots per target, with ranked views per group."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: The one clock of measured throughputs: recorded and aged on it (monotonic seconds).
        self.clock = clock
        #: Measured throughputs (read here; changed by the methods below, which re-rank).
        self.speeds = Throughputs(clock)
        self._entries: dict[TargetKey, Entry] = {}
        #: Bumped by every change: what was computed from an older generation is stale.
        self.generation = 0
        self._everything: list[SnapshotSource] | None = None
        self._ranked: dict[str, list[SnapshotSource]] | None = None
        self._keyed: dict[str, list[tuple[Any, SnapshotSource]]] = {}
        self._fulls: dict[str, list[SnapshotSource]] = {}
        #: Each group's trust policy, the cluster's slot, the copies a proof refused or that
        #: a group ranking proven copies only leaves out, and what a re-ranking found of them.
        self._screens = Screens()
        #: Per group ranked by time to running: its settings, its ranked pairs (per change)
        #: and the pair handed out last (docs/ranking.md).
        self._timed = TimedGroups()
        #: Per group, per target: its ranked sources as last built, reused while nothing
        #: about the target changed (a round of thousands of targets re-ranks several times
        #: a second).
        self._built: dict[str, dict[TargetKey, Built]] = {}
        #: What the tracker itself holds (cache, bucket): listed once no source has it.
        self.holdings = Holdings()
        #: Per group: its copies of each archive name, made once per ranking (an archive
        #: request, found or not, does not scan the group's sources).
        self._copies: dict[str, dict[str, list[tuple[SnapshotFile, SnapshotSource]]]] = {}
        #: The copies held back after a failed check (:meth:`hold_back`), and when the
        #: first of those ranked without runs out (the ranking is made again then).
        self._rejections: Rejections | None = None
        self._held_back_until = math.inf
        #: Per target whose last answer the bound cut: how many snapshots it dropped.
        self._trimmed: dict[TargetKey, int] = {}

    def hold(
        self,
        origin: str,
        group: str,
        files: Iterable[tuple[str, int, float]],
        rechecking: Iterable[str] = (),
    ) -> None:
        """``origin`` (``"cache"``, ``"bucket"``) now holds ``files`` (name, bytes, Unix time
        stored) of ``group`` (:class:`~tracker.ordering.index.Holdings`), and ``rechecking``
        (names): copies not listed until their check passed, whose fulls still count as
        served."""
        if self.holdings.put(origin, group, files, rechecking):
            # Listings change (a new generation); the rankings do not: they are built from
            # what the targets advertise, and ``held`` and ``served_fulls`` read the holdings
            # as they are. So a cache's promotion does not make the next request re-rank
            # every group.
            self.generation += 1

    def worth_keeping(self, group: str, name: str) -> bool:
        """Whether ``name`` of ``group``, no longer its best, is still worth storing: an
        incremental the cache keeps for the nodes still on its full
        (:func:`tracker.ordering.keeping.worth_keeping`, against what the tracker holds and
        the fulls still served)."""
        return worth_keeping(name, self.holdings.of(group), self.served_fulls(group))

    def served_fulls(self, group: str) -> set[int]:
        """The slots of ``group``'s fulls still served: advertised by a source (on its own
        or as a chain's base) or held by the tracker."""
        self._rank()
        advertised = {s.info.slot for s in self._fulls.get(group, ())}
        return advertised | self.holdings.full_slots(group)

    def held(self, group: str | None = None) -> list[SnapshotSource]:
        """The archives the tracker holds of ``group`` (or of every group) that no source
        advertises any more, newest first (:func:`tracker.ordering.index.held_sources`)."""
        groups = [group] if group is not None else self.holdings.groups()
        return held_sources(self.holdings, groups, self._copies_of)

    def apply(
        self,
        key: TargetKey,
        infos: Iterable[SnapshotInfo],
        updated_at: datetime,
        latency: float | None = None,
    ) -> None:
        """Replace everything ``key`` reported before with ``infos`` (``latency``: seconds
        the probe took), bounded (:meth:`apply_many`)."""
        self.apply_many([(key, infos, updated_at, latency)])

    def apply_many(
        self, results: Iterable[tuple[TargetKey, Iterable[SnapshotInfo], datetime, float | None]]
    ) -> list[tuple[TargetKey, int]]:
        """:meth:`apply` for several targets at once: the ranking is rebuilt once, not once
        per target (a scrape round of thousands of targets hands results over in batches).

        Each answer is bounded (:func:`tracker.ordering.ranking.bounded`): returned are the
        targets whose answer the bound cut that it did not cut before, with how many
        snapshots it dropped (logged once, not an error: docs/http-api.md, "Snapshot
        sources")."""
        changed = False
        cut: list[tuple[TargetKey, int]] = []
        for key, given, at, latency in results:
            # Every kind of source (sidecar, HTTP, local directory) enters here: one bound.
            infos, dropped = bounded(given)
            if dropped and key not in self._trimmed:
                cut.append((key, dropped))
            if dropped:
                self._trimmed[key] = dropped
            else:
                self._trimmed.pop(key, None)
            if key not in self._entries:
                # a discovered node back: its machine's measurements, kept when dropped
                self.speeds.resume(key)
            # The same answer again is taken too: its time and latency are the sources'
            # `updated_at` and `latency_ms` (the Go tracker's: when it was last scraped).
            self._entries[key] = Entry(infos, at, latency)
            changed = True
        if changed:
            self._changed()
        return cut

    def trimmed(self, key: TargetKey) -> int:
        """How many snapshots of ``key``'s last answer the bound dropped (0: none)."""
        return self._trimmed.get(key, 0)

    def set_policy(self, group: str, policy: SourceTrust) -> None:
        """Use ``policy`` to screen what ``group``'s targets advertise (docs/http-api.md#trust)."""
        if self._screens.policies.get(group) != policy:
            self._screens.policies[group] = policy
            self._changed()

    def set_ranking(self, group: str, ranking: RankingSettings | None) -> None:
        """Rank ``group`` by ``ranking`` (None or ``by: slot``: by slot, docs/ranking.md);
        its measured throughputs age toward its ``assumed_throughput``."""
        prior = ranking.assumed_throughput if ranking is not None else None
        if self._timed.set(group, ranking) | self.speeds.set_prior(group, prior):
            self._changed()

    def set_cluster_slots(self, slots: Mapping[str, int | None]) -> None:
        """Each group's cluster's current slot (from the group's RPC; None or a group not
        in ``slots``: unknown): snapshots far above it are not ranked in that group."""
        known = {group: slot for group, slot in slots.items() if slot is not None}
        if known != self._screens.cluster_slots:
            self._screens.cluster_slots = known
            self._changed()

    def cluster_slot(self, group: str) -> int | None:
        """``group``'s cluster's current slot as last given to :meth:`set_cluster_slots`
        (None: unknown, no RPC for the group or it did not answer)."""
        return self._screens.cluster_slots.get(group)

    def disprove(self, key: TargetKey, name: str, reason: str | None) -> None:
        """``key``'s copy of ``name`` is below its group's level: not ranked (None: it is)."""
        if self._screens.disproven.set(key, name, reason):
            self._changed()

    def disproven(self) -> Mapping[TargetKey, Mapping[str, str]]:
        """The copies :meth:`disprove` keeps out, by target, with the reason, and those a group
        that ranks proven copies only leaves out until proven (the former's reason last)."""
        self._rank()
        return self._screens.refusals

    def rank_proven_only(self, group: str, on: bool, *, local: bool | None = None) -> None:
        """``group`` ranks only the copies :meth:`prove` marks (``on``), or every copy; its
        local files likewise (``local``; None: as they are;
        :class:`tracker.ordering.screens.ProvenOnly`)."""
        gates = self._screens.proven_only
        if gates.gate(group, on) | (local is not None and gates.gate_local(group, local)):
            self._changed()

    def prove(self, key: TargetKey, name: str, proven: bool = True) -> None:
        """``key``'s copy of ``name`` reached its group's level (or no longer counts as such)."""
        if self._screens.proven_only.set(key, name, proven):
            self._changed()

    def unproven_best(self, group: str) -> list[list[SnapshotSource]]:
        """For a group that ranks proven copies only: the sources of the best full and best
        incremental it would rank were every copy proven, best first
        (:func:`tracker.ordering.screens.best_unproven`); empty for any other group."""
        self._rank()
        return self._screens.unproven_best(group)

    def mismatches(self) -> Mapping[TargetKey, str]:
        """Why some of a target's snapshots are not ranked (a lost hash), for every target
        that has one (do not keep: it is replaced on the next change)."""
        self._rank()
        return self._screens.mismatches

    def record_transfer(
        self,
        key: TargetKey,
        size: int,
        seconds: float,
        now: float | None = None,
        *,
        kind: Kind = "achieved",
    ) -> None:
        """A speed test or a real transfer (``kind``) of ``size`` bytes from ``key`` took
        ``seconds``, ended at ``now`` on :attr:`clock` (its reading by default)."""
        if self.speeds.record(key, size, seconds, now, kind):
            self._changed()

    def throughput(self, key: TargetKey, now: float | None = None) -> float:
        """``key``'s figure at ``now`` (:func:`.sourcehistory.combined`); 0: none."""
        return self.speeds.rate(key, now)

    def restore_throughput(self, key: TargetKey, rate: float, at: float, kind: Kind) -> None:
        """Take a throughput (``kind``) measured elsewhere at ``at``, unless ours is newer
        (one of a target listed here is taken however many others were)."""
        if self.speeds.restore(key, rate, at, kind, listed=key in self._entries):
            self._changed()

    def drop(self, key: TargetKey) -> None:
        """Forget a target's snapshots (dead target, or no longer configured); a discovered
        node's measurements wait for its machine (:meth:`.sourcehistory.Throughputs.drop`).

        The marks of its copies (:meth:`prove`, :meth:`disprove`) stay: they are their
        provers' to clear, who would not mark them again should it come back (a proven copy
        held back for good, a local file whose check failed ranked). The head reads forget
        a dropped target's refusals at their next round, and bound what they keep
        (:class:`tracker.proof.background.heads.HeadProofs`); the local files' checks clear
        the marks of a file once it is gone."""
        self.speeds.drop(key)
        self._trimmed.pop(key, None)
        if self._entries.pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._ranked = self._everything = None
        self._timed.changed()
        self.generation += 1

    def keys(self) -> list[TargetKey]:
        """Every target that currently contributes snapshots."""
        return list(self._entries)

    def lists(self, key: TargetKey) -> bool:
        """Whether ``key`` is a target of the index now (a reload that removed it dropped it)."""
        return key in self._entries

    def count(self, key: TargetKey) -> int:
        """How many snapshots ``key`` currently contributes."""
        entry = self._entries.get(key)
        return len(entry.infos) if entry else 0

    def hold_back(self, rejections: Rejections) -> None:
        """Rank without the copies ``rejections`` holds back (a refresh's failed check:
        docs/http-api.md, "Verified archives"), from each rejection until it runs out; a
        request for such an archive still finds them (:meth:`find_file`, last), and its
        answer names the failed check."""
        self._rejections = rejections
        rejections.on_change = self._changed
        self._changed()

    def _rank(self) -> dict[str, list[SnapshotSource]]:
        # Ranked lists are rebuilt lazily once per change, not per request: requests far
        # outnumber scrape results. Each target's part (its sources, ranking keys and fulls)
        # is reused while nothing about it changed: a round of thousands of targets hands
        # results over several times a second, each time a few dozen of them new. Its
        # figures change once a step at most (docs/ranking.md, "Probed and achieved").
        if self._ranked is not None and self.clock() >= self._held_back_until:
            self._changed()  # a rejection ran out: its copy is ranked again
        if self._ranked is None:
            ranked: dict[str, list[SnapshotSource]] = {}
            keyed: dict[str, list[tuple[Any, SnapshotSource]]] = {}
            fulls: dict[str, list[SnapshotSource]] = {}
            self._screens.begin()
            now = self.clock()
            if self._rejections is not None:
                self._screens.rejected, self._held_back_until = self._rejections.in_force(now)
            built: dict[str, dict[TargetKey, Built]] = {}
            # every group's, once, aged to the step's start: an unchanged target's figures,
            # and the median an unmeasured one is priced at, stay until the next step
            speeds = self.speeds.rates(ranked_at(now))
            for group, entries in self._by_group().items():
                typical = self._timed.assumed(group)  # what the prediction prices it at
                if typical is None:  # by slot: as fast as the group's median
                    measured = sorted(v for key, v in speeds.items() if key in entries and v > 0)
                    typical = measured[len(measured) // 2] if measured else 0.0
                screened = self._screens.group(group, entries, speeds, typical)
                before, mine = self._built.get(group, {}), built.setdefault(group, {})
                pairs: list[tuple[Any, SnapshotSource]] = []
                full_pairs: list[tuple[Any, SnapshotSource]] = []
                for key, entry in entries.items():
                    infos = screened.get(key, entry.infos)
                    speed = speeds.get(key, 0.0)
                    done = before.get(key)
                    if done is None or not done.fits(entry, infos):
                        done = Built.of(key, entry, speed, speed or typical, infos)
                    else:  # a new figure (a measurement, the next step): priced anew only
                        done = done.priced(speed, speed or typical)
                    mine[key] = done
                    pairs += done.sources
                    full_pairs += done.fulls
                pairs.sort(key=first, reverse=True)
                keyed[group] = pairs
                ranked[group] = [source for _key, source in pairs]
                full_pairs.sort(key=first, reverse=True)
                fulls[group] = [source for _key, source in full_pairs]
            self._built = built
            self._copies = {}
            self._screens.end()
            self._ranked = ranked
            self._keyed = keyed
            self._fulls = fulls
        return self._ranked

    def _by_group(self) -> dict[str, dict[TargetKey, Entry]]:
        groups: dict[str, dict[TargetKey, Entry]] = {}
        for key, entry in self._entries.items():
            groups.setdefault(key.group, {})[key] = entry
        return groups

    def sources(self, group: str | None = None) -> list[SnapshotSource]:
        """Every source of ``group`` (or of all groups, by group name), best first: a group
        ranked by time in that order (the pair handed out first), with ``group`` or
        without."""
        ranked = self._rank()
        if group is not None:
            return self._in_order(group, ranked)
        return [s for name in sorted(ranked) for s in self._in_order(name, ranked)]

    def _in_order(
        self, group: str, ranked: Mapping[str, Sequence[SnapshotSource]]
    ) -> list[SnapshotSource]:
        timed = self._by_time(group)
        return list(timed.sources if timed is not None else ranked.get(group, ()))

    def ranked(self) -> list[SnapshotSource]:
        """Every source of every group, best first (ties: group name, then as in a group).

        Computed once per change, like the groups' own rankings; do not modify the list.
        """
        if self._everything is None:
            ranked = self._rank()
            if len(ranked) == 1:
                [name] = ranked
                timed = self._by_time(name)
                self._everything = timed.sources if timed is not None else ranked[name]
            else:
                # The kept ranking keys, not rank_key() again: thousands of sources.
                pairs = [pair for name in sorted(self._keyed) for pair in self._keyed[name]]
                pairs.sort(key=first, reverse=True)
                self._everything = [source for _key, source in pairs]
        return self._everything

    def best_full(self, group: str) -> SnapshotSource | None:
        """The source of the group's highest full snapshot, or None.

        A full counts wherever it is advertised: as an info of its own or as the base of an
        incremental's chain (a sidecar may list only the chain).
        """
        self._rank()
        timed = self._by_time(group)
        if timed is not None:
            return timed.full
        fulls = self._fulls.get(group)
        return fulls[0] if fulls else None

    def fulls(self, group: str) -> list[SnapshotSource]:
        """Every source of a full archive of ``group``, best first (as :meth:`best_full`
        ranks them; do not modify the list)."""
        self._rank()
        return self._fulls.get(group, [])

    def best_incremental(self, group: str) -> SnapshotSource | None:
        """The highest incremental whose base is the best full's slot, or None.

        That is the validator's own rule: a client that fetches both gets a usable pair.
        Ranked by time to running: the incremental of the pair handed out.
        """
        timed = self._by_time(group)
        if timed is not None:
            return timed.incremental
        full = self.best_full(group)
        slot = full.info.slot if full is not None else -1  # -1: no incremental's base
        ranked = self._rank().get(group, ())
        return next((s for s in ranked if not s.info.is_full and s.info.base_slot == slot), None)

    def _by_time(self, group: str) -> RankedPairs | None:
        """``group``'s pairs ranked by time to running (None: it ranks by slot), once per
        change (:class:`tracker.ordering.ranking.TimedGroups`)."""
        sources = self._rank().get(group, [])
        return self._timed.pairs(
            group,
            sources,
            self._fulls.get(group, []),
            self.cluster_slot(group),
            self._built.get(group, {}),
        )

    def predicted(self, source: SnapshotSource) -> float | None:
        """The predicted seconds to a running node of ``source``'s pair (None: its group
        ranks by slot, or no size of an archive of the pair is known: docs/ranking.md)."""
        timed = self._by_time(source.key.group)
        return timed.predicted.get(id(source)) if timed is not None else None

    def find_file(self, group: str, name: str) -> list[tuple[SnapshotFile, SnapshotSource]]:
        """Every source of ``group`` advertising the archive ``name``, best source first.

        Best is a local copy first, then as :func:`tracker.ordering.ranking.source_order` says.
        The copies a failed check holds back (:meth:`hold_back`) come last: the answer names
        the failure when no other source is left.
        """
        found = list(self._copies_of(group).get(name, ()))
        if not found:  # no source has it any more: the tracker's own copy, if it holds one
            held = self.holdings.find(group, name)
            if held is not None:
                source = held_source(group, held)
                found = [(source.info.files[0], source)]
        if self._screens.rejected:  # rare: a check rejected
            found += self._held_back_copies(group, name)
        return found

    def _held_back_copies(self, group: str, name: str) -> list[tuple[SnapshotFile, SnapshotSource]]:
        """The copies of ``name`` in ``group`` the ranking leaves out after a failed check:
        the rejected archive itself, and an incremental on a rejected full."""
        found: list[tuple[SnapshotFile, SnapshotSource]] = []
        for key, names in self._screens.rejected.items():
            entry = self._entries.get(key)
            if entry is None or key.group != group:
                continue
            for info in entry.infos:
                files = {f.bare_name: f for f in info.files}
                if name in files and not files.keys().isdisjoint(names):
                    found.append((files[name], SnapshotSource(info, key, entry.updated_at)))
                    break  # one copy per target
        return found

    def _copies_of(self, group: str) -> dict[str, list[tuple[SnapshotFile, SnapshotSource]]]:
        """``group``'s ranked copies by archive name, made once per ranking
        (docs/http-api.md, "Snapshot sources": a request, found or not, costs a lookup, not a
        scan)."""
        ranked = self._rank()
        copies = self._copies.get(group)
        if copies is None:
            copies = self._copies[group] = copies_by_name(ranked.get(group, ()))
        return copies


# What the tracker itself holds.

#: The target name of an archive listed because the tracker holds it (no source has it).
HELD_TARGET = "(held by the tracker)"


@attrs.frozen
class Held:
    """One archive held complete: its file (no ``url``, no ``path``: the tracker serves it
    from where it is held) and when it was stored."""

    file: SnapshotFile
    stored_at: datetime


class Holdings:
    """What each origin (``"cache"``, ``"bucket"``) holds of each group."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], dict[str, Held]] = {}
        #: Per origin and group: the slots of the fulls it holds whose check has not passed
        #: yet (a copy start-up found without a digest): never listed, but still served
        #: fulls, so that the incrementals kept on them stay while a full's recheck runs.
        self._rechecking: dict[tuple[str, str], frozenset[int]] = {}

    def put(
        self,
        origin: str,
        group: str,
        files: Iterable[tuple[str, int, float]],
        rechecking: Iterable[str] = (),
    ) -> bool:
        """``origin`` now holds ``files`` (name, bytes, Unix time stored) of ``group``, and
        ``rechecking`` (names: copies whose check has not passed yet, not listed); names
        that are not canonical archive names are ignored. True when that changed anything."""
        key = (origin, group)
        parsed_rechecking = (parse_archive_name(name) for name in rechecking)
        fulls = frozenset(p.slot for p in parsed_rechecking if p is not None and p.is_full)
        changed = self._rechecking.get(key, frozenset()) != fulls
        if fulls:
            self._rechecking[key] = fulls
        else:
            self._rechecking.pop(key, None)
        held: dict[str, Held] = {}
        for name, size, stored in files:
            parsed = parse_archive_name(name)
            if parsed is None or parsed.file_name != name:
                continue
            when = utc_time(stored)
            held[name] = Held(SnapshotFile(name=parsed, file_name=name, size=size), when)
        if self._held.get(key, {}) == held:
            return changed
        if held:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        return True

    def groups(self) -> list[str]:
        """Every group something is held of (listed or rechecking), by name."""
        return sorted({group for _origin, group in [*self._held, *self._rechecking]})

    def of(self, group: str) -> dict[str, Held]:
        """Every archive held of ``group`` by name (the newest copy when several origins
        hold one)."""
        found: dict[str, Held] = {}
        for (_origin, held_group), held in sorted(self._held.items()):
            if held_group != group:
                continue
            for name, one in held.items():
                if name not in found or one.stored_at > found[name].stored_at:
                    found[name] = one
        return found

    def find(self, group: str, name: str) -> Held | None:
        """:meth:`of` ``group``'s archive ``name`` without listing the others (an archive
        request asks it)."""
        found: Held | None = None
        for origin, held_group in sorted(self._held):
            one = self._held[origin, held_group].get(name) if held_group == group else None
            if one is not None and (found is None or one.stored_at > found.stored_at):
                found = one
        return found

    def full_slots(self, group: str) -> frozenset[int]:
        """The slots of the fulls held of ``group``, those whose check has not passed yet
        too (:meth:`put`)."""
        held = {h.file.name.slot for h in self.of(group).values() if h.file.name.is_full}
        rechecking = (slots for (_o, g), slots in self._rechecking.items() if g == group)
        return frozenset(held.union(*rechecking))


def held_sources(
    holdings: Holdings,
    groups: Iterable[str],
    listed: Callable[[str], Mapping[str, Sequence[tuple[SnapshotFile, SnapshotSource]]]],
) -> list[SnapshotSource]:
    """The archives ``holdings`` has of ``groups`` whose names no source of the group lists
    any more (``listed(group)``: the group's copies by name), newest first, grouped by
    group: each a source of its own (:func:`held_source`), an incremental with the full at
    its base slot when one is held or listed (a listing's entry is the chain down to its
    full, its ``size`` their sum)."""
    out: list[SnapshotSource] = []
    for name in groups:
        advertised, held = listed(name), holdings.of(name)
        fulls = {h.file.name.slot: h.file for h in held.values() if h.file.name.is_full}
        for copies in advertised.values():
            file = copies[0][0] if copies else None
            if file is not None and file.name.is_full:
                fulls.setdefault(file.name.slot, file)
        for archive, one in held.items():
            if archive not in advertised:
                base = None if one.file.name.is_full else fulls.get(one.file.name.base_slot)
                out.append(held_source(name, one, base))
    out.sort(key=lambda s: s.info.rank_key(), reverse=True)
    out.sort(key=lambda s: s.key.group)
    return out


def held_source(group: str, held: Held, full: SnapshotFile | None = None) -> SnapshotSource:
    """An archive the tracker holds of ``group`` as a source of its own: target
    :data:`HELD_TARGET`, its file with neither URL nor path; an incremental's chain with
    ``full``, the full at its base slot, when given."""
    files = [held.file] if full is None else [held.file, full]
    return SnapshotSource(info_from_files(files), TargetKey(group, HELD_TARGET), held.stored_at)
