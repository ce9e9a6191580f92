"""What each target of a group may contribute to its ranking (pure; docs/http-api.md#trust,
"Proven archives"): three screens, asked by :meth:`Screens.group` once per group and
re-ranking; what a re-ranking found (the targets whose hash lost, the copies left out with
their reasons, what a group that ranks proven copies only would rank were every copy proven)
is kept until the next one.

**Trust** (:func:`screen`, from the group's :class:`SourceTrust`; its tallies kept between
re-rankings by :class:`Agreement`, which weighs again only what changed). What a source says is
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
from collections.abc import Hashable, Mapping
from typing import Any, Protocol, TypeVar

import attrs

from tracker.core.hosts import party_of, voice_of
from tracker.core.snapshots import (
    MIN_DISCOVERED_AGREEING,
    SnapshotFile,
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


#: An archive as the trust screen tells them apart: (is a full, slot, hash).
_Archive = tuple[bool, int, str]
#: A slot of one kind (is a full, slot): where hashes compete.
_Slot = tuple[bool, int]
#: A snapshot's state as agreement counts it, whichever kind lists it: (slot, hash).
_State = tuple[int, str]
#: An archive under one name: (is a full, slot, hash, extension). Its size and its bytes
#: are the name's: each name only discovered nodes list needs as many voices as a state.
_Name = tuple[bool, int, str, str]


@attrs.frozen
class Screened:
    """What may be ranked, per target, and why the others were held back."""

    #: What each target holding something held back may contribute; a target not listed
    #: keeps all it advertises.
    infos: dict[TargetKey, tuple[SnapshotInfo, ...]]
    #: Targets advertising a hash that lost, with the reason shown in ``/v1/targets``.
    mismatches: dict[TargetKey, str]


class Listing(Protocol):
    """What one target advertises (:class:`tracker.ordering.ranking.Entry`)."""

    @property
    def infos(self) -> tuple[SnapshotInfo, ...]: ...


@attrs.frozen
class _Advertised:
    """A listing given as it is (:func:`screen`)."""

    infos: tuple[SnapshotInfo, ...]


def screen(
    advertised: Mapping[TargetKey, tuple[SnapshotInfo, ...]],
    policy: SourceTrust,
    cluster_slot: int | None = None,
) -> Screened:
    """Screen what each target advertises (its URL or path: its key's ``target``; a
    discovered node: its key's ``discovered``).

    A snapshot is identified by the (slot, hash) of every file of its chain: an incremental
    is ranked only when its own and its full's pass. Its agreeing holders and its trust are
    those of the (slot, hash), whichever kind each holder lists (after SIMD-0220 a full and
    an incremental of one slot carry the same hash: the same state). Hashes compete within
    a kind, fulls with fulls and incrementals with incrementals: before SIMD-0220 an
    incremental was named by the accounts changed since its base, so a full and an
    incremental of one slot carry two hashes and neither is a liar. A target holding hashes
    that lost is marked with the slot of the one listed first (by the targets in their
    order). Pure: :class:`Agreement`, which keeps its tallies between re-rankings, made
    afresh.
    """
    agreement = Agreement()
    agreement.update({key: _Advertised(infos) for key, infos in advertised.items()}, policy)
    return agreement.screened(cluster_slot)


@attrs.frozen(eq=False)
class _Holder:
    """One target's part of the tallies: what it lists, whose voice it is, whether a known
    source, the archives and states it holds."""

    infos: tuple[SnapshotInfo, ...]
    voice: Hashable
    known: bool
    archives: frozenset[_Archive]
    states: frozenset[_State]
    names: frozenset[_Name]


class Agreement:
    """The trust screen of one group (:func:`screen`): who holds each archive and each
    state, and how many voices, known sources and configured targets among them, kept
    between re-rankings. A round of thousands of discovered nodes hands results over
    several times a second, each time a few dozen of them new: :meth:`update` changes the
    tallies of the targets whose listing changed, and :meth:`screened` weighs the archives
    (a handful in a healthy cluster), not every node's listing again (half of a re-rank of
    3,000 nodes; bench/README.md, "The re-rank with speeds measured")."""

    def __init__(self) -> None:
        self._reset(SourceTrust())

    def _reset(self, policy: SourceTrust) -> None:
        """Forget every target; screen by ``policy``."""
        self._policy = policy
        self._holders: dict[TargetKey, _Holder] = {}
        #: Each configured target's party (its host; an IPv6 one's /48, one carrying an
        #: IPv4 address that address: :func:`~tracker.core.hosts.party_of`), with the first
        #: configured key there (in the order the targets are given): a discovered node in
        #: it is that target's voice (its 6to4 form was a second one).
        self._configured: dict[str, TargetKey] = {}
        self._discovered = 0  # how many discovered nodes
        self._of_archive: dict[_Archive, set[TargetKey]] = {}
        #: Per archive and per state: its holders' voices (value: how many holders).
        self._archive_voices: dict[_Archive, Counter[Hashable]] = {}
        self._state_voices: dict[_State, Counter[Hashable]] = {}
        #: Per state: how many configured targets hold it, how many known sources; per
        #: archive, how many configured targets or known sources (its own vouchers).
        self._state_configured: Counter[_State] = Counter()
        self._archive_vouched: Counter[_Archive] = Counter()
        self._state_known: Counter[_State] = Counter()
        #: Per name: who lists it, their voices, how many configured targets or known
        #: sources (its vouchers), as per archive.
        self._of_name: dict[_Name, set[TargetKey]] = {}
        self._name_voices: dict[_Name, Counter[Hashable]] = {}
        self._name_vouched: Counter[_Name] = Counter()
        #: Per slot of a kind: how many hashes are listed there.
        self._hashes: Counter[_Slot] = Counter()
        self._done: tuple[int | None, Screened] | None = None
        self._listings: Mapping[TargetKey, Listing] = {}

    def update(self, listings: Mapping[TargetKey, Listing], policy: SourceTrust) -> None:
        """The group's targets now advertise ``listings`` (in the index's order: the first
        configured target on a host is its voice), screened by ``policy``."""
        if policy.known_sources != self._policy.known_sources:  # who is known changed
            self._reset(policy)
        elif policy != self._policy:  # the agreement needed, the slots ahead: weighed anew
            self._policy, self._done = policy, None
        holders = self._holders
        # one pass of identity checks: a batch of a round changes a few dozen targets of
        # thousands; the same answer again is an equal listing, kept as the one compared
        # by identity from then on
        changed: list[TargetKey] = []
        for key, listing in listings.items():
            held = holders.get(key)
            if held is None:
                changed.append(key)
            elif listing.infos is not held.infos:
                if listing.infos == held.infos:
                    holders[key] = attrs.evolve(held, infos=listing.infos)
                else:
                    changed.append(key)
        new = sum(1 for key in changed if key not in holders)
        if len(holders) + new != len(listings):
            gone = [key for key in holders if key not in listings]
        else:
            gone = []
        if any(not key.discovered for key in (*changed, *gone)):
            configured: dict[str, TargetKey] = {}
            for key in listings:
                if not key.discovered:
                    configured.setdefault(party_of(voice_of(key.target)), key)
            if configured != self._configured:  # a discovered node's voice may change
                self._reset(policy)
                holders, changed, gone = self._holders, list(listings), []
                self._configured = configured
        for key in gone:
            self._count(key, holders.pop(key), -1)
        for key in changed:
            old = holders.get(key)
            if old is not None:
                self._count(key, old, -1)
            held = holders[key] = self._holder(key, listings[key].infos)
            self._count(key, held, 1)
        self._listings = listings

    def _holder(self, key: TargetKey, infos: tuple[SnapshotInfo, ...]) -> _Holder:
        """``key``'s part of the tallies, listing ``infos``.

        Whose word its listing is, as agreement and majorities count it: a discovered
        node's is its host's (:func:`~tracker.core.hosts.voice_of`: one machine with several
        gossip identities, its RPC port under several spellings or on several ports, is one
        voice), or a configured target's in its party (the machine whose sidecar the
        operator listed is not a second voice by its gossip RPC, under any form of its
        address); of an IPv6 host, its
        /48's (:func:`~tracker.core.hosts.party_of`: one site's addresses, as many as it
        likes); a configured target's its own, as the operator listed it."""
        voice: Hashable = key
        if key.discovered:
            party = party_of(voice_of(key.target))
            voice = self._configured.get(party, party)
        names = frozenset(_name(f) for info in infos for f in info.files)
        archives = frozenset(name[:3] for name in names)
        states = frozenset((slot, hash_) for _full, slot, hash_ in archives)
        known = is_known(key.target, self._policy.known_sources)
        return _Holder(infos, voice, known, archives, states, names)

    def _count(self, key: TargetKey, held: _Holder, sign: int) -> None:
        """Count ``held``, ``key``'s part, in (``sign`` 1) or out (-1) of the tallies."""
        self._done = None
        self._discovered += sign if key.discovered else 0
        for archive in held.archives:
            listed = _listed(
                self._of_archive,
                self._archive_voices,
                self._archive_vouched,
                archive,
                key,
                held,
                sign,
            )
            if listed == (1 if sign > 0 else 0):  # a hash listed, or no longer
                _tally(self._hashes, archive[:2], sign)
        for name in held.names:
            _listed(self._of_name, self._name_voices, self._name_vouched, name, key, held, sign)
        for state in held.states:
            _tally(self._state_voices.setdefault(state, Counter()), held.voice, sign)
            if not self._state_voices[state]:
                del self._state_voices[state]
            if not key.discovered:
                _tally(self._state_configured, state, sign)
            if held.known:
                _tally(self._state_known, state, sign)

    def screened(self, cluster_slot: int | None) -> Screened:
        """What each target may contribute with the cluster at ``cluster_slot`` (None:
        unknown); the same answer while neither the targets, the policy nor the slot
        changed (do not modify it)."""
        if self._done is not None and self._done[0] == cluster_slot:
            return self._done[1]
        winners = self._winners()
        ahead = self._policy.max_slot_ahead
        lost: set[_Archive] = set()  # a hash that lost to another at its slot
        passed: set[_Archive] = set()
        for archive in self._of_archive:
            is_full, slot, hash_ = archive
            if winners.get((is_full, slot)) != hash_:
                if self._hashes[(is_full, slot)] > 1:  # alone at its slot it lost to no other
                    lost.add(archive)
                continue
            if cluster_slot is not None and slot > cluster_slot + ahead:
                continue
            passed.add(archive)  # a winner is eligible
        # A name of a passing archive only discovered nodes list, none of them known, needs
        # as many of them as a state: its size is the name's, so one node listing a vouched
        # archive under another extension, at a size it alone stated (1 KB), made it the
        # fastest to a running node, and the group's best (docs/http-api.md#trust).
        unvouched = self._unvouched_names()
        # Only the targets holding something that did not pass are filtered: in a healthy
        # cluster that is none of thousands.
        affected = {
            key
            for archive, keys in self._of_archive.items()
            if archive not in passed
            for key in keys
        }
        affected.update(key for name in unvouched for key in self._of_name.get(name, ()))
        kept: dict[TargetKey, tuple[SnapshotInfo, ...]] = {}
        losing: dict[TargetKey, list[_Archive]] = {}
        for key in affected:
            held = self._holders[key]
            kept[key] = tuple(
                i
                for i in held.infos
                if all(_archive(f) in passed and _name(f) not in unvouched for f in i.files)
            )
            if lost_here := [archive for archive in held.archives if archive in lost]:
                losing[key] = lost_here
        first = self._first_listed(
            {a for found in losing.values() if len(found) > 1 for a in found}
        )
        mismatches = {
            key: f"hash mismatch at slot {min(found, key=lambda a: first.get(a, 0))[1]}"
            for key, found in losing.items()
        }
        self._done = (cluster_slot, Screened(kept, mismatches))
        return self._done[1]

    def _first_listed(self, archives: set[_Archive]) -> dict[_Archive, int]:
        """Where each of ``archives`` is first listed, in the order of the targets given,
        each one's infos and files: of a target's hashes that lost, the first listed so is
        the slot its mark names. Rare (a target that lost at two slots): a scan."""
        found: dict[_Archive, int] = {}
        for listing in self._listings.values() if archives else ():
            for info in listing.infos:
                for f in info.files:
                    if (archive := _archive(f)) in archives:
                        found.setdefault(archive, len(found))
            if len(found) == len(archives):
                break
        return found

    def _need_discovered(self) -> int:
        """How many voices an archive or a name only discovered nodes hold needs."""
        return max(self._policy.min_agreeing_sources, MIN_DISCOVERED_AGREEING)

    def _unvouched_names(self) -> set[_Name]:
        """The names only discovered nodes list, none of them known, with fewer voices
        than :meth:`_need_discovered` (none while no node is discovered)."""
        if not self._discovered:
            return set()
        need = self._need_discovered()
        return {
            name
            for name, voices in self._name_voices.items()
            if not self._name_vouched[name] and len(voices) < need
        }

    def _winners(self) -> dict[_Slot, str]:
        """The hash that wins at each slot of each kind: the trusted state's, else the
        strict majority's of that kind (its holders' voices counted) among the eligible
        states: trusted, or held by ``min_agreeing_sources`` voices, and by at least
        :data:`~tracker.core.snapshots.MIN_DISCOVERED_AGREEING` when only discovered nodes
        hold it; an archive (a kind's) only discovered nodes hold, none of them known, by
        as many of them."""
        need = self._policy.min_agreeing_sources
        need_discovered = self._need_discovered()
        # a state that could never be ranked (one discovered node's alone) neither wins
        # nor ties a slot: one node listing every slot under another hash left nothing ranked
        eligible = {
            state
            for state, voices in self._state_voices.items()
            if self._state_known[state]
            or len(voices)
            >= (need_discovered if self._discovered and not self._state_configured[state] else need)
        }
        by_slot: dict[_Slot, list[tuple[str, int, bool]]] = defaultdict(list)
        for archive, voices in self._archive_voices.items():
            is_full, slot, hash_ = archive
            if (
                self._discovered
                and not self._archive_vouched[archive]
                and len(voices) < need_discovered
            ):
                # An archive only discovered nodes hold needs as many of them as a state
                # they alone hold: a state the other kind vouches for (a full and an
                # incremental ending at one slot share its hash) made one node's full of
                # it, at a size it alone stated, the group's newest (docs/http-api.md#trust).
                continue
            if (slot, hash_) in eligible:
                trusted = bool(self._state_known[(slot, hash_)])
                by_slot[(is_full, slot)].append((hash_, len(voices), trusted))
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


