"""Prometheus metrics: rendered, parsed back with prometheus-client's parser, values move."""

from __future__ import annotations

import gc
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from tracker import __version__
from tracker.observability.collectors import SCRAPE_BUCKETS
from tracker.observability.metrics import DISCOVERED, Metrics, counted, target_label
from tracker.observability.probemetrics import ProbeSeries

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


def test_every_name_has_the_prefix_and_known_outcomes_start_at_zero() -> None:
    found = samples(Metrics(process=False))
    assert all(name.startswith("snapshot_tracker_") for name in names(found))
    assert value(found, "snapshot_tracker_build_info", version=__version__) == 1
    for outcome in ("redirect", "proxy", "cache_hit", "cache_miss", "refresh_ok", "refresh_failed"):
        assert value(found, "snapshot_tracker_archive_requests_total", outcome=outcome) == 0
    for source in ("cache", "upstream", "local"):
        assert value(found, "snapshot_tracker_served_bytes_total", source=source) == 0
    assert value(found, "snapshot_tracker_active_streams") == 0
    assert value(found, "snapshot_tracker_shared_readers_total") == 0
    assert value(found, "snapshot_tracker_refresh_resumes_total") == 0


def test_process_metrics_are_optional() -> None:
    assert "process_open_fds" in names(samples(Metrics()))
    assert "process_open_fds" not in names(samples(Metrics(process=False)))


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.count_shared_reader()
    assert value(samples(first), "snapshot_tracker_shared_readers_total") == 1
    assert value(samples(second), "snapshot_tracker_shared_readers_total") == 0


def test_scrapes_are_timed_and_errors_counted_per_target() -> None:
    metrics = Metrics(process=False)
    metrics.observe_scrape("mainnet", "http://a:1", 0.02, ok=True)
    metrics.observe_scrape("mainnet", "http://a:1", 3.0, ok=False)
    metrics.observe_scrape("mainnet", "http://b:1", 0.5, ok=True)
    found = samples(metrics)
    a = {"group": "mainnet", "target": "http://a:1"}
    b = {"group": "mainnet", "target": "http://b:1"}
    assert value(found, "snapshot_tracker_scrape_duration_seconds_count", **a) == 2
    assert value(found, "snapshot_tracker_scrape_duration_seconds_sum", **a) == 3.02
    assert value(found, "snapshot_tracker_scrape_duration_seconds_bucket", **a, le="0.025") == 1
    assert value(found, "snapshot_tracker_scrape_errors_total", **a) == 1
    assert value(found, "snapshot_tracker_scrape_errors_total", **b) == 0


@pytest.mark.parametrize(
    ("target", "discovered", "label"),
    [
        ("http://10.0.0.1:8899", False, "http://10.0.0.1:8899"),  # configured: its own
        ("http://user:pw@a:1/?key=s", False, "http://***@a:1/?***"),  # masked
        ("/var/ledger", False, "/var/ledger"),  # a local directory
        ("http://10.0.0.1:8899", True, DISCOVERED),  # a node of the cluster: its group's
        ("http://user:pw@a:1/", True, DISCOVERED),
    ],
)
def test_target_label(target: str, discovered: bool, label: str) -> None:
    assert target_label(target, discovered=discovered) == label


def probe_series(metrics: Metrics) -> set[frozenset[tuple[str, str]]]:
    """The label sets of the probe error counters: one per series of probes."""
    return {
        labels
        for name, labels in samples(metrics)
        if name == "snapshot_tracker_scrape_errors_total"
    }


