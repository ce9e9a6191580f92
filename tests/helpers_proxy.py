"""Fixtures for proxy-mode and cache tests: fake upstream servers and a tracker to test.

- :class:`FakeUpstream` is a real HTTP/1.1 server on 127.0.0.1 (trio + h11), serving archives
  by the last path segment with Range/HEAD/If-None-Match support, and faults on demand: rate
  limits, a status, a connection dropped mid-body, a 200 shorter than its Content-Length, no
  Content-Length, a redirect, extra headers. It records every request it got.
- :func:`running_tracker` runs the public app (``create_app``) on a real hypercorn with a
  :class:`ProxyStreamer` and its :class:`Transfers` nursery, an index fed by the test.
- :func:`raw_request` talks HTTP over a plain socket to see the wire (framing, connection
  close after a broken body).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import trio
from helpers_server import serve_app

from tracker.config.schema import BearerAuth, Config, TargetGroup
from tracker.core.index import Index, TargetKey
from tracker.core.metrics import Metrics
from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.proxy.streamer import CacheFactory, ProxyStreamer
from tracker.proxy.transfers import Transfers
from tracker.proxy.upstream import ProxySettings
from tracker.service import Components, Tracker, build
from tracker.zerocopy.connection import Connections

GROUP = "mainnet"
TOKEN = "s3cret-token"
MiB = 1024 * 1024
UPSTREAM_ETAG = '"upstream-etag"'
UPSTREAM_LAST_MODIFIED = "Sat, 21 Nov 2026 10:00:00 GMT"


def sidecar_listing(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """A sidecar's ``/v1/snapshots`` answer for ``files`` (each incremental with its full)."""
    described = {}
    for name, data in files.items():
        parsed = parse_archive_name(name)
        assert parsed is not None, name
        entry: dict[str, Any] = {"file_name": name, "slot": parsed.slot, "hash": parsed.hash}
        entry.update({"ext": parsed.ext, "size": len(data)})
        if parsed.base_slot:
            entry["base_slot"] = parsed.base_slot
        described[name] = (parsed, entry)
    fulls = {p.slot: e for p, e in described.values() if p.is_full}
    infos = []
    for parsed, entry in described.values():
        chain = [entry] if parsed.is_full else [entry, fulls[parsed.base_slot]]
        base = parsed.slot if parsed.is_full else parsed.base_slot
        infos.append(
            {
                "slot": parsed.slot,
                "base_slot": base,
                "hash": parsed.hash,
                "files": chain,
                "size": sum(f["size"] for f in chain),
            }
        )
    return infos


def archive_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@attrs.define
class Behaviour:
    """How a :class:`FakeUpstream` answers a file (defaults: a correct 200/206)."""

    status: int | None = None
    rate: float | None = None  # body bytes per second
    drop_after: int | None = None  # close the connection after this many body bytes
    short_by: int = 0  # announce the full length, send this many bytes less, then close
    chunked: bool = False  # no content-length: chunked framing
    redirect_to: str | None = None
    headers: list[tuple[str, str]] = attrs.Factory(list)
    pause_at: int | None = None  # body bytes after which sending waits for ``resume``
    resume: trio.Event = attrs.Factory(trio.Event)
    etag: str | None = UPSTREAM_ETAG  # None: no ETag header
    last_modified: str | None = UPSTREAM_LAST_MODIFIED  # None: no Last-Modified header
    delay: float = 0.0  # seconds before the response head (math.inf: never answer)
    body_delay: float = 0.0  # seconds between the head and the first body byte
    gzip_if_asked: bool = False  # a gzip-coded body for a client whose accept-encoding has gzip
    ignore_range: bool = False  # answer a Range request with 200 and the whole body
    # body bytes per second of a request without Range (a real transfer, not a speed test)
    unranged_rate: float | None = None


