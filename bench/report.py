"""Medians, ratios, targets: the table printed at the end, its JSON, and a small SVG chart."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import attrs

Runs = list[dict[str, Any]]


@attrs.frozen
class Row:
    """One line of the table. ``value`` is what is compared with ``target`` using ``op``."""

    figure: str
    how: str
    tracker: str
    reference: str
    value: float | None
    unit: str
    op: str  # ">=", "<=", "<" or "" (no target)
    target: float | None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "SKIP"
        if self.target is None:
            return "info"
        ok = {">=": self.value >= self.target, "<=": self.value <= self.target}.get(
            self.op, self.value < self.target
        )
        return "PASS" if ok else "MISS"

    def as_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "verdict": self.verdict}


def median(runs: Runs, key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def median_ratio(runs: Runs) -> float:
    """Median of the per-run ratios tracker/reference (paired: same run, back to back)."""
    return float(statistics.median(float(r["tracker"]) / r["reference"] for r in runs))


def gbps(x: float) -> str:
    return f"{x / 1e9:.2f} GB/s"


def rps(x: float) -> str:
    return f"{x:,.0f} req/s"


def _ratio_row(
    runs: Runs, figure: str, how: str, fmt: Callable[[float], str], target: float
) -> Row:
    return Row(
        figure,
        how,
        fmt(median(runs, "tracker")),
        fmt(median(runs, "reference")),
        median_ratio(runs),
        "x",
        ">=",
        target,
    )


def summarise(results: dict[str, Any]) -> list[Row]:
    """The table rows for whatever figures ``results`` holds."""
    rows: list[Row] = []
    ratio_figures = {
        "cache_hit_1": (
            "cache hit, one GET",
            "curl, fresh connection, vs nginx sendfile",
            gbps,
            0.9,
        ),
        "cache_hit_8": ("cache hit, 8 GETs", "8 curl at once, aggregate, vs nginx", gbps, 0.9),
        "proxy": ("proxy, one stream", "vs nginx proxy_pass", gbps, 1.5),
        "refresh": ("refresh", "first GET filling the cache, vs nginx proxy_cache", gbps, 1.0),
        "redirects": ("redirects", "wrk rate, vs bare quart-trio", rps, 1.0),
    }
    for key, (figure, how, fmt, target) in ratio_figures.items():
        if results.get(key):
            rows.append(_ratio_row(results[key], figure, how, fmt, target))
        if key == "cache_hit_8":
            rows += _cpu_rows(results)
        if key == "proxy" and results.get("first_byte"):
            rows.append(_first_byte_row(results["first_byte"]))
    for key, source in (("verified_refresh", ""), ("verified_refresh_paced", ", source paced")):
        if results.get(key):
            rows += _verified_rows(results[key], source)
    if results.get("redirects"):
        runs = results["redirects"]
        p99, bare = median(runs, "p99_ms"), median(runs, "reference_p99_ms")
        ratio = statistics.median(r["p99_ms"] / r["reference_p99_ms"] for r in runs)
        how = "wrk p99 latency, vs the bare app's"
        rows.append(
            Row("redirects p99", how, f"{p99:.1f} ms", f"{bare:.1f} ms", ratio, "x", "<=", 1.2)
        )
    if results.get("memory"):
        runs = results["memory"]
        peak = median(runs, "peak_mb")
        idle = f"idle {median(runs, 'idle_mb'):.0f} MB"
        rate = runs[0].get("client_rate", 0) / 1e6
        how = f"peak RSS, {runs[0].get('downloads', '')} whole-file GETs at once"
        how += " (cache hits + proxied)"
        how += f", clients at {rate:.0f} MB/s" if rate else ""
        rows.append(Row("memory", how, f"{peak:.0f} MB", idle, peak, "MB", "<=", 150))
    if results.get("idle_connections"):
        runs = results["idle_connections"]
        delta = median(runs, "delta_mb")
        idle = f"idle {median(runs, 'idle_mb'):.0f} MB"
        how = f"RSS added by {runs[0]['connections']} idle keep-alive connections"
        rows.append(Row("idle connections", how, f"+{delta:.0f} MB", idle, delta, "MB", "<=", 40))
    if results.get("discovery"):
        runs = results["discovery"]
        secs = median(runs, "seconds")
        how = f"full scrape round, {runs[0]['targets']} HTTP targets"
        first = results.get("discovery_first_round")
        ref = f"first round {first:.2f} s" if first is not None else ""
        rows.append(Row("discovery", how, f"{secs:.2f} s", ref, secs, "s", "<=", 5))
    rows += _fan_in_rows(results)
    if results.get("cluster"):
        cold, *warm = results["cluster"]
        runs = warm or [cold]
        nodes = runs[0]["nodes"]
        secs = median(runs, "seconds")
        ref = f"first round {cold['seconds']:.2f} s"
        how = f"scrape round of {nodes} discovered nodes (getClusterNodes)"
        rows.append(Row("cluster discovery", how, f"{secs:.2f} s", ref, secs, "s", "<=", 15))
        p99 = max(r["api_p99_ms"] for r in results["cluster"])
        how = "/v1/* p99 latency during the rounds (worst round)"
        worst = {}
        for r in results["cluster"]:
            for path, ms in r.get("api_p99_ms_by_path", {}).items():
                worst[path] = max(ms, worst.get(path, 0.0))
        each = "per path: " + ", ".join(
            f"{path.removeprefix('/v1/')} {ms:.0f}" for path, ms in worst.items()
        )
        rows.append(Row("cluster API", how, f"{p99:.1f} ms", each, p99, "ms", "<=", 50))
        if "status_p99_ms" in cold:
            idle = median(runs, "status_idle_p99_ms")
            during = max(r["status_p99_ms"] for r in results["cluster"])
            how = f"status page (GET / internal), {nodes} targets on it: p99 without a round"
            ref = f"during rounds {during:.0f} ms, {cold['status_kib']:.0f} KiB"
            rows.append(Row("status page", how, f"{idle:.1f} ms", ref, idle, "ms", "<=", 100))
        peak = max(r["peak_mb"] for r in results["cluster"])
        how = f"peak RSS with {nodes} discovered nodes"
        rows.append(Row("cluster memory", how, f"{peak:.0f} MB", "", peak, "MB", "", None))
    if results.get("cluster_measured"):
        # The same rounds with every node's throughput measured: no slower API for it.
        runs = results["cluster_measured"]
        p99 = max(r["api_p99_ms"] for r in runs)
        how = f"/v1/* p99 during rounds of {runs[0]['nodes']} nodes, each measured (worst round)"
        ref = f"round {median(runs[1:] or runs, 'seconds'):.2f} s"
        rows.append(Row("cluster API, measured", how, f"{p99:.1f} ms", ref, p99, "ms", "<=", 50))
    if results.get("object_store"):
        runs = results["object_store"]
        how = "GET the tracker, follow its 303 to SeaweedFS, vs SeaweedFS directly"
        rows.append(_ratio_row(runs, "direct-serve hit", how, gbps, 0.95))
        ratio = statistics.median(r["hit_rate"] / r["short_rate"] for r in runs)
        how = "wrk -c32: 303 to a presigned URL vs the short redirect, same replica"
        hit, short = rps(median(runs, "hit_rate")), rps(median(runs, "short_rate"))
        rows.append(Row("direct-serve 303s", how, hit, short, ratio, "x", ">=", 0.9))
        cpu = median(runs, "cpu_s_per_gib")
        how = "tracker CPU per GiB a client got through a direct-serve hit"
        rows.append(Row("direct-serve CPU", how, f"{cpu:.3f} s/GiB", "", cpu, "s", "", None))
    if results.get("fetch"):
        runs = results["fetch"]
        how = "fetch --connections 8 vs aria2c -x8 -s8, through the tracker (cache hit)"
        rows.append(_ratio_row(runs, "fetch", how, gbps, 1.0))
        two = [{"tracker": r["two_sources"], "reference": r["two_sources_reference"]} for r in runs]
        how = "fetch vs aria2c, both given two nginx sources of the file"
        rows.append(_ratio_row(two, "fetch, two sources", how, gbps, 1.0))
    rows += _sources_rows(results)
    rows += _verify_rows(results)
    rows += _ttr_rows(results)
    return rows


def _sources_rows(results: dict[str, Any]) -> list[Row]:
    """The refresh from 3 capped sources (bench/manysources.py): vs aria2c, vs one source,
    the upstream bytes it cost and the tracker's peak RSS against a refresh from one."""
    runs = results.get("refresh_sources")
    if not runs:
        return []
    cap = runs[0]["rate_cap"] / 1e6
    how = f"curl through a cold tracker, 3 sources at {cap:.0f} MB/s in all each, vs aria2c -x3"
    rows = [_ratio_row(runs, "refresh, 3 sources", how, gbps, 0.9)]
    one = [{"tracker": r["tracker"], "reference": r["one_source"]} for r in runs]
    how = "the same curl vs curl from one source alone"
    rows.append(_ratio_row(one, "refresh, 3 sources vs one", how, gbps, 2.4))
    ratio = median(runs, "upstream_ratio")
    how = "upstream bytes / archive size (the three sources' counts)"
    rows.append(
        Row("refresh, 3 sources: upstream", how, f"{ratio:.3f}", "", ratio, "x", "<=", 1.05)
    )
    if "peak_rss_ratio" in runs[0]:
        how = "the tracker's peak RSS (VmHWM) at the client's last byte, vs a refresh from one"
        three, one = median(runs, "peak_rss_mb"), median(runs, "one_source_peak_rss_mb")
        ratio = median(runs, "peak_rss_ratio")
        rows.append(
            Row(
                "refresh, 3 sources: peak RSS",
                how,
                f"{three:.0f} MB",
                f"{one:.0f} MB",
                ratio,
                "x",
                "<=",
                1.1,
            )
        )
    return rows


