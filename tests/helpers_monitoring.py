"""The example alert rules and Grafana dashboard, and the metric names they and a ``/metrics``
text name (tests/unit/test_monitoring.py checks these readers and the examples,
tests/integration/test_monitoring_exported.py a running tracker's ``/metrics``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

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


#: Labels every series has once Prometheus scraped it (added by the scrape, not exported).
SCRAPE_LABELS = frozenset({"instance", "job"})


def _parsed(expression: str) -> Any:
    """A PromQL expression parsed (Grafana's ``$__…`` variables as 5m)."""
    return promql_parser.parse(re.sub(r"\$__\w+", "5m", expression))


def _names_in(node: Any) -> set[str]:
    found: set[str] = set()

    def visit(inner: Any) -> bool:
        if isinstance(inner, promql_parser.VectorSelector) and inner.name:
            found.add(inner.name)
        return True

    promql_parser.walk(node, visit)
    return found


def metric_names(expression: str) -> set[str]:
    """Every metric name a PromQL expression selects (Grafana's ``$__…`` variables as 5m)."""
    return _names_in(_parsed(expression))


def label_uses(expression: str) -> set[tuple[str, str]]:
    """Every (metric, label) a PromQL expression filters or groups by: each selector's
    matchers, an aggregation's ``by``/``without`` labels (on every metric under it), a
    binary operation's ``on``/``ignoring`` labels (on both sides) and its ``group_left``/
    ``group_right`` labels (on the side with one series per match). A label none of them
    carries selects nothing, and a grouping by it folds every series into one."""
    uses: set[tuple[str, str]] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__":
                    uses.add((node.name, matcher.name))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            uses.update((n, label) for n in _names_in(node.expr) for label in node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            modifier = node.modifier
            if modifier.matching is not None:
                both = _names_in(node.lhs) | _names_in(node.rhs)
                uses.update((n, label) for n in both for label in modifier.matching.labels)
            if modifier.group_labels:
                left = modifier.card == promql_parser.VectorMatchCardinality.ManyToOne
                one = _names_in(node.rhs if left else node.lhs)
                uses.update((n, label) for n in one for label in modifier.group_labels)
        return True

    promql_parser.walk(_parsed(expression), visit)
    return uses


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by where it is: each panel query, and the
    selector of each template variable's ``label_values(selector, label)`` with the label
    read as a grouping by it (``sum by (label) (selector)``)."""
    board = dashboard()
    out = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            [(selector, label)] = re.findall(r"^label_values\((.+),\s*(\w+)\)$", query["query"])
            out[f"variable {variable['name']}"] = f"sum by ({label}) ({selector})"
    return out


def dashboard_names() -> dict[str, set[str]]:
    """Metric names of every panel query and template variable, by where they are."""
    return {where: metric_names(query) for where, query in dashboard_queries().items()}


def exported_labels(exposition: str) -> dict[str, set[str]]:
    """The label names each series name of a ``/metrics`` text carries (only families
    with a series: a labelled family with none yet shows no label)."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def promtool_series(
    exposition: str, instance: str = "t", minutes: int = 30, answered: int | None = None
) -> list[dict[str, str]]:
    """Every sample of a ``/metrics`` text as a promtool ``input_series``, held at its value
    for ``minutes`` scrapes a minute apart (labels ``instance`` and ``job`` added, as a
    scrape adds them), with the scrape's own ``up``. ``answered``: the tracker answered the
    first that many scrapes only, then none (its series stale, ``up`` 0)."""
    job = {"instance": instance, "job": "snapshot-tracker"}
    held = minutes if answered is None else answered
    after = "" if answered is None else " stale"
    series = [
        {
            "series": f"up{{{_labels(job)}}}",
            "values": f"1x{held}" + ("" if answered is None else f" 0x{minutes - answered}"),
        }
    ]
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            text = _labels({**sample.labels, **job})
            series.append(
                {"series": f"{sample.name}{{{text}}}", "values": f"{sample.value}x{held}{after}"}
            )
    return series


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
