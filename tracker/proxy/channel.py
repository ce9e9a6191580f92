"""The path of a proxied stream whose bytes cross Python, for a relay or a refresh's first
reader (a TLS source, an HTTP/2 client): the upstream body a pump opened
(:mod:`tracker.proxy.pumps`) passed into the client's body through a bounded channel.

A reader task reads the upstream ahead (:class:`ReadAhead`) while the pump hands what
arrived to the client's bounded channel (:class:`ChannelBody`); what both hold follows the
memory budget shared by every such stream.

Memory is bounded: at most ``queue_chunks`` pieces wait in the channel (none by default: the
pump's read-ahead holds what arrived), and every piece is bounded by the process's share for
each channel stream (``ChunkBudget``); when the client reads slowly the pump blocks on it and
stops reading the upstream socket (backpressure). A pump that fails after the head went out
makes the body raise, so the server aborts the connection: a client never gets a silently
short 200. An early head's body (:class:`tracker.proxy.pumps.EarlyBody`) is this channel
when no splice can be.

Read-ahead: a pump that reads an upstream body and passes it on (to a client, to the cache
temp file) pays a fixed cost per piece: a channel hop, an ASGI send, a write in a worker
thread. Socket reads on a fast link return far less than asked (~90 KiB on loopback), so
pieces should be larger than reads; but a piece must never wait for bytes that have not
arrived yet (an upstream that sends 100 KiB and pauses would hold them back from the client).
:class:`ReadAhead` gets both: a reader task :meth:`~ReadAhead.put`\\ s every chunk as soon as
it arrives, and the consumer :meth:`~ReadAhead.take`\\ s *everything* held at that moment, at
once. While the consumer is busy with one piece the next one grows; when it is idle, each
chunk goes on alone, immediately. At most ``limit`` bytes (plus one chunk) are held; the
reader may lower or raise ``limit`` at any time (a budget shared by many streams).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from functools import partial

import attrs
import trio

from tracker.clientwire.transport import limit_reads
from tracker.errors import UpstreamError
from tracker.proxy.pumps import Flow, UpstreamBody, recorded
from tracker.proxy.transfers import Head, StreamJob
from tracker.serving.responsebodies import GeneratorBody


class ReadAhead:
    """Chunks put by a reader task, taken joined by one consumer; see the module doc."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive: {limit}")
        self._limit = limit
        self._parts: list[bytes] = []
        self._held = 0
        #: Seconds :meth:`put` waited for room: the consumer (a client) had not taken what
        #: was held, and the source was not read meanwhile.
        self.waited = 0.0
        #: The longest span of those waits with no :meth:`take` between them (the one still
        #: running included): the consumer took nothing at all meanwhile (a client that
        #: stalled, not one that reads slowly).
        self.stalled = 0.0
        #: When the running span began (its first wait since the last take; None: none).
        self._stall_began: float | None = None
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
        if self._held >= self._limit:
            # timed only when it waits: the clock is not read on the byte path otherwise
            began = trio.current_time()
            # the span this wait is part of (a take during it ends the span)
            since = self._stall_began = began if self._stall_began is None else self._stall_began
            try:
                while self._held >= self._limit:
                    await self._lot.park()
            finally:
                ended = trio.current_time()
                self.waited += ended - began
                self.stalled = max(self.stalled, ended - since)
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
        self._stall_began = None  # the consumer took bytes: no stall runs
        self._lot.unpark_all()
        return parts[0] if len(parts) == 1 else b"".join(parts)


@attrs.define(eq=False)
class ChannelBody(GeneratorBody):
    """The response body of a proxied stream: the chunks the pump sends, ``length`` in all.

    Entering it tells the pump the server started sending; leaving it (end, error or client
    gone) closes the channel, which the pump sees at its next send. If the stream ends short
    or the pump failed, iteration raises :class:`UpstreamError` and the server aborts the
    connection.
    """

    _receive: trio.MemoryReceiveChannel[bytes]
    length: int
    _flow: Flow
    #: Told the length of each chunk sent (metrics).
    _client_bytes: Callable[[int], None]

    async def _start(self) -> None:
        self._flow.draining.set()

    async def _finish(self, error: BaseException | None) -> None:
        self._receive.close()
        self._flow.client_left()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        sent = 0
        last = b""
        async for chunk in self._receive:
            if sent + len(chunk) >= self.length and chunk:
                # The last byte waits for the upstream's end: a length that is not the
                # source's own (the index's size for a chunked body) would otherwise cut a
                # longer body into a complete-looking answer, its surplus seen only after.
                chunk, last = chunk[:-1], chunk[-1:]
            if chunk:
                yield chunk
                sent += len(chunk)
                self._client_bytes(len(chunk))
        if not self._flow.complete or sent + len(last) != self.length:
            reason = self._flow.error or f"stream ended after {sent} of {self.length} bytes"
            raise UpstreamError(reason)
        if last:
            yield last
            self._client_bytes(len(last))


