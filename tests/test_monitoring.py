"""The example alert rules and Grafana dashboard against a running tracker's ``/metrics``.

Every metric a rule or a panel names must be one the tracker exports (read from the ``# TYPE``
lines, so that labelled families with no series yet count too); the rules must pass
``promtool check rules`` where promtool is installed (Debian's ``prometheus`` package).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import trio
import yaml
from helpers_tracker import start_tracker, write_config

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "snapshot-tracker.json"
LEDGER = ROOT / "examples" / "ledger"

#: Series a family of each type exposes, by suffix.
SUFFIXES = {
    "counter": ("", "_total"),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def exported_names(exposition: str) -> set[str]:
    """The series names a ``/metrics`` text allows, from its ``# TYPE name type`` lines.

    A counter ``x_total`` (text format) or ``x`` (OpenMetrics) allows ``x_total``; a
    histogram ``h`` allows ``h_bucket``, ``h_sum`` and ``h_count``, not ``h``.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[:2] != ["#", "TYPE"]:
            continue
        name, kind = parts[2], parts[3]
        if kind == "counter":
            base = name.removesuffix("_total")
            names |= {base + "_total", name}
        else:
            names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def metric_names(expression: str) -> set[str]:
    """Every metric name a PromQL expression selects (Grafana's ``$__…`` variables as 5m)."""
    expression = re.sub(r"\$__\w+", "5m", expression)
    found: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_names() -> dict[str, set[str]]:
    """Metric names of every panel query and template variable, by where they are."""
    board = dashboard()
    out = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} {target['refId']}"] = metric_names(target["expr"])
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            [name] = re.findall(r"label_values\((\w+),", query["query"])
            out[f"variable {variable['name']}"] = {name}
    return out


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


async def test_every_metric_of_the_alerts_and_the_dashboard_is_exported(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        response = await client.get(f"{internal}/metrics")
    assert response.status_code == 200
    exported = exported_names(response.text)
    assert "snapshot_tracker_archives_rejected_total" in exported  # a family with no series
    named = {f"alert {r['alert']}": metric_names(r["expr"]) for r in alert_rules()}
    named.update(dashboard_names())
    missing = {where: sorted(names - exported) for where, names in named.items()}
    assert not {where: names for where, names in missing.items() if names}
    assert all(named.values())  # every query names at least one metric


def test_the_alerts_cover_the_operators_cases_with_a_summary_and_a_runbook() -> None:
    rules = alert_rules()
    by_name = {rule["alert"]: rule for rule in rules}
    uses = {name: metric_names(rule["expr"]) for name, rule in by_name.items()}
    assert "snapshot_tracker_snapshot_age_slots" in uses["SnapshotTrackerSnapshotTooOld"]
    assert "snapshot_tracker_targets_up" in uses["SnapshotTrackerNoHealthyTarget"]
    assert "snapshot_tracker_object_store_up" in uses["SnapshotTrackerBucketDown"]
    assert "snapshot_tracker_archive_requests_total" in uses["SnapshotTrackerRefreshesFailing"]
    assert "snapshot_tracker_archives_rejected_total" in uses["SnapshotTrackerArchiveRejected"]
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
