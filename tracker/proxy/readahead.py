"""Upstream bytes read ahead of their consumer, handed over as one piece per take.

A pump that reads an upstream body and passes it on (to a client, to the cache temp file)
pays a fixed cost per piece: a channel hop, an ASGI send, a write in a worker thread. Socket
reads on a fast link return far less than asked (~90 KiB on loopback), so pieces should be
larger than reads; but a piece must never wait for bytes that have not arrived yet (an
upstream that sends 100 KiB and pauses would hold them back from the client).

:class:`ReadAhead` gets both: a reader task :meth:`~ReadAhead.put`\\ s every chunk as soon as
it arrives, and the consumer :meth:`~ReadAhead.take`\\ s *everything* held at that moment, at
once. While the consumer is busy with one piece the next one grows; when it is idle, each
chunk goes on alone, immediately. At most ``limit`` bytes (plus one chunk) are held; the
reader may lower or raise ``limit`` at any time (a budget shared by many streams).
"""

from __future__ import annotations

import trio


class ReadAhead:
    """Chunks put by a reader task, taken joined by one consumer; see the module doc."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive: {limit}")
        self._limit = limit
        self._parts: list[bytes] = []
        self._held = 0
        self._ended = False
        self._error: BaseException | None = None
        # Wakes whoever waits (the reader for room, the consumer for bytes); never both at
        # once for the same reason, so waking everyone is cheap and simple.
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def limit(self) -> int:
        """Bytes held before :meth:`put` waits."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value <= 0:
            raise ValueError(f"limit must be positive: {value}")
        self._limit = value
        self._lot.unpark_all()  # a raised limit may let the reader go on

    @property
    def held(self) -> int:
        """Bytes put and not taken yet."""
        return self._held

    async def put(self, chunk: bytes) -> None:
        """Hold ``chunk`` for the consumer; waits while ``limit`` bytes are held already
        (backpressure: the reader stops reading its socket). Cancellation ends the wait."""
        while self._held >= self._limit:
            await self._lot.park()
        self._parts.append(chunk)
        self._held += len(chunk)
        self._lot.unpark_all()

    def end(self, error: BaseException | None = None) -> None:
        """No more chunks: the body ended, or broke with ``error`` (raised by :meth:`take`
        once every byte put before it was taken)."""
        self._ended, self._error = True, error
        self._lot.unpark_all()

    async def take(self) -> bytes | None:
        """Every byte held, as one piece; waits while none is. None once the reader ended
        and everything was taken; the reader's error instead, if it ended with one.
        Cancellation ends the wait (nothing is lost: the bytes stay held)."""
        while not self._parts:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            await self._lot.park()
        parts, self._parts, self._held = self._parts, [], 0
        self._lot.unpark_all()
        return parts[0] if len(parts) == 1 else b"".join(parts)
