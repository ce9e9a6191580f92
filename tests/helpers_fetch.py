"""Fixtures for ``fetch`` tests that need more than a real tracker gives: a tracker's JSON
written by the test (the additive ``url`` and ``sha256`` keys of a file, many URLs for one
archive), sidecar-like upstreams, and upstreams that answer something hostile.

Both are real HTTP/1.1 servers on 127.0.0.1 (:class:`helpers_upstream.FakeUpstream`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio
from helpers_proxy import GROUP
from helpers_upstream import FakeUpstream, Seen, send_body, send_event, sidecar_listing


def sidecar_url(up: FakeUpstream, name: str) -> str:
    """Where a sidecar serves an archive (``{api_path}/v1/snapshot/{name}``)."""
    return f"{up.base}/v1/snapshot/{name}"


def tracker_entries(
    up: FakeUpstream,
    files: dict[str, bytes],
    *,
    url: bool = True,
    sha256: dict[str, str] | None = None,
    sizes: bool = True,
) -> list[dict[str, Any]]:
    """The tracker's JSON entries of a sidecar ``up`` holding ``files``: bare file names, and
    (``url``) each file's absolute URL at the sidecar, (``sha256``) its digest."""
    entries = sidecar_listing(files)
    for entry in entries:
        entry.update({"target": up.base, "group": GROUP})
        for f in entry["files"]:
            if url:
                f["url"] = sidecar_url(up, f["file_name"])
            if sha256 and f["file_name"] in sha256:
                f["sha256"] = sha256[f["file_name"]]
            if not sizes:
                f.pop("size", None)
    return entries


@attrs.define
class FakeTracker(FakeUpstream):
    """A tracker's JSON routes with the entries a test gives (best first), and its archive
    route ``/v1/{group}/{name}`` redirecting where ``behaviour[name].redirect_to`` says."""

    entries: list[dict[str, Any]] = attrs.Factory(list)
    #: Listing routes answered 503, as a tracker restarting answers them.
    unavailable: set[str] = attrs.Factory(set)

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, req: Any) -> bool:
        target = urlsplit(req.target.decode())
        if target.path not in ("/v1/best_snapshots", "/v1/snapshots"):
            return await super()._answer(conn, stream, req)
        self.seen.append(seen_of(req))
        if target.path in self.unavailable:
            head = [("content-length", "0")]
            await send_event(conn, stream, h11.Response(status_code=503, headers=head))
            await send_event(conn, stream, h11.EndOfMessage())
            return True
        query = parse_qs(target.query)
        slot, group = query.get("slot"), query.get("group")
        entries = self.entries
        if target.path == "/v1/snapshots" and slot:
            entries = [e for e in entries if str(e.get("base_slot")) == slot[0]]
        if group:  # a tracker's listing of one group: that group's entries only
            entries = [e for e in entries if e.get("group") == group[0]]
        if target.path == "/v1/best_snapshots":
            entries = entries[:25]  # ``max`` absent: 25, as a tracker answers
        body = json.dumps(entries).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(body)))]
        await send_event(conn, stream, h11.Response(status_code=200, headers=head))
        await send_body(conn, stream, req, body)
        return True


def seen_of(req: Any) -> Seen:
    """The record of a request answered outside FakeUpstream's own code."""
    headers = {name.decode().lower(): value.decode("latin-1") for name, value in req.headers}
    return Seen(req.method.decode(), req.target.decode(), headers)


@attrs.define
class Canned:
    """A fixed answer: status, headers (values sent as UTF-8 bytes), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@attrs.define
class HostileUpstream(FakeUpstream):
    """A FakeUpstream that answers the names in ``canned`` with that fixed answer, whatever
    was asked (a ``Range`` included)."""

    canned: dict[str, Canned] = attrs.Factory(dict)

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, req: Any) -> bool:
        name = req.target.decode().split("?")[0].rsplit("/", 1)[-1]
        answer = self.canned.get(name)
        if answer is None:
            return await super()._answer(conn, stream, req)
        self.seen.append(seen_of(req))
        head = [(k, v.encode()) for k, v in answer.headers]
        await send_event(conn, stream, h11.Response(status_code=answer.status, headers=head))
        await send_body(conn, stream, req, answer.body)
        return True


@attrs.define
class CountingUpstream(FakeUpstream):
    """A FakeUpstream that counts the first-byte checks (``Range: bytes=0-0``) it answers at
    once, and their peak."""

    checking: int = 0
    peak_checks: int = 0

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, req: Any) -> bool:
        check = (b"range", b"bytes=0-0") in [(k.lower(), v) for k, v in req.headers]
        if not check:
            return await super()._answer(conn, stream, req)
        self.checking += 1
        self.peak_checks = max(self.peak_checks, self.checking)
        try:
            return await super()._answer(conn, stream, req)
        finally:
            self.checking -= 1


@attrs.define
class SigningStore(FakeUpstream):
    """A bucket behind presigned URLs: ``/sign/{name}`` redirects to ``/files/{name}?sig=N``
    (``/moved/{name}`` once ``moved`` and the first link expired), and a link expires after
    ``uses`` GETs of it: it answers 403, as S3 does, and the next one is signed."""

    uses: int = 3
    signature: int = 1
    used: int = 0
    moved: bool = False

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, req: Any) -> bool:
        target = urlsplit(req.target.decode())
        name = target.path.rsplit("/", 1)[-1]
        if target.path.startswith("/sign/"):
            where = "moved" if self.moved and self.signature > 1 else "files"
            location = f"/{where}/{name}?sig={self.signature}"
            return await self._head_only(conn, stream, req, 302, [("location", location)])
        if parse_qs(target.query).get("sig") != [str(self.signature)]:
            return await self._head_only(conn, stream, req, 403, [])
        self.used += 1
        if self.used % self.uses == 0:
            self.signature += 1  # this GET is answered, the next one with it is refused
        return await super()._answer(conn, stream, req)

    async def _head_only(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        req: Any,
        status: int,
        headers: list[tuple[str, str]],
    ) -> bool:
        self.seen.append(seen_of(req))
        head = [*headers, ("content-length", "0")]
        await send_event(conn, stream, h11.Response(status_code=status, headers=head))
        await send_event(conn, stream, h11.EndOfMessage())
        return True
