"""Starting a stream: the job a pump is given for a file, and the pump started in the
nursery.

Every decision of :mod:`tracker.proxy.decisions` that moves bytes from a source (the upstream, the
bucket, a holder replica) ends here: :meth:`Launcher.job` gathers what a pump needs (the
sources :func:`tracker.proxy.decisions.choose_sources` keeps, the metrics callbacks of the
source's kind, how a refresh resumes) and :meth:`Launcher.start` starts the pump
(:mod:`tracker.proxy.bytepaths`) in the transfers nursery: its
:class:`~tracker.proxy.transfers.Head`, or the 502/503 answer when it could not start.
:func:`head_answer`, :func:`text_answer` and :func:`early_answer` turn those into answers
(:class:`~tracker.serving.httpanswer.Answer`, framework-free).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.config.schema import Config, TargetGroup
from tracker.core.snapshots import ArchiveName
from tracker.errors import SourcesBusy, UpstreamError
from tracker.observability.logs import log_event
from tracker.observability.metrics import ByteSource, Kind, Metrics, Outcome
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.rejections import Rejections
from tracker.proxy.ask import Ask
from tracker.proxy.bytepaths import relay
from tracker.proxy.decisions import Found, choose_sources
from tracker.proxy.failover import open_upstream
from tracker.proxy.manysources import Peers, SourcesUsed
from tracker.proxy.resume import resume_upstream
from tracker.proxy.transfers import Head, StreamJob, Transfers
from tracker.proxy.upstream import DownloadClients, ProxySettings, UpstreamAnswer
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.httpanswer import Answer, text_answer
from tracker.serving.responsebodies import Body

log = logging.getLogger("tracker.streamer")

#: Transfers smaller than this say little about a source's throughput and are not counted.
MIN_MEASURED_BYTES = 1024 * 1024
#: A byte path of tracker/proxy/bytepaths.py with its job, ready to start.
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
        )
        if refusal:
            opener = partial(_refuse, refusal)
        job = StreamJob(
            open=opener,
            method=method,
            known_size=size,
            settings=self.settings,
            reopen=partial(self._reopen, group),
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
            ),
        )
        return self._reported(job, group.group, archive, origin)

    async def start(
        self, pump: Pump, *, refresh: Refresh | None = None, client: bool = True, failed: str = ""
    ) -> Head | Answer:
        """Start ``pump`` (a byte path of tracker/proxy/bytepaths.py with its job); its Head, or
        the 502/503 answer when it could not start (counted as an archive request's outcome
        for a ``client``, not for a prefetch). ``refresh``: the cache refresh the pump was
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
            log_event(log, "warning", event, reason=str(exc))
            return text_answer(502, str(exc))
        return head

    async def relay(self, job: StreamJob) -> Answer:
        """A plain stream to one client, nothing cached."""
        head = await self.start(partial(relay, job))
        if isinstance(head, Answer):
            return head
        self.count("proxy")
        return head_answer(head)

    def is_best(self, group: str, name: str) -> bool:
        """True when ``name`` is the group's current best full or best incremental."""
        index = self.index
        best = (index.best_full(group), index.best_incremental(group))
        return any(s is not None and s.info.files[0].bare_name == name for s in best)

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
        rejected = partial(self._archive_rejected, group, archive.file_name)
        if metrics is None and origin == "upstream":
            flowing = self.transfers.flowing
            return attrs.evolve(
                job, source_transfer=self._measured, archive_rejected=rejected, flowing=flowing
            )
        if metrics is None:
            return attrs.evolve(job, archive_rejected=rejected)
        kind: Kind = "full" if archive.is_full else "incremental"
        if origin != "upstream":
            served = partial(metrics.add_served_bytes, origin)
            return attrs.evolve(job, client_bytes=served, archive_rejected=rejected)
        return attrs.evolve(
            job,
            upstream_bytes=partial(metrics.add_upstream_bytes, group, kind),
            client_bytes=partial(metrics.add_served_bytes, "upstream"),
            refresh_outcome=metrics.count_outcome,
            refresh_resumed=metrics.count_refresh_resume,
            refresh_share=partial(self._share, metrics, group),
            source_transfer=self._measured,
            archive_rejected=rejected,
            flowing=self.transfers.flowing,
        )

    def _measured(self, key: TargetKey, size: int, seconds: float) -> None:
        """A transfer from ``key`` ended: big enough ones rank its sources
        (docs/http-api.md#trust)."""
        if size >= MIN_MEASURED_BYTES:
            # What a real transfer achieved: it outweighs the speed tests (docs/ranking.md).
            self.index.record_transfer(key, size, seconds, kind="achieved")

    @staticmethod
    def _share(metrics: Metrics, group: str, key: TargetKey, size: int, seconds: float) -> None:
        metrics.count_refresh_share(group, key.target, size, seconds)

    def _source_failed(self, group: str, origin: ByteSource) -> Callable[[], None] | None:
        """What counts a failed source of the index (not the bucket, not a replica)."""
        if self.metrics is None or origin != "upstream":
            return None
        return partial(self.metrics.count_source_failure, group)

    def _archive_rejected(self, group: str, name: str, key: TargetKey, reason: str) -> None:
        """A refresh's archive from ``key`` failed its check: not used for it a while."""
        hold = self.config().reject_for
        self.rejections.reject(key, name, reason, now=self.index.clock(), hold=hold)
        if self.metrics is not None:
            self.metrics.count_archive_rejected(group)

    async def _reopen(
        self, group: TargetGroup, first: UpstreamAnswer, offset: int, size: int
    ) -> UpstreamAnswer:
        """Resume a refresh: the rest of the file, from the source that sent the start."""
        return await resume_upstream(self._clients, group, first, offset, size)


def _nothing(*_args: object) -> None:
    return None


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


__all__ = ["Launcher", "Pump", "early_answer", "head_answer", "text_answer"]
