"""What a hostile full of empty accounts costs level ``accounts``: memory, disk, time.

    .venv/bin/python bench/hostile_accounts.py                      # 10,000,000 accounts
    .venv/bin/python bench/hostile_accounts.py --accounts 1000000 --memory 64MiB

It writes (under ``--out``, ``bench/out/`` by default) a ``.tar.zst`` full whose storages
hold ``--accounts`` closed accounts (zero lamports, no data, pubkeys counted up: the records
differ in a few bytes, so they compress to almost nothing), in storages of 1,000,000 records,
a zstd frame every 32 MiB of tar; its manifest carries the empty state's lattice hash, so the
archive is genuine and must prove to ``accounts``. Then, in a process of its own, it checks
it with ``--memory`` as the proof's budget and prints the archive's size, the check's wall
time, the peak RSS of the check and of its hash worker, the most the proof held of its
budget and the peak of its spilled index on disk (docs/architecture.md, "Bounded memory").
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `tests` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.archives import write_framed_snapshot
from tracker.config.values import parse_size
from tracker.proof.accounts.budget import AccountsLimits, default_workers, shared_limits
from tracker.proof.formats.lattice import LtHash
from tracker.proof.formats.writing import archive_hash_of, write_manifest

SLOT = 500_000_000
PER_STORAGE = 1_000_000
META = 136


def storage(first: int, count: int) -> bytes:
    """``count`` empty closed accounts, pubkeys ``first + 1`` on (big-endian, in the last 8
    bytes; never the default pubkey, at which agave's scan of a storage stops), in
    AppendVec records of 136 bytes."""
    records = np.zeros((count, META), dtype=np.uint8)
    numbers = np.arange(first + 1, first + 1 + count, dtype=">u8").view(np.uint8)
    numbers = numbers.reshape(count, 8)
    records[:, 16 + 24 : 16 + 32] = numbers  # StoredMeta's pubkey, after its two u64s
    return records.tobytes()


def build(out: Path, accounts: int, per: int = PER_STORAGE) -> Path:
    """The archive of storages of ``per`` records, built unless there."""
    base = out / f"hostile-{accounts}{f'-per{per}' if per != PER_STORAGE else ''}"
    done = base / "meta.json"
    if done.exists():
        return base / json.loads(done.read_text())["archive"]
    base.mkdir(parents=True, exist_ok=True)
    counts = [min(per, accounts - at) for at in range(0, accounts, per)]
    storages = [(SLOT - len(counts) + i, i, count * META) for i, count in enumerate(counts)]
    empty = LtHash().value()  # zero lamports count nothing: the empty state's hash
    archive = base / f"snapshot-{SLOT}-{archive_hash_of(empty)}.tar.zst"
    firsts = [0, *itertools.accumulate(counts)][:-1]
    members = (
        (f"accounts/{slot}.{ident}", storage(first, count))
        for (slot, ident, _), first, count in zip(storages, firsts, counts, strict=True)
    )
    write_framed_snapshot(archive, SLOT, write_manifest(SLOT, empty, storages), members, 3)
    done.write_text(json.dumps({"archive": archive.name}))
    return archive


def check(archive: Path, memory: int, concurrent: int = 1) -> dict[str, Any]:
    """The check, timed, with its peaks (bench/accounts.py's measures); ``concurrent``
    checks of the archive at once, in threads of one process sharing one budget, its
    hashing processes and frame threads (as the tracker's concurrent proofs do)."""
    from bench.accounts import _children_cpu
    from bench.procwatch import PeakWatch, peak_rss
    from tracker.memory import limit_malloc_arenas
    from tracker.proof.archive.archivecheck import check_file

    limit_malloc_arenas()  # as the tracker does at its start (serve)

    temp = archive.parent / "tmp"
    temp.mkdir(exist_ok=True)
    budget, slots, frames = shared_limits(memory, default_workers())
    limits = AccountsLimits(
        memory=memory, temp_dir=str(temp), budget=budget, slots=slots, frames=frames
    )
    watch = PeakWatch()
    watch.start()
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    results: list[Any] = [None] * concurrent

    def one(at: int) -> None:
        results[at] = check_file(str(archive), prove_accounts=limits)

    threads = [threading.Thread(target=one, args=(at,)) for at in range(concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    verified = results[0]
    assert all(result is not None for result in results)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + _children_cpu() - k0
    watch.stop()
    return {
        "wall": wall,
        "cpu": cpu,
        "level": verified.proof.level.label,
        "note": verified.proof.note,
        "max_rss": peak_rss("self"),
        "worker_max_rss": watch.peak,
        "held_peak": budget.peak,
        "spill_peak": budget.spilled_peak,
    }


def main() -> None:
    """Build, check in a child process, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--memory", type=parse_size, default=512 * 1024**2)
    parser.add_argument(
        "--per-storage",
        type=int,
        default=PER_STORAGE,
        help="records a storage (1: a storage member for each account)",
    )
    parser.add_argument(
        "--concurrent", type=int, default=1, help="checks at once in one process, one budget"
    )
    parser.add_argument("--check", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        print(json.dumps(check(args.check, args.memory, args.concurrent)))
        return
    archive = build(args.out, args.accounts, args.per_storage)
    answer = subprocess.run(
        [
            sys.executable,
            __file__,
            "--check",
            str(archive),
            "--memory",
            str(args.memory),
            "--concurrent",
            str(args.concurrent),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(answer.stdout)
    size = archive.stat().st_size
    print(
        f"{args.accounts} empty accounts, {args.per_storage} a storage"
        f"{f', {args.concurrent} checks at once' if args.concurrent > 1 else ''}: "
        f"{size / 2**20:.1f} MiB "
        f"archive; level {result['level']} ({result['note'] or 'no note'}) in "
        f"{result['wall']:.2f} s, {result['cpu']:.2f} CPU-s (the tree; "
        f"{result['cpu'] / max(1, -(-args.accounts // args.per_storage)) * 1e6:.0f} µs a "
        f"storage); "
        f"peak RSS check {result['max_rss'] / 2**20:.0f} MiB + worker "
        f"{result['worker_max_rss'] / 2**20:.0f} MiB; budget {args.memory / 2**20:.0f} MiB, "
        f"held {result['held_peak'] / 2**20:.0f} MiB; spilled {result['spill_peak'] / 2**20:.0f}"
        " MiB at most"
    )


if __name__ == "__main__":
    main()
