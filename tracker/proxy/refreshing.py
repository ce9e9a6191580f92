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
``early_head_after`` gets the early head its decision carries (docs/http-api.md, "Archive
answers"): the executors perform what the decision says, they do not decide.

:class:`RefreshRegistry` is where requests find the refreshes this replica runs, and the
bucket's locks it asks for. A refresh is *followed* from its start to its end (the status
page lists its readers) and, when it is shared (``cache_share_inflight``, the bucket, a
prefetch), also *registered*: requests of its file find it (:meth:`RefreshRegistry.running`)
and join it rather than asking the source again. Registering happens synchronously with the
start, so a request arriving next finds it. While a request asks the bucket for a file's
lock, others of that file wait (:meth:`RefreshRegistry.settled`): the lock decides who
refreshes.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from tracker.cache.store import Cache
from tracker.config.schema import TargetGroup
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError, UpstreamError
from tracker.objectstore.locks import Holder, Lock
from tracker.observability.logs import log_event
from tracker.observability.metrics import ByteSource
from tracker.proxy import walk as walks
from tracker.proxy.ask import Ask, Wanted
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.bytepaths import fill
from tracker.proxy.decisions import Asked, Claim, Claimed, Running, Start, StartPrefetch
from tracker.proxy.failover import head_due
from tracker.proxy.sharing import LateBody, SharedRefresh, join
from tracker.proxy.streamjobs import (
    Launcher,
    ProxyContext,
    Pump,
    early_answer,
    head_answer,
    text_answer,
)
from tracker.proxy.transfers import Head
from tracker.serving.httpanswer import Answer
from tracker.serving.responsebodies import Body
from tracker.zerocopy.connection import Connection

log = logging.getLogger("tracker.streamer")

Started = SharedRefresh | Answer | None
#: What a refresh's own stream asks its sources: the whole file.
WHOLE_FILE = Ask(Asked("GET"), {})


@attrs.define(eq=False)
class Refreshes:
    """Starts, joins and reads the disk cache's refreshes; see the module doc."""

    _context: ProxyContext
    _launcher: Launcher
    _objects: ObjectPath | None
    #: Where requests find the refreshes running here and the bucket's locks asked for.
    registry: RefreshRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.registry = RefreshRegistry(self._objects)

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
        self, wanted: Wanted, step: Start, lock: Lock | None, ask: Ask
    ) -> tuple[Answer | None, SharedRefresh | None]:
        """:class:`~tracker.proxy.decisions.StartShared` and
        :class:`~tracker.proxy.decisions.OwnRefresh`: start the refresh, with the early head
        the walk decided on, and read it. The answer (None: a refresh of the file runs
        already, or the one started ended unread), and the refresh read when one was."""
        if step.early:
            started = await self._start_early(wanted, step, lock, ask.connection)
        else:
            started = await self.start(wanted, step, lock)
        if not isinstance(started, SharedRefresh):
            return started, None  # None (a refresh runs), 502/503, uncached, early
        return await self.read(started, ask, step.origin), started

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

    async def start(self, wanted: Wanted, step: Start, lock: Lock | None) -> Started:
        """Begin a detached refresh of ``wanted`` as ``step`` says (kept to its end or not,
        registered or not, whether a client waits), under the bucket's ``lock`` when one
        was got (the refresh is then uploaded, which releases it); once it is open, the
        SharedRefresh.

        None when a refresh of the file already runs, or (no client waits) it could not open.
        For a client, an Answer when the upstream failed (502/503) or the refresh could
        not open (no room): the client is then streamed uncached.
        """
        begun = self._begin(wanted, step, lock)
        if begun is None:
            return None
        return await self._open(begun[0], begun[1], client=step.client)

    async def prefetch(self, group: TargetGroup, cache: Cache, archive: ArchiveName) -> bool:
        """Perform the walk of :func:`tracker.proxy.walk.prefetch_walk`: refresh ``archive``
        with no client when it decides so; whether it was promoted (see
        :meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`)."""
        launcher, name = self._launcher, archive.file_name
        wanted = Wanted(group, archive, [], cache)
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
                    claimed = await self.registry.claim(wanted.key)
                    lock = claimed if isinstance(claimed, Lock) else None
                    reply = claimed_of(claimed)
                case StartPrefetch(locked=locked):
                    started = await self.start(wanted, step, lock if locked else None)
                    if not isinstance(started, SharedRefresh):
                        return False
                    return await _prefetched(started, cache, group.group, name)
                case _:
                    raise AssertionError(f"not a step of a prefetch: {step!r}")
            walk, step = walks.next_step(walk, reply)
        return False

    async def _start_early(
        self, wanted: Wanted, step: Start, lock: Lock | None, connection: Connection | None
    ) -> Started:
        """:meth:`start` for a client that is sent an early head (README.md#clients) when the
        refresh has not opened within ``early_head_after`` of asking a source (not while it
        waits in a source's queue): the start goes on in the
        background, and the early head's body follows the refresh once it is open (or
        breaks when it never does). A fast start answers as :meth:`start` does."""
        begun = self._begin(wanted, step, lock)
        if begun is None:
            return None
        done = trio.Event()
        outcome: list[Started] = []

        async def opening() -> None:
            try:
                outcome.append(await self._open(begun[0], begun[1], client=True))
            except Exception:  # a bug must not take the transfers nursery down
                log_event(log, "error", "stream_failed", file=wanted.name, exc_info=True)
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
                await head_due(begun[2], self._context.settings.early_head_after)
                nursery.cancel_scope.cancel()

            nursery.start_soon(head_is_due)
            await done.wait()
            nursery.cancel_scope.cancel()
        if done.is_set():
            return outcome[0]

        async def resolve() -> Body:
            await done.wait()
            return await self._follow(outcome[0], step.early, step.origin, connection)

        return early_answer(step.early, LateBody(resolve))

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

    def _begin(
        self, wanted: Wanted, step: Start, lock: Lock | None
    ) -> tuple[SharedRefresh, Pump, trio.Event | None] | None:
        """Claim the refresh of the file and, when ``step`` says so, register it for
        readers, synchronously (a request arriving next finds it); its pump, still to start,
        and the event set once it asks a source (``StreamJob.slotted``).
        None: one runs. Unregistered, only its starter reads it (``cache_share_inflight``
        off). With the bucket's lock, the refresh's file is also uploaded to the bucket
        (:meth:`tracker.proxy.bucketcopies.ObjectPath.upload`, which releases the lock).
        """
        launcher, transfers = self._launcher, self._context.transfers
        group, name, cache = wanted.group.group, wanted.name, wanted.cache
        assert cache is not None  # the walk starts refreshes only with a cache
        refresh = cache.begin_refresh(group, name)
        if refresh is None or (lock is not None and not transfers.accepting):
            if refresh is not None:
                refresh.abort()
            if lock is not None:
                transfers.spawn(lock.release)
            return None
        found = self._context.index.find_file(group, name)
        job = launcher.job(wanted.group, WHOLE_FILE, wanted.archive, found)
        job = attrs.evolve(
            job, refresh=refresh, still_wanted=partial(launcher.is_best, group, name)
        )
        shared = SharedRefresh(refresh, job.stop, keep=step.keep)
        self.registry.add(wanted.key, shared, register=step.register)
        if lock is not None and self._objects is not None:
            transfers.spawn(self._objects.upload, shared, lock, group, name)
        return shared, partial(fill, job, fallback=step.client), job.slotted

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


