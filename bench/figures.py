"""Each figure of the bench, measured once (``run.py`` repeats them and takes medians).

A figure function returns a dict of plain numbers for one run; the tracker and its reference
are always measured back to back in the same run (their order alternates between runs), so a
ratio compares like with like even when the machine's speed drifts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.client import Fetch, fetch, fetch_many, fetch_paced, first_byte, hold_keepalive
from bench.curl import curl_get, curl_many
from bench.procs import HOST, Procs, die_with_parent, free_port, rss_kib
from bench.profile import Profiler
from bench.servers import (
    GROUP,
    Archives,
    Nginx,
    Tracker,
    node_address,
    nodes_nginx_conf,
    sidecar_group,
    start_nginx,
    start_tracker,
    tracker_config,
)
from bench.weed import ACCESS_KEY, BUCKET, SECRET_KEY, Weed
from tracker.cache.checked import write_checked
from tracker.core.digests import Verified
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import check_file

Result = dict[str, Any]
# Never let a system-wide proxy setting reach 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@attrs.frozen
class Options:
    """Sizes and counts of one bench invocation."""

    size: int
    runs: int = 3
    streams: int = 8
    wrk_seconds: float = 10.0
    wrk_connections: int = 32
    memory_hits: int = 100
    memory_proxied: int = 100
    idle_connections: int = 2000
    fanin_clients: int = 4
    discovery_targets: int = 2000
    cluster_nodes: int = 3000
    cluster_concurrency: int = 16


@attrs.define
class Env:
    """What every figure needs: the work dir, the children, the tools and the servers."""

    work: Path
    procs: Procs
    tools: dict[str, str]
    options: Options
    archives: Archives
    files: Nginx
    proxy: Nginx
    hit_tracker: Tracker | None = None
    bare: tuple[str, int] | None = None
    #: nginx with proxy_cache (the refresh figure's yardstick) and its cache directory.
    cache_proxy: Nginx | None = None
    cache_proxy_dir: Path | None = None
    profiler: Profiler | None = None
    tracker_env: dict[str, str] = attrs.Factory(dict)
    #: The files nginx's second port: the same sidecar, each connection paced (PACED_RATE).
    paced_port: int = 0

    def profile(self, label: str, tracker: Tracker) -> contextlib.AbstractContextManager[None]:
        """Sample ``tracker`` with py-spy during the block when ``--profile`` was given."""
        if self.profiler is None:
            return contextlib.nullcontext()
        return self.profiler.record(label, tracker.proc.pid)


# -- helpers --------------------------------------------------------------------------------


def get(url: str, timeout: float = 10.0) -> bytes:
    with _OPENER.open(url, timeout=timeout) as response:
        return bytes(response.read())


def post(url: str, timeout: float = 10.0) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    with _OPENER.open(request, timeout=timeout) as response:
        return int(response.status)


def wait_indexed(tracker: Tracker, count: int, timeout: float = 30.0) -> None:
    """Wait until the tracker's ``/v1/snapshots`` lists ``count`` snapshots."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tracker.proc.check_alive()
        with contextlib.suppress(OSError, ValueError):
            if len(json.loads(get(f"{tracker.base}/v1/snapshots"))) >= count:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{tracker.proc.name}: {count} snapshots not indexed in {timeout:g}s")


def tracker_path(name: str) -> str:
    return f"/v1/{GROUP}/{name}"


def nginx_path(name: str) -> str:
    return f"/v1/snapshot/{name}"


def pair(run: int, tracker: Any, reference: Any) -> tuple[Any, Any]:
    """Call both measurements, tracker first on even runs, reference first on odd ones."""
    if run % 2:
        ref = reference()
        return tracker(), ref
    first = tracker()
    return first, reference()


def start_proxy_tracker(
    env: Env, name: str, cache_dir: Path, *, paced: bool = False, **keys: Any
) -> Tracker:
    """A tracker in proxy mode with a disk cache, the files nginx as its sidecar (``paced``:
    through its paced port)."""
    config = tracker_config(
        scrape_interval="30s",
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(cache_dir),
        target_groups=[sidecar_group(env.paced_port if paced else env.files.port)],
        **keys,
    )
    tracker = start_tracker(env.procs, name, env.work, config, env.tracker_env)
    wait_indexed(tracker, 2)
    return tracker


def start_hit_tracker(env: Env, name: str) -> Tracker:
    """A proxy-mode tracker whose cache holds the best archive (a hard link to it) with its
    digest and proof files, as a restarted tracker finds its checked cache: without them the tracker
    checks the archive again at start-up and serves it as a hit only after that, so the
    first GETs would be proxied and the check's buffers counted in the memory figure."""
    cache = env.work / f"cache-{name}"
    (cache / GROUP).mkdir(parents=True)
    cached = cache / GROUP / env.archives.best
    cached.hardlink_to(env.archives.best_path)
    # Written after the link (which moves the archive's ctime): the digest and proof files
    # describe it, so the tracker does not check it again at start-up.
    write_checked(str(cached), _checked(env.archives.best_path), cached.name)
    return start_proxy_tracker(env, name, cache)


