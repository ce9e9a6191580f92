"""Which advertised snapshots may be ranked at all (docs/http-api.md#trust). Pure.

What a source says is data, not authority. A (slot, hash) advertised by a *known source*
(``trust.known_sources``) is trusted; otherwise it is ranked only once ``min_agreeing_sources``
distinct targets advertise it, and at least
:data:`~tracker.core.snapshotsources.MIN_DISCOVERED_AGREEING` when only
discovered nodes (cluster discovery: addresses from the network) advertise it, so that one node
alone never wins whatever the config says. When targets advertise different hashes for one
slot, the trusted hash wins, else the one most targets advertise (ties: none wins), and every
target advertising another hash is marked (``hash mismatch at slot N``). With the cluster's
current slot known, a snapshot more than ``max_slot_ahead`` slots above it is never ranked: a
node advertising a bogus slot cannot win.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Set
from typing import Generic, TypeVar

import attrs

from tracker.core.snapshots import SnapshotInfo
from tracker.core.snapshotsources import MIN_DISCOVERED_AGREEING, is_known


@attrs.frozen
class SourceTrust:
    """A group's trust in its sources, from its ``trust`` settings (the defaults trust
    everything)."""

    known_sources: frozenset[str] = frozenset()
    min_agreeing_sources: int = 1
    max_slot_ahead: int = 100


K = TypeVar("K", bound=Hashable)


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
    is ranked only when its own (slot, hash) and its full's pass.
    """
    holders: dict[tuple[int, str], set[K]] = defaultdict(set)
    trusted: set[tuple[int, str]] = set()
    for key, (infos, target) in advertised.items():
        known = is_known(target, policy.known_sources)
        for info in infos:
            for f in info.files:
                pair = (f.name.slot, f.name.hash)
                holders[pair].add(key)
                if known:
                    trusted.add(pair)
    winners = _winners(holders, trusted)
    mismatches: dict[K, str] = {}
    passed: set[tuple[int, str]] = set()
    for pair, keys in holders.items():
        slot = pair[0]
        if winners.get(slot) != pair[1]:
            for key in keys:
                mismatches.setdefault(key, f"hash mismatch at slot {slot}")
            continue
        if cluster_slot is not None and slot > cluster_slot + policy.max_slot_ahead:
            continue
        if pair in trusted or len(keys) >= _agreeing(policy, keys, discovered):
            passed.add(pair)
    # Only the targets holding something that did not pass are filtered: in a healthy
    # cluster that is none of thousands.
    affected = {key for pair, keys in holders.items() if pair not in passed for key in keys}
    kept = {
        key: tuple(
            info
            for info in advertised[key][0]
            if all((f.name.slot, f.name.hash) in passed for f in info.files)
        )
        for key in affected
    }
    return Screened(kept, mismatches)


def needs_screening(policy: SourceTrust, cluster_slot: int | None, discovered: bool) -> bool:
    """False when :func:`screen` would pass everything: the default policy, no cluster slot
    and no discovered node among the targets."""
    return policy != SourceTrust() or cluster_slot is not None or discovered


def _agreeing(policy: SourceTrust, holders: set[K], discovered: Set[K]) -> int:
    """How many distinct holders a (slot, hash) that is not trusted needs."""
    if discovered and holders <= discovered:
        return max(policy.min_agreeing_sources, MIN_DISCOVERED_AGREEING)
    return policy.min_agreeing_sources


def _winners(
    holders: Mapping[tuple[int, str], set[K]], trusted: set[tuple[int, str]]
) -> dict[int, str]:
    """The hash that wins at each slot: the trusted one, else the strict majority's."""
    by_slot: dict[int, list[tuple[str, int, bool]]] = defaultdict(list)
    for (slot, hash_), keys in holders.items():
        by_slot[slot].append((hash_, len(keys), (slot, hash_) in trusted))
    winners: dict[int, str] = {}
    for slot, candidates in by_slot.items():
        known = [h for h, _n, is_trusted in candidates if is_trusted]
        if len(known) == 1:
            winners[slot] = known[0]
            continue
        if len(known) > 1:
            continue  # known sources disagree: nothing at this slot is ranked
        candidates.sort(key=lambda c: c[1], reverse=True)
        if len(candidates) == 1 or candidates[0][1] > candidates[1][1]:
            winners[slot] = candidates[0][0]
    return winners
