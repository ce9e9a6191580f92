"""What a source is asked for at once: its transfers and its rate (``source_limits``).

Serving snapshots costs a validator; a tracker must not be the client that hurts it. Per
source (its origin, ``scheme://host:port``) at most ``max_transfers`` transfers run at once
(proxied streams, refreshes, speed tests) and at most ``max_rate`` bytes a second come from
it (0: no cap for either). One API::

    async with limits.transfer(url, group_limits, wait=2.0, queue=8) as slot:
        ...                      # SourceBusy when no slot freed up within ``wait``
        await slot.pacer.pace(len(chunk))   # sleeps while the source's rate is over its cap

A request that finds every slot taken joins the source's queue (at most ``queue`` wait at
once, each at most ``wait`` seconds; docs/http-api.md, "Source limits"). Given the limits as
a function that reads those in force, a request that waits is let in under the limits of
the moment a slot frees, not those it came under: after a reload
(:meth:`SourceLimiter.reconsider`) a lowered ``max_transfers`` holds the queue back and a
raised one lets it in at once. A request held back by its own limit (another group's lower
``max_transfers`` for the source) holds back no request that its limit lets in.

A pacer of an uncapped source does nothing, so the byte paths keep their speed. A source
has one pacer, whose rate is the lowest ``max_rate`` its running transfers began under: a
reload's new cap holds every transfer from it at once, the paced ones (a relay spliced
zero-copy because its source had no cap when it began is not paced until it ends).
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import attrs
import trio

from tracker.config.schema import SourceLimits
from tracker.core.hosts import canonical_host
from tracker.errors import SourceBusy

#: Seconds of a source's rate an idle source may send at once.
BURST = 0.25
#: Requests that may wait at once for a slot of one source, unless the caller says otherwise.
QUEUE = 8


def source_of(url: str) -> str:
    """The source a URL's transfers count against: its scheme, host and port, the host as
    :func:`~tracker.core.hosts.canonical_host` writes it (one machine's limits are one,
    however its URLs spell it: docs/http-api.md, "Source limits")."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{canonical_host(parts.hostname or '')}:{port}"


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

    def owes(self) -> bool:
        """Whether bytes counted are still due (the next transfer must wait for them)."""
        return self._due > self.clock()


#: The pacer of a source with no rate cap (shared: it keeps no state).
UNCAPPED = Pacer(0)


#: What became of a request in a source's queue (``on_queue``): it began to wait, got a
#: slot, found the queue full, waited its longest, or left (cancelled) while waiting.
QueueEvent = Literal["queued", "served", "full", "timeout", "left"]


@attrs.define(eq=False)
class Slot:
    """One transfer's slot: the source's pacer, when the transfer expects to end (on the
    limits' clock; None: unknown), which tells a request turned away when to retry, and the
    ``max_rate`` it began under (0: none)."""

    pacer: Pacer
    ends_at: float | None = None
    cap: int = 0


@attrs.define
class _Source:
    #: The source's one pacer, shared by every transfer from it, running or to come.
    pacer: Pacer
    slots: set[Slot] = attrs.Factory(set)
    #: The requests waiting for a slot, first come first, each with the ``max_transfers``
    #: in force for it, read when a slot may be handed to it (a reload may have changed it
    #: since the request came): its event is set when a slot is handed to it (a freed slot
    #: goes to the first its own limit admits, never to a request that came after: a
    #: refresh's lane asking again at once took every slot a waiter was woken for).
    queue: collections.deque[tuple[trio.Event, Callable[[], int]]] = attrs.Factory(
        collections.deque
    )
    #: Slots handed to waiters that have not taken them yet.
    handed: int = 0

    @property
    def running(self) -> int:
        return len(self.slots)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def full(self, most: int) -> bool:
        """No slot for a newcomer under ``most`` transfers at once (0: no cap): every one
        taken or handed. Call :meth:`hand_on` first: the requests that wait and that their
        own limits admit then hold the slots, so that none is overtaken; those still waiting
        are held by their own limits (another group's lower ``max_transfers`` for this
        source) and hold no newcomer back."""
        return bool(most) and self.running + self.handed >= most

    def hand_on(self) -> None:
        """Hand the slots free now to the waiters in their order, each that the limit in
        force for it admits. One held back by its own limit keeps its place but holds no
        later one back: two groups listing one source with other ``max_transfers``, a
        request of the higher one waited behind the lower one's until the source was idle
        (docs/http-api.md, "Source limits"). Waiters of one limit still go first come first:
        when one of them is held, so is every later one."""
        held: list[tuple[trio.Event, Callable[[], int]]] = []
        while self.queue:
            waiter = self.queue.popleft()
            turn, most_now = waiter
            most = most_now()
            if most and self.running + self.handed >= most:
                held.append(waiter)
                continue
            self.handed += 1
            turn.set()
        self.queue.extend(held)

    def retune(self) -> None:
        """The source's rate: the lowest ``max_rate`` its running transfers began under.
        A reload that lowers it holds the transfers running to it at once (a pacer of the
        old rate stayed with each, and the new ones got a budget of their own on top), and
        two groups listing one source share the lower cap (each start swapped the pacer
        for a fresh one: its rate grew with every switch)."""
        caps = [slot.cap for slot in self.slots if slot.cap > 0]
        self.pacer.rate = min(caps) if caps else 0


