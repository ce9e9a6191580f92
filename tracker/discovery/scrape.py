"""The scrape loop: which targets exist, probing them on an interval, and their health.

Every ``scrape_interval`` the target set is rebuilt from the config (``file_targets`` files are
re-read, Consul is asked: :mod:`~tracker.discovery.targetset`), diffed against the running set
(:mod:`~tracker.discovery.roster`), and every target is probed concurrently (at most
``scrape_concurrency`` at once, each under ``scrape_timeout``: :mod:`~tracker.discovery.probing`).
Each result is handed on as soon as its probe ends, so a hanging target delays nobody; during
a round the index takes them in batches (:mod:`~tracker.discovery.batches`). Which targets a
round probes, and in which order, is :func:`~tracker.discovery.schedule.round_plan`'s: a
discovered node that gets no probe slot before the round's interval ends is left for the
next round, so a round lasts about ``scrape_interval`` plus ``scrape_timeout`` at most
(docs/architecture.md, "Scrape rounds").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from tracker.config.schema import Config
from tracker.core.snapshots import SnapshotInfo
from tracker.discovery.batches import ResultBatches
from tracker.discovery.http import SizeMemo
from tracker.discovery.probing import Probes
from tracker.discovery.roster import (
    Roster,
    Target,
    TargetHealth,
    mark_blocked,
    mark_deferred,
    mark_down,
    mark_up,
)
from tracker.discovery.schedule import round_plan
from tracker.discovery.targetset import (
    Moved,
    TargetFinder,
    credentials_moved,
    left_behind,
    rpc_keys,
)
from tracker.errors import EgressRefused, ProbeError, first_leaf
from tracker.net.egress import Resolver, resolve, resolve_strangers
from tracker.net.httpclients import TlsContexts
from tracker.net.limits import exhausted
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.ordering.index import Index, TargetKey
from tracker.serving.threads import DirectoryThreads

__all__ = ["Scraper", "Target", "TargetHealth"]

log = logging.getLogger("tracker.scrape")

#: Rounds of more than this many times ``scrape_concurrency`` targets are paced: their
#: probes start evenly over this share of ``scrape_interval``. 0.8, not less: 3,000 nodes
#: paced over 60 % of 15 s kept one core ~95 % busy and the API's p99 at 60-100 ms; over
#: 80 % it is ~80 % busy and the p99 30-42 ms (bench: cluster), the round still within
#: its interval.
PACE_ABOVE = 8
PACED_SHARE = 0.8


class Wakeup:
    """What cuts a loop's wait for its next round short: a reload, whose settings apply at
    once (the scrape rounds', :class:`Scraper`; the cluster-slot reads',
    :func:`tracker.reporting.track_snapshot_age`). A :meth:`set` while a round goes on ends
    the wait after it at once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        """Begin the next round now (or as soon as the one going on ended)."""
        self._event.set()

    async def wait_until(self, deadline: float) -> None:
        """Until :meth:`set` or ``deadline`` (trio's clock); the set is used up."""
        with trio.move_on_at(deadline):
            await self._event.wait()
        self._event = trio.Event()

    async def wait(self, seconds: float) -> None:
        """Until :meth:`set` or ``seconds`` passed; the set is used up."""
        await self.wait_until(trio.current_time() + seconds)


