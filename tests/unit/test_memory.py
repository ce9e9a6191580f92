"""The malloc arena cap applied at start-up."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, sys
from tracker.memory import limit_malloc_arenas
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
from tracker.memory import freeze_startup_objects
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
