"""Accounting around every archive download: one log line at its end, the active-streams
gauge, and the download slots that keep descriptors for everything else.

Wraps the body of an archive response whatever produced it (a local file, the cache, the
proxy, a shared refresh), so that this is written once for every byte path.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from tracker.errors import ClientGone, RequestError
from tracker.observability.folding import bulk, log_folded
from tracker.observability.metrics import Metrics
from tracker.serving.httpanswer import Answer
from tracker.serving.responsebodies import Body, BytesBody, WrappedBody
from tracker.zerocopy.limit import fair_share

if TYPE_CHECKING:
    from tracker.zerocopy.connection import Connection

log = logging.getLogger("tracker.download")


def _never() -> bool:
    return False


def outcome_of(
    sent: int,
    expected: int | None,
    error: BaseException | None,
    *,
    cut: Callable[[], bool] = _never,
) -> str:
    """``complete``, ``client_gone`` (cancelled, or the body closed by the server: the
    client went away), ``shutdown`` (cut
    by the tracker: its grace period after SIGTERM ended, ``cut()``) or ``error``. ``cut``
    is asked of an answer that ended with an error only (who ended a complete one is no
    question): past the grace period the tracker ends what is still sent, the upstream
    connections of relays too, so any error then is its doing."""
    if error is None:
        return "complete" if expected is None or sent == expected else "error"
    if cut():
        return "shutdown"
    gone = (trio.Cancelled, ClientGone, GeneratorExit)
    return "client_gone" if isinstance(error, gone) else "error"


#: Seconds a download's client may take nothing before its slot can go to a new download
#: when all are taken. Only then: a client pausing while slots are free keeps its download.
RECLAIM_AFTER = 10.0


class SlotHolder(Protocol):
    """What holds a slot: a client connection that can tell how long its client has taken
    nothing, and be given up on (tracker.zerocopy.connection.Connection)."""

    @property
    def client(self) -> str | None:
        """The client the connection counts for (its address; None: not known)."""

    def stalled(self) -> float:
        """Seconds the client has taken no byte while its download waited for it."""

    def reclaim(self) -> None:
        """Give up on the client: its download ends as the client's failure, its connection
        with it."""


def reclaimable(stalls: Mapping[int, float], after: float) -> int | None:
    """The slot (key of ``stalls``, each the seconds its client has taken nothing) to give
    to a new download when all are taken: the longest stalled, if at least ``after``."""
    longest = max(stalls, key=lambda key: stalls[key], default=None)
    if longest is None or stalls[longest] < after:
        return None
    return longest


class DownloadSlots:
    """Archive answers being prepared or sent at once: at most ``limit`` (None: no limit).

    Each holds descriptors besides its client connection (tracker/zerocopy/limit.py); past
    the limit a request is refused at once (:meth:`take` raises RequestError 503), so that
    the descriptors left keep the API, ``/metrics`` and the scans working however many
    clients download (or stall) at once. A client that has taken nothing for
    ``reclaim_after`` seconds does not keep its slot from a new download: when all are
    taken, the longest stalled one is given up on and its slot goes to the new one. When
    none stalled that long, the client holding the most slots gives one up to a client
    holding at least two fewer (:func:`tracker.zerocopy.limit.fair_share`): one machine
    reading slowly over every slot does not lock the others out.
    """

    def __init__(self, limit: int | None = None, *, reclaim_after: float = RECLAIM_AFTER) -> None:
        self.limit = limit
        self.reclaim_after = reclaim_after
        self.refused = 0
        self.reclaimed = 0
        #: Slots taken from the client holding the most for another client (fair_share).
        self.shared = 0
        #: The slots taken, and what holds each (None: nothing to reclaim it from).
        self._held: dict[int, SlotHolder | None] = {}
        self._tokens = itertools.count()
        # A slot may be released by the garbage collector, in whichever thread drops it.
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        """Slots taken now."""
        return len(self._held)

    def take(self, holder: SlotHolder | None = None) -> DownloadSlot:
        """A slot for one answer held by ``holder``; when all are taken, the slot of a
        stalled client or of the client holding the most (see the class doc);
        RequestError(503) when there is none."""
        victim: SlotHolder | None = None
        with self._lock:
            if self.limit is not None and len(self._held) >= self.limit:
                victim = self._reclaim_one()
                if victim is None:
                    victim = self._share_one(holder)
                if victim is None:
                    self.refused += 1
                    raise RequestError(503, f"too many downloads at once ({self.limit}), try again")
            token = next(self._tokens)
            self._held[token] = holder
        if victim is not None:
            victim.reclaim()
        return DownloadSlot(self, token)

    def _reclaim_one(self) -> SlotHolder | None:
        """Uncount the slot of the longest stalled client (see :func:`reclaimable`)."""
        stalls = {key: h.stalled() for key, h in self._held.items() if h is not None}
        key = reclaimable(stalls, self.reclaim_after)
        if key is None:
            return None
        self.reclaimed += 1
        return self._held.pop(key)

    def _share_one(self, holder: SlotHolder | None) -> SlotHolder | None:
        """Uncount a slot of the client holding the most, when :func:`fair_share` says it
        gives one up to ``holder``'s client: its longest stalled, else its newest."""
        held = {key: h for key, h in self._held.items() if h is not None}
        newcomer = holder.client if holder is not None else None
        client = fair_share((h.client for h in held.values()), newcomer)
        if client is None:
            return None
        stalls = {key: h.stalled() for key, h in held.items() if h.client == client}
        self.shared += 1
        return self._held.pop(max(stalls, key=lambda key: (stalls[key], key)))

    def give_back(self, token: int) -> None:
        """Slot ``token`` is free again (called once per slot, by :class:`DownloadSlot`; nothing for
        a slot that was reclaimed)."""
        with self._lock:
            self._held.pop(token, None)