def _ignore(_event: QueueEvent) -> None:
    return None


def _same(limits: SourceLimits) -> SourceLimits:
    return limits


class SourceLimiter:
    """Transfer slots and rate per source (see the module doc)."""

    def __init__(
        self,
        clock: Callable[[], float] = trio.current_time,
        on_queue: Callable[[QueueEvent], None] = _ignore,
    ) -> None:
        self._clock = clock
        self._on_queue = on_queue
        self._sources: dict[str, _Source] = {}

    def running(self, url: str) -> int:
        """Transfers from ``url``'s source running now."""
        found = self._sources.get(source_of(url))
        return found.running if found is not None else 0

    def waiting(self, url: str) -> int:
        """Requests waiting for a slot of ``url``'s source now."""
        found = self._sources.get(source_of(url))
        return found.waiting if found is not None else 0

    def reconsider(self) -> None:
        """Hand the slots the limits in force now leave free to the requests that wait: a
        reload that raised a source's ``max_transfers`` lets its queue in at once, not when
        a transfer ends (one that lowered it needs nothing: :meth:`_Source.hand_on` reads
        the limits in force whenever a slot frees)."""
        for source in list(self._sources.values()):
            source.hand_on()

    @asynccontextmanager
    async def transfer(
        self,
        url: str,
        limits: SourceLimits | Callable[[], SourceLimits],
        *,
        wait: float,
        queue: int = QUEUE,
    ) -> AsyncIterator[Slot]:
        """One transfer from ``url``'s source, for the block, its :class:`Slot` (with the
        source's :class:`Pacer`).

        ``limits``: the source's, or a function that reads those in force (called as the
        request comes, whenever a slot may be handed to it while it waits, and as it takes
        one: a reload while it waits applies to it).

        With no free slot: ``wait`` 0 raises SourceBusy at once; otherwise the request joins
        the source's queue and waits at most ``wait`` seconds for a slot (SourceBusy after
        that), unless ``queue`` requests wait already (SourceBusy at once). A SourceBusy
        carries ``retry_after``, the seconds until the first running transfer expects to
        end, when one said so (:attr:`Slot.ends_at`)."""
        now = limits if callable(limits) else partial(_same, limits)
        key = source_of(url)
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = _Source(Pacer(0, self._clock))
        source.hand_on()  # the waiters' turn before a newcomer's (their limits may allow it)
        if source.full(now().max_transfers):
            if wait <= 0:
                raise self._busy(source)
            if source.waiting >= queue:
                self._on_queue("full")
                raise self._busy(source, f"and {source.waiting} requests wait already")
            await self._queue(source, lambda: now().max_transfers, wait)
        slot = Slot(source.pacer, cap=now().max_rate)
        source.slots.add(slot)
        source.retune()
        try:
            yield slot
        finally:
            source.slots.discard(slot)
            source.retune()
            source.hand_on()
            if not (source.running or source.waiting or source.handed or source.pacer.owes()):
                self._sources.pop(key, None)  # nothing to remember of it

    async def _queue(self, source: _Source, most: Callable[[], int], wait: float) -> None:
        """Wait in ``source``'s queue, at most ``wait`` seconds, until a slot is handed to
        this request under ``most()`` transfers at once (those in force when a slot may be
        handed: it is then the caller's to take); SourceBusy when none was."""
        turn = trio.Event()
        source.queue.append((turn, most))
        self._on_queue("queued")
        outcome: QueueEvent = "left"
        try:
            with trio.move_on_after(wait):
                await turn.wait()
            outcome = "served" if turn.is_set() else "timeout"
        finally:
            if turn.is_set():
                source.handed -= 1  # taken by the caller now, or passed on below
                if outcome != "served":
                    source.hand_on()  # (cancelled as it was handed one)
            else:
                source.queue.remove((turn, most))
            self._on_queue(outcome)
        if outcome == "timeout":
            raise self._busy(source)

    def _busy(self, source: _Source, more: str = "") -> SourceBusy:
        count = source.running
        reason = f"{count} transfers from this source already run" + (f" {more}" if more else "")
        ends = [slot.ends_at for slot in source.slots if slot.ends_at is not None]
        retry = max(0.0, min(ends) - self._clock()) if ends else None
        return SourceBusy(reason, retry_after=retry)
