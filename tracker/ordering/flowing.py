"""The sources bytes come from right now, each with the rate it delivers at.

A transfer's throughput reaches the index when the transfer ends (it ranks the source:
docs/http-api.md#trust); a 100 GB download takes an hour, and meanwhile the status page and
``/v1/targets`` show the rate measured while the bytes come, read from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tracker.ordering.index import TargetKey

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