def test_discovered_nodes_share_their_groups_series_however_many() -> None:
    # One series set per discovered node: 3,000 nodes of mainnet made 57,000 series and a
    # /metrics of 6.3 MB at every scrape, churning with every node that came and went.
    metrics = Metrics(process=False)
    metrics.set_groups(["mainnet"])
    metrics.observe_scrape("mainnet", "http://10.9.0.1:8000", 0.01, ok=True)  # configured
    for n in range(3000):
        node = f"http://10.1.{n // 250}.{n % 250}:8899"
        metrics.observe_scrape("mainnet", node, 0.02, ok=n % 3 != 0, discovered=True)
        metrics.count_refresh_share("mainnet", node, 10, 1.0, discovered=True)
    mine = {"group": "mainnet", "target": DISCOVERED}
    assert probe_series(metrics) == {
        frozenset(mine.items()),
        frozenset({"group": "mainnet", "target": "http://10.9.0.1:8000"}.items()),
    }
    found = samples(metrics)
    assert value(found, "snapshot_tracker_scrape_duration_seconds_count", **mine) == 3000
    assert value(found, "snapshot_tracker_scrape_errors_total", **mine) == 1000
    assert value(found, "snapshot_tracker_refresh_source_bytes_total", **mine) == 30000
    # Nodes leaving the cluster retire nothing: the group's counters never start over.
    assert metrics.reported_targets() == {("mainnet", "http://10.9.0.1:8000")}
    metrics.set_groups(["other"])  # a reload removes the group: its series go
    assert probe_series(metrics) == set()
    assert "mainnet" not in metrics.render()[0].decode()


def test_group_gauges_and_none_drops_the_series() -> None:
    metrics = Metrics(process=False)
    metrics.set_targets("testnet", up=2, total=3)
    metrics.set_best_slots("testnet", full=300_000, incremental=300_150)
    metrics.set_snapshot_age("testnet", 42)
    found = samples(metrics)
    assert value(found, "snapshot_tracker_targets", group="testnet") == 3
    assert value(found, "snapshot_tracker_targets_up", group="testnet") == 2
    assert value(found, "snapshot_tracker_best_full_slot", group="testnet") == 300_000
    assert value(found, "snapshot_tracker_best_incremental_slot", group="testnet") == 300_150
    assert value(found, "snapshot_tracker_snapshot_age_slots", group="testnet") == 42

    metrics.set_best_slots("testnet", full=400_000, incremental=None)
    metrics.set_snapshot_age("testnet", None)
    found = samples(metrics)
    assert value(found, "snapshot_tracker_best_full_slot", group="testnet") == 400_000
    assert "snapshot_tracker_best_incremental_slot" not in names(found)
    assert "snapshot_tracker_snapshot_age_slots" not in names(found)


def test_request_outcome_and_byte_counters_move() -> None:
    metrics = Metrics(process=False)
    metrics.count_request("/v1/{name}", 303)
    metrics.count_request("/v1/{name}", 303)
    metrics.count_request("/v1/best_snapshots", 200)
    metrics.count_outcome("redirect")
    metrics.count_outcome("cache_hit")
    metrics.add_served_bytes("cache", 1000)
    metrics.add_served_bytes("cache", 24)
    metrics.add_upstream_bytes("mainnet", "full", 5 * 2**30)
    metrics.count_shared_reader()
    metrics.count_refresh_resume()
    metrics.set_cache_size(123_456)
    found = samples(metrics)
    assert (
        value(found, "snapshot_tracker_http_requests_total", route="/v1/{name}", status="303") == 2
    )
    route = "/v1/best_snapshots"
    assert value(found, "snapshot_tracker_http_requests_total", route=route, status="200") == 1
    assert value(found, "snapshot_tracker_archive_requests_total", outcome="redirect") == 1
    assert value(found, "snapshot_tracker_archive_requests_total", outcome="cache_hit") == 1
    assert value(found, "snapshot_tracker_archive_requests_total", outcome="proxy") == 0
    assert value(found, "snapshot_tracker_served_bytes_total", source="cache") == 1024
    assert value(found, "snapshot_tracker_served_bytes_total", source="upstream") == 0
    upstream = value(found, "snapshot_tracker_upstream_bytes_total", group="mainnet", kind="full")
    assert upstream == 5 * 2**30
    assert value(found, "snapshot_tracker_shared_readers_total") == 1
    assert value(found, "snapshot_tracker_refresh_resumes_total") == 1
    assert value(found, "snapshot_tracker_cache_size_bytes") == 123_456


