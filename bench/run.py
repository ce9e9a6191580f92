"""Benchmark of solana-snapshot-tracker against nginx and a bare quart-trio app.

    .venv/bin/python bench/run.py [--size 1GiB] [--runs 3] [--quick] [--only FIG,...]

Installs nginx and wrk with apt-get when missing, starts everything on 127.0.0.1 in a temp
dir, measures every figure ``--runs`` times, prints a table of medians and ratios with the
targets, and writes bench/out/results.json (and ratios.svg). Everything it started is
stopped on exit, on errors and on Ctrl-C/SIGTERM; the temp dir is removed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import figures, manysources, ttr, verify
from bench.figures import Env, Options
from bench.procs import Procs, free_port
from bench.profile import Profiler, find_py_spy, summary
from bench.report import format_table, summarise, svg_chart
from bench.servers import (
    cache_nginx_conf,
    files_nginx_conf,
    make_archives,
    proxy_nginx_conf,
    sidecar_json,
    start_bare,
    start_nginx,
)
from bench.tools import ToolMissing, ensure

FIGURES = (
    "cache_hit_1",
    "cache_hit_8",
    "proxy",
    "first_byte",
    "refresh",
    "refresh_sources",
    "verified_refresh",
    "verified_refresh_paced",
    "redirects",
    "memory",
    "idle_connections",
    "fan_in",
    "discovery",
    "fetch",
    "cluster",
    "cluster_measured",
    "object_store",
    "verify",
    "time_to_running",
)
# Figures that need none of the servers below (bench/ttr.py starts its own).
STANDALONE = frozenset({"verify", "time_to_running"})
OUT = Path(__file__).resolve().parent / "out"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_size(text: str) -> int:
    """``1GiB``, ``512MiB``, ``8M`` (binary with ``i``), ``1e9`` style plain numbers too."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = (m[2] or "").lower()
    base = 1024 if "i" in unit else 1000
    factor = base ** "bkmg".index(unit[0]) if unit else 1
    return int(float(m[1]) * factor)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=parse_size, default=None, help="archive size (default 1GiB)")
    p.add_argument("--runs", type=int, default=None, help="repetitions per figure (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one run (smoke test)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--out", type=Path, default=OUT, help="where results.json goes")
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get install")
    p.add_argument("--profile", action="store_true", help="py-spy the tracker: out/profiles/")
    p.add_argument(
        "--tracker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the tracker processes (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--workdir", default=None, help="parent of the temp dir (default /tmp)")
    args = p.parse_args(argv)
    only = [f for f in args.only.split(",") if f]
    unknown = set(only) - set(FIGURES)
    if unknown:
        p.error(f"unknown figures: {', '.join(sorted(unknown))}")
    args.figures = only or list(FIGURES)
    bad = [e for e in args.tracker_env if "=" not in e]
    if bad:
        p.error(f"--tracker-env wants NAME=VALUE: {bad[0]}")
    args.tracker_env = dict(e.split("=", 1) for e in args.tracker_env)
    return args


def options_from(args: argparse.Namespace) -> Options:
    if args.quick:
        size = args.size or 8 * 1024**2
        return Options(
            size=size,
            runs=args.runs or 1,
            streams=8,
            wrk_seconds=1,
            memory_hits=4,
            memory_proxied=2,
            idle_connections=50,
            fanin_clients=2,
            discovery_targets=100,
            cluster_nodes=100,
        )
    return Options(size=args.size or 1024**3, runs=args.runs or 3)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def setup(work: Path, procs: Procs, tools: dict[str, str], options: Options, built: Path) -> Env:
    """Archives, sidecar JSON, the two nginx; the long-lived tracker and bare app come later."""
    print(f"writing a {options.size:,} byte archive ...", flush=True)
    archives = make_archives(work / "archives", options.size, built)
    www = work / "www"
    (www / "v1").mkdir(parents=True)
    (www / "v1" / "snapshots").write_text(sidecar_json(archives))
    files_port, proxy_port, paced_port = free_port(), free_port(), free_port()
    files = start_nginx(
        procs,
        tools["nginx"],
        work,
        "files",
        files_nginx_conf(work, files_port, archives, www, paced_port),
        files_port,
    )
    proxy = start_nginx(
        procs,
        tools["nginx"],
        work,
        "proxy",
        proxy_nginx_conf(work, proxy_port, files_port),
        proxy_port,
    )
    return Env(work, procs, tools, options, archives, files, proxy, paced_port=paced_port)


