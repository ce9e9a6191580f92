"""Which targets exist: every group's configured lists, ``file_targets`` files, Consul and
the cluster's nodes, asked again at every round.

A source of targets that fails keeps its last answer: an operator's typo in a file, a
Consul timeout or a failed ``getClusterNodes`` call must not empty a group. Only an answer
to what is asked now, though: Consul's and the cluster's lists go when a reload changes
what they are asked, a file's list when the group no longer reads that file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial

import attrs
import httpx
import trio

from tracker.config.schema import ClusterDiscovery, Config, TargetGroup
from tracker.config.targetfile import read_target_file
from tracker.discovery.cluster import cluster_targets
from tracker.discovery.consul import CatalogQuery, discover_consul
from tracker.discovery.nodes import Node
from tracker.discovery.roster import Target
from tracker.errors import ProbeError
from tracker.observability.logs import log_event
from tracker.ordering.index import TargetKey
from tracker.serving.threads import DirectoryThreads

log = logging.getLogger("tracker.scrape")

#: How a ``getClusterNodes`` RPC URL answered: (group, url, reason or "", seconds).
RpcAnswered = Callable[[str, str, str, float], None]
#: The HTTP client of a group for its discovery calls; None once a reload dropped the group
#: (during a round).
ClientOf = Callable[[str], httpx.AsyncClient | None]


def sidecar_base(group: TargetGroup, host: str) -> str:
    """The base URL of a sidecar's API for a ``host:port`` entry."""
    return group.sidecar_url(host)


def _sidecars(group: TargetGroup, hosts: list[str]) -> list[Target]:
    urls = [sidecar_base(group, h) for h in hosts]
    return [Target(TargetKey(group.group, u), "sidecar", u) for u in urls]


def named_keys(group: TargetGroup) -> set[TargetKey]:
    """The keys of the targets ``group``'s config names itself (static, HTTP, local): known
    without reading a file or asking Consul or the cluster."""
    name = group.group
    named = [
        *(_sidecars(group, list(group.static_targets.targets)) if group.static_targets else []),
        *(Target(TargetKey(name, u), "http", u) for u in _urls(group)),
        *(Target(TargetKey(name, p), "local", p) for p in _paths(group)),
    ]
    return {t.key for t in named}


def _urls(group: TargetGroup) -> tuple[str, ...]:
    return group.http_targets.targets if group.http_targets else ()


def _paths(group: TargetGroup) -> tuple[str, ...]:
    return group.local_targets.paths if group.local_targets else ()


#: Per group whose credentials a reload changed: the keys of the targets its new config
#: names itself (:func:`credentials_moved`).
Moved = dict[str, frozenset[TargetKey]]


def credentials_moved(old: Config, new: Config) -> Moved:
    """The groups whose credentials (``Authorization``, TLS settings) ``new`` changed, each
    with the keys of the targets ``new`` names itself. Pure."""
    before = {g.group: (g.authorization, g.tls_config) for g in old.target_groups}
    return {
        g.group: frozenset(named_keys(g))
        for g in new.target_groups
        if g.group in before and before[g.group] != (g.authorization, g.tls_config)
    }


def left_behind(moved: Moved, key: TargetKey) -> bool:
    """True for a target of a group in ``moved`` that its new config does not name itself (a
    file's, Consul's): until the next round's discovery tells whether it stays, it must
    not be sent the group's new credentials, though a reload may have removed it
    (docs/configuration.md: credentials go to the group's configured sources only). A
    discovered node is never given any. Pure."""
    named = moved.get(key.group)
    return named is not None and not key.discovered and key not in named


def rpc_keys(config: Config) -> set[TargetKey]:
    """The ``getClusterNodes`` RPC URLs ``config`` names, as keys of their health."""
    return {
        TargetKey(g.group, url)
        for g in config.target_groups
        if g.cluster_discovery
        for url in g.cluster_discovery.rpc
    }


#: A Consul query and the hosts a group has by it.
ConsulAnswer = tuple[CatalogQuery, list[str]]


def consul_hosts_kept(last: ConsulAnswer | None, query: CatalogQuery) -> list[str]:
    """What ``query`` of Consul's catalog gives when it fails: the hosts it answered last,
    never another query's (a reload that changed the group's ``host``, ``service``,
    ``datacenter`` or ``filter``): those belong to another service, or another Consul's
    view of one, and would be probed, ranked, served and sent the group's credentials for
    as long as the new query fails (docs/configuration.md, ``consul_sd_config``). A rotated
    token asks the same question: a rotation while Consul is down keeps the group's
    sidecars. Pure."""
    if last is None or attrs.evolve(last[0], token="") != attrs.evolve(query, token=""):
        return []
    return last[1]


#: A ``file_targets`` file as one group reads it: (group, path).
FileRead = tuple[str, str]


def file_reads(config: Config) -> set[FileRead]:
    """The ``(group, path)`` of every group's ``file_targets`` in ``config``. Pure."""
    return {(g.group, g.file_targets.path) for g in config.target_groups if g.file_targets}


