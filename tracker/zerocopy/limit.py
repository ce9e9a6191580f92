"""How many client connections one listener keeps open, and which go first when it is full.

A client that opens connections and sends nothing (or half a request head) costs a file
descriptor each; a few hundred of them used to exhaust the process's descriptors, and then
nobody could connect, the operator's monitoring included. So each listener keeps at most
``limit`` connections (``max_connections``, kept below the descriptor limit by
:func:`effective_limit`). When a new connection arrives at the limit, the connection idle the
longest is shut down to make room: idle means no request in flight, so a keep-alive
connection between requests and one that never completed its request head both are, while a
download in progress never is. Only when every connection is busy is the new one refused
(closed at once). Neither is logged per connection: one summary line a minute at most.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
from collections.abc import Callable

import trio

from tracker.core.logs import log_event
from tracker.zerocopy.connection import ZeroCopyStream

log = logging.getLogger("tracker.server")

#: Descriptors kept for everything but client connections: listeners, logs, the config...
RESERVED_DESCRIPTORS = 32
#: Seconds between two summary lines about refused or closed connections.
REPORT_EVERY = 60.0


def effective_limit(max_connections: int, descriptors: int | None = None) -> int:
    """``max_connections``, lowered so that client connections can take at most half of the
    descriptors left after :data:`RESERVED_DESCRIPTORS`: the other half is for what each
    download opens besides its client socket (the upstream socket, a file, a splice pipe).
    ``descriptors`` defaults to the process's soft ``RLIMIT_NOFILE``."""
    if descriptors is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        descriptors = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(1, min(max_connections, (descriptors - RESERVED_DESCRIPTORS) // 2))


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
        self.refused = 0
        self._reported = (0, 0)
        self._last_report = -math.inf

    @property
    def open(self) -> int:
        """Connections counted against the limit."""
        return len(self._open) - len(self._closing)

    def admit(self, stream: ZeroCopyStream) -> bool:
        """Count ``stream`` in, making room by closing the longest idle connection when the
        limit is reached; False (the caller closes ``stream``) when every one is busy."""
        if self.open >= self.limit and not self._evict_one():
            self.refused += 1
            self._report()
            return False
        self._open.add(stream)
        return True

    def release(self, stream: ZeroCopyStream) -> None:
        """``stream`` was closed (its handler ended)."""
        self._open.discard(stream)
        self._closing.discard(stream)

    def _evict_one(self) -> bool:
        idle = [s for s in self._open - self._closing if s.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.last_active)
        self._closing.add(oldest)
        oldest.shut_down()
        self.evicted += 1
        self._report()
        return True

    def exhausted(self, error: OSError) -> None:
        """accept() failed for lack of descriptors or memory (reported like a refusal)."""
        self.refused += 1
        self._report(reason=error.strerror or str(error))

    def _report(self, reason: str = "") -> None:
        now = self._clock()
        if now - self._last_report < REPORT_EVERY:
            return
        evicted, refused = self.evicted - self._reported[0], self.refused - self._reported[1]
        self._reported, self._last_report = (self.evicted, self.refused), now
        log_event(
            log,
            "warning",
            "connections_limited",
            limit=self.limit,
            idle_closed=evicted,
            refused=refused,
            reason=reason or "connection limit reached",
        )


#: accept() errors that mean "no room now", not "the listener is broken".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