@functools.cache
def _checked(path: Path) -> Verified:
    """What the archive check (accounts level included) says of the file at ``path`` (once per
    bench run), as a refresh wrote it beside the cached file."""
    return check_file(str(path), prove_accounts=AccountsLimits())


def stop(env: Env, tracker: Tracker, cache_dir: Path | None = None) -> None:
    env.procs.stop(tracker.proc.name)
    if cache_dir is not None:
        shutil.rmtree(cache_dir, ignore_errors=True)


# -- download figures -----------------------------------------------------------------------


#: Fresh-connection curl GETs of the cached archive per side and run (interleaved with the
#: reference's): one GET of a GiB takes ~0.3 s here, and single GETs swing by ±40 % on this
#: shared machine, so each run takes the median of a few.
HIT_GETS = 3


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (nginx: master and workers)."""
    total = _cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(pid):
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += _cpu_seconds(int(entry.name))
    return total


@attrs.define
class Side:
    """One server of a paired cache-hit measurement: its URL and what it has cost."""

    url: str
    pid: int
    rates: list[float] = attrs.Factory(list)
    cpu: float = 0.0
    served: int = 0

    def get(self, env: Env, streams: int) -> None:
        before = tree_cpu_seconds(self.pid)
        size = env.archives.size
        curl = env.tools["curl"]
        if streams == 1:
            self.rates.append(curl_get(curl, self.url, size=size).rate)
        else:
            self.rates.append(curl_many(curl, [self.url] * streams, size=size))
        self.cpu += tree_cpu_seconds(self.pid) - before
        self.served += size * streams


def cache_hit(env: Env, run: int, streams: int) -> Result:
    """GETs of the cached archive with curl on fresh connections, ``streams`` at once,
    HIT_GETS times, interleaved with the same GETs of nginx (sendfile); the median rate of
    each side, and each server's CPU seconds per GiB served."""
    assert env.hit_tracker is not None
    tracker = env.hit_tracker
    ours = Side(_url(tracker.address, tracker_path(env.archives.best)), tracker.proc.pid)
    nginx = Side(_url(env.files.address, nginx_path(env.archives.best)), env.files.proc.popen.pid)
    with env.profile(f"cache_hit_{streams}-run{run + 1}", tracker):
        for n in range(HIT_GETS):
            for side in (ours, nginx) if (run + n) % 2 == 0 else (nginx, ours):
                side.get(env, streams)
    gib = 1024**3
    return {
        "tracker": statistics.median(ours.rates),
        "reference": statistics.median(nginx.rates),
        "tracker_cpu_per_gib": ours.cpu / (ours.served / gib),
        "reference_cpu_per_gib": nginx.cpu / (nginx.served / gib),
    }


def _url(address: tuple[str, int], path: str) -> str:
    return f"http://{address[0]}:{address[1]}{path}"


#: Proxied GETs per side and run whose first body byte is timed.
FIRST_BYTE_GETS = 20


def proxy_first_byte(env: Env, run: int) -> Result:
    """Time to the first body byte of an uncached archive proxied by the tracker vs by nginx
    ``proxy_pass`` (FIRST_BYTE_GETS fresh-connection GETs each, interleaved; p50 in ms)."""
    assert env.hit_tracker is not None
    tracker, old = env.hit_tracker, env.archives.old
    ours: list[float] = []
    nginx: list[float] = []
    with env.profile(f"first_byte-run{run + 1}", tracker):
        for n in range(FIRST_BYTE_GETS):
            first, second = pair(
                run + n,
                lambda: first_byte(tracker.address, tracker_path(old)),
                lambda: first_byte(env.proxy.address, nginx_path(old)),
            )
            ours.append(first)
            nginx.append(second)
    return {
        "tracker_ms": statistics.median(ours) * 1000,
        "reference_ms": statistics.median(nginx) * 1000,
    }


def proxy(env: Env, run: int) -> Result:
    """One stream of an uncached archive through the tracker vs through nginx proxy_pass.

    The tracker proxies the older archive, which is not its group's best: streamed from the
    upstream, never written to the cache (docs/http-api.md#archive-answers).
    """
    assert env.hit_tracker is not None
    old = env.archives.old
    tracker = env.hit_tracker

    def ours() -> Fetch:
        with env.profile(f"proxy-run{run + 1}", tracker):
            return fetch(tracker.address, tracker_path(old))

    a, b = pair(run, ours, lambda: fetch(env.proxy.address, nginx_path(old)))
    return {"tracker": a.body_bytes / a.seconds, "reference": b.body_bytes / b.seconds}


#: Dirty and under-writeback page-cache bytes below which the file system counts as settled.
SETTLED_BYTES = 64 << 20


def settle_writeback(timeout: float = 60.0) -> None:
    """Write dirty pages back and wait (at most ``timeout`` s) until little is left: a writer
    measured while the previous one's gigabyte is still being written back is throttled by
    the kernel (the refresh figure swung 0.4-2x with who went first)."""
    os.sync()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _dirty_bytes() > SETTLED_BYTES:
        time.sleep(0.1)


