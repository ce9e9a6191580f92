"""How fast can any process put a new file into the page cache here? (the refresh's ceiling)

    .venv/bin/python bench/pagecache.py [--size 1GiB] [--rounds 3] [--pause 3]

A refresh writes a whole new archive into the page cache while it streams it to the client,
so it can never be faster than writing a new file of that size. This writes ``--size`` bytes
of random data in 1 MiB ``os.write`` calls to a new file in a temp dir, ``--rounds`` times,
removing the file (without fsync) after each round and pausing ``--pause`` seconds first:
on a VM whose freed memory goes back to the host after a moment (free page reporting), each
round then has to fault fresh pages in, as a refresh in a long-running tracker does. Prints
GB/s per round; the fsync is not timed (a refresh's client does not wait for it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

MiB = 1024 * 1024


def write_round(directory: str, size: int, chunk: bytes) -> float:
    """Seconds to write ``size`` bytes to a new file; the file is removed afterwards."""
    path = os.path.join(directory, "pagecache-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        began = time.perf_counter()
        for _ in range(size // len(chunk)):
            os.write(fd, chunk)
        return time.perf_counter() - began
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    """Parse the options, run the rounds, print one line per round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per round (default 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds before each round")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    chunk = os.urandom(MiB)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for n in range(1, args.rounds + 1):
            time.sleep(args.pause)
            seconds = write_round(directory, args.size * MiB, chunk)
            print(f"round {n}: {args.size * MiB / seconds / 1e9:.2f} GB/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
