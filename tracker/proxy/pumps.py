"""What every pump shares between its upstream and where its bytes go (the relay,
:mod:`tracker.proxy.relay`; the fill of a refresh, :mod:`tracker.proxy.cachefill`): its
upstream opened and closed on every path, how it went, and the body of an early head. The
channel that feeds a client's body through Python is :mod:`tracker.proxy.channel`.

:func:`opened` asks the sources (``job.open``: failover inside,
:func:`tracker.proxy.failover.open_upstream`) and closes the answer when its block ends,
reporting what the source delivered and how fast (its throughput ranks it,
docs/http-api.md#trust), over the seconds until its part ended
(:attr:`Upstream.source_ended`: a refresh's promotion is not the source's time). A plain
request of a file of known size whose source has not answered within ``early_head_after``
gets its head anyway (docs/http-api.md, "Archive answers": an *early head*); only a source
that then answers 200 with the promised length may follow it (:func:`keeps_promise`), or the
body breaks. :class:`Upstream` is the answer a pump reads (with the sources of a refresh
from several). :func:`recorded` runs a pump's work and records how it failed in its
:class:`Flow` rather than raising.

An early head's body (:class:`EarlyBody`) is decided only once a source answers: a splice
of the upstream socket when the connections allow it, else a channel.

The body a pump reads (:class:`UpstreamBody`) is resumed with a Range request when the
connection breaks: a cache refresh of a 100 GB archive that loses its upstream connection at
60 % should not start over, nor fail every client reading along. It yields the body's chunks;
when the body breaks (a transport error, a read timeout, a body ending short) and a
``reopen`` function is given, it waits a little (``delays``), asks the same source for the
rest (:func:`tracker.proxy.failover.resume_upstream`) and goes on yielding, so the consumer
sees one seamless stream. Each break gets ``len(delays)`` attempts; a resumed stream that
delivered :data:`FRESH_AFTER` bytes (under a rate cap of our own, perhaps fewer:
:func:`fresh_after`) before breaking again starts a fresh count. A first
answer with neither validator is not resumed at all
(:func:`tracker.proxy.failover.resumable`). When no resume is possible the body raises:
every client stream it fed ends in error and nothing is promoted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.clientwire.transport import splice_stream
from tracker.core.text import one_line
from tracker.errors import ArchiveInvalid, CacheError, SourceFailed, TransportError, UpstreamError
from tracker.multisource.sources import Source
from tracker.net.bodyreads import body_chunks
from tracker.observability.folding import bulk, log_folded
from tracker.observability.logs import log_event
from tracker.proxy.failover import Reopen, head_due, resumable
from tracker.proxy.transfers import Ending, Head, RefreshOutcome, StreamJob
from tracker.proxy.upstream import UpstreamAnswer
from tracker.serving.responsebodies import Body, GeneratorBody

log = logging.getLogger("tracker.transfers")
#: The events of a resume.
resume_log = logging.getLogger("tracker.resume")
#: Bytes a read must move before it breaks for the break to get attempts of its own: a
#: source that cuts every answer after a few KiB (it answers each resume) was resumed
#: without end, its refresh crawling and never measured, while its speed tests kept it
#: first (docs/ranking.md, "Failed transfers"); an honest break comes after far more.
FRESH_AFTER = 1024 * 1024
#: Under a rate cap of our own (``source_limits.max_rate``), seconds of the cap a read must
#: move before it breaks to earn its break attempts of its own, when that is less than
#: FRESH_AFTER (:func:`fresh_after`).
FRESH_SECONDS = 5.0


def fresh_after(max_rate: int) -> int:
    """Bytes a read must move before it breaks for the break to get attempts of its own,
    reading a source capped at ``max_rate`` bytes a second (0: no cap): FRESH_AFTER, or what
    the cap lets through in FRESH_SECONDS when that is less. Our own cap paces the reads: at
    20 KiB/s a link that breaks every 30 s moved 600 KiB a read, never FRESH_AFTER, and an
    honest refresh failed after a few breaks. A source that cuts each answer sooner still
    shares its attempts; one that cuts after FRESH_SECONDS of the cap, answering each
    resume, moves the refresh at nearly the cap (docs/ranking.md, "Failed transfers"). Pure."""
    if max_rate <= 0:
        return FRESH_AFTER
    return min(FRESH_AFTER, int(max_rate * FRESH_SECONDS))


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
    #: Who ended the transfer from the (first) source, once known (None: not known, our
    #: side's for the measurement: :func:`tracker.proxy.transfers.measured_transfer`).
    ending: Ending | None = None
    #: Seconds the pump waited for its client to take bytes, its source unread meanwhile
    #: (a relay is paced by its client: :func:`tracker.proxy.transfers.paced_by_client`).
    client_waited: float = 0.0
    #: The longest span of those waits in which the client took no byte (a stalled client,
    #: which a source's own send timeout may give up on:
    #: :func:`tracker.proxy.transfers.measured_transfer`).
    client_stalled: float = 0.0

    def report(self, job: StreamJob) -> None:
        """Report the refresh outcome (first call only)."""
        if not self.reported:
            self.reported = True
            job.refresh_outcome(self.outcome)

    def client_left(self) -> None:
        """The response body was left (end, error or client gone)."""
        if not self.complete and self.on_leave is not None:
            self.on_leave.cancel()


class EarlyBody(GeneratorBody):
    """The body of an early head (docs/http-api.md, "Archive answers"): the head went out before
    any source answered, so its bytes come from whichever body the pump :meth:`decide`\\ s
    on once one does (a splice of the upstream socket, or a channel), or, with ``resolve``,
    from the body it returns once the server starts sending (a refresh's reader, found
    once the refresh opens). When none comes (:meth:`fail`, or ``resolve`` raises
    UpstreamError), iteration raises UpstreamError and the server breaks the connection:
    never a short 200. ``on_finish`` is called once the body is left (its end, an error or
    the client gone), before or after ``resolve`` ran.
    """

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Body]] | None = None,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self._decided = trio.Event()
        self._body: Body | None = None
        self._error = "no source answered"
        self._left = False
        self._resolve = resolve
        self._on_finish = on_finish

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
        if not self._left and self._on_finish is not None:
            self._on_finish()
        self._left = True

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        if self._resolve is not None:
            self._body = await self._resolve()
        else:
            await self._decided.wait()
        if self._body is None:
            raise UpstreamError(self._error)
        async with self._body as chunks:
            async for chunk in chunks:
                yield chunk


def ending_of(error: BaseException | None, complete: bool) -> Ending:
    """Who ended a transfer that ended with ``error`` (None: none), ``complete`` or not: the
    source when the error is its (a break, a stall past the read timeout, a body cut short
    or too long: UpstreamError, SourceFailed, TransportError), nobody for a complete one or
    one whose copy failed its check (every byte came: the check's verdict holds the source
    back, docs/http-api.md#trust), else our side (the client, the tracker stopping, the
    cache's disk, a bug). Pure."""
    if error is None:
        return "whole" if complete else "ours"
    if isinstance(error, ArchiveInvalid):
        return "whole"
    if isinstance(error, UpstreamError | SourceFailed | TransportError):
        return "source"
    return "ours"


async def recorded(
    url: str,
    flow: Flow,
    scope: trio.CancelScope,
    work: Callable[[], Awaitable[None]],
    left: str,
) -> None:
    """Run ``work`` inside ``scope``, recording how it failed in ``flow`` (and the log)
    instead of raising: ``scope`` being cancelled records ``left``; Cancelled from outside
    (the service stopping) is re-raised. Who ended it goes to ``flow.ending`` unless
    ``work`` said so already (:func:`ending_of`)."""
    error: BaseException | None = None
    try:
        with scope:
            await work()
        if scope.cancelled_caught:
            flow.error = left
        return
    except trio.Cancelled as exc:
        error = exc
        flow.error = "the tracker is stopping"
        log_event(log, "warning", "stream_stopped", url=url, reason=flow.error)
        raise
    except ArchiveInvalid as exc:
        error = exc
        flow.error = f"archive failed verification: {exc.reason}"
        flow.outcome = "refresh_rejected"
    except (UpstreamError, CacheError) as exc:
        error = exc
        flow.error = str(exc)
    except TransportError as exc:
        error = exc
        flow.error = f"upstream broke: {exc}"
    except Exception as exc:  # a bug must not take the transfers nursery (the service) down
        error = exc
        log_folded(log, "error", "stream_failed", url=url, exc_info=True)
        flow.error = f"internal error: {type(exc).__name__}"
    finally:
        if flow.ending is None:
            complete = flow.complete and not scope.cancelled_caught
            flow.ending = ending_of(error, complete)
    log_folded(log, "warning", "stream_failed", url=url, reason=flow.error)


# -- the upstream a pump opens ---------------------------------------------------------------


class Upstream:
    """The upstream answer a pump reads: closed at the end, also after a resume replaced it."""

    def __init__(self, first: UpstreamAnswer, early: EarlyBody | None = None) -> None:
        self.first = first
        self.body: UpstreamBody | None = None
        #: The body of an early head that went out before this answer came.
        self.early = early
        #: Body bytes moved by a splice (the channel path counts in ``body``).
        self.spliced = 0
        self.opened_at = trio.current_time()
        #: Body bytes a splice moved so far, while it runs (the status page reads it live).
        self.splicing: Callable[[], int] | None = None
        #: The sources of a refresh from several at once, the first one first (their
        #: shares: the log line, the status page).
        self.many: list[Source] = []
        #: When (trio time) the first source's part of a refresh from several ended (its
        #: last byte came, or it was dropped as a laggard): see :attr:`source_ended`.
        self.many_ended: float | None = None

    @property
    def moved(self) -> int:
        """Body bytes that came from the source."""
        if self.body is not None:
            return self.body.received
        return self.splicing() if self.splicing is not None else self.spliced

    @property
    def source_ended(self) -> float | None:
        """When (trio time) the source's part of the transfer ended, where that comes before
        the answer closes: a refresh's last body byte came (its promotion, the archive
        check catching up and the commit, is the tracker's time, not the source's:
        docs/ranking.md, "Failed transfers"). None: the transfer ends as the answer closes."""
        if self.body is not None:
            return self.body.whole_at
        return self.many_ended

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
            on_resume=job.refresh_resumed,
        )
        return self.body

    async def aclose(self) -> None:
        if self.early is not None:
            self.early.fail("the source ended")  # no-op once a body was decided
        await (self.body.answer if self.body is not None else self.first).aclose()


