"""Proxy mode's byte path: the walk performed for each archive request.

:class:`ProxyStreamer` is the :class:`tracker.web.delivery.ByteStreamer` of proxy mode. For a
concrete archive request (its name parsed by the route) it performs the request's walk
(:func:`tracker.proxy.walk.request_walk`) with :class:`RequestSteps`, which answers each
lookup with what is true now (the disk cache's copy after a promotion in flight, the index
and the running refreshes, the index's size, the bucket's lock) and hands each decision to
its executor, :mod:`tracker.proxy.storedcopies` (the bucket, the disk cache, the holder
replica), :mod:`tracker.proxy.refreshing` (starting, joining and reading refreshes) or
:mod:`tracker.proxy.streamjobs` (the relay), deciding nothing itself (docs/architecture.md,
"The byte path as a plan", draws the walk).
:meth:`ProxyStreamer.prefetch` starts a refresh with no client at all (``cache_prefetch``,
:mod:`tracker.proxy.prefetch`), its own walk (:func:`tracker.proxy.walk.prefetch_walk`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import attrs

from tracker.cache.store import Cache, CachedFile, RefreshProgress
from tracker.config.schema import Config
from tracker.core.digests import Digests
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import RequestError
from tracker.net.egress import Resolver, policy_of, resolve
from tracker.objectstore.locks import Holder, Lock
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index
from tracker.ordering.rejections import Rejections
from tracker.proof.accounts.budget import (
    CACHE_TEMP,
    AccountsLimits,
    MemoryBudget,
    WorkerSlots,
    default_workers,
)
from tracker.proof.levels import Level, Voter
from tracker.proxy import walk as walks
from tracker.proxy.ask import Ask, Wanted
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.decisions import (
    Asked,
    Bucket,
    CacheHit,
    Claim,
    Copy,
    Found,
    FromBucket,
    FromHolder,
    Gone,
    JoinBehind,
    JoinShared,
    Miss,
    Mode,
    Now,
    OwnRefresh,
    Redirect,
    Relay,
    StartShared,
    redirect,
)
from tracker.proxy.refreshing import Refreshes, claimed_of, progress
from tracker.proxy.sharing import SharedRefresh
from tracker.proxy.storedcopies import StoredCopies, cache_path, copy_of
from tracker.proxy.streamjobs import Launcher, ProxyContext
from tracker.proxy.transfers import Transfers
from tracker.proxy.upstream import CHANNEL_PIECES, DownloadClients, ProxySettings
from tracker.proxy.walk import request_walk
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.httpanswer import Answer

CacheFactory = Callable[[str], Cache]


@attrs.frozen(kw_only=True)
class StreamerParts:
    """What a :class:`ProxyStreamer` is built from besides the live config, the index and
    the transfers' nursery: its metrics, tunables, the object-store tier, the shared read
    memory, what the archive checks concluded (``digests``, ``rejections``), and the seams
    tests inject faults through (``cache_factory``: a Cache per directory; ``resolver``:
    host names that came from the network); ``voter``: the cluster's votes that lift the
    cached copies (:mod:`tracker.proof.cluster.lifting`), None: not asked."""

    metrics: Metrics | None = None
    settings: ProxySettings = attrs.field(factory=ProxySettings)
    objects: ObjectPath | None = None
    budget: ChunkBudget | None = None
    digests: Digests = attrs.field(factory=Digests)
    rejections: Rejections = attrs.field(factory=Rejections)
    cache_factory: CacheFactory | None = None
    resolver: Resolver = resolve
    voter: Voter | None = None


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
        parts: StreamerParts | None = None,
    ) -> None:
        parts = parts if parts is not None else StreamerParts()
        metrics, settings, objects = parts.metrics, parts.settings, parts.objects
        self._config = config
        self._index = index
        #: Digests of the archives held verified, and sources whose copy failed its check
        #: (docs/http-api.md, "Verified archives").
        self.digests = parts.digests
        self.rejections = parts.rejections
        self._transfers = transfers
        self._metrics = metrics
        #: What the proxy's parts share (tracker/proxy/streamjobs.py), its tunables a value
        #: given once: a test builds the streamer it needs (``StreamerParts.settings``).
        self.context = ProxyContext(config, index, transfers, settings, metrics, self.rejections)
        self._clients = DownloadClients(
            settings,
            policy=lambda: policy_of(self._config().egress),
            resolver=parts.resolver,
            on_queue=metrics.source_queue_event if metrics is not None else None,
        )
        #: Memory shared by the streams passed through Python (tracker/proxy/clientfeed.py).
        channel_budget = ChunkBudget(
            total=settings.channel_budget,
            smallest=settings.smallest_read,
            largest=settings.read_size,
            per_stream=CHANNEL_PIECES,
        )
        self.launcher = Launcher(self.context, self._clients, channel_budget=channel_budget)
        #: The object-store tier (docs/http-api.md#with-an-object-store-object_store); None
        #: without one.
        self._objects = objects
        #: The executors of the walk's decisions (docs/architecture.md, "The byte path as a
        #: plan"); the refreshes' registry is the refreshes' own.
        self.stored = StoredCopies(self.context, self.launcher, objects, parts.budget)
        self.shared_refreshes = Refreshes(self.context, self.launcher, objects)
        self.registry = self.shared_refreshes.registry
        self._cache_factory = parts.cache_factory or self._default_cache
        self._voter = parts.voter
        self._caches: dict[str, Cache] = {}
        #: The one memory budget of every accounts proof (docs/architecture.md, "Bounded
        #: memory"): concurrent checks (groups, refreshes, the start-up check) share it.
        self._proof_budget: MemoryBudget | None = None
        self._proof_slots: WorkerSlots | None = None
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
        """The proxy's tunables (one value, given at construction)."""
        return self.context.settings

    def _default_cache(self, root: str) -> Cache:
        on_size = self._metrics.set_cache_size if self._metrics is not None else None
        return Cache(root, on_size=on_size)

    def _cached_copy_rejected(self, group: str, name: str, reason: str) -> None:
        """A cached file failed its check again at start-up (and was removed)."""
        if self._metrics is not None:
            self._metrics.count_archive_rejected(group)

    def _required_level(self, group: str) -> Level:
        """What ``group``'s archives must be proven to before they are cached (its
        ``trust.require``, docs/http-api.md)."""
        config = self._config()
        found = config.group_named(group)
        return config.required_level(found) if found is not None else Level.STRUCTURE

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
            cache.verify_with(
                config.verify_archives,
                self.digests,
                self._cached_copy_rejected,
                self._required_level,
                self._accounts_limits(root) if config.prove_accounts else None,
                self._voter,
            )
            cache.served = self._index.served_fulls
            cache.on_files = partial(hold_cached, self._index)
            cache.startup_cleanup()
            self._rechecking.add(root)
        if cache.ops.min_free != config.proxy_snapshot_cache_min_free:  # set, or reloaded
            cache.ops = attrs.evolve(cache.ops, min_free=config.proxy_snapshot_cache_min_free)
        if root in self._rechecking and self._transfers.spawn(cache.recheck):
            self._rechecking.discard(root)  # files found unchecked are checked once, now
        return cache

    def proof_limits(self) -> AccountsLimits | None:
        """The limits of the tracker's accounts proofs outside the cache's refreshes (local
        files), sharing the cache's budget and workers; None with ``prove_accounts`` off."""
        config = self._config()
        if not config.prove_accounts:
            return None
        return self._accounts_limits(config.proxy_snapshot_cache_dir or None)

    def _accounts_limits(self, root: str | None) -> AccountsLimits:
        """The limits of the accounts proofs of the cache at ``root`` (None: no cache): the
        tracker's one shared budget and worker processes (``proof_workers``), the temporary
        directory (``.accounts-proof`` in the cache directory unless
        ``prove_accounts_temp_dir`` says where; without either, the system's), the
        operator's bound."""
        config = self._config()
        if self._proof_budget is None or self._proof_budget.total != config.prove_accounts_memory:
            budget = self._proof_budget = MemoryBudget(config.prove_accounts_memory)
            if self._metrics is not None:
                self._metrics.proofs.budget = lambda: budget
        workers = config.proof_workers or default_workers()
        if self._proof_slots is None or self._proof_slots.total != max(1, workers - 1):
            self._proof_slots = WorkerSlots(max(1, workers - 1))
        in_cache = not config.prove_accounts_temp_dir and root is not None
        return AccountsLimits(
            memory=config.prove_accounts_memory,
            max_accounts=config.prove_accounts_max,
            temp_dir=(
                os.path.join(root, CACHE_TEMP)
                if in_cache and root is not None
                else config.prove_accounts_temp_dir or None
            ),
            workers=workers,
            budget=self._proof_budget,
            slots=self._proof_slots,
            # in the cache's directory the spill never takes the room kept for its refreshes
            keep_free=config.proxy_snapshot_cache_min_free if in_cache else 0,
        )

    def uncached(self) -> dict[str, str]:
        """Per group: why its last refresh streamed uncached for want of disk room, or why
        every group's does (the cache's directory is unusable); empty without a cache, or once
        a refresh found room."""
        cache = self.cache()
        if cache is None:
            return {}
        if cache.problem:  # every group's refreshes stream uncached, whatever the room
            reason = f"the cache directory is unusable: {cache.problem}"
            return {group.group: reason for group in self._config().target_groups}
        return dict(cache.uncached)

    def refreshes(self) -> list[RefreshProgress]:
        """The disk cache's refreshes in flight, each with the clients reading it now
        (empty without a cache)."""
        cache = self.cache()
        if cache is None:
            return []
        self.registry.forget_ended()
        out = []
        for progress_ in cache.refreshes():
            shared = self.registry.followed((cache.root, progress_.group, progress_.name))
            readers = shared.readers if shared is not None else None
            out.append(attrs.evolve(progress_, readers=readers))
        return out

    async def aclose(self) -> None:
        """Close the download clients (at service stop, after the transfers ended)."""
        await self._clients.aclose()

    async def serve(self, ask: Ask, group: str, archive: ArchiveName, found: Found) -> Answer:
        """Answer ``ask``, a GET or HEAD of ``archive`` (parsed once, by the route) of
        ``group`` (advertised by ``found``): its walk (:func:`tracker.proxy.walk.request_walk`),
        performed.

        Raises RequestError (404/400) for a group that cannot be used. Upstream
        failures answer 502 with a one-line reason; a stopping tracker answers 503.
        Cancellation (client gone) before the upstream answered closes everything opened.
        """
        config = self._config()
        target_group = config.group_named(group)
        if target_group is None:
            raise RequestError(404, f"unknown group {group!r}")
        cache = self.cache()
        wanted = Wanted(target_group, archive, found, cache)
        # Only the tracker may hold it (tracker.ordering.holdings): no source to relay from.
        relayable = any(f.url for f, _source in found)
        walk = request_walk(ask.asked, self._mode(config, cache), relayable=relayable)
        return await RequestSteps(self, ask, wanted).walk(walk)

    def _mode(self, config: Config, cache: Cache | None) -> Mode:
        objects = self._objects if cache is not None else None
        bucket = None
        if objects is not None:
            bucket = Bucket(objects.tier.usable, objects.store.direct_serve)
        return Mode(
            bucket=bucket,
            share=config.cache_share_inflight,
            keep=config.cache_complete_on_disconnect,
            serve_user_agents=config.serve_user_agents,
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
        if redirect(Asked("GET", user_agent=user_agent), mode) is None:
            return None
        return await self.stored.presigned(group, archive)

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
        return await self.shared_refreshes.prefetch(target_group, cache, archive)


@attrs.define
class RequestSteps:
    """One request's executor: what the request holds while it walks (the refresh it found
    running, the lock it claimed, the refresh it read) and the answer it got. It performs
    each step of the walk with the streamer's executors and reports back."""

    run: ProxyStreamer
    ask: Ask
    wanted: Wanted
    #: The file's path in the cache (None: it cannot be cached there), from the last
    #: :class:`~tracker.proxy.walk.NeedCopy`.
    path: str | None = None
    #: The registered refresh of the file the last :class:`~tracker.proxy.walk.NeedNow` found.
    shared: SharedRefresh | None = None
    claim: Lock | Holder | None = None
    #: The refresh this request read, when it read one.
    read: SharedRefresh | None = None
    answer: Answer | None = None

    async def walk(self, walk: walks.Walk) -> Answer:
        """Perform ``walk`` to its end; the answer it ended with."""
        walk, step = walks.next_step(walk)
        while step is not None:
            walk, step = walks.next_step(walk, await self._perform(step))
        if self.answer is None:
            raise AssertionError("a request's walk ends in an answer")
        return self.answer

    async def _perform(self, step: walks.Step) -> walks.Reply:
        run, wanted = self.run, self.wanted
        match step:
            case walks.NeedCopy():
                return await self._copy()
            case walks.NeedNow(settle=settle):
                if settle:
                    await run.registry.settled(wanted.key)  # another request is claiming
                return self._now()
            case walks.NeedSize():
                return run.launcher.index_size(wanted.group.group, wanted.name)
            case walks.NeedPromoted():
                return self.read is not None and self.read.refresh.verified
            case Claim():
                self.claim = await run.registry.claim(wanted.key)
                return claimed_of(self.claim)
            case Miss():
                run.launcher.count("cache_miss")
                return False
        self.answer = await self._decided(step)
        return self.answer is not None

    async def _copy(self) -> Copy:
        cache, group, archive = self.wanted.cache, self.wanted.group.group, self.wanted.archive
        self.path = path = cache_path(cache, group, archive) if cache is not None else None
        if cache is not None and path is not None:
            wait = self.run.settings.promotion_wait
            await cache.wait_promotion(group, archive.file_name, wait)
        return copy_of(cache, path, group, archive.file_name)

    def _now(self) -> Now:
        cache, group, name = self.wanted.cache, self.wanted.group.group, self.wanted.name
        assert cache is not None  # the walk looks refreshes up only with a cache
        self.shared = self.run.registry.running(self.wanted.key)
        return Now(
            best=self.run.launcher.is_best(group, name),
            running=progress(self.shared),
            refreshing=cache.is_refreshing(group, name),
        )

    async def _decided(self, step: walks.Step) -> Answer | None:
        """Perform decision ``step`` as it says; None: it passed."""
        run, ask, shared, wanted = self.run, self.ask, self.shared, self.wanted
        stored, refreshes, launcher = run.stored, run.shared_refreshes, run.launcher
        group, archive, cache = wanted.group, wanted.archive, wanted.cache
        match step:
            case Redirect():
                return await stored.redirect(group.group, archive)
            case CacheHit() if cache is not None and self.path is not None:
                return await stored.cache_hit(cache, self.path, group.group, archive, ask)
            case FromBucket(head=head):
                return await stored.from_bucket(head, ask, group.group, archive)
            case JoinShared() if shared is not None:
                self.read = shared
                return await refreshes.join_shared(shared, ask)
            case JoinBehind() if shared is not None:
                return await refreshes.join_behind(shared, ask)
            case StartShared() | OwnRefresh() if cache is not None:
                lock = self.claim if isinstance(self.claim, Lock) and step.locked else None
                answer, self.read = await refreshes.start_and_read(wanted, step, lock, ask)
                return answer
            case FromHolder(size=size) if isinstance(self.claim, Holder):
                return await stored.from_holder(self.claim, ask, group, archive, size)
            case Gone():
                raise RequestError(404, f"{archive.file_name} is no longer held nor advertised")
            case Relay(interest=interest):
                if interest and run.on_interest is not None:
                    run.on_interest(group.group, archive.file_name)
                return await launcher.relay(launcher.job(group, ask, archive, wanted.found))
        return None


def hold_cached(index: Index, files: list[CachedFile]) -> None:
    """The disk cache now holds ``files``: the index lists those no source has any more
    (:mod:`tracker.ordering.holdings`)."""
    for group in {f.group for f in files} | set(index.holdings.groups()):
        index.hold("cache", group, [(f.name, f.size, f.mtime) for f in files if f.group == group])
