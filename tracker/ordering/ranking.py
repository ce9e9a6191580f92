"""A group's ranking (docs/ranking.md). Pure.

**Each target's part**, bounded (:func:`bounded`), reused between re-rankings
(:class:`Built`), and the order of the sources of one file (:func:`copies_of`, and
:func:`copies_by_name` for every file of a group at once). A round of thousands of targets
hands results over several times a second, each time a few dozen of them new: a target's
sources, their ranking keys and its fulls are built once and kept while nothing about the
target changed, and priced anew, not built again, when only its figures did (measured ones
change once a step of ``sourcehistory.AGING_STEP`` at most: docs/ranking.md, "Probed and
achieved").

**Pairs by the predicted time to a running node** (:class:`TimedGroups`). Each source of the
group is a pair: a full alone, or an incremental with its full (the one in its chain, else
the full at its base slot that downloads fastest). Every archive is downloaded from its
fastest source (measured throughput, else ``assumed_throughput``: one rule,
:func:`tracker.ordering.predict.priced_throughput`), and
:func:`tracker.ordering.predict.predicted_seconds` prices the pair. The pair handed out (short
redirects, status page, first in ``/v1/best_snapshots``) moves only when another beats it by
``switch_margin`` (:func:`choose_pair`: the full by the margin, the best pair on it). What
each archive is priced at is kept between re-rankings and changed by the targets that
changed (:class:`tracker.ordering.pricing.ArchivePrices`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    SnapshotSource,
    TargetKey,
    info_from_files,
)
from tracker.ordering.predict import RankingSettings, choose, predicted_seconds
from tracker.ordering.pricing import ArchivePrices, PairKey

# Each target's part of the ranking.


@attrs.frozen
class Entry:
    """What one target reported last: its snapshots, when, and how long its probe took."""

    infos: tuple[SnapshotInfo, ...]
    updated_at: datetime
    latency: float | None = None


#: What one target contributes at most (docs/http-api.md, "Snapshot sources"): its newest
#: :data:`MAX_FULLS` fulls by slot, each with its incrementals, and :data:`MAX_INFOS` snapshots
#: in all. A validator keeps a handful (agave's defaults: 2 fulls, 4 incrementals), an archive
#: host a few more; past that a listing only costs: one sidecar's answer of 10,000 entries
#: (5.4 MB) made every re-rank, listing and archive request of the tracker pay for all of
#: them, for snapshots no node would choose over the newest.
MAX_FULLS = 8
MAX_INFOS = 64


def bounded(infos: Iterable[SnapshotInfo]) -> tuple[tuple[SnapshotInfo, ...], int]:
    """``infos`` once each (a sidecar repeating an entry lists one snapshot), bounded to what
    one target contributes (:data:`MAX_FULLS`, :data:`MAX_INFOS`), in their own order; and
    how many distinct snapshots the bound dropped. The fulls kept are the newest
    :data:`MAX_FULLS` slots that are a full or an incremental's base; of their snapshots the
    fulls come first, then the newest incrementals, up to :data:`MAX_INFOS` (ties by slot,
    base slot and hash: the same answer in any order keeps the same snapshots). Pure."""
    distinct = tuple(dict.fromkeys(infos))
    bases = {i.base_slot for i in distinct}  # a full's base slot is its own
    if len(distinct) <= MAX_INFOS and len(bases) <= MAX_FULLS:
        return distinct, 0
    newest = set(sorted(bases, reverse=True)[:MAX_FULLS])
    ours = [i for i in distinct if i.base_slot in newest]
    ours.sort(key=lambda i: (i.is_full, i.slot, i.base_slot, i.hash), reverse=True)
    kept = {id(i) for i in ours[:MAX_INFOS]}
    out = tuple(i for i in distinct if id(i) in kept)
    return out, len(distinct) - len(out)


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


def copies_by_name(
    sources: Iterable[SnapshotSource],
) -> dict[str, list[tuple[SnapshotFile, SnapshotSource]]]:
    """:func:`copies_of` for every archive ``sources`` list, found in one pass: made once per
    ranking and looked up per archive request, so that a request does not scan every source
    of its group (nor a miss every listed name). A plain dict, not a class of its own: the
    request path stays as short as it was (bench/routepath.py)."""
    # As copies_of: per name, the first source of each target (in ``sources``' order) with
    # its first file of that name; ordered by source_order, a stable sort.
    found: dict[str, dict[TargetKey, tuple[SnapshotFile, SnapshotSource]]] = {}
    for source in sources:
        for f in source.info.files:
            of_name = found.setdefault(f.bare_name, {})
            if source.key not in of_name:
                of_name[source.key] = (f, source)
    return {name: sorted(of_name.values(), key=source_order) for name, of_name in found.items()}


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

    def fits(self, entry: Entry, infos: tuple[SnapshotInfo, ...]) -> bool:
        """True when building again from these would give the same sources, but for their
        figures (:meth:`priced`)."""
        return entry is self.entry and (infos is self.infos or infos == self.infos)

    def priced(self, speed: float, expected: float) -> Built:
        """These sources at a new ``speed`` and ``expected`` (itself when they are the same):
        not made from the infos nor sorted again, as :meth:`of` would make them. One target's
        sources share their figures, so their order among themselves stays."""
        if speed == self.speed and expected == self.expected:
            return self
        again: dict[int, SnapshotSource] = {}  # a full is in both lists: one source still

        def repriced(pair: tuple[Any, SnapshotSource]) -> tuple[Any, SnapshotSource]:
            (info_key, _expected, *rest), old = pair
            new = again.get(id(old))
            if new is None:
                new = SnapshotSource(
                    old.info, old.key, old.updated_at, speed, old.latency, expected
                )
                again[id(old)] = new
            return (info_key, expected, *rest), new

        sources = [repriced(pair) for pair in self.sources]
        fulls = [repriced(pair) for pair in self.fulls]
        return Built(self.entry, speed, expected, self.infos, sources, fulls)


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


# A group's pairs by the predicted time to a running node.


@attrs.frozen(eq=False)
class RankedPairs:
    """A group's sources, the pair handed out first then by predicted seconds; the
    prediction of each source (by ``id``, for as long as ``sources`` holds it; none for a
    pair with an archive no size is known of, nor typical of its kind)."""

    sources: list[SnapshotSource]
    predicted: dict[int, float]
    chosen: PairKey | None = None
    full: SnapshotSource | None = None
    incremental: SnapshotSource | None = None


def rank_pairs(
    sources: list[SnapshotSource],
    fulls: list[SnapshotSource],
    tip: int,
    ranking: RankingSettings,
    held: PairKey | None,
    prices: ArchivePrices | None = None,
) -> RankedPairs:
    """Rank ``sources`` (best first by slot) by their pair's predicted seconds; ``fulls``
    are the group's full archives as sources (best first), ``tip`` the cluster's slot and
    ``held`` the pair handed out before. ``prices``: the group's archives priced, updated
    with ``sources``' targets (kept between re-rankings: :class:`TimedGroups`); without it
    they are priced here."""
    if prices is None:
        prices = ArchivePrices()
        by_target: dict[TargetKey, _Listing] = {}
        for s in sources:
            by_target.setdefault(s.key, _Listing([])).sources.append((None, s))
        prices.update(by_target, ranking)
    prices.base_fulls(fulls, ranking)  # the pairs of incrementals listed without their full
    # Each pair's sources, in the order of ``sources``: one pass, not a sort of thousands.
    pair_of = prices.pair_of
    of_pair: dict[PairKey | None, list[SnapshotSource]] = {}
    for s in sources:
        key = pair_of[id(s)]
        found = of_pair.get(key)
        if found is None:
            of_pair[key] = [s]
        else:
            found.append(s)
    costs: dict[PairKey | None, float] = {None: math.inf}
    unpriced: set[PairKey] = set()
    for key in of_pair:
        if key is not None:
            wanted = [prices.download(name) for name in key if name is not None]
            costs[key] = predicted_seconds(wanted, prices.slot(key), tip, ranking)
            if any(d.size <= 0 for d in wanted):
                # no source gives a size of any archive of its kind: ranked by the rest
                # (the same for every pair of the group), not predicted ("running in ~0 s")
                unpriced.add(key)
    # by predicted seconds, equals in the order of their first source (a stable sort)
    by_cost = sorted(of_pair, key=costs.__getitem__)
    offered = [(key, costs[key]) for key in by_cost if key is not None]
    chosen = choose_pair(offered, held, ranking.switch_margin)
    order = _in_order(sources, pair_of, of_pair, [(key, costs[key]) for key in by_cost], chosen)
    predicted: dict[int, float] = {}
    for key, found in of_pair.items():
        if key not in unpriced:
            predicted.update(dict.fromkeys(map(id, found), costs[key]))
    full = incremental = None
    if chosen is not None:
        full = next(f for f in fulls if _head(f) == chosen[0])
        incremental = _incremental_of(sources, chosen, full.info.slot)
    return RankedPairs(order, predicted, chosen, full, incremental)


@attrs.frozen
class _Listing:
    """One target's sources, for :class:`tracker.ordering.pricing.ArchivePrices`."""

    sources: list[tuple[Any, SnapshotSource]]


