"""Byte transfers of proxy mode: the nursery pumps run in, what a pump is given, and the
launcher that builds a pump's job and starts it.

Each proxied response is moved by a *pump* (the relay, :mod:`tracker.proxy.relay`, or
the fill of a refresh, :mod:`tracker.proxy.cachefill`), started with
``await transfers.start(pump, job, ...)`` in the long-lived :class:`Transfers` nursery rather
than inside the request::

    request handler ── transfers.start(pump) ──► pump: open upstream (failover)
          ▲                                        │  started(Head) once it answered
          └────────────── Head ◄───────────────────┘
    response body ◄── bounded channel, or a splice ◄── pump: read, write to the cache, send on

Why a task and not a response generator: a generator that never starts never runs its
``finally`` (the upstream connection would leak when the client leaves before the server
starts the body), and a refresh must be able to outlive its client
(``cache_complete_on_disconnect``). The pump owns the upstream connection and the cache temp
file from start to end, so both are closed on every path: the client leaves, the body never
starts (``drain_start_timeout``), the upstream breaks, or the service stops (the nursery is
cancelled after the grace period).

:class:`StreamJob` is what every pump needs (how to open the upstream, the method, the
tunables, the metrics callbacks, and for a pump that fills the cache its refresh and the
:class:`Peers` it may take pieces from). :func:`plan_head` turns an upstream answer into the
client's status and headers.

Every decision of :mod:`tracker.proxy.decisions` that moves bytes from a source (the
upstream, the bucket, a holder replica) ends with the :class:`Launcher`: :meth:`Launcher.job`
gathers what a pump needs (the sources :func:`tracker.proxy.decisions.choose_sources` keeps,
the metrics callbacks of the source's kind, how a refresh resumes) and
:meth:`Launcher.start` starts the pump: its :class:`Head`, or the 502/503 answer when it
could not start. :func:`head_answer` and :func:`early_answer` turn those into answers
(:class:`~tracker.serving.httpanswer.Answer`, framework-free).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Literal

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.config.schema import Config, TargetGroup
from tracker.core.snapshots import ArchiveName
from tracker.errors import SourcesBusy, UpstreamError
from tracker.multisource.contentrange import parse_content_range
from tracker.multisource.sources import SourcesUsed
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.observability.metrics import ByteSource, Kind, Metrics, Outcome
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import BUSY_PRICED_FROM, BusyAnswers, Flowing, Rejections
from tracker.proxy.ask import Ask
from tracker.proxy.decisions import Found, choose_sources
from tracker.proxy.failover import Reopen, open_upstream, resume_upstream
from tracker.proxy.upstream import (
    DownloadClients,
    ProxySettings,
    UpstreamAnswer,
    client_response_headers,
    group_asking,
)
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.httpanswer import Answer, text_answer
from tracker.serving.responsebodies import Body
from tracker.zerocopy.connection import Connection

log = logging.getLogger("tracker.transfers")
#: The launcher's events (a pump that could not start) are the route's.
streamer_log = logging.getLogger("tracker.streamer")

#: Seconds before the end of the grace period from which an answer cut short counts as
#: cut by the tracker (:meth:`Transfers.cut`).
CUT_MARGIN = 0.25

RefreshOutcome = Literal[
    "refresh_ok", "refresh_failed", "refresh_no_space", "refresh_rejected", "refresh_stale"
]


def _nothing(*_args: object) -> None:
    return None


class Transfers:
    """The nursery running every pump; owned by the service, outlives single requests.

    ``run`` opens it; ``close(grace)`` refuses new transfers and gives running ones ``grace``
    seconds before they are cancelled (each then removes its temp file and breaks its
    client's stream); ``cut_now`` (a forced stop) cancels them at once.
    """

    def __init__(self, *, on_failure: Callable[[], object] | None = None) -> None:
        """``on_failure()`` is called for each exception a spawned task raised (:meth:`spawn`):
        the service counts it (``internal_errors_total{where="task"}``)."""
        self._on_failure = on_failure
        self._nursery: trio.Nursery | None = None
        self._background: trio.Nursery | None = None
        self._stop = trio.Event()
        self._grace = 0.0
        #: When running transfers are cancelled (trio time; set once stopping).
        self._cut_at: float | None = None
        #: The sources bytes come from now (their live rates: status page, /v1/targets).
        self.flowing = Flowing()

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
                # min: a forced stop (cut_now) may already have ended the grace
                ends = trio.current_time() + self._grace
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, ends)
        finally:
            self._nursery = self._background = None

    def close(self, grace: float) -> None:
        """Refuse new transfers; running ones get ``grace`` seconds to finish, background
        tasks (:meth:`spawn`) are cancelled at once."""
        self._grace = grace
        ends = trio.current_time() + grace
        self._cut_at = ends if self._cut_at is None else min(self._cut_at, ends)
        self._stop.set()
        if self._background is not None:
            self._background.cancel_scope.cancel()

    def cut_now(self) -> None:
        """The grace period ends now (a second SIGTERM or SIGINT): every running transfer
        (a refresh included) is cancelled at once, not when the listeners are (README.md:
        "a second one ends the grace at once"), and what is still being sent is ended by
        the tracker, and said so (``outcome=shutdown``)."""
        now = trio.current_time()
        cut = now + CUT_MARGIN
        self._cut_at = cut if self._cut_at is None else min(self._cut_at, cut)
        if self._nursery is not None:
            scope = self._nursery.cancel_scope
            scope.deadline = min(scope.deadline, now)

    def cut(self) -> bool:
        """True once the grace period after :meth:`close` ended: what is still being sent
        then is ended by the tracker, not by its client. The listeners' graceful timeout
        starts when the stop is asked, a moment before this one: CUT_MARGIN covers that."""
        return self._cut_at is not None and trio.current_time() >= self._cut_at - CUT_MARGIN

    def spawn(self, task: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run ``task(*args)`` in the background (prefetch, upload, lock release); False
        when stopping.

        The task should handle its own failures; an exception it raises anyway is logged
        once (``task_failed``, with its traceback), counted (``on_failure``) and ends that
        task only: raised into the
        transfers nursery it would end every transfer and the daemon with them
        (docs/architecture.md, "Failures"). It is cancelled as soon as the service stops,
        without a grace period.
        """
        if self._background is None or self._stop.is_set():
            return False
        self._background.start_soon(
            _contained, self._on_failure, task, *args, name=_task_name(task)
        )
        return True

    async def start(self, pump: Callable[..., Awaitable[None]], *args: Any) -> Any:
        """``nursery.start(pump, *args)`` in the transfers nursery; returns what the pump
        reported. Until then the pump runs as part of the caller (a cancelled caller cancels
        it); its errors before ``started`` are raised here. UpstreamError when stopping."""
        if self._nursery is None or self._stop.is_set():
            raise UpstreamError("the tracker is stopping")
        return await self._nursery.start(pump, *args)


async def _contained(
    on_failure: Callable[[], object] | None, task: Callable[..., Awaitable[None]], *args: Any
) -> None:
    """``task(*args)``; an exception it raised is counted (``on_failure``) and logged, not
    raised (cancellation is not caught)."""
    try:
        await task(*args)
    except Exception as exc:
        # a bug contained is still a bug: the log line alone alerted no one
        # (docs/architecture.md, "Failures")
        if on_failure is not None:
            on_failure()
        log_event(log, "error", "task_failed", task=_task_name(task), exc_info=exc)


def _task_name(task: Callable[..., Awaitable[None]]) -> str:
    """What the log calls ``task``: its qualified name (``ObjectPath.upload``), that of the
    function a partial wraps."""
    while isinstance(task, partial):
        task = task.func
    return str(getattr(task, "__qualname__", type(task).__name__))


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


@attrs.frozen
class Head:
    """What the client gets: status, headers, and a body when there is one to send."""

    status: int
    headers: dict[str, str]
    #: The body (a channel or a splice), None for a bodiless answer.
    body: Any
    #: A detached pump's refresh, open and being filled (clients read its temp file).
    refresh: Refresh | None = None


@attrs.frozen
class Peers:
    """What a refresh may add beside its first source: the group's download clients, the
    group, and the sources of the file the request may use (best first, those held back
    after a failed check already left out); ``enabled`` False keeps one source."""

    clients: DownloadClients
    group: TargetGroup
    found: Found
    enabled: bool = True
    #: Longest wait for one read of a body (``ProxySettings.read_timeout``).
    read_timeout: float = 60.0
    #: Where each refresh from several sources says how it used them (None: nowhere).
    uses: SourcesUsed | None = None
    #: The group to ask a source with now (:meth:`Launcher.asking`; None: ``group``).
    asking: Callable[[TargetKey], TargetGroup] | None = None
    #: Told ``(source key, its Retry-After's seconds or None)`` of a source that answered a
    #: piece busy (503, 429: docs/ranking.md, "Busy answers"; None: nobody).
    overloaded: Callable[[TargetKey, float | None], None] | None = None

    def group_for(self, key: TargetKey) -> TargetGroup:
        """The group whose credentials and TLS settings ask ``key`` now."""
        return self.group if self.asking is None else self.asking(key)


@attrs.frozen
class StreamJob:
    """Everything any pump needs.

    ``open`` asks the sources (raising UpstreamError when none answers); ``known_size`` is
    the index's size of the file (0: unknown), used when a 200 comes without a length;
    ``reopen`` resumes a refresh's broken upstream body
    (:class:`tracker.proxy.pumps.UpstreamBody`);
    ``zero_copy`` is the client's connection when it takes zero-copy pieces (a plain stream
    is then spliced); ``early_size`` (0: none) is the size of the whole file a plain request
    may be promised in an early head when the source is slow to answer (README.md#clients);
    ``budget`` is the memory shared by every stream passed through Python (the channel;
    None: each reads ``settings.read_size``); ``slotted`` is set once a source is asked
    (a transfer slot held): the early head waits for it (None: nothing to wait for).
    """

    open: Callable[[], Awaitable[UpstreamAnswer]]
    method: str
    known_size: int
    settings: ProxySettings
    reopen: Reopen | None = None
    zero_copy: Connection | None = None
    early_size: int = 0
    budget: ChunkBudget | None = None
    slotted: trio.Event | None = None
    #: A pump that fills the cache (:func:`tracker.proxy.cachefill.fill`): the refresh whose
    #: temp file it writes (None for any other pump).
    refresh: Refresh | None = None
    #: Asked once the refresh is complete: a file that stopped being its group's best
    #: meanwhile is not promoted.
    still_wanted: Callable[[], bool] = lambda: True
    #: Cancelled by the refresh's owner when nobody needs it any more (its readers left, and
    #: it is not to be kept).
    stop: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: The other sources a refresh may take pieces from beside its first
    #: (:mod:`tracker.proxy.cachefill`; None: its first source alone).
    peers: Peers | None = None
    # What the pump reports through (metrics): all synchronous and cheap.
    upstream_bytes: Callable[[int], None] = _nothing
    client_bytes: Callable[[int], None] = _nothing
    refresh_outcome: Callable[[RefreshOutcome], None] = _nothing
    refresh_resumed: Callable[[], None] = _nothing
    #: ``(source key, body bytes, seconds)`` of each source of a refresh from several
    #: sources, once it ended (its share: metrics).
    refresh_share: Callable[[TargetKey, int, float], None] = _nothing
    #: ``(source key, body bytes, seconds, who ended it, seconds the pump waited for its
    #: client, the longest span of them in which the client took no byte)`` when a pump is
    #: done with a source (what it says of the source's throughput: :func:`measured_transfer`).
    source_transfer: Callable[[TargetKey, int, float, Ending, float, float], None] = _nothing
    #: ``(source key, reason)`` when a refresh's archive from that source failed its check
    #: (each source it came from: held back for it), or a repair named it a liar.
    archive_rejected: Callable[[TargetKey, str], None] = _nothing
    #: Once when a refresh's copy failed its check and was neither stored nor handed out
    #: (metrics: one archive, however many sources sent it; not a copy repaired).
    copy_rejected: Callable[[], None] = _nothing
    #: Where a pump registers the upstream it reads while bytes come (None: not a source of
    #: the index, e.g. the bucket or a replica).
    flowing: Flowing | None = None

    def head_of(self, answer: UpstreamAnswer) -> tuple[Head, int | None]:
        """The client's Head and body length (None: no body) for ``answer``
        (:func:`plan_head`)."""
        return plan_head(answer, self.method, answer.file.size or self.known_size)


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
    # with a transfer coding the body is framed by it, not by its content-length (RFC 9112,
    # 6.3): that number says nothing of the body's length
    by_length = "transfer-encoding" not in answer.response.headers
    length = _digits(headers.get("content-length")) if by_length else None
    if length is None and status == 206:
        length = _range_length(headers.get("content-range"))
    if length is None and status == 200 and known_size > 0:
        length = known_size
    if length is None:
        log_folded(log, "warning", "upstream_without_length", url=answer.url, status=status)
        raise UpstreamError(f"the source answered {status} without content-length")
    headers["content-length"] = str(length)
    headers.setdefault("content-type", "application/octet-stream")
    body_length = length if method == "GET" and length > 0 else None
    return Head(status, headers, None), body_length


def _digits(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


def _range_length(value: str | None) -> int | None:
    stated = parse_content_range(value)
    return None if stated is None else stated.length


#: Transfers smaller than this say little about a source's throughput and are not counted,
#: unless the source ended them (:func:`measured_transfer`).
MIN_MEASURED_BYTES = 1024 * 1024

#: Who ended a transfer from a source: nobody (``whole``: every byte came, the copy checked
#: or not), the ``source`` (its read stalled past the read timeout, its body was cut short,
#: it failed after its head), or our side (``ours``: the client left or stalled, the
#: tracker stopped, the cache could not write; also whatever is not known to be the source's).
Ending = Literal["whole", "source", "ours"]


#: A transfer whose pump waited for its client more than this share of its seconds went at
#: the client's pace, not the source's (:func:`paced_by_client`).
CLIENT_PACED_SHARE = 0.5


def paced_by_client(seconds: float, client_waited: float) -> bool:
    """Whether a transfer of ``seconds`` went at its client's pace: its pump waited
    ``client_waited`` of them for the client to take bytes (a relay reads its source only
    as fast as its client takes them), more than :data:`CLIENT_PACED_SHARE` of them. Such a
    transfer's bytes over its seconds are the client's speed, not the source's
    (docs/ranking.md, "Failed transfers"). Pure."""
    return seconds > 0 and client_waited > CLIENT_PACED_SHARE * seconds


#: Seconds a relay's client may take no byte at all before a cut of its source's is laid at
#: the client's door (:func:`measured_transfer`): a source's own send timeout closes a
#: connection only once our side took nothing from it for that long, and every real server's
#: is far longer (nginx's ``send_timeout`` is 60 s by default), while a client that reads,
#: however slowly, takes bytes every few milliseconds (a piece of at most ``read_size``, 1 MiB,
#: through Python: a client slower than 200 KiB/s looks stalled there, far slower than any
#: validator pulls a snapshot).
CLIENT_STALL = 5.0


def measured_transfer(
    moved: int,
    seconds: float,
    ending: Ending,
    read_timeout: float,
    client_waited: float = 0.0,
    client_stalled: float = 0.0,
) -> tuple[int, float] | None:
    """What a transfer from a source says of its throughput: the ``(bytes, seconds)`` to
    record as achieved, or None (nothing). ``moved`` body bytes came in ``seconds``; it
    ended as ``ending`` says; ``read_timeout`` is the longest wait for one read;
    ``client_waited`` is how long of ``seconds`` the pump waited for its client (0: none,
    a refresh writing to disk), ``client_stalled`` the longest span of those waits in which
    the client took no byte.

    One the source ended counts whatever its size and whatever its client's pace, over at
    least ``read_timeout``: a source that answers its speed tests fast and stalls or cuts
    real transfers early would otherwise never be measured and stay first, and a cut is
    priced as a stall there, so dropping the connection is not the cheaper way to fail
    (docs/ranking.md, "Failed transfers"). A source that answered a head and then sent no
    byte counts as one byte so (a liar stalling at once would otherwise go unmeasured as
    well). Only when its client stalled (took no byte) for :data:`CLIENT_STALL` seconds
    does it count nothing: the source's own send timeout then gave up on a client that held
    it, a cut that was the source's only because our client held it; a client that reads
    slowly but steadily cannot cause one, so a liar faster than its clients that cuts every
    answer is measured.

    A whole transfer, or one our side ended, counts from :data:`MIN_MEASURED_BYTES` on (a
    few KiB say little, and a client that leaves must not mark a source slow), unless its
    client paced it (:func:`paced_by_client`: one slow client would otherwise price a fast
    source at the client's speed for the whole fleet). Pure."""
    if moved < 0 or seconds < 0:
        return None
    if ending == "source":
        if client_stalled >= CLIENT_STALL:
            return None
        return max(moved, 1), max(seconds, read_timeout)
    if paced_by_client(seconds, client_waited):
        return None
    if moved == 0:
        return None
    if moved < MIN_MEASURED_BYTES or seconds <= 0:
        return None
    return moved, seconds


#: A pump (tracker/proxy/relay.py, tracker/proxy/cachefill.py) with its job, ready to start.
Pump = Callable[..., Awaitable[None]]


@attrs.define(eq=False)
class Launcher:
    """Builds the jobs of a file's streams and starts their pumps; counts what they come to
    (what every executor starts its streams with). ``settings``: the proxy's tunables, one
    value given at construction."""

    config: Callable[[], Config]
    index: Index
    transfers: Transfers
    settings: ProxySettings
    metrics: Metrics | None
    rejections: Rejections
    _clients: DownloadClients = attrs.field(alias="clients")
    _channel_budget: ChunkBudget = attrs.field(alias="channel_budget", kw_only=True)
    #: How the latest refresh from several sources used each target (``/v1/targets``).
    sources_used: SourcesUsed = attrs.field(factory=SourcesUsed, kw_only=True)
    #: The sources backing off after they answered busy (docs/ranking.md, "Busy answers").
    busy: BusyAnswers = attrs.field(factory=BusyAnswers, kw_only=True)

    def job(
        self,
        group: TargetGroup,
        ask: Ask,
        archive: ArchiveName,
        found: Found,
        *,
        origin: ByteSource = "upstream",
        zero_copy: bool = True,
    ) -> StreamJob:
        """The job of a stream of ``archive`` from the sources of ``found`` (from ``origin``:
        the index's sources, the bucket or a holder replica) for what the client asked
        (``ask``: its method and forwarded headers), sent to the client's zero-copy
        connection when it has one (and ``zero_copy``)."""
        now = self.index.clock()  # the clock rejections are kept on
        if origin == "upstream":  # a source backing off after a busy answer goes last
            found = self.busy.behind(found, now)
        held = [self.rejections.rejected(s.key, archive.file_name, now) for _f, s in found]
        kept, size, early, refusal = choose_sources(
            ask.asked, found, [h.reason if h else None for h in held]
        )
        method, headers = ask.method, dict(ask.headers)
        slotted = trio.Event()  # a source asked: the early head's clock starts
        opener = partial(
            open_upstream,
            self._clients,
            group,
            method,
            headers,
            kept,
            promised=early,
            exact=origin != "upstream",  # the bucket and a holder always state their length
            rate=self.index.throughput,  # when a transfer should end: a busy one's Retry-After
            slotted=slotted,
            hedge_after=self.config().first_byte_timeout,
            on_failure=self._source_failed(group.group, origin),
            # a source asked later (a hedge, after a wait in its queue) asks as of then
            asking=partial(self.asking, group.group, origin),
            # a source that fails a real GET is measured as one that ended its transfer
            # (as the job's source_transfer: only a source of the index is ranked)
            refused=self._refused if origin == "upstream" else None,
            # a source that said it is busy backs off instead (docs/ranking.md, "Busy answers");
            # priced only by a GET's busy answers (a HEAD moves no body: it says nothing)
            overloaded=partial(self._overloaded, priced=method == "GET")
            if origin == "upstream"
            else None,
        )
        if origin == "upstream":
            opener = partial(self._answered, opener)
        if refusal:
            opener = partial(_refuse, refusal)
        job = StreamJob(
            open=opener,
            method=method,
            known_size=size,
            settings=self.settings,
            reopen=partial(self._reopen, group.group, origin),
            zero_copy=ask.connection if zero_copy else None,
            early_size=early,
            budget=self._channel_budget,
            slotted=slotted,
            peers=Peers(
                self._clients,
                group,
                kept,
                enabled=origin == "upstream",
                read_timeout=self.settings.read_timeout,
                uses=self.sources_used,
                asking=partial(self.asking, group.group, origin),
                overloaded=self._overloaded if origin == "upstream" else None,
            ),
        )
        return self._reported(job, group.group, archive, origin)

    async def start(
        self, pump: Pump, *, refresh: Refresh | None = None, client: bool = True, failed: str = ""
    ) -> Head | Answer:
        """Start ``pump`` (:data:`Pump`); its Head, or the 502/503 answer when it could not
        start (counted as an archive request's outcome for a ``client``, not for a
        prefetch). ``refresh``: the cache refresh the pump was
        given, released here when the pump never ran. ``failed``: the event logged when it
        could not start (default: by ``client``)."""
        try:
            head: Head = await self.transfers.start(pump)
        except BaseException as exc:
            # start() raising means the pump ended (or never ran): the refresh is free.
            if refresh is not None:
                refresh.abort()
            if not isinstance(exc, UpstreamError):
                raise
            if isinstance(exc, SourcesBusy):
                return text_answer(503, str(exc), retry=exc.retry_after)
            if not self.transfers.accepting:
                return text_answer(503, str(exc))
            if client:
                self.count("upstream_failed")
            event = failed or ("proxy_failed" if client else "cache_prefetch_failed")
            # as many as a client asks (a 502, the bucket's stream or the holder replica
            # given up on); a prefetch's come once per file
            prefetch = event == "cache_prefetch_failed"
            log_folded(streamer_log, "warning", event, unfolded=prefetch, reason=str(exc))
            return text_answer(502, str(exc))
        return head

    def is_best(self, group: str, name: str) -> bool:
        """True when ``name`` is the group's current best full or best incremental."""
        index = self.index
        best = (index.best_full(group), index.best_incremental(group))
        return any(s is not None and s.info.files[0].bare_name == name for s in best)

    def still_wanted(self, group: str, name: str) -> bool:
        """Whether a refresh of ``name`` that came whole is stored: the group's best full or
        incremental, or an incremental the cache keeps for the nodes still on its full
        (:func:`tracker.ordering.keeping.worth_keeping`; docs/http-api.md, "Kept
        incrementals"). A full no longer the best is not: stored, it would take the best
        one's place."""
        return self.is_best(group, name) or self.index.worth_keeping(group, name)

    def index_size(self, group: str, name: str) -> int:
        """The file's size in the index (0: unknown)."""
        found = self.index.find_file(group, name)
        return found[0][0].size if found else 0

    def count(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.count_outcome(outcome)

    def served(self, origin: ByteSource = "cache") -> Callable[[int], None]:
        """What counts the bytes a reader of a refresh's temp file sends, as ``origin``'s."""
        metrics = self.metrics
        if metrics is None:
            return _nothing
        return partial(metrics.add_served_bytes, origin)

    def _reported(
        self, job: StreamJob, group: str, archive: ArchiveName, origin: ByteSource
    ) -> StreamJob:
        """``job`` with the metrics callbacks of a stream from ``origin``; only a source of
        the index has its transfers ranked (not the bucket, not a replica)."""
        metrics = self.metrics
        rejected = partial(self._archive_rejected, archive.file_name)
        if metrics is None and origin == "upstream":
            flowing = self.transfers.flowing
            return attrs.evolve(
                job, source_transfer=self._measured, archive_rejected=rejected, flowing=flowing
            )
        if metrics is None:
            return attrs.evolve(job, archive_rejected=rejected)
        kind: Kind = "full" if archive.is_full else "incremental"
        counted = partial(metrics.count_archive_rejected, group)
        if origin != "upstream":
            served = partial(metrics.add_served_bytes, origin)
            return attrs.evolve(
                job, client_bytes=served, archive_rejected=rejected, copy_rejected=counted
            )
        return attrs.evolve(
            job,
            upstream_bytes=partial(metrics.add_upstream_bytes, group, kind),
            client_bytes=partial(metrics.add_served_bytes, "upstream"),
            refresh_outcome=metrics.count_outcome,
            refresh_resumed=metrics.count_refresh_resume,
            refresh_share=partial(self._share, metrics, group),
            source_transfer=self._measured,
            archive_rejected=rejected,
            copy_rejected=counted,
            flowing=self.transfers.flowing,
        )

    def _measured(
        self,
        key: TargetKey,
        size: int,
        seconds: float,
        ending: Ending,
        client_waited: float,
        client_stalled: float,
    ) -> None:
        """A transfer from ``key`` ended (as ``ending`` says; its pump waited
        ``client_waited`` seconds for its client, at most ``client_stalled`` of them in a row
        with no byte taken): what it says of the source's throughput ranks it
        (:func:`measured_transfer`, docs/http-api.md#trust)."""
        timeout = self.settings.read_timeout
        measured = measured_transfer(
            size,
            seconds,
            ending,
            timeout,
            client_waited=client_waited,
            client_stalled=client_stalled,
        )
        if measured is not None:
            # What a real transfer achieved: it outweighs the speed tests (docs/ranking.md).
            self.index.record_transfer(key, *measured, kind="achieved")

    def _refused(self, key: TargetKey, seconds: float) -> None:
        """``key`` failed to answer a GET by its own doing, ``seconds`` after it was asked
        (:func:`~tracker.proxy.failover.failed_to_answer`): a transfer it ended with no byte
        (docs/ranking.md, "Failed transfers")."""
        self._measured(key, 0, seconds, "source", 0.0, 0.0)

    def _overloaded(
        self, key: TargetKey, retry_after: float | None, *, priced: bool = True
    ) -> None:
        """``key`` answered that it is busy (503, 429): asked after the others of a file for
        a while, its throughput untouched, unless it was busy again once its back-off ran
        out (``BUSY_PRICED_FROM``): then it is priced as a source that failed the GET
        (docs/ranking.md, "Busy answers"). ``priced``: the busy answer was a GET's (a
        HEAD's backs it off alone: it moves no body, and says nothing of a transfer)."""
        now, base = self.index.clock(), self.settings.busy_backoff
        before = self.busy.strikes(key)
        self.busy.overloaded(key, retry_after, now=now, base=base)
        strikes = self.busy.strikes(key)
        if priced and strikes > before and strikes >= BUSY_PRICED_FROM:
            self._refused(key, 0.0)

    async def _answered(self, opener: Callable[[], Awaitable[UpstreamAnswer]]) -> UpstreamAnswer:
        """``opener()``'s answer; the source that gave it served: its back-offs start over."""
        answer = await opener()
        self.busy.answered(answer.source.key)
        return answer

    @staticmethod
    def _share(metrics: Metrics, group: str, key: TargetKey, size: int, seconds: float) -> None:
        metrics.count_refresh_share(group, key.target, size, seconds, discovered=key.discovered)

    def _source_failed(self, group: str, origin: ByteSource) -> Callable[[], None] | None:
        """What counts a failed source of the index (not the bucket, not a replica)."""
        if self.metrics is None or origin != "upstream":
            return None
        return partial(self.metrics.count_source_failure, group)

    def _archive_rejected(self, name: str, key: TargetKey, reason: str) -> None:
        """A refresh's archive from ``key`` failed its check: not used for it a while
        (counted once per copy, not here: :attr:`StreamJob.copy_rejected`)."""
        hold = self.config().reject_for
        self.rejections.reject(key, name, reason, now=self.index.clock(), hold=hold)

    def asking(self, group: str, origin: ByteSource, key: TargetKey) -> TargetGroup:
        """The group to ask ``key`` (a source from ``origin``) with, as the config has it now:
        a refresh outlives the reload that changed or removed the credentials it started
        with, and later requests (a resume, another source's piece) carry the new ones, to a
        source the config still has (docs/configuration.md: credentials go to the group's
        configured sources only). UpstreamError once a reload removed the group, or a source
        of the index that it no longer lists (a reload removed it, or left it behind):
        :func:`~tracker.proxy.upstream.group_asking`."""
        # the bucket and the replicas are no sources of the index: never unlisted
        listed = origin != "upstream" or self.index.lists(key)
        return group_asking(self.config(), group, listed)

    async def _reopen(
        self, group: str, origin: ByteSource, first: UpstreamAnswer, offset: int, size: int
    ) -> UpstreamAnswer:
        """Resume a refresh: the rest of the file, from the source that sent the start, with
        the group's credentials of now (:meth:`asking`)."""
        try:
            now = self.asking(group, origin, first.source.key)
        except UpstreamError as exc:
            raise UpstreamError(f"cannot resume: {exc}") from exc
        asking = partial(self.asking, group, origin)
        return await resume_upstream(self._clients, now, first, offset, size, asking)


async def _refuse(reason: str) -> UpstreamAnswer:
    """The opener of a file every source of which is held back: 502 with the reason."""
    raise UpstreamError(reason)


def early_answer(size: int, body: Body) -> Answer:
    """An early head: 200 with the index's size and no validator (none is known yet)."""
    headers = {"content-length": str(size), "content-type": "application/octet-stream"}
    return Answer(200, headers, body)


def head_answer(head: Head) -> Answer:
    """The answer of a pump's Head: exactly its headers, its body."""
    return Answer(head.status, dict(head.headers), head.body if head.body is not None else b"")