class DownloadSlot:
    """One taken :class:`DownloadSlots` slot: released once, by :meth:`release` or when the
    slot is collected (an answer dropped before its body started,
    docs/architecture.md#traps-of-the-stack, 4)."""

    def __init__(self, slots: DownloadSlots, token: int) -> None:
        self._finalizer = weakref.finalize(self, slots.give_back, token)

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        self._finalizer()


class DownloadBody(WrappedBody):
    """Counts the stream as active while it is sent and logs one ``download`` event at its end;
    holds its download slot (if any) until then."""

    def __init__(
        self,
        inner: Body,
        fields: dict[str, Any],
        expected: int | None,
        metrics: Metrics | None,
        slot: DownloadSlot | None = None,
        *,
        connection: Connection | None = None,
        cut: Callable[[], bool] = _never,
    ) -> None:
        super().__init__(inner)
        self._fields = fields
        self._expected = expected
        self._metrics = metrics
        self._slot = slot
        #: The client's connection when it takes zero-copy pieces: a piece cut short never
        #: comes back through the body, the connection counts what went of it.
        self._connection = connection
        #: Whether the tracker itself is ending what is still sent (its grace ended).
        self._cut = cut
        self._sent = 0
        self._began = time.monotonic()

    async def _start(self) -> None:
        self._began = time.monotonic()
        await super()._start()
        if self._metrics is not None:
            self._metrics.active_streams.inc()

    def _passed(self, size: int) -> None:
        # a zero-copy piece cut short may come back as if it had gone whole (the server
        # kept its failure to itself): what went of it, never its size; nor a plain chunk
        # whose send failed (the connection broke: nothing more reaches the client)
        connection = self._connection
        if connection is None:
            self._sent += size
            return
        cut = connection.take_cut()
        if cut is not None:
            self._sent += cut
        elif not connection.broken:
            self._sent += size

    async def _finish(self, error: BaseException | None) -> None:
        try:
            await super()._finish(error)
        finally:
            if self._slot is not None:
                self._slot.release()
            if self._metrics is not None and self._inner_chunks is not None:
                self._metrics.active_streams.dec()
            if error is not None and self._connection is not None:
                self._sent += self._connection.take_cut() or 0
            if error is None and self._connection is not None and self._connection.broken:
                # a plain send (an answer's last bytes, a relay's chunk through Python)
                # failed and the server kept it to itself: the body ran to its end, but the
                # client did not get it (tracker/zerocopy/README.md, assumption 10)
                error = ClientGone("client connection closed during the answer")
            outcome = outcome_of(self._sent, self._expected, error, cut=self._cut)
            seconds = round(time.monotonic() - self._began, 3)
            level = "info" if outcome != "error" else "warning"
            # A client makes one with each request, however small: past a rate the small
            # ones are folded (docs/http-api.md, "Connections"), a real transfer's stays.
            log_folded(
                log,
                level,
                "download",
                unfolded=bulk(self._sent),
                **self._fields,
                bytes=self._sent,
                seconds=seconds,
                outcome=outcome,
            )


def account_download(
    answer: Answer,
    method: str,
    metrics: Metrics | None,
    slot: DownloadSlot | None = None,
    *,
    connection: Connection | None = None,
    cut: Callable[[], bool] = _never,
    **fields: Any,
) -> None:
    """Make ``answer`` to a ``method`` request count and log its download (GET answers with
    a body only); its ``slot`` is released when the body ends, or at once when there is
    none to send. ``connection``: the client's, when it takes zero-copy pieces (the bytes
    of one cut short are counted); ``cut``: whether the tracker is ending what is still
    sent (its shutdown grace ended: the outcome is ``shutdown``)."""
    if method != "GET" or answer.status not in (200, 206):
        if slot is not None:
            slot.release()
        return
    fields = {"status": answer.status, **fields}
    length = answer.headers.get("content-length")
    expected = int(length) if length is not None and length.isdigit() else None
    body = answer.body if isinstance(answer.body, Body) else BytesBody(answer.body)
    answer.body = DownloadBody(
        body, fields, expected, metrics, slot, connection=connection, cut=cut
    )
