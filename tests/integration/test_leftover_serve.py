"""The harness's own promise: a ``serve`` process a test leaves running (it failed or skipped
half-way) is killed and reaped at teardown, after the test's trio run has ended."""

from __future__ import annotations

from pathlib import Path

import trio
import yaml
from helpers_process import start_serve


def test_a_serve_left_running_is_killed_and_reaped_outside_a_run(tmp_path: Path) -> None:
    config = tmp_path / "tracker.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "internal_listen": "127.0.0.1:0",
                "target_groups": [{"group": "g", "static_targets": {}}],
            }
        )
    )
    serve = trio.run(start_serve, "--config", str(config))  # the test's run, ended
    assert serve.proc.returncode is None  # still running
    serve.kill()  # as tests/conftest.py's teardown does
    assert serve.proc.returncode is not None
