"""Proxy mode, which source a body comes from: the first of a file's sources whose body starts
(failover and hedging, :func:`open_upstream`), and once that body broke, the same source again,
never another (:func:`resume_upstream`: a race of one source, so it lives here too). Asking one
source, the download clients and the download path's tunables are
:mod:`tracker.proxy.upstream`'s.

Several sources often advertise the same archive. :func:`open_upstream` asks the first; when
it fails (refused, an error status, a wrong size) the next is asked at once, and when it has not
*started its body* within ``hedge_after`` seconds (``first_byte_timeout``, README.md#clients)
the next is asked as well, while the slow one keeps its chance: whichever starts its body first
wins, every other attempt is cancelled and closed. A source that accepts connections and never
answers therefore costs a client ``first_byte_timeout``, not the whole answer timeout.

"Started" means a body byte is in the socket (peeked, not read: the body stays whole for the
splice path, :func:`tracker.clientwire.transport.body_started`); on a TLS connection the head
is all that can be watched. Once an answer is returned no other source is ever used for that
response: archives of one slot and hash made by different nodes are not byte-identical, so
bytes of two sources are never spliced into one body.

Resuming: a resume asks the *same* source only (:func:`resume_upstream`), for
``Range: bytes={received}-`` with ``If-Range``, and is accepted only when the ``206`` proves
the same representation as the first answer (:func:`same_representation`, by the one rule of
:mod:`tracker.multisource.samefile`) with a ``Content-Range`` that is exactly the rest of the
file (:func:`resume_problem`): bytes of two versions of a file are never spliced. How a
pump's body uses it is :class:`tracker.proxy.pumps.UpstreamBody`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
import httpx
import trio

from tracker.clientwire.transport import body_started
from tracker.config.schema import TargetGroup
from tracker.core.snapshots import SnapshotFile
from tracker.core.text import one_line, quoted
from tracker.errors import (
    SourceBusy,
    SourceFailed,
    SourceGone,
    SourceOverloaded,
    SourcesBusy,
    SourceWithdrawn,
    UpstreamError,
)
from tracker.multisource.contentrange import ContentRange, states_range
from tracker.multisource.samefile import Validators, not_same_reason
from tracker.net.exchange import coding_problem, source_failures
from tracker.observability.folding import log_folded
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.proxy.upstream import Asking, DownloadClients, UpstreamAnswer, ask_source, check_size

log = logging.getLogger("tracker.proxy")
#: The events of a resume.
resume_log = logging.getLogger("tracker.resume")

# -- choosing among the sources of a file ----------------------------------------------------

#: Seconds a request that may get an early head, and cannot hold its early head back while it
#: waits (no ``slotted`` event), waits in the queue of the last source of a file left to ask
#: when it has no free transfer slot (``source_limits.max_transfers``), before the answer is
#: 503. Below the early head's 0.5 s (docs/http-api.md#archive-answers): a 503 must go out
#: before a 200 head would. Other requests wait up to
#: :attr:`~tracker.proxy.upstream.ProxySettings.busy_wait`.
BUSY_WAIT = 0.4


@attrs.define
class _Race:
    """One request's attempts: what every source is asked (``method`` with ``headers``
    through the group's ``clients``; ``promised``: the length an early head promised the
    client, 0: none; ``exact``: sources that always state their length, the bucket and a
    holder), the winner, and why each loser failed."""

    scope: trio.CancelScope
    clients: DownloadClients
    group: TargetGroup
    method: str
    headers: Mapping[str, str]
    promised: int = 0
    exact: bool = False
    #: A source's measured bytes per second (0: unknown): when its transfer will end, which a
    #: request turned away is told (``Retry-After``).
    rate: Callable[[TargetKey], float] | None = None
    #: Set once a source is asked (a transfer slot is held): an early head is due only
    #: ``early_head_after`` seconds after that, never while the request waits in a queue.
    slotted: trio.Event | None = None
    #: Told of every source that failed (metrics).
    on_failure: Callable[[], None] | None = None
    #: The group each source is asked with once its slot is held (None: ``group``).
    asking: Asking | None = None
    #: ``(source key, seconds since it was asked)`` of each source that failed to answer a
    #: GET by its own doing (:func:`failed_to_answer`): what ranks it (docs/ranking.md,
    #: "Failed transfers").
    refused: Callable[[TargetKey, float], None] | None = None
    #: ``(source key, seconds its Retry-After asked for or None)`` of each source that
    #: answered that it is busy (SourceOverloaded): asked after the others a while.
    overloaded: Callable[[TargetKey, float | None], None] | None = None
    reasons: dict[int, str] = attrs.Factory(dict)
    #: The attempts the next source was asked beside, their body not started in time.
    hedged: set[int] = attrs.Factory(set)
    #: The attempts that failed for want of a transfer slot.
    busy: set[int] = attrs.Factory(set)
    #: When the busy sources expect a slot to free (seconds from their refusal; None: unknown).
    retry_after: list[float] = attrs.Factory(list)
    winner: UpstreamAnswer | None = None

    @property
    def queue_wait(self) -> float:
        """How long the last source left is waited for in its queue (see :data:`BUSY_WAIT`)."""
        longest = self.clients.settings.busy_wait
        return min(longest, BUSY_WAIT) if self.promised and self.slotted is None else longest


async def open_upstream(
    clients: DownloadClients,
    group: TargetGroup,
    method: str,
    headers: Mapping[str, str],
    found: Iterable[tuple[SnapshotFile, SnapshotSource]],
    *,
    promised: int = 0,
    exact: bool = False,
    rate: Callable[[TargetKey], float] | None = None,
    slotted: trio.Event | None = None,
    hedge_after: float | None = None,
    on_failure: Callable[[], None] | None = None,
    asking: Asking | None = None,
    refused: Callable[[TargetKey, float], None] | None = None,
    overloaded: Callable[[TargetKey, float | None], None] | None = None,
) -> UpstreamAnswer:
    """The first usable answer of the sources in ``found`` (in order) to ``method``, body
    unread, asked through the group's ``clients``.

    ``headers`` are the client's whitelisted headers (credentials are added per origin by
    :func:`~tracker.proxy.upstream.ask_source`). A source fails on a connection error, a
    timeout, a status that is not an answer, too many redirects, or a length that
    contradicts its advertised size; when the client may be promised the whole file of
    ``promised`` bytes (an early head), also on any status but 200 or any other length.
    ``rate``: a source's measured bytes per second (when a busy source's transfer ends,
    ``Retry-After``); ``slotted`` is set once a source is asked (a transfer slot held).
    With ``hedge_after`` the next source is also asked when the previous one has not started
    its body after that many seconds (see the module doc); without it, sources are asked one
    after another. Raises :class:`UpstreamError` with a one-line reason when every source
    failed; it numbers the sources instead of naming them (the log names them).
    Cancellation propagates; nothing stays open. With ``exact`` (sources that always state
    their length) a 200 without ``Content-Length`` fails too. ``asking``: the group each
    source is sent with when it is asked (:func:`ask_source`): a source asked after a
    reload (a hedge, the next after a failure, a request that waited in a queue) carries
    the credentials of now, and one of a group or target the reload removed fails.
    ``refused`` is told ``(source key, seconds since it was asked)`` of each source that
    failed to answer a GET by its own doing (:func:`failed_to_answer`); ``overloaded``
    ``(source key, its Retry-After's seconds or None)`` of each that answered busy (503,
    429: docs/ranking.md, "Busy answers").
    """
    candidates = [(f, source) for f, source in found if f.url]
    if not candidates:
        raise UpstreamError("no remote source advertises the file")
    wait = hedge_after if hedge_after is not None else math.inf
    race: _Race | None = None
    try:
        async with trio.open_nursery() as nursery:
            race = _Race(
                nursery.cancel_scope,
                clients,
                group,
                method,
                headers,
                promised,
                exact,
                rate,
                slotted,
                on_failure,
                asking,
                refused,
                overloaded,
            )
            for index, (f, source) in enumerate(candidates):
                done = trio.Event()
                # A busy source gives way to the next at once; the last one is waited for.
                busy_wait = race.queue_wait if index + 1 == len(candidates) else 0.0
                nursery.start_soon(_attempt, race, index, done, f, source, busy_wait)
                if index + 1 < len(candidates):
                    with trio.move_on_after(wait) as hedge:
                        await done.wait()
                    if hedge.cancelled_caught:  # its body did not start in time
                        race.hedged.add(index)
    except BaseException:
        if race is not None and race.winner is not None:
            await race.winner.aclose()
        raise
    if race.winner is not None:
        return race.winner
    reasons = [f"source {i + 1}: {race.reasons[i]}" for i in sorted(race.reasons)]
    if race.busy and len(race.busy) == len(race.reasons):
        retry = min(race.retry_after) if race.retry_after else None
        reason = one_line("every source of the file is busy: " + "; ".join(reasons))
        raise SourcesBusy(reason, retry_after=retry)
    raise UpstreamError(one_line("no source could deliver the file: " + "; ".join(reasons)))


async def _attempt(
    race: _Race,
    index: int,
    done: trio.Event,
    f: SnapshotFile,
    source: SnapshotSource,
    busy_wait: float,
) -> None:
    """One source's attempt: the winner when its body starts first, else closed."""
    asked = trio.current_time()
    try:
        answer = await _answer(race, f, source, busy_wait)
    except trio.Cancelled:
        _lost(race, index, source, None, asked)  # a winner's, or the request's, cancel
        raise
    except SourceFailed as exc:
        _lost(race, index, source, exc, asked)
        if isinstance(exc, SourceBusy):
            race.busy.add(index)
            if exc.retry_after is not None:
                race.retry_after.append(exc.retry_after)
        if isinstance(exc, SourceOverloaded) and race.overloaded is not None:
            race.overloaded(source.key, exc.retry_after)
        # once per source a request asks: a client repeating it multiplies it
        log_folded(log, "warning", "upstream_failed", url=f.url, reason=exc)
        race.reasons[index] = str(exc)
        if race.on_failure is not None:
            race.on_failure()
        done.set()
        return
    if race.winner is None:
        race.winner = answer
        race.scope.cancel()  # every other attempt, and the wait for the next one
    else:
        await answer.aclose()  # another source started first
    done.set()


