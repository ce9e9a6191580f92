"""A fake upstream for proxy-mode, cache and fetch tests: :class:`FakeUpstream` is a real
HTTP/1.1 server on 127.0.0.1 (trio + h11), serving archives by the last path segment with
Range/HEAD/If-None-Match support, and faults on demand (:class:`Behaviour`): rate limits, a
status, a connection dropped mid-body, a 200 shorter than its Content-Length, no
Content-Length, a redirect, extra headers. It records every request it got (:class:`Seen`).
:func:`upstream_serving` runs one for the duration of a block; the bytes it serves come from
:func:`helpers_bytes.archive_bytes`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

from tracker.core.snapshots import parse_archive_name

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
    accept_ranges: bool = True  # send ``Accept-Ranges: bytes``
    # body bytes per second of a request without Range (a real transfer, not a speed test)
    unranged_rate: float | None = None
    # A source that games the speed tests: every answer but a speed test's (a Range from
    # byte 0 that is not a resume, ``bytes=0-N``) closes its connection after this many body
    # bytes (``real_drop_after``), or waits for ``resume`` after them (``real_pause_at``)
    real_drop_after: int | None = None
    real_pause_at: int | None = None
    # ... or answers every GET but a speed test's with this status (``real_status``), or
    # after this many seconds (``real_delay``; math.inf: never)
    real_status: int | None = None
    real_delay: float = 0.0
    # evaluate If-Range as nginx does: a Range applies only when If-Range equals the ETag or
    # the Last-Modified exactly (the default ignores If-Range)
    if_range: bool = False
    # close the connection once one send waited this many seconds for the peer to take
    # bytes, as nginx's ``send_timeout`` does (None: wait for ever)
    send_timeout: float | None = None


def _speed_test(headers: Mapping[str, str]) -> bool:
    """Whether a request is a speed test's (a Range from byte 0, ``bytes=0-N``)."""
    return re.fullmatch(r"bytes=0-\d+", headers.get("range", "")) is not None


def agave_rpc(rate: float | None = None) -> Behaviour:
    """How agave's RPC serves a snapshot archive (rpc/src/rpc_service.rs,
    ``process_file_get``): the whole file as a 200 with ``Content-Length`` and nothing else,
    whatever the request's ``Range``; no ETag, no Last-Modified, no Accept-Ranges."""
    return Behaviour(
        rate=rate, ignore_range=True, accept_ranges=False, etag=None, last_modified=None
    )


