"""The figure "refresh from 3 sources" (issue 45): three sources of the best archive, each
sending at most ``rate`` bytes a second in total over all of its connections (a shared token
bucket per source, as validators cap peers: :mod:`bench.capped`, one small real server per
source, ``sendfile`` paced by the bucket). The tracker's group allows one transfer per source
(``source_limits.max_transfers: 1``); aria2c may open as many connections as it likes, the
bucket caps the source anyway. Per run, in turns:

- one ``curl`` through a fresh tracker with an empty cache (a cold refresh; its archive is
  checked, ``verify_archives`` on, which lets it take pieces from every source), to the
  client's last byte; the upstream bytes it cost (each source's own count, ``/_stats``) and
  the tracker's peak RSS (``VmHWM``) when it ended;
- one ``curl`` straight from one source: one source's rate;
- ``aria2c -x3 -s3`` given the three URLs (``--file-allocation=none``);
- one ``curl`` through a fresh tracker that knows one source only: today's refresh from one
  source, for its peak RSS (the memory the refresh from three is held to).

Targets (docs/architecture.md, "A refresh from several sources"): >= 2.4x one source,
>= 0.9x aria2c, upstream bytes <= 1.05x the archive, peak RSS as the one-source refresh's.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from bench.curl import curl_get
from bench.figures import Env, _fresh, _timed, get, pair, stop, tracker_path
from bench.procs import HOST, Proc, free_port, rss_kib, wait_for_port
from bench.servers import GROUP, start_tracker, tracker_config

SOURCES = 3


def capped_rate(size: int) -> int:
    """Each source's rate: a twelfth of the archive a second (one source alone takes ~12 s
    for any archive size), at least 4 MiB/s."""
    return max(4 * 1024 * 1024, size // 12)


@attrs.frozen
class CappedSource:
    """One running :mod:`bench.capped` server."""

    proc: Proc
    port: int

    def sent(self) -> int:
        """Body bytes it sent under ``/v1/snapshot/`` so far."""
        return int(json.loads(get(f"http://{HOST}:{self.port}/_stats"))["sent"])

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/v1/snapshot/{name}"


def start_capped(env: Env) -> list[CappedSource]:
    """The three capped sources (the sidecar JSON and the archives the files nginx serves)."""
    rate = capped_rate(env.archives.size)
    script = Path(__file__).with_name("capped.py")
    servers = []
    for n in range(SOURCES):
        port = free_port()
        argv = [sys.executable, str(script), "--port", str(port), "--rate", str(rate)]
        argv += ["--dir", str(env.archives.directory), "--www", str(env.work / "www")]
        proc = env.procs.start(f"capped{n}", argv)
        wait_for_port(proc, port)
        servers.append(CappedSource(proc, port))
    return servers


def _tracker(env: Env, name: str, cache: Path, servers: list[CappedSource]) -> Any:
    group = {
        "group": GROUP,
        "static_targets": {"targets": [f"{HOST}:{s.port}" for s in servers]},
        "source_limits": {"max_transfers": 1},
    }
    config = tracker_config(
        scrape_interval="30s",
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(cache),
        target_groups=[group],
    )
    tracker = start_tracker(env.procs, name, env.work, config, env.tracker_env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every source indexed: each is a source of the file
        targets = json.loads(get(f"{tracker.base}/v1/targets"))
        if len(targets) == len(servers) and all(t.get("snapshots", 0) for t in targets):
            return tracker
        time.sleep(0.1)
    raise RuntimeError(f"{name}: the sources were not indexed")


def _through_tracker(
    env: Env, name: str, servers: list[CappedSource], outcome: dict[str, int]
) -> float:
    """Seconds of one ``curl`` of the best archive through a fresh tracker with an empty
    cache whose group knows ``servers``; ``outcome`` gets the upstream bytes it cost and the
    tracker's peak RSS (KiB) when the client had its last byte."""
    best, size = env.archives.best, env.archives.size
    cache = env.work / f"cache-{name}"
    tracker = _tracker(env, name, cache, servers)
    since = [s.sent() for s in servers]
    try:
        got = curl_get(env.tools["curl"], f"{tracker.base}{tracker_path(best)}", size=size)
        outcome["peak_kib"] = rss_kib(tracker.proc.pid, "VmHWM")
    finally:
        stop(env, tracker, cache)
    outcome["upstream"] = sum(s.sent() - at for s, at in zip(servers, since, strict=True))
    return got.seconds


def refresh_sources(env: Env, run: int, servers: list[CappedSource]) -> dict[str, Any]:
    """One run of the figure (see the module doc)."""
    curl, aria2c = env.tools["curl"], env.tools["aria2c"]
    best, size = env.archives.best, env.archives.size
    urls = [s.url(best) for s in servers]
    out = env.work / "sources3"
    three: dict[str, int] = {}
    one_refresh: dict[str, int] = {}

    def ours() -> float:
        return _through_tracker(env, f"tracker-sources3-{run}", servers, three)

    def aria() -> float:
        target = _fresh(out / "aria")
        argv = [aria2c, "-q", "-x3", "-s3", "--min-split-size=1M", "--allow-overwrite=true"]
        argv += ["--file-allocation=none", "-d", str(target), "-o", best, *urls]
        return _timed(argv, out)

    ours_seconds, aria_seconds = pair(run, ours, aria)
    one = curl_get(curl, urls[run % SOURCES], size=size)
    alone = servers[run % SOURCES : run % SOURCES + 1]
    one_seconds = _through_tracker(env, f"tracker-sources1-{run}", alone, one_refresh)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tracker": size / ours_seconds,
        "reference": size / aria_seconds,
        "one_source": one.rate,
        "vs_one_source": (size / ours_seconds) / one.rate,
        "upstream_ratio": three["upstream"] / size,
        "rate_cap": capped_rate(size),
        "peak_rss_mb": three["peak_kib"] / 1024,
        "one_source_refresh": size / one_seconds,
        "one_source_peak_rss_mb": one_refresh["peak_kib"] / 1024,
        "peak_rss_ratio": three["peak_kib"] / one_refresh["peak_kib"],
    }
