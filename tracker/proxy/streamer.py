"""Proxy mode's byte path: the route of each archive request, and the proxy's parts.

:class:`ProxyStreamer` is the :class:`tracker.web.delivery.ByteStreamer` of proxy mode: it
owns the disk caches, the download clients and the executors. :meth:`Route.answer` is one
request's route, its steps in order in one function over the pure decisions of
:mod:`tracker.proxy.decisions` (docs/architecture.md, "One request's path" and "The byte
path as a plan"). :meth:`ProxyStreamer.prefetch` starts a refresh with no client
(``cache_prefetch``, :meth:`tracker.proxy.refreshing.Refreshes.prefetch`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import attrs

from tracker.cache.opening import CacheDirectories
from tracker.cache.refresh import Refresh
from tracker.cache.store import Cache, CachedFile, RefreshProgress, hold_cached
from tracker.config.schema import Config, TargetGroup
from tracker.core.digests import Digests, Verified
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import RequestError
from tracker.net.egress import Resolver, policy_of, resolve, resolve_strangers
from tracker.net.httpclients import TlsContexts
from tracker.objectstore.locks import Holder, Lock
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index
from tracker.ordering.sourcehistory import Rejections
from tracker.proof.accounts.budget import (
    CACHE_TEMP,
    AccountsLimits,
    MemoryBudget,
    WorkerSlots,
    default_workers,
    shared_limits,
)
from tracker.proof.levels import Level, Voters
from tracker.proxy import storedcopies as copies
from tracker.proxy.ask import Ask
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.decisions import (
    Asked,
    Claimed,
    Copy,
    Decision,
    Found,
    Mode,
    Now,
    Start,
    Step,
    claimed,
    early_head,
    fallback,
    on_miss,
    redirect,
    stored,
)
from tracker.proxy.refreshing import Refreshes, claimed_of
from tracker.proxy.relay import relay_answer
from tracker.proxy.storedcopies import Looked, copy_of, look
from tracker.proxy.transfers import Launcher, Transfers
from tracker.proxy.upstream import CHANNEL_PIECES, DownloadClients, ProxySettings
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.httpanswer import Answer, text_answer

CacheFactory = Callable[[str], Cache]
#: Seconds a ``Range`` reader is asked to wait beyond a refresh's remaining bytes at its rate
#: (the check's tail), or in all while nothing measured the rate yet (:meth:`Route.checking`).
CHECKING_RETRY = 5.0
#: The longest ``retry-after`` such a reader is given.
MAX_RETRY = 600.0


class ProxyStreamer:
    """Answers archive requests in proxy mode, with the disk cache when one is configured.

    ``config`` returns the live config (the cache directory is read per request, so a reload
    that changes it takes effect; each directory gets its own :class:`Cache`, cleaned up on
    first use, and only the configured one tells the index and the digests what it holds).
    ``objects``: the object-store tier; ``budget``: the read memory of cache hits;
    ``digests`` and ``rejections``: what the archive checks concluded; ``voter``: the
    cluster's votes that lift the cached copies (None: not asked). The seams tests inject
    faults through: ``cache_factory`` builds a Cache for a directory, ``resolver`` looks up
    host names that came from the network. ``tls``: the groups' TLS contexts, loaded off the
    event loop (:class:`~tracker.net.httpclients.TlsContexts`).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        transfers: Transfers,
        *,
        metrics: Metrics | None = None,
        settings: ProxySettings | None = None,
        objects: ObjectPath | None = None,
        budget: ChunkBudget | None = None,
        digests: Digests | None = None,
        rejections: Rejections | None = None,
        cache_factory: CacheFactory | None = None,
        resolver: Resolver = resolve,
        voter: Voters | None = None,
        strangers: Resolver = resolve_strangers,
        tls: TlsContexts | None = None,
    ) -> None:
        settings = settings if settings is not None else ProxySettings()
        self._config = config
        self._index = index
        #: Digests of the archives held verified, and sources whose copy failed its check
        #: (docs/http-api.md, "Verified archives").
        self.digests = digests if digests is not None else Digests()
        self.rejections = rejections if rejections is not None else Rejections()
        self._transfers = transfers
        self._metrics = metrics
        self._clients = DownloadClients(
            settings,
            policy=lambda: policy_of(self._config().egress),
            resolver=resolver,
            on_queue=metrics.source_queue_event if metrics is not None else None,
            strangers=strangers,
            tls=tls,
        )
        #: Memory shared by the streams passed through Python (tracker/proxy/channel.py).
        channel_budget = ChunkBudget(
            total=settings.channel_budget,
            smallest=settings.smallest_read,
            largest=settings.read_size,
            per_stream=CHANNEL_PIECES,
        )
        self.launcher = Launcher(
            config,
            index,
            transfers,
            settings,
            metrics,
            self.rejections,
            self._clients,
            channel_budget=channel_budget,
        )
        #: The object-store tier (docs/http-api.md#with-an-object-store-object_store); None
        #: without one.
        self.objects = objects
        #: The read memory of cache hits.
        self.budget = budget
        self.shared_refreshes = Refreshes(self.launcher, objects, budget)
        self._cache_factory = cache_factory or self._default_cache
        self._voter = voter
        #: The cache of each directory used, which one is configured, and their openings at
        #: start-up and at each reload (docs/configuration.md, ``proxy_snapshot_cache_dir``).
        self.directories = CacheDirectories(
            config,
            index,
            self.digests,
            made=self._made,
            limits=self._accounts_limits,
            in_force=self.cache,
            metrics=metrics,
        )
        #: The one memory budget of every accounts proof (docs/architecture.md, "Bounded
        #: memory"): concurrent checks (groups, refreshes, the start-up check) share it.
        self._proof_budget: MemoryBudget | None = None
        self._proof_slots: WorkerSlots | None = None
        self._proof_frames: WorkerSlots | None = None
        self._proof_workers = 0
        #: Told ``(group, name)`` when a Range request shows interest in a best file that is
        self.on_interest: Callable[[str, str], object] | None = None

    @property
    def clients(self) -> DownloadClients:
        """The upstream download clients (credentials per origin, the egress policy): every
        request to a source goes through them (speed tests too)."""
        return self._clients

    @property
    def settings(self) -> ProxySettings:
        """The proxy's tunables (one value, given at construction)."""
        return self.launcher.settings

    def _default_cache(self, root: str) -> Cache:
        metrics = self._metrics
        if metrics is None:
            return Cache(root)

        def on_size(total: int) -> None:
            if root == self.directories.current:  # an old directory's late promotion
                metrics.set_cache_size(total)

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

    def _loadable_by(self, group: str) -> str | None:
        """The validators that must be able to load ``group``'s archives before they are
        cached or served (its ``trust.loadable_by``, docs/http-api.md)."""
        found = self._config().group_named(group)
        return found.trust.loadable_by if found is not None else None

    def cache(self) -> Cache | None:
        """The cache of the current config (None without one, or while its directory is
        opened); made and cleaned on first use.

        The service opens it first, off the event loop, at start-up and at each reload
        (:meth:`CacheDirectories.look_at_cache`, :meth:`CacheDirectories.open_cache`), so
        that leftover temp files go before any request arrives; a directory not opened so is
        made here (a test's direct call). Asked by every request: it reads what
        :attr:`directories` keeps, and calls it only to change it (a reload's switch, a
        directory made here), so that a request's path does not pass its life cycle.
        """
        config, directories = self._config(), self.directories
        configured = config.proxy_snapshot_cache_dir
        if not (config.proxy_snapshot_downloads and configured):
            if directories.current is not None:  # a reload turned the cache off: none now
                directories.switch(None)
            return None
        # by its real path: a reload to another spelling of the same directory (a symbolic
        # link to it) made a second cache of it, whose start-up removed the temp files of
        # every refresh in flight, and a second refresher of one file
        root = directories.resolved.get(configured) or directories.real_path(configured)
        if root in directories.opening:  # its opening has not answered yet: nothing is used
            return None
        cache = directories.caches.get(root)
        if cache is not None and cache.in_use and root != directories.current:
            cache = None  # a reload back to a directory another tracker held: asked again
        if cache is None:
            cache = directories.made_here(root, config)
        elif root != directories.current:  # a reload back to a directory used before
            directories.switch(root)
            if not cache.in_use:  # another tracker's files are not this one's
                # Listed here, blocking, only on a test's direct call: the service's reload
                # switched and listed it in a thread (CacheDirectories.begin_opening).
                cache.tell(cache.measure())
        if cache.ops.min_free != config.proxy_snapshot_cache_min_free:  # set, or reloaded
            cache.ops = attrs.evolve(cache.ops, min_free=config.proxy_snapshot_cache_min_free)
        if root in directories.rechecking and self._transfers.spawn(cache.recheck):
            directories.rechecking.discard(root)  # files found unchecked are checked once, now
        return cache

    def _made(
        self,
        root: str,
        config: Config,
        limits: AccountsLimits | None,
        in_flight: Callable[[], frozenset[str]],
    ) -> tuple[Cache, CacheDigests]:
        """A cache of the directory ``root`` for ``config`` (its accounts proofs' ``limits``)
        and its own digests, not cleaned yet nor told to anyone (blocking: ``Cache`` takes
        its real path). ``in_flight``: the temp files of the refreshes in flight elsewhere,
        which its start-up leaves."""
        cache = self._cache_factory(root)
        digests = CacheDigests(self.digests, partial(self._is_current, root))
        cache.verify_with(
            config.verify_archives,
            digests,
            self._cached_copy_rejected,
            self._required_level,
            limits,
            self._voter,
            self._loadable_by,
        )
        cache.served = self._index.served_fulls
        cache.in_flight_elsewhere = in_flight
        cache.on_files = partial(self._cache_files, root)
        cache.groups = self._group_names
        return cache, digests

    def _group_names(self) -> frozenset[str]:
        """The names of the configured groups: a cache directory none names is orphaned."""
        return frozenset(group.group for group in self._config().target_groups)

    def serving_cache(self) -> Cache | None:
        """The cache requests and prefetches use: :meth:`cache`, but None while another
        tracker holds its directory (docs/configuration.md, ``proxy_snapshot_cache_dir``:
        nothing there is this one's to read, write or evict; every request streams
        uncached, and the status page says why)."""
        cache = self.cache()
        return None if cache is None or cache.in_use else cache

    def _is_current(self, root: str) -> bool:
        return root == self.directories.current

    def _cache_files(self, root: str, files: list[CachedFile]) -> None:
        """The cache at ``root`` now holds ``files``: the index lists those of configured
        groups while it is the configured one (an orphaned group's archives are never
        listed: a request of its group is refused, docs/proxy.md, "Orphaned archives"),
        each once its check passed (:meth:`tracker.cache.store.Cache.held_checked`)."""
        if root == self.directories.current:
            groups, cache = self._group_names(), self.directories.caches.get(root)
            checked: list[CachedFile] = []
            rechecking: list[CachedFile] = []
            for f in files:
                if f.group in groups:
                    passed = cache is None or cache.held_checked(f.group, f.name)
                    (checked if passed else rechecking).append(f)
            hold_cached(self._index, checked, rechecking)

    def proof_limits(self) -> AccountsLimits | None:
        """The limits of the tracker's accounts proofs outside the cache's refreshes (local
        files), sharing the cache's budget and workers; None with ``prove_accounts`` off."""
        config = self._config()
        if not config.prove_accounts:
            return None
        return self._accounts_limits(config.proxy_snapshot_cache_dir or None)

    def _accounts_limits(self, root: str | None) -> AccountsLimits:
        """The limits of the accounts proofs of the cache at ``root`` (None: no cache): the
        tracker's one shared budget, worker processes (``proof_workers``) and frame threads,
        the temporary directory (``.accounts-proof`` in the cache directory unless
        ``prove_accounts_temp_dir`` says where; without either, the system's), the
        operator's bound."""
        config = self._config()
        total, workers = config.prove_accounts_memory, config.proof_workers or default_workers()
        budget, slots = self._proof_budget, self._proof_slots
        if (
            budget is None
            or slots is None
            or (budget.total, self._proof_workers) != (total, workers)
        ):
            # A reload that changes either starts a new budget; running proofs keep theirs.
            budget, slots, self._proof_frames = shared_limits(total, workers)
            self._proof_budget, self._proof_slots = budget, slots
            self._proof_workers = workers
            if self._metrics is not None:
                self._metrics.proofs.budget = lambda: budget
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
            frames=self._proof_frames,
            # in the cache's directory the spill never takes the room kept for its refreshes
            keep_free=config.proxy_snapshot_cache_min_free if in_cache else 0,
        )

    async def confirm_cached(self, group: str, name: str) -> None:
        """Forget the digest of the disk cache's copy of ``name`` of ``group`` when the file
        under its name is no longer that copy (:meth:`Cache.confirm`; docs/http-api.md,
        "Verified archives"). RequestError(503) when the cache directory hangs."""
        cache = self.cache()
        if cache is not None:
            await cache.confirm(group, name)

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
        """The disk cache's refreshes in flight, each with the clients reading it now: the
        configured directory's first, then those a reload left running in a directory used
        before (they end there, docs/configuration.md, ``proxy_snapshot_cache_dir``)."""
        current = self.cache()
        older = [c for c in self.directories.caches.values() if c is not current]
        return [r for c in [current, *older] if c is not None for r in c.refreshes()]

    async def aclose(self) -> None:
        """Close the download clients (at service stop, after the transfers ended)."""
        await self._clients.aclose()

    async def serve(self, ask: Ask, group: str, archive: ArchiveName, found: Found) -> Answer:
        """Answer ``ask``, a GET or HEAD of ``archive`` (parsed once, by the route) of
        ``group`` (advertised by ``found``): its route, :meth:`Route.answer`.

        Raises RequestError (404/400) for a group that cannot be used. Upstream
        failures answer 502 with a one-line reason; a stopping tracker answers 503.
        Cancellation (client gone) before the upstream answered closes everything opened.
        """
        config = self._config()
        target_group = config.group_named(group)
        if target_group is None:
            raise RequestError(404, f"unknown group {group!r}")
        cache = self.serving_cache()
        mode = self._mode(config, cache)
        if cache is not None and cache.checked.verify:  # docs/architecture.md, "The release rule"
            strict = cache.checked.required(group) >= Level.ACCOUNTS
            mode = attrs.evolve(mode, strict=strict)
        return await Route(self, ask, target_group, archive, found, cache, mode).answer()

    def _mode(self, config: Config, cache: Cache | None) -> Mode:
        objects = self.objects if cache is not None else None
        return Mode(
            bucket=objects is not None,
            store_up=objects is None or objects.tier.usable,
            direct_serve=objects is None or objects.store.direct_serve,
            share=config.cache_share_inflight,
            keep=config.cache_complete_on_disconnect,
            serve_user_agents=config.serve_user_agents,
        )

    async def bucket_location(self, group: str, name: str, user_agent: str) -> str | None:
        """The 303's location :meth:`serve` would answer a GET of ``name`` with from the
        object store (counted as such), or None when it would answer otherwise (then call
        :meth:`serve`). Never raises for a bad name or group: None."""
        config = self._config()
        mode = self._mode(config, self.serving_cache())
        archive = parse_archive_name(name)
        if config.group_named(group) is None or archive is None or archive.file_name != name:
            return None
        if not redirect(Asked("GET", user_agent=user_agent), mode):
            return None
        return await copies.presigned(self.launcher, self.objects, group, archive)

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
        cache = self.serving_cache()
        archive = parse_archive_name(name)
        if cache is None or target_group is None or archive is None:
            return False
        return await self.shared_refreshes.prefetch(target_group, cache, archive)


