"""The config file's schema: frozen attrs values, one class per section.

Every value here has been checked when it was loaded (:mod:`tracker.config.loading`); durations
are seconds and paths absolute. The format is a superset of the Go tracker's
(rpcpool/solana-cluster, ``types/config.go``). Secrets (``password_file``, ``token_file``) are
read at load and never appear in ``repr()``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from tracker.config.values import check_target, format_address, parse_address, parse_duration
from tracker.proof.accounts.budget import default_memory
from tracker.proof.levels import Level

__all__ = [
    "Attest",
    "BasicAuth",
    "BearerAuth",
    "Config",
    "ConsulSDConfig",
    "Egress",
    "FileTargets",
    "HttpTargets",
    "LocalTargets",
    "ObjectStore",
    "Ranking",
    "SpeedTest",
    "StaticTargets",
    "TLSConfig",
    "TargetGroup",
    "check_target",
    "format_address",
    "parse_address",
    "parse_duration",
    "rpc_identity",
]

#: Field metadata marking values that are computed at load, never read from the YAML file.
_NOT_YAML = {"yaml": False}


def _inline_password(auth: BasicAuth) -> str:
    return auth.password


def _inline_token(auth: BearerAuth | ConsulSDConfig) -> str:
    return auth.token


def _resolved_secret(inline: Callable[[Any], str]) -> Any:
    """The field holding a secret as sent: the inline value by default, replaced at load by the
    secret file's content.

    One definition for every credential-bearing section, so that they all keep the secret out
    of ``repr`` and out of the YAML keys alike.
    """
    return attrs.field(
        default=attrs.Factory(inline, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )


@attrs.frozen
class BasicAuth:
    """RFC 7617 credentials sent to the group's own sources."""

    username: str = ""
    password: str = attrs.field(default="", repr=False)
    password_file: str = ""
    #: The password to send: ``password``, or the content of ``password_file`` read at load
    #: (one trailing newline dropped).
    resolved_password: str = _resolved_secret(_inline_password)


@attrs.frozen
class BearerAuth:
    """A bearer token sent to the group's own sources."""

    token: str = attrs.field(default="", repr=False)
    token_file: str = ""
    #: The token to send: ``token``, or the content of ``token_file`` read at load.
    resolved_token: str = _resolved_secret(_inline_token)


