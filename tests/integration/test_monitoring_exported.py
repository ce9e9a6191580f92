"""Every metric the example alert rules and Grafana dashboard name is one a running tracker
exports on ``/metrics`` (read from the ``# TYPE`` lines, so that labelled families with no
series yet count too)."""

from __future__ import annotations

import re
import shutil
import socket
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from cluster_answers import node_entry
from fakes import Rpc
from helpers_monitoring import (
    ALERTS,
    LEDGER,
    SCRAPE_LABELS,
    alert_rules,
    dashboard_names,
    dashboard_queries,
    exported_labels,
    exported_names,
    label_uses,
    metric_names,
    promtool_series,
)
from helpers_ports import REFUSED, REFUSED_PORT
from helpers_server import serve_app
from helpers_sources import Answer, Request, ScriptedApp
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from test_cluster import raise_fd_limit, rpc_app
from test_store_answers import EMPTY_LISTING, NO_UPLOADS, XML

from tracker.observability.collectors import COLLECTORS, PREFIX


async def test_every_metric_of_the_alerts_and_the_dashboard_is_exported(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Every metric the rules and the dashboard name is exported, and every label they
    filter or group by is one that metric carries (a label none carries selects nothing,
    and grouping by it folds every series into one: the panel shows nothing, or a sum)."""
    rpc = await nursery.start(serve_app, Rpc(slot=1300).app())
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "rpc": rpc,  # the cluster's gauges have series
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    line = 'snapshot_tracker_cluster_rpc_up{group="local"} 1.0'
    exposition = await exposition_once(nursery, tmp_path, settings, line)
    exported = exported_names(exposition)
    assert "snapshot_tracker_archives_rejected_total" in exported  # a family with no series
    named = {f"alert {r['alert']}": metric_names(r["expr"]) for r in alert_rules()}
    named.update(dashboard_names())
    exported.add("up")  # Prometheus's own, one per scrape target
    missing = {where: sorted(names - exported) for where, names in named.items()}
    assert not {where: names for where, names in missing.items() if names}
    assert all(named.values())  # every query names at least one metric
    carried = carried_labels(exposition)
    queries = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    queries.update(dashboard_queries())
    wrong = {
        where: sorted(f"{name}: {label}" for name, label in uses if label not in carried[name])
        for where, uses in ((where, label_uses(query)) for where, query in queries.items())
    }
    assert not {where: uses for where, uses in wrong.items() if uses}
    assert carried["snapshot_tracker_cluster_rpc_up"] >= {"group"}


def declared_labels() -> dict[str, set[str]]:
    """The labels each series of :data:`tracker.observability.collectors.COLLECTORS` is
    declared with, by series name (a histogram's ``_bucket`` with ``le``)."""
    declared: dict[str, set[str]] = {}
    for collector in COLLECTORS:
        name, labels = PREFIX + collector.name, set(collector.labels)
        if collector.kind is Counter:
            declared[name.removesuffix("_total") + "_total"] = labels
        elif collector.kind is Histogram:
            declared |= {name + "_sum": labels, name + "_count": labels}
            declared[name + "_bucket"] = labels | {"le"}
        else:
            declared[name] = labels
    return declared


def carried_labels(exposition: str) -> dict[str, set[str]]:
    """The labels each series of a running tracker's ``exposition`` carries once scraped:
    those its series show, with the scrape's ``instance`` and ``job``; for a labelled
    family with no series yet (no bucket, no failure so far), those it is declared with,
    which must be those shown wherever a family has series."""
    shown = exported_labels(exposition)
    declared = declared_labels()
    for name, labels in shown.items():
        if name in declared:
            assert labels == declared[name], name
    carried = defaultdict(lambda: set(SCRAPE_LABELS))
    for name, labels in {**declared, **shown, "up": set()}.items():
        carried[name] = labels | SCRAPE_LABELS
    return carried


async def firing_alerts(
    exposition: str, tmp_path: Path, answered: int | None = None
) -> set[tuple[str, str]]:
    """The (alert, group) pairs of examples/prometheus/alerts.yml firing after 20 minutes of
    a tracker exporting ``exposition`` at every scrape (``answered``: at the first that many
    only, then none), as promtool's rule engine evaluates them (every rule's ``for:``
    passed); an alert of a bucket is paired with the bucket, one of neither group nor
    bucket with the instance."""
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": promtool_series(exposition, answered=answered),
                # promtool prints what it got when it differs: expect nothing, read that
                "promql_expr_test": [
                    {"expr": 'ALERTS{alertstate="firing"}', "eval_time": "20m", "exp_samples": []}
                ],
            }
        ],
    }
    (tmp_path / "alert-test.yml").write_text(yaml.safe_dump(spec))
    done = await trio.run_process(
        ["promtool", "test", "rules", "alert-test.yml"], cwd=tmp_path, capture_stdout=True,
        capture_stderr=True, check=False,
    )  # fmt: skip
    out = done.stdout.decode() + done.stderr.decode()
    if done.returncode == 0:
        return set()
    found = set(re.findall(r'alertname="(\w+)".*?(?:bucket|group|instance)="([^"]*)"', out))
    assert found, out
    return found


