"""A background loop that fails as no rule foresaw is logged and run again while the
daemon serves (docs/architecture.md, "Failures"): the snapshot ages' task raised an
OverflowError for one RPC answer, and the whole tracker ended."""

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
            "scrape_interval": "100ms",
            "target_groups": [{"group": "g", "static_targets": {"targets": [up[7:]]}}],
        },
    )
    base = (await start_tracker(nursery, path))[0]

    async def run_again() -> bool:
        return calls >= 2

    await wait_until(run_again)
    assert any(r.msg == "task_failed" and r.exc_info for r in caplog.records)
    answer = await client.get(f"{base}/v1/snapshots")
    assert answer.status_code == 200 and len(answer.json()) == 1