@asynccontextmanager
async def opened(
    job: StreamJob, flow: Flow, task_status: trio.TaskStatus[Head] | None
) -> AsyncIterator[Upstream | None]:
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
                log_folded(log, "warning", "stream_failed", reason=flow.error)
            yield None
            return
    else:
        answer = await job.open()
    upstream = Upstream(answer, early)
    flowing = job.flowing
    stop = flowing.start(upstream.first.source.key, upstream) if flowing is not None else None
    try:
        yield upstream
    finally:
        if stop is not None:
            stop()
        await upstream.aclose()
        # What this source delivered, and how fast: its throughput ranks it
        # (docs/http-api.md#trust).
        ended = upstream.source_ended
        elapsed = (trio.current_time() if ended is None else ended) - upstream.opened_at
        ending = flow.ending or "ours"  # not known to be the source's: not held against it
        key, waited, stalled = upstream.first.source.key, flow.client_waited, flow.client_stalled
        job.source_transfer(key, upstream.moved, elapsed, ending, waited, stalled)


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
            # Not while the request waits in a source's queue (docs/http-api.md, "Source
            # limits"): it gets its 503 then, not a head whose body would break.
            await head_due(job.slotted, job.settings.early_head_after)
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


def keeps_promise(job: StreamJob, head: Head, length: int | None, flow: Flow) -> bool:
    """True when the answer can follow the early head (a 200 of the promised size); else
    its body breaks. :func:`tracker.proxy.failover.open_upstream` already refuses others."""
    if head.status == 200 and length == job.early_size:
        return True
    flow.error = f"the source answered {head.status} with {length} bytes after an early head"
    log_folded(log, "warning", "stream_failed", reason=flow.error)
    return False


