"""The example alert rules and Grafana dashboard on their own, and the readers of metric names.

The rules cover the operators' cases and must pass ``promtool check rules`` where promtool is
installed (Debian's ``prometheus`` package); that every metric they name is exported by a
running tracker is tests/integration/test_monitoring_exported.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_monitoring import (
    ALERTS,
    alert_rules,
    dashboard,
    dashboard_queries,
    exported_names,
    label_uses,
    metric_names,
)


@pytest.mark.parametrize(
    ("exposition", "names"),
    [
        ("# TYPE a_total counter\na_total 1\n", {"a_total"}),
        ("# TYPE a counter\n", {"a", "a_total"}),  # OpenMetrics, no series yet
        ("# TYPE h histogram\n", {"h_bucket", "h_sum", "h_count"}),
        ("# TYPE g gauge\n# HELP g x\ng 1\n", {"g"}),
        ("# TYPE s summary\n", {"s", "s_sum", "s_count"}),
        ("g 1\n# a comment\n", set()),
    ],
)
def test_exported_names_follow_the_type_lines(exposition: str, names: set[str]) -> None:
    assert exported_names(exposition) == names


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ('rate(a_total{x="y"}[5m]) > 0 and on(g) b == 0', {"a_total", "b"}),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
        ("max_over_time(c[1h:5m]) unless absent(d)", {"c", "d"}),
    ],
)
def test_metric_names_of_an_expression(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


@pytest.mark.parametrize(
    ("expression", "uses"),
    [
        ("up", set()),
        ('a{g=~"$g"}', {("a", "g")}),
        (
            "histogram_quantile(0.9, sum by (g, le) (rate(h_bucket[$__rate_interval])))",
            {("h_bucket", "g"), ("h_bucket", "le")},
        ),
        ("sum without (x) (a) > on(g) b", {("a", "x"), ("a", "g"), ("b", "g")}),
        ("a * on(i) group_left(k) b", {("a", "i"), ("b", "i"), ("b", "k")}),
        ("a * on(i) group_right(k) b", {("a", "i"), ("b", "i"), ("a", "k")}),
    ],
)
def test_the_labels_an_expression_filters_or_groups_by(
    expression: str, uses: set[tuple[str, str]]
) -> None:
    assert label_uses(expression) == uses


def unit_of(panel: dict[str, object], ref_id: str) -> str:
    """The unit a panel draws its query ``ref_id`` in: an override of that query, else the
    panel's default."""
    config: Any = panel["fieldConfig"]
    for override in config.get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    return str(prop["value"])
    return str(config["defaults"]["unit"])


#: Units of a time and of a rate per second (Grafana's unit ids).
TIME_UNITS = {"s", "ms"}
RATE_UNITS = {"reqps", "ops", "cps", "Bps", "binBps"}


def test_each_query_is_drawn_in_its_own_unit() -> None:
    """A quantile of a ``_seconds`` histogram is a time, a ``rate()`` of a counter a number
    per second: probe errors per second were drawn on the latency's seconds axis ("0.2 s"
    of errors)."""
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr, where = target["expr"], f"{panel['title']} {target['refId']}"
            unit = unit_of(panel, target["refId"])
            if "histogram_quantile" in expr and "_seconds_bucket" in expr:
                assert unit in TIME_UNITS, where
            elif "rate(" in expr:
                assert unit in RATE_UNITS, where