@attrs.define(eq=False)
class Route:
    """One request of ``archive`` of ``group`` (advertised by ``found``) in proxy mode, and
    what it holds while it goes: its look at the disk cache (the path, the copy opened), the
    refresh running, the lock it claimed, the refresh it read, the index's size."""

    run: ProxyStreamer
    ask: Ask
    group: TargetGroup
    archive: ArchiveName
    found: Found
    cache: Cache | None
    mode: Mode
    looked: Looked | None = None
    shared: Refresh | None = None
    lock: Lock | Holder | ObjectInfo | None = None
    read: Refresh | None = None
    size: int = 0

    @property
    def relayable(self) -> bool:
        """Some source of the file can be asked (only the tracker may hold it,
        tracker.ordering.index.Holdings: then there is nothing to relay)."""
        return any(f.url for f, _source in self.found)

    async def answer(self) -> Answer:
        """The request's steps, in order: each decision is asked once the lookup it needs is
        done (what it reads can change while the request waits), and a decision that
        passes (:meth:`perform` gives None) hands on to the next."""
        asked, mode = self.ask.asked, self.mode
        # 1. The bucket's 303, before any file system work.
        if redirect(asked, mode):
            answer = await self.perform(Step.REDIRECT)
            if answer is not None:
                return answer
        # 2. The stored copies in order, once a promotion of the file in flight ended.
        for step in stored(asked, mode, await self.copy()):
            if step.relays:  # the file cannot be cached here
                return await self.relay(step)
            if step is Step.MISS:
                break
            answer = await self.perform(step)
            if answer is not None:
                return answer
        # 3. A miss: what runs now decides; a start carries the early head the index's size
        # allows.
        self.missed()
        decision = on_miss(asked, mode, await self.now(settle=mode.shares))
        if decision is Step.CLAIM:
            claim = await self.claim()
            decision = claimed(asked, mode, claim, self.index_size())
        if isinstance(decision, Start):
            decision = attrs.evolve(decision, early=early_head(asked, self.index_size()))
        if isinstance(decision, Step) and decision.relays:
            return await self.relay(decision)
        answer = await self.perform(decision)
        if answer is not None:
            return answer
        # 4. It passed. A refresh it read may have been promoted meanwhile: a cache hit.
        read = decision is Step.JOIN_SHARED or isinstance(decision, Start)
        if read and self.promoted() and await self.copy() == "servable":
            answer = await self.perform(Step.CACHE_HIT)
            if answer is not None:
                return answer
        # 5. Otherwise what is true now decides the relay; under a strict level a request
        # that may read a refresh never gets a source's unchecked bytes: it reads the one
        # running now or starts one, else it is asked to come again.
        now = await self.now()
        if mode.strict and asked.method == "GET" and now.best:
            again = on_miss(asked, mode, now)
            passes = again is Step.CLAIM or (isinstance(again, Step) and again.relays)
            answer = None if passes else await self.perform(again)
            if answer is not None:
                return answer
            reason = "the refresh of this file ended before it could be read; try again"
            return text_answer(503, reason, retry=1.0)
        return await self.relay(fallback(asked, now))

    async def relay(self, step: Step) -> Answer:
        """The last step: a relay, or 404 when no source is left to ask."""
        answer = await self.perform(step if self.relayable else Step.GONE)
        if answer is None:
            raise AssertionError("a relay answers")
        return answer

    # -- the lookups ---------------------------------------------------------------------------

    async def copy(self) -> Copy:
        """What the disk cache may hold of the file, after a promotion of it in flight: its
        path looked up and, a copy that may be served, opened, in one thread
        (:func:`tracker.proxy.storedcopies.look`; the hit takes it)."""
        cache, group, archive = self.cache, self.group.group, self.archive
        if cache is None:
            return copy_of(None, None, servable=False)
        await cache.wait_promotion(group, archive.file_name, self.run.settings.promotion_wait)
        servable = cache.servable(group, archive.file_name)
        self.looked = looked = await look(cache, group, archive, opens=servable)
        return copy_of(cache, looked.path, servable)

    def missed(self) -> None:
        self.run.launcher.count("cache_miss")

    async def now(self, *, settle: bool = False) -> Now:
        """The index and the refreshes of the file now; ``settle``: first wait until no
        other request here is asking the bucket for the file's lock."""
        refreshes, cache, group, name = (
            self.run.shared_refreshes,
            self.cache,
            self.group.group,
            self.name,
        )
        assert cache is not None  # refreshes are looked up only with a cache
        if settle:
            await refreshes.settled(self.key)
        # any refresh of it under a strict level, its own starter's only included
        self.shared = shared = cache.running(group, name, any_refresh=self.mode.strict)
        running = None if shared is None else (shared.size, shared.written)
        return Now(
            best=self.run.launcher.is_best(group, name),
            running=running,
            refreshing=cache.is_refreshing(group, name),
            ends_held=shared is not None and shared.holds_range_ends,
        )

    async def claim(self) -> Claimed:
        """Ask the bucket for the file's lock (other requests of the file wait meanwhile)."""
        self.lock = await self.run.shared_refreshes.claim(self.key)
        return claimed_of(self.lock)

    def index_size(self) -> int:
        """The index's size of the file (0: unknown)."""
        self.size = self.run.launcher.index_size(self.group.group, self.name)
        return self.size

    def promoted(self) -> bool:
        """The refresh this request read was promoted into the cache meanwhile."""
        return self.read is not None and self.read.verified

    @property
    def name(self) -> str:
        return self.archive.file_name

    @property
    def key(self) -> tuple[str, str, str]:
        """The file's refreshes' key: cache root, group, file name (only with a cache)."""
        assert self.cache is not None
        return (self.cache.root, self.group.group, self.name)

    def checking(self) -> Answer:
        """503 to a ``Range`` GET under a strict level while no checked copy is held
        (:attr:`Step.CHECKING`), its ``retry-after`` the refresh's remaining bytes at its
        rate so far; a background refresh is started when none runs."""
        shared, run = self.shared, self.run
        if shared is None and run.on_interest is not None:
            run.on_interest(self.group.group, self.name)
        retry = CHECKING_RETRY
        if (refresh := shared) is not None:
            # Over monotonic seconds: a step of the wall clock must not move it.
            rate = refresh.written / max(1e-3, refresh.elapsed())
            if rate > 0:
                retry = min(MAX_RETRY, CHECKING_RETRY + refresh.remaining / rate)
        reason = "the file is being fetched and checked; its ranges are served once it passed"
        return text_answer(503, reason, retry=retry)

    # -- the decisions -----------------------------------------------------------------------

    async def perform(self, decision: Decision) -> Answer | None:
        """Perform ``decision`` as it says; None: it passed."""
        run, ask, shared, group, archive = self.run, self.ask, self.shared, self.group, self.archive
        cache, looked = self.cache, self.looked
        if decision is Step.CACHE_HIT and cache is not None and looked is not None:
            # First, on its own: a hit reads nothing of the transfers nor the refreshes.
            metrics, name, self.looked = run.launcher.metrics, group.group, None  # taken
            return await copies.cache_hit(metrics, run.budget, cache, looked, name, archive, ask)
        refreshes, launcher, objects = run.shared_refreshes, run.launcher, run.objects
        match decision:
            case Step.REDIRECT:
                return await copies.redirect(launcher, objects, group.group, archive)
            case Step.FROM_BUCKET:
                return await copies.from_bucket(launcher, objects, ask, group.group, archive)
            case Step.JOIN_SHARED if shared is not None:
                self.read = shared
                return await refreshes.join_shared(shared, ask)
            case Step.JOIN_BEHIND if shared is not None:
                return await refreshes.join_behind(shared, ask)
            case Start() if cache is not None:
                lock = self.lock if isinstance(self.lock, Lock) and decision.locked else None
                answer, self.read = await refreshes.start_and_read(
                    group, archive, cache, decision, lock, ask
                )
                return answer
            case Step.FROM_HOLDER if isinstance(self.lock, Holder):
                holder, size = self.lock, self.size
                return await copies.from_holder(
                    launcher, objects, holder, ask, group, archive, size
                )
            case Step.CHECKING:
                return self.checking()
            case Step.GONE:
                raise RequestError(404, f"{self.name} is no longer held nor advertised")
            case Step.RELAY | Step.RELAY_INTEREST:
                if decision is Step.RELAY_INTEREST and run.on_interest is not None:
                    run.on_interest(group.group, self.name)
                return await relay_answer(launcher, launcher.job(group, ask, archive, self.found))
        return None


class CacheDigests(Digests):
    """One cache directory's digests, told on to the tracker's ``shared`` ones while
    ``current()`` says it is the configured directory: a reload to another directory must not
    leave this one's digests (or its later promotions') on copies the cache does not hold
    (docs/http-api.md, "Verified archives")."""

    def __init__(self, shared: Digests, current: Callable[[], bool]) -> None:
        super().__init__()
        self._shared = shared
        self._current = current

    def hold(self, holder: str, group: str, name: str, value: Verified) -> None:
        super().hold(holder, group, name, value)
        if self._current():
            self._shared.hold(holder, group, name, value)

    def drop(self, holder: str, group: str, name: str) -> None:
        super().drop(holder, group, name)
        if self._current():
            self._shared.drop(holder, group, name)