@attrs.define
class Seen:
    """One request the upstream got."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated names joined with ", "
    body_sent: int = 0
    aborted: bool = False  # the peer went away before the body was sent


@attrs.define
class FakeUpstream:
    """A small HTTP/1.1 file server with faults. Start with ``nursery.start(up.run)``."""

    files: dict[str, bytes] = attrs.Factory(dict)
    behaviour: dict[str, Behaviour] = attrs.Factory(dict)
    seen: list[Seen] = attrs.Factory(list)
    base: str = ""
    chunk: int = 64 * 1024
    #: When set, ``GET /v1/snapshots`` answers this JSON (a sidecar's listing).
    listing: list[dict[str, Any]] | None = None
    #: The loopback address to listen on (127.0.0.2, ... bind without any setup on Linux).
    host: str = "127.0.0.1"
    #: Requests being answered now, and the most there ever were at once.
    answering: int = 0
    most_at_once: int = 0

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"

    def gets(self, name: str | None = None) -> list[Seen]:
        return [
            s for s in self.seen if s.method == "GET" and (name is None or s.target.endswith(name))
        ]

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        self.base = f"http://{self.host}:{port}"
        task_status.started(self.base)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_request(conn, stream)
                if request is None:
                    return
                self.answering += 1
                self.most_at_once = max(self.most_at_once, self.answering)
                try:
                    keep = await self._answer(conn, stream, request)
                finally:
                    self.answering -= 1
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, req: Any) -> bool:
        headers: dict[str, str] = {}
        for name, value in req.headers:
            key = name.decode().lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        seen = Seen(req.method.decode(), req.target.decode(), headers)
        self.seen.append(seen)
        path = seen.target.split("?")[0]
        if self.listing is not None and path.endswith("/v1/snapshots"):
            body = json.dumps(self.listing).encode()
            await _send(
                conn,
                stream,
                h11.Response(
                    status_code=200,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ],
                ),
            )
            await _send(conn, stream, h11.Data(data=body))
            await _send(conn, stream, h11.EndOfMessage())
            return True
        name = path.rsplit("/", 1)[-1]
        how = self.behaviour.get(name, Behaviour())
        data = self.files.get(name)
        if how.delay:
            await trio.sleep(how.delay)
        if data is not None and how.gzip_if_asked and "gzip" in headers.get("accept-encoding", ""):
            data = gzip.compress(data, compresslevel=1, mtime=0)
            how = attrs.evolve(how, headers=[*how.headers, ("content-encoding", "gzip")])
        if how.redirect_to is not None:
            await _send(
                conn,
                stream,
                h11.Response(
                    status_code=302,
                    headers=[
                        ("location", how.redirect_to),
                        ("content-length", "0"),
                        *how.headers,
                    ],
                ),
            )
            await _send(conn, stream, h11.EndOfMessage())
            return True
        if data is None or how.status is not None:
            status = how.status or 404
            body = f"status {status}\n".encode()
            await _send(
                conn,
                stream,
                h11.Response(
                    status_code=status, headers=[("content-length", str(len(body))), *how.headers]
                ),
            )
            await _send(conn, stream, h11.Data(data=body))
            await _send(conn, stream, h11.EndOfMessage())
            return True
        asked = {k: v for k, v in headers.items() if k != "range"} if how.ignore_range else headers
        status, start, length, extra = _plan(asked, len(data))
        validators = [("etag", how.etag), ("last-modified", how.last_modified)]
        response_headers = [
            *((k, v) for k, v in validators if v is not None),
            ("accept-ranges", "bytes"),
            ("content-type", "application/x-zstd"),
            ("server", "fake-upstream"),
            *extra,
            *how.headers,
        ]
        if not how.chunked:
            response_headers.append(("content-length", str(length)))
        await _send(conn, stream, h11.Response(status_code=status, headers=response_headers))
        if seen.method == "HEAD" or status in (304, 416):
            await _send(conn, stream, h11.EndOfMessage())
            return True
        if how.body_delay:
            await trio.sleep(how.body_delay)
        return await self._body(conn, stream, seen, how, data[start : start + length])

    async def _body(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        seen: Seen,
        how: Behaviour,
        body: bytes,
    ) -> bool:
        limit = len(body) - how.short_by
        rate = how.rate
        if how.unranged_rate is not None and "range" not in seen.headers:
            rate = how.unranged_rate
        if how.drop_after is not None:
            limit = min(limit, how.drop_after)
        try:
            while seen.body_sent < limit:
                if how.pause_at is not None and seen.body_sent >= how.pause_at:
                    await _pause(stream, how.resume)
                end = min(limit, seen.body_sent + self.chunk)
                if how.pause_at is not None and seen.body_sent < how.pause_at:
                    end = min(end, how.pause_at)
                piece = body[seen.body_sent : end]
                await _send(conn, stream, h11.Data(data=piece))
                seen.body_sent = end
                if rate:
                    await trio.sleep(len(piece) / rate)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            seen.aborted = True
            raise
        if limit < len(body):
            return False  # a fault: close without finishing the message
        await _send(conn, stream, h11.EndOfMessage())
        return True


async def _pause(stream: trio.SocketStream, resume: trio.Event) -> None:
    """Wait for ``resume``; a peer closing the connection meanwhile ends the wait with
    BrokenResourceError (a paused server still notices its client leaving)."""
    closed = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal closed
            try:
                data = await stream.receive_some(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                closed = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await resume.wait()
        nursery.cancel_scope.cancel()
    if closed:
        raise trio.BrokenResourceError("peer closed the connection")


def _plan(headers: dict[str, str], size: int) -> tuple[int, int, int, list[tuple[str, str]]]:
    if headers.get("if-none-match") == UPSTREAM_ETAG:
        return 304, 0, 0, []
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("range", ""))
    if match is None:
        return 200, 0, size, []
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:
        start, end = max(0, size - int(last)), size - 1
    if start >= size:
        return 416, 0, 0, [("content-range", f"bytes */{size}")]
    return 206, start, end - start + 1, [("content-range", f"bytes {start}-{end}/{size}")]


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    request = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


# -- the tracker under test ---------------------------------------------------------------


@attrs.define
class TrackerUnderTest:
    """A running tracker: its base URL and everything a test may look at or change."""

    base: str
    parts: Components
    #: Zero-copy pieces sent (None: served by plain hypercorn, no zero-copy).
    connections: Connections | None = None

    @property
    def config(self) -> Config:
        return self.parts.tracker.config

    @config.setter
    def config(self, value: Config) -> None:
        self.parts.tracker.config = value

    @property
    def index(self) -> Index:
        return self.parts.tracker.index

    @property
    def metrics(self) -> Metrics:
        return self.parts.tracker.metrics

    @property
    def transfers(self) -> Transfers:
        return self.parts.transfers

    @property
    def streamer(self) -> ProxyStreamer:
        return self.parts.streamer

    @property
    def app(self) -> Any:
        return self.parts.app

    @property
    def cache_root(self) -> Path:
        return Path(self.config.proxy_snapshot_cache_dir)

    def group_dir(self, group: str = GROUP) -> Path:
        return self.cache_root / group

    def cached(self, group: str = GROUP) -> list[str]:
        """Names in the group's cache directory (temp files included), sorted."""
        directory = self.group_dir(group)
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def outcome(self, outcome: str) -> float:
        return self.counter("snapshot_tracker_archive_requests_total", outcome=outcome)

    def url(self, name: str, group: str = GROUP) -> str:
        return f"{self.base}/v1/{name}?group={group}"