@attrs.frozen
class TLSConfig:
    """TLS settings for the group's https sources; paths are absolute after load."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


@attrs.frozen
class StaticTargets:
    """Sidecars given as ``host:port`` (the port may be left out, as in the Go tracker)."""

    targets: tuple[str, ...] = ()


@attrs.frozen
class FileTargets:
    """Sidecars listed in a file (see ``tracker.config.targetfile``), re-read every scrape."""

    path: str


@attrs.frozen
class HttpTargets:
    """Validator RPC / snapshot HTTP servers, absolute http(s) URLs without a trailing slash."""

    targets: tuple[str, ...] = ()


@attrs.frozen
class LocalTargets:
    """Directories on this machine holding snapshot archives (absolute after load)."""

    paths: tuple[str, ...] = ()


@attrs.frozen
class ClusterDiscovery:
    """Every RPC node of the cluster as an HTTP target (docs/http-api.md#trust):
    ``getClusterNodes`` on
    ``rpc`` (in turn until one answers) every ``interval`` seconds, at most ``max_targets``
    nodes, those whose version matches one of ``versions`` (globs; empty: any)."""

    rpc: tuple[str, ...] = attrs.field(default=(), repr=False)
    interval: float = 300.0
    max_targets: int = 3000
    versions: tuple[str, ...] = ()


@attrs.frozen
class Trust:
    """Which advertised snapshots may be ranked (docs/http-api.md#trust,
    :func:`tracker.ordering.screens.screen`)."""

    known_sources: tuple[str, ...] = ()
    min_agreeing_sources: int = 1
    max_slot_ahead: int = 100
    #: The level every copy of the group's archives must be proven to (docs/architecture.md,
    #: "Proven archives"); None: ``manifest`` when archives are checked (``verify_archives``),
    #: else ``structure`` (:meth:`Config.required_level`).
    require: Level | None = None
    #: The validators that must be able to load every archive the group hands out
    #: (``agave``: none whose manifest shows what agave refuses at load, docs/http-api.md,
    #: "Proven archives"); None: any archive, as before.
    loadable_by: str | None = None

    @property
    def asked(self) -> Level | None:
        """The level the group asks for itself, where copies are proven before they rank
        (redirect mode's head reads, local files): ``require``, else ``manifest`` when
        ``loadable_by`` is set (the manifest shows what a loader refuses), else None."""
        if self.require is None and self.loadable_by is not None:
            return Level.MANIFEST
        return self.require


@attrs.frozen
class Attest:
    """Signed statements of what the tracker proved (docs/http-api.md, "Signed statements"):
    ``key`` is a Solana keypair file (``solana-keygen``'s JSON), mode 0600 and the tracker's
    user's; each statement holds for ``valid_for`` seconds."""

    key: str = attrs.field(default="", repr=False)
    valid_for: float = 7 * 24 * 3600.0


def relay_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """A ``certificates`` value as its relays: a plain string is one relay ("" none), as
    the key was before it took a list. Pure."""
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(value)


@attrs.frozen
class ClusterProof:
    """The ``cluster`` level (docs/architecture.md, "Proven archives"): the votes for an
    archive's slot read from at most ``blocks`` blocks after it within ``deadline`` seconds,
    from ``rpc`` and each of ``also_rpc``, whose answers must agree."""

    blocks: int = 32
    deadline: float = 30.0
    also_rpc: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: After the Alpenglow migration: the certificate relays, URL prefixes whose
    #: ``{slot}.json`` is a slot's finality certificate document, all of which must agree
    #: (docs/http-api.md, "The cluster level"); none: no certificate is read. A plain
    #: string is one relay ("" none), as the key was before it took a list.
    certificates: tuple[str, ...] = attrs.field(default=(), converter=relay_list, repr=False)


@attrs.frozen
class SourceLimits:
    """What one source of the group is asked for at once (:mod:`tracker.net.sourcelimits`):
    concurrent transfers (proxied streams, refreshes, speed tests) and bytes per second;
    0: no cap."""

    max_transfers: int = 0
    max_rate: int = 0


@attrs.frozen
class ConsulSDConfig:
    """Consul service discovery, accepted with the Go tracker's keys (``host`` = Consul address)."""

    host: str = ""
    token: str = attrs.field(default="", repr=False)
    token_file: str = ""
    datacenter: str = ""
    service: str = ""
    filter: str = ""
    #: The ACL token to send: ``token``, or the content of ``token_file`` read at load.
    resolved_token: str = _resolved_secret(_inline_token)


@attrs.frozen
class SpeedTest:
    """Range probes of the leading candidates' archives (docs/ranking.md): ``bytes`` read
    from each of the ``top`` candidates every ``interval`` seconds."""

    bytes: int = 16 * 1024 * 1024
    top: int = 5
    interval: float = 600.0


@attrs.frozen
class Ranking:
    """How a group's pairs are ranked (docs/ranking.md). Without this section a group ranks
    by slot, the Go tracker's order and JSON; with it, by the predicted time to a running
    node unless ``by: slot``. Throughputs are bytes per second; ``switch_margin`` a fraction
    (0.1 for 10%)."""

    by: str = "time_to_running"
    replay_slots_per_second: float = 25.0
    slot_seconds: float = 0.4
    assumed_throughput: float = 50_000_000.0
    speed_test: SpeedTest = SpeedTest()
    switch_margin: float = 0.1


#: Every way a group gets targets (the fields of :class:`TargetGroup`): what entries of one
#: group's name may each bring (tracker.config.sections.merge_groups).
TARGET_KINDS = (
    "static_targets",
    "file_targets",
    "consul_sd_config",
    "http_targets",
    "local_targets",
    "cluster_discovery",
)


@attrs.frozen
class TargetGroup:
    """One cluster/network: its sources and how to reach them."""

    group: str
    scheme: str = "http"
    api_path: str = ""
    basic_auth: BasicAuth | None = None
    bearer_auth: BearerAuth | None = None
    tls_config: TLSConfig | None = None
    static_targets: StaticTargets | None = None
    file_targets: FileTargets | None = None
    consul_sd_config: ConsulSDConfig | None = None
    http_targets: HttpTargets | None = None
    local_targets: LocalTargets | None = None
    cluster_discovery: ClusterDiscovery | None = None
    trust: Trust = Trust()
    #: None: ranked by slot, as the Go tracker does, and no speed tests (docs/ranking.md).
    ranking: Ranking | None = None
    source_limits: SourceLimits = SourceLimits()
    #: The group's own cluster's JSON-RPC URL (the slot its archives are screened and its
    #: health answered against, the votes that prove them); "": the top-level ``rpc``
    #: (:meth:`Config.group_rpc`). An RPC URL often carries an API key: kept out of repr().
    rpc: str = attrs.field(default="", repr=False)
    #: More RPCs of the group's own cluster whose votes must agree with its ``rpc``
    #: (``cluster_proof.also_rpc`` is the top-level ``rpc``'s witnesses: another cluster's
    #: votes prove nothing here); only with the group's own ``rpc``.
    also_rpc: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: After the Alpenglow migration: the certificate relays of the group's own cluster
    #: (``cluster_proof.certificates`` are the top-level ``rpc``'s cluster's: another
    #: cluster's certificates never verify against this one's stakes); only with the
    #: group's own ``rpc`` (:meth:`Config.group_certificates`); none: the top-level ones.
    certificates: tuple[str, ...] = attrs.field(default=(), converter=relay_list, repr=False)

    def sidecar_url(self, host: str) -> str:
        """The base URL of a sidecar's API for a ``host:port`` entry (its target's name)."""
        return f"{self.scheme}://{host}{self.api_path}"

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header value for this group's sources, or None.

        With both ``basic_auth`` and ``bearer_auth`` the bearer token wins, as in the Go tracker
        (it sets the header after the basic credentials).
        """
        if self.bearer_auth is not None:
            return f"Bearer {self.bearer_auth.resolved_token}"
        if self.basic_auth is not None:
            pair = f"{self.basic_auth.username}:{self.basic_auth.resolved_password}"
            return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return None


@attrs.frozen
class Egress:
    """Where connections to addresses that came from the network may go (CIDR lists).

    Addresses the operator configured are trusted as typed; a ``Location`` answered by a
    source, a redirect followed while proxying, a discovered node are checked after
    resolution: public unicast addresses and ``allow`` pass, ``deny`` never does (see
    :mod:`tracker.net.egress`).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


def _inline_key_id(store: ObjectStore) -> str:
    return store.access_key_id


def _inline_secret(store: ObjectStore) -> str:
    return store.secret_access_key


@attrs.frozen
class ObjectStore:
    """The S3-compatible bucket that replicas share as their cache
    (docs/http-api.md#with-an-object-store-object_store).

    Objects live at ``{prefix}{group}/{name}``; refresh locks at ``{prefix}.locks/….lock``
    and hand-out marks at ``{prefix}.handed/….handed``. Both credentials empty: the S3
    library's default chain (environment, shared files, instance roles). Durations are
    seconds.
    """

    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id: str = attrs.field(default="", repr=False)
    access_key_id_file: str = ""
    secret_access_key: str = attrs.field(default="", repr=False)
    secret_access_key_file: str = ""
    addressing_style: str = "path"
    direct_serve: bool = True
    direct_serve_ttl: float = 900.0
    public_endpoint: str = ""
    lock_ttl: float = 60.0
    replica_url: str = ""
    #: The base URLs of the fleet's replicas: when set, a lock's holder is followed only to
    #: one of these (trusted as typed); when empty, the egress policy applies to it.
    replicas: tuple[str, ...] = ()
    keep_previous: int = 1
    #: Longest wait for the store on a client's request path (then it is marked down).
    request_timeout: float = 2.0
    #: The key id to use: ``access_key_id``, or the content of ``access_key_id_file``.
    resolved_access_key_id: str = attrs.field(
        default=attrs.Factory(_inline_key_id, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )
    #: The secret to use: ``secret_access_key``, or the content of ``secret_access_key_file``.
    resolved_secret_access_key: str = attrs.field(
        default=attrs.Factory(_inline_secret, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )


def _default_timeout(config: Config) -> float:
    return min(10.0, config.scrape_interval)


@attrs.frozen
class Config:
    """The whole config file. Durations are in seconds; paths are absolute after load."""

    scrape_interval: float = 15.0
    scrape_timeout: float = attrs.field(default=attrs.Factory(_default_timeout, takes_self=True))
    listen: str = ":8458"
    internal_listen: str = "127.0.0.1:8457"
    # An RPC URL often carries an API key in its path or query: keep it out of repr().
    rpc: str = attrs.field(default="", repr=False)
    max_snapshot_age: int = 1000
    default_group: str = ""
    public_url: str = ""
    proxy_snapshot_downloads: bool = False
    proxy_snapshot_cache_dir: str = ""
    #: Bytes a refresh leaves free on the cache's file system beyond the whole archive; with
    #: less room the request streams uncached (docs/http-api.md#archive-answers).
    proxy_snapshot_cache_min_free: int = 1024**3
    cache_complete_on_disconnect: bool = True
    max_target_failures: int = 3
    scrape_concurrency: int = 64
    #: Open client connections per listener (lowered below the descriptor limit at start).
    max_connections: int = 4096
    shutdown_grace: float = 30.0
    cache_share_inflight: bool = False
    cache_prefetch: bool = False
    cache_prefetch_concurrency: int = 1
    #: A source that has not started its body within this many seconds is given up for the
    #: next one advertising the same file (README.md#clients).
    first_byte_timeout: float = 2.0
    #: Clients whose User-Agent contains one of these get the bytes from the tracker on the
    #: root concrete route even in redirect mode (they cannot follow a redirect elsewhere).
    serve_user_agents: tuple[str, ...] = ("Firedancer",)
    #: Check every archive before it is stored or handed out as complete (docs/http-api.md,
    #: "Verified archives"); off only for caches of opaque test blobs.
    verify_archives: bool = True
    #: A source whose copy of an archive failed its check is not used for that archive for
    #: this many seconds.
    reject_for: float = 600.0
    #: Prove fulls to level ``accounts`` where their bytes pass through the tracker
    #: (docs/architecture.md, "Proven archives").
    prove_accounts: bool = True
    #: The operator's bound on the accounts (versions) of one ``accounts`` proof; over it the
    #: archive stays at ``manifest``, said so. None: no bound (the memory is bounded by
    #: ``prove_accounts_memory`` whatever the count).
    prove_accounts_max: int | None = None
    #: Processes the accounts proofs use at most, the tracker's own included (its hashing
    #: children: this less one, at least one); None: the machine's cores.
    proof_workers: int | None = None
    #: The bytes of memory every ``accounts`` proof of the tracker shares, its processes
    #: included (docs/architecture.md, "The accounts level" → "Bounded memory"): past it the
    #: index spills to disk. Default: derived from ``proof_workers`` and the machine's memory
    #: (``proof.accounts.budget.default_memory``; 512 MiB on 2 cores, 2,656 MiB on 16).
    prove_accounts_memory: int = attrs.field()
    #: Where the proofs' spilled index lives; empty: ``.accounts-proof`` in the cache
    #: directory.
    prove_accounts_temp_dir: str = ""

    @prove_accounts_memory.default
    def _prove_accounts_memory(self) -> int:
        return default_memory(self.proof_workers)

    #: Redirect mode: the bounded head read of a source's copy that proves its manifest.
    manifest_read: int = 512 * 1024**2
    cluster_proof: ClusterProof = ClusterProof()
    #: Signed statements; None: the tracker signs nothing.
    attest: Attest | None = None
    egress: Egress = Egress()
    #: The shared bucket of several replicas (docs/http-api.md#with-an-object-store-object_store);
    #: None: no object-store tier.
    object_store: ObjectStore | None = None
    target_groups: tuple[TargetGroup, ...] = ()
    #: The absolute path the config was loaded from (set by load_config, not a YAML key).
    config_path: str = attrs.field(default="", metadata=_NOT_YAML)
    #: Where each group's first entry is in the file's ``target_groups`` (entries of one name
    #: make one group: ``tracker.config.sections.merge_groups``); empty: one entry each.
    group_entries: tuple[int, ...] = attrs.field(default=(), eq=False, metadata=_NOT_YAML)
    #: Things that are valid but probably unintended; the caller logs them.
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False, metadata=_NOT_YAML)

    def required_level(self, group: TargetGroup) -> Level:
        """The level every copy of ``group``'s archives must be proven to: its
        ``trust.require``, else ``manifest`` when archives are checked, else ``structure``."""
        if group.trust.require is not None:
            return group.trust.require
        return Level.MANIFEST if self.verify_archives else Level.STRUCTURE

    def group_rpc(self, group: str | None) -> str:
        """The JSON-RPC URL of ``group``'s cluster: its own ``rpc``, else the top-level
        ``rpc`` (a group not configured, or None: the top-level one). "": none, no slot
        is known and no vote asked for the group. Pure."""
        found = self.group_named(group) if group is not None else None
        return found.rpc if found is not None and found.rpc else self.rpc

    def slot_rpcs(self) -> dict[str, tuple[str, ...]]:
        """Each RPC URL some group's cluster slot is read from (:meth:`group_rpc`), with the
        groups it is read for, in the order of the groups; a group without any RPC is in
        none. Pure."""
        by_url: dict[str, list[str]] = {}
        for group in self.target_groups:
            url = self.group_rpc(group.group)
            if url:
                by_url.setdefault(url, []).append(group.group)
        return {url: tuple(groups) for url, groups in by_url.items()}

    def cluster_rpcs(self, group: str | None = None) -> tuple[str, ...]:
        """The RPCs the cluster level asks for ``group``'s archives: its :meth:`group_rpc`,
        then each of its witnesses (the group's own ``also_rpc`` where it has its own
        ``rpc``, else ``cluster_proof.also_rpc``); None: the top-level ones. Each RPC once:
        the same RPC written twice (``…:8899/``, ``HTTP://…``) is one witness, not two that
        agree."""
        found = self.group_named(group) if group is not None else None
        own = found is not None and bool(found.rpc)
        witnesses = found.also_rpc if found is not None and own else self.cluster_proof.also_rpc
        seen: set[str] = set()
        distinct: list[str] = []
        for url in (self.group_rpc(group), *witnesses):
            same = rpc_identity(url)
            if url and same not in seen:
                seen.add(same)
                distinct.append(url)
        return tuple(distinct)

    def group_certificates(self, group: str | None = None) -> tuple[str, ...]:
        """The certificate relays (URL prefixes of the finality certificate documents) read
        for ``group``'s archives (docs/http-api.md, "The cluster level"): the group's own
        ``certificates`` (set only with its own ``rpc``: its cluster's), else
        ``cluster_proof.certificates`` (a group with its own ``rpc`` may be the same
        cluster, another region's RPC; another cluster's certificate verifies against none
        of the group's stakes, so reading it proves nothing wrong); None or a group not
        configured: the top-level ones. Empty: none. Pure."""
        found = self.group_named(group) if group is not None else None
        if found is not None and found.certificates:
            return found.certificates
        return self.cluster_proof.certificates

    def group_named(self, name: str) -> TargetGroup | None:
        """The group called ``name`` (the first so named), or None."""
        groups = self.target_groups
        if len(groups) <= _SCANNED_GROUPS:
            return next((g for g in groups if g.group == name), None)
        # Looked up, not scanned: the load asks it of every group (its checks and warnings),
        # and 20,000 groups (a file of 1.2 MB, within the size bound) took minutes in scans.
        held = _GROUP_INDEX.get(id(groups))
        if held is None or held[0] is not groups:
            if len(_GROUP_INDEX) >= _INDEXES_KEPT:
                _GROUP_INDEX.clear()
            index: dict[str, TargetGroup] = {}
            for group in groups:
                index.setdefault(group.group, group)
            held = _GROUP_INDEX[id(groups)] = (groups, index)
        return held[1].get(name)


#: Groups a lookup scans (:meth:`Config.group_named`); past it, an index of them by name,
#: one per tuple of groups (kept with it: its id is its key while the cache holds it).
_SCANNED_GROUPS = 16
_INDEXES_KEPT = 8
_GROUP_INDEX: dict[int, tuple[tuple[TargetGroup, ...], dict[str, TargetGroup]]] = {}


def rpc_identity(url: str) -> str:
    """``url`` as one RPC: scheme and host lower case, the scheme's default port and a
    trailing ``/`` dropped."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(scheme)
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}?{parts.query}"