class Scraper:
    """Owns the target set, their health, and the loop that feeds the index."""

    def __init__(
        self,
        config: Config,
        index: Index,
        *,
        on_round: Callable[[Scraper], None] | None = None,
        on_probe: Callable[[TargetHealth], None] | None = None,
        resolver: Resolver = resolve,
        strangers: Resolver = resolve_strangers,
        tls: TlsContexts | None = None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        """``on_round`` is run after each round, ``on_probe`` told each probe's result,
        ``on_failure()`` called for each round that failed as no rule foresaw (:meth:`run`);
        ``resolver`` and ``strangers`` resolve the configured and the discovered hosts."""
        self.index = index
        self.on_round = on_round
        self.on_probe = on_probe
        self._on_failure = on_failure
        self.config = config
        self._roster = Roster()
        self._results = ResultBatches(index, self._roster.touch)
        self._probes = Probes(config, resolver, strangers, tls)
        self._finder = TargetFinder(self._probes.client, self._roster.rpc_answered)
        self._wakeup = Wakeup()
        #: The groups a reload changed the credentials of, until a round's discovery under
        #: the new config told which of their targets stay (:func:`left_behind`).
        self._moved: Moved = {}
        #: The number of the round going on (or the last one): what ``probed_round`` counts.
        self._round = 0

    @property
    def health(self) -> dict[TargetKey, TargetHealth]:
        """Every target's health, by key (do not modify)."""
        return self._roster.health

    @property
    def roster(self) -> int:
        """Bumped whenever a target comes or goes (see :class:`Roster`)."""
        return self._roster.roster

    @property
    def shown(self) -> int:
        """Bumped whenever what ``/v1/targets`` shows may have changed (see :class:`Roster`)."""
        return self._roster.shown

    @property
    def directories(self) -> DirectoryThreads:
        """The threads local directories are read in (one read running per directory), for
        the local files' checks to share."""
        return self._probes.directories

    @property
    def sizes(self) -> SizeMemo:
        """Sizes of HTTP targets' archives, learned by one HEAD per new URL."""
        return self._probes.sizes

    def in_order(self) -> list[TargetHealth]:
        """Every target's and cluster RPC URL's health in ``/v1/targets``' order (see
        :meth:`Roster.in_order`). Do not modify the list."""
        return self._roster.in_order()

    def update_config(self, config: Config) -> None:
        """Use ``config`` from now on and start the next round at once: a round going on
        probes no target of a group ``config`` dropped; the next one drops them. The index
        of remaining targets is kept, but for those a change of their group's credentials
        leaves behind (:func:`~tracker.discovery.targetset.left_behind`): dropped, with any
        result of theirs waiting, and not probed again until the next round's discovery
        tells whether they stay. A reload from proxy to redirect mode drops what discovered
        nodes listed: each is listed again by its next probe, under redirect mode's rule."""
        previous, self.config = self.config, config
        self._probes.use(config)
        self._finder.use(config)
        self._moved = {**self._moved, **credentials_moved(previous, config)}
        # Back in redirect mode, a discovered node's archive URL goes to clients: what its
        # last probe found in proxy mode (another origin's name, which only the tracker
        # used) is dropped until its next probe, under redirect mode's rule
        # (tracker.discovery.http.off_origin).
        to_redirects = previous.proxy_snapshot_downloads and not config.proxy_snapshot_downloads
        for key in [*self.index.keys(), *self._results.waiting()]:
            if left_behind(self._moved, key) or (to_redirects and key.discovered):
                self._results.drop(key)
        self._wakeup.set()

    async def discover(self) -> list[Target]:
        """The current target set of every group (files re-read, Consul asked)."""
        targets = await self._finder.discover(self.config)
        self._roster.retire_rpcs(rpc_keys(self.config))
        return targets

    def _adopt(self, current: list[Target]) -> None:
        self._probes.sizes.fit(sum(t.kind == "http" for t in current))
        for key in self._roster.adopt(current):
            self.index.drop(key)

    async def scrape_round(self, deadline: float | None = None) -> None:
        """Probe every target due (:func:`round_plan`) once; returns when every probe started
        has finished or timed out. A discovered node whose probe has no slot by
        ``deadline`` (default: ``scrape_interval`` from now) is not probed this round, and
        nothing is recorded of it: the next round probes it among the first."""
        if deadline is None:
            deadline = trio.current_time() + self.config.scrape_interval
        self._round += 1
        await self._probes.close_retired()
        moved = self._moved
        targets = await self.discover()
        if self._moved is moved:  # no reload during the discovery: it told what stays
            self._moved = {}
        self._adopt(targets)
        # The operator's own targets first, all at once, never left out; discovered nodes
        # (thousands) after them, the least recently probed first, backed off while down,
        # and paced over the interval.
        plan = round_plan(
            (self.health[t.key] for t in targets), self._round, self.config.max_target_failures
        )
        limiter = trio.CapacityLimiter(self.config.scrape_concurrency)
        async with self._results.batched(), trio.open_nursery() as nursery:
            spacing = self._spacing(sum(h.target.key.discovered for h in plan))
            begun, number = trio.current_time(), 0
            for health in plan:
                discovered = health.target.key.discovered
                # On a schedule, not a sleep per start: a busy loop's late wake-ups
                # must not stretch the round (a late start catches up at once).
                if spacing and discovered:
                    await trio.sleep_until(begun + number * spacing)
                    number += 1
                # Waiting past the interval, a hanging node's probe would hold back the
                # next round, and with it every configured target's (a cluster whose
                # advertised RPC ports hang took 234 s a round at 15 s): it waits for the
                # next round instead.
                until = deadline if discovered else math.inf
                nursery.start_soon(self._probe_one, health, limiter, until)

    def _spacing(self, count: int) -> float:
        """Seconds between two starts of ``count`` discovered nodes' probes: 0 (all at once,
        ``scrape_concurrency`` at a time) unless there are many (a cluster); those are spread
        over PACED_SHARE of the interval, so the event loop keeps room for the API instead of
        running flat out for the whole round (bench: cluster discovery). Targets the operator
        listed are never paced: 2,000 of them took 5 s a round, paced 3 minutes at a 5 m
        interval (bench: discovery)."""
        if count <= PACE_ABOVE * self.config.scrape_concurrency:
            return 0.0
        return PACED_SHARE * self.config.scrape_interval / count

    async def _probe_one(
        self, health: TargetHealth, limiter: trio.CapacityLimiter, until: float = math.inf
    ) -> None:
        """Probe ``health``'s target once it has a slot of ``limiter``; a discovered node
        with none by ``until`` is not probed (:func:`_slot`)."""
        if health.target.key.discovered and not await self._allowed(health):
            return
        if not await _slot(limiter, until):
            return  # left for the next round: nothing to record
        try:
            group = self.config.group_named(health.target.key.group)
            if group is None or left_behind(self._moved, health.target.key):
                # A reload dropped its group, or changed its credentials and may have
                # removed this target, while this round went on (the new config takes
                # effect at once): not probed; the next round, which a reload starts at
                # once, drops the target or probes it again.
                return
            health.probed_round = self._round
            start = trio.current_time()
            try:
                with trio.fail_after(self.config.scrape_timeout):
                    infos = await self._probes.probe(health.target, group)
            except trio.TooSlowError:
                self._failed(health, f"timed out after {self.config.scrape_timeout:g}s")
            except ProbeError as exc:
                if exhausted(exc):
                    self._deferred(health, str(exc))
                else:
                    self._failed(health, str(exc))
            except Exception as exc:
                # the last guard of hostile input: what a target's answer or name made fail
                # that no rule names costs this target's probe, never the scrape loop
                key = health.target.key
                log_folded(
                    log,
                    "error",
                    "probe_error",
                    unfolded=not key.discovered,
                    target=key.target,
                    exc_info=exc,
                )
                self._failed(health, f"not read: {type(exc).__name__}")
            else:
                self._succeeded(health, infos, trio.current_time() - start)
            health.last_duration = trio.current_time() - start
        finally:
            limiter.release()
        self._probed(health)

    def _probed(self, health: TargetHealth) -> None:
        if not self._results.batching:
            self._roster.touch()
        if self.on_probe:
            self.on_probe(health)

    async def _allowed(self, health: TargetHealth) -> bool:
        """A discovered node the egress policy refuses is ``blocked``, not probed."""
        try:
            await self._probes.check_egress(health.target)
        except (EgressRefused, OSError, ValueError) as exc:  # ValueError: a URL unsplittable
            mark_blocked(health, str(exc))
            self._results.drop(health.target.key)
            self._probed(health)
            return False
        return True

    def _succeeded(self, health: TargetHealth, infos: list[SnapshotInfo], latency: float) -> None:
        at = mark_up(health)
        if not left_behind(self._moved, health.target.key):  # a reload came meanwhile
            self._results.add(health.target.key, infos, at, latency)

    def _failed(self, health: TargetHealth, reason: str) -> None:
        mark_down(health, reason)
        if health.failures >= self.config.max_target_failures:
            self._results.drop(health.target.key)
        key = health.target.key
        # a configured target's, once a round each; the cluster's nodes are as many as the
        # network says, and fail as they please: theirs are folded past a rate
        log_folded(
            log,
            "info",
            "probe_failed",
            unfolded=not key.discovered,
            group=key.group,
            target=key.target,
            error=reason,
        )

    def _deferred(self, health: TargetHealth, reason: str) -> None:
        mark_deferred(health, reason)
        key = health.target.key
        log_folded(
            log,
            "warning",
            "probe_deferred",
            unfolded=not key.discovered,
            group=key.group,
            target=key.target,
            error=reason,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scrape forever, a round every ``scrape_interval``; ready once the first round started.

        A reload (``update_config``) starts the next round at once. Cancellation stops the loop
        between or inside rounds; probes in flight are cancelled with it. A round (its
        discovery, the index's batches, the ``on_round`` hooks) that raises what no rule of
        its own caught costs that round: it is logged as ``task_failed`` with its traceback,
        counted (``on_failure``) and the next round starts on schedule (docs/architecture.md,
        "Failures"); raised, it ended the daemon.
        """
        started = False
        while True:
            deadline = trio.current_time() + self.config.scrape_interval
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.scrape_round, deadline)
                    if not started:
                        task_status.started()
                        started = True
                if self.on_round:
                    self.on_round(self)
            except Exception as exc:  # the round's nursery wraps it: its leaf is what failed
                failed, number = first_leaf(exc), self._round
                if self._on_failure is not None:  # a bug contained is still a bug: counted
                    self._on_failure()
                log_event(
                    log, "error", "task_failed", task="scrape_round", round=number, exc_info=failed
                )
            await self._wakeup.wait_until(deadline)

    async def aclose(self) -> None:
        """Close the HTTP clients (shielded: safe to call while being cancelled)."""
        await self._probes.aclose()


async def _slot(limiter: trio.CapacityLimiter, until: float) -> bool:
    """Take a slot of ``limiter``, waiting for one until ``until`` at most; False when none
    came. A free slot is taken even past ``until``: a round whose discovery outlasted its
    interval (a Consul or RPC that hangs up to ``scrape_timeout``, which may equal it)
    still probes some of its nodes, the least recently probed (docs/architecture.md,
    "Scrape rounds")."""
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        pass
    else:
        return True
    with trio.move_on_at(until):
        await limiter.acquire()
        return True
    return False