@attrs.define
class Seen:
    """One request the upstream got."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated names joined with ", "
    body_sent: int = 0
    aborted: bool = False  # the peer went away before the body was sent
    timed_out: bool = False  # closed by ``Behaviour.send_timeout``: the peer took nothing
    #: When its body's first and last pieces went out (trio's clock; 0: none did).
    first_sent: float = 0.0
    last_sent: float = 0.0


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
    #: Body bytes (of all requests together) after which the server dies: every answer
    #: breaks off, and later connections are closed unanswered (None: never).
    dies_after: int | None = None
    _streams: set[trio.SocketStream] = attrs.Factory(set)

    @property
    def body_sent(self) -> int:
        """Body bytes sent so far, all requests together."""
        return sum(s.body_sent for s in self.seen)

    @property
    def dead(self) -> bool:
        return self.dies_after is not None and self.body_sent >= self.dies_after

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
                if request is None or self.dead:
                    return
                self.answering += 1
                self._streams.add(stream)
                # A request whose client closed its connection is over for the client even
                # while this server has not written to it since (a real server notices at
                # its next write): not counted.
                at_once = sum(1 for s in self._streams if not _closed_by_peer(s))
                self.most_at_once = max(self.most_at_once, at_once)
                try:
                    keep = await self._answer(conn, stream, request)
                finally:
                    self.answering -= 1
                    self._streams.discard(stream)
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
            await send_event(
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
            await send_body(conn, stream, req, body)
            return True
        name = path.rsplit("/", 1)[-1]
        how = self.behaviour.get(name, Behaviour())
        data = self.files.get(name)
        if how.delay:
            await trio.sleep(how.delay)
        if seen.method == "GET" and not _speed_test(headers):
            if how.real_delay:
                await trio.sleep(how.real_delay)
            if how.real_status is not None:
                how = attrs.evolve(how, status=how.real_status)
        if data is not None and how.gzip_if_asked and "gzip" in headers.get("accept-encoding", ""):
            data = gzip.compress(data, compresslevel=1, mtime=0)
            how = attrs.evolve(how, headers=[*how.headers, ("content-encoding", "gzip")])
        if how.redirect_to is not None:
            await send_event(
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
            await send_event(conn, stream, h11.EndOfMessage())
            return True
        if data is None or how.status is not None:
            status = how.status or 404
            body = f"status {status}\n".encode()
            await send_event(
                conn,
                stream,
                h11.Response(
                    status_code=status, headers=[("content-length", str(len(body))), *how.headers]
                ),
            )
            await send_body(conn, stream, req, body)
            return True
        stale = how.if_range and headers.get("if-range", how.etag) not in (
            how.etag,
            how.last_modified,
        )
        ignored = how.ignore_range or stale
        asked = {k: v for k, v in headers.items() if k != "range"} if ignored else headers
        status, start, length, extra = _plan(asked, len(data))
        validators = [("etag", how.etag), ("last-modified", how.last_modified)]
        response_headers = [
            *((k, v) for k, v in validators if v is not None),
            *([("accept-ranges", "bytes")] if how.accept_ranges else []),
            ("content-type", "application/x-zstd"),
            ("server", "fake-upstream"),
            *extra,
            *how.headers,
        ]
        if not how.chunked:
            response_headers.append(("content-length", str(length)))
        await send_event(conn, stream, h11.Response(status_code=status, headers=response_headers))
        if seen.method == "HEAD" or status in (304, 416):
            await send_event(conn, stream, h11.EndOfMessage())
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
        speed_test = _speed_test(seen.headers)
        if how.real_drop_after is not None and not speed_test:
            limit = min(limit, how.real_drop_after)
        if how.real_pause_at is not None and not speed_test:
            how = attrs.evolve(how, pause_at=how.real_pause_at)
        try:
            while seen.body_sent < limit:
                if self.dead:
                    return False  # died: the connection breaks off mid-body
                if how.pause_at is not None and seen.body_sent >= how.pause_at:
                    await _pause(stream, how.resume)
                end = min(limit, seen.body_sent + self.chunk)
                if how.pause_at is not None and seen.body_sent < how.pause_at:
                    end = min(end, how.pause_at)
                piece = body[seen.body_sent : end]
                with trio.move_on_after(how.send_timeout or math.inf) as waited:
                    await send_event(conn, stream, h11.Data(data=piece))
                if waited.cancelled_caught:  # the peer took nothing: the connection closes
                    seen.aborted = seen.timed_out = True
                    return False
                seen.body_sent = end
                seen.last_sent = trio.current_time()
                seen.first_sent = seen.first_sent or seen.last_sent
                if rate and end < limit:  # after the last piece the answer is over
                    await trio.sleep(len(piece) / rate)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            seen.aborted = True
            raise
        if limit < len(body):
            return False  # a fault: close without finishing the message
        await send_event(conn, stream, h11.EndOfMessage())
        return True


def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the client has closed ``stream`` (an end of file waits in its socket)."""
    try:
        with socket.fromfd(stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
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


async def send_event(conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
    """Send one h11 event on ``stream`` (the bytes it makes, if any)."""
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def send_body(conn: h11.Connection, stream: trio.SocketStream, req: Any, body: bytes) -> None:
    """End an answer whose head is sent with ``body``, none to a HEAD: a real server keeps
    the connection after a HEAD's answer (h11 refuses the body, and the connection closed
    just as the client sent its next request on it: reset)."""
    if req.method != b"HEAD":
        await send_event(conn, stream, h11.Data(data=body))
    await send_event(conn, stream, h11.EndOfMessage())


# -- the tracker under test ---------------------------------------------------------------


@asynccontextmanager
async def serving(up: FakeUpstream) -> AsyncIterator[FakeUpstream]:
    """Run ``up`` on 127.0.0.1 for the duration of the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        yield up
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def upstream_serving(files: dict[str, bytes], **kwargs: Any) -> AsyncIterator[FakeUpstream]:
    """A :class:`FakeUpstream` serving ``files`` (``kwargs``: its other fields) for the
    duration of the block."""
    async with serving(FakeUpstream(files=dict(files), **kwargs)) as up:
        yield up
