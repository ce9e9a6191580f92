"""The proof's defaults within a container's limits (tracker.proof.accounts.machine): the
real ``snapshot-tracker check-config`` run in a cgroup created here (cgroup v1's ``cpu`` and
``memory`` hierarchies, as root) with a CPU quota and a memory limit sizes the proof from
them, not from the host's cores and memory. The parsers' tables: tests/unit/test_machine_limits.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_process import start_serve

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


def _v1_mount(controller: str) -> str | None:
    """Where cgroup v1's hierarchy of ``controller`` is mounted (None: it is not)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - cgroup " not in line:
            continue
        after = line.split(" - ", 1)[1].split()
        if controller in after[2].split(","):
            return line.split()[4]
    return None


@pytest.fixture
def cgroup() -> Iterator[tuple[Path, Path]]:
    """A new cgroup in the v1 ``cpu`` and ``memory`` hierarchies (removed after the test;
    a cgroup whose processes ended is empty)."""
    mounts = [_v1_mount("cpu"), _v1_mount("memory")]
    if os.geteuid() != 0 or None in mounts:
        pytest.skip("needs root and cgroup v1's cpu and memory hierarchies")
    name = f"snapshot-tracker-test-{uuid.uuid4().hex[:12]}"
    made: list[Path] = []
    try:
        for mount in mounts:
            made.append(Path(str(mount)) / name)
            made[-1].mkdir()
    except OSError as exc:
        for directory in made[:-1]:
            directory.rmdir()
        pytest.skip(f"cannot create a cgroup here: {exc}")
    try:
        yield made[0], made[1]
    finally:
        for directory in made:
            directory.rmdir()


def check_config_in(cpu: Path, memory: Path) -> str:
    """``check-config`` of the quickstart's config run in the cgroup ``cpu`` / ``memory``."""
    script = (
        f'echo $$ > "{cpu}/cgroup.procs" && echo $$ > "{memory}/cgroup.procs" && '
        f'exec "{sys.executable}" -m tracker check-config --config examples/local.yml'
    )
    done = subprocess.run(
        ["sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_cpu_quota_and_a_memory_limit_size_the_proof(cgroup: tuple[Path, Path]) -> None:
    cpu, memory = cgroup
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("50000")  # half a CPU: one core
    (memory / "memory.limit_in_bytes").write_text(str(3 * GIB))
    shown = check_config_in(cpu, memory)
    assert (
        "derived from 1 core and 3 GiB of memory, within its cgroup's CPU quota and memory limit"
        in shown
    ), shown
    assert "proof_workers 1 (the cores)" in shown


def test_without_limits_the_host_sizes_it(cgroup: tuple[Path, Path]) -> None:
    cpu, memory = cgroup
    shown = check_config_in(cpu, memory)
    cores = len(os.sched_getaffinity(0))
    assert f"proof_workers {cores} (the cores)" in shown, shown
    assert "within its cgroup" not in shown


async def test_the_daemon_says_what_sized_its_proofs(cgroup: tuple[Path, Path]) -> None:
    """``serve`` in the cgroup logs the settings ``check-config`` shows, at start."""
    cpu, memory = cgroup
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("50000")
    (memory / "memory.limit_in_bytes").write_text(str(3 * GIB))
    joining = f'echo $$ > "{cpu}/cgroup.procs" && echo $$ > "{memory}/cgroup.procs" && exec "$@"'
    serve = await start_serve(
        "--config",
        str(ROOT / "examples" / "local.yml"),
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "",
        prefix=["sh", "-c", joining, "sh"],
    )
    try:
        assert "accounts_proofs" in serve.log
        assert "derived from 1 core and 3 GiB of memory, within its cgroup's" in serve.log
    finally:
        assert await serve.stop() == 0


def test_a_memory_limit_too_small_for_the_proofs_is_said(cgroup: tuple[Path, Path]) -> None:
    cpu, memory = cgroup
    (memory / "memory.limit_in_bytes").write_text(str(640 * 1024**2))
    shown = check_config_in(cpu, memory)
    assert (
        "warning: prove_accounts_memory: 512 MiB leaves the tracker less than 256 MiB of its"
        " cgroup's 640 MiB memory limit" in shown
    ), shown
