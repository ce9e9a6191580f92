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
