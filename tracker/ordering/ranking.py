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
``switch_margin`` (:func:`choose_pair`: the full by the margin, the best pair on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from tracker.core.hosts import machine_voices, voice_of
from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    SnapshotSource,
    TargetKey,
    info_from_files,
)
from tracker.ordering.predict import (
    Download,
    RankingSettings,
    choose,
    download_seconds,
    predicted_seconds,
    priced_throughput,
)

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

#: A pair: the full's archive name, and the incremental's (None: the full alone).
PairKey = tuple[str, str | None]


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
) -> RankedPairs:
    """Rank ``sources`` (best first by slot) by their pair's predicted seconds; ``fulls``
    are the group's full archives as sources (best first), ``tip`` the cluster's slot and
    ``held`` the pair handed out before."""
    speeds, sizes = _archives(sources, ranking)

    def download(name: str) -> Download:
        return Download(sizes.get(name, 0), speeds.get(name, 0.0))

    base_fulls: dict[int, str] = {}
    for f in sorted(fulls, key=lambda s: download_seconds([download(_head(s))], ranking)):
        base_fulls.setdefault(f.info.slot, _head(f))
    keys: dict[int, PairKey | None] = {}
    costs: dict[PairKey | None, float] = {None: math.inf}
    unpriced: set[PairKey] = set()
    for s in sources:
        key = keys[id(s)] = _pair_of(s, base_fulls)
        if key not in costs and key is not None:
            wanted = [download(name) for name in key if name is not None]
            costs[key] = predicted_seconds(wanted, s.info.slot, tip, ranking)
            if any(d.size <= 0 for d in wanted):
                # no source gives a size of any archive of its kind: ranked by the rest
                # (the same for every pair of the group), not predicted ("running in ~0 s")
                unpriced.add(key)
    order = sorted(sources, key=lambda s: costs[keys[id(s)]])
    offered: dict[PairKey, float] = {}
    for s in order:
        if (key := keys[id(s)]) is not None:
            offered.setdefault(key, costs[key])
    chosen = choose_pair(list(offered.items()), held, ranking.switch_margin)
    order.sort(key=lambda s: keys[id(s)] != chosen)
    predicted = {id(s): costs[key] for s in sources if (key := keys[id(s)]) not in unpriced}
    full = incremental = None
    if chosen is not None:
        full = next(f for f in fulls if _head(f) == chosen[0])
        incremental = _incremental_of(sources, chosen, full.info.slot)
    return RankedPairs(order, predicted, chosen, full, incremental)


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


def _archives(
    sources: list[SnapshotSource], ranking: RankingSettings
) -> tuple[dict[str, float], dict[str, int]]:
    """Each archive's best throughput (measured, else assumed) and its size
    (:func:`priced_sizes`)."""
    speeds: dict[str, float] = {}
    listed: list[tuple[str, bool, int, str]] = []
    # One party one voice, as trust counts them: a discovered IPv6 node as its /48.
    hosts = [voice_of(s.key.target) for s in sources]
    discovered = {n for n, s in enumerate(sources) if s.key.discovered}
    for s, voice in zip(sources, machine_voices(hosts, discovered), strict=True):
        speed = priced_throughput(s.throughput, ranking)
        for f in s.info.files:
            name = f.bare_name
            if speed > speeds.get(name, 0.0):
                speeds[name] = speed
            listed.append((name, f.name.is_full, f.size, voice))
    return speeds, priced_sizes(listed)


def priced_sizes(listed: list[tuple[str, bool, int, str]]) -> dict[str, int]:
    """The size each archive is priced at, from what its sources list (``(name, is_full,
    size, voice)``, 0: not given; ``voice``: :func:`tracker.core.hosts.machine_voices`): the
    lower median of its voices' sizes (each voice's own: the lower median of what its
    targets list), so that neither a source listing another's archive as huge (the newest
    full priced out) nor one listing an older archive as tiny (the fleet sent to it)
    decides, while the honest voices are more than the liars (a lie of a huge size: at
    least as many); with two voices the smaller; a source can misstate freely only the size
    of an archive it alone holds. A voice that lists an archive without a size votes the
    typical size of its kind (full or incremental): the lower median of the voices' own
    typical sizes of that kind, so that a size left out never makes an archive look free,
    nor lets one voice's size decide (the largest on offer was taken: one source listing
    an old archive it alone holds as huge priced out the newest full, which its hosts list
    without a size). 0 when no voice gives a size of that kind. Pure."""
    given: dict[str, dict[str, list[int]]] = {}
    unsized: dict[str, set[str]] = {}
    kinds: dict[str, bool] = {}
    of_kind: dict[tuple[bool, str], list[int]] = {}
    for name, is_full, size, voice in listed:
        kinds[name] = is_full
        if size > 0:
            given.setdefault(name, {}).setdefault(voice, []).append(size)
            of_kind.setdefault((is_full, voice), []).append(size)
        else:
            unsized.setdefault(name, set()).add(voice)
    typical = {
        kind: _lower_median(
            [_lower_median(sizes) for (k, _voice), sizes in of_kind.items() if k == kind] or [0]
        )
        for kind in (True, False)
    }
    priced: dict[str, int] = {}
    for name, kind in kinds.items():
        voices = given.get(name, {})
        said = [_lower_median(sizes) for sizes in voices.values()]
        # a voice that gave a size for it, by one of its targets, says that size
        said += [typical[kind] for voice in unsized.get(name, ()) if voice not in voices]
        priced[name] = _lower_median(said)
    return priced


def _lower_median(values: list[int]) -> int:
    """The middle of ``values`` (not empty), the lower of the two middles when even."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _pair_of(source: SnapshotSource, base_fulls: dict[int, str]) -> PairKey | None:
    """The pair ``source`` stands for (None: an incremental with no full on offer)."""
    info = source.info
    if info.is_full:
        return (_head(source), None)
    full = next((f.bare_name for f in info.files if f.name.is_full), None)
    full = full or base_fulls.get(info.base_slot)
    return (full, _head(source)) if full is not None else None


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

    def set(self, group: str, ranking: RankingSettings | None) -> bool:
        """Rank ``group`` by ``ranking`` (None or ``by: slot``: not by time); whether that
        changed anything."""
        wanted = ranking if ranking is not None and ranking.by == "time_to_running" else None
        if self._rankings.get(group) == wanted:
            return False
        if wanted is None:
            self._rankings.pop(group, None)
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
    ) -> RankedPairs | None:
        """``group``'s ranked pairs (None: it ranks by slot); the tip is ``cluster_slot``,
        else the newest slot of ``sources`` (found only when the pairs are ranked again)."""
        ranking = self._rankings.get(group)
        if ranking is None:
            return None
        done = self._pairs.get(group)
        if done is None:
            tip = cluster_slot or max((s.info.slot for s in sources), default=0)
            done = rank_pairs(sources, fulls, tip, ranking, self._held.get(group))
            self._pairs[group] = done
            if done.chosen is not None:
                self._held[group] = done.chosen
        return done
