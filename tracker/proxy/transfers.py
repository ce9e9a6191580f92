"""Byte transfers of proxy mode: the nursery pumps run in, and what a pump is given.

Each proxied response is moved by a *pump* (:mod:`tracker.proxy.bytepaths`), started with
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
tunables, the metrics callbacks, and for a pump that fills the cache its refresh).
:func:`plan_head` turns an upstream answer into the client's status and headers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.errors import UpstreamError
from tracker.multisource.contentrange import parse_content_range
from tracker.observability.logs import log_event
from tracker.ordering.flowing import Flowing
from tracker.ordering.index import TargetKey
from tracker.proxy.manysources import Peers
from tracker.proxy.resume import Reopen
from tracker.proxy.upstream import ProxySettings, UpstreamAnswer, client_response_headers
from tracker.serving.fileresponse import ChunkBudget
from tracker.zerocopy.connection import Connection

log = logging.getLogger("tracker.transfers")

#: Seconds before the end of the grace period from which an answer cut short counts as
#: cut by the tracker (:meth:`Transfers.cut`).
CUT_MARGIN = 0.25

RefreshOutcome = Literal["refresh_ok", "refresh_failed", "refresh_no_space", "refresh_rejected"]


def _nothing(*_args: object) -> None:
    return None


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
                nursery.cancel_scope.deadline = trio.current_time() + self._grace
        finally:
            self._nursery = self._background = None

    def close(self, grace: float) -> None:
        """Refuse new transfers; running ones get ``grace`` seconds to finish, background
        tasks (:meth:`spawn`) are cancelled at once."""
        self._grace = grace
        self._cut_at = trio.current_time() + grace
        self._stop.set()
        if self._background is not None:
            self._background.cancel_scope.cancel()

    def cut(self) -> bool:
        """True once the grace period after :meth:`close` ended: what is still being sent
        then is ended by the tracker, not by its client. The listeners' graceful timeout
        starts when the stop is asked, a moment before this one: CUT_MARGIN covers that."""
        return self._cut_at is not None and trio.current_time() >= self._cut_at - CUT_MARGIN

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
class StreamJob:
    """Everything any pump needs.

    ``open`` asks the sources (raising UpstreamError when none answers); ``known_size`` is
    the index's size of the file (0: unknown), used when a 200 comes without a length;
    ``reopen`` resumes a refresh's broken upstream body (see :mod:`tracker.proxy.resume`);
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
    #: A pump that fills the cache (:func:`tracker.proxy.bytepaths.fill`): the refresh whose
    #: temp file it writes (None for any other pump).
    refresh: Refresh | None = None
    #: Asked once the refresh is complete: a file that stopped being its group's best
    #: meanwhile is not promoted.
    still_wanted: Callable[[], bool] = lambda: True
    #: Cancelled by the refresh's owner when nobody needs it any more (its readers left, and
    #: it is not to be kept).
    stop: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: The other sources a refresh may take pieces from beside its first
    #: (:mod:`tracker.proxy.manysources`; None: its first source alone).
    peers: Peers | None = None
    # What the pump reports through (metrics): all synchronous and cheap.
    upstream_bytes: Callable[[int], None] = _nothing
    client_bytes: Callable[[int], None] = _nothing
    refresh_outcome: Callable[[RefreshOutcome], None] = _nothing
    refresh_resumed: Callable[[], None] = _nothing
    #: ``(source key, body bytes, seconds)`` of each source of a refresh from several
    #: sources, once it ended (its share: metrics).
    refresh_share: Callable[[TargetKey, int, float], None] = _nothing
    #: ``(source key, body bytes, seconds)`` when a pump is done with a source.
    source_transfer: Callable[[TargetKey, int, float], None] = _nothing
    #: ``(source key, reason)`` when a refresh's archive from that source failed its check.
    archive_rejected: Callable[[TargetKey, str], None] = _nothing
    #: Where a pump registers the upstream it reads while bytes come (None: not a source of
    #: the index, e.g. the bucket or a replica).
    flowing: Flowing | None = None


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
    stated = parse_content_range(value)
    return None if stated is None else stated.length
