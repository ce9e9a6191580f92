"""The relay: a plain stream to one client, nothing cached (``Step.RELAY``), its pump and
its answer.

:func:`relay` is spliced socket to socket when the client's connection and the upstream
allow it (:mod:`tracker.proxy.passthrough`), else passed through the bounded channel
(:mod:`tracker.proxy.pumps`). It is started with ``await transfers.start(pump, job,
...)`` (:func:`relay_answer`): it opens the upstream (:func:`~tracker.proxy.pumps.opened`:
failover inside, an early head for a slow source, the answer closed on every path), reports
the client's :class:`~tracker.proxy.transfers.Head` through ``task_status.started``, then
moves the body. Before ``started`` it raises UpstreamError when no source answers usably;
after it, it never raises but Cancelled: failures end the client's body in error. The size
an early head promises is the decisions' (:func:`tracker.proxy.decisions.early_head`). A
refresh of the cache is the other pump, :func:`tracker.proxy.cachefill.fill`.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from tracker.accounting.downloads import outcome_of
from tracker.clientwire.transport import BigReadStream, splice_stream
from tracker.observability.folding import log_folded
from tracker.proxy.channel import ChannelBody, channel, pass_on
from tracker.proxy.passthrough import SpliceBody
from tracker.proxy.pumps import EarlyBody, Flow, Upstream, ending_of, keeps_promise, opened
from tracker.proxy.transfers import Head, Launcher, StreamJob, head_answer
from tracker.serving.httpanswer import Answer

log = logging.getLogger("tracker.transfers")


async def relay(job: StreamJob, *, task_status: trio.TaskStatus[Head]) -> None:
    """A plain stream to one client (see the module doc)."""
    flow = Flow()
    async with opened(job, flow, task_status) as upstream:
        if upstream is None:
            return  # an early head answered a HEAD, or no source followed it
        head, length = job.head_of(upstream.first)
        if upstream.early is not None:
            if keeps_promise(job, head, length, flow) and length is not None:
                await _follow_early(job, upstream, upstream.early, length, flow)
            else:
                upstream.early.fail(flow.error or "the source broke the early head's promise")
            return
        if length is None:
            task_status.started(head)
            return
        stream = _spliceable(job, upstream, length)
        if stream is not None:
            body = _splice_body(job, stream, length)
            task_status.started(attrs.evolve(head, body=body))
            await _spliced(job, upstream, body, flow)
            return
        await channel(job, upstream.read(job, length), head, flow, task_status)


async def relay_answer(launcher: Launcher, job: StreamJob) -> Answer:
    """A plain stream to one client, nothing cached: :func:`relay` started, its answer."""
    head = await launcher.start(partial(relay, job))
    if isinstance(head, Answer):
        return head
    launcher.count("proxy")
    return head_answer(head)


async def _follow_early(
    job: StreamJob, upstream: Upstream, early: EarlyBody, length: int, flow: Flow
) -> None:
    """Send the answer as the body of the early head that went out before it: spliced
    when the connections allow it (as a prompt answer would be), else through the channel."""
    stream = _spliceable(job, upstream, length)
    if stream is not None:
        body = _splice_body(job, stream, length)
        if early.decide(body):
            await _spliced(job, upstream, body, flow)
        return
    send, receive = trio.open_memory_channel[bytes](job.settings.queue_chunks)
    if not early.decide(ChannelBody(receive, length, flow, job.client_bytes)):
        send.close()  # the client left before the answer came: nobody reads it
        receive.close()
        return
    await pass_on(job, upstream.read(job, length), send, flow)


def _splice_body(job: StreamJob, stream: BigReadStream, length: int) -> SpliceBody:
    """A body that splices the upstream socket of ``stream`` to the client's connection."""
    assert job.zero_copy is not None
    return SpliceBody(
        job.zero_copy,
        stream.get_extra_info("socket"),
        lambda: stream.body_unread,
        length,
        job.settings.read_timeout,
        job.upstream_bytes,
        job.client_bytes,
    )


async def _spliced(job: StreamJob, upstream: Upstream, body: SpliceBody, flow: Flow) -> None:
    """Keep the upstream open until ``body`` (handed to the server) has ended, or the
    server never started it; who ended it goes to ``flow.ending``."""
    upstream.splicing = lambda: body.received
    with trio.move_on_after(job.settings.drain_start_timeout):
        await body.started.wait()
    if body.started.is_set():
        await body.ended.wait()
    # what came from the source, a piece that broke midway included (its measurement)
    upstream.spliced, upstream.splicing = body.received, None
    flow.client_waited = body.client_waited  # a slow client paces the source (its measurement)
    flow.client_stalled = body.client_stalled  # a stalled one may have the source give up
    # the source's fault (SourceFailed: a stall, a cut) or the client's (ClientGone)
    flow.ending = ending_of(body.error, body.sent == body.length)
    if outcome_of(body.sent, body.length, body.error) == "error":
        log_folded(log, "warning", "stream_failed", url=upstream.first.url, reason=str(body.error))


def _spliceable(job: StreamJob, upstream: Upstream, length: int) -> BigReadStream | None:
    """The upstream's stream when its body may be spliced to the client: a zero-copy
    connection, and a source without a rate cap (a capped one is read chunk by chunk, paced
    by ``source_limits.max_rate``)."""
    if job.zero_copy is None or upstream.first.pacer.rate > 0:
        return None
    return splice_stream(upstream.first.response, length)
