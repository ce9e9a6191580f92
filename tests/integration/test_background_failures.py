"""A background loop that fails as no rule foresaw is logged, counted and run again while
the daemon serves (docs/architecture.md, "Failures"): the snapshot ages' task raised an
OverflowError for one RPC answer, and the whole tracker ended; then it was logged alone, and
no alert told the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fakes import Sidecar, sidecar_info
from helpers_server import serve_app
from helpers_tracker import start_tracker, wait_until, write_config
from names import full_name

import tracker.service as service

#: Each test here makes a task fail on purpose: its ``task_failed`` lines fail none
#: (tests/conftest.py).
pytestmark = pytest.mark.expects_task_failure


async def test_a_failed_background_loop_is_run_again_while_the_tracker_serves(
    nursery: trio.Nursery,
    tmp_path: Path,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    ages = service.track_snapshot_age

    async def failing_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OverflowError("int too large to convert to float")
        await ages(*args)

    monkeypatch.setattr(service, "track_snapshot_age", failing_once)
    sidecar = Sidecar(body=[sidecar_info((full_name(100), 1))])
    up = await nursery.start(serve_app, sidecar.app())
    path = write_config(
        tmp_path,
        {
            "internal_listen": "127.0.0.1:0",  # /metrics
            "scrape_interval": "100ms",
            "target_groups": [{"group": "g", "static_targets": {"targets": [up[7:]]}}],
        },
    )
    base, internal = await start_tracker(nursery, path)

    async def run_again() -> bool:
        return calls >= 2

    await wait_until(run_again)
    assert any(r.msg == "task_failed" and r.exc_info for r in caplog.records)
    answer = await client.get(f"{base}/v1/snapshots")
    assert answer.status_code == 200 and len(answer.json()) == 1
    metrics = (await client.get(f"{internal}/metrics")).text
    assert 'snapshot_tracker_internal_errors_total{where="task"} 1.0' in metrics