def _dirty_bytes() -> int:
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0]) * 1024
    return fields.get("Dirty", 0) + fields.get("Writeback", 0)


def refresh(env: Env, run: int) -> Result:
    """The first GET of the best archive through a tracker with an empty cache (to the client
    and into its cache at once) vs the same GET through nginx ``proxy_cache`` filling its
    empty cache from the same upstream, on the same file system.

    Each side runs twice per run, in the order A B B A (B A A B on odd runs), and its figure
    is its bytes over its seconds of both: whoever wrote second measured up to 2x slower than
    whoever wrote first (after ``sync`` and with the dirty pages written back, still), so a
    plain alternation left the median to the order of the odd run out."""
    tracker_runs: list[Fetch] = []
    nginx_runs: list[Fetch] = []

    def ours() -> None:
        tracker_runs.append(_tracker_refresh(env, run, len(tracker_runs)))

    def reference() -> None:
        nginx_runs.append(_nginx_fill(env, run, len(nginx_runs)))

    pair(run, ours, reference)
    pair(run + 1, ours, reference)
    return {"tracker": _rate(tracker_runs), "reference": _rate(nginx_runs)}


def _rate(fetches: list[Fetch]) -> float:
    return sum(f.body_bytes for f in fetches) / sum(f.seconds for f in fetches)


def _tracker_refresh(env: Env, run: int, turn: int) -> Fetch:
    """One GET of the best archive through a fresh tracker with an empty cache; returns once
    the archive is promoted into the cache (the client's last byte comes before the fsync
    and rename)."""
    cache = env.work / f"cache-refresh-{run}-{turn}"
    tracker = start_proxy_tracker(env, f"tracker-refresh-{run}-{turn}", cache)
    cached = cache / GROUP / env.archives.best
    try:
        _clean_slate(env)
        with env.profile(f"refresh-run{run + 1}-{turn + 1}", tracker):
            got = fetch(tracker.address, tracker_path(env.archives.best))
        deadline = time.monotonic() + 60
        while not cached.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not cached.exists() or cached.stat().st_size != env.archives.size:
            raise RuntimeError("the refresh did not leave the archive in the cache")
    finally:
        stop(env, tracker, cache)
    return got


def verified_refresh(env: Env, run: int, *, paced: bool = False) -> Result:
    """The first GET of the best archive (a real archive) through a fresh tracker with an
    empty cache, timed from the request to the archive's promotion into the cache, with
    ``verify_archives`` on (the tracker's figure) and off (the reference), in the order
    A B B A (B A A B on odd runs) like the refresh figure; ``paced``: from a source that
    sends at most PACED_RATE bytes/s, as a fast source across a network would.

    Each side also counts the CPU seconds that the tracker, the upstream nginx and the
    bench's client spent on it: ``floor`` is the verified side's CPU seconds spread over
    every core of the host, over the unverified side's seconds, the least ratio this host
    allows (a check costs about one CPU-second per GB whatever is done, bench/README.md)."""
    verified: list[Promotion] = []
    unverified: list[Promotion] = []

    def ours() -> None:
        verified.append(_promotion(env, run, len(verified), verify=True, paced=paced))

    def reference() -> None:
        unverified.append(_promotion(env, run, 2 + len(unverified), verify=False, paced=paced))

    pair(run, ours, reference)
    pair(run + 1, ours, reference)
    size = env.archives.size
    seconds = sum(p.seconds for p in verified) / len(verified)
    reference_seconds = sum(p.seconds for p in unverified) / len(unverified)
    cpu = sum(p.cpu for p in verified) / len(verified)
    reference_cpu = sum(p.cpu for p in unverified) / len(unverified)
    cores = len(os.sched_getaffinity(0))
    return {
        "tracker": size / seconds,
        "reference": size / reference_seconds,
        "seconds": seconds,
        "reference_seconds": reference_seconds,
        "cpu": cpu,
        "reference_cpu": reference_cpu,
        "cores": cores,
        "floor": max(cpu / cores, reference_seconds) / reference_seconds,
    }


@attrs.define
class Promotion:
    """One refresh to promotion: its seconds, and the CPU seconds of everyone taking part."""

    seconds: float
    cpu: float


def _promotion(env: Env, run: int, turn: int, *, verify: bool, paced: bool) -> Promotion:
    """A GET of the best archive into an empty cache, to its promotion."""
    cache = env.work / f"cache-verified-{run}-{turn}"
    name = f"tracker-verified-{run}-{turn}"
    tracker = start_proxy_tracker(env, name, cache, paced=paced, verify_archives=verify)
    cached = cache / GROUP / env.archives.best
    pids = (tracker.proc.pid, env.files.proc.pid)
    try:
        _clean_slate(env)
        cpu = sum(tree_cpu_seconds(pid) for pid in pids) + time.process_time()
        started = time.monotonic()
        fetch(tracker.address, tracker_path(env.archives.best))
        deadline = started + 120
        while not cached.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        seconds = time.monotonic() - started
        cpu = sum(tree_cpu_seconds(pid) for pid in pids) + time.process_time() - cpu
        if not cached.exists():
            raise RuntimeError(f"the refresh (verify={verify}) was not promoted")
    finally:
        stop(env, tracker, cache)
    return Promotion(seconds, cpu)


