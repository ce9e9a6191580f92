"""A hostile learned-state file never stops the tracker nor holds its stop
(docs/http-api.md#what-the-tracker-learned): the real ``serve`` process, its
``.learned.json`` replaced by a document with a 401-digit number (at start and under a running
sync), or by a FIFO (its plain ``open`` would block until a writer comes)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from helpers_process import Serve, start_serve
from helpers_tls import client_tls

from tracker.learning.sync import FILE_NAME

HUGE = 10**400  # 401 digits: float() of it raises OverflowError
GRACE = 1.0
GOOD = {"group": "g", "target": "http://a:1", "discovered": False}
#: ``serve`` whose learned state syncs every 0.2 s rather than every minute (the module's
#: constant set before the command line runs); the rest is the real process.
FAST_SYNC = (
    sys.executable,
    "-c",
    "import sys, tracker.learning.sync as learning; learning.SYNC_EVERY = 0.2; "
    "from tracker.cli import main; sys.exit(main(sys.argv[4:]))",
)


def config(tmp_path: Path) -> Path:
    ledger, cache = tmp_path / "ledger", tmp_path / "cache"
    ledger.mkdir()
    cache.mkdir()
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache),
        "shutdown_grace": f"{GRACE}s",
        "target_groups": [{"group": "g", "local_targets": {"paths": [str(ledger)]}}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


def hostile(field: str, value: object) -> bytes:
    """A state document with a good throughput and rejection, and one more entry of the kind
    that has ``field``, with ``value`` there."""
    speed = {**GOOD, "bps": 7.0, "at": 1.0}
    # held as this tracker would hold it (600 s): one held past that by more than a clock's
    # skew is no replica's (docs/replicas.md), dropped and counted
    held = {**GOOD, "name": "n", "reason": "r", "until": time.time() + 300}
    doc = {"version": 1, "throughputs": [speed], "rejections": [held]}
    if field in speed:
        doc["throughputs"] = [speed, {**speed, "target": "http://b:1", field: value}]
    else:
        doc["rejections"] = [held, {**held, "name": "m", field: value}]
    return json.dumps(doc).encode()


async def logged_while_running(serve: Serve, words: str, timeout: float = 20) -> None:
    """Wait until ``serve`` logged ``words``; fails at once if it exited meanwhile."""
    with trio.fail_after(timeout):
        while words not in serve.log:
            assert serve.proc.poll() is None, serve.log
            await trio.sleep(0.02)
    assert serve.proc.poll() is None, serve.log


async def dropped_entries(serve: Serve) -> float:
    assert serve.internal is not None
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        text = (await client.get(f"{serve.internal}/metrics")).text
    line = 'snapshot_tracker_learned_dropped_total{what="entry"}'
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def test_a_huge_number_in_the_file_at_start_costs_its_entry(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "cache" / FILE_NAME).write_bytes(hostile("bps", HUGE))
    serve = await start_serve("--config", str(path))
    try:
        await logged_while_running(serve, "learned_entries_dropped")
        assert await dropped_entries(serve) == 1
        assert await serve.stop() == 0
    finally:
        serve.kill()
    assert "Traceback" not in serve.log
    # Written anew at the stop: the good entries kept, the bad one gone.
    kept = json.loads((tmp_path / "cache" / FILE_NAME).read_bytes())
    assert [t["target"] for t in kept["throughputs"]] == ["http://a:1"]
    assert [r["name"] for r in kept["rejections"]] == ["n"]


async def test_a_huge_number_written_under_a_running_sync_costs_its_entry(tmp_path: Path) -> None:
    path = config(tmp_path)
    state = tmp_path / "cache" / FILE_NAME
    serve = await start_serve("--config", str(path), prefix=FAST_SYNC)
    try:
        await logged_while_running(serve, "listening")
        # The tracker writes its own file after each read: written again until a sync read
        # ours (or the process died of it).
        with trio.fail_after(20):
            while "learned_entries_dropped" not in serve.log:
                assert serve.proc.poll() is None, serve.log
                (tmp_path / "planted").write_bytes(hostile("until", HUGE))
                os.replace(tmp_path / "planted", state)
                await trio.sleep(0.05)
        await logged_while_running(serve, "learned_entries_dropped")
        assert await dropped_entries(serve) >= 1
        assert await serve.stop() == 0
    finally:
        serve.kill()
    assert "Traceback" not in serve.log


async def test_a_fifo_at_the_state_path_neither_blocks_nor_holds_the_stop(
    tmp_path: Path,
) -> None:
    path = config(tmp_path)
    os.mkfifo(tmp_path / "cache" / FILE_NAME)
    serve = await start_serve("--config", str(path))
    try:
        await logged_while_running(serve, "learned_unreadable")
        assert "a FIFO" in serve.log
        serve.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(GRACE + 5):  # the stop's grace, the last write, the exit
            assert await serve.proc.wait() == 0
    finally:
        serve.kill()
    # The last write replaced the FIFO with the file (a rename, no open of the FIFO).
    assert (tmp_path / "cache" / FILE_NAME).is_file()
