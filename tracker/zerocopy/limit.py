"""How many client connections and downloads the process takes, and which connection goes
first when a listener is full.

Every client connection costs a file descriptor, and every download more (its file or
upstream socket, a splice pipe, duplicates while a worker thread sends). When the process runs
out of descriptors, nothing opens any more: not the API's connections, not ``/metrics``, not a
local target's directory scan. So :func:`descriptor_budget` splits the descriptor limit
(``LimitNOFILE``) at start: a reserve for everything else first, then half of the rest for
client connections and half for what downloads hold on top (the download limit is enforced by
:class:`tracker.accounting.downloads.DownloadSlots`: a request beyond it gets 503 at once, unless
a download's client has taken nothing for a while and its slot goes to the new one, while
the API keeps answering on the connections left). A reload keeps that split, so the
``scrape_concurrency`` it puts in force is at most what the split leaves for probes
(:func:`probes_within`, the same rule).

Each listener keeps at most ``limit`` connections (``max_connections``, lowered by the budget).
When a new connection arrives at the limit, the connection idle the longest is shut down to
make room: idle means no request in flight, so a keep-alive connection between requests and
one that never completed its request head both are, while a download in progress never is.
When every connection is busy, the client holding the most connections gives one up to a new
client holding at least two fewer (:func:`fair_share`: one machine's many connections never
lock the others out), once the new one has asked for something: until its first request it
waits over the limit, so a connection that asks nothing (a port scanner's) ends nobody's
download. A client's newest connection waits, beside other clients' (:data:`WAITING_AT_ONCE`
at most, the one waiting longest making way past that): one machine that connects again and
again asking nothing replaces only its own, never another's newcomer before its request.
Only when no client gives one up is the new one refused (closed at once). None of this is
logged per connection: one summary line a minute at most.
"""

from __future__ import annotations

import logging
import math
import resource
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial

import attrs
import trio

from tracker.net.limits import CAPACITY_ERRNOS
from tracker.observability.logs import log_event
from tracker.zerocopy.stream import ZeroCopyStream

# CAPACITY_ERRNOS: accept() errors that mean "no room now", not "the listener is broken".
__all__ = [
    "CAPACITY_ERRNOS",
    "ConnectionLimit",
    "DescriptorBudget",
    "descriptor_budget",
    "fair_share",
    "probes_within",
]

log = logging.getLogger("tracker.server")

#: Descriptors kept for everything but client connections, downloads and probes: listeners,
#: logs, the config, directory scans, cache files being checked or promoted, a prefetch's
#: refresh, idle upstream connections kept for reuse, the object store's connections, and
#: the internal listener's connections (INTERNAL_CONNECTIONS), and the connections waiting
#: over each listener's limit for their first request (WAITING_AT_ONCE each).
RESERVED_DESCRIPTORS = 160
#: Descriptors one probe in flight may hold (an HTTP target's two requests at once).
PROBE_DESCRIPTORS = 2
#: Descriptors a download holds besides its client connection, at most: its source (a file,
#: or an upstream socket), a splice pipe (two), and a duplicate of the client's socket and of
#: the source's while a worker thread sends (tracker/zerocopy/pieces.py).
DOWNLOAD_DESCRIPTORS = 5
#: Connections of the internal listener (``/metrics``, ``/healthz``, ``/reload``): a few
#: scrapers and probes, not the public.
INTERNAL_CONNECTIONS = 32
#: Seconds between two summary lines about refused or closed connections.
REPORT_EVERY = 60.0
#: Connections that wait over a listener's limit for their first request at once, each of
#: another client (:class:`ConnectionLimit`): one let one address that connects again and
#: again, asking nothing, close every other client's newcomer before its request was read.
#: A few descriptors of the reserve (RESERVED_DESCRIPTORS).
WAITING_AT_ONCE = 4


@attrs.frozen
class DescriptorBudget:
    """What the descriptor limit allows at once: ``connections`` per public listener,
    ``internal`` connections of the internal listener, ``downloads`` archive bodies."""

    connections: int
    internal: int
    downloads: int