def file_hosts_named(
    kept: Mapping[FileRead, list[str]], config: Config
) -> dict[FileRead, list[str]]:
    """The last lists of ``kept`` that ``config`` still reads: the same group, the same
    path. A list read by a group a reload removed, or moved to another path, is dropped:
    kept, it was what an unreadable file gave a new group reading that path (another
    group's sidecars, probed, ranked, served and sent this group's credentials), or the
    group moved back to a path that is missing now (docs/configuration.md,
    ``file_targets.path``). A changed ``bearer_auth``, ``basic_auth`` or TLS setting keeps
    the list: the file is read with no credentials, so the group asks the same question
    (as a rotated Consul token does, :func:`consul_hosts_kept`). Pure."""
    named = file_reads(config)
    return {read: hosts for read, hosts in kept.items() if read in named}


#: How soon a cluster discovery that failed with no list kept is asked again (at most its
#: ``interval``): one RPC's hiccup as the tracker started left the group without nodes for
#: the whole interval. With a list kept, a failure waits the interval: each ask of an RPC
#: that hangs holds the round's probes back (up to ``RPC_TIMEOUT`` per RPC URL).
RETRY_FAILED = 30.0


def asked_again_at(asked: float, interval: float, *, failed: bool, kept: bool) -> float:
    """When cluster discovery that asked at ``asked`` asks again: ``interval`` later, or
    :data:`RETRY_FAILED` (at most ``interval``) after a failure when it holds no list from
    before (``kept``). Pure."""
    return asked + (min(interval, RETRY_FAILED) if failed and not kept else interval)


