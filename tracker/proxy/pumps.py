"""The byte paths of proxy mode: one pump each, over shared open and close steps.

=========  =================================================================================
``relay``   a plain stream to one client, nothing cached: spliced socket to socket when the
            client's connection and the upstream allow it (:mod:`tracker.proxy.passthrough`),
            else through the bounded channel (:mod:`tracker.proxy.channel`)
``fill``    a refresh of the cache: the upstream bytes go to the temp file only, at the
            upstream's pace (spliced from the socket when it allows, see
            :meth:`tracker.proxy.resume.UpstreamBody.into`; a break is resumed), and its
            clients read the growing file (:mod:`tracker.proxy.sharing`), each at its own
            pace: the one that started it, the joiners of a shared refresh, or nobody (a
            prefetch); when the temp file cannot be opened (no room), the starter is
            relayed uncached
=========  =================================================================================

Each is started with ``await transfers.start(pump, job, ...)``: it opens the upstream
(:func:`_opened`: failover inside, the answer closed on every path), reports the client's
:class:`~tracker.proxy.transfers.Head` through ``task_status.started``, then moves the body.
Before ``started`` a pump raises UpstreamError when no source answers usably; after it, it
never raises but Cancelled: failures end the client's body in error (or fail the refresh its
readers follow). A refresh always ends in :func:`_end_refresh`: promoted, or its temp file
removed, its outcome counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.core.logs import log_event
from tracker.core.redact import redact_text
from tracker.errors import ArchiveInvalid, CacheError, TransportError, UpstreamError
from tracker.files.downloads import outcome_of
from tracker.files.ranges import parse_http_date
from tracker.proxy.channel import ChannelBody, EarlyBody, Flow, hand_over
from tracker.proxy.passthrough import SpliceBody
from tracker.proxy.readahead import ReadAhead
from tracker.proxy.resume import UpstreamBody, resumable
from tracker.proxy.transfers import Head, RefreshJob, StreamJob, plan_head
from tracker.proxy.upstream import UpstreamAnswer
from tracker.zerocopy.transport import BigReadStream, limit_reads, splice_stream

log = logging.getLogger("tracker.transfers")


# -- the three byte paths ---------------------------------------------------------------------


async def relay(job: StreamJob, *, task_status: trio.TaskStatus[Head]) -> None:
    """A plain stream to one client (see the module doc)."""
    flow = Flow()
    async with _opened(job, flow, task_status) as upstream:
        if upstream is None:
            return  # an early head answered a HEAD, or no source followed it
        head, length = _plan(job, upstream.first)
        if upstream.early is not None:
            if _keeps_promise(job, head, length, flow) and length is not None:
                await _follow_early(job, upstream, upstream.early, length, flow)
            else:
                upstream.early.fail(flow.error or "the source broke the early head's promise")
            return
        if length is None:
            task_status.started(head)
            return
        stream = splice_stream(upstream.first.response, length) if job.zero_copy else None
        if stream is not None:
            body = _splice_body(job, stream, length)
            task_status.started(attrs.evolve(head, body=body))
            await _spliced(job, upstream, body)
            return
        await _channel(job, upstream.read(job, length), head, flow, task_status)


async def _follow_early(
    job: StreamJob, upstream: _Upstream, early: EarlyBody, length: int, flow: Flow
) -> None:
    """Send the answer as the body of the early head that went out before it: spliced
    when the connections allow it (as a prompt answer would be), else through the channel."""
    stream = splice_stream(upstream.first.response, length) if job.zero_copy else None
    if stream is not None:
        body = _splice_body(job, stream, length)
        if early.decide(body):
            await _spliced(job, upstream, body)
        return
    send, receive = trio.open_memory_channel[bytes](job.settings.queue_chunks)
    if not early.decide(ChannelBody(receive, length, flow, job.events)):
        send.close()  # the client left before the answer came: nobody reads it
        receive.close()
        return
    await _pass(job, upstream.read(job, length), send, flow)


async def fill(
    job: StreamJob, cache: RefreshJob, *, fallback: bool, task_status: trio.TaskStatus[Head]
) -> None:
    """A refresh of the cache; its clients read the temp file (see the module doc). Its Head
    carries the refresh once the temp file is open; when it cannot be opened, the requester
    is relayed uncached if ``fallback``, else the Head has neither body nor refresh."""
    flow = Flow()
    upstream: _Upstream | None = None
    try:
        async with _opened(job, flow, None) as upstream:
            assert upstream is not None  # no early head without a task_status to report it
            head, length = _plan(job, upstream.first)
            if length is None:
                task_status.started(head)
                return
            opened = await _open_temp_file(cache.refresh, upstream.first, length, flow)
            if not opened and fallback:
                body = upstream.read(job, length)
                await _channel(job, body, head, flow, task_status)
                return
            task_status.started(attrs.evolve(head, refresh=cache.refresh if opened else None))
            if opened:
                body = upstream.read(job, length, resume=True)
                to_disk = partial(_to_disk, job, body, cache, flow)
                await _recorded(body.first.url, flow, cache.stop, to_disk, "no reader left")
    finally:
        _end_refresh(job, cache.refresh, upstream, flow)


# -- shared steps: opening, closing, planning ---------------------------------------------------


class _Upstream:
    """The upstream answer a pump reads: closed at the end, also after a resume replaced it."""

    def __init__(self, first: UpstreamAnswer, early: EarlyBody | None = None) -> None:
        self.first = first
        self.body: UpstreamBody | None = None
        #: The body of an early head that went out before this answer came.
        self.early = early
        #: Body bytes moved by a splice (the channel path counts in ``body``).
        self.spliced = 0
        self.opened_at = trio.current_time()

    @property
    def moved(self) -> int:
        """Body bytes that came from the source."""
        return self.body.received if self.body is not None else self.spliced

    def read(self, job: StreamJob, length: int, *, resume: bool = False) -> UpstreamBody:
        """The body to read, ``length`` bytes. With ``resume`` (a refresh) a break is
        resumed, when the answer carries a validator that can prove the rest is of the same
        file; a plain stream's is not (a client's own Range request is its own to repeat)."""
        may_resume = resume and resumable(self.first.response)
        self.body = UpstreamBody(
            self.first,
            length,
            reopen=job.reopen if may_resume else None,
            delays=job.settings.resume_delays,
            on_resume=job.events.refresh_resumed,
        )
        return self.body

    async def aclose(self) -> None:
        if self.early is not None:
            self.early.fail("the source ended")  # no-op once a body was decided
        await (self.body.answer if self.body is not None else self.first).aclose()


@asynccontextmanager
async def _opened(
    job: StreamJob, flow: Flow, task_status: trio.TaskStatus[Head] | None
) -> AsyncIterator[_Upstream | None]:
    """The upstream's answer (``job.open``: UpstreamError when no source answers usably),
    closed when the block ends, whatever ends it.

    With ``job.early_size`` and a ``task_status``, a source that has not answered within
    ``early_head_after`` gets the client an *early head* (docs/http-api.md): 200 with the
    index's size, reported through ``task_status``. For a HEAD that is the whole answer, and
    the block gets None. For a GET the answer carries that head's body (``early``), whose
    bytes the pump decides on; when no source answers after all, the block gets None and
    the body breaks (``flow.error``): never a short 200.
    """
    early: EarlyBody | None = None
    answer: UpstreamAnswer | None = None
    if job.early_size and task_status is not None:
        answer, early, failure = await _open_or_head_early(job, flow, task_status)
        if answer is None:
            if early is not None:
                flow.error = str(failure) if failure is not None else "no source answered"
                early.fail(flow.error)  # the body raises: the client's connection breaks
                log_event(log, "warning", "stream_failed", reason=flow.error)
            yield None
            return
    else:
        answer = await job.open()
    upstream = _Upstream(answer, early)
    try:
        yield upstream
    finally:
        await upstream.aclose()
        # What this source delivered, and how fast: its throughput ranks it (SPEC §11).
        elapsed = trio.current_time() - upstream.opened_at
        job.events.source_transfer(upstream.first.source.key, upstream.moved, elapsed)


async def _open_or_head_early(
    job: StreamJob, flow: Flow, task_status: trio.TaskStatus[Head]
) -> tuple[UpstreamAnswer | None, EarlyBody | None, UpstreamError | None]:
    """Open the upstream, reporting the early head if that takes ``early_head_after``.

    Returns the answer (None: none came, or a HEAD was answered early), the early head's
    body (None: no early head, or one without a body) and the failure. Raises the
    UpstreamError when every source failed before any head went out (the client gets 502).
    """
    answer: UpstreamAnswer | None = None
    failure: UpstreamError | None = None
    early: EarlyBody | None = None
    reported = False
    try:
        async with trio.open_nursery() as nursery:

            async def opener() -> None:
                nonlocal answer, failure
                try:
                    answer = await job.open()
                except UpstreamError as exc:
                    failure = exc
                nursery.cancel_scope.cancel()

            nursery.start_soon(opener)
            await trio.sleep(job.settings.early_head_after)
            reported = True
            early = _report_early(job, flow, task_status)
            if early is None:
                nursery.cancel_scope.cancel()  # a HEAD: answered, the source no longer matters
            else:
                await trio.sleep_forever()  # until the opener ends
    except BaseException:
        if answer is not None:
            await answer.aclose()
        raise
    if not reported and failure is not None:
        raise failure
    if reported and early is None and answer is not None:
        await answer.aclose()
        answer = None
    return answer, early, failure


def _report_early(
    job: StreamJob, flow: Flow, task_status: trio.TaskStatus[Head]
) -> EarlyBody | None:
    """Report the early head: 200, the index's size, no validators (none is known yet).
    Returns its body (None for a HEAD)."""
    size = job.early_size
    headers = {"content-length": str(size), "content-type": "application/octet-stream"}
    if job.method != "GET":
        task_status.started(Head(200, headers, None))
        return None
    body = EarlyBody()
    task_status.started(Head(200, headers, body))
    return body


def _keeps_promise(job: StreamJob, head: Head, length: int | None, flow: Flow) -> bool:
    """True when the answer can follow the early head (a 200 of the promised size); else
    its body breaks. :func:`tracker.proxy.failover.open_upstream` already refuses others."""
    if head.status == 200 and length == job.early_size:
        return True
    flow.error = f"the source answered {head.status} with {length} bytes after an early head"
    log_event(log, "warning", "stream_failed", reason=flow.error)
    return False


def _plan(job: StreamJob, answer: UpstreamAnswer) -> tuple[Head, int | None]:
    """The client's Head and body length (None: no body) for ``answer``."""
    return plan_head(answer, job.method, answer.file.size or job.known_size)