def _in_order(
    sources: list[SnapshotSource],
    pair_of: Mapping[int, PairKey | None],
    of_pair: Mapping[PairKey | None, list[SnapshotSource]],
    by_cost: list[tuple[PairKey | None, float]],
    chosen: PairKey | None,
) -> list[SnapshotSource]:
    """``sources`` (``pair_of``: each one's pair by ``id``; ``of_pair``: each pair's sources
    in their order) by their pair's cost (``by_cost``: the pairs and their costs in that
    order), of equal costs in their own order as a stable sort leaves them, the sources of
    ``chosen`` first."""
    order = list(of_pair.get(chosen, ()))
    n = 0
    while n < len(by_cost):
        end = n + 1
        while end < len(by_cost) and by_cost[end][1] == by_cost[n][1]:
            end += 1
        if end == n + 1:
            if by_cost[n][0] != chosen:
                order += of_pair[by_cost[n][0]]
        else:  # two pairs of one cost (rare): their sources interleave as in ``sources``
            tied = {key for key, _cost in by_cost[n:end]} - {chosen}
            order += [s for s in sources if pair_of[id(s)] in tied]
        n = end
    return order


def choose_pair(
    offered: list[tuple[PairKey, float]], held: PairKey | None, margin: float
) -> PairKey | None:
    """The pair to hand out among ``offered`` (pair, predicted seconds; in a stable order),
    given the pair ``held`` (handed out before). Pure.

    The full moves only when another full's best pair beats the held full's best by
    ``margin`` (:func:`tracker.ordering.predict.choose`): a fleet is not sent between two
    equal fulls. On the full chosen, its best pair, without a margin: a newer incremental
    on the same full is a better pair, not an equal one (with the margin on the pair, the
    full's download, the same for every pair on it, made the newer one beat the held one
    by 10% almost never, and the redirect kept an older incremental while it was listed),
    and an incremental the sources dropped does not move the full."""
    best: dict[str, tuple[PairKey, float]] = {}
    for pair, seconds in offered:
        kept = best.get(pair[0])
        if kept is None or seconds < kept[1]:
            best[pair[0]] = (pair, seconds)
    fulls = [(full, seconds) for full, (_pair, seconds) in best.items()]
    full = choose(fulls, held[0] if held is not None else None, margin)
    return best[full][0] if full is not None else None