async def hand_over(
    send: trio.MemorySendChannel[bytes], chunk: bytes, flow: Flow, start_timeout: float
) -> bool:
    """Hand ``chunk`` to the response body; False once the client is gone."""
    if not flow.draining.is_set():
        with trio.move_on_after(start_timeout):
            await flow.draining.wait()
        if not flow.draining.is_set():
            return False  # the server never started the body: the client left before it
    try:
        await send.send(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def channel(
    job: StreamJob,
    body: UpstreamBody,
    head: Head,
    flow: Flow,
    task_status: trio.TaskStatus[Head],
) -> None:
    """Report a Head whose body is a channel, then pass the upstream body into it. The
    client leaving stops the pump at once, even while it waits for a stalled upstream."""
    send, receive = trio.open_memory_channel[bytes](job.settings.queue_chunks)
    task_status.started(
        attrs.evolve(head, body=ChannelBody(receive, body.length, flow, job.client_bytes))
    )
    await pass_on(job, body, send, flow)


async def pass_on(
    job: StreamJob, body: UpstreamBody, send: trio.MemorySendChannel[bytes], flow: Flow
) -> None:
    """Pass the upstream body into the client's channel ``send``; the channel is closed at
    the end, whatever ends it."""
    leave = trio.CancelScope()
    flow.on_leave = leave
    with send:
        to_client = partial(_to_client, job, body, send, flow)
        await recorded(body.first.url, flow, leave, to_client, "client went away")


async def _to_client(
    job: StreamJob, body: UpstreamBody, send: trio.MemorySendChannel[bytes], flow: Flow
) -> None:
    # A reader task reads the upstream ahead while this task sends what has arrived so far
    # (ReadAhead, above): pieces grow while a slow client keeps this task busy,
    # and no byte waits for later ones to arrive. What it holds follows the budget shared
    # by every such stream (a slow client would otherwise hold several MiB: bench/README.md).
    ahead = ReadAhead(job.settings.read_size)
    budget = job.budget
    if budget is not None:
        budget.streams += 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_ahead, job, body, ahead)
            try:
                delivered = await _send(job, ahead, send, flow)
            finally:
                nursery.cancel_scope.cancel()  # the reader, when this ended early
    except BaseExceptionGroup as group:
        # The reader hands its errors over, so only this task's own error (or the
        # cancellation both got) comes out: raise it as itself, for recorded to tell apart.
        raise _leading(group) from None
    finally:
        if budget is not None:
            budget.streams -= 1
        # the time the source went unread because the client had not taken what came: a
        # relay paced by its client says nothing of its source's speed (docs/ranking.md)
        flow.client_waited += ahead.waited
        flow.client_stalled = max(flow.client_stalled, ahead.stalled)
    if delivered:
        flow.complete = True


def _leading(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of ``group`` that is not a cancellation, else its first one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    return next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])


async def _read_ahead(job: StreamJob, body: UpstreamBody, ahead: ReadAhead) -> None:
    """Read the upstream body into ``ahead``; its end or break goes to the consumer. Each
    read, and what ``ahead`` holds, follow the stream's share of ``job.budget``."""
    try:
        _follow_budget(job, body, ahead)
        async with aclosing(body.chunks()) as chunks:
            async for chunk in chunks:
                job.upstream_bytes(len(chunk))
                _follow_budget(job, body, ahead)
                await ahead.put(chunk)
    except Exception as exc:  # re-raised by the consumer, in its own task (no group)
        ahead.end(exc)
    else:
        ahead.end()


def _follow_budget(job: StreamJob, body: UpstreamBody, ahead: ReadAhead) -> None:
    if job.budget is not None:
        share = job.budget.chunk()
        ahead.limit = share
        limit_reads(body.answer.response, share)


async def _send(
    job: StreamJob, ahead: ReadAhead, send: trio.MemorySendChannel[bytes], flow: Flow
) -> bool:
    """Send every piece; False when the client went away."""
    while (piece := await ahead.take()) is not None:
        if not await hand_over(send, piece, flow, job.settings.drain_start_timeout):
            flow.error = "client went away"
            return False
    return True