def _archive(f: SnapshotFile) -> _Archive:
    """The archive ``f`` is, as the trust screen tells them apart."""
    return (f.name.is_full, f.name.slot, f.name.hash)


def _name(f: SnapshotFile) -> _Name:
    """The archive ``f`` is under its name (its extension)."""
    return (f.name.is_full, f.name.slot, f.name.hash, f.name.ext)


_Item = TypeVar("_Item", _Archive, _Name)


def _listed(
    listers: dict[_Item, set[TargetKey]],
    voices: dict[_Item, Counter[Hashable]],
    vouched: Counter[_Item],
    item: _Item,
    key: TargetKey,
    held: _Holder,
    sign: int,
) -> int:
    """Count ``key`` (its part ``held``) in (``sign`` 1) or out (-1) of who lists ``item``
    (an archive, or one of its names), their voices and its vouchers (configured targets,
    known sources); how many targets list it now."""
    keys = listers.setdefault(item, set())
    if sign > 0:
        keys.add(key)
    else:
        keys.discard(key)
    count = len(keys)
    if not keys:
        del listers[item]
    _tally(voices.setdefault(item, Counter()), held.voice, sign)
    if not voices[item]:
        del voices[item]
    if not key.discovered or held.known:
        _tally(vouched, item, sign)
    return count


def _tally(counts: Counter[Any], key: Any, sign: int) -> None:
    """Add ``sign`` to ``counts[key]``, which goes once at 0 (a count is never kept at 0:
    how many keys a tally has is how many voices)."""
    counts[key] += sign
    if not counts[key]:
        del counts[key]


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
        #: Per group: its trust screen's tallies, kept between re-rankings.
        self._agreements: dict[str, Agreement] = {}
        self._screened: set[str] = set()

    def begin(self) -> None:
        """A re-ranking starts: forget what the last one found."""
        self.mismatches, self._pending, self._unproven = {}, {}, {}
        self._screened = set()

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
        agreement = self._agreements.setdefault(group, Agreement())
        agreement.update(entries, self.policies.get(group, SourceTrust()))
        self._screened.add(group)
        trusted = agreement.screened(self.cluster_slots.get(group))
        self.mismatches.update(trusted.mismatches)
        screened = dict(trusted.infos)  # the screens below leave more out: a copy
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
        refusal after "not proven yet": the last one is what a target's line shows); the
        tallies of a group no longer ranked go."""
        for group in self._agreements.keys() - self._screened:
            del self._agreements[group]
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