def descriptor_budget(
    max_connections: int, scrape_concurrency: int, descriptors: int | None = None
) -> DescriptorBudget:
    """Split ``descriptors`` (default: the process's soft ``RLIMIT_NOFILE``) so that they
    never run out: the reserve (RESERVED_DESCRIPTORS, and PROBE_DESCRIPTORS per probe of
    ``scrape_concurrency``; at most half of all), then half of the rest for client
    connections (at most ``max_connections``) and the other half for downloads, each
    DOWNLOAD_DESCRIPTORS on top of its connection (at most one per connection)."""
    if descriptors is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        descriptors = soft if soft != resource.RLIM_INFINITY else 1 << 20
    reserve = min(descriptors // 2, RESERVED_DESCRIPTORS + PROBE_DESCRIPTORS * scrape_concurrency)
    usable = descriptors - reserve
    connections = max(1, min(max_connections, usable // 2))
    downloads = max(1, min(connections, (usable - connections) // DOWNLOAD_DESCRIPTORS))
    internal = max(1, min(max_connections, INTERNAL_CONNECTIONS))
    return DescriptorBudget(connections, internal, downloads)


def probes_within(
    split: DescriptorBudget, max_connections: int, probes: int, descriptors: int | None = None
) -> int:
    """The most probes at once, at most ``probes``, that leave ``split`` whole: the
    ``scrape_concurrency`` a reload may put in force beside the connections and downloads
    split at start, which stay until a restart (the listeners keep their limits). The rule
    is the start's, :func:`descriptor_budget` over the same ``descriptors`` (default: the
    soft ``RLIMIT_NOFILE`` now): a value that would have made the start give fewer
    connections or downloads than ``split`` is more than the descriptors leave for probes.
    At least 1, the least ``scrape_concurrency`` there is. Pure but for the default."""
    if descriptors is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        descriptors = soft if soft != resource.RLIM_INFINITY else 1 << 20

    def fits(count: int) -> bool:
        made = descriptor_budget(max_connections, count, descriptors)
        return made.connections >= split.connections and made.downloads >= split.downloads

    if fits(probes):
        return probes
    # fewer probes never leave less (the reserve grows with them): the largest that fits
    low, high = 1, probes  # fits(high) is false; the answer is below it, at least 1
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def fair_share(holders: Iterable[str | None], newcomer: str | None) -> str | None:
    """The client that gives one of what it holds (a connection, a download slot) to a
    request of client ``newcomer`` when none is free: the client holding the most
    (``holders``: the client of each thing held, None for one no client is known of, never
    chosen), when it holds at least two more than ``newcomer`` holds already, so that after
    the swap the newcomer holds no more than it and the two never take turns. None when
    nobody holds more than that share: the newcomer is refused. A client is an address (an
    IPv6 one as its /64: :func:`tracker.zerocopy.connection.client_of`), so an
    aria2c with 16 connections keeps them all while anything is free, and behind a reverse
    proxy (every client one address) nothing changes. Pure; ties go to the client listed
    first."""
    counts = Counter(client for client in holders if client is not None)
    if not counts:
        return None
    top, most = counts.most_common(1)[0]
    held = counts[newcomer] if newcomer is not None else 0
    return top if most >= held + 2 else None


class ConnectionLimit:
    """The open connections of one listener; see the module doc.

    ``clock`` is injectable for tests (default: trio's).
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.limit = limit
        self._clock = clock
        self._open: set[ZeroCopyStream] = set()
        #: Connections shut down to make room, still unwinding (not counted any more).
        self._closing: set[ZeroCopyStream] = set()
        self.evicted = 0
        #: Busy connections closed to make room for another client (:func:`fair_share`).
        self.shared = 0
        #: The connections admitted over the limit for a client :func:`fair_share` owes one,
        #: not counted until their first request (:meth:`_requested`): each client's newest,
        #: the one waiting longest first.
        self._waiting: dict[str | None, ZeroCopyStream] = {}
        self.refused = 0
        self._reported = (0, 0, 0)
        self._last_report = -math.inf

    @property
    def open(self) -> int:
        """Connections counted against the limit."""
        # (one waiting is never among those closing: :meth:`_close`)
        return len(self._open) - len(self._closing) - len(self._waiting)

    def _counted(self) -> set[ZeroCopyStream]:
        """The connections counted: neither closing nor waiting for their first request."""
        return self._open - self._closing - set(self._waiting.values())

    def admit(self, stream: ZeroCopyStream) -> bool:
        """Count ``stream`` in, making room when the limit is reached by closing the longest
        idle connection; else, when the client holding the most would give a busy one up
        to ``stream``'s (:func:`fair_share`), let ``stream`` wait over the limit for its
        first request, in the place of its client's one waiting so far, else of the one
        waiting longest when WAITING_AT_ONCE do; False (the caller closes ``stream``) when
        none of these may be."""
        if self.open < self.limit or self._evict_one():
            self._open.add(stream)
            return True
        if self._owed(stream) is None or not stream.on_first_request(
            partial(self._requested, stream)
        ):
            self.refused += 1
            self._report()
            return False
        # it asked nothing yet: the newest waits instead, its client's own first, so that a
        # client connecting again and again replaces only its own
        making_way = self._waiting.get(stream.client)
        if making_way is None and len(self._waiting) >= WAITING_AT_ONCE:
            making_way = next(iter(self._waiting.values()))
        if making_way is not None:
            self._close(making_way)
            self.evicted += 1
            self._report()
        self._waiting[stream.client] = stream
        self._open.add(stream)
        return True

    def release(self, stream: ZeroCopyStream) -> None:
        """``stream`` was closed (its handler ended)."""
        self._open.discard(stream)
        self._closing.discard(stream)
        self._stop_waiting(stream)

    def _stop_waiting(self, stream: ZeroCopyStream) -> bool:
        """``stream`` waits no more (for its first request); whether it did."""
        if self._waiting.get(stream.client) is not stream:
            return False
        del self._waiting[stream.client]
        return True

    def _close(self, stream: ZeroCopyStream) -> None:
        """Shut ``stream`` down: it no longer counts, while it unwinds."""
        self._stop_waiting(stream)
        self._closing.add(stream)
        stream.shut_down()

    def _evict_one(self) -> bool:
        idle = [s for s in self._counted() if s.idle]
        if not idle:
            return False
        self._close(min(idle, key=lambda s: s.last_active))
        self.evicted += 1
        self._report()
        return True

    def _owed(self, stream: ZeroCopyStream) -> str | None:
        """The client that gives a busy connection up to ``stream``'s (:func:`fair_share`
        among those counted, ``stream`` not among them), or None."""
        return fair_share((s.client for s in self._counted() if s is not stream), stream.client)

    def _requested(self, stream: ZeroCopyStream) -> None:
        """``stream``, admitted over the limit, has asked for something: it counts now,
        making room by closing the longest idle connection, else the least recently active
        one of the client holding the most (its answer in progress ends as the client's
        failure, as if it had left) when that client still owes one; else it is closed."""
        if not self._stop_waiting(stream):
            return  # counted already, or closed
        if self.open <= self.limit or self._evict_one():
            return
        client = self._owed(stream)
        if client is None:  # room or fairness changed while it waited: refused after all
            self._close(stream)
            self.refused += 1
            self._report()
            return
        counted = self._counted()
        self._close(min((s for s in counted if s.client == client), key=lambda s: s.last_active))
        self.shared += 1
        self._report()

    def exhausted(self, error: OSError) -> None:
        """accept() failed for lack of descriptors or memory (reported like a refusal)."""
        self.refused += 1
        self._report(reason=error.strerror or str(error))

    def _report(self, reason: str = "") -> None:
        now = self._clock()
        if now - self._last_report < REPORT_EVERY:
            return
        evicted, shared, refused = (
            self.evicted - self._reported[0],
            self.shared - self._reported[1],
            self.refused - self._reported[2],
        )
        self._reported, self._last_report = (self.evicted, self.shared, self.refused), now
        log_event(
            log,
            "warning",
            "connections_limited",
            limit=self.limit,
            idle_closed=evicted,
            busy_closed=shared,
            refused=refused,
            reason=reason or "connection limit reached",
        )
