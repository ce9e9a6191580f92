"""The channel between a pump and its client's response body, and their shared state.

Memory is bounded: at most ``queue_chunks`` pieces wait in the channel (none by default: the
pump's read-ahead holds what arrived, :mod:`tracker.proxy.readahead`), and every piece is
bounded by the process's share for each channel stream (``ChunkBudget``); when the client
reads slowly the pump blocks on it and stops reading the upstream socket (backpressure). A
pump that fails after the head went out makes the body raise, so the server aborts the
connection: a client never gets a silently short 200.

An early head's body (:class:`EarlyBody`) is decided only once a source answers: a splice of
the upstream socket when the connections allow it, else this channel.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import attrs
import trio

from tracker.errors import UpstreamError
from tracker.proxy.transfers import RefreshOutcome, StreamEvents
from tracker.serving.responsebodies import Body, GeneratorBody


@attrs.define
class Flow:
    """State shared by a pump and its response body."""

    draining: trio.Event = attrs.field(factory=trio.Event)
    complete: bool = False
    error: str | None = None
    #: Cancelled when the client leaves early, if nothing else needs the upstream bytes.
    on_leave: trio.CancelScope | None = None
    #: What the refresh (if any) came to; reported once, as soon as it is known.
    outcome: RefreshOutcome = "refresh_failed"
    reported: bool = False

    def report(self, events: StreamEvents) -> None:
        """Report the refresh outcome (first call only)."""
        if not self.reported:
            self.reported = True
            events.refresh_outcome(self.outcome)

    def client_left(self) -> None:
        """The response body was left (end, error or client gone)."""
        if not self.complete and self.on_leave is not None:
            self.on_leave.cancel()


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
    _events: StreamEvents

    async def _start(self) -> None:
        self._flow.draining.set()

    async def _finish(self, error: BaseException | None) -> None:
        self._receive.close()
        self._flow.client_left()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        sent = 0
        async for chunk in self._receive:
            yield chunk
            sent += len(chunk)
            self._events.client_bytes(len(chunk))
        if not self._flow.complete or sent != self.length:
            reason = self._flow.error or f"stream ended after {sent} of {self.length} bytes"
            raise UpstreamError(reason)


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


class EarlyBody(GeneratorBody):
    """The body of an early head (docs/http-api.md, "Proxy mode"): the head went out before
    any source answered, so its bytes come from whichever body the pump :meth:`decide`\\ s
    on once one does (a splice of the upstream socket, or a channel). When none does
    (:meth:`fail`), iteration raises UpstreamError and the server breaks the connection:
    never a short 200.
    """

    def __init__(self) -> None:
        self._decided = trio.Event()
        self._body: Body | None = None
        self._error = "no source answered"
        self._left = False

    def decide(self, body: Body) -> bool:
        """Send ``body``; False (``body`` will never be started) when the client has left
        already or the body was decided before."""
        if self._left or self._decided.is_set():
            return False
        self._body = body
        self._decided.set()
        return True

    def fail(self, reason: str) -> None:
        """No body follows (no-op once one was decided): the client's connection breaks."""
        if not self._decided.is_set():
            self._error = reason
            self._decided.set()

    async def _finish(self, error: BaseException | None) -> None:
        self._left = True

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        await self._decided.wait()
        if self._body is None:
            raise UpstreamError(self._error)
        async with self._body as chunks:
            async for chunk in chunks:
                yield chunk