# -- the body a pump reads, resumed ---------------------------------------------------------


class _Reads:
    """The reads of an :class:`UpstreamBody`'s body, as both its readers make them::

        while await reads.again():
            with reads:
                ...  # read the current answer's body

    Leaving the block, a read is whole or says why not: a body ending short, or a break of
    one of ``breaks`` (caught); anything else propagates (cancellation, a consumer that
    stops, an answer longer than announced). ``again`` then resumes the break (raising
    UpstreamError once its attempts are used up), or says the body is whole.
    """

    def __init__(self, body: UpstreamBody, breaks: tuple[type[Exception], ...]) -> None:
        self._body = body
        self._breaks = breaks
        self._failures = 0
        #: What the body had received when the last read started (None: no read yet).
        self._start: int | None = None
        #: Why the last read did not end the body (None: it did).
        self._reason: str | None = None

    async def again(self) -> bool:
        """Whether to read (again): True first, then after each break resumed."""
        body = self._body
        if self._start is not None:
            if self._reason is None:
                return False
            # A read that moved a MiB (or seconds of our rate cap) before it broke starts a
            # fresh count: each break gets its own attempts (one that moved less shares
            # them: fresh_after).
            fresh = body.received - self._start >= fresh_after(body.answer.pacer.rate)
            failures = 0 if fresh else self._failures
            self._failures = await body.resume(self._reason, failures)
        self._start = body.received
        self._reason = None
        return True

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        body = self._body
        if exc_value is None:
            if body.received != body.length:
                self._reason = f"upstream ended after {body.received} of {body.length} bytes"
            return False
        if isinstance(exc_value, self._breaks):
            self._reason = f"upstream broke: {exc_value}"
            return True
        return False


