"""The fill: a refresh of the cache from one source or from several at once, its temp
file written at the sources' pace while its readers follow it (docs/architecture.md, "One
refresh, one owner" and "A refresh from several sources").

:func:`fill` is the refresh's pump, started by :mod:`tracker.proxy.refreshing` in the
transfers nursery: it opens the upstream (:func:`tracker.proxy.pumps.opened`: failover
inside), reports the client's :class:`~tracker.proxy.transfers.Head` once the temp file is
open (the refresh itself is announced to its readers first), then moves the body into the
temp file, spliced from the socket when it allows (:meth:`tracker.proxy.pumps.UpstreamBody.into`;
a break is resumed on the same source). When the temp file cannot be opened (no room), the
starter is relayed uncached. A complete file is checked and promoted (:func:`_promote`); a
refresh always ends in :func:`_end_refresh`: promoted, or its temp file removed, its outcome
counted and logged.

From several sources: a checked archive whose first source answered a whole file, when the
index knows other sources of the same archive (:func:`choose`: the same name and size, and no
other SHA-256 where sources publish one; docs/http-api.md#trust), is filled by all of them at
once (:func:`fill_from_many`). The shared engine (:mod:`tracker.multisource`) cuts the file
into pieces, hands them out from the front within a window ahead of the gapless prefix, and
each source's lanes (at most its ``source_limits.max_transfers``: :func:`lanes_for`), once a
one-byte probe showed that it honours ``Range`` (one that ignores it, as agave's RPC does, is
closed unread and gives no pieces; the first answer still runs on), fetch them with
``Range`` requests, paced by its ``max_rate``, spliced into the temp file at their offsets.
The first answer carries the head on for as long as no other lane holds the next piece. The
refresh's readers follow the gapless prefix (:meth:`tracker.cache.refresh.Refresh.landed`),
which grows at the sources' combined rate; an idle lane steals the back half of the head
piece from a laggard, a source that fails three times, stalls, drips under a floor or
delivers under a tenth of another one's rate (:func:`tracker.multisource.judging.laggards`)
is dropped and its pieces go to the others. How each source was used is kept per target
(:class:`tracker.multisource.sources.SourcesUsed`, ``/v1/targets``). Which copy is good is
not decided by the pieces: the whole-file checks stay the gate (docs/http-api.md, "Verified
archives"); how a copy from several sources is checked beyond them (its bytes no level
binds made the first source's word, a failed check repaired) is
:mod:`tracker.proxy.copyrepair`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from tracker.cache.mixedcopy import plan, trusted_digest
from tracker.cache.refresh import Refresh
from tracker.errors import ArchiveInvalid, CacheError, UpstreamError, first_leaf
from tracker.multisource.claims import Pieces
from tracker.multisource.crew import Crew, PieceAnswer, lane, watch_speed
from tracker.multisource.judging import FLOOR_RATE, laggards
from tracker.multisource.samefile import refusals
from tracker.multisource.sources import Identity, Source
from tracker.observability.folding import bulk, log_folded
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_text
from tracker.ordering.index import TargetKey
from tracker.ordering.sourcehistory import Flowing
from tracker.proxy.channel import channel
from tracker.proxy.copyrepair import Delivered, Repair, ask_copy, confirm_unbound
from tracker.proxy.decisions import Found
from tracker.proxy.pumps import Flow, Upstream, UpstreamBody, opened, recorded
from tracker.proxy.transfers import Ending, Head, Peers, RefreshOutcome, StreamJob
from tracker.proxy.upstream import UpstreamAnswer
from tracker.serving.ranges import parse_http_date, sent_last_modified

log = logging.getLogger("tracker.transfers")
#: The events of a refresh from several sources.
many_log = logging.getLogger("tracker.proxy")


async def fill(job: StreamJob, *, fallback: bool, task_status: trio.TaskStatus[Head]) -> None:
    """A refresh of the cache (``job.refresh``); its clients read the temp file (see the
    module doc). Once the temp file is open the refresh is announced to its readers
    (:meth:`Refresh.announce`) and the Head carries it; when it cannot be opened, the
    requester is relayed uncached if ``fallback``, else the Head has neither body nor
    refresh."""
    refresh = job.refresh
    assert refresh is not None  # a job for a refresh has one
    flow = Flow()
    upstream: Upstream | None = None
    try:
        async with opened(job, flow, None) as upstream:
            assert upstream is not None  # no early head without a task_status to report it
            head, length = job.head_of(upstream.first)
            if length is None:
                task_status.started(head)
                return
            on_disk = await _open_temp_file(refresh, upstream.first, length, flow)
            if not on_disk and fallback:
                body = upstream.read(job, length)
                await channel(job, body, head, flow, task_status)
                return
            if on_disk:  # readers may join now, with the upstream's headers
                refresh.announce(head.headers)
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
        try:
            # its temp file closed and removed off the event loop (a partial full's unlink
            # takes seconds), within a bound, cancelled or not
            await refresh.end()
        finally:
            _end_refresh(job, refresh, upstream, flow)


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
    flow.error = flow.error or refresh.no_room
    return False


def _end_refresh(job: StreamJob, refresh: Refresh, upstream: Upstream | None, flow: Flow) -> None:
    """The last step of every refresh, once it ended (:meth:`Refresh.end`: nothing left
    behind): its outcome counted and logged."""
    flow.report(job)
    body = upstream.body if upstream is not None else None
    many = upstream.many if upstream is not None else []
    received = body.received if body is not None else sum(s.sent for s in many)
    # Why a refresh failed, on its own line: a full cache disk otherwise shows only in a
    # ``stream_failed`` line that names the source's URL, as if the source had failed.
    failed: dict[str, Any] = {}
    if flow.outcome != "refresh_ok" and flow.error:
        failed["reason"] = flow.error
    # A request starts a refresh again after each that failed: those lines are folded past
    # a rate, a refresh that came whole or moved a GiB never is.
    log_folded(
        log,
        "info",
        "cache_refresh_ended",
        unfolded=flow.outcome == "refresh_ok" or bulk(received),
        group=refresh.group,
        file=refresh.name,
        outcome=flow.outcome,
        size=refresh.size,
        upstream_bytes=received,
        resumes=body.resumes if body is not None else 0,
        sources=len(many) or 1,
        **failed,
    )


async def _to_disk(job: StreamJob, refresh: Refresh, body: UpstreamBody, flow: Flow) -> None:
    """A refresh: upstream bytes to the temp file only, its readers follow the file
    (spliced when the socket allows: :meth:`UpstreamBody.into`)."""
    await body.into(refresh, job.upstream_bytes, job.settings.read_timeout)
    flow.outcome = await _promote(job, refresh, body.first)
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
        log_folded(log, "info", "refresh_one_source", file=refresh.name, reason=vouching)
        return []
    refresh.vouching = vouching
    return others


async def _to_many(
    job: StreamJob, refresh: Refresh, upstream: Upstream, others: Found, flow: Flow
) -> None:
    """A refresh from ``upstream``'s source and ``others`` at once
    (:func:`fill_from_many`); its readers follow the gapless prefix."""
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
        on_ended=partial(_measure_parts, job, upstream, flow),
    )
    repair = Repair(job.peers, refresh, outcome)
    repair.liar_found = job.archive_rejected
    # what its level does not bind is the first source's word, or two sources' (verify)
    refresh.confirm_unbound = partial(confirm_unbound, job.peers, refresh, outcome, repair=repair)
    # repair.blame: every sender, narrowed by a repair that failed (never an honest one)
    flow.outcome = await _promote(job, refresh, first, blame=repair.blame, repair=repair.run)
    flow.report(job)
    flow.complete = True


def _measure_parts(job: StreamJob, upstream: Upstream, flow: Flow, outcome: Delivered) -> None:
    """Tell what each source of a refresh from several delivered, over its own part, once
    its pieces ended, whole or not (a refresh every source of which failed too: each one's
    failure is measured, not the first's alone; docs/ranking.md, "Failed transfers"). The
    first one's transfer is told when its answer closes (:func:`tracker.proxy.pumps.opened`)."""
    upstream.spliced, upstream.splicing = outcome.sources[0].sent, None
    # the first's part ended with the pieces, or when it was dropped (as another's:
    # below); the promotion is not its time (docs/ranking.md, "Failed transfers")
    first_part, _ending = part_of_delivered(outcome, outcome.sources[0])
    upstream.many_ended = trio.current_time() - outcome.seconds + first_part
    for source in outcome.sources:
        key = outcome.key_of(source)
        # a laggard's part (our side ended it) or a failing one's (it ended its own) ended
        # when it was dropped, not with the others' pieces
        seconds, ending = part_of_delivered(outcome, source)
        job.refresh_share(key, source.sent, seconds)
        if source is not outcome.sources[0]:  # the first one's is told when it closes
            job.source_transfer(key, source.sent, seconds, ending, 0.0, 0.0)  # to disk: no client
        elif ending == "source" or source in outcome.lagged or source in outcome.busy:
            # its part ended when it was dropped, whatever became of the refresh after
            flow.ending = ending


async def _promote(
    job: StreamJob,
    refresh: Refresh,
    first: UpstreamAnswer,
    *,
    blame: list[TargetKey] | None = None,
    repair: Callable[[ArchiveInvalid], Awaitable[bool]] | None = None,
) -> RefreshOutcome:
    """Promote a complete refresh whose archive passed its check, and say what came of it:
    ``refresh_stale`` for a copy no longer the best (a newer incremental came meanwhile: not
    a failure, which the refresh alert counts), ``refresh_failed`` for a commit that failed
    (a failure after the check costs the cache, never the client). A failed check raises
    ArchiveInvalid: the refresh's readers never get their last bytes (docs/http-api.md,
    "Verified archives"), and the sources that sent the copy (``blame``, default:
    ``first``'s) are held back for it, unless ``repair`` (a refresh from several sources)
    found the liars and the repaired copy passed the check again."""
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
            job.copy_rejected()  # one archive, however many sources sent it
            raise
    if not job.still_wanted():
        log_event(
            log, "info", "cache_refresh_stale", file=refresh.name, reason="no longer the best"
        )
        await refresh.end()
        return "refresh_stale"
    # the source's date, never later than now (docs/http-api.md#archive-answers): a
    # source's future date would be the copy's mtime, its "stored" time in the listings,
    # and, held to each answer's time, a hit's validator that moves every second
    mtime = parse_http_date(
        sent_last_modified(first.response.headers.get("last-modified"), time.time())
    )
    try:
        await refresh.commit(None if mtime is None else float(mtime))
    except CacheError as exc:
        log_event(log, "warning", "cache_commit_failed", file=refresh.name, reason=exc)
        return "refresh_failed"
    return "refresh_ok"


MiB = 1024 * 1024
#: Connections per source at most (fewer when its ``max_transfers`` says so): two keep one
#: request's round trip hidden behind the other's bytes.
LANES = 2
#: Sources of one refresh at most (the first included).
MAX_SOURCES = 4
#: Seconds over which the sources' rates are compared (:func:`laggards`).
SPEED_WINDOW = 2.0


@attrs.frozen
class PieceTunables:
    """The engine's tunables for a refresh (:class:`tracker.multisource.crew.Tunables`)."""

    read_timeout: float
    write_size: int = 2 * MiB
    write_delay: float = 0.05
    max_failures: int = 3


#: The sources kept for pieces, and those refused (target, URL, the one-line reason).
Chosen = tuple[Found, list[tuple[TargetKey, str, str]]]


def choose(
    first_key: TargetKey,
    length: int,
    found: Found,
    most: int = MAX_SOURCES,
    *,
    first_digest: str = "",
) -> Chosen:
    """The sources of ``found`` (one archive name, best first) that may give pieces beside
    the first one (``first_key``, publishing ``first_digest``; "" none): another target, a
    URL, the first answer's ``length`` as their advertised size (an unknown size is not
    shown to be the same file: left out), and no published SHA-256 other than the first
    source's, or the best-ranked one's that publishes one
    (:func:`tracker.multisource.samefile.refusals`: those are refused, and named). Each
    one's first ``206`` must then state that total too (:func:`check_range`). At most
    ``most`` sources in all."""
    candidates = [
        (f, source) for f, source in found if source.key != first_key and f.url and f.size == length
    ]
    reasons = refusals([first_digest, *(f.sha256 for f, _s in candidates)])[1:]
    kept = [pair for pair, reason in zip(candidates, reasons, strict=True) if not reason]
    refused = [
        (source.key, f.url, reason)
        for (f, source), reason in zip(candidates, reasons, strict=True)
        if reason
    ]
    return kept[: max(0, most - 1)], refused


def others_of(first: UpstreamAnswer, length: int, found: Found) -> Found:
    """The sources a refresh whose first answer is ``first`` (``length`` bytes) takes
    pieces from (:func:`choose`); each source refused for the digest it publishes is named
    in the log (``refresh_source_refused``)."""
    kept, refused = choose(first.source.key, length, found, first_digest=first.file.sha256)
    for _key, url, reason in refused:
        name = first.file.bare_name
        log_event(
            many_log,
            "warning",
            "refresh_source_refused",
            file=name,
            url=redact_text(url),
            reason=reason,
        )
    return kept


#: Files smaller than this come from their first source alone: a few requests more would
#: cost more than they bring.
MIN_SIZE = 2 * MiB


def use_many(size: int, others: Found) -> bool:
    """Whether a refresh of ``size`` bytes takes pieces from ``others`` beside its first
    source."""
    return size >= MIN_SIZE and bool(others)


def lanes_for(max_transfers: int) -> int:
    """Connections to one source: LANES, fewer when ``max_transfers`` (0: no cap) says so."""
    return LANES if max_transfers <= 0 else min(LANES, max_transfers)


def piece_size_for(size: int, lanes: int) -> int:
    """Pieces small enough that the head piece comes soon and every lane has a few, big
    enough that requests stay few: about eight per lane, from 1 to 16 MiB."""
    return max(MiB, min(16 * MiB, size // max(1, 8 * lanes) + 1))


def window_for(piece: int, lanes: int) -> int:
    """How far past the gapless prefix pieces are handed out: two per lane (an idle lane
    steals the head instead of running further ahead)."""
    return max(4, 2 * lanes) * piece


@attrs.define(eq=False)
class _Measured:
    """One source's transfer as :class:`tracker.ordering.sourcehistory.Flowing` reads it."""

    source: Source
    opened_at: float

    @property
    def moved(self) -> int:
        return self.source.sent


async def fill_from_many(
    peers: Peers,
    refresh: Refresh,
    first: UpstreamAnswer,
    others: Found,
    *,
    upstream_bytes: Callable[[int], None],
    flowing: Flowing | None,
    on_sources: Callable[[list[Source]], None],
    on_ended: Callable[[Delivered], None],
) -> Delivered:
    """Fill ``refresh`` (open, ``refresh.size`` bytes) from ``first`` (its answer, body
    unread) and the sources ``others`` at once; see the module doc. ``on_sources`` is told
    the sources once they are known (the status page reads their shares), ``on_ended`` what
    they delivered once the pieces ended, the file complete or not (before UpstreamError:
    a failed refresh measures its sources too).

    Raises UpstreamError when every source failed before the file was complete (what was
    written stays unread: the refresh fails), CacheError when the temp file cannot be
    written. Cancellation stops every lane."""
    size, limits = refresh.size, peers.group.source_limits
    lanes = lanes_for(limits.max_transfers)
    piece = piece_size_for(size, lanes * (1 + len(others)))
    pieces = Pieces(size, piece, window=window_for(piece, lanes * (1 + len(others))))
    headers = first.response.headers
    identity = Identity(size, headers.get("etag", ""), headers.get("last-modified", ""))
    dropped = "refresh_source_dropped"
    sources = [Source(first.url, identity, True, drop_event=dropped)]
    sources += [Source(f.url, Identity(size), True, drop_event=dropped) for f, _s in others]
    copies = dict(zip(sources, [(first.file, first.source), *others], strict=True))
    keys = {each: source.key for each, (_file, source) in copies.items()}
    on_sources(sources)
    refresh.piece_sources = tuple(sources)
    written: dict[Source, list[tuple[int, int]]] = {}

    def landed(source: Source, offset: int, count: int) -> None:
        upstream_bytes(count)
        refresh.landed(pieces.prefix)
        ranges = written.setdefault(source, [])
        if ranges and ranges[-1][1] == offset:  # the same claim going on
            ranges[-1] = (ranges[-1][0], offset + count)
        else:
            ranges.append((offset, offset + count))

    fd = os.dup(refresh.descriptor())  # abort() may close the refresh's own meanwhile
    started = trio.current_time()
    stops = []
    if flowing is not None:
        stops = [flowing.start(keys[s], _Measured(s, started)) for s in sources[1:]]
    crew = Crew(
        PieceTunables(peers.read_timeout),
        pieces,
        fd,
        partial(ask_copy, peers, copies),
        landed=landed,
        probe_ranges=True,  # a source that ignores Range is read as one stream at most
    )
    lagged: dict[Source, float] = {}
    judge = partial(lagging, sources, lagged, started)
    head = pieces.claim(started)
    if head is None:
        raise UpstreamError("an empty file has no pieces")  # use_many refuses those first
    firsts = PieceAnswer(first.response, first.pacer, first.aclose)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_speed, sources, SPEED_WINDOW, judge)
            async with trio.open_nursery() as lanes_nursery:
                for index, each in enumerate(sources):
                    for number in range(lanes):
                        carried = (firsts, head) if index == number == 0 else None
                        lanes_nursery.start_soon(lane, crew, each, carried)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _unwrapped(group, refresh) from None
    finally:
        os.close(fd)
        for stop in stops:
            stop()
        if peers.uses is not None:
            peers.uses.record(refresh.name, [keys[s] for s in sources], sources)
    seconds = trio.current_time() - started
    parts = {
        s: s.dropped_at - started for s in sources if s.dropped_at is not None and s not in lagged
    }
    failed = {s: part for s, part in parts.items() if not s.busy}
    busy = {s: part for s, part in parts.items() if s.busy}
    outcome = Delivered(tuple(sources), seconds, written, copies, lagged, failed, busy)
    on_ended(outcome)
    if not pieces.complete:
        reasons = "; ".join(f"{redact_text(s.url)}: {s.state or 'failed'}" for s in sources)
        raise UpstreamError(f"every source of the refresh failed: {reasons}")
    log_event(many_log, "info", "refresh_sources", file=refresh.name, sources=outcome.shares())
    return outcome


def lagging(
    sources: list[Source],
    lagged: dict[Source, float],
    started: float,
    rates: list[float],
    live: list[bool],
    busy: list[bool],
    overall: list[float],
) -> list[str]:
    """:func:`tracker.multisource.judging.laggards` for ``sources``, a refresh's, that
    started at ``started`` (trio time); each source it drops while it sends at least
    FLOOR_RATE (a laggard: slower than others, sending all the same) goes to ``lagged``
    with the seconds it took part. Its transfer was ended by our side, not by the source:
    it is priced at the rate it sent (docs/ranking.md, "Failed transfers")."""
    reasons = laggards(rates, live, busy, overall)
    for source, reason, rate, on in zip(sources, reasons, rates, live, strict=True):
        if reason and on and rate >= FLOOR_RATE:
            lagged.setdefault(source, trio.current_time() - started)
    return reasons


def part_of(
    seconds: float, lagged: float | None, dropped: float | None, busy: float | None = None
) -> tuple[float, Ending]:
    """How long a source of a refresh from several took part, and who ended its part (what
    its transfer says of it: :func:`tracker.proxy.transfers.measured_transfer`). The
    refresh's pieces took ``seconds``; ``lagged`` is the seconds until the source was
    dropped as a laggard, ``dropped`` until it was dropped for failing (its answers broke,
    it stalled or dripped under the floor), ``busy`` until it was dropped for answering busy
    (503, 429); None: it was not. A laggard was sending when our side dropped it: priced at
    its rate over its part. One that failed ended its own part when it was dropped: priced
    as a source's failure over that part (over the whole refresh's seconds, it was priced
    harsher than a laggard). A busy one said it could not serve more now: our side stopped
    asking, its part priced as one our side ended (what it sent before, from 1 MiB on;
    priced as a failure, one busy moment put the fleet's fastest source last for hours:
    docs/ranking.md, "Busy answers"). One never dropped took part until the pieces ended
    (docs/ranking.md, "Failed transfers"). Pure."""
    if lagged is not None:
        return lagged, "whole"
    if dropped is not None:
        return max(0.0, min(dropped, seconds)), "source"
    if busy is not None:
        return max(0.0, min(busy, seconds)), "ours"
    return seconds, "whole"


def part_of_delivered(outcome: Delivered, source: Source) -> tuple[float, Ending]:
    """:func:`part_of` for ``source``, one of ``outcome``'s."""
    lagged, failed = outcome.lagged.get(source), outcome.failed.get(source)
    return part_of(outcome.seconds, lagged, failed, outcome.busy.get(source))


def _unwrapped(
    group: BaseExceptionGroup[BaseException], refresh: Refresh | None = None
) -> BaseException:
    """What a lane's failure means for the refresh: the group itself while it carries a
    cancellation (or anything but an Exception: it must reach its scope), else its first
    error, a failed write of the temp file as CacheError (a full disk recorded as the
    group's reason by ``refresh``: :meth:`Refresh.write_failed`)."""
    if group.subgroup(lambda exc: not isinstance(exc, Exception | BaseExceptionGroup)):
        return group
    leaf = first_leaf(group)
    if isinstance(leaf, OSError):
        if refresh is not None:
            return refresh.write_failed(leaf)
        return CacheError(f"cache write failed: {os.strerror(leaf.errno or 0)}")
    return leaf
