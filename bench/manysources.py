"""The figure "refresh from 3 sources" (issue 45): three nginx sources of the best archive,
each sending at most ``rate`` bytes a second (``limit_rate``; the tracker's group allows one
transfer per source, ``source_limits.max_transfers: 1``, and aria2c opens one connection per
source, so each source is capped at ``rate`` in all on both sides). Per run, in turns:

- one ``curl`` through a fresh tracker with an empty cache (a cold refresh; its archive is
  checked, ``verify_archives`` on, which lets it take pieces from every source), to the
  client's last byte; the upstream bytes it cost, from the three access logs;
- one ``curl`` straight from one source: one source's rate;
- ``aria2c -x3 -s3`` given the three URLs (``--file-allocation=none``).

Targets (docs/architecture.md, "A refresh from several sources"): >= 2.4x one source,
>= 0.9x aria2c, upstream bytes <= 1.05x the archive.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.curl import curl_get
from bench.figures import Env, _fresh, _timed, get, nginx_path, pair, stop, tracker_path
from bench.procs import HOST, free_port
from bench.servers import (
    GROUP,
    Nginx,
    _nginx_common,
    _nginx_http_common,
    start_nginx,
    start_tracker,
    tracker_config,
)

SOURCES = 3


def capped_rate(size: int) -> int:
    """Each source's rate: a twelfth of the archive a second (one source alone takes ~12 s
    for any archive size), at least 4 MiB/s."""
    return max(4 * 1024 * 1024, size // 12)


def _capped_conf(work: Path, role: str, port: int, env: Env, www: Path, rate: int) -> str:
    return (
        _nginx_common(work, role)
        + f"""http {{
{_nginx_http_common(work, role)}
  sendfile on;
  tcp_nopush on;
  server {{
    listen {HOST}:{port};
    location = /v1/snapshots {{ default_type application/json; root {www}; }}
    location /v1/snapshot/ {{ alias {env.archives.directory}/; limit_rate {rate}; }}
  }}
}}
"""
    )


def start_capped(env: Env) -> list[Nginx]:
    """The three capped sources (the sidecar JSON of the files nginx, the same archives)."""
    rate = capped_rate(env.archives.size)
    www = env.work / "www"
    servers = []
    for n in range(SOURCES):
        port = free_port()
        role = f"capped{n}"
        conf = _capped_conf(env.work, role, port, env, www, rate)
        servers.append(start_nginx(env.procs, env.tools["nginx"], env.work, role, conf, port))
    return servers


def _tracker(env: Env, name: str, cache: Path, servers: list[Nginx]) -> Any:
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
        if len(targets) == SOURCES and all(t.get("snapshots", 0) for t in targets):
            return tracker
        time.sleep(0.1)
    raise RuntimeError(f"{name}: the three sources were not indexed")


def refresh_sources(env: Env, run: int, servers: list[Nginx]) -> dict[str, Any]:
    """One run of the figure (see the module doc)."""
    curl, aria2c = env.tools["curl"], env.tools["aria2c"]
    best, size = env.archives.best, env.archives.size
    urls = [f"http://{HOST}:{s.port}{nginx_path(best)}" for s in servers]
    out = env.work / "sources3"
    upstream = {"bytes": 0}

    def ours() -> float:
        cache = env.work / f"cache-sources3-{run}"
        tracker = _tracker(env, f"tracker-sources3-{run}", cache, servers)
        since = [s.log_size() for s in servers]
        try:
            url = f"{tracker.base}{tracker_path(best)}"
            got = curl_get(curl, url, size=size)
        finally:
            stop(env, tracker, cache)
        time.sleep(0.3)  # nginx logs a request when it has ended
        upstream["bytes"] = sum(
            s.sent_bytes(at, "/v1/snapshot/") for s, at in zip(servers, since, strict=True)
        )
        return got.seconds

    def aria() -> float:
        target = _fresh(out / "aria")
        argv = [aria2c, "-q", "-x3", "-s3", "--min-split-size=1M", "--allow-overwrite=true"]
        argv += ["--file-allocation=none", "-d", str(target), "-o", best, *urls]
        return _timed(argv, out)

    ours_seconds, aria_seconds = pair(run, ours, aria)
    one = curl_get(curl, urls[run % SOURCES], size=size)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tracker": size / ours_seconds,
        "reference": size / aria_seconds,
        "one_source": one.rate,
        "vs_one_source": (size / ours_seconds) / one.rate,
        "upstream_ratio": upstream["bytes"] / size,
        "rate_cap": capped_rate(size),
    }