#: Seconds for freed memory to go back to the host (free page reporting on this VM).
PAGE_REPORT_PAUSE = 3.0


def _clean_slate(env: Env) -> None:
    """The same start for either side: no archive of an earlier turn on disk (each side's
    is removed here or when its tracker stops), dirty pages written back, and a pause so
    that the memory they held has gone back to the host: neither side reuses the pages of a
    file deleted just before it writes (bench/pagecache.py: fresh pages fill at 0.4-0.7
    GB/s here). Measured with and without it: the same ratio (0.59-0.61x)."""
    assert env.cache_proxy_dir is not None
    for entry in env.cache_proxy_dir.iterdir():
        shutil.rmtree(entry, ignore_errors=True)
    settle_writeback()
    time.sleep(PAGE_REPORT_PAUSE)


def _nginx_fill(env: Env, run: int, turn: int) -> Fetch:
    """One GET of the best archive through nginx ``proxy_cache``, its cache emptied first and
    the key never asked before."""
    nginx, nginx_cache = env.cache_proxy, env.cache_proxy_dir
    assert nginx is not None
    assert nginx_cache is not None
    _clean_slate(env)
    got = fetch(nginx.address, f"{nginx_path(env.archives.best)}?fill={run}-{turn}")
    if not any(p.is_file() for p in nginx_cache.rglob("*")):
        raise RuntimeError("nginx proxy_cache did not cache the archive")
    return got


# -- redirects ------------------------------------------------------------------------------