async def exposition_once(
    nursery: trio.Nursery, tmp_path: Path, settings: dict[str, object], line: str
) -> str:
    """The ``/metrics`` text of a tracker started with ``settings`` once it exports ``line``
    (a sample's name and labels)."""
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:

        async def reported() -> bool:
            return line in (await client.get(f"{internal}/metrics")).text

        await wait_until(reported)
        return (await client.get(f"{internal}/metrics")).text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_a_group_whose_discovery_finds_no_target_alerts_that_it_has_no_snapshot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A cluster-discovery group whose RPC refuses (down when the tracker starts) has no
    target at all and so no snapshot: every archive of it is a 404, and an operator must be
    told (SnapshotTrackerNoSnapshot), not only about groups with targets."""
    with socket.socket() as closed:  # bound, never listening: the RPC refuses connections
        closed.bind(("127.0.0.1", 0))
        rpc = f"http://127.0.0.1:{closed.getsockname()[1]}"
        settings = {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "1s",
            "target_groups": [{"group": "mainnet", "cluster_discovery": {"rpc": [rpc]}}],
        }
        line = 'snapshot_tracker_targets{group="mainnet"}'
        exposition = await exposition_once(nursery, tmp_path, settings, line)
    assert 'snapshot_tracker_targets{group="mainnet"} 0.0' in exposition
    assert ("SnapshotTrackerNoSnapshot", "mainnet") in await firing_alerts(exposition, tmp_path)


async def test_an_archive_nobody_advertises_is_counted_not_found(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A 404 for an archive is the outcome ``not_found`` of archive_requests_total (the
    dashboard's "Archive requests by outcome"), not a request no outcome counts."""
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    missing = "snapshot-999-DSDfJEwPp5cKu4Mgf2hZkPQ3abRDccBgmvS3CFJXc2Yt.tar.zst"
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        assert (await client.get(f"{public}/v1/{missing}")).status_code == 404
        text = (await client.get(f"{internal}/metrics")).text
    assert 'snapshot_tracker_archive_requests_total{outcome="not_found"} 1.0' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_a_healthy_tracker_fires_no_alert(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Normal operation (a group with its snapshots, its target up) fires none of the rules."""
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    line = 'snapshot_tracker_best_full_slot{group="local"}'
    exposition = await exposition_once(nursery, tmp_path, settings, line)
    assert await firing_alerts(exposition, tmp_path) == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_a_tracker_that_stops_answering_alerts_that_it_is_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A tracker that died (or hangs, or whose listener Prometheus cannot reach) fired
    nothing: every rule read its own series, which went stale with it, and what fired when
    it died resolved. SnapshotTrackerDown reads the scrape's ``up``."""
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    line = 'snapshot_tracker_best_full_slot{group="local"}'
    exposition = await exposition_once(nursery, tmp_path, settings, line)
    # answered for 10 minutes, then not: evaluated 10 minutes after, past the rule's for:
    assert await firing_alerts(exposition, tmp_path, answered=10) == {("SnapshotTrackerDown", "t")}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_a_cluster_rpc_that_fails_alerts_and_one_that_answers_does_not(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A group's ``rpc`` that fails getSlot was said nowhere: no metric, no log line, and
    once its carried slot ran out the age's series went, so SnapshotTrackerSnapshotTooOld
    could not fire either. ``snapshot_tracker_cluster_rpc_up`` reads 0 and
    SnapshotTrackerClusterRpcDown fires; an RPC that answers (the ledger's incremental 100
    slots behind it) fires nothing."""
    rpc = await nursery.start(serve_app, Rpc(slot=1300).app())
    for url, expected in ((f"http://{REFUSED}", "0.0"), (rpc, "1.0")):
        settings = {
            "internal_listen": "127.0.0.1:0",
            "scrape_interval": "1s",
            "rpc": url,
            "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
        }
        # answering: once the age is read too (the ledger may be listed after the slot)
        line = 'snapshot_tracker_snapshot_age_slots{group="local"} 100.0'
        if expected == "0.0":
            line = 'snapshot_tracker_cluster_rpc_up{group="local"} 0.0'
        here = tmp_path / expected
        here.mkdir()
        exposition = await exposition_once(nursery, here, settings, line)
        assert f'snapshot_tracker_cluster_rpc_up{{group="local"}} {expected}' in exposition
        fired = {("SnapshotTrackerClusterRpcDown", "local")} if expected == "0.0" else set()
        assert await firing_alerts(exposition, here) == fired


#: The bucket of :func:`store_held_back` (S3's names: 3 characters at least).
BUCKET = "snaps"
BUCKET_UP = f'snapshot_tracker_object_store_up{{bucket="{BUCKET}"}}'


def store_held_back(answer: trio.Event) -> ScriptedApp:
    """A bucket that is there and holds nothing, whose every answer waits for ``answer``
    (a store that has not answered yet: slow to start, or never reached)."""

    async def bucket(request: Request) -> Answer:
        await answer.wait()
        if request.method == "HEAD":
            return Answer(200)
        return Answer(200, XML, NO_UPLOADS if "uploads" in request.query else EMPTY_LISTING)

    return ScriptedApp({f"/{BUCKET}": bucket, f"/{BUCKET}/": bucket})


async def tracker_before_the_store_answers(
    nursery: trio.Nursery, tmp_path: Path, answer: trio.Event
) -> tuple[str, ScriptedApp, str]:
    """A tracker over :func:`store_held_back`, its internal URL once the store was asked
    (and has not answered: nor failed, for a minute), the store, and its public URL."""
    store = store_held_back(answer)
    s3 = await nursery.start(serve_app, store)
    settings = {
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "target_groups": [
            {"group": "g", "static_targets": {"targets": [REFUSED.removeprefix("http://")]}}
        ],
        "object_store": {
            "endpoint": s3,
            "bucket": BUCKET,
            "prefix": "p/",
            "access_key_id": "k",
            "secret_access_key": "s",
            "request_timeout": "60s",  # no failure either while the test runs
        },
    }
    public, internal = await start_tracker(nursery, write_config(tmp_path, settings))

    async def asked() -> bool:
        return bool(store.requests)

    await wait_until(asked)
    return internal, store, public


async def test_the_bucket_is_not_up_before_the_store_answered(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``object_store_up`` read 1 from the start, before the store had answered anything (an
    endpoint that hangs, a store still starting): up on the dashboard, and no alert, for a
    store that never answered. It reads 0 until the store's first answer, then 1
    (docs/replicas.md, the metrics of the object store)."""
    answer = trio.Event()
    internal, _store, _public = await tracker_before_the_store_answers(nursery, tmp_path, answer)
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:

        async def reads(value: str) -> bool:
            return f"{BUCKET_UP} {value}" in (await client.get(f"{internal}/metrics")).text

        assert await reads("0.0")
        answer.set()
        await wait_until(lambda: reads("1.0"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_a_store_that_never_answered_alerts_that_the_bucket_is_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A store that has not answered since the start fires SnapshotTrackerBucketDown once
    its ``for:`` passed, as a store that failed does."""
    internal, _store, _public = await tracker_before_the_store_answers(
        nursery, tmp_path, trio.Event()
    )
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        exposition = (await client.get(f"{internal}/metrics")).text
    assert ("SnapshotTrackerBucketDown", BUCKET) in await firing_alerts(exposition, tmp_path)


async def test_the_stores_status_is_not_up_before_the_store_answered(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``GET /v1/store`` (and the status page's bucket card, read from it) said up, 200,
    before the store had answered anything, while ``object_store_up`` read 0: the JSON is
    200 only once the store answered its last call (docs/http-api.md, ``/v1/store``), as
    the metric is 1."""
    answer = trio.Event()
    _internal, _store, public = await tracker_before_the_store_answers(nursery, tmp_path, answer)
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        before = await client.get(f"{public}/v1/store")
        assert (before.status_code, before.json()["up"]) == (503, False)
        answer.set()

        async def up() -> bool:
            return (await client.get(f"{public}/v1/store")).status_code == 200

        await wait_until(up)
        assert (await client.get(f"{public}/v1/store")).json()["up"] is True


#: Nodes of the cluster in :func:`test_discovered_nodes_are_one_series_of_their_group`.
NODES = 500


async def test_discovered_nodes_are_one_series_of_their_group(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Each node cluster discovery found had series of its own (labelled by its URL): 19
    each, 57,000 and 6.4 MB at every scrape of a tracker over mainnet's 3,000 nodes, churning
    as nodes come and go. Now the group's discovered nodes share one ``target`` label,
    ``discovered``, and a configured target keeps its own (docs/http-api.md, "Internal
    routes")."""
    raise_fd_limit()
    # each node a host of its own (discovery keeps one node a machine), none listening
    entries = [
        node_entry(n, f"127.1.{n // 250}.{n % 250 + 1}:{REFUSED_PORT}") for n in range(NODES)
    ]
    rpc = await nursery.start(serve_app, rpc_app([entries]))
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "egress": {"allow": ["127.0.0.0/8"]},
        "target_groups": [
            {
                "group": "mainnet",
                "http_targets": {"targets": [f"http://{REFUSED}"]},
                "cluster_discovery": {"rpc": [rpc]},
            }
        ],
    }
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    probes: dict[str, float] = {}
    async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:

        async def every_node_probed() -> bool:
            text = (await client.get(f"{internal}/metrics")).text
            probes.clear()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "snapshot_tracker_scrape_duration_seconds_count":
                        probes[sample.labels["target"]] = sample.value
            return sum(probes.values()) >= NODES + 1

        await wait_until(every_node_probed, timeout=30)
        size = len((await client.get(f"{internal}/metrics")).content)
    print(f"\n{NODES} discovered nodes: /metrics {size:,} bytes")
    assert sorted(probes) == sorted(["discovered", f"http://{REFUSED}"])
    assert probes["discovered"] >= NODES