async def _open_temp_file(
    refresh: Refresh, answer: UpstreamAnswer, length: int, flow: Flow
) -> bool:
    """Open the refresh's temp file for a 200 of ``length`` bytes; False (the refresh is
    over, ``flow.outcome`` says why) for another status, too little room or an unwritable
    cache: the file is then not cached."""
    if answer.response.status_code != 200:
        refresh.abort()
        return False
    if await refresh.open(length):
        return True
    flow.outcome = "refresh_no_space" if refresh.no_space else "refresh_failed"
    return False


def _end_refresh(job: StreamJob, refresh: Refresh, upstream: _Upstream | None, flow: Flow) -> None:
    """The last step of every refresh: nothing left behind, its outcome counted and logged."""
    refresh.abort()  # no-op after a promotion
    flow.report(job.events)
    body = upstream.body if upstream is not None else None
    log_event(
        log,
        "info",
        "cache_refresh_ended",
        group=refresh.group,
        file=refresh.name,
        outcome=flow.outcome,
        size=refresh.size,
        upstream_bytes=body.received if body is not None else 0,
        resumes=body.resumes if body is not None else 0,
    )


async def _recorded(
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


# -- the splice ------------------------------------------------------------------------------


def _splice_body(job: StreamJob, stream: BigReadStream, length: int) -> SpliceBody:
    """A body that splices the upstream socket of ``stream`` to the client's connection."""
    assert job.zero_copy is not None
    events = job.events
    return SpliceBody(
        job.zero_copy,
        stream.get_extra_info("socket"),
        lambda: stream.body_unread,
        length,
        job.settings.read_timeout,
        events.upstream_bytes,
        events.client_bytes,
    )


async def _spliced(job: StreamJob, upstream: _Upstream, body: SpliceBody) -> None:
    """Keep the upstream open until ``body`` (handed to the server) has ended, or the
    server never started it."""
    with trio.move_on_after(job.settings.drain_start_timeout):
        await body.started.wait()
    if body.started.is_set():
        await body.ended.wait()
    upstream.spliced = body.sent
    if outcome_of(body.sent, body.length, body.error) == "error":
        log_event(log, "warning", "stream_failed", url=upstream.first.url, reason=str(body.error))


# -- the channel: to the client --------------------------------------------------------------


async def _channel(
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
    await _pass(job, body, send, flow)


async def _pass(
    job: StreamJob, body: UpstreamBody, send: trio.MemorySendChannel[bytes], flow: Flow
) -> None:
    """Pass the upstream body into the client's channel ``send``; the channel is closed at
    the end, whatever ends it."""
    leave = trio.CancelScope()
    flow.on_leave = leave
    with send:
        to_client = partial(_to_client, job, body, send, flow)
        await _recorded(body.first.url, flow, leave, to_client, "client went away")


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
        # cancellation both got) comes out: raise it as itself, for _recorded to tell apart.
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


async def _to_disk(job: StreamJob, body: UpstreamBody, cache: RefreshJob, flow: Flow) -> None:
    """A refresh: upstream bytes to the temp file only, its readers follow the file
    (spliced when the socket allows: :meth:`UpstreamBody.into`)."""
    await body.into(cache.refresh, job.events.upstream_bytes, job.settings.read_timeout)
    if await _promote(job, body, cache):
        flow.outcome = "refresh_ok"
        flow.report(job.events)
    flow.complete = True


async def _promote(job: StreamJob, body: UpstreamBody, cache: RefreshJob) -> bool:
    """Promote a complete refresh whose archive passed its check; a failure after the check
    costs the cache, never the client. A failed check raises ArchiveInvalid: the refresh's
    readers never get their last bytes (docs/http-api.md, "Verified archives")."""
    refresh = cache.refresh
    await refresh.flush()  # the last write may still be in flight (raises CacheError)
    try:
        await refresh.verify()  # readers may finish once it passed, whatever comes next
    except ArchiveInvalid as exc:
        source = body.first.source
        log_event(
            log,
            "warning",
            "archive_rejected",
            group=refresh.group,
            file=refresh.name,
            source=redact_text(source.key.target),
            reason=exc.reason,
        )
        job.events.archive_rejected(source.key, exc.reason)
        raise
    if not cache.still_wanted():
        log_event(
            log, "info", "cache_refresh_stale", file=refresh.name, reason="no longer the best"
        )
        refresh.abort()
        return False
    mtime = parse_http_date(body.first.response.headers.get("last-modified"))
    try:
        await refresh.commit(None if mtime is None else float(mtime))
    except CacheError as exc:
        log_event(log, "warning", "cache_commit_failed", file=refresh.name, reason=exc)
        return False
    return True