def failed_to_answer(failure: SourceFailed | None, hedged: bool, won: bool, method: str) -> bool:
    """Whether a source whose attempt did not win failed to answer by its own doing: it
    ``failure`` (None: cancelled) of a request for ``method``; ``hedged``: the next source
    was asked beside it, its body not started within ``first_byte_timeout``; ``won``:
    another source's answer won. A refusal, an error status, a wrong size, a body not
    started in time are the source's; a source busy under our own ``source_limits``
    (SourceBusy), one that said it is busy (SourceOverloaded: 503, 429; it backs off
    instead, docs/ranking.md, "Busy answers"), one a reload withdrew (SourceWithdrawn), one
    that pruned the file since its listing (SourceGone: 404, 410), one beaten while it still
    had its time, or a request that ended (the client left, the tracker stopped) are not. Only
    a GET's: the figure it yields is a transfer's (docs/ranking.md, "Failed transfers"). A
    source answering its speed tests fast and refusing every real GET otherwise stayed
    first, every request paying its failover. Pure."""
    if method != "GET":
        return False
    if failure is not None:
        return not isinstance(failure, (SourceBusy, SourceOverloaded, SourceWithdrawn, SourceGone))
    return hedged and won


def _lost(
    race: _Race,
    index: int,
    source: SnapshotSource,
    failure: SourceFailed | None,
    asked: float,
) -> None:
    """Tell ``race.refused`` of a source that failed to answer by its own doing."""
    if race.refused is None:
        return
    hedged, won = index in race.hedged, race.winner is not None
    if failed_to_answer(failure, hedged, won, race.method):
        race.refused(source.key, trio.current_time() - asked)


