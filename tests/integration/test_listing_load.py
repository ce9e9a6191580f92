"""Listings stay fast with 10,000 indexed snapshots under 16 concurrent clients.

The full ``/v1/snapshots`` of 10,000 snapshots is 3.6 MB an answer: 16 clients asking it
without pause move about 1 GB/s, which is bandwidth, not the listing's cost; it is left out.

A real ``serve`` subprocess scrapes one sidecar (a :class:`FakeUpstream` on 127.0.0.1) that
lists 10,000 snapshots; 16 clients in this process ask the listing endpoints at once. Each
listing is rendered once per index change, and the ranking compares hashes it decoded once.
The index keeps what one target contributes within its bound (docs/http-api.md, "Snapshot
sources"): such an answer costs the listings no more than a validator's.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import httpx
import trio
from helpers_process import start_serve
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream, serving
from names import full_name

SNAPSHOTS = 10_000
CLIENTS = 16
ROUNDS = 8
PATHS = [
    "/v1/best_snapshots?max=1",
    "/v1/best_snapshots?group=g&max=1",
    "/v1/best_snapshots",
    "/v1/snapshots?slot=5000",
    "/v1/snapshots?group=g&slot=7",
    "/v1/targets",
]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listing() -> list[dict[str, object]]:
    infos = []
    for n in range(1, SNAPSHOTS + 1):
        name = full_name(n)
        hash_ = name.split("-")[2].split(".")[0]
        entry = {"file_name": name, "slot": n, "hash": hash_, "ext": ".tar.zst", "size": n}
        infos.append({"slot": n, "base_slot": n, "hash": hash_, "files": [entry], "size": n})
    return infos


async def test_listings_with_10000_snapshots_under_16_clients(tmp_path: Path) -> None:
    async with serving(FakeUpstream(listing=listing())) as sidecar:
        path = tmp_path / "tracker.yml"
        host = sidecar.base.removeprefix("http://")
        path.write_text(
            "listen: 127.0.0.1:0\ninternal_listen: ''\nscrape_interval: 60s\n"
            f"target_groups: [{{group: g, static_targets: {{targets: ['{host}']}}}}]\n"
        )
        serve = await start_serve("--config", str(path))
        latencies: dict[str, list[float]] = {p: [] for p in PATHS}
        async with httpx.AsyncClient(verify=client_tls(), timeout=30, trust_env=False) as client:
            with trio.fail_after(60):
                while len((await client.get(f"{serve.base}/v1/best_snapshots?max=1")).json()) < 1:
                    await trio.sleep(0.1)
            for p in PATHS:  # warm: the first request of each renders it
                assert (await client.get(serve.base + p)).status_code == 200

            async def one_client(offset: int) -> None:
                for n in range(ROUNDS * len(PATHS)):
                    p = PATHS[(n + offset) % len(PATHS)]
                    start = trio.current_time()
                    answer = await client.get(serve.base + p)
                    latencies[p].append(trio.current_time() - start)
                    assert answer.status_code == 200

            before = cpu_seconds(serve.proc.pid)
            async with trio.open_nursery() as nursery:
                for c in range(CLIENTS):
                    nursery.start_soon(one_client, c)
            spent = cpu_seconds(serve.proc.pid) - before
        assert await serve.stop() == 0
    every = sorted(t for ts in latencies.values() for t in ts)
    p99 = every[int(len(every) * 0.99) - 1]
    for p, ts in latencies.items():
        print(f"\n{p}: p50 {statistics.median(ts) * 1000:.1f} ms, max {max(ts) * 1000:.1f} ms")
    print(f"\nall {len(every)} requests: p99 {p99 * 1000:.1f} ms")
    per_request = spent / len(every)
    print(f"\nthe tracker's CPU: {per_request * 1000:.2f} ms a request")
    assert len(every) == CLIENTS * ROUNDS * len(PATHS)
    # The contract is p99 < 100 ms, which a load generator in its own process measures (wrk:
    # 32-60 ms; bench/README.md). Here the clients share the host with the server and, under
    # xdist, with other tests, so their latency says how loaded the host is. What the test
    # holds is the tracker's own CPU time a request, which load does not change: a tracker
    # that sorted and serialised the 10,000 snapshots per request spent 251 ms on each here
    # (2.0 ms as it is).
    assert per_request < 0.015, f"{per_request * 1000:.1f} ms of CPU a request"
