"""Opening a pump's upstream: the answer, closed whatever ends the pump, and the early head.

:func:`opened` asks the sources (``job.open``: failover inside, :mod:`tracker.proxy.failover`)
and closes the answer when its block ends, reporting what the source delivered and how fast
(its throughput ranks it, docs/http-api.md#trust). A plain request of a file of known size
whose source has not answered within ``early_head_after`` gets its head anyway
(docs/http-api.md, "Archive answers": an *early head*); only a source that then answers 200
with the promised length may follow it (:func:`keeps_promise`), or the body breaks.
:class:`Upstream` is the answer a pump reads (with the sources of a refresh from several).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from tracker.errors import UpstreamError
from tracker.multisource.sources import Source
from tracker.observability.logs import log_event
from tracker.proxy.clientfeed import EarlyBody, Flow
from tracker.proxy.failover import head_due
from tracker.proxy.resume import UpstreamBody, resumable
from tracker.proxy.transfers import Head, StreamJob
from tracker.proxy.upstream import UpstreamAnswer

log = logging.getLogger("tracker.transfers")


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

    @property
    def moved(self) -> int:
        """Body bytes that came from the source."""
        if self.body is not None:
            return self.body.received
        return self.splicing() if self.splicing is not None else self.spliced

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
                log_event(log, "warning", "stream_failed", reason=flow.error)
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
        elapsed = trio.current_time() - upstream.opened_at
        job.source_transfer(upstream.first.source.key, upstream.moved, elapsed)


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
    log_event(log, "warning", "stream_failed", reason=flow.error)
    return False
