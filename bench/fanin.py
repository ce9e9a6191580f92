"""Fan-in: upstream bytes per archive when N cold clients GET it at once, sharing on and off.

    .venv/bin/python bench/fanin.py [--size-mib 256] [--clients 1,2,4,8] [--rate-mib 128]

For each N and each ``cache_share_inflight`` setting, a fresh tracker (``python -m tracker
serve``, proxy mode, empty cache directory) scrapes a rate-limited upstream (a small sidecar
in this process: ``/v1/snapshots`` and the archive, ``--rate-mib`` MiB/s per connection), N
clients GET the archive at the same moment, every body is checked (length and SHA-256), and
the upstream counts the archive bytes it sent. Prints ``upstream bytes / archive size`` as a
table and writes ``bench/out/fanin.json``. Everything started here is stopped on exit; the
temp dir is removed. Callable from the bench as :func:`measure_fanin`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import base58
import httpx
import trio

HOST = "127.0.0.1"
GROUP = "bench"
MiB = 1024 * 1024
OUT = Path(__file__).resolve().parent / "out"
CHUNK = 1 * MiB
_LISTENING = re.compile(r"addresses\W{1,4}(http://[0-9.:]+)(?:,(http://[0-9.:]+))?")


def archive_name(slot: int) -> str:
    """A valid full snapshot archive name at ``slot``."""
    digest = hashlib.sha256(str(slot).encode()).digest()
    return f"snapshot-{slot}-{base58.b58encode(digest).decode()}.tar.zst"


@attrs.define
class Upstream:
    """A sidecar serving one archive at ``rate`` bytes/s per connection; counts what it sent."""

    name: str
    data: bytes
    rate: float
    port: int = 0
    sent: int = 0
    gets: int = 0

    def listing(self) -> bytes:
        slot = int(self.name.split("-")[1])
        file = {"file_name": self.name, "slot": slot, "hash": self.name.split("-")[2][:-8]}
        file |= {"ext": ".tar.zst", "size": len(self.data)}
        info = {"slot": slot, "base_slot": slot, "hash": file["hash"], "files": [file]}
        return json.dumps([info | {"size": len(self.data)}]).encode()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            async with stream:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buffer += data
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    await self._answer(stream, head.decode("latin-1"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _answer(self, stream: trio.SocketStream, head: str) -> None:
        request, *lines = head.split("\r\n")
        method, target, _ = request.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        path = target.split("?", 1)[0]
        if path.endswith("/v1/snapshots"):
            body = self.listing()
            await stream.send_all(_head(200, len(body), "application/json") + body)
        elif path.endswith("/" + self.name):
            await self._archive(stream, method, headers.get("range", ""))
        else:
            await stream.send_all(_head(404, 0, "text/plain"))

    async def _archive(self, stream: trio.SocketStream, method: str, range_: str) -> None:
        size = len(self.data)
        start, status, extra = 0, 200, ""
        match = re.fullmatch(r"bytes=(\d+)-", range_)
        if match and int(match[1]) < size:
            start, status = int(match[1]), 206
            extra = f"content-range: bytes {start}-{size - 1}/{size}\r\n"
        await stream.send_all(_head(status, size - start, "application/octet-stream", extra))
        if method != "GET":
            return
        self.gets += 1
        view = memoryview(self.data)[start:]
        began = trio.current_time()
        for offset in range(0, len(view), CHUNK):
            piece = view[offset : offset + CHUNK]
            await stream.send_all(piece)
            self.sent += len(piece)
            # Rate limit per connection: never ahead of `rate` since the body began.
            await trio.sleep_until(began + (offset + len(piece)) / self.rate)


def _head(status: int, length: int, content_type: str, extra: str = "") -> bytes:
    reason = {200: "OK", 206: "Partial Content", 404: "Not Found"}[status]
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-length: {length}\r\n"
        f"content-type: {content_type}\r\naccept-ranges: bytes\r\n{extra}\r\n"
    ).encode()


@attrs.define
class Tracker:
    """A ``python -m tracker serve`` child process."""

    proc: trio.Process
    log: Path
    base: str = ""

    async def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 10 s (shielded: runs when cancelled)."""
        with trio.CancelScope(shield=True):
            if self.proc.poll() is not None:
                return
            os.killpg(self.proc.pid, signal.SIGTERM)
            with trio.move_on_after(10):
                await self.proc.wait()
                return
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


