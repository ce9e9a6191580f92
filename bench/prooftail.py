"""The accounts proof's tail after a refresh from three sources: how long after the last byte
came from the sources the client has its own last byte, when the group requires ``accounts``
(the last bytes wait for the proof: docs/architecture.md, "The release rule").

    .venv/bin/python bench/prooftail.py                  # 1,000,000 accounts, 3 x 6 MiB/s
    .venv/bin/python bench/prooftail.py --accounts 200000 --runs 1

It builds (or finds under ``--out``, ``bench/out/`` by default) the archive of
``bench/accounts.py`` (a full of ``--accounts`` accounts that the check proves to
``accounts``), serves it from three sources each capped at ``--rate`` MiB/s over all of its
connections (:mod:`bench.capped`), and, ``--runs`` times, fetches it with ``curl`` through a
fresh tracker with an empty cache whose group knows the three (``source_limits.max_transfers:
1``), in turns with ``trust.require: accounts`` and ``trust.require: manifest``. For each it
prints the seconds from the request to the sources' last byte (their ``/_stats``, polled
every 20 ms) and to the client's last byte, and the tail: the client's last byte after the
sources' last, as a share of the download (the target: 10% under ``accounts`` on two cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accounts import build
from bench.curl import curl_get
from bench.figures import get, tracker_path
from bench.manysources import SOURCES, CappedSource
from bench.procs import HOST, Procs, free_port, wait_for_port
from bench.servers import GROUP, start_tracker, tracker_config
from bench.tools import ensure
from bench.ttr import sidecar_json

MIB = 1024 * 1024


class LastByte(threading.Thread):
    """When the sources together had sent ``size`` body bytes more than when it started."""

    def __init__(self, sources: list[CappedSource], size: int) -> None:
        super().__init__(daemon=True)
        self.sources, self.size = sources, size
        self.since = [s.sent() for s in sources]
        self.at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            sent = sum(s.sent() - a for s, a in zip(self.sources, self.since, strict=True))
            if sent >= self.size:
                self.at = time.monotonic()
                return


def one_fetch(
    procs: Procs, work: Path, run: int, require: str, sources: list[CappedSource], name: str
) -> dict[str, Any]:
    """One GET of ``name`` through a fresh tracker requiring ``require``: seconds to the
    sources' last byte and to the client's, and the client's status."""
    cache = work / f"cache-{require}-{run}"
    group = {
        "group": GROUP,
        "static_targets": {"targets": [f"{HOST}:{s.port}" for s in sources]},
        "source_limits": {"max_transfers": 1},
        "trust": {"require": require},
    }
    config = tracker_config(
        scrape_interval="30s",
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(cache),
        target_groups=[group],
    )
    label = f"tracker-{require}-{run}"
    tracker = start_tracker(procs, label, work, config)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            targets = json.loads(get(f"{tracker.base}/v1/targets"))
            if len(targets) == len(sources) and all(t.get("snapshots", 0) for t in targets):
                break
            time.sleep(0.1)
        size = (work / "archives" / name).stat().st_size
        last = LastByte(sources, size)
        last.start()
        started = time.monotonic()
        got = curl_get(ensure(["curl"])["curl"], f"{tracker.base}{tracker_path(name)}", size=size)
        ended = time.monotonic()
        last.done.set()
        last.join()
        level = "none"
        deadline = time.monotonic() + 10  # the listing shows the copy once it is cached
        while level == "none" and time.monotonic() < deadline:
            level = _proof_level(json.loads(get(f"{tracker.base}/v1/snapshots")))
            time.sleep(0.05)
    finally:
        procs.stop(label)
        shutil.rmtree(cache, ignore_errors=True)
    if got.status != 200 or got.body_bytes != size:
        raise RuntimeError(f"{require}: the client got {got.body_bytes} of {size} bytes")
    upstream = (last.at or ended) - started
    return {
        "download": upstream,
        "client": ended - started,
        "tail": ended - (last.at or ended),
        "level": level,
    }


def _proof_level(listing: Any) -> str:
    """The level the tracker's listing says its copy was proven to ("none" when none)."""
    if isinstance(listing, dict):
        proof = listing.get("proof")
        if isinstance(proof, dict) and "level" in proof:
            return str(proof["level"])
        listing = list(listing.values())
    if isinstance(listing, list):
        for item in listing:
            if (found := _proof_level(item)) != "none":
                return found
    return "none"


def main() -> None:
    """Build, serve, fetch, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=6.0, help="MiB/s each source sends")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    base = build(args.out, args.accounts)
    meta = json.loads((base / "meta.json").read_text())
    name = meta["archive"]
    work = args.out / "prooftail"
    shutil.rmtree(work, ignore_errors=True)
    (work / "archives").mkdir(parents=True)
    (work / "www" / "v1").mkdir(parents=True)
    (work / "logs").mkdir()
    (work / "archives" / name).hardlink_to(base / name)
    size = (base / name).stat().st_size
    (work / "www" / "v1" / "snapshots").write_text(sidecar_json([(name, size)]))
    procs = Procs(work / "logs")
    try:
        sources = []
        for n in range(SOURCES):
            port = free_port()
            argv = [sys.executable, str(Path(__file__).with_name("capped.py")), "--port"]
            argv += [str(port), "--rate", str(args.rate * MIB), "--dir", str(work / "archives")]
            argv += ["--www", str(work / "www")]
            proc = procs.start(f"capped{n}", argv)
            wait_for_port(proc, port)
            sources.append(CappedSource(proc, port))
        rows: dict[str, list[dict[str, Any]]] = {"accounts": [], "manifest": []}
        for run in range(args.runs):  # in turns: the shared machine is noisy
            order = ("accounts", "manifest") if run % 2 == 0 else ("manifest", "accounts")
            for require in order:
                rows[require].append(one_fetch(procs, work, run, require, sources, name))
    finally:
        procs.close()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{meta['accounts']} accounts, {size / 1e6:.0f} MB, from {SOURCES} sources of "
        f"{args.rate:g} MiB/s through the tracker ({args.runs} runs each, in turns):"
    )
    for require, each in rows.items():
        print(
            f"  require {require}: "
            + "; ".join(
                f"sources' last byte {r['download']:.2f} s, client's {r['client']:.2f} s, "
                f"tail {r['tail']:.2f} s ({r['tail'] / r['download']:.1%}), "
                f"copy at {r['level']}"
                for r in each
            )
        )


if __name__ == "__main__":
    main()