class TargetFinder:
    """Builds the target set of every group, keeping what each source of targets said last."""

    def __init__(self, client_of: ClientOf, rpc_answered: RpcAnswered) -> None:
        self._client_of = client_of
        self._rpc_answered = rpc_answered
        #: The hosts each ``file_targets`` file gave last, per group reading it
        #: (:func:`file_hosts_named`).
        self._hosts: dict[FileRead, list[str]] = {}
        #: The threads reading the files, one per path at most: a file on a hung mount holds
        #: one thread however many rounds ask, never the event loop (keyed by path).
        self._files = DirectoryThreads()
        #: The reads whose file did not answer at their last ask (said once, not each round).
        self._unanswered: set[FileRead] = set()
        #: Per group: the Consul query it asked last, and the hosts it has by that query.
        self._consul: dict[str, ConsulAnswer] = {}
        #: Per group: the ``cluster_discovery`` it asked by (a reload that changes it asks
        #: again at once), when it asks again, and the nodes it found last.
        self._cluster: dict[str, tuple[ClusterDiscovery, float, list[Node]]] = {}
        #: The groups of the config in force: only their answers are kept.
        self._named: frozenset[str] = frozenset()

    def use(self, config: Config) -> None:
        """``config`` is in force (each round's and each reload's): what was kept for a
        group it no longer has goes, and an answer still coming for one is not kept (a
        round under the old config may go on), so a group a later reload adds again under
        that name asks anew."""
        self._named = frozenset(group.group for group in config.target_groups)
        self._hosts = file_hosts_named(self._hosts, config)
        self._unanswered &= file_reads(config)
        self._consul = {name: a for name, a in self._consul.items() if name in self._named}
        self._cluster = {name: a for name, a in self._cluster.items() if name in self._named}

    async def discover(self, config: Config) -> list[Target]:
        """The current target set of every group (files re-read, Consul asked), in the
        config's order. Every group's discovery runs at once: asked in turn, each Consul or
        RPC that hangs held every group's probes back by its whole timeout, one after the
        other (docs/architecture.md, "Scrape rounds")."""
        self.use(config)
        found: list[list[Target]] = [[] for _ in config.target_groups]

        async def discover_group(position: int, group: TargetGroup) -> None:
            found[position] = await self._group_targets(group, config.scrape_timeout)

        async with trio.open_nursery() as nursery:
            for position, group in enumerate(config.target_groups):
                nursery.start_soon(discover_group, position, group)
        return [target for targets in found for target in targets]

    async def _group_targets(self, group: TargetGroup, within: float) -> list[Target]:
        name = group.group
        out: list[Target] = []
        if group.static_targets:
            out += _sidecars(group, list(group.static_targets.targets))
        if group.file_targets:
            path = group.file_targets.path
            out += _sidecars(group, await self._read_file_targets(name, path, within))
        if group.consul_sd_config:
            out += _sidecars(group, await self._consul_targets(group, within))
        out += [Target(TargetKey(name, u), "http", u) for u in _urls(group)]
        out += [Target(TargetKey(name, p), "local", p) for p in _paths(group)]
        if group.cluster_discovery:
            configured = {t.key.target for t in out}
            out += [
                Target(TargetKey(name, n.url, discovered=True), "http", n.url, n.version)
                for n in await self._cluster_targets(group)
                if n.url not in configured
            ]
        unique = {t.key: t for t in out}
        return list(unique.values())

    async def _cluster_targets(self, group: TargetGroup) -> list[Node]:
        """The cluster's nodes, asked again once ``interval`` has passed (sooner after a
        failure: :func:`asked_again_at`); a failure keeps the last list (nodes do not vanish
        because one RPC call failed)."""
        discovery = group.cluster_discovery
        assert discovery is not None
        kept = self._cluster.get(group.group)
        due, nodes = -math.inf, list[Node]()
        if kept is not None and kept[0] == discovery:  # else another RPC, filter or bound
            _, due, nodes = kept
        now = trio.current_time()
        if now < due:
            return nodes
        report = partial(self._rpc_answered, group.group)
        client = self._client_of(group.group)
        if client is None:  # dropped by a reload during this round: not asked
            return nodes
        failed = False
        try:
            nodes = await cluster_targets(client, discovery, report=report)
        except ProbeError as exc:
            failed = True
            log_event(log, "warning", "cluster_discovery_failed", group=group.group, error=exc)
        except Exception as exc:
            # What no rule of the answer's reading names costs this group's question, as a
            # failed one, never the round of every group (docs/architecture.md, "Failures").
            failed = True
            log_event(log, "error", "cluster_discovery_error", group=group.group, exc_info=exc)
        else:
            log_event(log, "info", "cluster_discovered", group=group.group, nodes=len(nodes))
        if group.group in self._named:
            self._cluster[group.group] = (
                discovery,
                asked_again_at(now, discovery.interval, failed=failed, kept=bool(nodes)),
                nodes,
            )
        return nodes

    async def _read_file_targets(self, group: str, path: str, within: float) -> list[str]:
        """The hosts ``group``'s ``file_targets`` file at ``path`` lists, read in a thread
        within ``within`` seconds (``scrape_timeout``): read on the event loop, a file on a
        hung mount froze the whole daemon at each round. A file that does not answer keeps
        the group's last list, as a broken one does (its sidecars are reached over the
        network, not through the mount), said once until it answers again; while its read
        still hangs, the next rounds start no second thread and wait for none
        (docs/configuration.md, "Paths on a hung mount")."""
        # A broken file keeps the last good list: an operator's typo must not empty a group.
        # Only the list this group read from this path: never another group's of the same
        # path, nor one from before a move (file_hosts_named).
        read = (group, path)
        kept = self._hosts.get(read, [])
        try:
            hosts = await self._files.run(path, partial(read_target_file, path), within)
        except trio.TooSlowError:
            if read not in self._unanswered:
                self._unanswered.add(read)
                reason = f"did not answer within {within:g}s (a hung mount?)"
                log_event(
                    log, "warning", "file_targets_unanswered", group=group, path=path,
                    error=reason, kept=len(kept),
                )  # fmt: skip
            return kept
        except ProbeError as exc:
            self._answered(read)
            log_event(
                log, "warning", "file_targets_unreadable", group=group, path=path, error=str(exc)
            )
            return kept
        self._answered(read)
        if group in self._named:
            self._hosts[read] = hosts
        return hosts

    def _answered(self, read: FileRead) -> None:
        """The file of ``read`` answered (read or not): one that had not is said to again."""
        if read in self._unanswered:
            self._unanswered.discard(read)
            group, path = read
            log_event(log, "info", "file_targets_answered", group=group, path=path)

    async def _consul_targets(self, group: TargetGroup, within: float) -> list[str]:
        """The hosts Consul lists for ``group``; a failure keeps the last answer to the same
        query (a Consul timeout must not empty a group), and gives none after a reload that
        changed the query (:func:`consul_hosts_kept`)."""
        sd = group.consul_sd_config
        assert sd is not None
        query = CatalogQuery(sd.host, sd.service, sd.resolved_token, sd.datacenter, sd.filter)
        client = self._client_of(group.group)
        if client is None:  # dropped by a reload during this round: not asked
            return consul_hosts_kept(self._consul.get(group.group), query)
        try:
            with trio.fail_after(within):
                hosts = await discover_consul(client, query)
        except (ProbeError, trio.TooSlowError) as exc:
            reason = str(exc) or "timed out"
            log_event(log, "warning", "consul_discovery_failed", group=group.group, error=reason)
            hosts = consul_hosts_kept(self._consul.get(group.group), query)
        except Exception as exc:
            # The last guard of hostile input: what Consul's answer made fail that no rule
            # names costs this group's question, as a failed one, never the round of every
            # group (docs/architecture.md, "Failures").
            log_event(log, "error", "consul_discovery_error", group=group.group, exc_info=exc)
            hosts = consul_hosts_kept(self._consul.get(group.group), query)
        # What the group has now, for this query: a reload back to an earlier query finds
        # nothing of that query's older answer either.
        if group.group in self._named:
            self._consul[group.group] = (query, hosts)
        return hosts
