"""Time to a running node after a restart: ranked by it, by slot, and by Firedancer's score.

    .venv/bin/python bench/ttr.py [--scale 1.0] [--keep]      (about a minute)

Two nginx sidecars on 127.0.0.1, each connection throttled with ``limit_rate``: a slow one
holding the newest full, a fast one (10x) holding an older full with a recent incremental on
it (the issue's 20 MB/s against 200 MB/s, scaled down to 2 and 20 MB/s so that the run is
short). Two trackers scrape both (proxy mode, no cache): one with ``ranking.by:
time_to_running``, one without ``ranking`` (by slot, the Go tracker's order). The first
tracker's own speed tests (``ranking.speed_test``: 8 MiB of each full) give it the sources'
throughputs; the run waits until every source it lists carries one. Then, per order,
``snapshot-tracker fetch --connections 1`` downloads the pair that order hands out into an
empty ledger, for real; the catch-up that follows is computed with the same formula
(docs/ranking.md), from the measured download time:
time to running = download + (tip - slot + download / slot_seconds) / (replay - 1 /
slot_seconds). Firedancer's choice (connect RTT + 200 x slots behind^2, never speed) is
computed from the listing; it is the pair by slot here, so its download is that one's. The
prediction's error is the tracker's ``predicted_seconds`` against the measured time to
running of the pair it handed out. Results: printed, and ``bench/out/ttr.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import HOST, Procs, die_with_parent, free_port
from bench.servers import (
    GROUP,
    full_name,
    incremental_name,
    start_nginx,
    start_tracker,
    tracker_config,
)
from bench.tools import ensure
from tracker.core.snapshots import parse_archive_name

MB = 1_000_000
#: The scenario, scale 1: (name, size, which sidecar).
TIP = 100_000
REPLAY, SLOT_SECONDS = 25.0, 0.4
SLOW_RATE, FAST_RATE = 2 * MB, 20 * MB


def scenario(scale: float) -> list[tuple[str, int, str]]:
    size = int(40 * MB * scale)
    return [
        (full_name(TIP), size, "slow"),
        (full_name(TIP - 1000), size, "fast"),
        (incremental_name(TIP - 1000, TIP - 10), size // 10, "fast"),
    ]


def sidecar_json(files: list[tuple[str, int]]) -> str:
    """The ``/v1/snapshots`` answer of a sidecar holding ``files`` (an incremental's chain
    lists its full when the sidecar has it)."""

    def wire(name: str, size: int) -> dict[str, Any]:
        p = parse_archive_name(name)
        assert p is not None
        out: dict[str, Any] = {"file_name": name, "slot": p.slot, "hash": p.hash, "ext": p.ext}
        if p.base_slot:
            out["base_slot"] = p.base_slot
        return {**out, "size": size}

    sizes = dict(files)
    infos = []
    for name, size in files:
        p = parse_archive_name(name)
        assert p is not None
        chain = [wire(name, size)]
        base = next(
            (n for n in sizes if p.base_slot and n.startswith(f"snapshot-{p.base_slot}-")), None
        )
        if base is not None:
            chain.append(wire(base, sizes[base]))
        infos.append(
            {
                "slot": p.slot,
                "base_slot": p.base_slot or p.slot,
                "hash": p.hash,
                "files": chain,
                "size": sum(f["size"] for f in chain),
            }
        )
    return json.dumps(infos)


def nginx_conf(work: Path, role: str, port: int, root: Path, rate: int) -> str:
    temp = work / f"nginx-{role}-temp"
    temp.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "\n".join(
        f"  {k}_temp_path {temp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {work}/nginx-{role}.pid;
error_log {work}/nginx-{role}.error.log warn;
events {{ worker_connections 256; }}
http {{
{paths}
  access_log {work}/nginx-{role}.access.log;
  default_type application/octet-stream;
  sendfile on;
  server {{
    listen {HOST}:{port};
    location = /v1/snapshots {{ default_type application/json; root {root}; }}
    location /v1/snapshot/ {{ alias {root}/files/; limit_rate {rate}; }}
  }}
}}
"""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def wait_listing(base: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        listing = get_json(f"{base}/v1/best_snapshots?group={GROUP}")
        if len(listing) >= count:
            return list(listing)
        time.sleep(0.2)
    raise RuntimeError(f"{base} listed fewer than {count} snapshots in {timeout:g}s")


def wait_measured(base: str, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The listing of ``base`` once its speed tests measured every source in it (each entry
    carries ``throughput_bps``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = wait_listing(base, count)
        if all("throughput_bps" in entry for entry in listing):
            return listing
        time.sleep(0.2)
    raise RuntimeError(f"{base}: the speed tests measured not every source in {timeout:g}s")


def catch_up(slot: int, download: float) -> float:
    """Seconds of replay after a download of ``download`` seconds (docs/ranking.md)."""
    behind = max(0, TIP - slot) + download / SLOT_SECONDS
    return behind / (REPLAY - 1 / SLOT_SECONDS)


def fetch(tracker: str, ledger: Path) -> tuple[float, float, list[str]]:
    """``snapshot-tracker fetch`` into an empty ``ledger``: its downloads' seconds (its
    ``fetch_done`` lines), the command's wall seconds, the names fetched."""
    shutil.rmtree(ledger, ignore_errors=True)
    ledger.mkdir()
    argv = [sys.executable, "-m", "tracker", "fetch", "--ledger", str(ledger)]
    argv += ["--tracker", tracker, "--group", GROUP, "--connections", "1", "--min-speed", "0"]
    argv += ["--verify=false", "--progress", "none", "--keep", "0", "--log-format", "json"]
    began = time.monotonic()
    done = subprocess.run(
        argv, check=True, cwd=ledger.parent, capture_output=True, timeout=600,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    wall = time.monotonic() - began
    lines = (done.stdout + done.stderr).decode().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    seconds = sum(e["seconds"] for e in events if e.get("event") == "fetch_done")
    return seconds, wall, sorted(p.name for p in ledger.iterdir() if not p.name.startswith("."))


def predicted_download(entry: dict[str, Any]) -> float:
    """The download seconds the tracker's figures give for a listed pair: each file's size
    over its source's ``throughput_bps``."""
    return sum(f["size"] / entry["throughput_bps"] for f in entry["files"])


def rtt(url: str) -> float:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    began = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5):
        return time.monotonic() - began


def firedancer_choice(listing: list[dict[str, Any]], sources: dict[str, str]) -> str:
    """The full Firedancer would take: least connect RTT (ms) + 200 x slots behind^2."""
    scores = {}
    for entry in listing:
        full = next(f for f in entry["files"] if "base_slot" not in f)
        name = full["file_name"].rsplit("/", 1)[-1]
        behind = TIP - entry["slot"]
        scores[name] = rtt(sources[name]) * 1000 + 200 * behind**2
    return min(scores, key=scores.__getitem__)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ttr-", dir=getattr(args, "workdir", None)))
    procs = Procs(work)
    nginx = ensure(["nginx"])["nginx"]
    try:
        files = scenario(args.scale)
        sources: dict[str, str] = {}
        targets = []
        for role, rate in (("slow", SLOW_RATE), ("fast", FAST_RATE)):
            root = work / role
            (root / "files").mkdir(parents=True)
            (root / "v1").mkdir()
            held = [(n, s) for n, s, r in files if r == role]
            for name, size in held:
                with open(root / "files" / name, "wb") as f:
                    f.write(os.urandom(size))
            (root / "v1" / "snapshots").write_text(sidecar_json(held))
            port = free_port()
            start_nginx(procs, nginx, work, role, nginx_conf(work, role, port, root, rate), port)
            targets.append(f"{HOST}:{port}")
            sources.update({n: f"http://{HOST}:{port}/v1/snapshot/{n}" for n, _s in held})
        group = {"group": GROUP, "static_targets": {"targets": targets}}
        common = {
            "proxy_snapshot_downloads": True,
            "verify_archives": False,
            "scrape_interval": "2s",
            "default_group": GROUP,
        }
        ranking = {"by": "time_to_running", "replay_slots_per_second": REPLAY}
        ranking |= {"slot_seconds": SLOT_SECONDS, "switch_margin": "10%"}
        ranking |= {"speed_test": {"bytes": "8MiB", "top": 2, "interval": "10m"}}
        ttr_config = tracker_config(**common, target_groups=[{**group, "ranking": ranking}])
        ttr = start_tracker(procs, "tracker-ttr", work, ttr_config)
        slot = start_tracker(
            procs, "tracker-slot", work, tracker_config(**common, target_groups=[group])
        )
        wait_listing(ttr.base, 3)
        wait_listing(slot.base, 3)
        listing = wait_measured(ttr.base, 3)
        predicted = listing[0]["predicted_seconds"]
        results: dict[str, Any] = {"scale": args.scale, "listing": listing}
        for order, base in (("time_to_running", ttr.base), ("slot", slot.base)):
            seconds, wall, names = fetch(base, work / f"ledger-{order}")
            newest = max(parse_archive_name(n).slot for n in names)  # type: ignore[union-attr]
            results[order] = {
                "fetched": names,
                "download_s": round(seconds, 2),
                "command_s": round(wall, 2),
                "time_to_running_s": round(seconds + catch_up(newest, seconds), 2),
            }
        fd = firedancer_choice(listing, sources)
        same = fd in results["slot"]["fetched"]
        results["firedancer"] = {**results["slot" if same else "time_to_running"], "full": fd}
        measured = results["time_to_running"]["time_to_running_s"]
        results["predicted_s"] = predicted
        results["prediction_error"] = round(abs(predicted - measured) / measured, 3)
        download = results["time_to_running"]["download_s"]
        guess = predicted_download(listing[0])
        results["predicted_download_s"] = round(guess, 2)
        results["download_error"] = round(abs(guess - download) / download, 3)
        return results
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _label(name: str) -> str:
    p = parse_archive_name(name)
    assert p is not None
    return f"incremental {p.base_slot}-{p.slot}" if p.base_slot else f"full {p.slot}"


def figure(scale: float = 1.0, workdir: str | None = None) -> dict[str, Any]:
    """One run as a flat figure for bench/run.py (``--only time_to_running``): seconds to
    running by time to running and by slot, and the prediction's errors (temp dir under
    ``workdir``)."""
    results = run(argparse.Namespace(scale=scale, keep=False, workdir=workdir))
    return {
        "ttr_s": results["time_to_running"]["time_to_running_s"],
        "slot_s": results["slot"]["time_to_running_s"],
        "firedancer_s": results["firedancer"]["time_to_running_s"],
        "prediction_error": results["prediction_error"],
        "download_error": results["download_error"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="archive sizes x this (1: 40 MB fulls)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    results = run(args)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "ttr.json").write_text(json.dumps(results, indent=2))
    ttr = results["time_to_running"]["time_to_running_s"]
    print(f"{'order':<18}{'fetched':<40}{'download s':>11}{'to running s':>14}{'x ttr':>7}")
    for order in ("time_to_running", "slot", "firedancer"):
        r = results[order]
        names = " + ".join(_label(n) for n in r["fetched"])
        ratio = r["time_to_running_s"] / ttr
        print(
            f"{order:<18}{names:<40}{r['download_s']:>11}{r['time_to_running_s']:>14}{ratio:>7.2f}"
        )
    print(
        f"predicted time to running {results['predicted_s']} s, error"
        f" {results['prediction_error']:.1%}; predicted download"
        f" {results['predicted_download_s']} s, error {results['download_error']:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
