"""The keep-alive timeout of a listener's connections, kept by one task for all of them.

hypercorn gives every connection a task of its own that sleeps through the keep-alive
timeout whenever the connection is idle (``TCPServer.idle_task``, a ``TrioSingleTask``
restarted by each ``Updated(idle=True)`` event), and that wakes at shutdown to close it. A
task with its cancel scopes and coroutine frames is about 6 KB: a third of what an idle
keep-alive connection costs (bench: idle connections). Here hypercorn's per-connection object
is replaced by an :class:`IdleTimer` that only records when its connection became idle, and
one :class:`KeepAlive` task per listener shuts down the connections idle for longer than the
timeout, and every idle one at shutdown (docs/architecture.md#connections).

"Idle" is hypercorn's: from the end of an answer, or from the connection's start, until a
request head is complete. So a client that trickles a request head byte by byte is closed
after the timeout as before; bytes coming in do not restart it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import trio

#: Seconds between two looks for expired connections: a connection is closed between the
#: timeout and the timeout plus this.
TICK = 0.25


class Closable(Protocol):
    """A connection the keep-alive timeout can end (tracker.zerocopy.stream.ZeroCopyStream)."""

    def shut_down(self) -> None:
        """End the connection both ways; its handler then sees the end and closes it."""


class KeepAlive:
    """When each idle connection of a listener became idle; shuts down the expired ones.

    ``clock`` is injectable for tests (default: trio's).
    """

    def __init__(self, timeout: float, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.timeout = timeout
        self._clock = clock
        #: Idle connections and since when, oldest first (re-inserted when idle again).
        self._idle: dict[Closable, float] = {}
        self._stopping = False

    def idle(self, connection: Closable) -> None:
        """``connection`` has no request in flight from now; once stopping, it ends now."""
        if self._stopping:
            connection.shut_down()
            return
        self._idle.pop(connection, None)
        self._idle[connection] = self._clock()

    def busy(self, connection: Closable) -> None:
        """A request of ``connection`` is in flight (or it closed): no timeout runs for it."""
        self._idle.pop(connection, None)

    def expired(self, now: float) -> Iterator[Closable]:
        """The connections idle since ``now - timeout`` or earlier, oldest first."""
        for connection, since in self._idle.items():
            if now - since < self.timeout:
                return
            yield connection

    def close_expired(self) -> int:
        """Shut down every expired connection; how many."""
        ended = list(self.expired(self._clock()))
        for connection in ended:
            self.busy(connection)
            connection.shut_down()
        return len(ended)

    def stop(self) -> None:
        """The server stops: shut down every idle connection now, and each one that becomes
        idle later (a busy one finishes its answer first, within the graceful timeout)."""
        self._stopping = True
        idle, self._idle = list(self._idle), {}
        for connection in idle:
            connection.shut_down()

    async def run(self) -> None:
        """Close expired connections every TICK seconds, until cancelled."""
        while True:
            await trio.sleep(TICK)
            self.close_expired()

    def timer(self, connection: Closable) -> IdleTimer:
        """The stand-in for hypercorn's idle task of ``connection``."""
        return IdleTimer(self, connection)


class IdleTimer:
    """What hypercorn's ``TCPServer`` calls its ``idle_task``: ``restart(task_group, action)``
    when its connection becomes idle, ``stop()`` when a request starts. The action (sleep
    through the timeout, then close) is :class:`KeepAlive`'s, for every connection at once."""

    __slots__ = ("_connection", "_keep_alive")

    def __init__(self, keep_alive: KeepAlive, connection: Closable) -> None:
        self._keep_alive = keep_alive
        self._connection = connection

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection is idle from now."""
        self._keep_alive.idle(self._connection)

    async def stop(self) -> None:
        """A request is in flight."""
        self._keep_alive.busy(self._connection)
