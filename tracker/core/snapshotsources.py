"""A snapshot as one target holds it, and the target's identity: the values the index ranks.

Pure values (no clock, no I/O), apart from the index so that the ranking modules
(:mod:`tracker.ordering.ranking`) and the index share them; with the one rule of which
targets a group knows (:func:`is_known`, ``trust.known_sources``), which the ranking's trust
screen (:func:`tracker.ordering.screens.screen`), the config's warnings and the cache's mixed
copies share.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Set
from datetime import datetime
from typing import NamedTuple

import attrs

from tracker.core.snapshots import SnapshotFile, SnapshotInfo


class TargetKey(NamedTuple):
    """A target's stable identity: its group and its display name (URL or path).

    ``discovered``: a node found by cluster discovery (docs/http-api.md#trust), not configured
    by the operator: an address from the network, never given the group's credentials.

    A named tuple, not an attrs class: keys are hashed and compared hundreds of thousands of
    times a second while thousands of targets are ranked, and a tuple does both in C.
    """

    group: str
    target: str
    discovered: bool = False


@attrs.frozen
class SnapshotSource:
    """A snapshot as one target holds it (the §6 ``snapshot source``)."""

    info: SnapshotInfo
    key: TargetKey
    updated_at: datetime
    #: Bytes per second measured on transfers from this target (0: not measured).
    throughput: float = 0.0
    #: Seconds its last probe took (None: not measured, a local directory).
    latency: float | None = None
    #: What the ranking assumes: the measured throughput, else the median of the group's
    #: measured targets (an unmeasured source gets its chance; a slow one falls behind).
    expected: float = 0.0

    def rank_key(self) -> tuple[tuple[int, int, int, bytes], float, float, datetime, str]:
        """Ascending ranking key; the best source has the largest key.

        Between sources of the same snapshot: the higher measured throughput, then the lower
        probe latency, then the one scraped successfully most recently (docs/http-api.md#trust);
        the target name makes the order total (deterministic answers).
        """
        latency = -self.latency if self.latency is not None else -math.inf
        return (
            self.info.rank_key(),
            self.expected,
            latency,
            self.updated_at,
            _reverse(self.key.target),
        )


@attrs.frozen
class SourceFile:
    """``file`` as ``source`` offers it: what one read of a source's copy (a speed test, a
    head read) is of."""

    source: SnapshotSource
    file: SnapshotFile

    @property
    def key(self) -> TargetKey:
        """The target read."""
        return self.source.key


@functools.lru_cache(maxsize=65536)
def _reverse(text: str) -> str:
    # Descending sort of the whole key must list equal-rank targets in ascending name order.
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


#: Distinct sources that must agree on a (slot, hash) only discovered nodes advertise.
MIN_DISCOVERED_AGREEING = 2


def is_known(target: str, known_sources: Set[str]) -> bool:
    """True when ``target`` (a target's URL or path) is one of ``known_sources``: the same
    URL or path, or its ``host:port`` (an entry that names every target at that address)."""
    if target in known_sources:
        return True
    _scheme, sep, rest = target.partition("://")
    if not sep:
        return False
    authority = rest.split("/", 1)[0].rpartition("@")[2]
    return authority in known_sources
