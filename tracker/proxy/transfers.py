"""Byte transfers of proxy mode: a pump task per stream, in a nursery the service owns.

Each proxied response is moved by a *pump*, started with ``await transfers.start(pump, job)``
in the long-lived :class:`Transfers` nursery rather than inside the request::

    request handler ── transfers.start(pump) ──► pump: open upstream (failover)
          ▲                                        │  started(Head) once it answered
          └────────────── Head ◄───────────────────┘
    response body (ChannelBody) ◄── bounded channel (queue_chunks) ◄── pump: read, write to
                                                                     the cache, send on

Why a task and not a generator (DESIGN trap 4): a response generator that never starts never
runs its ``finally``, and a refresh must be able to outlive its client
(``cache_complete_on_disconnect``). The pump owns the upstream connection and the cache temp
file from start to end, so both are closed on every path: the client leaves (the body closes
its end of the channel), the body never starts (``drain_start_timeout``), the upstream breaks,
or the service stops (the nursery is cancelled after the grace period).

Memory is bounded: at most ``queue_chunks`` chunks of at most ``read_size`` bytes wait in the
channel; when the client reads slowly the pump blocks on the channel and stops reading the
upstream socket (backpressure). Errors after the headers were sent make the body raise, so the
server aborts the connection: a client never gets a silently short 200.

A refresh resumes a broken upstream body with a Range request (:mod:`tracker.proxy.resume`); the
client's stream goes on across it. A *detached* pump (``StreamJob.detached``: shared in-flight
downloads and prefetch) sends no body: it writes the upstream bytes to the cache temp file at
the upstream's pace and reports the refresh in its :class:`Head`; clients then read the temp
file (:mod:`tracker.proxy.sharing`), each at its own pace, so no slow client slows the others.

A plain stream (no cache) to a client connection that takes zero-copy pieces skips the
channel: its body (:mod:`tracker.proxy.passthrough`) splices the upstream socket straight to the
client's, while the pump holds the upstream answer open until that body has ended.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any, Literal

import attrs
import httpx
import trio

from tracker.cache.store import Refresh
from tracker.core.logs import log_event
from tracker.errors import CacheError, UpstreamError
from tracker.files.bodies import GeneratorBody
from tracker.files.downloads import outcome_of
from tracker.files.ranges import parse_http_date
from tracker.net.limits import transport_reason
from tracker.proxy.passthrough import SpliceBody
from tracker.proxy.readahead import ReadAhead
from tracker.proxy.resume import Reopen, UpstreamBody, resumable
from tracker.proxy.upstream import ProxySettings, UpstreamAnswer, client_response_headers
from tracker.zerocopy.connection import Connection
from tracker.zerocopy.transport import BigReadStream, splice_stream

log = logging.getLogger("tracker.transfers")

RefreshOutcome = Literal["refresh_ok", "refresh_failed", "refresh_no_space"]
_CLOSE_TIMEOUT = 5.0


def _nothing(*_args: object) -> None:
    return None


@attrs.frozen
class StreamEvents:
    """Callbacks the pump reports through (metrics); all synchronous and cheap."""

    upstream_bytes: Callable[[int], None] = _nothing
    client_bytes: Callable[[int], None] = _nothing
    refresh_outcome: Callable[[RefreshOutcome], None] = _nothing
    refresh_resumed: Callable[[], None] = _nothing


class Transfers:
    """The nursery running every pump; owned by the service, outlives single requests.

    ``run`` opens it; ``close(grace)`` refuses new transfers and gives running ones ``grace``
    seconds before they are cancelled (each then removes its temp file and breaks its
    client's stream).
    """

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._background: trio.Nursery | None = None
        self._stop = trio.Event()
        self._grace = 0.0

    @property
    def accepting(self) -> bool:
        """True while new transfers may start."""
        return self._nursery is not None and not self._stop.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`close`, then until the transfers ended or ``grace`` passed.

        Cancellation cancels every running transfer.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._background = await nursery.start(_hold_nursery)
                task_status.started()
                await self._stop.wait()
                self._background.cancel_scope.cancel()
                nursery.cancel_scope.deadline = trio.current_time() + self._grace
        finally:
            self._nursery = self._background = None

    def close(self, grace: float) -> None:
        """Refuse new transfers; running ones get ``grace`` seconds to finish, background
        tasks (:meth:`spawn`) are cancelled at once."""
        self._grace = grace
        self._stop.set()
        if self._background is not None:
            self._background.cancel_scope.cancel()

    def spawn(self, task: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run ``task(*args)`` in the background (prefetch); False when stopping.

        The task must not raise (its errors would stop the transfers); it is cancelled as
        soon as the service stops, without a grace period.
        """
        if self._background is None or self._stop.is_set():
            return False
        self._background.start_soon(task, *args)
        return True

    async def start(self, pump: Callable[..., Awaitable[None]], *args: Any) -> Any:
        """``nursery.start(pump, *args)`` in the transfers nursery; returns what the pump
        reported. Until then the pump runs as part of the caller (a cancelled caller cancels
        it); its errors before ``started`` are raised here. UpstreamError when stopping."""
        if self._nursery is None or self._stop.is_set():
            raise UpstreamError("the tracker is stopping")
        return await self._nursery.start(pump, *args)


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


@attrs.define
class _Flow:
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
        flow: _Flow,
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


@attrs.frozen
class Head:
    """What the client gets: status, headers, and a body when there is one to send."""

    status: int
    headers: dict[str, str]
    body: ChannelBody | SpliceBody | None
    #: A detached pump's refresh, open and being filled (clients read its temp file).
    refresh: Refresh | None = None


@attrs.frozen
class StreamJob:
    """Everything a pump needs.

    ``open`` asks the sources (raising UpstreamError when none answers); ``known_size`` is
    the index's size of the file (0: unknown), used when a 200 comes without a length;
    ``refresh`` is set when this stream also fills the cache; ``keep_on_disconnect`` lets that
    refresh finish after its client left; ``still_wanted`` is asked once the refresh is
    complete: a file that stopped being its group's best meanwhile is not promoted.

    ``reopen`` resumes a refresh's broken upstream body (see :mod:`tracker.proxy.resume`). A
    ``detached`` job writes the cache only (see the module doc) and runs inside ``stop``,
    which its owner cancels when nobody needs the refresh any more; when the refresh cannot
    be opened (no room) it streams to its requester as a plain job would if ``fallback``,
    else it ends with a :class:`Head` without body or refresh.
    """

    open: Callable[[], Awaitable[UpstreamAnswer]]
    method: str
    known_size: int
    settings: ProxySettings
    events: StreamEvents = StreamEvents()
    refresh: Refresh | None = None
    keep_on_disconnect: bool = True
    still_wanted: Callable[[], bool] = lambda: True
    reopen: Reopen | None = None
    detached: bool = False
    fallback: bool = True
    stop: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: The client's connection when it takes zero-copy pieces: a plain stream is then spliced.
    zero_copy: Connection | None = None


def plan_head(answer: UpstreamAnswer, method: str, known_size: int) -> tuple[Head, int | None]:
    """The client's status and headers for an upstream answer, and the body length to send
    (None: no body). Raises UpstreamError for a 200/206 whose length cannot be known: an
    archive is never sent without ``content-length``."""
    status = answer.response.status_code
    headers = client_response_headers(answer.response.headers)
    if status not in (200, 206):
        if status == 304:
            headers.pop("content-length", None)
        else:
            headers["content-length"] = "0"
        return Head(status, headers, None), None
    length = _digits(headers.get("content-length"))
    if length is None and status == 206:
        length = _range_length(headers.get("content-range"))
    if length is None and status == 200 and known_size > 0:
        length = known_size
    if length is None:
        log_event(log, "warning", "upstream_without_length", url=answer.url, status=status)
        raise UpstreamError(f"the source answered {status} without content-length")
    headers["content-length"] = str(length)
    headers.setdefault("content-type", "application/octet-stream")
    body_length = length if method == "GET" and length > 0 else None
    return Head(status, headers, None), body_length


def _digits(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


def _range_length(value: str | None) -> int | None:
    # "bytes first-last/size"
    unit, _, spec = (value or "").strip().partition(" ")
    first, _, rest = spec.partition("-")
    last = rest.partition("/")[0]
    start, end = _digits(first), _digits(last)
    if unit.lower() != "bytes" or start is None or end is None or end < start:
        return None
    return end - start + 1


async def pump(job: StreamJob, *, task_status: trio.TaskStatus[Head]) -> None:
    """Open the upstream, report the :class:`Head`, then move the body (see the module doc).

    Before ``started``: UpstreamError when no source answers usably; the refresh (if any) is
    aborted. After: never raises except Cancelled; failures end the body in error (or, for a
    detached job, fail the refresh its readers follow).
    """
    answer: UpstreamAnswer | None = None
    upstream: UpstreamBody | None = None
    refresh = job.refresh
    flow = _Flow()
    try:
        answer = await job.open()
        head, length = plan_head(answer, job.method, answer.file.size or job.known_size)
        if length is None:
            task_status.started(head)
            return
        stream = splice_stream(answer.response, length) if _may_splice(job) else None
        if stream is not None:
            await _splice(job, answer, stream, head, length, task_status)
            return
        if refresh is not None:
            refresh, flow.outcome = await _open_refresh(refresh, answer, length)
        # A break is resumed only for a refresh (a client's own Range request is its own to
        # repeat) and only when the answer carries a validator that can prove the rest is
        # of the same file.
        may_resume = refresh is not None and resumable(answer.response)
        upstream = _upstream_body(job, answer, length, resumable=may_resume)
        if job.detached and (refresh is not None or not job.fallback):
            task_status.started(attrs.evolve(head, refresh=refresh))
            if refresh is not None:
                fill = partial(_fill, job, upstream, refresh, flow)
                await _guard(answer.url, flow, job.stop, fill, "no reader left")
            return
        send, receive = trio.open_memory_channel[bytes](job.settings.queue_chunks)
        body = ChannelBody(receive, length, flow, job.events)
        task_status.started(attrs.evolve(head, body=body))
        with send:
            await _move(job, upstream, send, flow, refresh)
    finally:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
            current = upstream.answer if upstream is not None else answer
            if current is not None:
                await current.aclose()
        if job.refresh is not None:
            job.refresh.abort()  # no-op after a promotion
            flow.report(job.events)
            _log_refresh_end(job.refresh, upstream, flow)


def _may_splice(job: StreamJob) -> bool:
    """A plain stream (no cache) to a client connection that takes zero-copy pieces."""
    return job.zero_copy is not None and job.refresh is None and not job.detached


async def _splice(
    job: StreamJob,
    answer: UpstreamAnswer,
    stream: BigReadStream,
    head: Head,
    length: int,
    task_status: trio.TaskStatus[Head],
) -> None:
    """Report a Head whose body splices the upstream socket, and keep the upstream open
    until that body has ended (or the server never started it: DESIGN trap 4)."""
    assert job.zero_copy is not None
    events = job.events
    body = SpliceBody(
        job.zero_copy,
        stream.get_extra_info("socket"),
        lambda: stream.body_unread,
        length,
        job.settings.read_timeout,
        events.upstream_bytes,
        events.client_bytes,
    )
    task_status.started(attrs.evolve(head, body=body))
    with trio.move_on_after(job.settings.drain_start_timeout):
        await body.started.wait()
    if body.started.is_set():
        await body.ended.wait()
    if outcome_of(body.sent, body.length, body.error) == "error":
        log_event(log, "warning", "stream_failed", url=answer.url, reason=str(body.error))


def _upstream_body(
    job: StreamJob, answer: UpstreamAnswer, length: int, *, resumable: bool
) -> UpstreamBody:
    """The body to read; a refresh's resumes after a break (a plain stream's do not)."""
    return UpstreamBody(
        answer,
        length,
        reopen=job.reopen if resumable else None,
        delays=job.settings.resume_delays,
        on_resume=job.events.refresh_resumed,
    )


def _log_refresh_end(refresh: Refresh, upstream: UpstreamBody | None, flow: _Flow) -> None:
    log_event(
        log,
        "info",
        "cache_refresh_ended",
        group=refresh.group,
        file=refresh.name,
        outcome=flow.outcome,
        size=refresh.size,
        upstream_bytes=upstream.received if upstream is not None else 0,
        resumes=upstream.resumes if upstream is not None else 0,
    )


async def _open_refresh(
    refresh: Refresh, answer: UpstreamAnswer, length: int
) -> tuple[Refresh | None, RefreshOutcome]:
    if answer.response.status_code != 200:
        refresh.abort()
        return None, "refresh_failed"
    if await refresh.open(length):
        return refresh, "refresh_failed"
    return None, "refresh_no_space" if refresh.no_space else "refresh_failed"


async def _guard(
    url: str,
    flow: _Flow,
    scope: trio.CancelScope,
    work: Callable[[], Awaitable[None]],
    left: str,
) -> None:
    """Run ``work`` inside ``scope``. Failures are recorded in ``flow`` (and logged), never
    raised; ``scope`` being cancelled records ``left``; Cancelled from outside (the service
    stopping) is re-raised."""
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
    except (UpstreamError, CacheError) as exc:
        flow.error = str(exc)
    except httpx.HTTPError as exc:
        flow.error = f"upstream broke: {transport_reason(exc)}"
    except Exception as exc:  # a bug must not take the transfers nursery (the service) down
        log_event(log, "error", "stream_failed", url=url, exc_info=True)
        flow.error = f"internal error: {type(exc).__name__}"
    log_event(log, "warning", "stream_failed", url=url, reason=flow.error)


async def _move(
    job: StreamJob,
    upstream: UpstreamBody,
    send: trio.MemorySendChannel[bytes],
    flow: _Flow,
    refresh: Refresh | None,
) -> None:
    """Copy the body to the client (and the refresh); see :func:`_guard` for failures."""
    # Without a refresh that outlives its client, a client leaving stops the pump at once,
    # even while it waits for a stalled upstream.
    leave = trio.CancelScope()
    if refresh is None or not job.keep_on_disconnect:
        flow.on_leave = leave
    copy = partial(_copy, job, upstream, send, flow, refresh)
    await _guard(upstream.first.url, flow, leave, copy, "client went away")


async def _copy(
    job: StreamJob,
    upstream: UpstreamBody,
    send: trio.MemorySendChannel[bytes],
    flow: _Flow,
    refresh: Refresh | None,
) -> None:
    # A reader task reads the upstream ahead while this task writes and delivers what has
    # arrived so far (tracker/proxy/readahead.py): pieces grow while a write or a slow client
    # keeps this task busy, and no byte waits for later ones to arrive.
    ahead = ReadAhead(job.settings.read_size)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_ahead, job, upstream, ahead)
            try:
                delivered = await _pass_on(job, upstream.length, ahead, send, flow, refresh)
            finally:
                nursery.cancel_scope.cancel()  # the reader, when this ended early
    except BaseExceptionGroup as group:
        # The reader hands its errors over, so only this task's own error (or the
        # cancellation both got) comes out: raise it as itself, for _guard to tell apart.
        raise _leading(group) from None
    if not delivered:
        return
    flow.complete = True
    send.close()  # the client's body ends here, whatever the promotion below takes
    if await _commit(job, upstream, refresh):
        flow.outcome = "refresh_ok"
        flow.report(job.events)


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


async def _read_ahead(job: StreamJob, upstream: UpstreamBody, ahead: ReadAhead) -> None:
    """Read the upstream body into ``ahead``; its end or break goes to the consumer."""
    try:
        async with aclosing(upstream.chunks()) as chunks:
            async for chunk in chunks:
                job.events.upstream_bytes(len(chunk))
                await ahead.put(chunk)
    except Exception as exc:  # re-raised by the consumer, in its own task (no group)
        ahead.end(exc)
    else:
        ahead.end()


async def _pass_on(
    job: StreamJob,
    length: int,
    ahead: ReadAhead,
    send: trio.MemorySendChannel[bytes],
    flow: _Flow,
    refresh: Refresh | None,
) -> bool:
    """Write (when refreshing) and deliver every piece; False when the client went away and
    nothing is to be kept. The piece holding the last byte is delivered only once every
    byte is written and the upstream body is known complete: a client's complete body
    means a complete file (a write error still fails the client's stream). It does not
    wait for the fsync and rename: the disk's pace is not the client's (a request arriving
    meanwhile waits for the promotion, see Cache.wait_promotion)."""
    keep = refresh is not None and job.keep_on_disconnect
    client = True
    taken = 0
    while (piece := await ahead.take()) is not None:
        taken += len(piece)
        if refresh is not None:
            await refresh.write(piece)
            if taken == length:
                await refresh.flush()  # the last write may still be in flight (CacheError)
                refresh.mark_verified()
        if client:
            client = await _deliver(send, piece, flow, job.settings.drain_start_timeout)
        if not client and not keep:
            flow.error = "client went away"
            return False
    return True


async def _fill(job: StreamJob, upstream: UpstreamBody, refresh: Refresh, flow: _Flow) -> None:
    """A detached refresh: upstream bytes to the temp file only, at the upstream's pace."""
    async with aclosing(upstream.chunks()) as chunks:
        async for chunk in chunks:
            job.events.upstream_bytes(len(chunk))
            await refresh.write(chunk)
    if await _commit(job, upstream, refresh):
        flow.outcome = "refresh_ok"
        flow.report(job.events)
    flow.complete = True


async def _commit(job: StreamJob, upstream: UpstreamBody, refresh: Refresh | None) -> bool:
    """Promote a complete refresh; a failure here costs the cache, never the client."""
    if refresh is None:
        return False
    await refresh.flush()  # the last write may still be in flight (raises CacheError)
    refresh.mark_verified()  # every byte arrived: readers may finish, whatever comes next
    if not job.still_wanted():
        log_event(
            log, "info", "cache_refresh_stale", file=refresh.name, reason="no longer the best"
        )
        refresh.abort()
        return False
    mtime = parse_http_date(upstream.first.response.headers.get("last-modified"))
    try:
        await refresh.commit(None if mtime is None else float(mtime))
    except CacheError as exc:
        log_event(log, "warning", "cache_commit_failed", file=refresh.name, reason=exc)
        return False
    return True


async def _deliver(
    send: trio.MemorySendChannel[bytes], chunk: bytes, flow: _Flow, start_timeout: float
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
