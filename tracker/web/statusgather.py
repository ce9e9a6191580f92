"""What the status page shows, read from the running tracker: :func:`gather_status`.

A thin layer: it only reads (the config, the index, the scraper's target health, the disk
cache and its refreshes, the bucket's status, the ring of recent events) and copies into the
plain values of :mod:`tracker.web.statusview`, which with :mod:`tracker.web.statuspage`
holds every decision about what to show and how. The service wires the sources in
(:class:`StatusSources`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import attrs

from tracker import __version__
from tracker.cache.store import Cache, CachedFile, RefreshProgress
from tracker.config.bounded import LOOK_BOUND, no_answer
from tracker.config.schema import Config
from tracker.config.warnings import nothing_signed
from tracker.discovery.roster import nothing_listed
from tracker.discovery.scrape import Scraper, TargetHealth
from tracker.observability.logs import RecentEvents
from tracker.ordering.index import Index, SnapshotSource, TargetKey
from tracker.proof.accounts.budget import running
from tracker.proof.records.attestations import Attestations
from tracker.web.statusview import (
    SLOT_SECONDS,
    BestView,
    BucketView,
    CachedView,
    CacheView,
    GroupView,
    ProofView,
    SigningView,
    StatusView,
    TargetView,
    refresh_use,
)
from tracker.web.wire import target_errors

#: The log events the page lists, by section: ``rejected`` (archives that failed their
#: check) and ``failover`` (a source, a transfer or the bucket failed and the request went
#: on another way).
PAGE_EVENTS = {
    "archive_rejected": "rejected",
    "upstream_failed": "failover",  # a source failed: the next one advertising the file is asked
    "upstream_broke": "failover",  # a transfer broke: resumed on the same source
    "upstream_resume_refused": "failover",  # ... but the source answered another file
    "proxy_failed": "failover",  # no source could deliver: 502
    "replica_unreachable": "failover",  # the replica refreshing a file: streamed from upstream
    "object_stream_failed": "failover",  # the bucket's copy: streamed another way
    "object_store_down": "failover",  # requests go to the disk cache and the sources
}

#: ``(group, archive name)`` -> the lower-case hex SHA-256 of a verified archive, or None.
Digest = Callable[[str, str], str | None]


#: ``(group, archive name)`` -> the level its verified copy was proven to, or None.
LevelOf = Callable[[str, str], str | None]


def no_digest(_group: str, _name: str) -> str | None:
    """The digest of every archive when nothing verifies them: unknown."""
    return None


@attrs.frozen
class StatusSources:
    """Where the page's values come from (each a reader of a running component).

    ``cache`` is the disk cache of the current config (None without one), ``listing`` its
    files as listed within a bound on a look (None: no answer; never in one of trio's
    shared threads: :meth:`tracker.cache.opening.CacheDirectories.listed`), ``refreshes``
    its refreshes in flight with their readers; ``store_status`` the bucket's ``/v1/store``
    status (None without a bucket); ``events`` the ring of :data:`PAGE_EVENTS`;
    ``digest`` the SHA-256 of a verified archive when known, ``level`` what it was proven
    to. ``clock`` is Unix time (measured throughputs are aged on the index's own clock).
    """

    config: Callable[[], Config]
    index: Index
    scraper: Scraper
    cache: Callable[[], Cache | None]
    listing: Callable[[Cache], Awaitable[list[CachedFile] | None]]
    refreshes: Callable[[], list[RefreshProgress]]
    store_status: Callable[[], dict[str, Any] | None]
    events: RecentEvents
    digest: Digest = no_digest
    level: LevelOf = no_digest
    clock: Callable[[], float] = time.time
    #: A target's bytes per second while bytes come from it (0: none do), on the index's
    #: clock; shown before the index's throughput, which a transfer's end updates.
    flowing: Callable[[TargetKey, float], float] = lambda _key, _now: 0.0
    #: The statements this tracker signs (None: not shown).
    attestations: Attestations | None = None
    #: Per target: how the latest refresh from several sources that asked it used it.
    sources_used: Callable[[], Mapping[TargetKey, Mapping[str, object]]] = dict
    #: Per target: why its copy of an archive is held back after a failed check, at a time
    #: of the index's clock (docs/http-api.md, "Verified archives").
    rejected: Callable[[float], Mapping[TargetKey, str]] = lambda _now: {}
    #: Per group whose cluster ``rpc`` failed its last ``getSlot``: its URL and why
    #: (``tracker.reporting.rpc_failures``, the same reads ``snapshot_tracker_cluster_rpc_up``
    #: reports).
    rpc_failures: Callable[[], Mapping[str, tuple[str, str]]] = dict


async def gather_status(sources: StatusSources, refresh: int) -> StatusView:
    """The page's value now (``refresh``: seconds between the page's own reloads).

    Lists the cache directory in a thread of its own within the bound on a look (a
    directory on a hung mount is shown as such: each page held one of trio's worker threads
    for as long as it hung, and pages that reload themselves took every one, which the
    daemon's disk reads wait for; a listing still hanging is not started again); everything
    else is read in memory.
    """
    config, now = sources.config(), sources.clock()
    cache = sources.cache()
    cache_view = None
    if cache is not None:
        cached = await sources.listing(cache)
        problem = cache.problem if cached is not None else no_answer(cache.root, LOOK_BOUND)
        files = tuple(
            CachedView(
                f.group,
                f.name,
                f.size,
                f.cached_at,
                sources.digest(f.group, f.name),
                sources.level(f.group, f.name),
            )
            for f in cached or ()
        )
        uncached = tuple(sorted(cache.uncached.items()))
        refreshes = tuple(sources.refreshes())
        proofs = tuple(
            ProofView(p.records, p.bytes, p.spilled, p.held, p.workers_busy, p.hashed)
            for p in running()
        )
        cache_view = CacheView(cache.root, files, refreshes, uncached, problem, proofs)
    health = sources.scraper.in_order()
    failures = sources.rpc_failures()
    return StatusView(
        version=__version__,
        now=now,
        mode=_mode(config),
        groups=tuple(
            _group(sources, g.group, health, now, failures.get(g.group))
            for g in config.target_groups
        ),
        targets=tuple(_targets(sources, health)),
        cache=cache_view,
        bucket=_bucket(sources.store_status()),
        rejected=tuple(sources.events.recent("rejected")),
        failovers=tuple(sources.events.recent("failover")),
        refresh=refresh,
        signing=_signing(sources.attestations, config, now),
    )


def _signing(attestations: Attestations | None, config: Config, now: float) -> SigningView | None:
    """The signing card's value: what is due is signed first (as the listings do), so the
    count is the statements a client would be served now."""
    if attestations is None:
        return None
    attestations.sync(now)
    last = attestations.last_signed
    level = ""
    if last is not None:  # the level of this tracker's statement of that archive
        own = attestations.documents(last[1], last[2])
        level = own[0].statement.level.label if own else ""
    return SigningView(
        public_key=attestations.public_key,
        since=attestations.since,
        held=attestations.held,
        last_name=last[2] if last is not None else "",
        last_level=level,
        last_at=last[0] if last is not None else None,
        problem=nothing_signed(config),
    )


def _mode(config: Config) -> str:
    if not config.proxy_snapshot_downloads:
        return "redirect mode"
    mode = "proxy mode"
    if config.proxy_snapshot_cache_dir:
        mode += " with a disk cache"
    if config.object_store is not None:
        mode += " and a bucket"
    return mode


def _group(
    sources: StatusSources,
    group: str,
    health: list[TargetHealth],
    now: float,
    rpc_failure: tuple[str, str] | None,
) -> GroupView:
    # Snapshot sources only: a cluster RPC URL (kind "cluster") lists no snapshot, and the
    # metrics and the systemd status line do not count it either.
    mine = [h for h in health if h.target.key.group == group and h.target.kind != "cluster"]
    index = sources.index
    full, incremental = index.best_full(group), index.best_incremental(group)
    holders = _holders(index, group, [s.info.files[0].bare_name for s in (full, incremental) if s])
    return GroupView(
        name=group,
        targets=len(mine),
        up=sum(h.health == "up" for h in mine),
        full=_best(sources, "full", full, holders, now),
        incremental=_best(sources, "incremental", incremental, holders, now),
        predicted_seconds=_predicted(index, incremental or full),
        rpc_failure=rpc_failure,
    )


def _predicted(index: Index, source: SnapshotSource | None) -> float | None:
    """The predicted seconds to running of the pair handed out (its incremental's source
    carries the pair's; a full alone its own)."""
    return None if source is None else index.predicted(source)


def _holders(index: Index, group: str, names: list[str]) -> dict[str, int]:
    """How many targets of ``group`` advertise each of ``names`` (in one pass: thousands of
    targets may)."""
    holding: dict[str, set[TargetKey]] = {name: set() for name in names}
    for source in index.sources(group):
        for f in source.info.files:
            keys = holding.get(f.bare_name)
            if keys is not None:
                keys.add(source.key)
    return {name: len(keys) for name, keys in holding.items()}


def _best(
    sources: StatusSources,
    kind: Literal["full", "incremental"],
    source: SnapshotSource | None,
    holders: dict[str, int],
    now: float,
) -> BestView | None:
    if source is None:
        return None
    archive = source.info.files[0]
    group, name = source.key.group, archive.bare_name
    cluster = sources.index.cluster_slot(group)  # its own cluster's: groups differ
    age_slots = None if cluster is None else max(0, cluster - source.info.slot)
    estimated = archive.mod_time is None
    if archive.mod_time is not None:
        age: float | None = now - archive.mod_time.timestamp()
    else:
        age = None if age_slots is None else age_slots * SLOT_SECONDS
    return BestView(
        kind=kind,
        name=name,
        slot=source.info.slot,
        age_slots=age_slots,
        age_seconds=age,
        estimated=estimated,
        size=archive.size,
        sources=holders.get(name, 0),
        sha256=sources.digest(group, name),
        level=sources.level(group, name),
    )


def _targets(sources: StatusSources, health: list[TargetHealth]) -> list[TargetView]:
    index, flowing = sources.index, sources.flowing
    # A copy a proof kept out of the ranking or that failed its check says why, as in
    # /v1/targets.
    mismatches = target_errors(index, sources.rejected(index.clock()))
    uses = sources.sources_used()
    out = []
    for h in health:
        key = h.target.key
        probed, achieved = index.speeds.figures(key, index.clock())
        out.append(
            TargetView(
                group=key.group,
                target=key.target,
                kind=h.target.kind,
                discovered=key.discovered,
                health=h.health,
                last_error=h.last_error or mismatches.get(key, ""),
                latency=h.last_duration,
                throughput=flowing(key, index.clock()) or index.throughput(key),
                last_scrape=h.last_scrape.timestamp() if h.last_scrape else None,
                snapshots=index.count(key),
                probed=probed,
                achieved=achieved,
                note=nothing_listed(h.target.kind, h.health, index.count(key)),
                refresh=refresh_use(uses.get(key)),
            )
        )
    return out


def _bucket(status: dict[str, Any] | None) -> BucketView | None:
    if status is None:
        return None
    return BucketView(
        endpoint=str(status.get("endpoint") or ""),
        bucket=str(status.get("bucket") or ""),
        prefix=str(status.get("prefix") or ""),
        up=bool(status.get("up")),
        last_error=str(status.get("last_error") or ""),
        objects_known=int(status.get("objects_known") or 0),
        uploads_running=int(status.get("uploads_running") or 0),
    )