def test_active_streams_follow_the_with_block_even_on_error() -> None:
    metrics = Metrics(process=False)
    with metrics.stream(), metrics.stream():
        assert value(samples(metrics), "snapshot_tracker_active_streams") == 2
    try:
        with metrics.stream():
            raise RuntimeError("client went away")
    except RuntimeError:
        pass
    assert value(samples(metrics), "snapshot_tracker_active_streams") == 0


def test_remove_target_drops_only_that_targets_series() -> None:
    metrics = Metrics(process=False)
    metrics.observe_scrape("mainnet", "http://a:1", 0.1, ok=False)
    metrics.observe_scrape("mainnet", "http://b:1", 0.1, ok=False)
    metrics.remove_target("mainnet", "http://a:1")
    metrics.remove_target("mainnet", "http://never-seen:1")  # no error for unknown targets
    targets = {
        dict(labels).get("target")
        for name, labels in samples(metrics)
        if name.startswith("snapshot_tracker_scrape_")
    }
    assert targets == {"http://b:1"}


def test_remove_group_drops_the_group_and_its_targets() -> None:
    metrics = Metrics(process=False)
    for group in ("mainnet", "testnet"):
        every_event_of(metrics, group)
    metrics.remove_group("testnet")
    groups = {dict(labels).get("group") for _, labels in samples(metrics)} - {None}
    assert groups == {"mainnet"}


def every_event_of(metrics: Metrics, group: str) -> None:
    """One event of each kind that makes a series of ``group``."""
    metrics.observe_scrape(group, "http://a:1", 0.1, ok=False)
    metrics.set_targets(group, up=1, total=1)
    metrics.set_best_slots(group, full=100, incremental=150)
    metrics.set_snapshot_age(group, 10)
    metrics.add_upstream_bytes(group, "full", 10)
    metrics.count_source_failure(group)
    metrics.count_archive_rejected(group)
    metrics.count_refresh_share(group, "http://a:1", 10, 0.5)


def groups_with_series(metrics: Metrics) -> set[str]:
    return {v for _, labels in samples(metrics) for k, v in labels if k == "group"}


@pytest.mark.parametrize(
    ("configured", "group", "counts"),
    [
        (None, "gone", True),  # never told the groups: a Metrics of its own counts any
        (frozenset({"keep", "gone"}), "gone", True),
        (frozenset({"keep"}), "gone", False),  # a reload removed it: late events make none
        (frozenset(), "gone", False),
    ],
)
def test_only_a_configured_group_counts(
    configured: frozenset[str] | None, group: str, counts: bool
) -> None:
    assert counted(configured, group) is counts


def test_a_removed_groups_late_events_make_no_series_until_it_comes_back() -> None:
    # A refresh (or probe, or slot read) running across the reload that removed its group
    # made the group's series again after the reload dropped them, and nothing dropped them.
    metrics = Metrics(process=False)
    metrics.set_groups(["keep", "gone"])
    every_event_of(metrics, "keep")
    every_event_of(metrics, "gone")
    assert groups_with_series(metrics) == {"keep", "gone"}
    metrics.set_groups(["keep"])  # the reload
    assert groups_with_series(metrics) == {"keep"}
    every_event_of(metrics, "gone")  # the refresh the reload left running goes on
    assert groups_with_series(metrics) == {"keep"}
    metrics.set_groups(["keep", "gone"])  # a later reload brings the group back
    every_event_of(metrics, "gone")
    found = samples(metrics)
    assert value(found, "snapshot_tracker_upstream_bytes_total", group="gone", kind="full") == 10
    assert value(found, "snapshot_tracker_source_failures_total", group="gone") == 1
    assert value(found, "snapshot_tracker_archives_rejected_total", group="gone") == 1
    assert value(found, "snapshot_tracker_targets", group="gone") == 1
    share = value(
        found, "snapshot_tracker_refresh_source_bytes_total", group="gone", target="http://a:1"
    )
    assert share == 10


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["http://x:1", "http://y:1", 'q"\\\n']),
            st.floats(0, 100, allow_nan=False),
            st.booleans(),
        ),
        max_size=20,
    )
)
def test_probe_series_expose_what_prometheus_client_histograms_would(
    probes: list[tuple[str, str, float, bool]],
) -> None:
    # The compact per-target series replace a Histogram and a Counter: same text, same
    # values; only the _created timestamps are the clock's (pinned on both sides here).
    reference = CollectorRegistry(auto_describe=True)
    labels = ["group", "target"]
    histogram = Histogram(
        "t_scrape_duration_seconds", "D.", labels, buckets=SCRAPE_BUCKETS, registry=reference
    )
    counter = Counter("t_scrape_errors_total", "E.", labels, registry=reference)
    compact = CollectorRegistry(auto_describe=True)
    series = ProbeSeries(
        "t_scrape_duration_seconds", "D.", "t_scrape_errors_total", "E.", SCRAPE_BUCKETS
    )
    compact.register(series)
    for group, target, seconds, failed in probes:
        histogram.labels(group, target).observe(seconds)
        errors = counter.labels(group, target)
        if failed:
            errors.inc()
        series.observe(group, target, seconds, failed=failed)
    if probes:
        histogram.remove(probes[0][0], probes[0][1])
        counter.remove(probes[0][0], probes[0][1])
        series.remove(probes[0][0], probes[0][1])
    created = re.compile(rb"(_created\{.*\}) \S+")
    expected = created.sub(rb"\1 T", generate_latest(reference))
    assert created.sub(rb"\1 T", generate_latest(compact)) == expected


