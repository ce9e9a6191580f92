"""The bench command runs end to end with tiny sizes (``--quick``) and writes its results.

Not a performance test: only that ``bench/run.py`` starts nginx, the tracker and the bare
app, measures every figure, prints the table, writes results.json and leaves no process
behind. Skipped (with the reason) when nginx or wrk is missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.run import FIGURES  # noqa: E402
from bench.tools import ToolMissing, ensure  # noqa: E402


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_bench_quick_run(tmp_path: Path) -> None:
    try:
        # .ci/run installs them; a test never installs packages itself.
        ensure(["nginx", "wrk", "aria2c", "curl"], install=False)
    except ToolMissing as exc:
        pytest.skip(f"bench tools unavailable: {exc}")
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-install"]
    argv += ["--out", str(out), "--workdir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    figures = {row["figure"] for row in results["table"]}
    assert {"cache hit, one GET", "cache hit, 8 GETs", "cache hit CPU, one GET"} <= figures
    assert {"proxy, one stream", "proxy first byte", "redirects", "redirects p99"} <= figures
    assert {"memory", "idle connections", "discovery", "refresh", "fan-in"} <= figures
    assert {"time to running", "time to running, predicted"} <= figures
    assert set(FIGURES) - {"fan_in"} <= set(results["runs"])
    for row in results["table"]:
        assert row["verdict"] in {"PASS", "MISS", "info", "SKIP"}, row
    assert "| cache hit, one GET |" in done.stdout
    assert (out / "ratios.svg").read_text().startswith("<svg")
    # Everything the bench started lived under its work dir, which is gone with its processes.
    assert processes_mentioning(str(tmp_path)) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
