"""The malloc arena cap applied at start-up."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, sys
from tracker.core.memory import limit_malloc_arenas
print(limit_malloc_arenas())
"""


def run_check(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_applied_on_glibc_unless_the_operator_chose() -> None:
    import os

    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert run_check(base) == "True"
    assert run_check({**base, "MALLOC_ARENA_MAX": "4"}) == "False"


FREEZE = """
import gc
from tracker.core.memory import freeze_startup_objects
import tracker.service
kept = [[] for _ in range(3)]  # alive at start-up
frozen = freeze_startup_objects()
later = [[] for _ in range(3)]
tracked = {id(o) for o in gc.get_objects()}
print(frozen > 10_000, any(id(o) in tracked for o in kept), id(later[0]) in tracked)
"""


def test_objects_alive_at_start_up_are_not_walked_by_later_collections() -> None:
    # A full collection walked every module, class and function of the server's libraries
    # again each time: tens of milliseconds of stopped event loop.
    result = subprocess.run(
        [sys.executable, "-c", FREEZE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True"]


FAULTS = """
import random, resource, sys
from collections import deque
from tracker.core.memory import keep_freed_buffers, limit_malloc_arenas
limit_malloc_arenas()
print(keep_freed_buffers() if sys.argv[1] == "apply" else "default")
rng = random.Random(1)
in_flight = deque()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for n in range(300):  # pieces of a stream: 64 KiB to 3 MiB, a few in flight at a time
    in_flight.append(bytes([n % 256]) * rng.randint(64 * 1024, 3 * 1024 * 1024))
    if len(in_flight) > 4:
        in_flight.popleft()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(how: str, env: dict[str, str]) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", FAULTS, how], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_freed_stream_buffers_are_reused_not_faulted_in_again() -> None:
    """Pieces of a stream come and go a few at a time: with glibc's defaults about a third
    of their pages were fresh ones faulted in again (mapped or trimmed, then unmapped);
    kept, the same pieces fault in about a tenth of that."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    _, default = _faults("default", base)
    applied, kept = _faults("apply", base)
    assert applied == "True"
    assert kept * 4 < default
    skipped, _ = _faults("apply", {**base, "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert skipped == "False"  # the operator's own setting wins
