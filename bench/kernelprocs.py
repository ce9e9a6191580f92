"""What a process that scans storages with the compiled kernels costs: started fresh, or
forked from a forkserver that loaded the kernels once (docs/architecture.md, "The accounts
level" → "Every core": the storages' scan taken out of the check's process).

    .venv/bin/python bench/kernelprocs.py                    # 4 forked scanners, 200,000 accounts
    .venv/bin/python bench/kernelprocs.py --children 8 --accounts 1000000

It writes the storages of ``--accounts`` accounts (``bench/manyaccounts.py``'s) end to end
in a temporary file, then scans all of them (``proof.formats.storages.StorageScan``, each
batch's index rows made) in:

- a fresh interpreter that loads numba and the kernels (from numba's cache) itself;
- ``--children`` processes forked from one forkserver that loaded them before it forked
  (``multiprocessing``'s forkserver with a preload: no thread of the check's process is
  ever forked), all at once, each over the whole file (mapped: its pages are the page
  cache's, shared).

For each it prints the seconds from its start until the kernels were ready (the forked
ones: once the forkserver, started and preloaded first, runs), the scan's seconds, and the
process's memory from ``/proc/self/smaps_rollup`` with the kernels ready, before the scan
touches the file: RSS, PSS (shared pages split among the processes sharing them) and USS
(pages of its own), in MiB.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The module the forkserver imports before it forks: the one the scan processes' forkserver
#: imports (numba and the kernels loaded, and what a scan process runs).
PRELOAD = "tracker.proof.accounts.scanpreload"


def memory() -> dict[str, float]:
    """This process's RSS, PSS and USS in MiB (``/proc/self/smaps_rollup``)."""
    kib: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                kib[key] = int(value.split()[0])
    own = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return {"rss": kib["Rss"] / 1024, "pss": kib["Pss"] / 1024, "uss": own / 1024}


def scan_file(path: str, layout: list[tuple[int, int]], began: float) -> dict[str, Any]:
    """Load the kernels (a no-op where a preload did), scan every storage of ``path`` (at
    the offsets and lengths ``layout`` gives), and say what it took."""
    from tracker.proof.formats import kernels
    from tracker.proof.formats.storages import Records, StorageScan

    kernels.load()
    kernels.warm_up()
    ready = time.perf_counter() - began
    loaded = memory()  # before the file's pages are touched (the page cache's, not its own)
    start = time.perf_counter()
    records = 0

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        for number, (at, length) in enumerate(layout):

            def sink(batch: Records, number: int = number) -> None:
                nonlocal records
                batch.index_rows(number << 32)
                records += len(batch)

            scanner = StorageScan(f"accounts/{number}.0", length, sink)
            scanner.take(view[at : at + length])
        view.release()
    return {
        "ready_s": round(ready, 3),
        "scan_s": round(time.perf_counter() - start, 3),
        "records": records,
        **{key: round(value, 1) for key, value in loaded.items()},
    }


def _child(path: str, layout: list[tuple[int, int]], began: float, out: Any) -> None:
    out.put(scan_file(path, layout, began))


def _nothing() -> None:
    return None


def write_storages(directory: str, accounts: int) -> tuple[str, list[tuple[int, int]]]:
    """The storages of ``accounts`` accounts end to end in one file: its path and each
    storage's offset and length."""
    from bench.manyaccounts import storages

    path = os.path.join(directory, "storages.bin")
    layout = []
    at = 0
    with open(path, "wb") as f:
        for storage in storages(7, accounts):
            f.write(storage.data)
            layout.append((at, len(storage.data)))
            at += len(storage.data)
    return path, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--children", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, layout = write_storages(tmp, args.accounts)
        code = (
            "import json, sys, time; began = time.perf_counter();"
            "from bench.kernelprocs import scan_file;"
            "print(json.dumps(scan_file(sys.argv[1], json.loads(sys.argv[2]), began)))"
        )
        root = str(Path(__file__).resolve().parent.parent)
        fresh = subprocess.run(
            [sys.executable, "-c", code, path, json.dumps(layout)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            timeout=600,
        )
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([PRELOAD])
        out = context.Queue()
        began = time.perf_counter()
        first = context.Process(target=_nothing)  # the forkserver starts (and preloads) once
        first.start()
        first.join(600)
        forkserver = time.perf_counter() - began
        began = time.perf_counter()
        children = [
            context.Process(target=_child, args=(path, layout, began, out))
            for _ in range(args.children)
        ]
        for child in children:
            child.start()
        try:
            forked = [out.get(timeout=600) for _ in children]
        finally:
            for child in children:
                child.join(30)
                if child.is_alive():
                    child.kill()
                    child.join()
        report = {
            "accounts": args.accounts,
            "storage_bytes": layout[-1][0] + layout[-1][1],
            "fresh": json.loads(fresh.stdout),
            "forkserver_started_s": round(forkserver, 3),
            "forked": forked,
            "forked_all_s": round(time.perf_counter() - began, 3),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