def measure(env: Env, wanted: list[str]) -> dict[str, Any]:
    """Every wanted figure, ``runs`` times; raw per-run results by figure."""
    o = env.options
    results: dict[str, Any] = {}
    paired: dict[str, Callable[[int], dict[str, Any]]] = {
        "cache_hit_1": lambda run: figures.cache_hit(env, run, 1),
        "cache_hit_8": lambda run: figures.cache_hit(env, run, o.streams),
        "proxy": lambda run: figures.proxy(env, run),
        "first_byte": lambda run: figures.proxy_first_byte(env, run),
        "refresh": lambda run: figures.refresh(env, run),
        "verified_refresh": lambda run: figures.verified_refresh(env, run),
        "verified_refresh_paced": lambda run: figures.verified_refresh(env, run, paced=True),
        "redirects": lambda run: figures.redirects(env, run),
    }
    steady = [f for f in paired if f in wanted]
    if steady:
        env.hit_tracker = figures.start_hit_tracker(env, "tracker-hit")
        if "redirects" in steady:
            env.bare = start_bare(env.procs)[1]
        if {"refresh", "verified_refresh", "verified_refresh_paced"} & set(steady):
            env.cache_proxy_dir = env.work / "nginx-proxy-cache"
            env.cache_proxy_dir.mkdir()
            port = free_port()
            conf = cache_nginx_conf(env.work, port, env.files.port, env.cache_proxy_dir)
            env.cache_proxy = start_nginx(
                env.procs, env.tools["nginx"], env.work, "cache", conf, port
            )
        for run in range(o.runs):
            for name in steady:
                _step(results, name, run, paired[name])
    if "memory" in wanted:
        for run in range(o.runs):
            _step(results, "memory", run, lambda r: figures.memory(env, r))
    if "idle_connections" in wanted:
        for run in range(o.runs):
            _step(results, "idle_connections", run, lambda r: figures.idle_connections(env, r))
    if "fan_in" in wanted:
        _fan_in(env, results)
    if "cluster" in wanted:
        tracker = figures.start_cluster(env)
        for run in range(o.runs + 1):  # run 0: the first, cold round
            _step(results, "cluster", run, lambda r: figures.cluster(env, tracker, r))
        figures.stop(env, tracker)  # its rounds go on every 15 s: not beside the next one
    if "cluster_measured" in wanted:
        # The same round, every node's throughput measured (docs/ranking.md): a re-rank
        # prices every target with a figure that ages.
        tracker = figures.start_cluster(env, measured=True)
        for run in range(o.runs + 1):
            _step(
                results,
                "cluster_measured",
                run,
                lambda r: figures.cluster(env, tracker, r, "cluster-measured"),
            )
    if "refresh_sources" in wanted:
        servers = manysources.start_capped(env)
        for run in range(o.runs):
            _step(
                results,
                "refresh_sources",
                run,
                lambda r: manysources.refresh_sources(env, r, servers),
            )
    if "fetch" in wanted:
        if env.hit_tracker is None:
            env.hit_tracker = figures.start_hit_tracker(env, "tracker-hit")
        for run in range(o.runs):
            _step(results, "fetch", run, lambda r: figures.fetch_vs_aria2c(env, r))
    if "object_store" in wanted:
        setup = figures.start_store(env)
        try:
            for run in range(o.runs):
                _step(results, "object_store", run, lambda r: figures.object_store(env, setup, r))
        finally:
            setup.weed.discard()
    if "discovery" in wanted:
        tracker = figures.start_discovery_tracker(env)
        results["discovery_first_round"] = figures.first_round(tracker)
        for run in range(o.runs):
            _step(results, "discovery", run, lambda r: figures.discovery(env, tracker, r))
    return results


def _fan_in(env: Env, results: dict[str, Any]) -> None:
    # Upstream bytes are a count, not a timing: one run per setting is enough.
    skipped = figures.share_supported(env)
    _step(results, "fan_in_off", 0, lambda r: figures.fan_in(env, r, share=False))
    if skipped is not None:
        results["fan_in_skipped"] = skipped
        print(f"  fan-in with sharing: skipped: {skipped}", flush=True)
        return
    _step(results, "fan_in_on", 0, lambda r: figures.fan_in(env, r, share=True))
    on, off = results["fan_in_on"][0], results["fan_in_off"][0]
    if on["fan_in"] > 1.5 and on["fan_in"] >= off["fan_in"] - 0.5:
        results["fan_in_note"] = "cache_share_inflight accepted but had no effect"


def _step(
    results: dict[str, Any], name: str, run: int, fn: Callable[[int], dict[str, Any]]
) -> None:
    start = time.monotonic()
    result = fn(run)
    took = time.monotonic() - start
    shown = ", ".join(f"{k}={_short(v)}" for k, v in result.items())
    print(f"  {name} run {run + 1}: {shown}  ({took:.1f} s)", flush=True)
    results.setdefault(name, []).append(result)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v / 1e9:.3f}G" if v > 1e6 else f"{v:.3g}"
    return str(v)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    # SIGINT too: a shell starting the bench in the background leaves SIGINT ignored.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    servers = any(f not in STANDALONE for f in args.figures)
    try:
        tools = ensure(
            ["nginx", "wrk", "aria2c", "curl"] if servers else [], install=not args.no_install
        )
    except ToolMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 3
    work = Path(tempfile.mkdtemp(prefix="sst-bench-", dir=args.workdir))
    (work / "logs").mkdir()
    procs = Procs(work / "logs")
    started = time.time()
    profiler = None
    if args.profile:
        py_spy = find_py_spy()
        if py_spy is None:
            print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return 3
        profiler = Profiler(py_spy, args.out / "profiles")
    try:
        results: dict[str, Any] = {}
        if servers:
            # A real archive (the tracker checks what it caches), built once per size.
            built = verify.archive(args.out, options.size)
            env = setup(work, procs, tools, options, built)
            env.profiler = profiler
            env.tracker_env = args.tracker_env
            results = measure(env, args.figures)
        if "verify" in args.figures:
            path = verify.archive(args.out, options.size)
            for run in range(options.runs):
                _step(results, "verify", run, lambda r: verify.verify(path, r))
        if "time_to_running" in args.figures:
            # --quick: fulls of 4 MB instead of 40 (a few seconds instead of a minute).
            scale = 0.1 if args.quick else 1.0
            for run in range(options.runs):
                _step(results, "time_to_running", run, lambda _r: ttr.figure(scale, str(work)))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarise(results)
    table = format_table(rows)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "options": attrs.asdict(options),
        "tracker_env": args.tracker_env,
        "machine": machine(),
        "started": started,
        "seconds": time.time() - started,
        "table": [r.as_json() for r in rows],
        "runs": results,
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "ratios.svg").write_text(svg_chart(rows))
    for path in profiler.written if profiler else []:
        print()
        print(summary(path))
    print(f"\nwrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