async def _answer(
    race: _Race, f: SnapshotFile, source: SnapshotSource, busy_wait: float = 0.0
) -> UpstreamAnswer:
    """Ask one source (within its ``source_limits``: a transfer slot, waited for at most
    ``busy_wait`` seconds, else SourceBusy); return once its answer is usable and its body
    (if any) started."""
    clients, group = race.clients, race.group
    slotted = race.slotted
    taken = slotted.set if slotted is not None else None
    answer = await ask_source(
        clients,
        group,
        f,
        source,
        race.method,
        race.headers,
        wait=busy_wait,
        taken=taken,
        asking=race.asking,
    )
    response, method = answer.response, race.method
    if race.rate is not None and answer.transfer is not None:
        rate = race.rate(source.key)
        answer.transfer.ends_at = expected_end(response, rate, answer.pacer.rate)
    try:
        await check_size(response, race.promised or f.size, exact=race.exact)
        if (coded := coding_problem(response)) is not None:
            raise SourceFailed(coded)
        status = response.status_code
        ranged = any(name.lower() == "range" for name in race.headers)
        if (race.promised and status != 200) or (status == 206 and not ranged):
            # a 206 to no Range is part of a file answered as if whole (the index may not
            # know the size to tell it from the length)
            raise SourceFailed(f"answered {status} to a request for the whole file")
        if method == "GET" and status in (200, 206):
            await _body_start(response, clients.settings.answer_timeout)
    except BaseException:
        await answer.aclose()
        raise
    return answer