def test_probe_series_follow_prometheus_clients_created_switch() -> None:
    # disable_created_metrics() turns the _created series off for every metric, ours too.
    metrics = Metrics(process=False)
    metrics.observe_scrape("g", "http://a:1", 0.1, ok=False)
    metrics.count_source_failure("g")
    disable_created_metrics()
    try:
        off = names(samples(metrics))
    finally:
        enable_created_metrics()
    on = names(samples(metrics))
    assert "snapshot_tracker_scrape_errors_created" in on
    assert "snapshot_tracker_scrape_duration_seconds_created" in on
    assert not [name for name in off if name.endswith("_created")]
    assert "snapshot_tracker_scrape_errors_total" in off


def test_per_target_series_give_the_garbage_collector_little_to_walk() -> None:
    # Thousands of discovered nodes each have their series: a prometheus_client histogram
    # child was ~35 tracked objects, walked by every full collection (loop pauses).
    metrics = Metrics(process=False)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(1000):
        metrics.observe_scrape("g", f"http://127.1.{n // 250}.{n % 250}:8899", 0.1, ok=n % 2 == 0)
    gc.collect()
    assert len(gc.get_objects()) - before < 3 * 1000  # was ~37,000


def test_request_durations_failovers_and_rejected_archives() -> None:
    metrics = Metrics(process=False)
    metrics.count_request("/v1/{name}", 303, 0.004)
    metrics.count_request("/v1/{name}", 200, 0.3)
    metrics.count_request("/v1/{name}", 404)  # no duration known: counted, not timed
    metrics.count_source_failure("mainnet")
    metrics.count_archive_rejected("mainnet")
    metrics.count_archive_rejected("mainnet")
    found = samples(metrics)
    duration = "snapshot_tracker_http_request_duration_seconds"
    route = {"route": "/v1/{name}"}
    assert value(found, duration + "_count", **route) == 2
    assert value(found, duration + "_bucket", **route, le="0.005") == 1
    assert value(found, duration + "_sum", **route) == 0.304
    assert value(found, "snapshot_tracker_source_failures_total", group="mainnet") == 1
    assert value(found, "snapshot_tracker_archives_rejected_total", group="mainnet") == 2
    metrics.remove_group("mainnet")
    assert (
        value(samples(metrics), "snapshot_tracker_source_failures_total", group="mainnet") is None
    )


def test_a_groups_counters_start_at_zero_with_its_first_round() -> None:
    # Born at 1 by their first event, they had no sample before it: increase() over the
    # rejected-archive alert's window never saw a group's first rejection.
    metrics = Metrics(process=False)
    metrics.set_targets("testnet", up=1, total=1)
    found = samples(metrics)
    assert value(found, "snapshot_tracker_archives_rejected_total", group="testnet") == 0
    assert value(found, "snapshot_tracker_source_failures_total", group="testnet") == 0
    metrics.remove_group("testnet")
    assert (
        value(samples(metrics), "snapshot_tracker_archives_rejected_total", group="testnet") is None
    )


