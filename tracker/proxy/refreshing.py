"""The executors of the refresh decisions: start a refresh, join one, read it.

:class:`~tracker.proxy.plan.StartShared`, :class:`~tracker.proxy.plan.OwnRefresh` and a
prefetch start a *detached* refresh (:func:`tracker.proxy.pumps.fill` in the transfers
nursery: it writes the temp file at the upstream's pace and may outlive its client);
:class:`~tracker.proxy.plan.JoinShared` and :class:`~tracker.proxy.plan.JoinBehind` read
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
import quart
import trio
from quart.wrappers.response import ResponseBody

from tracker.cache.store import Cache
from tracker.core.config import TargetGroup
from tracker.core.logs import log_event
from tracker.core.metrics import ByteSource
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError, UpstreamError
from tracker.objectstore.locks import Holder, Lock
from tracker.proxy.launch import Launcher, Pump, early_answer, head_answer, text_answer
from tracker.proxy.objects import ObjectPath
from tracker.proxy.plan import Copy, prefetches
from tracker.proxy.pumps import fill
from tracker.proxy.registry import RefreshRegistry
from tracker.proxy.sharing import LateBody, SharedRefresh, join
from tracker.proxy.stored import StoredCopies, cache_path, copy_of
from tracker.proxy.transfers import Head, RefreshJob
from tracker.zerocopy.connection import Connection, zero_copy_connection

log = logging.getLogger("tracker.streamer")

Started = SharedRefresh | quart.Response | None


@attrs.frozen
class RefreshStart:
    """What a detached refresh of one file is started with.

    ``keep``: it outlives its last reader; ``client``: a client waits for it (it is then
    relayed uncached when the temp file cannot be opened); ``lock``: the bucket's lock of the
    file (the refresh is then uploaded, which releases it); ``register``: other requests may
    find and join it (``cache_share_inflight``, the bucket, prefetch); ``origin``: what the
    bytes its starting client reads count as (``served_bytes_total{source}``).
    """

    group: TargetGroup
    cache: Cache
    archive: ArchiveName
    keep: bool
    client: bool = True
    lock: Lock | None = None
    register: bool = True
    origin: ByteSource = "cache"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cache.root, self.group.group, self.archive.file_name)


class Refreshes:
    """Starts, joins and reads the disk cache's refreshes; see the module doc."""

    def __init__(
        self,
        launcher: Launcher,
        registry: RefreshRegistry,
        stored: StoredCopies,
        objects: ObjectPath | None,
    ) -> None:
        self._launcher = launcher
        self._registry = registry
        self._stored = stored
        self._objects = objects

    async def join_shared(
        self,
        shared: SharedRefresh,
        cache: Cache,
        request: quart.Request,
        group: str,
        archive: ArchiveName,
    ) -> quart.Response | None:
        """:class:`~tracker.proxy.plan.JoinShared`: read the running refresh (counted as a
        shared reader); None when it ended unread."""
        return self._counted(await self.read(shared, cache, request, group, archive))

    async def join_behind(
        self, shared: SharedRefresh, request: quart.Request
    ) -> quart.Response | None:
        """:class:`~tracker.proxy.plan.JoinBehind`: a ``Range`` GET read from a background
        refresh's temp file (the range's first byte is written); None when it ended."""
        return self._counted(await join(shared, "GET", request.headers.get("range")))

    def _counted(self, response: quart.Response | None) -> quart.Response | None:
        """``response`` of a shared reader, counted as one when there is one."""
        metrics = self._launcher.metrics
        if response is not None and metrics is not None:
            metrics.count_shared_reader()
        return response

    async def start_and_read(
        self, start: RefreshStart, request: quart.Request
    ) -> quart.Response | None:
        """:class:`~tracker.proxy.plan.StartShared` and :class:`~tracker.proxy.plan.OwnRefresh`:
        start the refresh, with an early head when the index knows the size, and read it.
        None: a refresh of the file runs already (the request is streamed uncached)."""
        size = self._launcher.index_size(start.group.group, start.archive.file_name)
        connection = zero_copy_connection(request.scope)
        if size:
            started = await self._start_early(start, size, connection)
        else:
            started = await self.start(start)
        if not isinstance(started, SharedRefresh):
            return started  # None (a refresh runs), 502/503, uncached, early
        group = start.group.group
        return await self.read(started, start.cache, request, group, start.archive, start.origin)

    async def read(
        self,
        shared: SharedRefresh,
        cache: Cache,
        request: quart.Request,
        group: str,
        archive: ArchiveName,
        origin: ByteSource = "cache",
    ) -> quart.Response | None:
        """``request`` answered from the temp file of ``shared`` (or, promoted meanwhile, as
        a cache hit); None when neither can answer it. Its bytes are counted as ``origin``'s."""
        response = await join(
            shared,
            request.method,
            request.headers.get("range"),
            events=self._launcher.reader_events(origin),
            connection=zero_copy_connection(request.scope),
        )
        if response is None and shared.refresh.verified:  # promoted meanwhile: a cache hit
            name = archive.file_name
            path = cache_path(cache, group, name)
            if copy_of(cache, path, group, name) is Copy.SERVABLE and path is not None:
                response = await self._stored.cache_hit(cache, path, group, archive, request)
        return response

    async def start(self, start: RefreshStart) -> Started:
        """Begin a detached refresh (see :class:`RefreshStart`); once it is open, the
        SharedRefresh.

        None when a refresh of the file already runs, or (no ``client``) it could not open.
        For a ``client``, a Response when the upstream failed (502/503) or the refresh could
        not open (no room): the client is then streamed uncached.
        """
        begun = self._begin(start)
        if begun is None:
            return None
        return await self._open(*begun, client=start.client)

    async def prefetch(self, group: TargetGroup, cache: Cache, archive: ArchiveName) -> bool:
        """Refresh ``archive`` with no client, when :func:`tracker.proxy.plan.prefetches`
        says so and, with a bucket, the bucket lacks it and this replica gets its lock;
        whether it was promoted (see :meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`)."""
        launcher, name = self._launcher, archive.file_name
        best = launcher.is_best(group.group, name)
        found = launcher.index.find_file(group.group, name) if best else []
        if not prefetches(best, found, bool(found) and _cached(cache, group.group, name)):
            return False
        lock = None
        if self._objects is not None:  # the bucket: one refresher in the whole fleet
            if await self._objects.tier.lookup(group.group, name) is not None:
                return False  # clients are sent to the bucket's copy
            claimed = await self._registry.claim((cache.root, group.group, name))
            if isinstance(claimed, Holder):
                return False  # another replica refreshes it
            lock = claimed
        start = RefreshStart(group, cache, archive, keep=True, client=False, lock=lock)
        started = await self.start(start)
        if not isinstance(started, SharedRefresh):
            return False
        return await _prefetched(started, cache, group.group, name)

    async def _start_early(
        self, start: RefreshStart, size: int, connection: Connection | None
    ) -> Started:
        """:meth:`start` for a client that is sent an early head (README.md#clients) when the
        refresh has not opened within ``early_head_after``: the start goes on in the
        background, and the early head's body follows the refresh once it is open (or
        breaks when it never does). A fast start answers as :meth:`start` does."""
        begun = self._begin(start)
        if begun is None:
            return None
        done = trio.Event()
        outcome: list[Started] = []

        async def opening() -> None:
            try:
                outcome.append(await self._open(*begun, client=True))
            except Exception:  # a bug must not take the transfers nursery down
                log_event(
                    log, "error", "stream_failed", file=start.archive.file_name, exc_info=True
                )
                outcome.append(None)
            finally:
                done.set()

        if not self._launcher.transfers.spawn(opening):
            begun[0].fail()
            begun[0].refresh.abort()
            return text_answer(503, "the tracker is stopping")
        with trio.move_on_after(self._launcher.settings.early_head_after):
            await done.wait()
        if done.is_set():
            return outcome[0]

        async def resolve() -> ResponseBody:
            await done.wait()
            return await self._follow(outcome[0], size, start.origin, connection)

        return early_answer(size, LateBody(resolve))

    async def _follow(
        self, started: Started, size: int, origin: ByteSource, connection: Connection | None
    ) -> ResponseBody:
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
        if response.status_code != 200 or length != str(size):
            raise UpstreamError(f"the source answered {response.status_code} after an early head")
        body: ResponseBody = response.response
        return body

    def _begin(self, start: RefreshStart) -> tuple[SharedRefresh, Pump] | None:
        """Claim the refresh of the file and, with ``start.register``, register it for
        readers, synchronously (a request arriving next finds it); its pump, still to start.
        None: one runs. Unregistered, only its starter reads it (``cache_share_inflight``
        off). With the bucket's lock, the refresh's file is also uploaded to the bucket
        (:meth:`tracker.proxy.objects.ObjectPath.upload`, which releases the lock).
        """
        launcher = self._launcher
        group, name, lock = start.group.group, start.archive.file_name, start.lock
        refresh = start.cache.begin_refresh(group, name)
        if refresh is None or (lock is not None and not launcher.transfers.accepting):
            if refresh is not None:
                refresh.abort()
            if lock is not None:
                launcher.transfers.spawn(lock.release)
            return None
        found = launcher.index.find_file(group, name)
        job = launcher.job(start.group, "GET", {}, start.archive, found)
        cache_job = RefreshJob(refresh, partial(launcher.is_best, group, name))
        shared = SharedRefresh(refresh, cache_job.stop, keep=start.keep)
        self._registry.add(start.key, shared, register=start.register)
        if lock is not None and self._objects is not None:
            launcher.transfers.spawn(self._objects.upload, shared, lock, group, name)
        return shared, partial(fill, job, cache_job, fallback=start.client)

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
        if isinstance(head, quart.Response):
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
