"""The executors of the refresh decisions: start a refresh, join one, read it.

:class:`~tracker.proxy.decisions.StartShared`, :class:`~tracker.proxy.decisions.OwnRefresh` and a
prefetch start a *detached* refresh (:func:`tracker.proxy.bytepaths.fill` in the transfers
nursery: it writes the temp file at the upstream's pace and may outlive its client);
:class:`~tracker.proxy.decisions.JoinShared` and :class:`~tracker.proxy.decisions.JoinBehind` read
one that runs. Every client reads the growing temp file (:mod:`tracker.proxy.sharing`), so
no byte of a refresh passes through Python: the upstream bytes go into the temp file by
splice (:meth:`tracker.proxy.resume.UpstreamBody.into`) and out by sendfile (a refresh that
received, wrote and sent every byte itself filled its cache at ~0.65x nginx
``proxy_cache``; bench: refresh). A client whose refresh has not opened within
``early_head_after`` gets an early head of the index's size (docs/http-api.md, "Archive
answers").
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from tracker.cache.store import Cache
from tracker.config.schema import TargetGroup
from tracker.core.logs import log_event
from tracker.core.metrics import ByteSource
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError, UpstreamError
from tracker.files.answers import Answer
from tracker.files.bodies import Body
from tracker.objectstore.locks import Lock
from tracker.proxy import walk as walks
from tracker.proxy.ask import Ask
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.bytepaths import fill
from tracker.proxy.context import ProxyContext, Pump, Streams
from tracker.proxy.decisions import Asked, Claim, Start, StartPrefetch
from tracker.proxy.failover import head_due
from tracker.proxy.registry import RefreshRegistry, claimed_of
from tracker.proxy.sharing import LateBody, SharedRefresh, join
from tracker.proxy.streamjobs import early_answer, head_answer, text_answer
from tracker.proxy.transfers import Head, RefreshJob
from tracker.zerocopy.connection import Connection

log = logging.getLogger("tracker.streamer")

Started = SharedRefresh | Answer | None
#: What a refresh's own stream asks its sources: the whole file.
WHOLE_FILE = Ask(Asked("GET"), {})


@attrs.frozen
class RefreshStart:
    """What a detached refresh of one file is started with: the walk's decision (``step``:
    whether it outlives its last reader, is registered for other readers, its early head,
    whether a client waits for it, what its bytes count as) and the bucket's ``lock`` of
    the file, when it was got (the refresh is then uploaded, which releases it)."""

    group: TargetGroup
    cache: Cache
    archive: ArchiveName
    step: Start
    lock: Lock | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cache.root, self.group.group, self.archive.file_name)


@attrs.define(eq=False)
class Refreshes:
    """Starts, joins and reads the disk cache's refreshes; see the module doc."""

    _context: ProxyContext
    _launcher: Streams
    _registry: RefreshRegistry
    _objects: ObjectPath | None

    async def join_shared(self, shared: SharedRefresh, ask: Ask) -> Answer | None:
        """:class:`~tracker.proxy.decisions.JoinShared`: read the running refresh (counted as a
        shared reader); None when it ended unread."""
        return self._counted(await self.read(shared, ask))

    async def join_behind(self, shared: SharedRefresh, ask: Ask) -> Answer | None:
        """:class:`~tracker.proxy.decisions.JoinBehind`: a ``Range`` GET read from a background
        refresh's temp file (the range's first byte is written); None when it ended."""
        return self._counted(await join(shared, "GET", ask.asked.range))

    def _counted(self, answer: Answer | None) -> Answer | None:
        """``answer`` of a shared reader, counted as one when there is one."""
        metrics = self._context.metrics
        if answer is not None and metrics is not None:
            metrics.count_shared_reader()
        return answer

    async def start_and_read(
        self, start: RefreshStart, ask: Ask
    ) -> tuple[Answer | None, SharedRefresh | None]:
        """:class:`~tracker.proxy.decisions.StartShared` and
        :class:`~tracker.proxy.decisions.OwnRefresh`: start the refresh, with the early head
        the walk decided on, and read it. The answer (None: a refresh of the file runs
        already, or the one started ended unread), and the refresh read when one was."""
        if start.step.early:
            started = await self._start_early(start, start.step.early, ask.connection)
        else:
            started = await self.start(start)
        if not isinstance(started, SharedRefresh):
            return started, None  # None (a refresh runs), 502/503, uncached, early
        return await self.read(started, ask, start.step.origin), started

    async def read(
        self, shared: SharedRefresh, ask: Ask, origin: ByteSource = "cache"
    ) -> Answer | None:
        """``ask`` answered from the temp file of ``shared``; None when it cannot be (the
        walk then asks whether it was promoted meanwhile). Its bytes count as ``origin``'s."""
        return await join(
            shared,
            ask.method,
            ask.asked.range,
            events=self._launcher.reader_events(origin),
            connection=ask.connection,
        )

    async def start(self, start: RefreshStart) -> Started:
        """Begin a detached refresh (see :class:`RefreshStart`); once it is open, the
        SharedRefresh.

        None when a refresh of the file already runs, or (no client waits) it could not open.
        For a client, an Answer when the upstream failed (502/503) or the refresh could
        not open (no room): the client is then streamed uncached.
        """
        begun = self._begin(start)
        if begun is None:
            return None
        return await self._open(begun[0], begun[1], client=start.step.client)

    async def prefetch(self, group: TargetGroup, cache: Cache, archive: ArchiveName) -> bool:
        """Perform the walk of :func:`tracker.proxy.walk.prefetch_walk`: refresh ``archive``
        with no client when it decides so; whether it was promoted (see
        :meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`)."""
        launcher, name = self._launcher, archive.file_name
        key = (cache.root, group.group, name)
        walk, step = walks.next_step(walks.prefetch_walk(bucket=self._objects is not None))
        lock = None
        while step is not None:
            reply: walks.Reply = None
            match step:
                case walks.NeedFound():
                    best = launcher.is_best(group.group, name)
                    found = self._context.index.find_file(group.group, name) if best else []
                    cached = bool(found) and _cached(cache, group.group, name)
                    reply = walks.Prefetching(best, found, cached)
                case walks.NeedInBucket() if self._objects is not None:
                    reply = await self._objects.tier.lookup(group.group, name) is not None
                case Claim():
                    claimed = await self._registry.claim(key)
                    lock = claimed if isinstance(claimed, Lock) else None
                    reply = claimed_of(claimed)
                case StartPrefetch(locked=locked):
                    start = RefreshStart(group, cache, archive, step, lock if locked else None)
                    return await self._prefetch(start)
                case _:
                    raise AssertionError(f"not a step of a prefetch: {step!r}")
            walk, step = walks.next_step(walk, reply)
        return False

    async def _prefetch(self, start: RefreshStart) -> bool:
        started = await self.start(start)
        if not isinstance(started, SharedRefresh):
            return False
        return await _prefetched(started, start.cache, start.group.group, start.archive.file_name)

    async def _start_early(
        self, start: RefreshStart, size: int, connection: Connection | None
    ) -> Started:
        """:meth:`start` for a client that is sent an early head (README.md#clients) when the
        refresh has not opened within ``early_head_after`` of asking a source (not while it
        waits in a source's queue): the start goes on in the
        background, and the early head's body follows the refresh once it is open (or
        breaks when it never does). A fast start answers as :meth:`start` does."""
        begun = self._begin(start)
        if begun is None:
            return None
        done = trio.Event()
        outcome: list[Started] = []

        async def opening() -> None:
            try:
                outcome.append(await self._open(begun[0], begun[1], client=True))
            except Exception:  # a bug must not take the transfers nursery down
                log_event(
                    log, "error", "stream_failed", file=start.archive.file_name, exc_info=True
                )
                outcome.append(None)
            finally:
                done.set()

        if not self._context.transfers.spawn(opening):
            begun[0].fail()
            begun[0].refresh.abort()
            return text_answer(503, "the tracker is stopping")
        async with trio.open_nursery() as nursery:

            async def head_is_due() -> None:
                # Not while the refresh waits in a source's queue ("Source limits").
                await head_due(begun[2], self._context.settings().early_head_after)
                nursery.cancel_scope.cancel()

            nursery.start_soon(head_is_due)
            await done.wait()
            nursery.cancel_scope.cancel()
        if done.is_set():
            return outcome[0]

        async def resolve() -> Body:
            await done.wait()
            return await self._follow(outcome[0], size, start.step.origin, connection)

        return early_answer(size, LateBody(resolve))

    async def _follow(
        self, started: Started, size: int, origin: ByteSource, connection: Connection | None
    ) -> Body:
        """The body that follows an early head of ``size`` bytes: the shared refresh's, or
        the uncached stream's when the refresh could not open; UpstreamError otherwise."""
        if isinstance(started, SharedRefresh):
            events = self._launcher.reader_events(origin)
            response = await join(started, "GET", None, events=events, connection=connection)
        else:
            response = started
        if response is None:
            raise UpstreamError("the cache refresh this download followed ended")
        length = response.headers.get("content-length")
        if response.status != 200 or length != str(size) or not isinstance(response.body, Body):
            raise UpstreamError(f"the source answered {response.status} after an early head")
        return response.body

    def _begin(self, start: RefreshStart) -> tuple[SharedRefresh, Pump, trio.Event | None] | None:
        """Claim the refresh of the file and, when ``start.step`` says so, register it for
        readers, synchronously (a request arriving next finds it); its pump, still to start,
        and the event set once it asks a source (``StreamJob.slotted``).
        None: one runs. Unregistered, only its starter reads it (``cache_share_inflight``
        off). With the bucket's lock, the refresh's file is also uploaded to the bucket
        (:meth:`tracker.proxy.bucketcopies.ObjectPath.upload`, which releases the lock).
        """
        launcher, transfers = self._launcher, self._context.transfers
        group, name, lock = start.group.group, start.archive.file_name, start.lock
        refresh = start.cache.begin_refresh(group, name)
        if refresh is None or (lock is not None and not transfers.accepting):
            if refresh is not None:
                refresh.abort()
            if lock is not None:
                transfers.spawn(lock.release)
            return None
        found = self._context.index.find_file(group, name)
        job = launcher.job(start.group, WHOLE_FILE, start.archive, found)
        cache_job = RefreshJob(refresh, partial(launcher.is_best, group, name))
        shared = SharedRefresh(refresh, cache_job.stop, keep=start.step.keep)
        self._registry.add(start.key, shared, register=start.step.register)
        if lock is not None and self._objects is not None:
            transfers.spawn(self._objects.upload, shared, lock, group, name)
        return shared, partial(fill, job, cache_job, fallback=start.step.client), job.slotted

    async def _open(self, shared: SharedRefresh, pump: Pump, *, client: bool) -> Started:
        """Start a begun refresh's pump; see :meth:`start` for what it returns."""
        try:
            head = await self._launcher.start(pump, refresh=shared.refresh, client=client)
        except BaseException:
            shared.fail()
            raise
        if isinstance(head, Head) and head.refresh is not None:
            shared.announce(head.headers)
            return shared
        shared.fail()
        if not client:
            return None
        if isinstance(head, Answer):
            return head
        self._launcher.count("proxy")  # the refresh could not open (no room): streamed uncached
        return head_answer(head)


async def _prefetched(started: SharedRefresh, cache: Cache, group: str, name: str) -> bool:
    """Wait for a prefetch's refresh to end; whether it was promoted. Cancelled (the service
    stopping), it stops the refresh unless clients read it."""
    log_event(log, "info", "cache_prefetch_started", group=group, file=name)
    refresh = started.refresh
    try:
        await refresh.ended.wait()
    except BaseException:
        if started.readers == 0:
            started.fail()
            started.stop.cancel()  # nobody waits for this refresh
        raise
    return refresh.verified and not refresh.failed and _cached(cache, group, name)


def _cached(cache: Cache, group: str, name: str) -> bool:
    try:
        return cache.lookup(group, name) is not None
    except RequestError:
        return True  # a name or group that cannot be cached: nothing to prefetch
