"""The bench command runs, and leaves nothing running however it ends.

Not a performance test and no limit on its time: only that ``bench/run.py --quick`` starts
nginx, the tracker and the bare app, measures a few figures, prints the table, writes
results.json and leaves no process behind; and that a bench killed outright (SIGKILL, as a
test runner's timeout kills) leaves none either. Every process the bench starts carries a
mark in its environment (``SST_BENCH_MARK``) or, as nginx clears its environment, names the
bench's work dir on its command line; whatever way a test ends, :func:`reaped` kills what
still does (each process group, so nginx's workers too) and waits until none is left.
Skipped (with the reason) when nginx or wrk is missing (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.tools import ToolMissing, ensure  # noqa: E402

MARK = "SST_BENCH_MARK"
#: Cheap figures that still start every kind of server the bench has (nginx as files and
#: proxy, the tracker in each mode, the bare app) and its standalone check: what "the bench
#: runs" needs, in a small part of the time of every figure.
SMOKE = ("cache_hit_1", "proxy", "redirects", "discovery", "verify")


def marked(mark: str, workdir: Path) -> list[int]:
    """The processes whose environment carries ``MARK=mark``, whose command line names
    ``workdir``, or that hold a file under it open (nginx's workers: their command line is
    rewritten, their environment cleared; their logs are the work dir's) (zombies are not
    counted: they run nothing)."""
    needle, path = f"{MARK}={mark}".encode(), str(workdir).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            named = path in Path(f"/proc/{pid}/cmdline").read_bytes()
            if needle in environ or named or _holds_under(pid, str(workdir)):
                found.append(int(pid))
    return found


def _holds_under(pid: str, workdir: str) -> bool:
    """True when process ``pid`` holds a file under ``workdir`` open."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(workdir + os.sep):
                    return True
    return False


def kill_marked(mark: str, workdir: Path) -> None:
    """SIGKILL every marked process and the process group it leads or belongs to (never
    this test's own group), until none is left."""
    ours = os.getpgrp()
    while pids := marked(mark, workdir):
        for pid in pids:
            with contextlib.suppress(OSError):
                group = os.getpgid(pid)
                if group != ours:
                    os.killpg(group, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reaped(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment to start the bench with (its work dir under ``tmp_path``); whatever
    the test did, nothing it started is left running afterwards."""
    mark = uuid.uuid4().hex
    try:
        yield {**os.environ, MARK: mark}
    finally:
        kill_marked(mark, tmp_path)
        assert marked(mark, tmp_path) == []


def need_tools() -> None:
    try:
        # .ci/run installs them; a test never installs packages itself.
        ensure(["nginx", "wrk", "aria2c", "curl"], install=False)
    except ToolMissing as exc:
        pytest.skip(f"bench tools unavailable: {exc}")


def bench_argv(tmp_path: Path, *figures: str) -> list[str]:
    return [
        *(sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-install"),
        *("--out", str(tmp_path / "out"), "--workdir", str(tmp_path)),
        *("--only", ",".join(figures)),
    ]


def test_bench_quick_run(tmp_path: Path, reaped: dict[str, str]) -> None:
    need_tools()
    done = subprocess.run(
        bench_argv(tmp_path, *SMOKE), capture_output=True, text=True, cwd=tmp_path, env=reaped
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(SMOKE) <= set(results["runs"])
    figures = {row["figure"] for row in results["table"]}
    assert {"cache hit, one GET", "proxy, one stream", "redirects", "discovery"} <= figures
    for row in results["table"]:
        assert row["verdict"] in {"PASS", "MISS", "info", "SKIP"}, row
    assert "| cache hit, one GET |" in done.stdout
    assert (tmp_path / "out" / "ratios.svg").read_text().startswith("<svg")
    # Everything the bench started is gone with it, and its work dir too.
    assert marked(reaped[MARK], tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _lines_to(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Put each line of ``stream`` in ``lines``, then "" at its end."""
    for line in stream:
        lines.put(line)
    lines.put("")


def test_a_bench_killed_outright_leaves_no_process(tmp_path: Path, reaped: dict[str, str]) -> None:
    """SIGKILL of ``run.py`` once its servers run (no ``finally`` of its own runs): every
    process it started dies with it (the parent-death signal; nginx's workers with their
    master), each exit waited for as the kernel reports it (a pidfd)."""
    need_tools()
    bench = subprocess.Popen(
        bench_argv(tmp_path, "cache_hit_1", "cache_hit_8"),
        cwd=tmp_path, env=reaped, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert bench.stdout is not None
    # Its lines read in a thread: a bench that hangs silently fails the wait below after two
    # minutes (a readline here would wait for ever, the finally never killing it).
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines_to, args=(bench.stdout, lines), daemon=True)
    reader.start()
    try:
        # Its first figure measured: nginx and the tracker it hit are running now.
        while not (line := lines.get(timeout=120)).startswith("  cache_hit_1 run 1:"):
            assert line, "the bench ended before its first figure"
        started = [pid for pid in marked(reaped[MARK], tmp_path) if pid != bench.pid]
        assert len(started) > 1  # nginx, the tracker...
    finally:
        bench.send_signal(signal.SIGKILL)
        bench.wait()
        reader.join(10)  # the pipe ended with the bench
        bench.stdout.close()
    # Nothing but the kernel ends them: each dies with its parent (or its group's leader),
    # and what they started in turn with them; each exit waited for as the kernel reports it.
    while left := marked(reaped[MARK], tmp_path):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                ended = os.pidfd_open(pid)  # readable once the process ended
                try:
                    readable, _, _ = select.select([ended], [], [], 60)
                finally:
                    os.close(ended)
                assert readable, (
                    f"outlived the bench: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}"
                )
