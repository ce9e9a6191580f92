"""Every metric the example alert rules and Grafana dashboard name is one a running tracker
exports on ``/metrics`` (read from the ``# TYPE`` lines, so that labelled families with no
series yet count too)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from helpers_monitoring import LEDGER, alert_rules, dashboard_names, exported_names, metric_names
from helpers_tls import client_tls
from helpers_tracker import start_tracker, write_config


async def test_every_metric_of_the_alerts_and_the_dashboard_is_exported(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    settings = {
        "internal_listen": "127.0.0.1:0",
        "scrape_interval": "1s",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(LEDGER)]}}],
    }
    _public, internal = await start_tracker(nursery, write_config(tmp_path, settings))
    async with httpx.AsyncClient(verify=client_tls(), timeout=10, trust_env=False) as client:
        response = await client.get(f"{internal}/metrics")
    assert response.status_code == 200
    exported = exported_names(response.text)
    assert "snapshot_tracker_archives_rejected_total" in exported  # a family with no series
    named = {f"alert {r['alert']}": metric_names(r["expr"]) for r in alert_rules()}
    named.update(dashboard_names())
    missing = {where: sorted(names - exported) for where, names in named.items()}
    assert not {where: names for where, names in missing.items() if names}
    assert all(named.values())  # every query names at least one metric
