"""What each target of a group may contribute to its ranking (pure; docs/http-api.md#trust,
"Proven archives"): three screens, asked by :meth:`Screens.group` once per group and
re-ranking; what a re-ranking found (the targets whose hash lost, the copies left out with
their reasons, what a group that ranks proven copies only would rank were every copy proven)
is kept until the next one.

**Trust** (:func:`screen`, from the group's :class:`SourceTrust`). What a source says is
data, not authority. A (slot, hash) advertised by a *known source* (``trust.known_sources``)
is trusted; otherwise it is ranked only once ``min_agreeing_sources`` distinct targets
advertise it, and at least :data:`~tracker.core.snapshots.MIN_DISCOVERED_AGREEING` when only
discovered nodes (cluster discovery: addresses from the network) advertise it, so that one
node alone never wins whatever the config says. Discovered nodes count as their hosts (one
machine with several gossip identities is one voice; an IPv6 one's /48 is one host). When
targets advertise different hashes for one slot, the trusted hash wins, else the one most
targets advertise (ties: none wins), and every target advertising another hash is marked
(``hash mismatch at slot N``). With the cluster's current slot known, a snapshot more than
``max_slot_ahead`` slots above it is never ranked: a node advertising a bogus slot cannot
win.

**Refused by a proof** (:class:`Disproven`): the copies a proof showed below their group's
level.

**Proven only** (:class:`ProvenOnly`, docs/architecture.md, "Proven archives"). In redirect
mode a group that requires a level above ``structure`` ranks (lists, redirects to) a copy
only once a head read proved it there: until then the copy is out, with the reason
:data:`NOT_YET`. A copy is one target's copy of one archive, and a chain needs each of its
copies: an incremental ranks once its own copy and its target's copy of its full are proven.
A local file (a ``local`` target: the tracker's own disk, never read over the network) is
held back in every mode by a group that gates its local files (:meth:`ProvenOnly.gate_local`,
:mod:`tracker.proof.records.localcopies`): its check, not a head read, proves it, with the
reason :data:`tracker.proof.records.localcopies.NOT_YET`. Which copies a head read proves
next is chosen from what would rank were every copy proven (:func:`best_unproven`), not from
the ranking that leaves them out.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Set
from typing import Any, Generic, TypeVar

import attrs

from tracker.core.hosts import party_of, voice_of
from tracker.core.snapshots import (
    MIN_DISCOVERED_AGREEING,
    SnapshotInfo,
    SnapshotSource,
    TargetKey,
    is_known,
)
from tracker.ordering.ranking import Entry, first, full_sources, source_order
from tracker.proof.records.localcopies import NOT_YET as LOCAL_NOT_YET

# The trust in a group's sources.


@attrs.frozen
class SourceTrust:
    """A group's trust in its sources, from its ``trust`` settings (the defaults trust
    everything)."""

    known_sources: frozenset[str] = frozenset()
    min_agreeing_sources: int = 1
    max_slot_ahead: int = 100


K = TypeVar("K", bound=Hashable)

#: An archive as the trust screen tells them apart: (is a full, slot, hash).
_Archive = tuple[bool, int, str]
#: A slot of one kind (is a full, slot): where hashes compete.
_Slot = tuple[bool, int]


@attrs.frozen
class Screened(Generic[K]):
    """What may be ranked, per target, and why the others were held back."""

    #: What each target holding something held back may contribute; a target not listed
    #: keeps all it advertises.
    infos: dict[K, tuple[SnapshotInfo, ...]]
    #: Targets advertising a hash that lost, with the reason shown in ``/v1/targets``.
    mismatches: dict[K, str]


def screen(
    advertised: Mapping[K, tuple[tuple[SnapshotInfo, ...], str]],
    policy: SourceTrust,
    cluster_slot: int | None = None,
    discovered: Set[K] = frozenset(),
) -> Screened[K]:
    """Screen what each target (key → (infos, its target URL or path)) advertises;
    ``discovered``: the keys of discovered nodes.

    A snapshot is identified by the (slot, hash) of every file of its chain: an incremental
    is ranked only when its own and its full's pass. Its agreeing holders and its trust are
    those of the (slot, hash), whichever kind each holder lists (after SIMD-0220 a full and
    an incremental of one slot carry the same hash: the same state). Hashes compete within
    a kind, fulls with fulls and incrementals with incrementals: before SIMD-0220 an
    incremental was named by the accounts changed since its base, so a full and an
    incremental of one slot carry two hashes and neither is a liar (as
    :func:`hashes_disagree` counts them).
    """
    holders: dict[_Archive, set[K]] = defaultdict(set)
    agreeing: dict[tuple[int, str], set[K]] = defaultdict(set)
    trusted: set[tuple[int, str]] = set()
    for key, (infos, target) in advertised.items():
        known = is_known(target, policy.known_sources)
        for info in infos:
            for f in info.files:
                pair = (f.name.slot, f.name.hash)
                holders[(f.name.is_full, *pair)].add(key)
                agreeing[pair].add(key)
                if known:
                    trusted.add(pair)
    voices = _voices({key: target for key, (_infos, target) in advertised.items()}, discovered)
    # a (slot, hash) that could never be ranked (one discovered node's alone) neither wins
    # nor ties a slot: one node listing every slot under another hash left nothing ranked
    eligible = {
        pair
        for pair, pooled in agreeing.items()
        if pair in trusted
        or len({voices[key] for key in pooled}) >= _agreeing(policy, pooled, discovered)
    }
    winners = _winners(holders, trusted, voices, eligible)
    hashes = Counter((is_full, slot) for is_full, slot, _hash in holders)
    mismatches: dict[K, str] = {}
    passed: set[_Archive] = set()
    for archive, keys in holders.items():
        is_full, slot, hash_ = archive
        if winners.get((is_full, slot)) != hash_:
            if hashes[(is_full, slot)] > 1:  # alone at its slot it lost to no other hash
                for key in keys:
                    mismatches.setdefault(key, f"hash mismatch at slot {slot}")
            continue
        if cluster_slot is not None and slot > cluster_slot + policy.max_slot_ahead:
            continue
        passed.add(archive)  # a winner is eligible
    # Only the targets holding something that did not pass are filtered: in a healthy
    # cluster that is none of thousands.
    affected = {key for archive, keys in holders.items() if archive not in passed for key in keys}
    kept = {
        key: tuple(
            info
            for info in advertised[key][0]
            if all((f.name.is_full, f.name.slot, f.name.hash) in passed for f in info.files)
        )
        for key in affected
    }
    return Screened(kept, mismatches)


def needs_screening(
    policy: SourceTrust, cluster_slot: int | None, discovered: bool, disagree: bool
) -> bool:
    """False when :func:`screen` would pass everything: the default policy, no cluster slot,
    no discovered node among the targets and no slot listed with two hashes (``disagree``:
    :func:`hashes_disagree`; one liar's hash at a slot must not be ranked over the
    majority's, nor its full paired with their incremental)."""
    return policy != SourceTrust() or cluster_slot is not None or discovered or disagree


def hashes_disagree(infos: Iterable[Iterable[SnapshotInfo]]) -> bool:
    """True when two fulls (or two incrementals) of the archives listed (each target's
    ``infos``) have one slot and two hashes: a full and an incremental of one slot may
    (before SIMD-0220 an incremental was named by the accounts changed since its base).
    Pure."""
    seen: dict[tuple[bool, int], str] = {}
    for listed in infos:
        for info in listed:
            for f in info.files:
                kind = (f.name.is_full, f.name.slot)
                if seen.setdefault(kind, f.name.hash) != f.name.hash:
                    return True
    return False


def _voices(targets: Mapping[K, str], discovered: Set[K]) -> dict[K, Hashable]:
    """Whose word each target's listing is, as agreement and majorities count it: a
    discovered node's is its host's (:func:`~tracker.core.hosts.voice_of`: one machine with
    several gossip identities, its RPC port under several spellings or on several ports, is
    one voice), or a configured target's on that host (the machine whose sidecar the
    operator listed is not a second voice by its gossip RPC); of an IPv6 host, its /48's
    (:func:`~tracker.core.hosts.party_of`: one site's addresses, as many as it likes);
    a configured target's its own, as the operator listed it."""
    configured: dict[Hashable, K] = {}
    for key, target in targets.items():
        if key not in discovered:
            configured.setdefault(voice_of(target), key)
    voices: dict[K, Hashable] = {}
    for key, target in targets.items():
        if key in discovered:
            host = voice_of(target)
            voices[key] = configured.get(host, party_of(host))
        else:
            voices[key] = key
    return voices


def _agreeing(policy: SourceTrust, holders: set[K], discovered: Set[K]) -> int:
    """How many distinct holders a (slot, hash) that is not trusted needs."""
    if discovered and holders <= discovered:
        return max(policy.min_agreeing_sources, MIN_DISCOVERED_AGREEING)
    return policy.min_agreeing_sources


def _winners(
    holders: Mapping[_Archive, set[K]],
    trusted: set[tuple[int, str]],
    voices: Mapping[K, Hashable],
    eligible: set[tuple[int, str]],
) -> dict[_Slot, str]:
    """The hash that wins at each slot of each kind: the trusted (slot, hash), else the
    strict majority's of that kind (its holders' ``voices`` counted) among the ``eligible``
    (those that have the agreement they need)."""
    by_slot: dict[_Slot, list[tuple[str, int, bool]]] = defaultdict(list)
    for archive, keys in holders.items():
        is_full, slot, hash_ = archive
        if (slot, hash_) not in eligible:
            continue
        heard = len({voices[key] for key in keys})
        by_slot[(is_full, slot)].append((hash_, heard, (slot, hash_) in trusted))
    winners: dict[_Slot, str] = {}
    for where, candidates in by_slot.items():
        known = [h for h, _n, is_trusted in candidates if is_trusted]
        if len(known) == 1:
            winners[where] = known[0]
            continue
        if len(known) > 1:
            continue  # known sources disagree: nothing at this slot is ranked
        candidates.sort(key=lambda c: c[1], reverse=True)
        if len(candidates) == 1 or candidates[0][1] > candidates[1][1]:
            winners[where] = candidates[0][0]
    return winners


# Groups that rank proven copies only.

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


# Every screen of every group.

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
        leave_out(self._held, infos, kept)


def leave_out(
    copies: Mapping[TargetKey, Mapping[str, str]],
    infos: Mapping[TargetKey, tuple[SnapshotInfo, ...]],
    kept: dict[TargetKey, tuple[SnapshotInfo, ...]],
) -> None:
    """Drop from ``kept`` (what each target may contribute; a target not in it keeps all of
    ``infos``) every info whose chain holds one of ``copies`` (by target, names) of that
    target: an incremental is of no use without its full."""
    for key, names in copies.items():  # few: only copies refused
        if key in infos:
            mine = kept.get(key, infos[key])
            kept[key] = tuple(i for i in mine if not any(f.bare_name in names for f in i.files))


class Screens:
    """Every group's screens, and what the last re-ranking found."""

    def __init__(self) -> None:
        self.policies: dict[str, SourceTrust] = {}
        #: Each group's cluster's current slot (a group not in it: unknown): snapshots far
        #: above it are not ranked in that group. By group, never one for all: groups may
        #: be different clusters (mainnet, testnet), each at its own height.
        self.cluster_slots: dict[str, int] = {}
        #: Copies a proof showed below their group's level: never ranked.
        self.disproven = Disproven()
        #: Copies whose refresh failed its check, held back for ``reject_for``: not ranked
        #: meanwhile (a source whose newest archive is bad must not keep the fleet's short
        #: redirects on it), still offered to a request for the archive (its answer names
        #: the failed check). Set by each re-ranking.
        self.rejected: Mapping[TargetKey, Mapping[str, str]] = {}
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
        screened = _screen(entries, policy, self.cluster_slots.get(group), self.mismatches)
        if self.disproven.view():  # rare: only copies a proof refused
            self.disproven.screen({k: e.infos for k, e in entries.items()}, screened)
        if self.rejected:  # rare: only copies a check rejected
            leave_out(self.rejected, {k: e.infos for k, e in entries.items()}, screened)
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
        """:func:`best_unproven` of what ``group`` would rank were
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
    disagree = hashes_disagree(entry.infos for entry in entries.values())
    if not needs_screening(policy, cluster_slot, bool(discovered), disagree):
        return {}  # trust everything: nothing to screen (the common, fast path)
    advertised = {key: (entry.infos, key.target) for key, entry in entries.items()}
    screened = screen(advertised, policy, cluster_slot, discovered)
    mismatches.update(screened.mismatches)
    return screened.infos
