"""The scrape loop: which targets exist, probing them on an interval, and their health.

Every ``scrape_interval`` the target set is rebuilt from the config (``file_targets`` files are
re-read, Consul is asked), diffed against the running set, and every target is probed
concurrently (at most ``scrape_concurrency`` at once, each under ``scrape_timeout``). Each
result reaches the index as soon as its probe ends, so a hanging target delays nobody.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import attrs
import httpx
import trio

from tracker.core.config import Config, TargetGroup
from tracker.core.index import Index, TargetKey
from tracker.core.logs import log_event
from tracker.core.redact import redact_text
from tracker.core.snapshots import SnapshotInfo
from tracker.core.targetfile import read_target_file
from tracker.discovery.cluster import cluster_targets
from tracker.discovery.consul import discover_consul
from tracker.discovery.http import Heads, SizeMemo, probe_http
from tracker.discovery.local import scan_local
from tracker.discovery.sidecar import probe_sidecar
from tracker.errors import EgressRefused, ProbeError
from tracker.net.clients import auth_headers, build_client, origin, ssl_context
from tracker.net.egress import Resolver, checked_addresses, policy_of, resolve
from tracker.net.limits import exhausted
from tracker.zerocopy.transport import HeadClient

log = logging.getLogger("tracker.scrape")

#: ``cluster``: a ``getClusterNodes`` RPC URL of ``cluster_discovery`` (asked, not probed).
Kind = Literal["sidecar", "http", "local", "cluster"]


@attrs.frozen
class Target:
    """One source to probe: ``location`` is a base URL (sidecar, http) or a directory."""

    key: TargetKey
    kind: Kind
    location: str


@attrs.define
class TargetHealth:
    """What the operator sees of a target in ``/v1/targets``."""

    target: Target
    #: ``blocked``: a discovered node the egress policy refuses (never connected to).
    health: Literal["up", "down", "unknown", "blocked"] = "unknown"
    last_error: str = ""
    last_scrape: datetime | None = None
    last_duration: float | None = None
    failures: int = 0


def sidecar_base(group: TargetGroup, host: str) -> str:
    """The base URL of a sidecar's API for a ``host:port`` entry."""
    return group.sidecar_url(host)