_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Socket errors:.*|Non-2xx or 3xx responses: \d+")
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(env: Env, address: tuple[str, int], path: str) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of ``wrk`` on ``path``."""
    seconds = env.options.wrk_seconds
    argv = [env.tools["wrk"], "-t1", f"-c{env.options.wrk_connections}"]
    argv += [f"-d{seconds:g}s", "--latency", f"http://{address[0]}:{address[1]}{path}"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    rate, p99 = _WRK_RATE.search(done.stdout), _WRK_P99.search(done.stdout)
    errors = _WRK_ERRORS.search(done.stdout)
    if rate is None or p99 is None or errors is not None:
        raise RuntimeError(f"wrk failed or saw errors:\n{done.stdout}{done.stderr}")
    return float(rate[1]), float(p99[1]) * _UNIT[p99[2]]


def redirects(env: Env, run: int) -> Result:
    """wrk on ``/v1/snapshot.tar.bz2`` (303) vs the bare hello-world, back to back."""
    assert env.hit_tracker is not None
    assert env.bare is not None
    tracker, bare = env.hit_tracker, env.bare
    first = fetch(tracker.address, "/v1/snapshot.tar.bz2", expect=303)
    if first.headers.get("location") != tracker_path(env.archives.best):
        raise RuntimeError(f"unexpected redirect: {first.headers}")

    def ours() -> tuple[float, float]:
        with env.profile(f"redirects-run{run + 1}", tracker):
            return wrk(env, tracker.address, "/v1/snapshot.tar.bz2")

    (rate, p99), (bare_rate, bare_p99) = pair(run, ours, lambda: wrk(env, bare, "/"))
    return {"tracker": rate, "reference": bare_rate, "p99_ms": p99, "reference_p99_ms": bare_p99}


# -- memory ---------------------------------------------------------------------------------


#: Each client of the memory figure reads at most this many bytes per second: operators'
#: clients are slower than loopback (a validator's disk, a WAN link), so every download stays
#: in flight and the tracker holds what it holds for a slow reader, for every stream at once.
MEMORY_CLIENT_RATE = 20 * 1000 * 1000
#: Seconds the memory figure's clients read once all of them are in flight.
MEMORY_SECONDS = 15.0


def memory(env: Env, run: int) -> Result:
    """Peak RSS of a fresh tracker serving ``memory_hits`` cache hits and ``memory_proxied``
    proxied downloads all at once: whole-file GETs, each client reading at most
    MEMORY_CLIENT_RATE for MEMORY_SECONDS, so that all of them stay in flight."""
    tracker = start_hit_tracker(env, f"tracker-memory-{run}")
    pid = tracker.proc.pid
    peak = [rss_kib(pid)]
    idle = peak[0]
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.wait(0.05):
            with contextlib.suppress(OSError, RuntimeError):
                peak.append(rss_kib(pid))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    seconds = min(MEMORY_SECONDS, 2 + env.archives.size / MEMORY_CLIENT_RATE / 2)
    try:
        paths = [tracker_path(env.archives.best)] * env.options.memory_hits
        paths += [tracker_path(env.archives.old)] * env.options.memory_proxied
        with env.profile(f"memory-run{run + 1}", tracker):
            paced = fetch_paced(tracker.address, paths, rate=MEMORY_CLIENT_RATE, seconds=seconds)
        hwm = rss_kib(pid, "VmHWM")
    finally:
        stop_polling.set()
        poller.join(5)
        stop(env, tracker, env.work / f"cache-{tracker.proc.name}")
    return {
        "peak_mb": max(hwm, *peak) * 1024 / 1e6,
        "idle_mb": idle * 1024 / 1e6,
        "aggregate": paced.rate,
        "downloads": len(paths),
        "in_flight": paced.in_flight,
        "client_rate": MEMORY_CLIENT_RATE,
    }


#: Keep-alive connections opened and closed before the idle figure's baseline.
IDLE_WARM_UP = 200


def idle_connections(env: Env, run: int) -> Result:
    """RSS of a fresh tracker holding ``idle_connections`` keep-alive connections (each
    answered one redirect) vs the same tracker idle before."""
    tracker = start_hit_tracker(env, f"tracker-idle-{run}")
    pid = tracker.proc.pid
    try:
        # Warm up: the first few hundred connections also fill the allocator's pools and
        # the libraries' caches once, which is not what each idle connection costs.
        for sock in hold_keepalive(tracker.address, "/v1/snapshot.tar.bz2", IDLE_WARM_UP):
            sock.close()
        time.sleep(0.5)  # let the tracker close its ends
        idle = rss_kib(pid)
        socks = hold_keepalive(
            tracker.address, "/v1/snapshot.tar.bz2", env.options.idle_connections
        )
        try:
            held = rss_kib(pid)
        finally:
            for sock in socks:
                sock.close()
    finally:
        stop(env, tracker, env.work / f"cache-{tracker.proc.name}")
    return {
        "idle_mb": idle * 1024 / 1e6,
        "held_mb": held * 1024 / 1e6,
        "delta_mb": (held - idle) * 1024 / 1e6,
        "connections": len(socks),
    }


# -- fan-in (issue 6) -----------------------------------------------------------------------


def share_supported(env: Env) -> str | None:
    """None when the tracker accepts ``cache_share_inflight``, else why the figure is skipped."""
    path = env.work / "check-share.yml"
    config = tracker_config(
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(env.work / "cache-check"),
        cache_share_inflight=True,
        target_groups=[sidecar_group(env.files.port)],
    )
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "tracker", "check-config", "--config", str(path)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, preexec_fn=die_with_parent
    )
    if done.returncode == 0:
        return None
    reason = (done.stdout + done.stderr).strip().splitlines()
    return "tracker refuses cache_share_inflight: " + (reason[-1] if reason else "?")


def fan_in(env: Env, run: int, share: bool) -> Result:
    """Upstream bytes / archive size when ``fanin_clients`` cold clients GET the best archive
    at once (empty cache), with ``cache_share_inflight`` on or off."""
    name = f"tracker-fanin-{'on' if share else 'off'}-{run}"
    cache = env.work / f"cache-{name}"
    tracker = start_proxy_tracker(env, name, cache, cache_share_inflight=share)
    try:
        since = env.files.log_size()
        paths = [tracker_path(env.archives.best)] * env.options.fanin_clients
        batch = fetch_many(tracker.address, paths)
        time.sleep(0.3)  # nginx logs a request when it has ended
        upstream = env.files.sent_bytes(since, "/v1/snapshot/")
        metrics = get(f"{tracker.internal}/metrics").decode()
    finally:
        stop(env, tracker, cache)
    return {
        "fan_in": upstream / env.archives.size,
        "clients": env.options.fanin_clients,
        "aggregate": batch.rate,
        "shared_readers_metric": metric_sum(metrics, "snapshot_tracker_shared_readers_total"),
        "upstream_bytes_metric": metric_sum(metrics, "snapshot_tracker_upstream_bytes_total"),
    }


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (any labels) in Prometheus text ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- discovery ------------------------------------------------------------------------------


def start_discovery_tracker(env: Env) -> Tracker:
    """A tracker with ``discovery_targets`` HTTP targets, all on the files nginx."""
    targets = [f"http://{HOST}:{env.files.port}/{n}" for n in range(env.options.discovery_targets)]
    config = tracker_config(
        scrape_interval="5m",
        scrape_timeout="10s",
        target_groups=[{"group": GROUP, "http_targets": {"targets": targets}}],
    )
    return start_tracker(env.procs, "tracker-discovery", env.work, config, env.tracker_env)


def _round_span(tracker: Tracker, after: float, timeout: float) -> float | None:
    """Once every target was scraped after ``after`` (epoch s): the round's span in seconds,
    from the tracker's own timestamps (first probe start to last probe end)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tracker.proc.check_alive()
        time.sleep(0.5)
        listed = json.loads(get(f"{tracker.base}/v1/targets", timeout=30))
        # The getClusterNodes RPC is listed too (kind "cluster"): not a probe of the round.
        states = [s for s in listed if s.get("kind") != "cluster"]
        stamps = [
            (
                datetime.fromisoformat(s["last_scrape"]).timestamp(),
                float(s["last_duration_ms"]) / 1e3,
            )
            for s in states
            if s.get("last_scrape")
        ]
        if len(stamps) == len(states) and all(t > after for t, _d in stamps):
            if any(s["health"] != "up" for s in states):
                down = [s for s in states if s["health"] != "up"]
                raise RuntimeError(f"{len(down)} targets down, e.g. {down[0]}")
            return max(t for t, _d in stamps) - min(t - d for t, d in stamps)
    return None