#: A refresh's key: cache root, group, file name.
SharedKey = tuple[str, str, str]


class RefreshRegistry:
    """The refreshes running, by file; see the module doc."""

    def __init__(self, objects: ObjectPath | None) -> None:
        self._objects = objects
        #: Registered refreshes: requests of their file join them.
        self._shared: dict[SharedKey, SharedRefresh] = {}
        #: Every refresh running, registered or not: who reads it (status page).
        self._followed: dict[SharedKey, SharedRefresh] = {}
        #: Files whose bucket lock this replica is asking for (a second request waits).
        self._claiming: dict[SharedKey, trio.Event] = {}

    def add(self, key: SharedKey, shared: SharedRefresh, *, register: bool) -> None:
        """A refresh began: followed, and with ``register`` found by requests of its file."""
        self.forget_ended()  # a few at a time: the names change with every snapshot
        self._followed[key] = shared
        if register:
            self._shared[key] = shared

    def running(self, key: SharedKey) -> SharedRefresh | None:
        """The registered refresh of a file still running (ended ones are dropped)."""
        for ended in [k for k, s in self._shared.items() if s.refresh.ended.is_set()]:
            del self._shared[ended]
        return self._shared.get(key)

    def followed(self, key: SharedKey) -> SharedRefresh | None:
        """The refresh of a file, registered or not (call :meth:`forget_ended` first to
        leave out those that ended)."""
        return self._followed.get(key)

    def forget_ended(self) -> None:
        for key in [k for k, s in self._followed.items() if s.refresh.ended.is_set()]:
            del self._followed[key]

    async def settled(self, key: SharedKey) -> None:
        """Return once no request here is asking for the bucket's lock of the file."""
        while (claiming := self._claiming.get(key)) is not None:
            await claiming.wait()

    async def claim(self, key: SharedKey) -> Lock | Holder | None:
        """The bucket's lock of a file about to be refreshed here (None: no bucket, or it
        cannot be used), or its live holder. Other requests for the file wait meanwhile."""
        if self._objects is None:
            return None
        self._claiming[key] = done = trio.Event()
        try:
            return await self._objects.claim(key[1], key[2])
        finally:
            del self._claiming[key]
            done.set()


def progress(shared: SharedRefresh | None) -> Running | None:
    """What the walk knows of a registered refresh: its size and the bytes written."""
    if shared is None:
        return None
    return Running(size=shared.refresh.size, written=shared.refresh.written)


def claimed_of(claim: Lock | Holder | None) -> Claimed:
    """What asking the bucket for a file's lock gave, as the walk knows it."""
    if isinstance(claim, Holder):
        return Claimed.HOLDER
    return Claimed.NONE if claim is None else Claimed.LOCK
