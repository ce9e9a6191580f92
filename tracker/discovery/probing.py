"""Probing one target: the probe clients of each group, the egress check of a discovered
node, and the probe of each kind of source."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Collection
from functools import partial

import attrs
import httpx
import trio

from tracker.clientwire.transport import HeadClient
from tracker.config.bounded import no_answer
from tracker.config.schema import Config, TargetGroup, TLSConfig
from tracker.core.snapshots import SnapshotInfo
from tracker.discovery.http import Heads, SizeMemo, off_origin, probe_http
from tracker.discovery.local import LocalListing, readable_archives, scan_local
from tracker.discovery.roster import Target
from tracker.discovery.sidecar import probe_sidecar
from tracker.errors import ProbeError
from tracker.net.egress import Resolver, checked_addresses, policy_of, resolve_strangers
from tracker.net.httpclients import TlsContexts, auth_headers, build_client, origin
from tracker.observability.logs import log_event
from tracker.serving.threads import DirectoryThreads

log = logging.getLogger("tracker.scrape")

#: Probe clients per group. httpcore's pool scans all its connections for every queued
#: request (quadratic in the pool size): several small pools probe 2,000 targets about twice
#: as fast as one pool of the same total size (bench/README.md, discovery).
PROBE_SHARDS = 32


class Probes:
    """The HTTP clients that probe targets, and the probe of one target."""

    def __init__(
        self,
        config: Config,
        resolver: Resolver,
        strangers: Resolver = resolve_strangers,
        tls: TlsContexts | None = None,
    ) -> None:
        #: Looks up the hosts of Locations on other origins (the egress check).
        self.resolver = resolver
        #: The same for discovered nodes: lookups of their own, so that a hostile node's
        #: names that never resolve hold none the operator's targets need.
        self.strangers = strangers
        #: Sizes of HTTP targets' archives, learned by one HEAD per new URL.
        self.sizes = SizeMemo()
        self.config = config
        self._clients: dict[str, list[httpx.AsyncClient]] = {}
        #: Per group with Consul or cluster discovery: the client that asks them.
        self._discovery: dict[str, httpx.AsyncClient] = {}
        self._retired: list[httpx.AsyncClient] = []
        #: The threads of the local directories' listings, shared with the local files'
        #: checks (one running per directory at most: a hung mount costs its own target).
        self.directories = DirectoryThreads()
        #: The archives each local directory's last scan found unreadable, by directory:
        #: each is logged when first found so, not every round (nor again until it was
        #: readable or gone in between).
        self._unreadable: dict[str, frozenset[str]] = {}
        #: The groups' TLS contexts, loaded off the event loop at start-up and at each
        #: reload (:meth:`TlsContexts.load`, of :func:`tls_settings`).
        self.tls = tls if tls is not None else TlsContexts()
        self.use(config)

    def use(self, config: Config) -> None:
        """Clients for ``config``; the previous ones are closed by :meth:`close_retired`."""
        self.config = config
        for clients in self._clients.values():
            self._retired.extend(clients)
        self._retired.extend(self._discovery.values())
        tls = self.tls
        self._clients = {g.group: _probe_clients(g, config, tls) for g in config.target_groups}
        self._discovery = {
            g.group: _discovery_client(g, config, tls)
            for g in config.target_groups
            if g.consul_sd_config is not None or g.cluster_discovery is not None
        }
        #: The client of discovered nodes (plain HTTP, no credentials; holds nothing open).
        self._lean = HeadClient(config.scrape_timeout)

    def client(self, group: str) -> httpx.AsyncClient | None:
        """A client of ``group`` for its discovery calls (Consul, ``getClusterNodes``); None
        when the config in use has no such group (a reload dropped it during a round)."""
        return self._discovery.get(group)

    async def check_egress(self, target: Target) -> None:
        """A discovered node is an address from the network: the egress policy decides
        before any connection (docs/http-api.md#trust). Raises EgressRefused or OSError."""
        _scheme, host, port = origin(target.location)
        policy = policy_of(self.config.egress)
        await checked_addresses(policy, host, port or 80, self.strangers)

    def probe(self, target: Target, group: TargetGroup) -> Awaitable[list[SnapshotInfo]]:
        """What ``target`` of ``group`` (configured now: this config's clients) offers now.
        Raises ProbeError."""
        client = _shard(self._clients[group.group], target.key.target)
        # A discovered node is not the operator's: the group's credentials never go there.
        headers = {} if target.key.discovered else auth_headers(group, target.location)
        if target.kind == "sidecar":
            return probe_sidecar(client, target.location, headers=headers)
        if target.kind == "http":
            policy = policy_of(self.config.egress)
            heads: Heads = self._lean if target.key.discovered else client
            probed = probe_http(
                heads,
                target.location,
                headers=headers,
                policy=policy,
                resolver=self.strangers if target.key.discovered else self.resolver,
                sizes=self.sizes,
            )
            return self._at_home(target, probed) if target.key.discovered else probed
        return self._scan(target.location)

    async def _at_home(
        self, target: Target, probed: Awaitable[list[SnapshotInfo]]
    ) -> list[SnapshotInfo]:
        """What a discovered node offers, refused in redirect mode when an archive is not at
        its own origin (:func:`~tracker.discovery.http.off_origin`: clients would resolve
        that name themselves). The mode of when the answer came: a reload to redirect mode
        during the probe refuses it too. Raises ProbeError."""
        infos = await probed
        if not self.config.proxy_snapshot_downloads:
            reason = off_origin(target.location, infos)
            if reason:
                raise ProbeError(reason)
        return infos

    async def _scan(self, path: str) -> list[SnapshotInfo]:
        """The archives of the local directory ``path`` that the tracker can read, listed
        in a thread of :attr:`directories`; one it may not open is left out and logged once
        (``local_archive_unreadable``). A listing that hangs (a stuck network mount) fails
        this probe at ``scrape_timeout`` and is abandoned, its thread kept until the file
        system answers: the next probes of it fail at once while it runs, and cost the
        other directories nothing (docs/architecture.md, "Proven archives": "Local
        files")."""
        try:
            listing = await self.directories.run(
                path, partial(_listing, path), self.config.scrape_timeout
            )
        except trio.TooSlowError as exc:
            raise ProbeError(str(exc)) from None
        self._tell_unreadable(path, listing.unreadable)
        return listing.snapshots

    def _tell_unreadable(self, directory: str, unreadable: tuple[tuple[str, str], ...]) -> None:
        """Log each archive of ``directory`` newly found unreadable: the operator's one line
        of why an archive on the disk is not offered (its permissions; docs/http-api.md,
        "Snapshot sources"), once, where every round would bury the rest of the log."""
        before = self._unreadable.get(directory, frozenset())
        for path, reason in unreadable:
            if path not in before:
                log_event(log, "warning", "local_archive_unreadable", path=path, error=reason)
        if unreadable:
            self._unreadable[directory] = frozenset(path for path, _ in unreadable)
        else:
            self._unreadable.pop(directory, None)

    async def close_retired(self) -> None:
        """Close the clients a reload replaced. Only between rounds: rounds never overlap,
        so no probe can still be using one."""
        retired, self._retired = self._retired, []
        for client in retired:
            await client.aclose()

    async def aclose(self) -> None:
        """Close every client (shielded: safe to call while being cancelled)."""
        for clients in self._clients.values():
            self._retired.extend(clients)
        self._retired.extend(self._discovery.values())
        self._clients, self._discovery = {}, {}
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.close_retired()


def _listing(path: str) -> LocalListing:
    """What the local directory ``path`` offers that this process may read. Blocking."""
    return readable_archives(scan_local(path))


def tls_settings(config: Config) -> set[TLSConfig | None]:
    """The TLS settings ``config``'s clients are made of: each group's (its probes' and
    downloads'), its discovery's (:func:`discovery_tls`), and none (the system's CAs: the
    clients of the origins that are no group's own). Pure."""
    settings: set[TLSConfig | None] = {None}
    for group in config.target_groups:
        settings |= {group.tls_config, discovery_tls(group.tls_config)}
    return settings


def unanswered_tls(
    config: Config, unanswered: Collection[TLSConfig | None], bound: float
) -> list[str]:
    """The lines of the TLS settings of ``config`` whose files did not answer within
    ``bound`` seconds (:meth:`TlsContexts.load`), each naming its group's key. Pure."""
    found = []
    entries = config.group_entries or range(len(config.target_groups))
    for at, group in zip(entries, config.target_groups, strict=True):
        tls = group.tls_config
        if tls is not None and {tls, discovery_tls(tls)} & set(unanswered):
            path = tls.ca_file or tls.cert_file
            found.append(f"target_groups[{at}].tls_config: {no_answer(path, bound)}")
    if None in unanswered:
        found.append(f"the system's CA files did not answer within {bound:g}s (a hung mount?)")
    return found


def discovery_tls(tls: TLSConfig | None) -> TLSConfig | None:
    """The TLS setting of a group's discovery calls (Consul, ``getClusterNodes``): its CA and
    verification settings, never its client certificate (a credential of its sources only,
    docs/configuration.md). Pure."""
    if tls is not None and tls.cert_file:
        return attrs.evolve(tls, cert_file="", key_file="")
    return tls


def _probe_clients(
    group: TargetGroup, config: Config, contexts: TlsContexts
) -> list[httpx.AsyncClient]:
    # Two requests per HTTP target at once: no probe waits in a pool queue.
    per_shard = max(2, -(-2 * config.scrape_concurrency // PROBE_SHARDS))
    tls = contexts.context(group.tls_config)
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


def _discovery_client(
    group: TargetGroup, config: Config, contexts: TlsContexts
) -> httpx.AsyncClient:
    """The client that asks ``group``'s Consul and ``getClusterNodes`` RPCs: the group's CA
    and verification settings, never its client certificate (:func:`discovery_tls`), nor
    its ``Authorization``."""
    return build_client(
        group,
        connect_timeout=config.scrape_timeout,
        read_timeout=config.scrape_timeout,
        max_connections=4,
        tls=contexts.context(discovery_tls(group.tls_config)),
    )


def _shard(clients: list[httpx.AsyncClient], target: str) -> httpx.AsyncClient:
    return clients[zlib.crc32(target.encode()) % len(clients)]