def test_the_bucket_is_up_or_down_only_where_there_is_one() -> None:
    # An unlabelled gauge read 0, "down", on every tracker without a bucket: its alert fired.
    metrics = Metrics(process=False)
    assert value(samples(metrics), "snapshot_tracker_object_store_up") is None
    assert "snapshot_tracker_object_store_up" not in names(samples(metrics))
    metrics.set_object_store_up("snapshots", False)
    assert value(samples(metrics), "snapshot_tracker_object_store_up", bucket="snapshots") == 0


def test_every_target_with_series_is_one_the_reporter_can_retire() -> None:
    # A share of a refresh from several sources, counted after its node left the round's
    # targets, made series nobody removed (the reporter knew only the targets it probed).
    metrics = Metrics(process=False)
    metrics.observe_scrape("g", "http://a:8899", 0.1, ok=True)
    metrics.count_refresh_share("g", "http://b:8899", 100, 1.0)
    assert metrics.reported_targets() == {("g", "http://a:8899"), ("g", "http://b:8899")}
    metrics.remove_target("g", "http://b:8899")
    assert metrics.reported_targets() == {("g", "http://a:8899")}
    found = samples(metrics)
    assert (
        value(
            found, "snapshot_tracker_refresh_source_bytes_total", group="g", target="http://b:8899"
        )
        is None
    )


def test_the_reporter_retires_a_share_counted_after_its_node_left() -> None:
    from types import SimpleNamespace
    from typing import Any

    from tracker.ordering.index import TargetKey
    from tracker.reporting import ScrapeReporter

    metrics = Metrics(process=False)
    reporter = ScrapeReporter(metrics, SimpleNamespace(status=lambda _line: None))  # type: ignore[arg-type]
    node = "http://203.0.113.7:8899"  # an address of documentation, never asked
    key = TargetKey("mainnet", node)
    health = SimpleNamespace(target=SimpleNamespace(key=key), health="up", last_duration=0.1)
    index = SimpleNamespace(best_full=lambda _g: None, best_incremental=lambda _g: None)
    config = SimpleNamespace(target_groups=[SimpleNamespace(group="mainnet")])
    scraper: Any = SimpleNamespace(health={key: health}, index=index, config=config)
    reporter.probe_done(health)  # type: ignore[arg-type]
    reporter.round_done(scraper)
    scraper.health = {}  # the node left the round while a refresh read from it
    reporter.round_done(scraper)
    metrics.count_refresh_share("mainnet", node, 10**9, 60.0)  # that refresh ends
    reporter.round_done(scraper)
    assert metrics.reported_targets() == set()
    assert node not in metrics.render()[0].decode()


def test_the_reporter_counts_discovered_nodes_in_their_groups_series() -> None:
    from types import SimpleNamespace
    from typing import Any

    from tracker.ordering.index import TargetKey
    from tracker.reporting import ScrapeReporter

    metrics = Metrics(process=False)
    reporter = ScrapeReporter(metrics, SimpleNamespace(status=lambda _line: None))  # type: ignore[arg-type]
    url = "http://203.0.113.7:8899"  # an address of documentation, never asked
    index = SimpleNamespace(best_full=lambda _g: None, best_incremental=lambda _g: None)
    config = SimpleNamespace(target_groups=[SimpleNamespace(group="mainnet")])
    scraper: Any = SimpleNamespace(health={}, index=index, config=config)
    for key in (TargetKey("mainnet", url), TargetKey("mainnet", url, discovered=True)):
        # configured first, then the operator left it to cluster discovery
        health = SimpleNamespace(target=SimpleNamespace(key=key), health="up", last_duration=0.1)
        scraper.health = {key: health}
        reporter.probe_done(health)  # type: ignore[arg-type]
        reporter.round_done(scraper)
    assert probe_series(metrics) == {frozenset({"group": "mainnet", "target": DISCOVERED}.items())}