def _head(source: SnapshotSource) -> str:
    return source.info.files[0].bare_name


def _incremental_of(
    sources: list[SnapshotSource], chosen: PairKey, base: int
) -> SnapshotSource | None:
    """The incremental handed out with the chosen pair: its own, or for a full alone the
    newest on it (a node that fetched the full still asks for one)."""
    for s in sources:  # best first by slot: the newest, then the fastest source
        if s.info.is_full or s.info.base_slot != base:
            continue
        if chosen[1] is None or _head(s) == chosen[1]:
            return s
    return None


class TimedGroups:
    """The groups ranked by time to running: each one's settings, its ranked pairs (made
    once per change of the index) and the pair handed out last, which moves only by
    ``switch_margin`` (docs/ranking.md)."""

    def __init__(self) -> None:
        self._rankings: dict[str, RankingSettings] = {}
        self._pairs: dict[str, RankedPairs] = {}
        self._held: dict[str, PairKey] = {}
        #: Per group: its archives priced, kept between changes (only the targets whose
        #: sources changed are weighed again: :class:`tracker.ordering.pricing.ArchivePrices`).
        self._prices: dict[str, ArchivePrices] = {}

    def set(self, group: str, ranking: RankingSettings | None) -> bool:
        """Rank ``group`` by ``ranking`` (None or ``by: slot``: not by time); whether that
        changed anything."""
        wanted = ranking if ranking is not None and ranking.by == "time_to_running" else None
        if self._rankings.get(group) == wanted:
            return False
        if wanted is None:
            self._rankings.pop(group, None)
            self._prices.pop(group, None)
        else:
            self._rankings[group] = wanted
        return True

    def assumed(self, group: str) -> float | None:
        """The throughput ``group`` prices a source never measured at (None: it ranks by
        slot): a copy of an archive is handed out from the source the prediction priced it
        at, the fastest with an unmeasured one counted so."""
        ranking = self._rankings.get(group)
        return ranking.assumed_throughput if ranking is not None else None

    def changed(self) -> None:
        """What the pairs were made of changed: they are made again when next asked."""
        self._pairs = {}

    def pairs(
        self,
        group: str,
        sources: list[SnapshotSource],
        fulls: list[SnapshotSource],
        cluster_slot: int | None,
        built: Mapping[TargetKey, Built],
    ) -> RankedPairs | None:
        """``group``'s ranked pairs (None: it ranks by slot), of ``sources``, ``fulls`` and
        each target's part they were made of (``built``); the tip is ``cluster_slot``, else
        the newest slot of ``sources`` (found only when the pairs are ranked again)."""
        ranking = self._rankings.get(group)
        if ranking is None:
            return None
        done = self._pairs.get(group)
        if done is None:
            # the newest slot: the first source's (best first by slot), not a scan of them
            tip = cluster_slot or (sources[0].info.slot if sources else 0)
            prices = self._prices.setdefault(group, ArchivePrices())
            prices.update(built, ranking)
            done = rank_pairs(sources, fulls, tip, ranking, self._held.get(group), prices)
            self._pairs[group] = done
            if done.chosen is not None:
                self._held[group] = done.chosen
        return done