def make_config(cache_dir: Path | None, **overrides: Any) -> Config:
    group = TargetGroup(group=GROUP, bearer_auth=BearerAuth(token=TOKEN))
    settings: dict[str, Any] = {
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(cache_dir) if cache_dir is not None else "",
        "default_group": GROUP,
        "target_groups": (group,),
        "shutdown_grace": 1.0,
        # Opaque random blobs, not archives: stored unchecked (tests of the archive check
        # build real archives and turn it on).
        "verify_archives": False,
    }
    settings.update(overrides)
    return Config(**settings)


def advertise(
    index: Index,
    target: str,
    files: list[tuple[str, str, int]],
    *,
    group: str = GROUP,
    age: float = 0.0,
) -> None:
    """Make ``target`` advertise ``files`` as (name, url, size); ``age`` seconds old."""
    snapshot_files = []
    for name, url, size in files:
        parsed = parse_archive_name(name)
        assert parsed is not None, name
        snapshot_files.append(SnapshotFile(name=parsed, file_name=url, size=size, url=url))
    when = datetime.now(UTC) - timedelta(seconds=age)
    index.apply(TargetKey(group, target), chains_from_files(snapshot_files), when)


def advertise_files(index: Index, up: FakeUpstream, files: dict[str, bytes]) -> None:
    """``up`` advertises every one of ``files`` (name -> bytes) at its own URL."""
    advertise(index, up.base, [(name, up.url(name), len(data)) for name, data in files.items()])