def _sidecars(group: TargetGroup, hosts: list[str]) -> list[Target]:
    urls = [sidecar_base(group, h) for h in hosts]
    return [Target(TargetKey(group.group, u), "sidecar", u) for u in urls]


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
    ) -> None:
        self.index = index
        #: Looks up the hosts of Locations on other origins (the egress check).
        self.resolver = resolver
        self.health: dict[TargetKey, TargetHealth] = {}
        #: The ``getClusterNodes`` RPC URLs of each group, as asked last (``/v1/targets``
        #: shows them beside the targets; they hold no snapshots).
        self.rpc_health: dict[TargetKey, TargetHealth] = {}
        #: Bumped whenever a target comes or goes (what :meth:`in_order` keeps depends on it).
        self.roster = 0
        #: Bumped whenever what ``/v1/targets`` shows may have changed: after each probe,
        #: but during a round once per batch (APPLY_EVERY), like the index; a listing of
        #: thousands of targets is then rendered a few times a second, not per request.
        self.shown = 0
        self._ordered: tuple[int, list[TargetHealth]] = (-1, [])
        self.on_round = on_round
        self.on_probe = on_probe
        self._file_hosts: dict[str, list[str]] = {}
        #: Per group: the nodes cluster discovery found last, and when it asked.
        self._cluster: dict[str, tuple[float, list[str]]] = {}
        #: Probe results not handed to the index yet (a round hands them over in batches).
        self._pending: dict[TargetKey, tuple[list[SnapshotInfo], datetime, float]] = {}
        self._batching = False
        self._clients: dict[str, list[httpx.AsyncClient]] = {}
        self._retired: list[httpx.AsyncClient] = []
        self._wakeup = trio.Event()
        #: Sizes of HTTP targets' archives, learned by one HEAD per new URL.
        self.sizes = SizeMemo()
        self.config = config
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        """Use ``config`` from the next round on; the index of remaining targets is kept."""
        self.config = config
        for clients in self._clients.values():
            self._retired.extend(clients)
        self._clients = {g.group: _probe_clients(g, config) for g in config.target_groups}
        #: The client of discovered nodes (plain HTTP, no credentials; holds nothing open).
        self._lean = HeadClient(config.scrape_timeout)
        self._wakeup.set()

    async def discover(self) -> list[Target]:
        """The current target set of every group (files re-read, Consul asked)."""
        targets: list[Target] = []
        for group in self.config.target_groups:
            targets.extend(await self._group_targets(group))
        self._retire_rpcs()
        return targets

    async def _group_targets(self, group: TargetGroup) -> list[Target]:
        name = group.group
        out: list[Target] = []
        if group.static_targets:
            out += _sidecars(group, list(group.static_targets.targets))
        if group.file_targets:
            out += _sidecars(group, self._read_file_targets(group.file_targets.path))
        if group.consul_sd_config:
            out += _sidecars(group, await self._consul_targets(group))
        if group.http_targets:
            out += [Target(TargetKey(name, u), "http", u) for u in group.http_targets.targets]
        if group.local_targets:
            out += [Target(TargetKey(name, p), "local", p) for p in group.local_targets.paths]
        if group.cluster_discovery:
            configured = {t.key.target for t in out}
            out += [
                Target(TargetKey(name, u, discovered=True), "http", u)
                for u in await self._cluster_targets(group)
                if u not in configured
            ]
        unique = {t.key: t for t in out}
        return list(unique.values())

    async def _cluster_targets(self, group: TargetGroup) -> list[str]:
        """The cluster's nodes, asked again once ``interval`` has passed; a failure keeps
        the last list (nodes do not vanish because one RPC call failed)."""
        discovery = group.cluster_discovery
        assert discovery is not None
        asked, nodes = self._cluster.get(group.group, (-math.inf, []))
        now = trio.current_time()
        if now - asked < discovery.interval:
            return nodes
        report = partial(self._rpc_answered, group.group)
        try:
            nodes = await cluster_targets(self._clients[group.group][0], discovery, report=report)
        except ProbeError as exc:
            log_event(log, "warning", "cluster_discovery_failed", group=group.group, error=exc)
        else:
            log_event(log, "info", "cluster_discovered", group=group.group, nodes=len(nodes))
        self._cluster[group.group] = (now, nodes)
        return nodes

    def _rpc_answered(self, group: str, url: str, reason: str, seconds: float) -> None:
        """Record how a ``getClusterNodes`` RPC URL answered (its ``/v1/targets`` entry)."""
        key = TargetKey(group, url)
        health = self.rpc_health.get(key)
        if health is None:
            health = self.rpc_health[key] = TargetHealth(Target(key, "cluster", url))
            self.roster += 1
        health.health = "down" if reason else "up"
        health.last_error = reason
        health.failures = health.failures + 1 if reason else 0
        health.last_scrape = datetime.now(UTC)
        health.last_duration = seconds
        self.shown += 1

    def _retire_rpcs(self) -> None:
        """Forget the RPC URLs a reload removed."""
        current = {
            TargetKey(g.group, url)
            for g in self.config.target_groups
            if g.cluster_discovery
            for url in g.cluster_discovery.rpc
        }
        for key in [k for k in self.rpc_health if k not in current]:
            del self.rpc_health[key]
            self.roster += 1

    def _read_file_targets(self, path: str) -> list[str]:
        # A broken file keeps the last good list: an operator's typo must not empty a group.
        try:
            self._file_hosts[path] = read_target_file(path)
        except ProbeError as exc:
            log_event(log, "warning", "file_targets_unreadable", path=path, error=str(exc))
        return self._file_hosts.get(path, [])

    async def _consul_targets(self, group: TargetGroup) -> list[str]:
        sd = group.consul_sd_config
        assert sd is not None
        key = f"consul:{group.group}"
        try:
            with trio.fail_after(self.config.scrape_timeout):
                self._file_hosts[key] = await discover_consul(
                    self._clients[group.group][0],
                    sd.host,
                    sd.service,
                    token=sd.resolved_token,
                    datacenter=sd.datacenter,
                    filter=sd.filter,
                )
        except (ProbeError, trio.TooSlowError) as exc:
            reason = str(exc) or "timed out"
            log_event(log, "warning", "consul_discovery_failed", group=group.group, error=reason)
        return self._file_hosts.get(key, [])

    def _retire(self, current: list[Target]) -> None:
        keys = {t.key for t in current}
        self.sizes.fit(sum(t.kind == "http" for t in current))
        for key in [k for k in self.health if k not in keys]:
            del self.health[key]
            self.index.drop(key)
            self.roster += 1
        for t in current:
            if t.key not in self.health or self.health[t.key].target != t:
                self.health[t.key] = TargetHealth(t)
                self.roster += 1

    def in_order(self) -> list[TargetHealth]:
        """Every target's health and every cluster RPC URL's, by group and target name
        (``/v1/targets``' order); kept
        until a target comes or goes: sorting thousands on every request showed in the
        API's latency during a cluster round. Do not modify the list."""
        roster, ordered = self._ordered
        if roster != self.roster:
            # Plain string tuples sort far faster than comparisons of whole keys.
            everyone = [*self.health.values(), *self.rpc_health.values()]
            ordered = sorted(everyone, key=_display_order)
            self._ordered = (self.roster, ordered)
        return ordered

    async def scrape_round(self) -> None:
        """Probe every target once; returns when every probe has finished or timed out."""
        await self._close_retired()
        targets = await self.discover()
        self._retire(targets)
        limiter = trio.CapacityLimiter(self.config.scrape_concurrency)
        # Results reach the index every APPLY_EVERY seconds, not one by one: each change
        # re-ranks the index on the next read, which with thousands of targets answering
        # within a second would keep the API busy re-ranking (bench: cluster discovery).
        self._batching = True
        try:
            async with trio.open_nursery() as flusher:
                flusher.start_soon(self._flush_every, APPLY_EVERY)
                async with trio.open_nursery() as nursery:
                    # The operator's own targets go first, all at once; discovered nodes
                    # (thousands) are paced over the interval.
                    ordered = sorted(targets, key=lambda t: t.key.discovered)
                    spacing = self._spacing(sum(t.key.discovered for t in targets))
                    begun, number = trio.current_time(), 0
                    for target in ordered:
                        # On a schedule, not a sleep per start: a busy loop's late wake-ups
                        # must not stretch the round (a late start catches up at once).
                        if spacing and target.key.discovered:
                            await trio.sleep_until(begun + number * spacing)
                            number += 1
                        nursery.start_soon(self._probe_one, self.health[target.key], limiter)
                flusher.cancel_scope.cancel()
        finally:
            self._batching = False
            self._flush()

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

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            self._flush()

    def _flush(self) -> None:
        self.shown += 1
        pending, self._pending = self._pending, {}
        self.index.apply_many((k, i, at, lat) for k, (i, at, lat) in pending.items())

    async def _probe_one(self, health: TargetHealth, limiter: trio.CapacityLimiter) -> None:
        if health.target.key.discovered and not await self._allowed(health):
            return
        async with limiter:
            start = trio.current_time()
            try:
                with trio.fail_after(self.config.scrape_timeout):
                    infos = await self._probe(health.target)
            except trio.TooSlowError:
                self._failed(health, f"timed out after {self.config.scrape_timeout:g}s")
            except ProbeError as exc:
                if exhausted(exc):
                    self._deferred(health, str(exc))
                else:
                    self._failed(health, str(exc))
            else:
                self._succeeded(health, infos, trio.current_time() - start)
            health.last_duration = trio.current_time() - start
        self._probed(health)

    def _probed(self, health: TargetHealth) -> None:
        if not self._batching:
            self.shown += 1
        if self.on_probe:
            self.on_probe(health)

    async def _allowed(self, health: TargetHealth) -> bool:
        """A discovered node is an address from the network: the egress policy decides
        before any connection (SPEC §11, §13). A refused one is ``blocked``, not probed."""
        _scheme, host, port = origin(health.target.location)
        policy = policy_of(self.config.egress)
        try:
            await checked_addresses(policy, host, port or 80, self.resolver)
        except (EgressRefused, OSError) as exc:
            health.health, health.last_error = "blocked", str(exc)
            health.last_scrape = datetime.now(UTC)
            self._pending.pop(health.target.key, None)
            self.index.drop(health.target.key)
            self._probed(health)
            return False
        return True

    def _probe(self, target: Target) -> Awaitable[list[SnapshotInfo]]:
        group = self.config.group_named(target.key.group)
        assert group is not None
        client = _shard(self._clients[group.group], target.key.target)
        # A discovered node is not the operator's: the group's credentials never go there.
        headers = {} if target.key.discovered else auth_headers(group, target.location)
        if target.kind == "sidecar":
            return probe_sidecar(client, target.location, headers=headers)
        if target.kind == "http":
            policy = policy_of(self.config.egress)
            heads: Heads = self._lean if target.key.discovered else client
            return probe_http(
                heads,
                target.location,
                headers=headers,
                policy=policy,
                resolver=self.resolver,
                sizes=self.sizes,
            )
        return trio.to_thread.run_sync(scan_local, target.location, abandon_on_cancel=True)

    def _succeeded(self, health: TargetHealth, infos: list[SnapshotInfo], latency: float) -> None:
        now = datetime.now(UTC)
        health.health, health.last_error, health.failures = "up", "", 0
        health.last_scrape = now
        self._pending[health.target.key] = (infos, now, latency)
        if not self._batching:
            self._flush()

    def _failed(self, health: TargetHealth, reason: str) -> None:
        health.health, health.last_error = "down", reason
        health.last_scrape = datetime.now(UTC)
        health.failures += 1
        if health.failures >= self.config.max_target_failures:
            self._pending.pop(health.target.key, None)
            self.index.drop(health.target.key)
        key = health.target.key
        log_event(log, "info", "probe_failed", group=key.group, target=key.target, error=reason)

    def _deferred(self, health: TargetHealth, reason: str) -> None:
        """The probe failed for want of this process's own descriptors or memory, not the
        target's fault: its last result stands (health, snapshots, failure count); only
        ``last_error`` says what happened."""
        health.last_error = f"{reason} (the last result is kept)"
        key = health.target.key
        log_event(
            log, "warning", "probe_deferred", group=key.group, target=key.target, error=reason
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scrape forever, a round every ``scrape_interval``; ready once the first round started.

        A reload (``update_config``) starts the next round at once. Cancellation stops the loop
        between or inside rounds; probes in flight are cancelled with it.
        """
        started = False
        while True:
            self._wakeup = trio.Event()
            deadline = trio.current_time() + self.config.scrape_interval
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.scrape_round)
                if not started:
                    task_status.started()
                    started = True
            if self.on_round:
                self.on_round(self)
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    async def _close_retired(self) -> None:
        # Clients replaced by a reload are closed here, between rounds: rounds never overlap,
        # so no probe can still be using one.
        retired, self._retired = self._retired, []
        for client in retired:
            await client.aclose()

    async def aclose(self) -> None:
        """Close the HTTP clients (shielded: safe to call while being cancelled)."""
        for clients in self._clients.values():
            self._retired.extend(clients)
        self._clients = {}
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._close_retired()


#: Seconds between two hand-overs of probe results to the index during a round.
APPLY_EVERY = 0.25
#: Rounds of more than this many times ``scrape_concurrency`` targets are paced: their
#: probes start evenly over this share of ``scrape_interval``. 0.8, not less: 3,000 nodes
#: paced over 60 % of 15 s kept one core ~95 % busy and the API's p99 at 60-100 ms; over
#: 80 % it is ~80 % busy and the p99 30-42 ms (bench: cluster), the round still within
#: its interval.
PACE_ABOVE = 8
PACED_SHARE = 0.8

#: Probe clients per group. httpcore's pool scans all its connections for every queued
#: request (quadratic in the pool size): several small pools probe 2,000 targets about twice
#: as fast as one pool of the same total size (bench/README.md, discovery).
PROBE_SHARDS = 32


def _probe_clients(group: TargetGroup, config: Config) -> list[httpx.AsyncClient]:
    # Two requests per HTTP target at once: no probe waits in a pool queue.
    per_shard = max(2, -(-2 * config.scrape_concurrency // PROBE_SHARDS))
    tls = ssl_context(group.tls_config)
    return [
        build_client(
            group,
            connect_timeout=config.scrape_timeout,
            read_timeout=config.scrape_timeout,
            max_connections=per_shard,
            tls=tls,
        )
        for _ in range(PROBE_SHARDS)
    ]


def _shard(clients: list[httpx.AsyncClient], target: str) -> httpx.AsyncClient:
    return clients[zlib.crc32(target.encode()) % len(clients)]


def _display_order(health: TargetHealth) -> tuple[str, str]:
    return (health.target.key.group, health.target.key.target)


def health_json(health: TargetHealth, count: int, mismatch: str = "") -> dict[str, object]:
    """The ``/v1/targets`` entry of one target (secrets in URLs masked). ``mismatch``: why
    the index holds some of its snapshots back (a hash that lost, SPEC §11), shown as its
    ``last_error`` when the probe itself succeeded."""
    last = health.last_scrape
    duration = health.last_duration
    error = health.last_error or mismatch
    return {
        "group": health.target.key.group,
        "target": redact_text(health.target.key.target),
        "kind": health.target.kind,
        "source": "discovered" if health.target.key.discovered else "configured",
        "health": health.health,
        "last_error": redact_text(error),
        "last_scrape": last.isoformat().replace("+00:00", "Z") if last else None,
        "last_duration_ms": None if duration is None else math.ceil(duration * 1000),
        "snapshots": count,
        "consecutive_failures": health.failures,
    }