def _ttr_rows(results: dict[str, Any]) -> list[Row]:
    """bench/ttr.py's figures: time to running by each order, and the prediction's error."""
    runs = results.get("time_to_running")
    if not runs:
        return []
    ttr, slot = median(runs, "ttr_s"), median(runs, "slot_s")
    ratio = statistics.median(r["ttr_s"] / r["slot_s"] for r in runs)
    how = "time to running after a restart (bench/ttr.py), by time to running vs by slot"
    error = median(runs, "prediction_error")
    return [
        Row("time to running", how, f"{ttr:.1f} s", f"{slot:.1f} s", ratio, "x", "", None),
        Row(
            "time to running, predicted",
            "the tracker's predicted_seconds vs the measured time to running",
            f"{error:.1%} off",
            "",
            error,
            "",
            "<=",
            0.25,
        ),
    ]


def _verify_rows(results: dict[str, Any]) -> list[Row]:
    runs = results.get("verify")
    if not runs:
        return []
    size = runs[0]["size"]
    how = f"snapshot-tracker verify of a {size / 1e9:.2f} GB .tar.zst (start-up included)"
    rows = [_ratio_row_of(runs, "verify", how + ", vs sha256sum", "sha256sum")]
    if all("zstd_t" in r for r in runs):
        rows.append(_ratio_row_of(runs, "verify vs zstd -t", "same, vs zstd -t", "zstd_t"))
    inprocess = median(runs, "inprocess")
    how = "check_file in process: compressed bytes per second (what a refresh's check costs)"
    rows.append(
        Row("verify, in process", how, gbps(inprocess), "", inprocess / 1e9, "GB/s", ">=", 1.0)
    )
    if all("zstd_t_cpu" in r for r in runs):
        ours = median(runs, "inprocess_cpu")
        tools = statistics.median(r["sha256sum_cpu"] + r["zstd_t_cpu"] for r in runs)
        ratio = statistics.median(
            r["inprocess_cpu"] / (r["sha256sum_cpu"] + r["zstd_t_cpu"]) for r in runs
        )
        how = "CPU s per GB: check_file vs sha256sum and zstd -t together"
        rows.append(
            Row("verify CPU", how, f"{ours:.2f} s/GB", f"{tools:.2f} s/GB", ratio, "x", "", None)
        )
    return rows


