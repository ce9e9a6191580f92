"""Proxy mode's byte path: the plan's stages asked in turn, each decision performed.

:class:`ProxyStreamer` is the :class:`tracker.web.delivery.ByteStreamer` of proxy mode. For a
concrete archive request it parses the name once, gathers the facts each stage of
:mod:`tracker.proxy.plan` needs when that stage is due, and performs what the stage decides
(docs/architecture.md, "The byte path as a plan")::

    redirect ──► stored: CacheHit, FromBucket ──► Miss ──► on_miss ──► (Claim ──► claimed)
       │            (each may pass to the next)    │          │                  │
       303                                        Relay     JoinShared, JoinBehind,
                                                            StartShared, OwnRefresh,
                                                            FromHolder ──(pass)──► fallback: Relay

The executors: :mod:`tracker.proxy.stored` (the bucket, the disk cache, the holder replica),
:mod:`tracker.proxy.refreshing` (starting, joining and reading refreshes, found through
:mod:`tracker.proxy.registry`), :mod:`tracker.proxy.launch` (a stream's job and its pump).
:meth:`ProxyStreamer.prefetch` starts a refresh with no client at all (``cache_prefetch``,
:mod:`tracker.proxy.prefetch`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import attrs
import quart

from tracker.cache.store import Cache, CachedFile, RefreshProgress
from tracker.core.config import Config, TargetGroup
from tracker.core.digests import Digests
from tracker.core.index import Index
from tracker.core.metrics import Metrics
from tracker.core.rejections import Rejections
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import RequestError
from tracker.files.fileresponse import ChunkBudget
from tracker.net.egress import Resolver, policy_of, resolve
from tracker.objectstore.locks import Holder, Lock
from tracker.proxy import plan
from tracker.proxy.launch import Launcher
from tracker.proxy.objects import ObjectPath
from tracker.proxy.plan import Asked, Found, Mode
from tracker.proxy.refreshing import Refreshes, RefreshStart
from tracker.proxy.registry import RefreshRegistry, progress
from tracker.proxy.sharing import SharedRefresh
from tracker.proxy.stored import StoredCopies, cache_path, copy_of
from tracker.proxy.transfers import Transfers
from tracker.proxy.upstream import (
    CHANNEL_PIECES,
    FORWARDED_REQUEST_HEADERS,
    DownloadClients,
    ProxySettings,
    upstream_request_headers,
)
from tracker.zerocopy.connection import zero_copy_connection

CacheFactory = Callable[[str], Cache]


@attrs.frozen
class Wanted:
    """The file a request asks for: its group, its parsed name, its sources."""

    group: TargetGroup
    archive: ArchiveName
    found: Found

    @property
    def name(self) -> str:
        return self.archive.file_name


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
        self._index = index
        #: Digests of the archives held verified, and sources whose copy failed its check
        #: (docs/http-api.md, "Verified archives").
        self.digests = digests if digests is not None else Digests()
        self.rejections = rejections if rejections is not None else Rejections()
        self._transfers = transfers
        self._metrics = metrics
        settings = settings if settings is not None else ProxySettings()
        self._clients = DownloadClients(
            settings, policy=lambda: policy_of(self._config().egress), resolver=resolver
        )
        #: Memory shared by the streams passed through Python (tracker/proxy/channel.py).
        channel_budget = ChunkBudget(
            total=settings.channel_budget,
            smallest=settings.smallest_read,
            largest=settings.read_size,
            per_stream=CHANNEL_PIECES,
        )
        self._launcher = Launcher(
            config,
            index,
            transfers,
            self._clients,
            settings=settings,
            channel_budget=channel_budget,
            metrics=metrics,
            rejections=self.rejections,
        )
        #: The object-store tier (docs/http-api.md#with-an-object-store-object_store); None without
        #: one.
        self._objects = objects
        self._registry = RefreshRegistry(objects)
        self._stored = StoredCopies(self._launcher, objects, budget)
        self._refreshes = Refreshes(self._launcher, self._registry, self._stored, objects)
        self._cache_factory = cache_factory or self._default_cache
        self._caches: dict[str, Cache] = {}
        #: Cache roots whose start-up check of unverified files has not been started yet.
        self._rechecking: set[str] = set()
        #: Told ``(group, name)`` when a Range request shows interest in a best file that is
        #: neither cached nor being refreshed (the service plugs in the prefetcher, §9).
        self.on_interest: Callable[[str, str], object] | None = None

    @property
    def clients(self) -> DownloadClients:
        """The upstream download clients (credentials per origin, the egress policy): every
        request to a source goes through them (speed tests too)."""
        return self._clients

    @property
    def settings(self) -> ProxySettings:
        """The proxy's tunables (read per stream: replacing them affects the next ones)."""
        return self._launcher.settings

    @settings.setter
    def settings(self, value: ProxySettings) -> None:
        self._launcher.settings = value

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
            cache.served = self._index.served_fulls
            cache.on_files = partial(hold_cached, self._index)
            cache.startup_cleanup()
            self._rechecking.add(root)
        if cache.ops.min_free != config.proxy_snapshot_cache_min_free:  # set, or reloaded
            cache.ops = attrs.evolve(cache.ops, min_free=config.proxy_snapshot_cache_min_free)
        if root in self._rechecking and self._transfers.spawn(cache.recheck):
            self._rechecking.discard(root)  # files found unchecked are checked once, now
        return cache

    def uncached(self) -> dict[str, str]:
        """Per group: why its last refresh streamed uncached for want of disk room (empty
        without a cache, or once a refresh found room)."""
        cache = self.cache()
        return dict(cache.uncached) if cache is not None else {}

    def refreshes(self) -> list[RefreshProgress]:
        """The disk cache's refreshes in flight, each with the clients reading it now
        (empty without a cache)."""
        cache = self.cache()
        if cache is None:
            return []
        self._registry.forget_ended()
        out = []
        for progress_ in cache.refreshes():
            shared = self._registry.followed((cache.root, progress_.group, progress_.name))
            readers = shared.readers if shared is not None else None
            out.append(attrs.evolve(progress_, readers=readers))
        return out

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
        wanted = Wanted(target_group, _archive(name), found)  # parsed once, here
        cache = self.cache()
        asked = asked_of(request)
        mode = self._mode(config, cache)
        if plan.redirect(asked, mode) is not None:
            sent = await self._stored.redirect(group, wanted.archive)
            if sent is not None:
                return sent
        path = cache_path(cache, group, name) if cache is not None else None
        if cache is not None and path is not None:
            await cache.wait_promotion(group, name, self.settings.promotion_wait)
        for step in plan.stored(asked, mode, copy_of(cache, path, group, name)):
            match step:
                case plan.CacheHit() if cache is not None and path is not None:
                    sent = await self._stored.cache_hit(cache, path, group, wanted.archive, request)
                case plan.FromBucket(head=head):
                    sent = await self._stored.from_bucket(head, request, group, wanted.archive)
                case plan.Miss() if cache is not None:
                    return await self._miss(request, asked, mode, cache, wanted)
                case _:
                    return await self._relay(request, wanted)
            if sent is not None:
                return sent
        raise AssertionError("the stored stage ends in a miss or a relay")

    async def _miss(
        self, request: quart.Request, asked: Asked, mode: Mode, cache: Cache, wanted: Wanted
    ) -> quart.Response:
        """No stored copy answered: the ``on_miss`` stage (and ``claimed``), then the
        fallback when the decision passed."""
        self._launcher.count("cache_miss")
        key = (cache.root, wanted.group.group, wanted.name)
        if mode.shares:
            await self._registry.settled(key)  # another request here is asking for the lock
        shared = self._registry.running(key)
        step: plan.AfterMiss | plan.AfterClaim = plan.on_miss(
            asked, mode, self._now(cache, wanted, shared)
        )
        claim: Lock | Holder | None = None
        if isinstance(step, plan.Claim):
            claim = await self._registry.claim(key)
            size = self._launcher.index_size(wanted.group.group, wanted.name)
            step = plan.claimed(asked, mode, _claimed(claim), size)
        sent = await self._after_miss(step, request, cache, wanted, shared, claim)
        if sent is not None:
            return sent
        if not isinstance(step, plan.Relay):  # passed: what is true now decides
            now = self._now(cache, wanted, self._registry.running(key))
            step = plan.fallback(asked, now)
        if step.interest and self.on_interest is not None:
            self.on_interest(wanted.group.group, wanted.name)
        return await self._relay(request, wanted)

    async def _after_miss(
        self,
        step: plan.AfterMiss | plan.AfterClaim,
        request: quart.Request,
        cache: Cache,
        wanted: Wanted,
        shared: SharedRefresh | None,
        claim: Lock | Holder | None,
    ) -> quart.Response | None:
        """Perform a miss's decision; None: it passed (or it is a relay)."""
        group, archive = wanted.group, wanted.archive
        match step:
            case plan.JoinShared() if shared is not None:
                return await self._refreshes.join_shared(
                    shared, cache, request, group.group, archive
                )
            case plan.JoinBehind() if shared is not None:
                return await self._refreshes.join_behind(shared, request)
            case plan.StartShared(keep=keep):
                lock = claim if isinstance(claim, Lock) else None
                start = RefreshStart(group, cache, archive, keep, lock=lock)
                return await self._refreshes.start_and_read(start, request)
            case plan.OwnRefresh(keep=keep):
                # Registered for nobody else. Its bytes count as the upstream's, as they did
                # when this client's stream fed the file: only readers of a shared refresh
                # count as cache hits.
                start = RefreshStart(group, cache, archive, keep, register=False, origin="upstream")
                return await self._refreshes.start_and_read(start, request)
            case plan.FromHolder(size=size) if isinstance(claim, Holder):
                return await self._stored.from_holder(claim, request, group, archive, size)
        return None

    async def _relay(self, request: quart.Request, wanted: Wanted) -> quart.Response:
        """:class:`~tracker.proxy.plan.Relay`: streamed from the sources, uncached."""
        if not any(f.url for f, _source in wanted.found):
            # Only the tracker held it (tracker.core.holdings), and its copy is gone.
            raise RequestError(404, f"{wanted.name} is no longer held nor advertised")
        headers = upstream_request_headers(request.headers.items(), None)
        job = self._launcher.job(
            wanted.group,
            request.method,
            headers,
            wanted.archive,
            wanted.found,
            zero_copy=zero_copy_connection(request.scope),
        )
        return await self._launcher.relay(job)

    def _mode(self, config: Config, cache: Cache | None) -> Mode:
        objects = self._objects if cache is not None else None
        bucket = None
        if objects is not None:
            bucket = plan.Bucket(objects.tier.usable, objects.store.direct_serve)
        return Mode(
            bucket=bucket,
            share=config.cache_share_inflight,
            keep=config.cache_complete_on_disconnect,
            serve_user_agents=config.serve_user_agents,
        )

    def _now(self, cache: Cache, wanted: Wanted, shared: SharedRefresh | None) -> plan.Now:
        group, name = wanted.group.group, wanted.name
        return plan.Now(
            best=self._launcher.is_best(group, name),
            running=progress(shared),
            refreshing=cache.is_refreshing(group, name),
        )

    async def bucket_location(self, group: str, name: str, user_agent: str) -> str | None:
        """The 303's location :meth:`serve` would answer a GET of ``name`` with from the
        object store (counted as such), or None when it would answer otherwise (then call
        :meth:`serve`). Never raises for a bad name or group: None."""
        config = self._config()
        mode = self._mode(config, self.cache())
        archive = parse_archive_name(name)
        if config.group_named(group) is None or archive is None or archive.file_name != name:
            return None
        if plan.redirect(Asked("GET", user_agent=user_agent), mode) is None:
            return None
        return await self._stored.presigned(group, archive)

    async def prefetch(self, group: str, name: str) -> bool:
        """Fill the cache with archive ``name`` of ``group`` without a client (prefetch).

        Does nothing (False) unless the file is its group's current best of its kind, is
        not cached, has no refresh running and is advertised by a remote source only.
        Otherwise runs a detached refresh (readers may join it with ``cache_share_inflight``)
        and returns whether it was promoted. Never raises for upstream or cache failures
        (they are logged). Cancellation (the service stopping) stops the refresh unless
        clients are reading it, which then get the service's grace period.
        """
        target_group = self._config().group_named(group)
        cache = self.cache()
        archive = parse_archive_name(name)
        if cache is None or target_group is None or archive is None:
            return False
        return await self._refreshes.prefetch(target_group, cache, archive)