async def start_tracker(work: Path, upstream: Upstream, *, share: bool) -> Tracker:
    """A tracker in proxy mode with an empty cache, scraping ``upstream``; returns once the
    archive is listed."""
    cache = work / f"cache-{time.monotonic_ns()}"
    config = {
        "listen": f"{HOST}:0",
        "internal_listen": "",
        "scrape_interval": "1s",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache),
        "cache_share_inflight": share,
        "shutdown_grace": "2s",
        "target_groups": [
            {"group": GROUP, "static_targets": {"targets": [f"{HOST}:{upstream.port}"]}}
        ],
    }
    path = work / "config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = work / f"tracker-{'on' if share else 'off'}.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tracker", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    tracker = Tracker(proc, log)
    try:
        await _wait_listed(tracker)
    except BaseException:
        await tracker.stop()
        raise
    return tracker


async def _wait_listed(tracker: Tracker) -> None:
    log, proc = tracker.log, tracker.proc
    with trio.fail_after(30):
        while not (m := _LISTENING.search(log.read_text(errors="replace"))):
            if proc.poll() is not None:
                raise RuntimeError(f"tracker exited:\n{log.read_text(errors='replace')[-2000:]}")
            await trio.sleep(0.05)
        tracker.base = m[1]
        async with httpx.AsyncClient(trust_env=False) as client:
            while not (await client.get(f"{tracker.base}/v1/snapshots")).json():
                await trio.sleep(0.05)


async def fetch(client: httpx.AsyncClient, url: str) -> tuple[int, int, str]:
    """GET ``url``: status, body length and SHA-256, hashed as it streams."""
    digest = hashlib.sha256()
    size = 0
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
    return response.status_code, size, digest.hexdigest()


async def one_run(work: Path, upstream: Upstream, clients: int, *, share: bool) -> dict[str, Any]:
    """N cold clients at once against a fresh tracker; what the upstream sent for them."""
    tracker = await start_tracker(work, upstream, share=share)
    try:
        sent, gets = upstream.sent, upstream.gets
        url = f"{tracker.base}/v1/{upstream.name}?group={GROUP}"
        results: list[tuple[int, int, str]] = []
        began = time.monotonic()
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(timeout=600, trust_env=False, limits=limits) as client:

            async def one() -> None:
                results.append(await fetch(client, url))

            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(one)
        seconds = time.monotonic() - began
    finally:
        await tracker.stop()
    expected = (200, len(upstream.data), hashlib.sha256(upstream.data).hexdigest())
    upstream_bytes = upstream.sent - sent
    return {
        "sharing": share,
        "clients": clients,
        "upstream_bytes": upstream_bytes,
        "upstream_gets": upstream.gets - gets,
        "ratio": round(upstream_bytes / len(upstream.data), 4),
        "all_correct": results == [expected] * clients,
        "seconds": round(seconds, 2),
    }


async def measure_fanin(size: int, clients: list[int], rate: float) -> dict[str, Any]:
    """Every (sharing, N) run; the figure is ``ratio`` = upstream bytes / archive size."""
    work = Path(tempfile.mkdtemp(prefix="sst-fanin-"))
    try:
        upstream = Upstream(archive_name(424242), os.urandom(size), rate)
        runs = []
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.run)
            for share in (True, False):
                for n in clients:
                    run = await one_run(work, upstream, n, share=share)
                    print(_row(run), flush=True)
                    runs.append(run)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"archive_bytes": size, "upstream_rate_bytes_per_s": rate, "runs": runs}


def _row(run: dict[str, Any]) -> str:
    sharing = "on" if run["sharing"] else "off"
    ok = "yes" if run["all_correct"] else "NO"
    return (
        f"| {sharing:<7} | {run['clients']:>7} | {run['ratio']:>16.3f} | "
        f"{run['upstream_gets']:>13} | {ok:<7} | {run['seconds']:>7.1f} |"
    )


HEADER = (
    "| sharing | clients | upstream / size | upstream GETs | correct | seconds |\n"
    "| ------- | ------- | ---------------- | ------------- | ------- | ------- |"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256, help="archive size (MiB)")
    p.add_argument("--clients", default="1,2,4,8", help="concurrent clients, comma-separated")
    p.add_argument("--rate-mib", type=float, default=128, help="upstream MiB/s per connection")
    p.add_argument("--out", type=Path, default=OUT / "fanin.json")
    args = p.parse_args(argv)
    clients = [int(n) for n in args.clients.split(",")]
    print(f"fan-in: {args.size_mib} MiB archive, upstream {args.rate_mib:g} MiB/s per connection")
    print(HEADER, flush=True)
    result = trio.run(measure_fanin, args.size_mib * MiB, clients, args.rate_mib * MiB)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["all_correct"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