def _ratio_row_of(runs: Runs, figure: str, how: str, reference: str) -> Row:
    ratio = float(statistics.median(float(r["tracker"]) / r[reference] for r in runs))
    ours, theirs = gbps(median(runs, "tracker")), gbps(median(runs, reference))
    return Row(figure, how, ours, theirs, ratio, "x", "", None)


def _cpu_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for key, streams in (("cache_hit_1", "one GET"), ("cache_hit_8", "8 GETs")):
        runs = results.get(key)
        if not runs:
            continue
        ours, nginx = median(runs, "tracker_cpu_per_gib"), median(runs, "reference_cpu_per_gib")
        ratio = statistics.median(
            r["tracker_cpu_per_gib"] / max(r["reference_cpu_per_gib"], 1e-3) for r in runs
        )
        how = f"server CPU seconds per GiB served, cache hits ({streams}), vs nginx"
        rows.append(
            Row(
                f"cache hit CPU, {streams}",
                how,
                f"{ours:.3f} s/GiB",
                f"{nginx:.3f} s/GiB",
                ratio,
                "x",
                "<=",
                1.5,
            )
        )
    return rows


def _verified_rows(runs: Runs, source: str) -> list[Row]:
    """A verified refresh against the same refresh unverified, and what the CPU allows."""
    on, off = median(runs, "seconds"), median(runs, "reference_seconds")
    ratio = statistics.median(r["seconds"] / r["reference_seconds"] for r in runs)
    how = f"GET to promotion, verify_archives on vs off{source}"
    figure = "verified refresh" + (" (paced source)" if source else "")
    rows = [Row(figure, how, f"{on:.2f} s", f"{off:.2f} s", ratio, "x", "<=", 1.25)]
    if all("floor" in r for r in runs):
        rows.append(_floor_row(runs, figure + " CPU"))
    return rows


