"""The archive check's raw reading thread under GIL contention: how fast it hands the raw
chunks on (the file read, its SHA-256, the blocks' BLAKE3 in their thread apart) while other
threads of the process run short pieces of Python, for two chunk sizes and two switch
intervals (docs/architecture.md, "The accounts level" → "Every core": on 16 cores the first
read's walk waits for these chunks).

    .venv/bin/python bench/rawchain.py                   # a 1 GB file of random bytes
    .venv/bin/python bench/rawchain.py --file ARCHIVE --threads 30 --work 300,500,1000

``--threads`` threads each loop: ``--work`` additions in Python (holding the GIL), then a
0.5 ms sleep (letting go of it), as the check's sending and answers' threads do between
their blocking calls. For each ``--work`` it prints the raw chunks' rate (GB/s) by chunk
size (``archivecheck.READ_SIZE``) and switch interval, and the cores the busy threads took
(their GIL demand). The file is read from the page cache after a first pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracker.proof.archive import archivecheck


def _busy(stop: threading.Event, work: int, spent: list[float]) -> None:
    """Short pieces of Python (``work`` additions) between 0.5 ms sleeps, until ``stop``."""
    start = time.thread_time()
    while not stop.is_set():
        total = 0
        for i in range(work):
            total += i
        time.sleep(0.0005)
    spent.append(time.thread_time() - start)


def rate(path: Path, size: int, threads: int, work: int) -> tuple[float, float]:
    """The raw chunks' rate (bytes a second) through ``archivecheck._Prefetch`` in chunks of
    ``size`` with ``threads`` busy threads beside it, and the cores those threads took."""
    saved = archivecheck.READ_SIZE
    archivecheck.READ_SIZE = size
    stop, spent = threading.Event(), list[float]()
    busy = [
        threading.Thread(target=_busy, args=(stop, work, spent), daemon=True)
        for _ in range(threads)
    ]
    for thread in busy:
        thread.start()
    switch = threading.Event()
    switch.set()  # the blocks' BLAKE3 taken apart, as when the second read will read much
    got = 0
    try:
        with open(path, "rb", buffering=0) as file:
            began = time.perf_counter()
            with archivecheck._Prefetch(file.read, None, switch) as chunks:
                while data := chunks.next():
                    got += len(data)
            wall = time.perf_counter() - began
    finally:
        stop.set()
        for thread in busy:
            thread.join()
        archivecheck.READ_SIZE = saved
    return got / wall, sum(spent) / wall


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, help="the file read (default: 1 GB of random bytes)")
    parser.add_argument("--threads", type=int, default=30)
    parser.add_argument("--work", default="0,300,500,1000", help="additions a piece, listed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.file
        if path is None:
            path = Path(scratch) / "raw"
            with open(path, "wb") as out:
                for _ in range(1000):
                    out.write(os.urandom(1_000_000))
        with open(path, "rb", buffering=0) as file:  # into the page cache
            while file.read(8 << 20):
                pass
        for work in (int(each) for each in args.work.split(",")):
            for interval in (0.005, 0.0005):
                sys.setswitchinterval(interval)
                for size in (1 << 20, 4 << 20):
                    speed, cores = rate(path, size, args.threads if work else 0, work)
                    print(
                        f"work {work}, switch interval {interval * 1000:.1f} ms, chunks of "
                        f"{size >> 20} MiB: {speed / 1e9:.2f} GB/s, the busy threads "
                        f"{cores:.2f} cores",
                        flush=True,
                    )
        sys.setswitchinterval(0.005)


if __name__ == "__main__":
    main()
