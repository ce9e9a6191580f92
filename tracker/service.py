"""The daemon: one root nursery holding the listeners, the scrape loop and signal handling.

::

    run_tracker ─┬─ public listener   (zerocopy.server.serve: hypercorn, web.api.create_app)
                 ├─ internal listener (the same, web.internal_api.create_internal_app)  [optional]
                 ├─ scrape loop       (Scraper.run)  ──► Index
                 ├─ watchdog          (sd_notify WATCHDOG=1)              [under systemd]
                 └─ signals           SIGTERM/SIGINT: graceful stop; SIGHUP: reload
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import attrs
import httpx
import trio
from quart_trio import QuartTrio

from tracker.cache.opening import OPEN_WAIT
from tracker.config.bounded import LOOK_BOUND
from tracker.config.files import signing
from tracker.config.schema import Config
from tracker.config.warnings import in_force, reload_problems, restart_needed
from tracker.core.digests import Digests
from tracker.core.text import one_line
from tracker.discovery.probing import tls_settings, unanswered_tls
from tracker.discovery.scrape import Scraper, TargetHealth, Wakeup
from tracker.discovery.targetset import named_keys
from tracker.errors import ConfigError, ConfigNotReady
from tracker.learning.sync import Learning
from tracker.measuring.rangereads import SpeedTests
from tracker.net.egress import Resolver, resolve, resolve_strangers
from tracker.net.httpclients import TlsContexts, rpc_client
from tracker.notify import Notifier, run_watchdog, watchdog_interval
from tracker.observability import folding
from tracker.observability.logs import RecentEvents, log_event
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index
from tracker.ordering.screens import SourceTrust
from tracker.ordering.sourcehistory import Rejections
from tracker.proof.archive.headproof import prove_head
from tracker.proof.background.heads import HeadProofs, proven_only
from tracker.proof.background.localfiles import LocalProofs, local_gated
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.records.attestations import Attestations
from tracker.proxy.bucketcopies import ObjectPath, object_path
from tracker.proxy.prefetch import Prefetcher
from tracker.proxy.streamer import CacheFactory, ProxyStreamer
from tracker.proxy.transfers import Transfers
from tracker.proxy.upstream import ProxySettings
from tracker.reporting import RpcFailure, ScrapeReporter, slots_kept, track_snapshot_age
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.threads import threads_running
from tracker.web.activity import ActiveRequests
from tracker.web.api import create_app
from tracker.web.delivery import Delivery
from tracker.web.deps import ApiDeps
from tracker.web.healthcheck import HealthChecker
from tracker.web.internal_api import create_internal_app
from tracker.web.listeners import INTERNAL, PUBLIC, abort_connections, open_listeners, port_of
from tracker.web.shortcuts import FastRedirects, best_source, checked_host
from tracker.web.statusgather import PAGE_EVENTS, Digest, StatusSources, gather_status
from tracker.zerocopy.connection import Connections
from tracker.zerocopy.limit import DescriptorBudget, descriptor_budget, probes_within
from tracker.zerocopy.server import hypercorn_config, serve

log = logging.getLogger("tracker.service")
Reload = Callable[[], Awaitable[None]]


@attrs.define
class Tracker:
    """The live state shared by the listeners; ``config`` is swapped whole on reload."""

    config: Config
    #: Its clock is trio's, the one clock of every time the daemon compares (measured
    #: throughputs, rejections, speed tests, what is kept across restarts).
    index: Index = attrs.field(factory=lambda: Index(clock=trio.current_time))
    metrics: Metrics = attrs.field(factory=Metrics)
    stop: trio.Event = attrs.field(factory=trio.Event)
    #: Each group whose cluster ``rpc`` failed its last ``getSlot``: its URL and why (the
    #: status page's note; docs/http-api.md, "The status page").
    rpc_failures: Mapping[str, RpcFailure] = attrs.field(factory=dict)

    def current(self) -> Config:
        """The config in force now (read per request: reloads apply at once)."""
        return self.config

    def rpcs_read(self, failures: Mapping[str, RpcFailure]) -> None:
        """Take the groups whose ``rpc`` failed the slot loop's last read."""
        self.rpc_failures = failures


