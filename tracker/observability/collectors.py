"""Every collector of :class:`tracker.observability.metrics.Metrics` with a fixed name, declared
as data: its attribute, kind, name, help, labels and buckets (README.md, "Running it in
production"). :class:`~tracker.observability.metrics.Metrics` builds them in one loop."""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "snapshot_tracker_"
# Probes of one target: a fast sidecar answers in milliseconds, scrape_timeout defaults to 10 s.
SCRAPE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Time to a response head: a redirect takes about a millisecond, a listing of thousands of
# targets tens of milliseconds, a proxied head up to first_byte_timeout and beyond.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.frozen
class Collector:
    """One collector of :class:`Metrics`, declared as data: built by :meth:`build` into the
    attribute it is kept under."""

    attribute: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    #: The name after :data:`PREFIX`.
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def build(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        """The collector, registered on ``registry``."""
        name, labels = PREFIX + self.name, list(self.labels)
        if self.kind is Histogram:
            return Histogram(name, self.help, labels, buckets=self.buckets, registry=registry)
        return self.kind(name, self.help, labels, registry=registry)


#: Every collector with a fixed name (the probes' per-target series are
#: :class:`~tracker.observability.probemetrics.ProbeSeries`; ``build_info`` an Info).
COLLECTORS = (
    Collector("targets", Gauge, "targets", "Configured targets.", ("group",)),
    Collector("targets_up", Gauge, "targets_up", "Targets whose last probe succeeded.", ("group",)),
    Collector(
        "best_full_slot", Gauge, "best_full_slot", "Slot of the best full snapshot.", ("group",)
    ),
    Collector(
        "best_incremental_slot",
        Gauge,
        "best_incremental_slot",
        "Slot of the best incremental snapshot on top of the best full one.",
        ("group",),
    ),
    Collector(
        "snapshot_age_slots",
        Gauge,
        "snapshot_age_slots",
        "Slots between the cluster's current slot and the group's newest snapshot.",
        ("group",),
    ),
    Collector(
        "cluster_rpc_up",
        Gauge,
        "cluster_rpc_up",
        "1 when the group's rpc answered its last getSlot, 0 when it failed; none for a"
        " group without an rpc.",
        ("group",),
    ),
    Collector(
        "http_requests",
        Counter,
        "http_requests_total",
        "HTTP requests answered, by route template and status code.",
        ("route", "status"),
    ),
    Collector(
        "request_duration",
        Histogram,
        "http_request_duration_seconds",
        "Seconds from a request's arrival to its response head, by route template.",
        ("route",),
        REQUEST_BUCKETS,
    ),
    Collector(
        "archive_requests",
        Counter,
        "archive_requests_total",
        "What archive requests and cache refreshes came to.",
        ("outcome",),
    ),
    Collector(
        "served_bytes",
        Counter,
        "served_bytes_total",
        "Archive bytes sent to clients, by where they came from.",
        ("source",),
    ),
    Collector("active_streams", Gauge, "active_streams", "Archive responses being sent now."),
    Collector("cache_size", Gauge, "cache_size_bytes", "Bytes of archives in the disk cache."),
    Collector(
        "upstream_bytes",
        Counter,
        "upstream_bytes_total",
        "Archive bytes read from upstream sources.",
        ("group", "kind"),
    ),
    Collector(
        "shared_readers",
        Counter,
        "shared_readers_total",
        "Clients that read a file while a cache refresh of it was running.",
    ),
    Collector(
        "refresh_resumes",
        Counter,
        "refresh_resumes_total",
        "Cache refreshes resumed with a Range request after an upstream break.",
    ),
    Collector(
        "refresh_source_bytes",
        Counter,
        "refresh_source_bytes_total",
        "Bytes each source gave the cache refreshes it took part in (a refresh from several"
        " sources: each one's share).",
        ("group", "target"),
    ),
    Collector(
        "refresh_source_seconds",
        Counter,
        "refresh_source_seconds_total",
        "Seconds each source took part in cache refreshes (its rate: bytes over seconds).",
        ("group", "target"),
    ),
    Collector(
        "source_failures",
        Counter,
        "source_failures_total",
        "Sources that failed to deliver a proxied file; the next source advertising it is"
        " asked (a failover) while there is one.",
        ("group",),
    ),
    Collector(
        "archives_rejected",
        Counter,
        "archives_rejected",
        "Archives that failed their check before being stored or handed out.",
        ("group",),
    ),
    Collector(
        "source_queue_waiting",
        Gauge,
        "source_queue_waiting",
        "Requests waiting now for a transfer slot of a source at its max_transfers.",
    ),
    Collector(
        "source_queue",
        Counter,
        "source_queue_total",
        "Requests that found every transfer slot of a source taken, by what became of them.",
        ("outcome",),
    ),
    Collector(
        "object_store_up",
        Gauge,
        "object_store_up",
        "1 when the object store answered its last call, 0 when it failed or has not "
        "answered since the start; by bucket, none without one.",
        ("bucket",),
    ),
    Collector(
        "object_uploads",
        Counter,
        "object_uploads_total",
        "Multipart uploads into the object store, by outcome.",
        ("outcome",),
    ),
    Collector(
        "object_lock_takeovers",
        Counter,
        "object_lock_takeovers_total",
        "Refresh locks taken over from a replica that stopped renewing them.",
    ),
    Collector(
        "object_store_errors",
        Counter,
        "object_store_errors_total",
        "Failed object-store operations, by operation.",
        ("operation",),
    ),
    Collector(
        "bucket_sides_refused",
        Counter,
        "bucket_sides_refused_total",
        "Proof and attestation objects of bucket copies refused when read, by kind.",
        ("kind",),
    ),
    Collector(
        "learned_dropped",
        Counter,
        "learned_dropped_total",
        "Entries and documents of what the tracker learned that could not be read: ignored.",
        ("what",),
    ),
    Collector(
        "internal_errors",
        Counter,
        "internal_errors_total",
        "Exceptions no rule foresaw, each contained where it happened (a client connection:"
        " closed, every other one served on; a task of the tracker's: a background loop run"
        " again, a scrape round, a spawned task) and logged with its traceback: a bug to"
        " report.",
        ("where",),
    ),
)
