"""Prometheus metrics of the tracker, on a registry of their own (no global state).

One :class:`Metrics` is made by the service and passed to the scraper, the API, the proxy and
the cache; ``GET /metrics`` on the internal listener answers :meth:`Metrics.render`. Names
start with ``snapshot_tracker_`` and use base units (seconds, bytes). Labels are bounded:
``group`` and ``target`` come from the config file (and are removed with
:meth:`Metrics.remove_target` / :meth:`Metrics.set_groups` when a reload drops them; an
event of a group the config no longer has makes no series, :func:`counted`),
``route`` is a route template, never a request path. A ``target`` label shows the configured
URL with its userinfo and query masked (``http://***@host/``): two targets that differ only
there share one series. Every node cluster discovery found shares one ``target`` label per
group, :data:`DISCOVERED` (:func:`target_label`): the network decides how many nodes there
are, and a series set per node made ~19 series each, 57,000 at mainnet's 3,000 nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tracker import __version__
from tracker.observability.collectors import COLLECTORS, PREFIX, SCRAPE_BUCKETS
from tracker.observability.folding import FoldedCounts
from tracker.observability.probemetrics import ProbeSeries
from tracker.observability.proofmetrics import ProofProgress
from tracker.observability.redact import redact_text

#: What happened to an archive request (label ``outcome``).
Outcome = Literal[
    "redirect",  # 303 to a source
    "proxy",  # bytes streamed from upstream, not cached
    "local",  # bytes served from a local ledger directory
    "cache_hit",  # bytes served from the disk cache
    "cache_miss",  # the file was not cached (it is then proxied or refreshed)
    "refresh_ok",  # a refresh completed and was promoted into the cache
    "refresh_failed",  # a refresh ended in error; nothing was promoted
    "refresh_no_space",  # not enough free disk even after eviction: streamed uncached
    "refresh_rejected",  # a refresh's archive failed its check; nothing was promoted
    "refresh_stale",  # a refresh came whole and checked, no longer the best: not promoted
    "upstream_failed",  # no source could deliver the bytes (502)
    "not_found",  # 404: no source advertises the archive asked for by name
    "object_redirect",  # 303 to a presigned URL of the object store
    "object_store",  # bytes streamed from the object store through the tracker
    "replica",  # bytes proxied from the replica refreshing the file into the bucket
    "busy",  # as many downloads as the descriptor limit allows were running (503)
]
#: What became of a request that found every transfer slot of a source taken and waited in
#: its queue (label ``outcome``; ``source_limits``, docs/http-api.md "Source limits").
QueueOutcome = Literal[
    "served",  # a slot freed within the wait
    "full",  # the queue was full: turned away at once (503 when no other source had room)
    "timeout",  # no slot within the wait (503 when no other source had room)
    "left",  # the request was cancelled while it waited (its client left)
]
#: What became of an upload into the object store (label ``outcome``).
UploadOutcome = Literal["ok", "failed"]
#: Where bytes sent to clients came from (label ``source``).
ByteSource = Literal["cache", "upstream", "local", "object_store", "replica"]
#: What of the learned state could not be read (label ``what``): one entry, or a whole file
#: or object.
LearnedLoss = Literal["entry", "document"]
#: Where an exception no rule foresaw was contained (label ``where``): one client connection's
#: handler, closed for it (tracker/zerocopy/server.py, ``connection_failed``), or one of the
#: tracker's own tasks, logged as ``task_failed`` with the task's name: a background loop,
#: run again (``service.supervised``), a scrape round, the next one on schedule
#: (``Scraper.run``), a spawned transfer task, ended alone (``Transfers.spawn``). Two
#: labels, not one a site: a client may trigger the first again (the firewall holds it off
#: meanwhile), only the tracker's own work the second; the log line names which task.
InternalErrorSite = Literal["connection", "task"]
#: Kind of archive (label ``kind``).
Kind = Literal["full", "incremental"]


#: The ``target`` label of every node cluster discovery found (docs/http-api.md, "Internal
#: routes"): not a URL, so no configured target's label is this.
DISCOVERED = "discovered"


def target_label(target: str, *, discovered: bool) -> str:
    """The ``target`` label of a target's series: a configured target's URL or path with its
    userinfo and query masked; :data:`DISCOVERED` for any node found by cluster discovery,
    whose number and addresses the cluster's gossip decides (a label each would grow
    Prometheus without bound and churn with every node that comes and goes; each node's
    health is on the status page and in ``/v1/targets``). Pure."""
    return DISCOVERED if discovered else redact_text(target)


def counted(configured: frozenset[str] | None, group: str) -> bool:
    """Whether an event of ``group`` makes or moves its series: only a group the config has
    now (``configured``, :meth:`Metrics.set_groups`). A refresh, probe or slot read that a
    reload removing its group left running ends later: its bytes, failures, rejections or
    gauges would make the group's series again, after the reload dropped them, and nothing
    would drop them again. ``None`` (never told, a :class:`Metrics` of its own): every group
    counts. Pure."""
    return configured is None or group in configured


class Metrics:
    """Every collector of the tracker on ``self.registry``; methods say what happened.

    All methods are cheap, synchronous and thread-safe (prometheus-client locks), so they may
    be called from request handlers and worker threads alike.
    """

    # Built from COLLECTORS (one attribute each): typed here for the callers.
    targets: Gauge
    targets_up: Gauge
    best_full_slot: Gauge
    best_incremental_slot: Gauge
    snapshot_age_slots: Gauge
    cluster_rpc_up: Gauge
    http_requests: Counter
    request_duration: Histogram
    archive_requests: Counter
    served_bytes: Counter
    active_streams: Gauge
    cache_size: Gauge
    upstream_bytes: Counter
    shared_readers: Counter
    refresh_resumes: Counter
    refresh_source_bytes: Counter
    refresh_source_seconds: Counter
    source_failures: Counter
    archives_rejected: Counter
    source_queue_waiting: Gauge
    source_queue: Counter
    object_store_up: Gauge
    object_uploads: Counter
    object_lock_takeovers: Counter
    object_store_errors: Counter
    bucket_sides_refused: Counter
    learned_dropped: Counter
    internal_errors: Counter

    def __init__(self, *, process: bool = True) -> None:
        """``process``: also export ``process_*``, ``python_gc_*`` and ``python_info``."""
        self.registry = CollectorRegistry(auto_describe=True)
        # group -> target label -> the targets sharing that series, for removal
        self._targets: dict[str, dict[str, set[str]]] = {}
        # The groups with series of their discovered nodes (DISCOVERED): they go with the
        # group only, so that their counters never restart while the group is configured.
        self._discovered: set[str] = set()
        # The groups the config has now (set_groups); None until told: every group counts.
        self._groups: frozenset[str] | None = None
        reg = self.registry
        self.build_info = Info(PREFIX + "build", "Version of the tracker.", registry=reg)
        self.build_info.info({"version": __version__})

        # Per target: thousands of discovered nodes, kept compact (see the module).
        self.probes = ProbeSeries(
            PREFIX + "scrape_duration_seconds",
            "Duration of one probe of one target, successful or not.",
            PREFIX + "scrape_errors_total",
            "Failed probes of a target.",
            SCRAPE_BUCKETS,
        )
        reg.register(self.probes)
        #: The accounts proofs' progress; the proxy tells it its shared budget.
        self.proofs = ProofProgress()
        reg.register(self.proofs)
        # The log lines folded past their rate (the process's count, as its log stream is).
        reg.register(FoldedCounts())
        for spec in COLLECTORS:
            setattr(self, spec.attribute, spec.build(reg))
        for upload in get_args(UploadOutcome):
            self.object_uploads.labels(upload)
        for queued in get_args(QueueOutcome):
            self.source_queue.labels(queued)
        # Known label values start at 0, so rate() and absent() work before the first event.
        # Children looked up once: labels() costs a lock and a dict walk per call.
        self._outcomes = {o: self.archive_requests.labels(o) for o in get_args(Outcome)}
        self._requests: dict[tuple[str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        for source in get_args(ByteSource):
            self.served_bytes.labels(source)
        for loss in get_args(LearnedLoss):
            self.learned_dropped.labels(loss)
        for site in get_args(InternalErrorSite):
            self.internal_errors.labels(site)
        if process:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    def set_groups(self, groups: Iterable[str]) -> None:
        """The groups the config has now: at start and at every reload. Every series of a
        group it no longer has is dropped (:meth:`remove_group`), and that group's events
        make none from then on (:func:`counted`); a group a later reload brings back counts
        again."""
        configured = frozenset(groups)
        known = (self._groups or frozenset()) | self._targets.keys() | self._discovered
        for group in known - configured:
            self.remove_group(group)
        self._groups = configured

    def observe_scrape(
        self, group: str, target: str, seconds: float, *, ok: bool, discovered: bool = False
    ) -> None:
        """One probe of ``target`` took ``seconds``; ``ok=False`` also counts an error.
        ``discovered``: a node of cluster discovery, counted in its group's one series
        (:func:`target_label`)."""
        if not counted(self._groups, group):  # a probe a reload removing its group left
            return
        label = self._label(group, target, discovered)
        self.probes.observe(group, label, seconds, failed=not ok)  # errors present at 0

    def _label(self, group: str, target: str, discovered: bool) -> str:
        """``target``'s label, remembered for its removal (a discovered node's: its
        group's)."""
        label = target_label(target, discovered=discovered)
        if discovered:
            self._discovered.add(group)
        else:
            self._targets.setdefault(group, {}).setdefault(label, set()).add(target)
        return label

    def set_targets(self, group: str, *, up: int, total: int) -> None:
        """``up`` of the ``total`` configured targets of ``group`` answered their last probe.
        The group's counters are there from its first round, at 0: a series born at 1 by
        its first event has no sample before it, so ``increase()`` (the rejected-archive
        alert) never saw that first one."""
        if not counted(self._groups, group):
            return
        self.targets.labels(group).set(total)
        self.targets_up.labels(group).set(up)
        for per_group in (self.source_failures, self.archives_rejected):
            per_group.labels(group)

    def reported_targets(self) -> set[tuple[str, str]]:
        """Every ``(group, target)`` with series of its own now (probes, shares of
        refreshes): configured targets only, a discovered node's being its group's."""
        return {
            (group, target)
            for group, labels in self._targets.items()
            for targets in labels.values()
            for target in targets
        }

    def set_best_slots(self, group: str, *, full: int | None, incremental: int | None) -> None:
        """Slots of the group's best full and best incremental snapshot; None drops the series
        (no snapshot is not slot 0)."""
        if not counted(self._groups, group):
            return
        _set_or_remove(self.best_full_slot, group, full)
        _set_or_remove(self.best_incremental_slot, group, incremental)

    def set_snapshot_age(self, group: str, slots: int | None) -> None:
        """Age in slots of the group's newest snapshot; None (unknown) drops the series."""
        if not counted(self._groups, group):  # a slot read a reload removing it left
            return
        _set_or_remove(self.snapshot_age_slots, group, slots)

    def set_cluster_rpc_up(self, group: str, up: bool | None) -> None:
        """Whether the group's ``rpc`` answered its last ``getSlot``; None (no ``rpc``)
        drops the series: a group that has none has nothing down."""
        if not counted(self._groups, group):  # a slot read a reload removing it left
            return
        _set_or_remove(self.cluster_rpc_up, group, None if up is None else int(up))

    def count_request(self, route: str, status: int, seconds: float | None = None) -> None:
        """An HTTP request to ``route`` (a template such as ``/v1/{name}``) got ``status``;
        ``seconds``: how long it took to its response head."""
        child = self._requests.get((route, status))
        if child is None:  # routes are templates and statuses few: a bounded dict
            child = self._requests[(route, status)] = self.http_requests.labels(route, str(status))
        child.inc()
        if seconds is not None:
            duration = self._durations.get(route)
            if duration is None:
                duration = self._durations[route] = self.request_duration.labels(route)
            duration.observe(seconds)

    def count_outcome(self, outcome: Outcome) -> None:
        """An archive request or a cache refresh came to ``outcome``."""
        self._outcomes[outcome].inc()

    def add_served_bytes(self, source: ByteSource, count: int) -> None:
        """``count`` archive bytes from ``source`` were sent to a client."""
        self.served_bytes.labels(source).inc(count)

    @contextmanager
    def stream(self) -> Iterator[None]:
        """Count an archive response as active for the duration of the ``with`` block."""
        self.active_streams.inc()
        try:
            yield
        finally:
            self.active_streams.dec()

    def set_cache_size(self, size: int) -> None:
        """The disk cache now holds ``size`` bytes of archives."""
        self.cache_size.set(size)

    def add_upstream_bytes(self, group: str, kind: Kind, count: int) -> None:
        """``count`` bytes of a ``kind`` archive of ``group`` were read from upstream."""
        if not counted(self._groups, group):  # a refresh a reload removing its group left
            return
        self.upstream_bytes.labels(group, kind).inc(count)

    def set_object_store_up(self, bucket: str, up: bool) -> None:
        """The object store of ``bucket`` answered (``up``) or failed its last call, or has
        not answered yet (not ``up``). No series without a bucket: an unlabelled gauge
        reads 0, "down", on every tracker that has none (its alert fired there)."""
        self.object_store_up.labels(bucket).set(1 if up else 0)

    def count_object_upload(self, outcome: str) -> None:
        """An upload into the object store ended ("ok" or "failed")."""
        self.object_uploads.labels("ok" if outcome == "ok" else "failed").inc()

    def count_object_takeover(self) -> None:
        """A stale refresh lock of another replica was taken over."""
        self.object_lock_takeovers.inc()

    def count_object_error(self, operation: str) -> None:
        """An object-store ``operation`` (a fixed name, never a key) failed."""
        self.object_store_errors.labels(operation).inc()

    def count_bucket_side_refused(self, kind: str) -> None:
        """A bucket copy's ``kind`` object ("proof" or "attestation") was refused."""
        self.bucket_sides_refused.labels("proof" if kind == "proof" else "attestation").inc()

    def count_learned_dropped(self, what: LearnedLoss, count: int = 1) -> None:
        """``count`` entries or documents of the learned state could not be read."""
        self.learned_dropped.labels(what).inc(count)

    def count_internal_error(self, where: InternalErrorSite) -> None:
        """An exception no rule foresaw was contained at ``where`` (a bug: each is logged
        with its traceback)."""
        self.internal_errors.labels(where).inc()

    def count_source_failure(self, group: str) -> None:
        """A source of ``group`` failed to deliver a proxied file (the next one is asked)."""
        if not counted(self._groups, group):
            return
        self.source_failures.labels(group).inc()

    def source_queue_event(self, event: str) -> None:
        """A request joined a source's queue (``queued``) or left it (a :data:`QueueOutcome`:
        ``full`` never joined)."""
        if event == "queued":
            self.source_queue_waiting.inc()
            return
        if event in ("served", "timeout", "left"):
            self.source_queue_waiting.dec()
        if event in get_args(QueueOutcome):
            self.source_queue.labels(event).inc()

    def count_archive_rejected(self, group: str) -> None:
        """An archive of ``group`` failed its check: it was neither stored nor handed out."""
        if not counted(self._groups, group):
            return
        self.archives_rejected.labels(group).inc()

    def count_shared_reader(self) -> None:
        """A client joined a running cache refresh instead of starting its own download."""
        self.shared_readers.inc()

    def count_refresh_resume(self) -> None:
        """A cache refresh resumed after an upstream break."""
        self.refresh_resumes.inc()

    def count_refresh_share(
        self, group: str, target: str, size: int, seconds: float, *, discovered: bool = False
    ) -> None:
        """``target`` gave a refresh of ``group`` ``size`` bytes over ``seconds`` (its share
        of a refresh from several sources); ``discovered``: as for :meth:`observe_scrape`."""
        if not counted(self._groups, group):
            return
        label = self._label(group, target, discovered)
        self.refresh_source_bytes.labels(group, label).inc(size)
        self.refresh_source_seconds.labels(group, label).inc(max(0.0, seconds))

    def remove_target(self, group: str, target: str) -> None:
        """Drop every series of ``target`` in ``group`` (no longer configured)."""
        label = redact_text(target)
        labels = self._targets.get(group, {})
        sharing = labels.get(label, set())
        sharing.discard(target)
        if sharing:
            return  # another target still reports under the same masked label
        labels.pop(label, None)
        self.probes.remove(group, label)
        for per_target in (self.refresh_source_bytes, self.refresh_source_seconds):
            _remove(per_target, group, label)

    def remove_group(self, group: str) -> None:
        """Drop every series of ``group`` and of its targets (the group left the config)."""
        labels = list(self._targets.pop(group, {}))
        if group in self._discovered:
            self._discovered.discard(group)
            labels.append(DISCOVERED)
        for label in labels:
            self.probes.remove(group, label)
            for per_target in (self.refresh_source_bytes, self.refresh_source_seconds):
                _remove(per_target, group, label)
        for gauge in (
            self.targets,
            self.targets_up,
            self.best_full_slot,
            self.best_incremental_slot,
            self.snapshot_age_slots,
            self.cluster_rpc_up,
        ):
            _remove(gauge, group)
        for kind in get_args(Kind):
            _remove(self.upstream_bytes, group, kind)
        for per_group in (self.source_failures, self.archives_rejected):
            _remove(per_group, group)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric: ``(body, content type)``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    """Drop one series; one that does not exist is no error (prometheus-client before 0.22
    raised KeyError for it)."""
    with suppress(KeyError):
        metric.remove(*labels)


def _set_or_remove(gauge: Gauge, group: str, value: int | None) -> None:
    if value is None:
        _remove(gauge, group)
    else:
        gauge.labels(group).set(value)
