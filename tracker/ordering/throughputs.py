"""Measured throughputs per target, on one clock (docs/ranking.md), and the rates of the
transfers running now.

Two figures per target: what its speed tests read (*probed*) and what real transfers from it
achieved (*achieved*: proxied streams, refreshes into the cache, prefetches). A speed test
is easy to spot (``Range: bytes=0-N``), so a source could answer it fast and real transfers
slowly: the figure the ranking uses is :func:`combined`, in which a real transfer outweighs
the speed tests made after it until it is old (docs/ranking.md, "Probed and achieved").
Every figure loses half its weight every :data:`HALF_LIFE` seconds of the clock, so a
source that slowed down falls behind.

The sources bytes come from right now (:class:`Flowing`), each with the rate it delivers at:
a transfer's throughput reaches the index when the transfer ends (it ranks the source:
docs/http-api.md#trust); a 100 GB download takes an hour, and meanwhile the status page and
``/v1/targets`` show the rate measured while the bytes come, read from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from tracker.core.snapshotsources import TargetKey

#: A throughput measurement loses half its weight every this many seconds.
HALF_LIFE = 600.0
#: A real transfer's weight against the speed tests made after it halves every this many
#: seconds between the two: a source that served slower than it probed keeps the figure it
#: served at for hours of fast speed tests, and one that had a bad transfer recovers.
TRUST_HALF_LIFE = 3600.0

#: Which figure a measurement feeds: a speed test's, or a real transfer's.
Kind = Literal["probed", "achieved"]
KINDS: tuple[Kind, ...] = ("probed", "achieved")
#: (bytes per second, time measured on the clock), undecayed.
Measured = tuple[float, float]
#: What a listing shows of a target: its figure, probed and achieved, in whole bytes a second.
Shown = tuple[int, int, int]


def decayed(measured: Measured | None, now: float) -> float:
    """``measured``'s bytes per second at ``now``, halved every :data:`HALF_LIFE` of age."""
    if measured is None:
        return 0.0
    rate, at = measured
    return float(rate * 0.5 ** (max(0.0, now - at) / HALF_LIFE))


def combined(probed: Measured | None, achieved: Measured | None, now: float) -> float:
    """A target's figure at ``now`` from its speed tests' (``probed``) and its real
    transfers' (``achieved``) measurements; 0 when neither is known.

    With one of them, that one. With both, their seconds per byte are blended (a harmonic
    mean): the achieved one weighs 1 while no speed test came after it, and its weight
    halves every :data:`TRUST_HALF_LIFE` seconds by which the latest speed test is newer.
    The blend is then decayed by the age of the newer measurement (:func:`decayed`).
    """
    if probed is None or achieved is None:
        return decayed(probed or achieved, now)
    (fast, probed_at), (served, achieved_at) = probed, achieved
    weight = 0.5 ** (max(0.0, probed_at - achieved_at) / TRUST_HALF_LIFE)
    per_byte = weight / served + (1 - weight) / fast
    rate = 1 / per_byte if per_byte > 0 else max(fast, served)  # both huge: underflow
    return decayed((rate, max(probed_at, achieved_at)), now)


