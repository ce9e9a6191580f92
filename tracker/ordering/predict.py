"""The predicted time to a running node, and the choice that does not flap (docs/ranking.md).

Pure arithmetic: no clock, no I/O. A pair (a full and, maybe, an incremental on it) costs
its downloads plus the catch-up of the slots the node is behind when they end::

    download  = full bytes / full's throughput (0 when the node has it)
              + incremental bytes / incremental's throughput
    behind    = tip - pair's slot + download / slot_seconds
    catch-up  = behind / (replay_slots_per_second - 1 / slot_seconds)
    predicted = download + catch-up

A node that replays no faster than the cluster makes slots never catches up: the prediction
is infinite and the pair ranks last.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Protocol, TypeVar

import attrs


class RankingSettings(Protocol):
    """The settings a prediction uses (the config's ``ranking`` section, docs/ranking.md):
    read-only, so the config's frozen value is one."""

    @property
    def by(self) -> str: ...
    @property
    def replay_slots_per_second(self) -> float: ...
    @property
    def slot_seconds(self) -> float: ...
    @property
    def assumed_throughput(self) -> float: ...
    @property
    def switch_margin(self) -> float: ...


_K = TypeVar("_K", bound=Hashable)


@attrs.frozen
class Download:
    """One archive to download: ``size`` bytes at ``throughput`` bytes per second (0: never
    measured, the ranking's ``assumed_throughput`` is used)."""

    size: int
    throughput: float = 0.0


def priced_throughput(measured: float, ranking: RankingSettings) -> float:
    """The throughput a download is priced at: ``measured`` once there is one (above 0),
    else the ranking's ``assumed_throughput`` (a source never measured, NaN included)."""
    return measured if measured > 0 else ranking.assumed_throughput


def download_seconds(downloads: Sequence[Download], ranking: RankingSettings) -> float:
    """Seconds to download ``downloads`` one after the other."""
    total = 0.0
    for d in downloads:
        total += max(0, d.size) / priced_throughput(d.throughput, ranking)
    return total


def catch_up_seconds(slots_behind: float, ranking: RankingSettings) -> float:
    """Seconds a node ``slots_behind`` the tip needs to reach it (infinite when it replays
    no faster than the cluster makes slots)."""
    if slots_behind <= 0:
        return 0.0
    gain = ranking.replay_slots_per_second - 1 / ranking.slot_seconds
    if gain <= 0:
        return math.inf
    return slots_behind / gain


def predicted_seconds(
    downloads: Sequence[Download], slot: int, tip: int, ranking: RankingSettings
) -> float:
    """Seconds from "needs a snapshot" to "runs at the tip" for a pair whose newest archive
    is at ``slot`` and whose archives still to download are ``downloads``."""
    download = download_seconds(downloads, ranking)
    behind = max(0, tip - slot) + download / ranking.slot_seconds
    return download + catch_up_seconds(behind, ranking)


def beats(new: float, held: float, margin: float) -> bool:
    """True when a candidate predicted at ``new`` seconds should replace the one held at
    ``held``: faster by more than ``margin`` (a fraction), or finite against infinite."""
    if math.isinf(held):
        return not math.isinf(new)
    return new < held * (1 - margin)


def choose(candidates: Sequence[tuple[_K, float]], held: _K | None, margin: float) -> _K | None:
    """The pair to hand out among ``candidates`` (key, predicted seconds), given in a stable
    order: the fastest, the first of equals; the ``held`` one (handed out before) while it
    is still a candidate and no other beats it by ``margin``. None without candidates."""
    if not candidates:
        return None
    best_key, best = candidates[0]
    for key, seconds in candidates[1:]:
        if seconds < best:
            best_key, best = key, seconds
    if held is not None:
        kept = next((seconds for key, seconds in candidates if key == held), None)
        if kept is not None and not beats(best, kept, margin):
            return held
    return best_key