@attrs.define
class Components:
    """Everything one tracker is made of, wired together by :func:`build`."""

    tracker: Tracker
    scraper: Scraper
    transfers: Transfers
    streamer: ProxyStreamer
    prefetcher: Prefetcher
    delivery: Delivery
    health: HealthChecker
    #: The public Quart app.
    app: QuartTrio
    #: What the public listener serves: ``app`` behind the short redirects' fast path.
    public: FastRedirects
    #: Range reads of the leading candidates (docs/http-api.md#speed-tests).
    speedtests: SpeedTests
    #: What the tracker learned, kept across restarts and replicas
    #: (docs/http-api.md#what-the-tracker-learned).
    learning: Learning
    #: The object-store tier, None without one.
    objects: ObjectPath | None = None
    #: Redirect mode's head reads (docs/architecture.md, "Proven archives"), None unbuilt.
    heads: HeadProofs | None = None
    #: The recent events the status page lists (a log handler, attached while running).
    events: RecentEvents = attrs.Factory(lambda: RecentEvents(PAGE_EVENTS))
    #: The statements signed with ``attest.key`` (docs/http-api.md, "Signed statements").
    attestations: Attestations = attrs.Factory(lambda: Attestations(Digests()))
    #: The checks of local files (docs/architecture.md, "Proven archives"), None unbuilt.
    local_proofs: LocalProofs | None = None

    def status_sources(self, digest: Digest | None = None) -> StatusSources:
        """What the status page reads (``digest``: SHA-256 of verified archives, by default
        the digests the byte paths record)."""
        store = self.objects.tier.status if self.objects is not None else lambda: None
        digest = digest if digest is not None else self.streamer.digests.get
        digests = self.streamer.digests

        def level(group: str, name: str) -> str | None:
            held = digests.verified(group, name)
            if held is None:
                return None
            unloadable = " (agave cannot load it)" if held.proof.unloadable else ""
            return held.proof.level.label + unloadable

        return StatusSources(
            config=self.tracker.current,
            index=self.tracker.index,
            scraper=self.scraper,
            cache=self.streamer.cache,
            listing=self.streamer.directories.listed,
            refreshes=self.streamer.refreshes,
            store_status=store,
            events=self.events,
            digest=digest,
            level=level,
            flowing=self.transfers.flowing.rate,
            attestations=self.attestations,
            sources_used=self.streamer.launcher.sources_used.shown,
            rejected=self.streamer.rejections.errors,
            rpc_failures=lambda: self.tracker.rpc_failures,
        )

    async def aclose(self) -> None:
        """Close the HTTP clients (shielded: safe while being cancelled)."""
        with trio.CancelScope(shield=True):
            await self.scraper.aclose()
            await self.streamer.aclose()