def expected_end(response: httpx.Response, measured: float, cap: int) -> float | None:
    """When the body of ``response`` should have come (trio's clock), at the source's
    ``measured`` bytes per second, at most its ``cap`` (0: none); None when its length or
    its speed is unknown."""
    length = response.headers.get("content-length", "").strip()
    rate = min(measured, cap) if cap > 0 and measured > 0 else (measured or cap)
    if not (length.isascii() and length.isdigit()) or len(length) > 20 or rate <= 0:
        return None
    return trio.current_time() + int(length) / rate


async def head_due(slotted: trio.Event | None, after: float) -> None:
    """Return when an early head is due: ``after`` seconds once a source is asked
    (``slotted``; None: at once), so a request that waits in a source's queue gets none."""
    if slotted is not None:
        await slotted.wait()
    await trio.sleep(after)


async def _body_start(response: httpx.Response, limit: float) -> None:
    """Wait (at most ``limit`` seconds) until the body of ``response`` starts to arrive."""
    if response.headers.get("content-length", "").strip() == "0":
        return
    try:
        silence = f"no body within {limit:g}s of the answer"
        with source_failures("", silence), trio.fail_after(limit):
            started = await body_started(response)
    except OSError as exc:  # body_started peeks at the socket: it reads nothing through httpx
        raise SourceFailed(f"connection broke before the body: {exc}") from None
    if started is False:
        raise SourceFailed("closed the connection before the body")


# -- the rest of a file from the same source ------------------------------------------------

#: ``reopen(first, offset, size)``: an answer carrying bytes ``offset``.. of the file ``first``
#: answered; raises UpstreamError.
Reopen = Callable[[UpstreamAnswer, int, int], Awaitable[UpstreamAnswer]]


def resumable(first: httpx.Response) -> bool:
    """True when a break in ``first``'s body may be resumed: it carries a strong ETag or a
    Last-Modified date, so that a ``206`` can prove it continues the same file."""
    return Validators.of(first.headers).if_range() is not None


def same_representation(first: httpx.Response, resumed: httpx.Response) -> str | None:
    """Why ``resumed`` is not provably the same file as ``first``; None when it is
    (:func:`tracker.multisource.samefile.sameness` says *same*)."""
    return not_same_reason(Validators.of(first.headers), Validators.of(resumed.headers))


async def resume_upstream(
    clients: DownloadClients,
    group: TargetGroup,
    first: UpstreamAnswer,
    offset: int,
    size: int,
    asking: Asking | None = None,
) -> UpstreamAnswer:
    """Ask the source of ``first`` (a 200 of ``size`` bytes) for bytes ``offset`` to
    ``size - 1``, with ``Range: bytes={offset}-`` and ``If-Range`` (its strong ETag, else its
    Last-Modified date: a source whose file changed answers 200, which is refused).

    Only that source: another source's copy of the same name may differ byte for byte. The
    answer counts only as a ``206`` with ``Content-Range: bytes {offset}-{size-1}/{size}``
    and the validators of ``first`` (:func:`same_representation`). Raises
    :class:`UpstreamError` otherwise. Cancellation propagates; nothing stays open.
    ``asking``: as :func:`open_upstream`'s (a resume may wait for a slot).
    """
    validator = Validators.of(first.response.headers).if_range()
    if validator is None:
        raise UpstreamError("cannot resume: the source gave no ETag or Last-Modified")
    headers = {"range": f"bytes={offset}-", "if-range": validator}
    try:
        answer = await open_upstream(
            clients, group, "GET", headers, [(first.file, first.source)], asking=asking
        )
    except UpstreamError as exc:
        raise UpstreamError(one_line(f"cannot resume: {exc}")) from exc
    problem = resume_problem(answer.response, offset, size) or same_representation(
        first.response, answer.response
    )
    if problem is None:
        return answer
    await answer.aclose()
    log_folded(resume_log, "warning", "upstream_resume_refused", url=answer.url, reason=problem)
    raise UpstreamError(one_line(f"cannot resume: {problem}"))


def resume_problem(response: httpx.Response, offset: int, size: int) -> str | None:
    """Why ``response`` is not bytes ``offset``..``size - 1`` of a ``size``-byte file; None
    when it is."""
    if response.status_code != 206:
        return f"answered {response.status_code} to a range request, not 206"
    if (coded := coding_problem(response)) is not None:
        return coded
    got = response.headers.get("content-range", "")
    if not states_range(got, offset, size - 1, size):
        expected = ContentRange(offset, size - 1, size).text()
        return f"content-range {quoted(got)} is not {quoted(expected)}"
    length = response.headers.get("content-length")
    if length is not None and length.strip() != str(size - offset):
        return f"content-length {quoted(length)} does not match the range"
    return None
