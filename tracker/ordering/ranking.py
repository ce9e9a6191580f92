"""A group's pairs ranked by the predicted time to a running node (docs/ranking.md). Pure.

Each source of the group is a pair: a full alone, or an incremental with its full (the one
in its chain, else the full at its base slot that downloads fastest). Every archive is
downloaded from its fastest source (measured throughput, else ``assumed_throughput``: one
rule, :func:`tracker.ordering.predict.priced_throughput`), and
:func:`tracker.ordering.predict.predicted_seconds` prices the pair. The pair handed out (short
redirects, status page, first in ``/v1/best_snapshots``) moves only when another beats it by
``switch_margin`` (:func:`tracker.ordering.predict.choose`).
"""

from __future__ import annotations

import math

import attrs

from tracker.core.snapshotsources import SnapshotSource
from tracker.ordering.predict import (
    Download,
    RankingSettings,
    choose,
    download_seconds,
    predicted_seconds,
    priced_throughput,
)

#: A pair: the full's archive name, and the incremental's (None: the full alone).
PairKey = tuple[str, str | None]


@attrs.frozen(eq=False)
class RankedPairs:
    """A group's sources, the pair handed out first then by predicted seconds; the
    prediction of each source (by ``id``, for as long as ``sources`` holds it)."""

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
    for s in sources:
        key = keys[id(s)] = _pair_of(s, base_fulls)
        if key not in costs and key is not None:
            wanted = [download(name) for name in key if name is not None]
            costs[key] = predicted_seconds(wanted, s.info.slot, tip, ranking)
    order = sorted(sources, key=lambda s: costs[keys[id(s)]])
    offered: dict[PairKey, float] = {}
    for s in order:
        if (key := keys[id(s)]) is not None:
            offered.setdefault(key, costs[key])
    chosen = choose(list(offered.items()), held, ranking.switch_margin)
    order.sort(key=lambda s: keys[id(s)] != chosen)
    predicted = {id(s): costs[keys[id(s)]] for s in sources}
    full = incremental = None
    if chosen is not None:
        full = next(f for f in fulls if _head(f) == chosen[0])
        incremental = _incremental_of(sources, chosen, full.info.slot)
    return RankedPairs(order, predicted, chosen, full, incremental)


def _head(source: SnapshotSource) -> str:
    return source.info.files[0].bare_name


def _archives(
    sources: list[SnapshotSource], ranking: RankingSettings
) -> tuple[dict[str, float], dict[str, int]]:
    """Each archive's best throughput (measured, else assumed) and its size."""
    speeds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for s in sources:
        speed = priced_throughput(s.throughput, ranking)
        for f in s.info.files:
            name = f.bare_name
            if speed > speeds.get(name, 0.0):
                speeds[name] = speed
            if f.size > sizes.get(name, 0):
                sizes[name] = f.size
    return speeds, sizes


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
