"""The channel between a pump and its client's response body, and their shared state.

Memory is bounded: at most ``queue_chunks`` pieces wait in the channel; when the client reads
slowly the pump blocks on it and stops reading the upstream socket (backpressure). A pump that
fails after the head went out makes the body raise, so the server aborts the connection: a
client never gets a silently short 200.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import attrs
import trio

from tracker.errors import UpstreamError
from tracker.files.bodies import GeneratorBody
from tracker.proxy.transfers import RefreshOutcome, StreamEvents


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


class ChannelBody(GeneratorBody):
    """The response body of a proxied stream: the chunks the pump sends, ``length`` in all.

    Entering it tells the pump the server started sending; leaving it (end, error or client
    gone) closes the channel, which the pump sees at its next send. If the stream ends short
    or the pump failed, iteration raises :class:`UpstreamError` and the server aborts the
    connection.
    """

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[bytes],
        length: int,
        flow: Flow,
        events: StreamEvents,
    ) -> None:
        self.length = length
        self._receive = receive
        self._flow = flow
        self._events = events

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
