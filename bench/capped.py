"""A source of the bench capped as validators cap peers: one token bucket over all of its
connections, so that the source sends at most ``--rate`` bytes a second in total however many
connections ask (nginx's ``limit_rate`` caps each connection: a client opening more gets
more). Run as a child of the bench (``python bench/capped.py``), one process per source.

It serves what the bench's nginx sources served: ``GET /v1/snapshots`` (the sidecar JSON in
``--www``), ``GET``/``HEAD /v1/snapshot/{name}`` from ``--dir`` with a single ``Range``
(``bytes=a-b``, ``bytes=a-``; 206 with ``Content-Range``, 416 past the end), ``ETag`` and
``Last-Modified`` as nginx makes them; and ``GET /_stats``: the body bytes it sent under
``/v1/snapshot/`` (the bench's upstream bytes). Bodies go out with ``sendfile(2)`` in
slices of at most ``SLICE`` bytes, each taken from the bucket first. Stdlib only, threads:
each connection one thread, the bucket shared under a lock.

Why a bucket with a debt: each slice takes its bytes at once (the balance may go negative)
and its sender sleeps until the balance is back at zero; requests are served in the order
they asked, and the total is exactly the rate over any stretch longer than a slice.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Bytes sent at once (and the bucket's burst).
SLICE = 256 * 1024

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class TokenBucket:
    """At most ``rate`` bytes a second over every caller together."""

    def __init__(self, rate: float, burst: int = SLICE) -> None:
        self.rate, self.burst = rate, burst
        self.balance = float(burst)
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def take(self, count: int) -> None:
        """Take ``count`` bytes; sleep until the bucket has paid for them."""
        with self.lock:
            now = time.monotonic()
            self.balance = min(self.burst, self.balance + (now - self.at) * self.rate)
            self.at = now
            self.balance -= count
            debt = -self.balance
        if debt > 0:
            time.sleep(debt / self.rate)


class Source(ThreadingHTTPServer):
    """The server: its files, its bucket, the body bytes it sent."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, files: Path, www: Path, rate: float) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.files, self.www = files, www
        self.bucket = TokenBucket(rate)
        self.sent = 0
        self.sent_lock = threading.Lock()

    def count(self, sent: int) -> None:
        with self.sent_lock:
            self.sent += sent


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Source

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log: /_stats counts what matters

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _small(self, status: int, data: bytes, kind: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_stats":
            data = json.dumps({"sent": self.server.sent}).encode()
            self._small(200, data, "application/json", body)
            return
        if path == "/v1/snapshots":
            data = (self.server.www / "v1" / "snapshots").read_bytes()
            self._small(200, data, "application/json", body)
            return
        name = path.removeprefix("/v1/snapshot/")
        file = self.server.files / name
        if name == path or "/" in name or not file.is_file():
            self._small(404, b"not found\n", "text/plain", body)
            return
        self._file(file, body)

    def _file(self, file: Path, body: bool) -> None:
        with open(file, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            start, end, status = 0, size, 200
            asked = _RANGE.fullmatch(self.headers.get("range", "").strip())
            if asked:
                start = int(asked[1])
                end = min(size, int(asked[2]) + 1) if asked[2] else size
                if start >= size or end <= start:
                    self.send_response(416)
                    self.send_header("content-range", f"bytes */{size}")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(end - start))
            self.send_header("accept-ranges", "bytes")
            self.send_header("last-modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            self.send_header("etag", f'"{int(stat.st_mtime):x}-{size:x}"')
            if status == 206:
                self.send_header("content-range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                self._send(f.fileno(), start, end)

    def _send(self, fd: int, start: int, end: int) -> None:
        """``sendfile`` the bytes ``start`` to ``end``, each slice paid for first."""
        sock = self.connection.fileno()
        position = start
        try:
            while position < end:
                count = min(SLICE, end - position)
                self.server.bucket.take(count)
                while count:
                    sent = os.sendfile(sock, fd, position, count)
                    if sent == 0:
                        return
                    position += sent
                    count -= sent
                    self.server.count(sent)
        except OSError:
            self.close_connection = True  # the client left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="the archives")
    parser.add_argument("--www", type=Path, required=True, help="holds v1/snapshots")
    parser.add_argument("--rate", type=float, required=True, help="bytes a second, in total")
    args = parser.parse_args()
    server = Source(args.port, args.dir, args.www, args.rate)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
