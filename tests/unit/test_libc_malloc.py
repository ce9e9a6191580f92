"""glibc's malloc keeps an accounts proof's large buffers in its heap
(core.libc.keep_large_buffers): a process's first proof does not fault every piece in afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Four live buffers of 4 MiB and one growing to 8 MiB, made and freed again in a thread, as
# the frame decoding holds its pieces: 24 MiB (6,144 pages) at most at once.
PATTERN = """
import resource, sys, threading
from tracker.core.libc import keep_large_buffers
if sys.argv[1] == "kept":
    assert keep_large_buffers()
def work():
    for _ in range(16):
        held = [bytearray(4 << 20) for _ in range(4)]
        grow = bytearray()
        for _ in range(8):
            grow += bytes(1 << 20)
        del held, grow
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True
    ).stdout
    return int(out)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_large_buffers_are_reused_from_the_heap_not_faulted_in_again() -> None:
    kept = faults("kept")
    assert kept < 3 * 6144  # about the pages live at once, not one fault a page a buffer
    assert faults("default") > 4 * kept  # what the default thresholds cost the same work