def test_the_dashboard_shows_each_replica_apart() -> None:
    """Replicas (docs/replicas.md) each probe every target of their config: "Targets up"
    summed them, 2 replicas of 10 targets read "20 / 20". Every query is of the replicas
    chosen (the ``instance`` variable), and the count of targets is per replica."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["instance"]["query"]["query"].startswith("label_values(")
    for where, query in dashboard_queries().items():
        if where != "variable instance":
            filtered = {name for name, label in label_uses(query) if label == "instance"}
            assert filtered == metric_names(query), where
    [targets_up] = [p for p in board["panels"] if p["title"] == "Targets up"]
    assert all(t["expr"].startswith("sum by (instance) (") for t in targets_up["targets"])


def test_the_dashboard_shows_each_groups_cluster_rpc() -> None:
    [panel] = [p for p in dashboard()["panels"] if p["title"] == "Cluster RPC up"]
    assert {n for t in panel["targets"] for n in metric_names(t["expr"])} == {
        "snapshot_tracker_cluster_rpc_up"
    }


def test_the_alerts_cover_the_operators_cases_with_a_summary_and_a_runbook() -> None:
    rules = alert_rules()
    by_name = {rule["alert"]: rule for rule in rules}
    uses = {name: metric_names(rule["expr"]) for name, rule in by_name.items()}
    assert "snapshot_tracker_snapshot_age_slots" in uses["SnapshotTrackerSnapshotTooOld"]
    assert "snapshot_tracker_targets_up" in uses["SnapshotTrackerNoHealthyTarget"]
    assert "snapshot_tracker_object_store_up" in uses["SnapshotTrackerBucketDown"]
    assert "snapshot_tracker_archive_requests_total" in uses["SnapshotTrackerRefreshesFailing"]
    assert "snapshot_tracker_archives_rejected_total" in uses["SnapshotTrackerArchiveRejected"]
    assert "snapshot_tracker_internal_errors_total" in uses["SnapshotTrackerInternalError"]
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["runbook"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_the_dashboard_has_the_operators_panels() -> None:
    board = dashboard()
    titles = [panel["title"] for panel in board["panels"]]
    assert len(titles) >= 6
    for wanted in (
        "Best slot per group",
        "Snapshot age per group (slots)",
        "Targets by health",
        "Bytes served by path",
        "Refreshes and failovers",
        "Disk cache and bucket",
        "Request latency (to the response head)",
    ):
        assert wanted in titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    ("outcome", "fires"),
    [
        ("refresh_failed", True),  # a source breaking every refresh
        ("refresh_no_space", True),  # the cache's disk full: streamed uncached all the same
        ("refresh_rejected", False),  # SnapshotTrackerArchiveRejected's
        ("refresh_ok", False),
    ],
)
def test_refreshes_failing_fires_for_every_refresh_that_ends_uncached(
    tmp_path: Path, outcome: str, fires: bool
) -> None:
    """The rule's own expression, evaluated by promtool on a series of one refresh outcome a
    minute for an hour (none completed): it fires for each outcome that leaves the clients
    streamed uncached from the sources."""
    rule = next(r for r in alert_rules() if r["alert"] == "SnapshotTrackerRefreshesFailing")
    series = "snapshot_tracker_archive_requests_total"
    expected = [{"labels": '{instance="t"}', "value": 30}] if fires else []
    spec = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{series}{{instance="t",outcome="{outcome}"}}', "values": "0+1x60"}
                ],
                "promql_expr_test": [
                    {"expr": rule["expr"], "eval_time": "40m", "exp_samples": expected}
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        ["promtool", "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


UP = 'up{instance="t",job="snapshot-tracker"}'
RPC_UP = 'snapshot_tracker_cluster_rpc_up{group="g",instance="t",job="snapshot-tracker"}'
AGE = 'snapshot_tracker_snapshot_age_slots{group="g",instance="t",job="snapshot-tracker"}'
ERRORS = (
    'snapshot_tracker_internal_errors_total{instance="t",job="snapshot-tracker",where="connection"}'
)
TASK_ERRORS = ERRORS.replace('where="connection"', 'where="task"')


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    ("alert", "series", "values", "fires"),
    [
        ("SnapshotTrackerDown", UP, "1x30", False),  # scraped all along
        ("SnapshotTrackerDown", UP, "1x10 0x2 1x18", False),  # a restart: two scrapes missed
        ("SnapshotTrackerDown", UP, "1x10 0x4 1x16", False),  # an upgrade, within the for:
        ("SnapshotTrackerDown", UP, "1x10 0x20", True),  # stopped: a crash, a config exit 2
        ("SnapshotTrackerDown", UP, "0x30", True),  # never scraped: the listener out of reach
        ("SnapshotTrackerClusterRpcDown", RPC_UP, "1x30", False),
        ("SnapshotTrackerClusterRpcDown", RPC_UP, "1 0 " * 15, False),  # a flaky RPC
        ("SnapshotTrackerClusterRpcDown", RPC_UP, "1x10 0x3 1x17", False),  # a restart of it
        ("SnapshotTrackerClusterRpcDown", RPC_UP, "1x10 0x20", True),  # down: slot carried out
        ("SnapshotTrackerClusterRpcDown", RPC_UP, "1x10 stale", False),  # no rpc any more
        ("SnapshotTrackerSnapshotTooOld", AGE, "150 250 " * 15, False),  # an incremental a 100
        ("SnapshotTrackerSnapshotTooOld", AGE, "200x10 1100x5 200x14", False),  # a source's restart
        ("SnapshotTrackerSnapshotTooOld", AGE, "200x10 1100x19", True),  # no newer snapshot
        ("SnapshotTrackerInternalError", ERRORS, "0x30", False),  # none
        ("SnapshotTrackerInternalError", ERRORS, "2x10 0x20", False),  # a restart: from 0 again
        ("SnapshotTrackerInternalError", ERRORS, "0x10 1x20", True),  # one connection failed
        ("SnapshotTrackerInternalError", TASK_ERRORS, "0x10 1x20", True),  # a loop's run failed
    ],
)
def test_a_rule_fires_past_routine_events_only(
    tmp_path: Path, alert: str, series: str, values: str, fires: bool
) -> None:
    """A rule of examples/prometheus/alerts.yml, evaluated by promtool's rule engine on
    its series a minute apart for 30 minutes: a restart or one failed read never fires it
    at any time, a part that stays down does."""
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": values.strip()}],
                "promql_expr_test": [
                    {
                        # fired at any time of the 30 minutes, not only at their end
                        "expr": f'count(max_over_time(ALERTS{{alertname="{alert}",'
                        'alertstate="firing"}[30m]))',
                        "eval_time": "30m",
                        "exp_samples": [{"labels": "{}", "value": 1}] if fires else [],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        ["promtool", "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
