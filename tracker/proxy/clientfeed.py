"""Feeding a client's channel: the upstream body read ahead and handed over piece by piece.

The path of a stream whose bytes cross Python (a TLS source, an HTTP/2 client): a reader task
reads the upstream ahead (:mod:`tracker.proxy.readahead`) while the pump hands what arrived
to the client's bounded channel (:mod:`tracker.proxy.channel`); what both hold follows the
memory budget shared by every such stream. :func:`recorded` runs a pump's work and records
how it failed in its :class:`~tracker.proxy.channel.Flow` rather than raising (the refresh's
pump uses it too).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from functools import partial

import attrs
import trio

from tracker.clientwire.transport import limit_reads
from tracker.core.logs import log_event
from tracker.errors import ArchiveInvalid, CacheError, TransportError, UpstreamError
from tracker.proxy.channel import ChannelBody, Flow, hand_over
from tracker.proxy.readahead import ReadAhead
from tracker.proxy.resume import UpstreamBody
from tracker.proxy.transfers import Head, StreamJob

log = logging.getLogger("tracker.transfers")


async def recorded(
    url: str,
    flow: Flow,
    scope: trio.CancelScope,
    work: Callable[[], Awaitable[None]],
    left: str,
) -> None:
    """Run ``work`` inside ``scope``, recording how it failed in ``flow`` (and the log)
    instead of raising: ``scope`` being cancelled records ``left``; Cancelled from outside
    (the service stopping) is re-raised."""
    try:
        with scope:
            await work()
        if scope.cancelled_caught:
            flow.error = left
        return
    except trio.Cancelled:
        flow.error = "the tracker is stopping"
        log_event(log, "warning", "stream_stopped", url=url, reason=flow.error)
        raise
    except ArchiveInvalid as exc:
        flow.error = f"archive failed verification: {exc.reason}"
        flow.outcome = "refresh_rejected"
    except (UpstreamError, CacheError) as exc:
        flow.error = str(exc)
    except TransportError as exc:
        flow.error = f"upstream broke: {exc}"
    except Exception as exc:  # a bug must not take the transfers nursery (the service) down
        log_event(log, "error", "stream_failed", url=url, exc_info=True)
        flow.error = f"internal error: {type(exc).__name__}"
    log_event(log, "warning", "stream_failed", url=url, reason=flow.error)


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
        attrs.evolve(head, body=ChannelBody(receive, body.length, flow, job.events))
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
    # (tracker/proxy/readahead.py): pieces grow while a slow client keeps this task busy,
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
                job.events.upstream_bytes(len(chunk))
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