class UpstreamBody:
    """``length`` body bytes of ``first`` (and, after breaks, of the answers resuming it).

    ``answer`` is the answer being read; the owner closes it at the end (older ones are
    closed here when replaced). ``received`` counts the body bytes yielded so far.
    """

    def __init__(
        self,
        first: UpstreamAnswer,
        length: int,
        *,
        reopen: Reopen | None = None,
        delays: tuple[float, ...] = (),
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self.first = first
        self.answer = first
        self.length = length
        self.received = 0
        self.resumes = 0
        #: When (trio time) :meth:`into` had the whole body (None: not yet, or not so read).
        self.whole_at: float | None = None
        self._reopen = reopen
        self._delays = delays
        self._on_resume = on_resume

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, chunk by chunk; use under ``contextlib.aclosing``.

        Raises UpstreamError when the body breaks for good (more bytes than announced, or a
        break no resume could repair). Cancellation propagates.
        """
        reads = _Reads(self, (TransportError,))
        while await reads.again():
            with reads:
                async with body_chunks(self.answer.response) as chunks:
                    async for chunk in chunks:
                        self.received += len(chunk)
                        if self.received > self.length:
                            raise UpstreamError(f"upstream sent more than {self.length} bytes")
                        await self.answer.pacer.pace(len(chunk))  # source_limits.max_rate
                        yield chunk

    async def into(
        self, refresh: Refresh, on_bytes: Callable[[int], None], read_timeout: float
    ) -> None:
        """Move the whole body into ``refresh``'s temp file, resuming breaks as
        :meth:`chunks` does: spliced from the socket while an answer's body is whole in a
        plain TCP socket (:meth:`Refresh.splice_from`), else chunk by chunk.
        ``on_bytes(n)`` is told of every body byte that arrived.

        Raises UpstreamError as :meth:`chunks`, CacheError when the file cannot be written.
        Cancellation propagates (after the current splice slice).
        """

        def moved(count: int) -> None:
            self.received += count
            on_bytes(count)

        reads = _Reads(self, (TransportError, SourceFailed))
        while await reads.again():
            with reads:
                await self._move_answer(refresh, moved, read_timeout)
        # the source's last byte came: what follows (the promotion) is not its time
        self.whole_at = trio.current_time()

    async def _move_answer(
        self, refresh: Refresh, moved: Callable[[int], None], read_timeout: float
    ) -> None:
        """Move the current answer's body (the rest of the file) into ``refresh``."""
        left = self.length - self.received
        stream = splice_stream(self.answer.response, left)
        if stream is not None:
            stream.take_body()
            sock = stream.get_extra_info("socket")
            pacer = self.answer.pacer
            await refresh.splice_from(sock, left, read_timeout, moved, pacer=pacer)
            return
        async with body_chunks(self.answer.response) as chunks:
            async for chunk in chunks:
                if self.received + len(chunk) > self.length:
                    raise UpstreamError(f"upstream sent more than {self.length} bytes")
                moved(len(chunk))
                await refresh.write(chunk)
                await self.answer.pacer.pace(len(chunk))  # source_limits.max_rate

    async def resume(self, reason: str, failures: int) -> int:
        """Replace the broken answer by one carrying the rest; return the failure count.
        Raises UpstreamError(reason) once the attempts for this break are used up."""
        log_folded(
            resume_log,
            "warning",
            "upstream_broke",
            unfolded=bulk(self.received),
            url=self.answer.url,
            received=self.received,
            of=self.length,
            reason=reason,
        )
        await self.answer.aclose()
        while self._reopen is not None and failures < len(self._delays):
            await trio.sleep(self._delays[failures])
            failures += 1
            try:
                answer = await self._reopen(self.first, self.received, self.length)
            except UpstreamError as exc:
                log_folded(
                    resume_log,
                    "warning",
                    "upstream_resume_failed",
                    attempt=failures,
                    reason=exc,
                )
                continue
            self.answer = answer
            self.resumes += 1
            if self._on_resume is not None:
                self._on_resume()
            log_folded(
                resume_log,
                "info",
                "upstream_resumed",
                unfolded=bulk(self.received),
                url=answer.url,
                offset=self.received,
                attempt=failures,
            )
            return failures
        raise UpstreamError(one_line(reason))