def build(
    tracker: Tracker,
    rpc: httpx.AsyncClient,
    *,
    settings: ProxySettings | None = None,
    cache_factory: CacheFactory | None = None,
    resolver: Resolver = resolve,
    on_probe: Callable[[TargetHealth], None] | None = None,
    strangers: Resolver = resolve_strangers,
    tls: TlsContexts | None = None,
) -> Components:
    """Build every component of a tracker over ``tracker``'s live state: the one place where
    they are wired (the service and the tests use it alike).

    ``settings`` (download tunables), ``cache_factory`` (the disk cache), ``resolver`` (host
    names from the network) and ``strangers`` (those discovered nodes give) are for tests to
    inject; ``on_probe`` is told each probe's result; ``tls``: the groups' TLS contexts, which
    the service loads off the event loop (None: loaded where they are asked for). Nothing
    runs yet: the caller starts ``transfers.run`` and the listeners.
    """
    current, index, metrics = tracker.current, tracker.index, tracker.metrics
    apply_trust(index, tracker.config)
    tls = tls if tls is not None else TlsContexts()  # the probes' and downloads' alike
    # A scrape round or a spawned task that failed as no rule foresaw is counted, as a
    # background loop's is (run_tracker) and a connection's (docs/architecture.md, "Failures")
    task_failed = partial(metrics.count_internal_error, "task")
    scraper = Scraper(
        tracker.config,
        index,
        on_probe=on_probe,
        resolver=resolver,
        strangers=strangers,
        tls=tls,
        on_failure=task_failed,
    )
    transfers = Transfers(on_failure=task_failed)
    budget = ChunkBudget()  # read-ahead memory shared by every file stream
    # Digests of verified archives and sources whose copy failed its check (docs/http-api.md,
    # "Verified archives"): written by the byte paths, read by the API.
    digests, rejections = Digests(), Rejections()
    index.hold_back(rejections)  # a copy that failed its check is not ranked meanwhile
    objects = object_path(tracker.config, metrics, digests)
    attestations = Attestations(digests)  # signs with attest.key: loaded now, on each reload
    attestations.configure(*signing(tracker.config.attest), now=time.time())
    if objects is not None:  # the newest incremental of every full still served stays
        objects.tier.attestations = attestations
        objects.tier.retainer.served = index.served_fulls
        objects.tier.retainer.on_listed = partial(index.hold, "bucket")
    # one, its tallies shared by every copy it lifts; each group asks its own cluster's
    # RPCs (ClusterVotes.of: groups may be mainnet and testnet)
    votes = ClusterVotes(current, rpc)
    streamer = ProxyStreamer(
        current,
        index,
        transfers,
        metrics=metrics,
        settings=settings,
        objects=objects,
        budget=budget,
        digests=digests,
        rejections=rejections,
        cache_factory=cache_factory,
        resolver=resolver,
        voter=votes,
        strangers=strangers,
        tls=tls,
    )
    prefetcher = Prefetcher(current, index, streamer.prefetch, transfers)
    # A Range request on a best file that nobody caches starts a background refresh (§9).
    streamer.on_interest = prefetcher.wanted
    rejected = metrics.count_archive_rejected if metrics is not None else None
    local_proofs = LocalProofs(
        current,
        index,
        digests,
        votes=votes,
        accounts=streamer.proof_limits,
        on_rejected=rejected,
        directories=scraper.directories,  # one read running per directory, whoever asks
    )
    delivery = Delivery(current, index, streamer=streamer, metrics=metrics, budget=budget)
    delivery.local_admit = local_proofs.admit  # a local file is served as its check proved it
    delivery.cut = transfers.cut  # past the shutdown grace, the tracker ends what is sent
    health = HealthChecker(current, index, rpc)
    status = objects.tier.status if objects is not None else lambda: None
    deps = ApiDeps(
        current,
        index,
        scraper,
        delivery,
        health,
        store_status=status,
        digests=digests,
        rejections=rejections,
        attestations=attestations,
        uncached=streamer.uncached,
        sources_used=streamer.launcher.sources_used.shown,
        clock=index.clock,
        flowing=transfers.flowing,
        local_checks=local_proofs.of_target,
        confirm_cached=streamer.confirm_cached,
    )
    app = create_app(deps, on_response=metrics.count_request)
    public = FastRedirects(app, deps, partial(best_source, index), metrics.count_request)
    speedtests = SpeedTests(current, index, streamer.clients)
    bucket = objects.tier.bucket if objects is not None else None
    learning = Learning(
        current,
        index,
        rejections,
        bucket,
        metrics=metrics,
        named=lambda: {key for group in current().target_groups for key in named_keys(group)},
    )
    heads = HeadProofs(current, index, streamer.clients, prove_head, votes=votes)
    return Components(
        tracker,
        scraper,
        transfers,
        streamer,
        prefetcher,
        delivery,
        health,
        app,
        public,
        speedtests,
        learning,
        objects,
        heads,
        attestations=attestations,
        local_proofs=local_proofs,
    )


async def load_tls(contexts: TlsContexts, config: Config) -> None:
    """Load the TLS contexts of ``config``'s clients off the event loop (at start-up and
    before a reload puts ``config`` in force: the probes' and discovery's clients are made
    then); :class:`~tracker.errors.ConfigNotReady` naming each group whose files did not
    answer (docs/configuration.md, "Paths on a hung mount")."""
    unanswered = await contexts.load(tls_settings(config), LOOK_BOUND)
    if unanswered:
        raise ConfigNotReady(unanswered_tls(config, unanswered, LOOK_BOUND))