def asked_of(request: quart.Request) -> Asked:
    """The facts of ``request`` the plan decides on."""
    headers = request.headers
    conditional = any(
        key.lower() in FORWARDED_REQUEST_HEADERS and key.lower() != "range"
        for key, _value in headers.items()
    )
    return Asked(
        method=request.method,
        range=headers.get("range"),
        conditional=conditional,
        user_agent=headers.get("user-agent", ""),
    )


def _archive(name: str) -> ArchiveName:
    """The parsed archive name; RequestError(404) unless ``name`` is a canonical one."""
    parsed = parse_archive_name(name)
    if parsed is None or parsed.file_name != name:
        raise RequestError(404, "not a snapshot archive name")
    return parsed


def _claimed(claim: Lock | Holder | None) -> plan.Claimed:
    if isinstance(claim, Holder):
        return plan.Claimed.HOLDER
    return plan.Claimed.NONE if claim is None else plan.Claimed.LOCK


def hold_cached(index: Index, files: list[CachedFile]) -> None:
    """The disk cache now holds ``files``: the index lists those no source has any more
    (:mod:`tracker.core.holdings`)."""
    for group in {f.group for f in files} | set(index.holdings.groups()):
        index.hold("cache", group, [(f.name, f.size, f.mtime) for f in files if f.group == group])
