"""Proxy mode's byte path: cache hit, refresh, or plain proxy — the table of SPEC §8.

:class:`ProxyStreamer` is the :class:`tracker.web.delivery.ByteStreamer` of proxy mode. For a
concrete archive request it

1. serves the file from the disk cache when it is there (HEAD, Range and conditionals
   included; no upstream request);
2. otherwise, for a plain GET of the group's current best full or incremental with no refresh
   of it running, becomes that file's refresher: the upstream bytes go to the client and to a
   temp file at once (:mod:`tracker.proxy.transfers`, :mod:`tracker.cache.store`);
3. otherwise streams from upstream without caching (HEAD, Range or conditional requests,
   other files, a refresh already running, no cache configured).

"Plain" GET: no ``Range``, ``If-Range`` or conditional header. A conditional or partial
answer from upstream could not fill the cache, and the request is served uncached instead.

With ``cache_share_inflight`` a refresh is *detached* (it writes the temp file at the
upstream's pace, :mod:`tracker.proxy.transfers`) and every GET of the file while it runs, its
starter's included and ``Range`` requests too, reads the growing temp file
(:mod:`tracker.proxy.sharing`) instead of opening another upstream stream. :meth:`prefetch` starts
such a refresh with no client at all (``cache_prefetch``, :mod:`tracker.proxy.prefetch`). A
refresh's broken upstream body is resumed with a Range request (:mod:`tracker.proxy.resume`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import quart
import trio
from quart.wrappers.response import ResponseBody

from tracker.cache.refresh import Refresh
from tracker.cache.store import Cache, RefreshProgress
from tracker.core.config import Config, TargetGroup
from tracker.core.digests import Digests, repr_digest
from tracker.core.index import Index, SnapshotSource, TargetKey
from tracker.core.logs import log_event
from tracker.core.metrics import ByteSource, Kind, Metrics, Outcome
from tracker.core.rejections import PREFIX as REJECTED
from tracker.core.rejections import Rejections
from tracker.core.snapshots import SnapshotFile, parse_archive_name
from tracker.errors import RequestError, UpstreamError
from tracker.files.fileresponse import ChunkBudget, file_response
from tracker.files.ranges import ByteRange, parse_range
from tracker.net.egress import Resolver, policy_of, resolve
from tracker.objectstore.locks import Holder, Lock
from tracker.proxy.failover import open_upstream
from tracker.proxy.objects import ObjectPath
from tracker.proxy.pumps import fill, relay
from tracker.proxy.resume import resume_upstream
from tracker.proxy.sharing import LateBody, ReaderEvents, SharedRefresh, join
from tracker.proxy.transfers import Head, RefreshJob, StreamEvents, StreamJob, Transfers
from tracker.proxy.upstream import (
    CHANNEL_PIECES,
    FORWARDED_REQUEST_HEADERS,
    DownloadClients,
    ProxySettings,
    UpstreamAnswer,
    upstream_request_headers,
)
from tracker.zerocopy.connection import Connection, zero_copy_connection

log = logging.getLogger("tracker.streamer")

CacheFactory = Callable[[str], Cache]
#: Transfers smaller than this say little about a source's throughput and are not counted.
MIN_MEASURED_BYTES = 1024 * 1024
Found = list[tuple[SnapshotFile, SnapshotSource]]
#: A shared refresh's key: cache root, group, file name.
SharedKey = tuple[str, str, str]


@attrs.frozen
class RefreshPlan:
    """What a detached refresh of one file is started with.

    ``keep``: it outlives its last reader; ``client``: a client waits for it (it is then
    relayed uncached when the temp file cannot be opened); ``lock``: the bucket's lock of the
    file (the refresh is then uploaded, which releases it); ``register``: other requests may
    find and join it (``cache_share_inflight``, the bucket, prefetch); ``origin``: what the
    bytes its starting client reads count as (``served_bytes_total{source}``).
    """

    group: TargetGroup
    cache: Cache
    name: str
    keep: bool
    client: bool = True
    lock: Lock | None = None
    register: bool = True
    origin: ByteSource = "cache"


class ProxyStreamer:
    """Answers archive requests in proxy mode, with the disk cache when one is configured.

    ``config`` returns the live config (the cache directory is read per request, so a reload
    that changes it takes effect; each directory gets its own :class:`Cache`, cleaned up on
    first use). ``cache_factory`` builds a Cache for a directory (tests inject faults there);
    ``resolver`` looks up host names that came from the network (tests inject their own).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        transfers: Transfers,
        *,
        metrics: Metrics | None = None,
        settings: ProxySettings | None = None,
        cache_factory: CacheFactory | None = None,
        budget: ChunkBudget | None = None,
        resolver: Resolver = resolve,
        objects: ObjectPath | None = None,
        digests: Digests | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self._config = config
        #: Digests of the archives held verified, and sources whose copy failed its check
        #: (docs/http-api.md, "Verified archives").
        self.digests = digests if digests is not None else Digests()
        self.rejections = rejections if rejections is not None else Rejections()
        #: The object-store tier (SPEC §10); None without one.
        self._objects = objects
        #: Files whose bucket lock this replica is asking for (a second request waits).
        self._claiming: dict[SharedKey, trio.Event] = {}
        self._budget = budget
        self._index = index
        self._transfers = transfers
        self._metrics = metrics
        self.settings = settings if settings is not None else ProxySettings()
        #: Memory shared by the streams passed through Python (tracker/proxy/channel.py).
        self._channel_budget = ChunkBudget(
            total=self.settings.channel_budget,
            smallest=self.settings.smallest_read,
            largest=self.settings.read_size,
            per_stream=CHANNEL_PIECES,
        )
        self._clients = DownloadClients(
            self.settings, policy=lambda: policy_of(self._config().egress), resolver=resolver
        )
        self._cache_factory = cache_factory or self._default_cache
        self._caches: dict[str, Cache] = {}
        #: Cache roots whose start-up check of unverified files has not been started yet.
        self._rechecking: set[str] = set()
        self._shared: dict[SharedKey, SharedRefresh] = {}
        #: Every refresh running, registered for readers or not: who reads it (status page).
        self._followed: dict[SharedKey, SharedRefresh] = {}
        #: Told ``(group, name)`` when a Range request shows interest in a best file that is
        #: neither cached nor being refreshed (the service plugs in the prefetcher, §9).
        self.on_interest: Callable[[str, str], object] | None = None

    def _default_cache(self, root: str) -> Cache:
        on_size = self._metrics.set_cache_size if self._metrics is not None else None
        return Cache(root, on_size=on_size)

    def _cached_copy_rejected(self, group: str, name: str, reason: str) -> None:
        """A cached file failed its check again at start-up (and was removed)."""
        if self._metrics is not None:
            self._metrics.count_archive_rejected(group)

    def cache(self) -> Cache | None:
        """The cache of the current config (None without one); made and cleaned on first use.

        The service calls it once at start-up so that leftover temp files go before any
        request arrives.
        """
        config = self._config()
        root = config.proxy_snapshot_cache_dir
        if not (config.proxy_snapshot_downloads and root):
            return None
        cache = self._caches.get(root)
        if cache is None:
            cache = self._caches[root] = self._cache_factory(root)
            cache.verify_with(config.verify_archives, self.digests, self._cached_copy_rejected)
            cache.startup_cleanup()
            self._rechecking.add(root)
        if root in self._rechecking and self._transfers.spawn(cache.recheck):
            self._rechecking.discard(root)  # files found unchecked are checked once, now
        return cache

    def refreshes(self) -> list[RefreshProgress]:
        """The disk cache's refreshes in flight, each with the clients reading it now
        (empty without a cache)."""
        cache = self.cache()
        if cache is None:
            return []
        self._forget_ended()
        out = []
        for progress in cache.refreshes():
            shared = self._followed.get((cache.root, progress.group, progress.name))
            readers = shared.readers if shared is not None else None
            out.append(attrs.evolve(progress, readers=readers))
        return out

    def _forget_ended(self) -> None:
        for key in [k for k, s in self._followed.items() if s.refresh.ended.is_set()]:
            del self._followed[key]

    async def aclose(self) -> None:
        """Close the download clients (at service stop, after the transfers ended)."""
        await self._clients.aclose()

    async def serve(
        self, request: quart.Request, group: str, name: str, found: Found
    ) -> quart.Response:
        """Answer a GET or HEAD of archive ``name`` of ``group`` (advertised by ``found``).

        Raises RequestError (404/400) for a name or group that cannot be used. Upstream
        failures answer 502 with a one-line reason; a stopping tracker answers 503.
        Cancellation (client gone) before the upstream answered closes everything opened.
        """
        config = self._config()
        target_group = config.group_named(group)
        if target_group is None:
            raise RequestError(404, f"unknown group {group!r}")
        cache = self.cache()
        objects = self._objects if cache is not None else None
        if objects is not None and request.method == "GET":
            _check_name(name)
            # First: a hit leaves the data path before any file system work (SPEC §10).
            sent = await objects.redirect_or_head(config, request, group, name)
            if sent is not None:
                self._count("object_redirect")
                return sent
        cache_path = _cache_path(cache, group, name) if cache is not None else None
        objects = objects if cache_path is not None else None
        # The bucket's refresh is shared: readers here and on other replicas follow its file.
        sharing = config.cache_share_inflight or objects is not None
        if cache is not None and cache_path is not None:
            await cache.wait_promotion(group, name, self.settings.promotion_wait)
            hit = await self._from_cache(cache, group, name, cache_path, request)
            if hit is not None:
                return hit
            if objects is not None:
                from_bucket = await self._from_bucket(objects, config, request, group, name)
                if from_bucket is not None:
                    return from_bucket
            self._count("cache_miss")
            if sharing:
                shared = await self._shared_answer(config, target_group, cache, request, name)
            else:
                shared = await self._behind_refresh(cache, request, group, name)
            if shared is not None:
                return shared
            self._note_interest(cache, request, group, name)
        # With sharing on, a request that could not share a refresh is served uncached.
        may_refresh = not sharing and self._may_refresh(request, group, name)
        if cache is not None and cache_path is not None and may_refresh:
            keep = config.cache_complete_on_disconnect
            # Its bytes count as the upstream's, as they did when this client's stream fed the
            # file: only readers of a shared refresh count as cache hits.
            plan = RefreshPlan(target_group, cache, name, keep, register=False, origin="upstream")
            own = await self._own_refresh(plan, request)
            if own is not None:
                return own
        headers = upstream_request_headers(request.headers.items(), None)
        job = self._job(target_group, request.method, headers, name, found)
        job = attrs.evolve(job, zero_copy=zero_copy_connection(request.scope))
        return await self._stream(relay, job)

    async def bucket_location(self, group: str, name: str, user_agent: str) -> str | None:
        """The 303's location :meth:`serve` would answer a GET of ``name`` with from the
        object store (counted as such), or None when it would answer otherwise (then call
        :meth:`serve`). Never raises for a bad name or group: None."""
        config = self._config()
        objects = self._objects if self.cache() is not None else None
        if objects is None or config.group_named(group) is None:
            return None
        try:
            _check_name(name)
        except RequestError:
            return None
        url = await objects.location(config, user_agent, group, name)
        if url is not None:
            self._count("object_redirect")
        return url

    async def prefetch(self, group: str, name: str) -> bool:
        """Fill the cache with archive ``name`` of ``group`` without a client (prefetch).

        Does nothing (False) unless the file is its group's current best of its kind, is
        not cached, has no refresh running and is advertised by a remote source only.
        Otherwise runs a detached refresh (readers may join it with ``cache_share_inflight``)
        and returns whether it was promoted. Never raises for upstream or cache failures
        (they are logged). Cancellation (the service stopping) stops the refresh unless
        clients are reading it, which then get the service's grace period.
        """
        config = self._config()
        target_group = config.group_named(group)
        cache = self.cache()
        if cache is None or target_group is None or not self._is_best(group, name):
            return False
        found = self._index.find_file(group, name)
        if not found or any(f.path for f, _ in found) or _cached(cache, group, name):
            return False
        lock = None
        if self._objects is not None:  # the bucket: one refresher in the whole fleet
            if await self._objects.tier.lookup(group, name) is not None:
                return False  # clients are sent to the bucket's copy
            claimed = await self._claim((cache.root, group, name))
            if isinstance(claimed, Holder):
                return False  # another replica refreshes it
            lock = claimed
        plan = RefreshPlan(target_group, cache, name, keep=True, client=False, lock=lock)
        started = await self._start_shared(plan)
        if not isinstance(started, SharedRefresh):
            return False
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

    async def _from_bucket(
        self, objects: ObjectPath, config: Config, request: quart.Request, group: str, name: str
    ) -> quart.Response | None:
        """Not on disk: a HEAD answered from the object's metadata, or the object streamed
        from the bucket (Range and conditionals passed on). None: the bucket has no copy."""
        if request.method == "HEAD":
            return await objects.redirect_or_head(config, request, group, name)
        source = await objects.stream_source(group, name)
        if source is None:
            return None
        target_group, found, digest = source
        headers = upstream_request_headers(request.headers.items(), None)
        job = self._job(target_group, request.method, headers, name, found, origin="object_store")
        job = attrs.evolve(job, zero_copy=zero_copy_connection(request.scope))
        head = await self._start(partial(relay, job), client=False, failed="object_stream_failed")
        if isinstance(head, quart.Response):
            return None  # the store failed: another path
        self._count("object_store")
        response = _response(head)
        if digest and head.status in (200, 206):
            response.headers["repr-digest"] = repr_digest(digest)
        return response

    async def _from_holder(
        self, holder: Holder, request: quart.Request, group: TargetGroup, name: str
    ) -> quart.Response | None:
        """Proxied from the replica that holds the file's lock (its refresh in flight);
        None when it cannot be followed or failed (then streamed from upstream uncached)."""
        assert self._objects is not None
        size = self._index_size(group.group, name)
        source = self._objects.holder_source(request, holder, group.group, name, size)
        if source is None:
            return None
        target_group, found = source
        headers = upstream_request_headers(request.headers.items(), None)
        job = self._job(target_group, request.method, headers, name, found, origin="replica")
        head = await self._start(partial(relay, job), client=False, failed="replica_unreachable")
        if isinstance(head, quart.Response):
            return None  # streamed from the source uncached instead
        self._count("replica")
        return _response(head)

    async def _from_cache(
        self, cache: Cache, group: str, name: str, path: str, request: quart.Request
    ) -> quart.Response | None:
        """A cache hit, when the file is cached and (with verification) passed its check."""
        if not cache.servable(group, name):
            return None
        digest = cache.digest(group, name)
        extra = {"repr-digest": repr_digest(digest)} if digest else None
        on_bytes = None
        if self._metrics is not None:
            on_bytes = partial(self._metrics.add_served_bytes, "cache")
        try:
            response = await file_response(
                path, request, on_bytes=on_bytes, budget=self._budget, extra_headers=extra
            )
        except FileNotFoundError:
            return None
        except OSError as exc:  # something else than a file at the path: not cached
            log_event(log, "warning", "cache_unreadable", path=path, error=exc)
            return None
        self._count("cache_hit")
        return response

    def _note_interest(self, cache: Cache, request: quart.Request, group: str, name: str) -> None:
        """A ``Range`` GET of the group's best file, not cached and not being refreshed,
        starts a background refresh of the whole file: clients that always ask for ranges
        (aria2c, axel, ``curl -C -``) would otherwise never get it cached (SPEC §9)."""
        if self.on_interest is None or request.method != "GET" or "range" not in request.headers:
            return
        if cache.is_refreshing(group, name) or not self._is_best(group, name):
            return
        self.on_interest(group, name)

    async def _behind_refresh(
        self, cache: Cache, request: quart.Request, group: str, name: str
    ) -> quart.Response | None:
        """Without ``cache_share_inflight``: a ``Range`` GET whose first byte a background
        refresh (prefetch, or one a Range request started) already wrote is read from its
        temp file instead of asking the source again; a range further ahead is streamed
        from upstream, in parallel. None: serve it another way."""
        shared = self._running(cache, group, name)
        if shared is None or not _may_join(request) or "range" not in request.headers:
            return None
        refresh = shared.refresh
        wanted = parse_range(request.headers.get("range"), refresh.size)
        if not isinstance(wanted, ByteRange) or wanted.start >= refresh.written:
            return None
        response = await join(shared, "GET", request.headers.get("range"))
        if response is not None and self._metrics is not None:
            self._metrics.count_shared_reader()
        return response

    def _may_refresh(self, request: quart.Request, group: str, name: str) -> bool:
        if request.method != "GET" or _has_forwarded_headers(request):
            return False
        return self._is_best(group, name)

    def _is_best(self, group: str, name: str) -> bool:
        """True when ``name`` is the group's current best full or best incremental."""
        best = (self._index.best_full(group), self._index.best_incremental(group))
        return any(s is not None and s.info.files[0].bare_name == name for s in best)

    def _job(
        self,
        group: TargetGroup,
        method: str,
        headers: dict[str, str],
        name: str,
        found: Found,
        *,
        origin: ByteSource = "upstream",
    ) -> StreamJob:
        found, rejected = self._not_rejected(name, found)
        # A plain request (no Range, no conditional) for a file of known size may be
        # answered with an early head; only sources of that same size may then follow it.
        size = found[0][0].size if found else 0
        early = size if not headers and size > 0 else 0
        if early:
            found = [(f, s) for f, s in found if f.size in (0, early)]
        opener = partial(
            open_upstream,
            self._clients,
            group,
            found,
            method,
            headers,
            hedge_after=self._config().first_byte_timeout,
            promised=early,
            on_failure=self._source_failed(group.group, origin),
            exact=origin != "upstream",  # the bucket and a holder replica state their length
        )
        if not found and rejected:
            opener = partial(_refuse, REJECTED + rejected)
        return StreamJob(
            open=opener,
            method=method,
            known_size=size,
            settings=self.settings,
            events=self._events(group.group, name, origin=origin),
            reopen=partial(self._reopen, group),
            early_size=early,
            budget=self._channel_budget,
        )

    def _not_rejected(self, name: str, found: Found) -> tuple[Found, str]:
        """The sources of ``found`` whose copy of ``name`` is not held back after a failed
        check, and the latest reason of one that is ("" if none)."""
        now, rejections = trio.current_time(), self.rejections
        kept: Found = []
        reason = ""
        for f, source in found:
            held = rejections.rejected(source.key, name, now)
            if held is None:
                kept.append((f, source))
            else:
                reason = held.reason
        return kept, reason

    def _archive_rejected(self, group: str, name: str, key: TargetKey, reason: str) -> None:
        """A refresh's archive from ``key`` failed its check: not used for it a while."""
        hold = self._config().reject_for
        self.rejections.reject(key, name, reason, now=trio.current_time(), hold=hold)
        if self._metrics is not None:
            self._metrics.count_archive_rejected(group)

    async def _reopen(
        self, group: TargetGroup, first: UpstreamAnswer, offset: int, size: int
    ) -> UpstreamAnswer:
        """Resume a refresh: the rest of the file, from the source that sent the start."""
        return await resume_upstream(self._clients, group, first, offset, size)

    async def _start(
        self,
        pump: Callable[..., Awaitable[None]],
        *,
        refresh: Refresh | None = None,
        client: bool = True,
        failed: str = "",
    ) -> Head | quart.Response:
        """Start ``pump`` (a byte path of tracker/proxy/pumps.py with its job); its Head, or
        the 502/503 answer when it could not start (counted as an archive request's outcome
        for a ``client``, not for a prefetch). ``refresh``: the cache refresh the pump was
        given, released here when the pump never ran. ``failed``: the event logged when it
        could not start (default: by ``client``)."""
        try:
            head: Head = await self._transfers.start(pump)
        except BaseException as exc:
            # start() raising means the pump ended (or never ran): the refresh is free.
            if refresh is not None:
                refresh.abort()
            if not isinstance(exc, UpstreamError):
                raise
            if not self._transfers.accepting:
                return _text(503, str(exc))
            if client:
                self._count("upstream_failed")
            event = failed or ("proxy_failed" if client else "cache_prefetch_failed")
            log_event(log, "warning", event, reason=str(exc))
            return _text(502, str(exc))
        return head

    async def _stream(
        self, pump: Callable[..., Awaitable[None]], *args: object, refresh: Refresh | None = None
    ) -> quart.Response:
        head = await self._start(partial(pump, *args), refresh=refresh)
        if isinstance(head, quart.Response):
            return head
        self._count("proxy")
        return _response(head)

    # -- shared refreshes ----------------------------------------------------------------

    async def _shared_answer(
        self,
        config: Config,
        group: TargetGroup,
        cache: Cache,
        request: quart.Request,
        name: str,
    ) -> quart.Response | None:
        """Answer from a shared refresh of the file: join the running one, or start one for
        a plain GET of the group's best. None: serve the request uncached."""
        key = (cache.root, group.group, name)
        while (claiming := self._claiming.get(key)) is not None:
            await claiming.wait()  # another request here is asking for the bucket's lock
        shared = self._running(cache, group.group, name)
        joiner = shared is not None
        if shared is None:
            if not self._may_refresh(request, group.group, name):
                return None
            claimed = await self._claim(key)
            if isinstance(claimed, Holder):
                return await self._from_holder(claimed, request, group, name)
            keep = config.cache_complete_on_disconnect or claimed is not None
            plan = RefreshPlan(group, cache, name, keep, lock=claimed)
            started = await self._start_for_client(plan, zero_copy_connection(request.scope))
            if not isinstance(started, SharedRefresh):
                return started  # None (an unshared refresh runs), 502/503, uncached, early
            shared = started
        elif not _may_join(request):
            return None
        response = await self._read_refresh(shared, cache, request, group.group, name)
        if response is not None and joiner and self._metrics is not None:
            self._metrics.count_shared_reader()
        return response

    async def _own_refresh(
        self, plan: RefreshPlan, request: quart.Request
    ) -> quart.Response | None:
        """Without ``cache_share_inflight``: a plain GET of the group's best becomes the
        file's refresher. The refresh is detached and registered for nobody else: the
        upstream bytes go into its temp file by splice (:meth:`UpstreamBody.into`) and this
        client is sent that file as it grows (sendfile), so no byte passes through Python
        (a refresh that received, wrote and sent every byte itself filled its cache at
        ~0.65x nginx ``proxy_cache``; bench: refresh). ``cache_complete_on_disconnect``
        (``plan.keep``) decides whether the refresh outlives its client. None: a refresh of
        the file runs already (the request is streamed uncached)."""
        started = await self._start_for_client(plan, zero_copy_connection(request.scope))
        if not isinstance(started, SharedRefresh):
            return started  # None (a refresh runs), 502/503, uncached, early
        return await self._read_refresh(
            started, plan.cache, request, plan.group.group, plan.name, plan.origin
        )

    async def _start_for_client(
        self, plan: RefreshPlan, connection: Connection | None
    ) -> SharedRefresh | quart.Response | None:
        """Start a detached refresh for a client (on ``connection``) that will read it: with
        an early head when the index knows the size (SPEC §9). See :meth:`_start_shared`."""
        size = self._index_size(plan.group.group, plan.name)
        if size:
            return await self._start_shared_early(plan, size, connection)
        return await self._start_shared(plan)

    async def _read_refresh(
        self,
        shared: SharedRefresh,
        cache: Cache,
        request: quart.Request,
        group: str,
        name: str,
        origin: ByteSource = "cache",
    ) -> quart.Response | None:
        """``request`` answered from the temp file of ``shared`` (or, promoted meanwhile, as
        a cache hit); None when neither can answer it. Its bytes are counted as ``origin``'s."""
        response = await join(
            shared,
            request.method,
            request.headers.get("range"),
            events=self._reader_events(origin),
            connection=zero_copy_connection(request.scope),
        )
        if response is None and shared.refresh.verified:  # promoted meanwhile: a cache hit
            path = _cache_path(cache, group, name)
            if path is not None:
                response = await self._from_cache(cache, group, name, path, request)
        return response

    async def _claim(self, key: SharedKey) -> Lock | Holder | None:
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

    def _index_size(self, group: str, name: str) -> int:
        found = self._index.find_file(group, name)
        return found[0][0].size if found else 0

    async def _start_shared_early(
        self, plan: RefreshPlan, size: int, connection: Connection | None
    ) -> SharedRefresh | quart.Response | None:
        """:meth:`_start_shared` for a client that is sent an early head (SPEC §9) when the
        refresh has not opened within ``early_head_after``: the start goes on in the
        background, and the early head's body follows the refresh once it is open (or
        breaks when it never does). A fast start answers as :meth:`_start_shared` does."""
        begun = self._begin_shared(plan)
        if begun is None:
            return None
        done = trio.Event()
        outcome: list[SharedRefresh | quart.Response | None] = []

        async def start() -> None:
            try:
                outcome.append(await self._open_shared(*begun, client=True))
            except Exception:  # a bug must not take the transfers nursery down
                log_event(log, "error", "stream_failed", file=plan.name, exc_info=True)
                outcome.append(None)
            finally:
                done.set()

        if not self._transfers.spawn(start):
            begun[0].fail()
            begun[0].refresh.abort()
            return _text(503, "the tracker is stopping")
        with trio.move_on_after(self.settings.early_head_after):
            await done.wait()
        if done.is_set():
            return outcome[0]

        async def resolve() -> ResponseBody:
            await done.wait()
            return await self._follow(outcome[0], size, plan.origin, connection)

        return _early(size, LateBody(resolve))

    async def _follow(
        self,
        started: SharedRefresh | quart.Response | None,
        size: int,
        origin: ByteSource,
        connection: Connection | None,
    ) -> ResponseBody:
        """The body that follows an early head of ``size`` bytes: the shared refresh's, or
        the uncached stream's when the refresh could not open; UpstreamError otherwise."""
        if isinstance(started, SharedRefresh):
            events = self._reader_events(origin)
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

    def _running(self, cache: Cache, group: str, name: str) -> SharedRefresh | None:
        """The shared refresh of a file still running (the registry drops ended ones)."""
        for key in [k for k, s in self._shared.items() if s.refresh.ended.is_set()]:
            del self._shared[key]
        return self._shared.get((cache.root, group, name))

    async def _start_shared(self, plan: RefreshPlan) -> SharedRefresh | quart.Response | None:
        """Begin a detached refresh (see :class:`RefreshPlan`); once it is open, the
        SharedRefresh.

        None when a refresh of the file already runs, or (no ``client``) it could not open.
        For a ``client``, a Response when the upstream failed (502/503) or the refresh could
        not open (no room): the client is then streamed uncached.
        """
        begun = self._begin_shared(plan)
        if begun is None:
            return None
        return await self._open_shared(*begun, client=plan.client)

    def _begin_shared(
        self, plan: RefreshPlan
    ) -> tuple[SharedRefresh, Callable[..., Awaitable[None]]] | None:
        """Claim the refresh of the file and, with ``plan.register``, register it for
        readers, synchronously (a request arriving next finds it); its pump, still to start.
        None: one runs. Unregistered, only its starter reads it (``cache_share_inflight``
        off). With the bucket's lock, the refresh's file is also uploaded to the bucket
        (:meth:`tracker.proxy.objects.ObjectPath.upload`, which releases the lock).
        """
        group, name, lock = plan.group.group, plan.name, plan.lock
        refresh = plan.cache.begin_refresh(group, name)
        if refresh is None or (lock is not None and not self._transfers.accepting):
            if refresh is not None:
                refresh.abort()
            if lock is not None:
                self._transfers.spawn(lock.release)
            return None
        found = self._index.find_file(group, name)
        job = self._job(plan.group, "GET", {}, name, found)
        cache_job = RefreshJob(refresh, partial(self._is_best, group, name))
        shared = SharedRefresh(refresh, cache_job.stop, keep=plan.keep)
        self._forget_ended()  # a few at a time: the names change with every snapshot
        self._followed[(plan.cache.root, group, name)] = shared
        if plan.register:
            self._shared[(plan.cache.root, group, name)] = shared
        if lock is not None and self._objects is not None:
            self._transfers.spawn(self._objects.upload, shared, lock, group, name)
        return shared, partial(fill, job, cache_job, fallback=plan.client)

    async def _open_shared(
        self, shared: SharedRefresh, pump: Callable[..., Awaitable[None]], *, client: bool
    ) -> SharedRefresh | quart.Response | None:
        """Start a begun refresh's pump; see :meth:`_start_shared` for what it returns."""
        try:
            head = await self._start(pump, refresh=shared.refresh, client=client)
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
        self._count("proxy")  # the refresh could not open (no room): streamed uncached
        return _response(head)

    def _reader_events(self, origin: ByteSource = "cache") -> ReaderEvents:
        metrics = self._metrics
        if metrics is None:
            return ReaderEvents()
        return ReaderEvents(served_bytes=partial(metrics.add_served_bytes, origin))

    def _events(self, group: str, name: str, *, origin: ByteSource = "upstream") -> StreamEvents:
        """Metrics callbacks of a stream from ``origin``; only a source of the index has its
        transfers ranked (not the bucket, not a replica)."""
        metrics = self._metrics
        ranked = self._measured if origin == "upstream" else StreamEvents().source_transfer
        rejected = partial(self._archive_rejected, group, name)
        if metrics is None:
            return StreamEvents(source_transfer=ranked, archive_rejected=rejected)
        kind: Kind = "full" if _is_full(name) else "incremental"
        if origin != "upstream":
            return StreamEvents(
                client_bytes=partial(metrics.add_served_bytes, origin), archive_rejected=rejected
            )
        return StreamEvents(
            upstream_bytes=partial(metrics.add_upstream_bytes, group, kind),
            client_bytes=partial(metrics.add_served_bytes, "upstream"),
            refresh_outcome=metrics.count_outcome,
            refresh_resumed=metrics.count_refresh_resume,
            source_transfer=ranked,
            archive_rejected=rejected,
        )

    def _measured(self, key: TargetKey, size: int, seconds: float) -> None:
        """A transfer from ``key`` ended: big enough ones rank its sources (SPEC §11)."""
        if size >= MIN_MEASURED_BYTES:
            self._index.record_transfer(key, size, seconds, trio.current_time())

    def _source_failed(self, group: str, origin: ByteSource) -> Callable[[], None] | None:
        """What counts a failed source of the index (not the bucket, not a replica)."""
        if self._metrics is None or origin != "upstream":
            return None
        return partial(self._metrics.count_source_failure, group)

    def _count(self, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.count_outcome(outcome)


async def _refuse(reason: str) -> UpstreamAnswer:
    """The opener of a file every source of which is held back: 502 with the reason."""
    raise UpstreamError(reason)


def _check_name(name: str) -> None:
    """RequestError(404) unless ``name`` is a canonical archive name."""
    parsed = parse_archive_name(name)
    if parsed is None or parsed.file_name != name:
        raise RequestError(404, "not a snapshot archive name")


def _cache_path(cache: Cache, group: str, name: str) -> str | None:
    """The validated cache path of a request; None when this file cannot be cached here.

    A name that is not a canonical archive name is a 404. A configured group whose name
    cannot be a directory (such as ``..``), or a path leading out of the cache directory
    through a symlink planted in it, makes the file streamed uncached: nothing outside the
    cache directory is touched.
    """
    _check_name(name)
    try:
        return cache.path_for(group, name)
    except RequestError as exc:
        log_event(log, "warning", "cache_path_refused", group=group, file=name, reason=exc.reason)
        return None


def _has_forwarded_headers(request: quart.Request) -> bool:
    return any(
        name.lower() in FORWARDED_REQUEST_HEADERS for name, _value in request.headers.items()
    )


def _may_join(request: quart.Request) -> bool:
    """A GET whose only forwarded header is ``Range`` may read a shared refresh."""
    return request.method == "GET" and all(
        name.lower() == "range" or name.lower() not in FORWARDED_REQUEST_HEADERS
        for name, _value in request.headers.items()
    )


def _cached(cache: Cache, group: str, name: str) -> bool:
    try:
        return cache.lookup(group, name) is not None
    except RequestError:
        return True  # a name or group that cannot be cached: nothing to prefetch


def _is_full(name: str) -> bool:
    parsed = parse_archive_name(name)
    return parsed is not None and parsed.is_full


def _text(status: int, reason: str) -> quart.Response:
    return quart.Response(reason + "\n", status=status, content_type="text/plain")


def _early(size: int, body: ResponseBody) -> quart.Response:
    """An early head: 200 with the index's size and no validator (none is known yet)."""
    response = quart.Response(body, status=200)
    response.headers.clear()
    response.headers.update(
        {"content-length": str(size), "content-type": "application/octet-stream"}
    )
    response.timeout = None  # downloads last hours (DESIGN trap 2)
    return response


def _response(head: Head) -> quart.Response:
    body: ResponseBody | bytes = head.body if head.body is not None else b""
    response = quart.Response(body, status=head.status)
    # Exactly the planned headers: not Quart's text/html default, not a derived length.
    response.headers.clear()
    response.headers.update(head.headers)
    response.timeout = None  # downloads last hours (DESIGN trap 2)
    return response
