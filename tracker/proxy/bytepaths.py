"""The byte paths of proxy mode: one pump each, over shared open and close steps.

=========  =================================================================================
``relay``   a plain stream to one client, nothing cached: spliced socket to socket when the
            client's connection and the upstream allow it (:mod:`tracker.proxy.passthrough`),
            else through the bounded channel (:mod:`tracker.proxy.clientfeed`)
``fill``    a refresh of the cache: the upstream bytes go to the temp file only, at the
            upstream's pace (spliced from the socket when it allows, see
            :meth:`tracker.proxy.resume.UpstreamBody.into`; a break is resumed; a checked
            archive that other sources of the same size hold comes from all of them at
            once, :mod:`tracker.proxy.manysources`), and its
            clients read the growing file (:mod:`tracker.proxy.sharing`), each at its own
            pace: the one that started it, the joiners of a shared refresh, or nobody (a
            prefetch); when the temp file cannot be opened (no room), the starter is
            relayed uncached
=========  =================================================================================

Each is started with ``await transfers.start(pump, job, ...)``: it opens the upstream
(:func:`~tracker.proxy.opening.opened`: failover inside, an early head for a slow source,
the answer closed on every path), reports the client's
:class:`~tracker.proxy.transfers.Head` through ``task_status.started``, then moves the body.
Before ``started`` a pump raises UpstreamError when no source answers usably; after it, it
never raises but Cancelled: failures end the client's body in error (or fail the refresh its
readers follow). A refresh always ends in :func:`_end_refresh`: promoted, or its temp file
removed, its outcome counted and logged. A stream whose bytes cross Python is fed by
:mod:`tracker.proxy.clientfeed`.

Opening a pump's upstream, with its early head, is :mod:`tracker.proxy.opening`'s (the size
an early head promises is the decisions', :func:`tracker.proxy.decisions.early_head`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from tracker.accounting.downloads import outcome_of
from tracker.cache.mixedcopy import plan, trusted_digest
from tracker.cache.refresh import Refresh
from tracker.clientwire.transport import BigReadStream, splice_stream
from tracker.errors import ArchiveInvalid, CacheError
from tracker.multisource.sources import Source
from tracker.net.sourcelimits import UNCAPPED
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_text
from tracker.ordering.index import TargetKey
from tracker.proxy.clientfeed import ChannelBody, EarlyBody, Flow, channel, pass_on, recorded
from tracker.proxy.decisions import Found
from tracker.proxy.manysources import Repair, fill_from_many, others_of, use_many
from tracker.proxy.opening import Upstream, keeps_promise, opened
from tracker.proxy.passthrough import SpliceBody
from tracker.proxy.resume import UpstreamBody
from tracker.proxy.transfers import Head, StreamJob, plan_head
from tracker.proxy.upstream import UpstreamAnswer
from tracker.serving.ranges import parse_http_date

log = logging.getLogger("tracker.transfers")


async def relay(job: StreamJob, *, task_status: trio.TaskStatus[Head]) -> None:
    """A plain stream to one client (see the module doc)."""
    flow = Flow()
    async with opened(job, flow, task_status) as upstream:
        if upstream is None:
            return  # an early head answered a HEAD, or no source followed it
        head, length = _head_of(job, upstream.first)
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
            await _spliced(job, upstream, body)
            return
        await channel(job, upstream.read(job, length), head, flow, task_status)


async def _follow_early(
    job: StreamJob, upstream: Upstream, early: EarlyBody, length: int, flow: Flow
) -> None:
    """Send the answer as the body of the early head that went out before it: spliced
    when the connections allow it (as a prompt answer would be), else through the channel."""
    stream = _spliceable(job, upstream, length)
    if stream is not None:
        body = _splice_body(job, stream, length)
        if early.decide(body):
            await _spliced(job, upstream, body)
        return
    send, receive = trio.open_memory_channel[bytes](job.settings.queue_chunks)
    if not early.decide(ChannelBody(receive, length, flow, job.client_bytes)):
        send.close()  # the client left before the answer came: nobody reads it
        receive.close()
        return
    await pass_on(job, upstream.read(job, length), send, flow)


async def fill(job: StreamJob, *, fallback: bool, task_status: trio.TaskStatus[Head]) -> None:
    """A refresh of the cache (``job.refresh``); its clients read the temp file (see the
    module doc). Its Head carries the refresh once the temp file is open; when it cannot be
    opened, the requester is relayed uncached if ``fallback``, else the Head has neither body
    nor refresh."""
    refresh = job.refresh
    assert refresh is not None  # a job for a refresh has one
    flow = Flow()
    upstream: Upstream | None = None
    try:
        async with opened(job, flow, None) as upstream:
            assert upstream is not None  # no early head without a task_status to report it
            head, length = _head_of(job, upstream.first)
            if length is None:
                task_status.started(head)
                return
            on_disk = await _open_temp_file(refresh, upstream.first, length, flow)
            if not on_disk and fallback:
                body = upstream.read(job, length)
                await channel(job, body, head, flow, task_status)
                return
            task_status.started(attrs.evolve(head, refresh=refresh if on_disk else None))
            others = _others(job, refresh, upstream.first, length)
            if on_disk and use_many(length, others):
                to_many = partial(_to_many, job, refresh, upstream, others, flow)
                await recorded(upstream.first.url, flow, job.stop, to_many, "no reader left")
            elif on_disk:
                body = upstream.read(job, length, resume=True)
                to_disk = partial(_to_disk, job, refresh, body, flow)
                await recorded(body.first.url, flow, job.stop, to_disk, "no reader left")
    finally:
        _end_refresh(job, refresh, upstream, flow)


def _head_of(job: StreamJob, answer: UpstreamAnswer) -> tuple[Head, int | None]:
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


def _end_refresh(job: StreamJob, refresh: Refresh, upstream: Upstream | None, flow: Flow) -> None:
    """The last step of every refresh: nothing left behind, its outcome counted and logged."""
    refresh.abort()  # no-op after a promotion
    flow.report(job)
    body = upstream.body if upstream is not None else None
    many = upstream.many if upstream is not None else []
    received = body.received if body is not None else sum(s.sent for s in many)
    log_event(
        log,
        "info",
        "cache_refresh_ended",
        group=refresh.group,
        file=refresh.name,
        outcome=flow.outcome,
        size=refresh.size,
        upstream_bytes=received,
        resumes=body.resumes if body is not None else 0,
        sources=len(many) or 1,
    )


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


async def _spliced(job: StreamJob, upstream: Upstream, body: SpliceBody) -> None:
    """Keep the upstream open until ``body`` (handed to the server) has ended, or the
    server never started it."""
    upstream.splicing = lambda: body.received
    with trio.move_on_after(job.settings.drain_start_timeout):
        await body.started.wait()
    if body.started.is_set():
        await body.ended.wait()
    upstream.spliced, upstream.splicing = body.sent, None
    if outcome_of(body.sent, body.length, body.error) == "error":
        log_event(log, "warning", "stream_failed", url=upstream.first.url, reason=str(body.error))


async def _to_disk(job: StreamJob, refresh: Refresh, body: UpstreamBody, flow: Flow) -> None:
    """A refresh: upstream bytes to the temp file only, its readers follow the file
    (spliced when the socket allows: :meth:`UpstreamBody.into`)."""
    await body.into(refresh, job.upstream_bytes, job.settings.read_timeout)
    if await _promote(job, refresh, body.first):
        flow.outcome = "refresh_ok"
        flow.report(job)
    flow.complete = True


def _others(job: StreamJob, refresh: Refresh, first: UpstreamAnswer, length: int) -> Found:
    """The sources a refresh may take pieces from beside ``first`` (docs/http-api.md#trust:
    the same name and size, no other published SHA-256, the whole-file checks as the gate):
    none when the archive is not checked (``verify_archives`` off: nothing would tell a
    mixed copy), the answer is no whole file, or nothing would vouch for every byte of a
    mixed copy (:func:`tracker.cache.mixedcopy.plan`: an incremental without a trusted
    digest); otherwise the refresh is told what must vouch for it."""
    peers = job.peers
    if peers is None or not peers.enabled or first.response.status_code != 200:
        return []
    if not refresh.checked:
        return []
    others = others_of(first, length, peers.found)
    if not use_many(length, others):
        return others
    published = [(first.source.key.target, first.file.sha256)]
    published += [(source.key.target, f.sha256) for f, source in peers.found]
    trusted = trusted_digest(published, frozenset(peers.group.trust.known_sources))
    vouching = plan(refresh.name, trusted, first.file.sha256, refresh.proves_accounts)
    if isinstance(vouching, str):  # nothing would vouch for a mixture: one source's copy
        log_event(log, "info", "refresh_one_source", file=refresh.name, reason=vouching)
        return []
    refresh.vouching = vouching
    return others


async def _to_many(
    job: StreamJob, refresh: Refresh, upstream: Upstream, others: Found, flow: Flow
) -> None:
    """A refresh from ``upstream``'s source and ``others`` at once
    (:mod:`tracker.proxy.manysources`); its readers follow the gapless prefix."""
    assert job.peers is not None  # others come from it
    first = upstream.first

    def known(sources: list[Source]) -> None:
        upstream.splicing = lambda: sources[0].sent  # the first source's bytes, live
        upstream.many = sources

    outcome = await fill_from_many(
        job.peers,
        refresh,
        first,
        others,
        upstream_bytes=job.upstream_bytes,
        flowing=job.flowing,
        on_sources=known,
    )
    upstream.spliced, upstream.splicing = outcome.sources[0].sent, None
    for source in outcome.sources:
        key = outcome.keys[source]
        job.refresh_share(key, source.sent, outcome.seconds)
        if source is not outcome.sources[0]:  # the first one's is told when it closes
            job.source_transfer(key, source.sent, outcome.seconds)
    repair = Repair(job.peers, refresh, outcome)
    repair.liar_found = job.archive_rejected
    # repair.blame: every sender, narrowed by a repair that failed (never an honest one)
    if await _promote(job, refresh, first, blame=repair.blame, repair=repair.run):
        flow.outcome = "refresh_ok"
        flow.report(job)
    flow.complete = True


async def _promote(
    job: StreamJob,
    refresh: Refresh,
    first: UpstreamAnswer,
    *,
    blame: list[TargetKey] | None = None,
    repair: Callable[[ArchiveInvalid], Awaitable[bool]] | None = None,
) -> bool:
    """Promote a complete refresh whose archive passed its check; a failure after the check
    costs the cache, never the client. A failed check raises ArchiveInvalid: the refresh's
    readers never get their last bytes (docs/http-api.md, "Verified archives"), and the
    sources that sent the copy (``blame``, default: ``first``'s) are held back for it,
    unless ``repair`` (a refresh from several sources) found the liars and the repaired copy
    passed the check again."""
    await refresh.flush()  # the last write may still be in flight (raises CacheError)
    try:
        await refresh.verify()  # readers may finish once it passed, whatever comes next
    except ArchiveInvalid as exc:
        if repair is None or not await repair(exc):
            for key in blame if blame is not None else [first.source.key]:
                log_event(
                    log,
                    "warning",
                    "archive_rejected",
                    group=refresh.group,
                    file=refresh.name,
                    source=redact_text(key.target),
                    reason=exc.reason,
                )
                job.archive_rejected(key, exc.reason)
            raise
    if not job.still_wanted():
        log_event(
            log, "info", "cache_refresh_stale", file=refresh.name, reason="no longer the best"
        )
        refresh.abort()
        return False
    mtime = parse_http_date(first.response.headers.get("last-modified"))
    try:
        await refresh.commit(None if mtime is None else float(mtime))
    except CacheError as exc:
        log_event(log, "warning", "cache_commit_failed", file=refresh.name, reason=exc)
        return False
    return True


def _spliceable(job: StreamJob, upstream: Upstream, length: int) -> BigReadStream | None:
    """The upstream's stream when its body may be spliced to the client: a zero-copy
    connection, and a source without a rate cap (a capped one is read chunk by chunk, paced
    by ``source_limits.max_rate``)."""
    if job.zero_copy is None or upstream.first.pacer is not UNCAPPED:
        return None
    return splice_stream(upstream.first.response, length)
