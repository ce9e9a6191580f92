"""The ``verify`` figure: ``snapshot-tracker verify`` on a realistic archive, vs the tools that
do a part of its work: ``sha256sum`` (the digest alone) and ``zstd -t`` (the decompression
alone, frame checksums included).

The archive is a real snapshot ``.tar.zst`` (``tests.archives.build_big_archive``: account
files of random bytes and zero runs, ~3x compressible, a zstd frame every 32 MiB of tar,
content checksums; its manifest names one storage of a few accounts, which prove to
``accounts``, and the other account files are not storages the manifest names, which the
check skips), built once and kept under ``--out`` (``bench/out/`` by default, git-ignored)
for later runs. It is read once before measuring, so that every command reads it from the page
cache. Each run times the four commands in an order that alternates between runs.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import die_with_parent
from bench.tools import find
from tests.archives import big_archive_name, build_big_archive
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file

Result = dict[str, Any]


def archive(out: Path, size: int) -> Path:
    """The bench's archive of about ``size`` compressed bytes, built unless already there."""
    directory = out / f"verify-archive-{size}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / big_archive_name()
    if not path.exists():
        print(f"writing a ~{size:,} byte .tar.zst snapshot archive ...", flush=True)
    build_big_archive(str(path), size=size)
    return path


def _warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of a command."""
    cpu, start = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, preexec_fn=die_with_parent
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return took, _cpu(resource.RUSAGE_CHILDREN) - cpu


def _in_process(path: Path) -> tuple[float, float]:
    cpu, start = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    check_file(str(path), prove_accounts=AccountsLimits())  # as a refresh's check does
    return time.perf_counter() - start, _cpu(resource.RUSAGE_SELF) - cpu


def verify(path: Path, run: int) -> Result:
    """One run: bytes per second of the CLI, check_file in this process and the yardsticks
    (``NAME``), and the CPU seconds each spent per GB (``NAME_cpu``: shared machines make
    wall times drift, CPU much less)."""
    size = path.stat().st_size
    _warm(path)
    commands: dict[str, Any] = {
        "tracker": lambda: _timed([sys.executable, "-m", "tracker", "verify", str(path)]),
        "inprocess": lambda: _in_process(path),
        "sha256sum": lambda: _timed(["sha256sum", str(path)]),
    }
    zstd = find("zstd")
    if zstd is not None:
        commands["zstd_t"] = lambda: _timed([zstd, "-q", "-t", str(path)])
    names = list(commands)
    if run % 2:
        names.reverse()
    result: Result = {"size": size}
    for name in names:
        wall, cpu = commands[name]()
        result[name] = size / wall
        result[f"{name}_cpu"] = cpu / (size / 1e9)
    result["startup_s"] = _startup()
    return result


def _startup() -> float:
    """Seconds of ``python -m tracker verify`` on nothing but its start-up and a usage error."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tracker", "verify", "--help"], capture_output=True, timeout=60
    )
    return time.perf_counter() - start


def cpu_count() -> int:
    """Cores this process may run on (the figure depends on having two)."""
    return len(os.sched_getaffinity(0))
