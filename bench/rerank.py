"""What a re-rank of one group costs the event loop, in process (bench/README.md, "The
re-rank with speeds measured"). A group of discovered nodes (``--targets``, default 3,000),
each on an address of its own listing a full and an incremental (two fulls and five
incrementals among them, sizes given), none, one in ten or all of them measured, ranked by
slot or by time to running, each node's answer given twice (a round, then the next). Then
``--reps`` times, 0.1 s of the index's clock apart, a batch of 30 results of a round (5 with
their newest incremental moved, 25 the same answer again) or one measured transfer, each
followed by what requests ask (the group's sources, best full and incremental). Per case the
median CPU milliseconds (``time.process_time``) of the re-rank (``Index.fulls``, which
ranks), of which the trust screen (``Screens.group``), and of the pairs ranked by time to
running (the first ``Index.sources`` after it). Then ``/v1/targets``' body of those nodes,
every one measured: at a new tick of their figures (``THROUGHPUT_SHOWN``) and again within
one.

    .venv/bin/python bench/rerank.py                      # the tracker of this checkout
    PYTHONPATH=/tmp/other .venv/bin/python bench/rerank.py  # another copy of ``tracker``

Only public names are called; the two parts are timed by wrapping their methods.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH

import base58

from tracker.config.schema import Ranking
from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    TargetKey,
    chains_from_files,
    parse_archive_name,
)
from tracker.discovery.roster import Target, TargetHealth
from tracker.ordering import ranking, screens
from tracker.ordering.index import Index
from tracker.ordering.sourcehistory import Flowing, Rejections
from tracker.web.listings import Fragments
from tracker.web.wire import targets_body

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
START = 1_000_000.0
HASHES = [base58.b58encode(bytes([n]) * 32).decode() for n in range(64)]
BATCH = 30
#: Of a batch, the results whose newest incremental moved (the others: the same answer).
MOVED = 5


def address(n: int) -> str:
    return f"http://10.{n // 65536}.{n // 256 % 256}.{n % 256}:8899"


def key(n: int) -> TargetKey:
    return TargetKey("g", address(n), discovered=True)


def listing(n: int, moved: int = 0) -> list[SnapshotInfo]:
    """Node ``n``'s full (most on the newest, a third on the one before) and an incremental
    on it (one of five, ``moved`` on)."""
    full = 100_000 - 25_000 * (n % 3 == 2)
    incremental = full + 1_000 + 100 * ((n + moved) % 5)
    names = [
        f"snapshot-{full}-{HASHES[full % 64]}.tar.zst",
        f"incremental-snapshot-{full}-{incremental}-{HASHES[incremental % 64]}.tar.zst",
    ]
    files = []
    for name in names:
        parsed = parse_archive_name(name)
        assert parsed is not None
        size = 100_000_000_000 if parsed.is_full else 1_000_000_000
        files.append(SnapshotFile(parsed, name, size=size, url=f"{address(n)}/{name}"))
    return chains_from_files(files)


def cluster(count: int, timed: bool, every: int) -> tuple[Index, list[float]]:
    """The group, ranked once; ``every``: one target in so many measured (0: none)."""
    now = [START]
    index = Index(clock=lambda: now[0])
    index.set_ranking("g", Ranking() if timed else None)
    for _round in range(2):  # the same answers, new objects
        index.apply_many([(key(n), listing(n), T0, 0.01 + n % 7 / 1000) for n in range(count)])
        ask(index)
    for n in range(0, count, every) if every else ():
        rate = 20e6 + (n * 7919 % 500) * 1e6
        index.restore_throughput(key(n), rate, START - n % 300, "probed")
    ask(index)
    return index, now


def ask(index: Index) -> None:
    """What requests ask after a change."""
    index.sources("g")
    index.best_full("g")
    index.best_incremental("g")


@contextmanager
def timing(owner: Any, name: str, spent: list[float]) -> Iterator[None]:
    """``owner.name`` timed into ``spent`` (CPU seconds, summed) while inside."""
    method: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any) -> Any:
        start = time.process_time()
        try:
            return method(*args)
        finally:
            spent.append(time.process_time() - start)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, method)


def rerank(count: int, timed: bool, every: int, change: str, reps: int) -> dict[str, float]:
    index, now = cluster(count, timed, every)
    moved: dict[int, int] = {}
    rows = []
    for rep in range(reps):
        now[0] += 0.1
        if change == "batch":  # a few listings moved, the rest the same answers again
            first = rep * BATCH % count
            for n in range(first, first + MOVED):
                moved[n] = rep + 1
            answers = range(first, first + BATCH)
            index.apply_many([(key(n), listing(n, moved.get(n, 0)), T0, 0.01) for n in answers])
        else:
            index.record_transfer(key(rep * 37 % count), 100_000_000, 1.0 + rep % 3)
        screened: list[float] = []
        paired: list[float] = []
        with (
            timing(screens.Screens, "group", screened),
            timing(ranking.TimedGroups, "pairs", paired),
        ):
            start = time.process_time()
            index.fulls("g")  # ranks
            ranked = time.process_time() - start
            ask(index)
        rows.append((ranked, sum(screened), sum(paired)))
    return {
        name: statistics.median(row[n] for row in rows) * 1000
        for n, name in enumerate(("rank", "screen", "pairs"))
    }


def targets(count: int, reps: int) -> tuple[float, float]:
    """``/v1/targets``' body of ``count`` measured targets: CPU ms at a new tick (every
    figure moved) and at another rendering within the tick (the index changed)."""
    index, _now = cluster(count, False, 1)
    healths = [
        TargetHealth(Target(key(n), "http", address(n), "2.2.1"), "up", "", T0, 0.05, 0)
        for n in range(count)
    ]
    clock = [START]
    deps = SimpleNamespace(
        scraper=SimpleNamespace(in_order=lambda: healths),
        index=index,
        flowing=Flowing(),
        wall_clock=lambda: 1.8e9 + clock[0],
        rejections=Rejections(),
        uncached=dict,
        sources_used=dict,
        local_checks=lambda _key: [],
    )
    fragments = Fragments()

    def render(now: float) -> float:
        clock[0] = now
        start = time.process_time()
        targets_body(deps, fragments, None, now, shown_at=now - now % 10)
        return time.process_time() - start

    render(START)
    ticks, within = [], []
    for rep in range(1, reps + 1):
        ticks.append(render(START + 10 * rep))
        within.append(render(START + 10 * rep + 1))
    return statistics.median(ticks) * 1000, statistics.median(within) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=15)
    options = parser.parse_args()
    cases = [
        ("by slot, none measured", False, 0),
        ("by slot, 1 in 10", False, 10),
        ("by slot, all", False, 1),
        ("by time, all", True, 1),
    ]
    print(f"{options.targets:,} targets; CPU ms, median of {options.reps}")
    for label, timed, every in cases:
        line = [f"{label:24s}"]
        for change in ("batch", "transfer"):
            got = rerank(options.targets, timed, every, change, options.reps)
            pairs = f", pairs {got['pairs']:.1f}" if timed else ""
            line.append(f"{change}: re-rank {got['rank']:.1f} (screen {got['screen']:.1f}){pairs}")
        print(" | ".join(line), flush=True)
    tick, within = targets(options.targets, options.reps)
    print(f"/v1/targets, every target measured: new tick {tick:.1f}, within a tick {within:.1f}")


if __name__ == "__main__":
    main()