def first_round(tracker: Tracker) -> float:
    """Wait for the round that starts with the tracker (cold connections); its span."""
    span = _round_span(tracker, 0.0, timeout=120)
    if span is None:
        raise RuntimeError("first scrape round did not finish in 120 s")
    return span


def discovery(env: Env, tracker: Tracker, run: int) -> Result:
    """A full scrape round of every target, started by ``POST /reload``."""
    after = time.time()
    with env.profile(f"discovery-run{run + 1}", tracker):
        post(f"{tracker.internal}/reload")
        span = _round_span(tracker, after, timeout=120)
    if span is None:
        raise RuntimeError("scrape round did not finish in 120 s")
    return {"seconds": span, "targets": env.options.discovery_targets}


# -- fetch (issue 15) ---------------------------------------------------------------------------


def _timed(command: list[str], cwd: Path) -> float:
    """Seconds ``command`` took (it must succeed), as a user would time it."""
    start = time.monotonic()
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, check=False, timeout=600,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.decode()[-500:]}")
    return seconds


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def fetch_vs_aria2c(env: Env, run: int) -> Result:
    """``snapshot-tracker fetch --connections 8`` vs ``aria2c -x8 -s8``, each writing the
    best archive into an empty directory: through the tracker (a cache hit), and from two
    nginx sources of the same file (the files nginx and the proxy nginx in front of it)."""
    assert env.hit_tracker is not None
    aria2c = env.tools["aria2c"]
    best, size = env.archives.best, env.options.size
    tracker = env.hit_tracker
    out = env.work / "fetch"
    common = ["--incremental=false", "--connections", "8", "--min-speed", "0"]
    common += ["--progress", "none", "--keep", "0", "--log-level", "warning"]
    fetch = [sys.executable, "-m", "tracker", "fetch", *common]
    # --file-allocation=none: fetch's temp file is sparse (ftruncate), so neither side
    # writes the file twice (aria2c's default, prealloc, fills it with zeros first).
    aria = [aria2c, "-q", "-x8", "-s8", "--min-split-size=1M", "--allow-overwrite=true"]
    aria += ["--file-allocation=none"]
    sources = [f"http://{HOST}:{env.files.port}/src", f"http://{HOST}:{env.proxy.port}/src"]
    mirrors = [f"{base.removesuffix('/src')}{nginx_path(best)}" for base in sources]

    def ours_tracker() -> float:
        ledger = _fresh(out / "ours")
        return _timed([*fetch, "--ledger", str(ledger), "--tracker", tracker.base], out)

    def aria_tracker() -> float:
        target = _fresh(out / "aria")
        url = f"{tracker.base}{tracker_path(best)}"
        return _timed([*aria, "-d", str(target), "-o", best, url], out)

    def ours_two() -> float:
        ledger = _fresh(out / "ours")
        flags = [x for s in sources for x in ("--source", s)]
        return _timed([*fetch, "--ledger", str(ledger), *flags], out)

    def aria_two() -> float:
        target = _fresh(out / "aria")
        return _timed([*aria, "-d", str(target), "-o", best, *mirrors], out)

    a, b = pair(run, ours_tracker, aria_tracker)
    c, d = pair(run, ours_two, aria_two)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tracker": size / a,
        "reference": size / b,
        "two_sources": size / c,
        "two_sources_reference": size / d,
    }


# -- cluster discovery (issue 14) ------------------------------------------------------------------


def start_cluster(env: Env, *, measured: bool = False) -> Tracker:
    """``cluster_nodes`` validators (one nginx, a socket each on 127.1.x.y), a getClusterNodes
    answer listing them (served by the files nginx), and a tracker discovering them.

    ``measured``: every node's throughput measured in the last five minutes, from a learned
    document in the tracker's cache directory (docs/http-api.md#what-the-tracker-learned),
    as after a fleet fetched through a tracker that ran a while, or a replica's: every
    re-rank prices each target with a figure that ages (by slot, as the plain figure, so that
    the two differ in that alone; a group ranked by time to running ranks its pairs again at
    every change, measured or not)."""
    count = env.options.cluster_nodes
    port = free_port()
    role = "nodes-measured" if measured else "nodes"
    conf = nodes_nginx_conf(env.work, port, count, env.archives, role)
    start_nginx(env.procs, env.tools["nginx"], env.work, role, conf, port, node_address(count - 1))
    nodes = [
        {"pubkey": f"node{n:05d}", "rpc": f"{node_address(n)}:{port}", "version": "2.2.1"}
        for n in range(count)
    ]
    (env.work / "www" / "rpc").write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "result": nodes}))
    discovery = {"rpc": [f"http://{HOST}:{env.files.port}/rpc"], "interval": "1h"}
    group: dict[str, Any] = {"group": GROUP, "cluster_discovery": discovery}
    learned: dict[str, Any] = {}
    if measured:
        cache = env.work / "cluster-learned"
        cache.mkdir()
        (cache / ".learned.json").write_text(json.dumps(learned_document(nodes, time.time())))
        learned["proxy_snapshot_cache_dir"] = str(cache)  # read back at start
    config = tracker_config(
        scrape_interval="15s",
        scrape_timeout="10s",
        scrape_concurrency=env.options.cluster_concurrency,
        egress={"allow": ["127.0.0.0/8"]},
        target_groups=[group],
        **learned,
    )
    name = "tracker-cluster-measured" if measured else "tracker-cluster"
    return start_tracker(env.procs, name, env.work, config, env.tracker_env)