class Throughputs:
    """Per target and kind: (bytes per second, the time measured on :attr:`clock`)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        #: The one clock measurements are recorded and aged on.
        self.clock = clock
        self._measured: dict[Kind, dict[TargetKey, Measured]] = {k: {} for k in KINDS}
        self._version = 0  # moves with every change of a measurement (:meth:`shown` keeps)
        self._shown: tuple[float, int, dict[TargetKey, Shown]] | None = None

    def record(
        self, key: TargetKey, size: int, seconds: float, now: float | None, kind: Kind
    ) -> bool:
        """A transfer (``kind``) of ``size`` bytes from ``key`` took ``seconds``, ended at
        ``now`` (the clock's reading by default); whether it counted (a transfer of nothing
        does not). It is averaged with the same kind's figure as it is now."""
        if seconds <= 0 or size <= 0:
            return False
        now = self.clock() if now is None else now
        known = self._measured[kind]
        rate, old = size / seconds, decayed(known.get(key), now)
        known[key] = ((old + rate) / 2 if old else rate, now)
        self._version += 1
        return True

    def rate(self, key: TargetKey, now: float | None = None) -> float:
        """``key``'s figure at ``now`` (:func:`combined`); 0: never measured."""
        now = self.clock() if now is None else now
        return combined(self._measured["probed"].get(key), self._measured["achieved"].get(key), now)

    def figures(self, key: TargetKey, now: float) -> tuple[float, float]:
        """``key``'s probed and achieved bytes per second at ``now``, each decayed (0: none)."""
        probed, achieved = (decayed(self._measured[k].get(key), now) for k in KINDS)
        return probed, achieved

    def shown(self, at: float) -> Mapping[TargetKey, Shown]:
        """Every measured target's figure, probed and achieved figures at ``at`` (each
        :func:`decayed`), rounded to whole bytes per second: what the targets' listing shows.
        Kept while ``at`` and the measurements stay the same: a listing of thousands of
        discovered nodes, rendered again and again during a round, asks for them once a
        tick instead of once a target and a rendering (~2 µs each)."""
        kept = self._shown
        if kept is not None and kept[0] == at and kept[1] == self._version:
            return kept[2]
        probed, achieved = self._measured["probed"], self._measured["achieved"]
        figures = {}
        for key in probed.keys() | achieved.keys():
            fast, served = probed.get(key), achieved.get(key)
            figures[key] = (
                round(combined(fast, served, at)),
                round(decayed(fast, at)),
                round(decayed(served, at)),
            )
        self._shown = (at, self._version, figures)
        return figures

    def rates(self, now: float) -> dict[TargetKey, float]:
        """Every measured target's figure at ``now``."""
        keys = self._measured["probed"].keys() | self._measured["achieved"].keys()
        return {key: self.rate(key, now) for key in keys}

    def measurements(self, kind: Kind) -> dict[TargetKey, Measured]:
        """Every measurement of ``kind`` as (bytes per second, time measured), undecayed."""
        return dict(self._measured[kind])

    def restore(self, key: TargetKey, rate: float, at: float, kind: Kind) -> bool:
        """Take a rate (``kind``) measured elsewhere at ``at`` unless ``key``'s own is as
        recent; whether it was taken."""
        known = self._measured[kind].get(key)
        if rate > 0 and math.isfinite(rate) and (known is None or known[1] < at):
            self._measured[kind][key] = (rate, at)
            self._version += 1
            return True
        return False

    def drop(self, key: TargetKey) -> None:
        """Forget ``key``'s measurements."""
        for known in self._measured.values():
            if known.pop(key, None) is not None:
                self._version += 1


# The transfers running now.

#: A transfer younger than this says nothing yet about its source's rate.
MIN_ELAPSED = 0.2


class OpenTransfer(Protocol):
    """An open upstream answer: bytes it delivered so far since it opened."""

    @property
    def moved(self) -> int:
        """Body bytes that came from the source so far."""
        ...

    @property
    def opened_at(self) -> float:
        """When it opened, on trio's clock (the index's)."""
        ...


class Flowing:
    """The open upstream answers by source (the pumps register theirs)."""

    def __init__(self) -> None:
        self._open: dict[TargetKey, list[OpenTransfer]] = {}

    def start(self, key: TargetKey, source: OpenTransfer) -> Callable[[], None]:
        """``source`` delivers bytes from ``key`` until the returned function is called."""
        self._open.setdefault(key, []).append(source)

        def stop() -> None:
            sources = self._open.get(key, [])
            if source in sources:
                sources.remove(source)
            if not sources:
                self._open.pop(key, None)

        return stop

    @property
    def active(self) -> bool:
        """Whether bytes come from any source now."""
        return bool(self._open)

    def rates(self, now: float) -> dict[TargetKey, float]:
        """:meth:`rate` of every source bytes come from now (the others' is 0)."""
        return {key: self.rate(key, now) for key in self._open}

    def rate(self, key: TargetKey, now: float) -> float:
        """Bytes per second coming from ``key`` at ``now`` (trio's clock), summed over its
        open answers; 0 when none is open (or all are too young to tell)."""
        return float(
            sum(
                source.moved / (now - source.opened_at)
                for source in self._open.get(key, ())
                if now - source.opened_at >= MIN_ELAPSED
            )
        )