def _floor_row(runs: Runs, figure: str) -> Row:
    """The least verified/unverified ratio the host's cores allow for the CPU both spent."""
    cpu, off = median(runs, "cpu"), median(runs, "reference_cpu")
    cores = int(runs[0]["cores"])
    how = f"CPU s of tracker + upstream + client, verified vs not; its least ratio on {cores} cores"
    floor = statistics.median(r["floor"] for r in runs)
    return Row(figure, how, f"{cpu:.2f} s", f"{off:.2f} s", floor, "x", "", None)


def _first_byte_row(runs: Runs) -> Row:
    ours, nginx = median(runs, "tracker_ms"), median(runs, "reference_ms")
    extra = statistics.median(r["tracker_ms"] - r["reference_ms"] for r in runs)
    how = "proxied first body byte, p50 of 20 fresh GETs, vs nginx proxy_pass"
    return Row("proxy first byte", how, f"{ours:.1f} ms", f"{nginx:.1f} ms", extra, "ms", "<=", 5)


def _fan_in_rows(results: dict[str, Any]) -> list[Row]:
    if "fan_in_skipped" in results:
        note = results["fan_in_skipped"]
        return [Row("fan-in", "upstream bytes / size", "", "", None, "x", "", None, note)]
    rows = []
    for share in ("off", "on"):
        runs = results.get(f"fan_in_{share}")
        if not runs:
            continue
        value = median(runs, "fan_in")
        how = f"upstream bytes / size, {runs[0]['clients']} cold clients, sharing {share}"
        shared = median(runs, "shared_readers_metric")
        note = results.get("fan_in_note", "") if share == "on" else ""
        ref = f"shared readers {shared:.0f}"
        rows.append(Row("fan-in", how, f"{value:.2f}", ref, value, "x", "", None, note))
    return rows


def format_table(rows: list[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    header = ["figure", "how", "tracker", "reference", "value", "target", "result"]
    lines = [header, ["---"] * len(header)]
    for r in rows:
        value = target = ""
        suffix = "x" if r.unit == "x" else f" {r.unit}"
        if r.value is not None:
            value = f"{r.value:.2f}{suffix}"
        if r.target is not None:
            target = f"{r.op} {r.target:g}{suffix}"
        verdict = r.verdict + (f" ({r.note})" if r.note else "")
        lines.append([r.figure, r.how, r.tracker, r.reference, value, target, verdict])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def svg_chart(rows: list[Row]) -> str:
    """Horizontal bars: each figure's value as a fraction of its target (1.0 = just met).

    For "at most" targets the fraction is target/value, so longer is better for every bar.
    """
    bars = [r for r in rows if r.value is not None and r.target is not None]
    width, left, bar_h, gap = 640, 190, 20, 10
    scale = (width - left - 60) / 2.0  # 0..2x of the target
    height = 30 + len(bars) * (bar_h + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<text x="10" y="18">measured / target (1.0 = target met; longer is better)</text>',
    ]
    for i, r in enumerate(bars):
        assert r.value is not None
        assert r.target is not None
        value = max(r.value, 1e-9)
        score = r.value / r.target if r.op == ">=" else r.target / value
        y = 30 + i * (bar_h + gap)
        color = "#3a7d44" if r.verdict == "PASS" else "#c0392b"
        w = min(score, 2.0) * scale
        parts += [
            f'<text x="10" y="{y + 15}">{r.figure}</text>',
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>',
            f'<text x="{left + w + 5:.1f}" y="{y + 15}">{score:.2f}</text>',
        ]
    x1 = left + scale
    parts.append(
        f'<line x1="{x1}" y1="25" x2="{x1}" y2="{height - 15}" stroke="#000" '
        'stroke-dasharray="4 3"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