@asynccontextmanager
async def serving(up: FakeUpstream) -> AsyncIterator[FakeUpstream]:
    """Run ``up`` on 127.0.0.1 for the duration of the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        yield up
        nursery.cancel_scope.cancel()


FAST = ProxySettings(connect_timeout=2.0, answer_timeout=5.0, read_timeout=10.0)


@asynccontextmanager
async def running_tracker(
    config: Config,
    *,
    settings: ProxySettings = FAST,
    cache_factory: CacheFactory | None = None,
    index: Index | None = None,
    app_config: dict[str, Any] | None = None,
    plain: bool = False,
) -> AsyncIterator[TrackerUnderTest]:
    """The tracker's own components (:func:`tracker.service.build`, as the service builds
    them) serving the public app on 127.0.0.1:0, with an index the test feeds (no scrape
    loop); stopped (transfers cancelled) on exit.

    ``plain`` serves it with plain hypercorn: no sendfile or splice, every byte through
    Python (the path of HTTP/2 clients and TLS upstreams)."""
    tracker = Tracker(
        config, index=index or Index(clock=trio.current_time), metrics=Metrics(process=False)
    )
    async with httpx.AsyncClient(trust_env=False) as rpc:
        parts = build(tracker, rpc, settings=settings, cache_factory=cache_factory)
        parts.app.config.update(app_config or {})
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(parts.transfers.run)
                parts.streamer.cache()  # start-up cleanup, as the service does
                connections = None if plain else Connections()
                serve = partial(serve_app, connections=connections, plain=plain)
                base = await nursery.start(serve, parts.public)
                yield TrackerUnderTest(base, parts, connections)
                parts.transfers.close(0)
                nursery.cancel_scope.cancel()
        finally:
            await parts.aclose()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 10 ms until true; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# -- the wire ---------------------------------------------------------------------------------


@attrs.define
class Wire:
    """A raw HTTP exchange: status line, header lines as sent, body bytes, how it ended."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the server closed the connection

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


async def raw_request(
    base: str,
    target: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    read_limit: int | None = None,
    idle: float = 0.3,
) -> Wire:
    """Send one request over a fresh socket and read until the server closes it, the body
    announced by Content-Length is complete (then wait ``idle`` s for a close), or
    ``read_limit`` bytes of body arrived (then close our side)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = bytearray()
    closed = False
    async with stream:
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"connection closed before headers: {bytes(data)!r}")
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = [tuple(line.split(": ", 1)) for line in header_lines]
        wire = Wire(int(status_line.split()[1]), [(k, v) for k, v in parsed], b"", False)
        body = bytearray(rest)
        length = wire.header("content-length")
        expected = int(length) if length is not None and method != "HEAD" else None
        if method == "HEAD" or wire.status in (304,):
            expected = 0
        while read_limit is None or len(body) < read_limit:
            if expected is not None and len(body) >= expected:
                with trio.move_on_after(idle):
                    extra = await stream.receive_some(65536)
                    body += extra
                    closed = not extra
                break
            chunk = await stream.receive_some(65536)
            if not chunk:
                closed = True
                break
            body += chunk
    wire.body = bytes(body)
    wire.closed = closed
    return wire