def learned_document(nodes: list[dict[str, str]], wall: float) -> dict[str, Any]:
    """A learned document (tracker.learning.learned) giving every node of a getClusterNodes
    answer a speed test's figure: 20 to 520 MB/s, taken 0 to 299 s before ``wall``."""
    speeds = [
        {
            "group": GROUP,
            "target": f"http://{node['rpc']}",
            "discovered": True,
            "bps": 20e6 + (n * 7919 % 500) * 1e6,
            "at": wall - n % 300,
        }
        for n, node in enumerate(nodes)
    ]
    return {"version": 1, "throughputs": speeds, "achieved": [], "rejections": []}


API_PATHS = ("/v1/best_snapshots", "/v1/snapshots?max=1", "/v1/targets")


def _sample_latencies(tracker: Tracker, stop: threading.Event, out: dict[str, list[float]]) -> None:
    """GET each of ``API_PATHS`` in turn until ``stop``; each latency (seconds) by path."""
    n = 0
    while not stop.is_set():
        path = API_PATHS[n % len(API_PATHS)]
        start = time.monotonic()
        with contextlib.suppress(OSError):
            get(f"{tracker.base}{path}", timeout=30)
            out.setdefault(path, []).append(time.monotonic() - start)
        n += 1
        time.sleep(0.02)


def _sample_status(
    tracker: Tracker, stop: threading.Event, out: list[float], sizes: list[int], every: float
) -> None:
    """GET the status page (internal listener, every target on it) every ``every`` seconds
    until ``stop``: each latency (seconds, to the last byte) and page size."""
    while not stop.is_set():
        start = time.monotonic()
        with contextlib.suppress(OSError):
            sizes.append(len(get(f"{tracker.internal}/", timeout=30)))
            out.append(time.monotonic() - start)
        stop.wait(every)


def _status_sampler(
    tracker: Tracker, out: list[float], sizes: list[int], every: float
) -> Callable[[], None]:
    """Start sampling the status page in a thread; the returned function stops it."""
    stop = threading.Event()
    args = (tracker, stop, out, sizes, every)
    thread = threading.Thread(target=_sample_status, args=args)
    thread.start()

    def done() -> None:
        stop.set()
        thread.join()

    return done


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def cluster(env: Env, tracker: Tracker, run: int, label: str = "cluster") -> Result:
    """A scrape round of every discovered node (started by ``POST /reload``; run 0 is the
    first, cold round), with the API's latency sampled meanwhile and the tracker's memory;
    ``label`` names its profiles."""
    after = time.time() if run else 0.0
    latencies: dict[str, list[float]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_latencies, args=(tracker, stop, latencies))
    sampler.start()
    status: list[float] = []
    sizes: list[int] = []
    # An operator's browser reloads the page every few seconds: once a second here, so that
    # the page's own cost stays out of the API's figures.
    stop_status = _status_sampler(tracker, status, sizes, 1.0)
    cpu_before = tree_cpu_seconds(tracker.proc.pid)
    try:
        with env.profile(f"{label}-run{run + 1}", tracker):
            if run:
                post(f"{tracker.internal}/reload")
            span = _round_span(tracker, after, timeout=180)
    finally:
        stop.set()
        sampler.join()
        stop_status()
    cpu = tree_cpu_seconds(tracker.proc.pid) - cpu_before
    if span is None:
        raise RuntimeError("cluster scrape round did not finish in 180 s")
    listed = json.loads(get(f"{tracker.base}/v1/targets", timeout=30))
    measured = sum(1 for s in listed if s.get("throughput_bps"))
    # The same requests once the round is over: what the API costs without a round.
    idle: dict[str, list[float]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_latencies, args=(tracker, stop, idle))
    sampler.start()
    time.sleep(2)
    stop.set()
    sampler.join()
    # Then the page alone, 10 times back to back: rounds of 3,000 nodes take ~12 s of the
    # 15 s scrape interval, so the next round starts ~3 s after this one ended.
    status_idle: list[float] = []
    stop_status = _status_sampler(tracker, status_idle, sizes, 0.0)
    deadline = time.monotonic() + 10
    while len(status_idle) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop_status()
    idle_every = [x for values in idle.values() for x in values]
    every = [x for values in latencies.values() for x in values]
    by_path = {path.split("?")[0]: _p99(values) * 1000 for path, values in latencies.items()}
    return {
        "seconds": span,
        "nodes": env.options.cluster_nodes,
        "measured": measured,  # targets with a throughput (cluster_measured: every node)
        "cpu_share": cpu / span if span else 0.0,
        "api_p99_ms": _p99(every) * 1000,
        "api_p99_ms_by_path": by_path,
        "api_p50_ms": statistics.median(every) * 1000 if every else 0.0,
        "api_samples": len(every),
        "idle_p50_ms": statistics.median(idle_every) * 1000 if idle_every else 0.0,
        "idle_p99_ms": _p99(idle_every) * 1000,
        # The status page (GET / on the internal listener) with every node on it.
        "status_p50_ms": statistics.median(status) * 1000 if status else 0.0,
        "status_p99_ms": _p99(status) * 1000,
        "status_idle_p50_ms": statistics.median(status_idle) * 1000 if status_idle else 0.0,
        "status_idle_p99_ms": _p99(status_idle) * 1000,
        "status_samples": len(status) + len(status_idle),
        "status_kib": max(sizes, default=0) / 1024,
        "rss_mb": rss_kib(tracker.proc.pid) / 1024,
        "peak_mb": rss_kib(tracker.proc.pid, "VmHWM") / 1024,
    }