def apply_trust(index: Index, config: Config) -> None:
    """Give the index each group's trust settings (docs/http-api.md#trust) and ranking
    (docs/ranking.md); on start and every reload."""
    for group in config.target_groups:
        trust = group.trust
        policy = SourceTrust(
            frozenset(trust.known_sources), trust.min_agreeing_sources, trust.max_slot_ahead
        )
        index.set_policy(group.group, policy)
        index.set_ranking(group.group, group.ranking)
        # Before any result of the group ranks (and at once on a reload): where it requires a
        # level, only the copies its head reads (redirect mode) or local checks proved.
        local = local_gated(config, group)
        index.rank_proven_only(group.group, proven_only(config, group), local=local)


async def run_tracker(
    config: Config,
    reload_config: Callable[[], Config],
    *,
    environ: dict[str, str] | None = None,
    held: Sequence[int] = (),
    stop_held: Callable[[], object] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or ``Tracker.stop``), then stop gracefully and return.

    ``reload_config`` loads and validates the config file again (raising ConfigError); it is
    called on SIGHUP and ``POST /reload``. ``held``: the signals that came while the daemon
    started (the command line holds them), handled first, in order, once its own receiver
    takes the signals; read then, so it may grow until that moment. ``task_status.started``
    gets the bound addresses (public first) once the listeners are bound and the first
    scrape round has started, the moment systemd is told ``READY=1``. Raises OSError when a
    listener cannot be bound. ``stop_held`` is called when the stop, past its grace, still
    waits :data:`STOP_HELD_WAIT` seconds later for calls a hung mount holds (logged as
    ``stop_held`` first); ``serve`` ends the process there.
    """
    environ = dict(os.environ) if environ is None else environ
    tracker = Tracker(config)
    tracker.metrics.set_groups(g.group for g in config.target_groups)
    notifier = Notifier.from_env(environ)
    reporter = ScrapeReporter(tracker.metrics, notifier)
    # The groups' TLS files loaded off the event loop, within the config's bound on a look:
    # one that does not answer ends the start as not ready (exit 75, retried).
    contexts = TlsContexts()
    await load_tls(contexts, config)
    sockets = open_listeners(config, environ)
    async with rpc_client() as rpc:
        parts = build(tracker, rpc, on_probe=reporter.probe_done, tls=contexts)
        try:
            # Its leftovers go before any request, with its lock: looked at and opened off
            # the event loop, bounded (docs/configuration.md, "Paths on a hung mount"); one
            # whose look does not answer ends the start as not ready (exit 75, retried).
            await parts.streamer.directories.look_at_cache(config)
            await parts.streamer.directories.open_cache(OPEN_WAIT)
        except BaseException:
            for sock in sockets.values():
                sock.close()
            await parts.aclose()
            raise
        cache = parts.streamer.cache()
        if cache is not None and cache.in_use:  # another tracker's: nothing of it touched
            for sock in sockets.values():
                sock.close()
            await parts.aclose()
            raise OSError(f"proxy_snapshot_cache_dir {cache.root}: {cache.in_use}")
        # cache_prefetch: after each scrape round, new best archives are refreshed in the
        # background (in the transfers nursery).
        parts.scraper.on_round = parts.prefetcher.after(reporter.round_done)
        scraper, transfers, streamer, health = (
            parts.scraper,
            parts.transfers,
            parts.streamer,
            parts.health,
        )
        app = parts.public

        slots_read = Wakeup()  # the cluster-slot loop's: a reload's RPCs read at once
        # Descriptors for connections, downloads and a reserve for the rest, probes included
        # (tracker/zerocopy/limit.py): the API and the scans never run out. Split once, here:
        # a reload keeps it (max_connections is the start's) and its scrape_concurrency too.
        budget = descriptor_budget(config.max_connections, config.scrape_concurrency)
        # READY=1 of the start is sent: from then on a reload is told to systemd as one.
        ready = trio.Event()

        async def reload_once() -> None:
            # SIGHUP's and POST /reload's, each told to systemd (sd_notify(3): RELOADING=1
            # with the monotonic clock, then READY=1, applied or refused; systemd/README.md).
            # A reload while the tracker starts is part of the start: READY=1 ends both.
            told = ready.is_set() and notifier.reloading()
            try:
                await logged_reload()
            finally:
                if told and not tracker.stop.is_set():  # stopping: STOPPING=1 said it all
                    notifier.ready()

        async def logged_reload() -> None:
            # a refused file is logged for either
            try:
                await apply_reload()
            except ConfigError as exc:
                log_event(log, "error", "reload_refused", problems="; ".join(exc.problems))
                raise
            except Exception as exc:  # a bug of applying it: the daemon goes on, it says so
                log.exception("reload_failed")
                reason = one_line(f"the reload failed: {type(exc).__name__}: {exc}")
                raise ConfigError([reason]) from exc

        async def apply_reload() -> None:
            # Parsed in a worker thread: a large file must not stall the API meanwhile.
            # Abandoned on cancellation (the tracker stopping): a file that hangs its read (a
            # hung network mount) must not hold the daemon's exit.
            new = await trio.to_thread.run_sync(reload_config, abandon_on_cancel=True)
            if tracker.stop.is_set():
                raise ConfigError(["the tracker is stopping: the config is not reloaded"])
            refused = reload_problems(tracker.config, new)
            if refused:  # what it would put in force, no start would take
                raise ConfigError(refused)
            # The key read again (or refused) in a worker thread, within the config load's
            # bound: on the event loop, a key on a hung mount froze every request meanwhile.
            signer = await trio.to_thread.run_sync(signing, new.attest, abandon_on_cancel=True)
            # The cache directory's real path, taken off the event loop within the same bound
            # (or refused): the config in force is kept (docs/configuration.md, "Paths on a
            # hung mount").
            await streamer.directories.look_at_cache(new)
            await load_tls(contexts, new)  # read here, off the event loop, or refused
            parts.attestations.configure(*signer, now=time.time())
            for change in restart_needed(tracker.config, new):
                log_event(log, "warning", "config_needs_restart", change=change)
            new = in_force(tracker.config, new)
            # The probes at once a start would reserve descriptors for beside the connections
            # and downloads it split, which stay: at most what that split leaves, the rest
            # at the next restart (docs/configuration.md, `scrape_concurrency`).
            probes = probes_within(budget, new.max_connections, new.scrape_concurrency)
            if probes < new.scrape_concurrency:
                change = probe_limit_change(new.scrape_concurrency, probes, budget)
                log_event(log, "warning", "config_needs_restart", change=change)
                new = attrs.evolve(new, scrape_concurrency=probes)
            old, tracker.config = tracker.config, new
            # A group moved to another RPC is screened by no cluster's slot until that one
            # answers, never by its old cluster's; the slot loop reads the new RPCs now, and
            # waits the new scrape_interval after (docs/configuration.md, a group's `rpc`).
            held = {g.group: tracker.index.cluster_slot(g.group) for g in old.target_groups}
            tracker.index.set_cluster_slots(slots_kept(old, new, held))
            slots_read.set()
            # A changed cache directory is taken now, not at the next archive request: the
            # listings say what the new one holds once it is opened, off the event loop
            # (docs/configuration.md); waited for at the reload's end, within a bound.
            opening = streamer.directories.begin_opening()
            apply_trust(tracker.index, new)
            scraper.update_config(new)
            # Requests waiting in a source's queue are let in under the new source_limits: a
            # raised max_transfers lets them in now (docs/http-api.md, "Source limits").
            streamer.clients.limits.reconsider()
            # The dropped groups' series would stay in /metrics forever, and a refresh or
            # probe of theirs that the reload left running would make them again.
            tracker.metrics.set_groups(g.group for g in new.target_groups)
            log_event(log, "info", "config_reloaded", groups=len(new.target_groups))
            for warning in new.warnings:
                log_event(log, "warning", "config_warning", problem=warning)
            await streamer.directories.opened_within(opening, OPEN_WAIT)
            # The cache's directories of the groups dropped stay (the group may come back):
            # each is named, once per change of the groups (docs/proxy.md, "Orphaned archives").
            await streamer.directories.report_orphaned()

        # One reload at a time, and those asked for meanwhile share the next one: a storm of
        # SIGHUPs or POST /reload is a reload or two, not one per request (each woke the
        # scrape loop: every source probed once per request).
        reload = SharedReload(reload_once)
        sources = parts.status_sources()
        internal = checked_host(
            create_internal_app(reload, tracker.metrics.render, partial(gather_status, sources))
        )
        # The status page lists recent failovers and rejected archives from the log.
        logging.getLogger("tracker").addHandler(parts.events)
        active = ActiveRequests(app)
        apps = {PUBLIC: active, INTERNAL: ActiveRequests(internal)}
        # a background loop's unforeseen failure is counted, as a connection's is
        task_failed = partial(tracker.metrics.count_internal_error, "task")
        try:
            async with trio.open_nursery() as guard:
                # Signals are the daemon's own until it returns, the grace included: a second
                # SIGTERM or SIGINT then ends the grace at once, a SIGHUP is not a reload (the
                # default actions, back once the handler is gone, killed it or raised
                # KeyboardInterrupt through the nursery: a traceback).
                forced = trio.Event()

                def force() -> None:  # a second signal: the grace ends now
                    forced.set()
                    transfers.cut_now()

                await guard.start(_signals, tracker, reload, force, held)
                async with trio.open_nursery() as nursery:
                    # Proxied streams run here: they outlive their requests
                    # (docs/http-api.md#archive-answers).
                    await nursery.start(transfers.run)
                    streamer.cache()  # start-up: leftover temp files go before any request
                    if parts.objects is not None:  # learns the bucket; requests need not wait
                        tier = parts.objects.tier
                        transfers.spawn(
                            supervised("object_store_startup", tier.startup, task_failed)
                        )
                        transfers.spawn(supervised("object_store_watch", tier.watch, task_failed))
                        transfers.spawn(
                            supervised("object_store_retire", tier.retire_when_due, task_failed)
                        )
                    addresses = []
                    zero_copy = Connections()  # file bodies go out with sendfile
                    parts.delivery.slots.limit = budget.downloads
                    limits = {PUBLIC: budget.connections, INTERNAL: budget.internal}
                    for role, sock in sockets.items():
                        cfg = hypercorn_config(config.shutdown_grace)
                        run = partial(
                            serve,
                            apps[role],
                            cfg,
                            sock,
                            zero_copy,
                            shutdown_trigger=tracker.stop.wait,
                            # Read at the stop: a reload may have changed it since the start.
                            grace=lambda: tracker.config.shutdown_grace,
                            max_connections=limits.get(role, budget.connections),
                            # a connection's unforeseen error costs it alone: counted
                            on_failure=partial(tracker.metrics.count_internal_error, "connection"),
                        )
                        addresses += await nursery.start(run)
                    age = partial(
                        track_snapshot_age,
                        health,
                        tracker.metrics,
                        tracker.current,
                        tracker.index.set_cluster_slots,
                        slots_read,
                        tracker.rpcs_read,
                    )
                    background = await nursery.start(
                        _background,
                        scraper,
                        tracker,
                        reload,
                        notifier,
                        environ,
                        supervised("snapshot_ages", age, task_failed),
                        supervised("speed_tests", parts.speedtests.run, task_failed),
                        supervised("learned_sync", parts.learning.run, task_failed),
                        supervised("folded_lines", report_folded_lines, task_failed),
                        *(
                            [supervised("head_reads", parts.heads.run, task_failed)]
                            if parts.heads is not None
                            else []
                        ),
                        *(
                            [supervised("local_proofs", parts.local_proofs.run, task_failed)]
                            if parts.local_proofs is not None
                            else []
                        ),
                    )
                    notifier.ready()
                    ready.set()
                    log_event(log, "info", "listening", addresses=",".join(addresses))
                    task_status.started(addresses)
                    await tracker.stop.wait()
                    notifier.stopping()
                    grace = tracker.config.shutdown_grace
                    log_event(log, "info", "stopping", grace_seconds=grace)
                    background.cancel()
                    transfers.close(grace)
                    # The listeners drain for up to `grace` (each reads it at the stop, as
                    # here); the guard then ends what a stalled client still holds.
                    ports = {port_of(a) for a in addresses}
                    guard.start_soon(
                        _enforce_grace, grace, ports, apps, nursery.cancel_scope, forced, stop_held
                    )
                guard.cancel_scope.cancel()
        finally:
            logging.getLogger("tracker").removeHandler(parts.events)
            await parts.aclose()
    folding.FOLDER.flush(final=True)  # what the last window folded, before the last line
    log_event(log, "info", "stopped")


#: Seconds the stop waits, once past its grace everything was cancelled, for what a call no
#: cancellation reaches still holds (a thread in a hung mount's fsync, rename or unlink;
#: docs/configuration.md, ``shutdown_grace``), before ``serve`` ends the process.
STOP_HELD_WAIT = 10.0


def probe_limit_change(wanted: int, probes: int, budget: DescriptorBudget) -> str:
    """The ``config_needs_restart`` line of a reload whose ``scrape_concurrency`` (``wanted``)
    the descriptors split at start leave room for only ``probes`` of. Pure."""
    return (
        f"scrape_concurrency: {wanted} -> {probes} until the next restart: the descriptor"
        f" limit (LimitNOFILE) was split at start for {budget.connections} connections and"
        f" {budget.downloads} downloads, which leave room for {probes} probes at once"
    )


async def _enforce_grace(
    grace: float,
    ports: set[int],
    apps: dict[str, ActiveRequests],
    servers: trio.CancelScope,
    forced: trio.Event,
    stop_held: Callable[[], object] | None = None,
) -> None:
    """Close idle connections during the grace period; past it (or once ``forced``: a second
    SIGTERM or SIGINT), every connection left, and everything still running is cancelled.
    What does not end :data:`STOP_HELD_WAIT` seconds later is held by a call no
    cancellation reaches (a thread in a hung mount's fsync or rename): ``stop_held`` is
    logged with what the threads run, and ``stop_held()`` called.

    hypercorn keeps idle keep-alive connections for its whole graceful timeout, so they are
    shut down here as soon as they have no request in flight. It also sends in a shielded
    scope, so a client that stopped reading is immune to the cancellation of that timeout;
    shutting its socket down is not. Cancelled as soon as the listeners have drained.
    """
    deadline = trio.current_time() + grace
    while trio.current_time() < deadline and not forced.is_set():
        busy = set().union(*(a.peers() for a in apps.values()))
        abort_connections(ports, spare=busy)
        with trio.move_on_after(0.1):
            await forced.wait()
    aborted = abort_connections(ports)
    log_event(log, "warning", "connections_aborted", count=aborted, grace_seconds=grace)
    await trio.sleep(2)
    servers.cancel()
    await trio.sleep(STOP_HELD_WAIT)
    threads = threads_running()
    log_event(log, "warning", "stop_held", seconds=STOP_HELD_WAIT, threads=", ".join(threads))
    if stop_held is not None:
        stop_held()


@attrs.define
class _Turn:
    """One run of a :class:`SharedReload`, and what the callers it serves are told."""

    done: trio.Event = attrs.Factory(trio.Event)
    #: The refusal's lines (ConfigError), None when it was applied.
    problems: list[str] | None = None
    #: No outcome until set: its caller was cancelled (its client left), a sharer asks again.
    unfinished: bool = True


class SharedReload:
    """``reload`` run one at a time, a call made while another waits for its turn sharing
    that one (its outcome, a refusal's ConfigError included): it reads the file after
    every call it serves was made, so each sees the file as it was when it asked. A storm
    of reloads is then the one running and one after it, however many came."""

    def __init__(self, reload: Reload) -> None:
        self._reload = reload
        self._running = trio.Lock()
        #: The turn waiting for the one running, which later calls share.
        self._next: _Turn | None = None

    async def __call__(self) -> None:
        while True:
            turn = self._next
            if turn is None:
                await self._take_turn()
                return
            await turn.done.wait()
            if turn.problems is not None:
                raise ConfigError(list(turn.problems))
            if not turn.unfinished:
                return
            # its caller was cancelled (its client left): this call asks again

    async def _take_turn(self) -> None:
        turn = self._next = _Turn()
        try:
            async with self._running:
                # from here the file is read: a call made now needs a turn of its own
                self._next = None
                try:
                    await self._reload()
                except ConfigError as exc:
                    turn.problems = list(exc.problems)
                    raise
                turn.unfinished = False
        finally:
            if self._next is turn:  # cancelled while waiting for the one running
                self._next = None
            turn.done.set()


#: The first wait before a background task that failed is run again; it doubles to
#: :data:`MAX_RESTART_AFTER`.
RESTART_AFTER = 1.0
MAX_RESTART_AFTER = 60.0


async def report_folded_lines() -> None:
    """Log what each window of the folded log lines folded once it ended, every window
    (:mod:`tracker.observability.folding`): a flood's summary comes within a window of its
    end, not only with the next line of its kind."""
    while True:
        await trio.sleep(folding.WINDOW)
        folding.FOLDER.flush()


def supervised(
    name: str,
    task: Callable[[], Awaitable[None]],
    on_failure: Callable[[], object] | None = None,
) -> Callable[[], Awaitable[None]]:
    """``task``, run again when it raised what no rule of its own caught (logged as
    ``task_failed`` with its traceback, ``on_failure()`` called: the service counts it),
    after a wait from :data:`RESTART_AFTER` doubling to :data:`MAX_RESTART_AFTER`; done when
    ``task`` returns. Hostile input costs the answer that carried it, never the process
    (docs/architecture.md, "Failures"): a background loop's failure, a bug a review has not
    found yet, must not end the daemon that serves what it holds, nor stop the loop for
    good; nor go unseen, the loop failing again at each run. Cancellation is not caught."""

    async def run() -> None:
        wait = RESTART_AFTER
        while True:
            began = trio.current_time()
            try:
                await task()
                return
            except Exception as exc:
                if trio.current_time() - began > MAX_RESTART_AFTER:
                    wait = RESTART_AFTER  # it ran a while: a new failure, not the same one
                if on_failure is not None:
                    on_failure()
                log_event(log, "error", "task_failed", task=name, exc_info=exc, retry_in=wait)
            await trio.sleep(wait)
            wait = min(2 * wait, MAX_RESTART_AFTER)

    return run


async def _background(
    scraper: Scraper,
    tracker: Tracker,
    reload: Reload,
    notifier: Notifier,
    environ: dict[str, str],
    *tasks: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The tasks that end when the tracker stops: scrape loop, signals, watchdog, ``tasks``."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(scraper.run)
            for task in tasks:
                nursery.start_soon(task)
            interval = watchdog_interval(environ)
            if interval:
                await nursery.start(run_watchdog, notifier, interval)
            task_status.started(scope)


#: What a signal does to the daemon (:func:`signal_action`).
SignalAction = Literal["stop", "force", "reload", "reload_ignored"]


def signal_action(signum: int, stopping: bool) -> SignalAction:
    """What ``signum`` does, the daemon ``stopping`` or not: SIGHUP reloads the config (not
    while stopping: the reload would race the stop); SIGTERM and SIGINT stop it gracefully,
    a second one ends the grace at once (``force``)."""
    if signum == signal.SIGHUP:
        return "reload_ignored" if stopping else "reload"
    return "force" if stopping else "stop"


async def _signals(
    tracker: Tracker,
    reload: Reload,
    force: Callable[[], object],
    held: Sequence[int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGTERM, SIGINT and SIGHUP as :func:`signal_action` says, a reload in a task of its
    own (a config file that is slow to read holds no later signal back); first those
    ``held`` while the daemon started; until cancelled (the tracker has stopped).
    Started, not scheduled: from READY=1 on, SIGTERM must be the daemon's own (a handler
    installed only later leaves systemd's stop to the default: killed)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        # from here on the receiver gets them: what was held until now is all there is
        early = list(held)
        task_status.started()
        async with trio.open_nursery() as reloads:

            def act(signum: int) -> None:
                name = signal.Signals(signum).name
                action = signal_action(signum, tracker.stop.is_set())
                if action == "reload":
                    reloads.start_soon(_reload_on_signal, reload)
                elif action == "reload_ignored":
                    log_event(log, "info", "reload_ignored", reason="the tracker is stopping")
                elif action == "force":
                    log_event(log, "warning", "stop_forced", signal=name)
                    force()
                else:
                    tracker.stop.set()

            for signum in early:
                act(signum)
            async for signum in signals:
                act(signum)


async def _reload_on_signal(reload: Reload) -> None:
    """One SIGHUP's reload: a refused file (logged by ``reload``) leaves the config in use."""
    with contextlib.suppress(ConfigError):
        await reload()
