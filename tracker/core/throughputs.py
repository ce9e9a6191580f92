"""Measured throughputs per target, on one clock (docs/ranking.md).

Every transfer from a target (proxied, refreshed, a speed test, what another replica or a
previous run measured) is folded into its figure; a figure loses half its weight every
:data:`HALF_LIFE` seconds of that clock, so a source that slowed down falls behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tracker.core.sources import TargetKey

#: A throughput measurement loses half its weight every this many seconds.
HALF_LIFE = 600.0


class Throughputs:
    """Per target: (bytes per second, the time measured on :attr:`clock`)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        #: The one clock measurements are recorded and aged on.
        self.clock = clock
        self._measured: dict[TargetKey, tuple[float, float]] = {}

    def record(self, key: TargetKey, size: int, seconds: float, now: float | None) -> bool:
        """A transfer of ``size`` bytes from ``key`` took ``seconds``, ended at ``now`` (the
        clock's reading by default); whether it counted (a transfer of nothing does not)."""
        if seconds <= 0 or size <= 0:
            return False
        now = self.clock() if now is None else now
        rate, old = size / seconds, self.rate(key, now)
        self._measured[key] = ((old + rate) / 2 if old else rate, now)
        return True

    def rate(self, key: TargetKey, now: float | None = None) -> float:
        """``key``'s bytes per second decayed by its age at ``now``; 0: never measured."""
        measured = self._measured.get(key)
        if measured is None:
            return 0.0
        rate, at = measured
        now = self.clock() if now is None else now
        return float(rate * 0.5 ** (max(0.0, now - at) / HALF_LIFE))

    def rates(self, now: float) -> dict[TargetKey, float]:
        """Every measured target's decayed rate at ``now``."""
        return {key: self.rate(key, now) for key in self._measured}

    def measurements(self) -> dict[TargetKey, tuple[float, float]]:
        """Every measurement as (bytes per second, time measured), undecayed."""
        return dict(self._measured)

    def restore(self, key: TargetKey, rate: float, at: float) -> bool:
        """Take a rate measured elsewhere at ``at`` unless ``key``'s own is as recent;
        whether it was taken."""
        known = self._measured.get(key)
        if rate > 0 and math.isfinite(rate) and (known is None or known[1] < at):
            self._measured[key] = (rate, at)
            return True
        return False

    def drop(self, key: TargetKey) -> None:
        """Forget ``key``'s measurement."""
        self._measured.pop(key, None)