# -- object store ---------------------------------------------------------------------------

STORE_PREFIX = "bench/"


@attrs.define
class StoreSetup:
    """The object-store figure's servers: SeaweedFS and a replica whose bucket holds the
    best archive."""

    weed: Weed
    tracker: Tracker


def start_store(env: Env) -> StoreSetup:
    """SeaweedFS on 127.0.0.1 and a proxy-mode tracker using it; the best archive is put in
    the bucket by one GET through the tracker (a refresh with its upload)."""
    weed = Weed(env.work / "weed")
    weed.start()
    store = {
        "endpoint": weed.endpoint,
        "bucket": BUCKET,
        "prefix": STORE_PREFIX,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    try:
        tracker = start_proxy_tracker(
            env, "tracker-store", env.work / "cache-store", object_store=store
        )
        best = env.archives.best
        fetch(tracker.address, tracker_path(best))
        key = f"{STORE_PREFIX}{GROUP}/{best}"
        deadline = time.monotonic() + 120
        while key not in weed.objects(STORE_PREFIX):  # the upload follows the refresh
            if time.monotonic() > deadline:
                raise RuntimeError("the archive did not reach the bucket in 120 s")
            time.sleep(0.2)
        time.sleep(1.5)  # the tracker looks at a missed object again after 1 s
        fetch(tracker.address, tracker_path(best), expect=303)
    except BaseException:
        weed.stop()
        raise
    return StoreSetup(weed, tracker)


def _split(url: str) -> tuple[tuple[str, int], str]:
    parts = urllib.parse.urlsplit(url)
    return (parts.hostname or HOST, parts.port or 80), f"{parts.path}?{parts.query}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def object_store(env: Env, setup: StoreSetup, run: int) -> Result:
    """A direct-serve cache hit (GET the tracker, follow its 303 to SeaweedFS) vs the same
    object fetched from SeaweedFS with a presigned URL of its own, HIT_GETS each in
    a row on fresh connections; the tracker's CPU per GiB during the hits; wrk on the hit's
    303 vs wrk on the short redirect, same tracker, back to back."""
    tracker, best = setup.tracker, env.archives.best
    presigned = setup.weed.client().generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": f"{STORE_PREFIX}{GROUP}/{best}"}
    )
    cpu = [0.0]

    def ours() -> float:
        before = _cpu_seconds(tracker.proc.pid)
        started, got = time.perf_counter(), 0
        for _ in range(HIT_GETS):
            hit = fetch(tracker.address, tracker_path(best), expect=303)
            got += fetch(*_split(hit.headers["location"])).body_bytes
        seconds = time.perf_counter() - started
        cpu[0] = (_cpu_seconds(tracker.proc.pid) - before) / HIT_GETS
        return got / seconds

    def direct() -> float:
        started, got = time.perf_counter(), 0
        for _ in range(HIT_GETS):
            got += fetch(*_split(presigned)).body_bytes
        return got / (time.perf_counter() - started)

    # The first GET after the previous run's wrk is slower, whichever side it is: warm up.
    fetch(*_split(presigned))
    a, b = pair(run, ours, direct)

    def hit_303s() -> tuple[float, float]:
        with env.profile(f"object_store_303-run{run + 1}", tracker):
            return wrk(env, tracker.address, tracker_path(best))

    # Back to back, in turns (the order alternates between runs).
    def short_303s() -> tuple[float, float]:
        with env.profile(f"object_store_short-run{run + 1}", tracker):
            return wrk(env, tracker.address, "/v1/snapshot.tar.bz2")

    (hits, hits_p99), (short, short_p99) = pair(run, hit_303s, short_303s)
    return {
        "tracker": a,
        "reference": b,
        "cpu_s_per_gib": cpu[0] / (env.archives.size / 1024**3),
        "hit_rate": hits,
        "short_rate": short,
        "hit_p99_ms": hits_p99,
        "short_p99_ms": short_p99,
    }
