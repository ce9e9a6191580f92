"""What a source is asked for at once: its transfers and its rate (``source_limits``).

Serving snapshots costs a validator; a tracker must not be the client that hurts it. Per
source (its origin, ``scheme://host:port``) at most ``max_transfers`` transfers run at once
(proxied streams, refreshes, speed tests) and at most ``max_rate`` bytes a second come from
it (0: no cap for either). One API::

    async with limits.transfer(url, group_limits, wait=2.0) as pacer:
        ...                      # SourceBusy when no slot freed up within ``wait``
        await pacer.pace(len(chunk))   # sleeps while the source's rate is over its cap

A pacer of an uncapped source does nothing, so the byte paths keep their speed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import attrs
import trio

from tracker.errors import SourceBusy

#: Seconds of a source's rate an idle source may send at once.
BURST = 0.25


@attrs.frozen
class Limits:
    """A source's caps: concurrent transfers and bytes per second (0: none)."""

    max_transfers: int = 0
    max_rate: int = 0


def source_of(url: str) -> str:
    """The source a URL's transfers count against: its scheme, host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


@attrs.define
class Pacer:
    """The rate of one source, shared by its transfers: a byte budget that refills at
    ``rate`` bytes a second (``clock``'s seconds), at most :data:`BURST` seconds' worth
    ahead."""

    rate: int
    clock: Callable[[], float] = trio.current_time
    #: When the bytes counted so far are due at ``rate`` (the budget's debt).
    _due: float = -math.inf

    def delay(self, size: int) -> float:
        """Count ``size`` bytes just received; the seconds to wait before the next read."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self._due = max(self._due, now - BURST) + size / self.rate
        return max(0.0, self._due - now)

    def slice(self, seconds: float, largest: int) -> int:
        """Bytes one read of ``seconds`` may take: ``largest`` uncapped."""
        if self.rate <= 0:
            return largest
        return max(1, min(largest, int(self.rate * seconds)))

    async def pace(self, size: int) -> None:
        """Count ``size`` bytes just received, and sleep while the source is over its rate."""
        wait = self.delay(size)
        if wait > 0:
            await trio.sleep(wait)


#: The pacer of a source with no rate cap (shared: it keeps no state).
UNCAPPED = Pacer(0)


@attrs.define
class _Source:
    running: int = 0
    waiting: int = 0
    freed: trio.Event = attrs.Factory(trio.Event)
    pacer: Pacer = UNCAPPED


class SourceLimits:
    """Transfer slots and rate per source (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._sources: dict[str, _Source] = {}

    def running(self, url: str) -> int:
        """Transfers from ``url``'s source running now."""
        found = self._sources.get(source_of(url))
        return found.running if found is not None else 0

    @asynccontextmanager
    async def transfer(self, url: str, limits: Limits, *, wait: float) -> AsyncIterator[Pacer]:
        """One transfer from ``url``'s source, for the block: waits at most ``wait`` seconds
        for a slot (SourceBusy after that), yields the source's :class:`Pacer`."""
        key = source_of(url)
        source = self._sources.setdefault(key, _Source())
        if limits.max_rate != source.pacer.rate:
            source.pacer = Pacer(limits.max_rate, self._clock) if limits.max_rate else UNCAPPED
        source.waiting += 1
        try:
            with trio.move_on_after(wait):
                while limits.max_transfers and source.running >= limits.max_transfers:
                    await source.freed.wait()
        finally:
            source.waiting -= 1
        if limits.max_transfers and source.running >= limits.max_transfers:
            raise SourceBusy(f"{limits.max_transfers} transfers from this source already run")
        source.running += 1
        try:
            yield source.pacer
        finally:
            source.running -= 1
            source.freed.set()
            source.freed = trio.Event()
            if not (source.running or source.waiting) and source.pacer is UNCAPPED:
                self._sources.pop(key, None)  # nothing to remember of it
