"""Redirects answered before Quart: the API's hottest routes, at a fraction of the cost.

Every validator that (re)starts, and every monitoring probe, asks ``/snapshot.tar.bz2`` and
friends; the answer is a 303 computed from the index in microseconds, yet Quart's request
machinery (request and app contexts, routing, signals, response object) cost more than the
rest of the request together: a replica answered 0.66x the redirects of a bare quart-trio
hello-world (bench/README.md). The same holds for an archive the object store holds, whose
GET is a 303 to a presigned URL (docs/http-api.md#with-an-object-store-object_store).
:class:`FastRedirects` answers these itself, as
plain ASGI, with the same status, headers and body as the Quart routes of
:mod:`tracker.web.api` (tests/integration/test_shortcuts.py and
tests/integration/test_objectstore.py compare the two byte for byte). Anything it would not
answer the same way (a malformed or unknown ``group``, another method, an archive served any
other way) goes on to Quart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs

from tracker.core.snapshots import parse_archive_name
from tracker.errors import RequestError
from tracker.ordering.index import Index, SnapshotSource
from tracker.web.queries import known_group, resolve_group

if TYPE_CHECKING:
    from tracker.web.deps import ApiDeps, ResponseCounter

#: The short names and the kind of archive each redirects to.
SHORT_NAMES = {
    "snapshot.tar.bz2": "full",
    "snapshot.tar.zst": "full",
    "incremental-snapshot.tar.bz2": "incremental",
    "incremental-snapshot.tar.zst": "incremental",
}

_TEXT = (b"content-type", b"text/plain")
_NO_SNAPSHOT = b"no snapshot available\n"

RawAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


def best_source(index: Index, group: str, kind: str) -> SnapshotSource | None:
    """The best source of ``group`` for a short name's ``kind`` (full or incremental)."""
    return index.best_full(group) if kind == "full" else index.best_incremental(group)


@attrs.frozen
class Short:
    """What a short redirect answers: a 303 to ``location``, or (no snapshot) ``status``
    with ``body``."""

    status: int
    location: str | None = None
    body: bytes = b""


def short_answer(
    best: SnapshotSource | None, location: Callable[[SnapshotSource], str], *, alias: bool
) -> Short:
    """The one rule of the short redirects, for the Quart routes and :class:`FastRedirects`
    alike: a 303 to the best source's ``location``; without one, a validator-compatible
    alias answers an empty 404 (as the validator's own server) and a ``/v1/`` route 202
    ``no snapshot available``."""
    if best is not None:
        return Short(303, location(best))
    return Short(404) if alias else Short(202, body=_NO_SNAPSHOT)


def _short_routes() -> dict[str, tuple[str, bool]]:
    """Each short route's path -> (kind, alias): ``/v1/{short}``, and the bare alias."""
    routes: dict[str, tuple[str, bool]] = {}
    for short, kind in SHORT_NAMES.items():
        routes[f"/v1/{short}"] = (kind, False)
        routes[f"/{short}"] = (kind, True)
    return routes


@attrs.define(eq=False)
class FastRedirects:
    """ASGI wrapper: answers GET and HEAD of the short redirect routes, and GETs of archives
    the object store sends to a presigned URL; passes the rest on.

    ``best(group, kind)`` is the best source of a kind; ``location(group, source, alias)``
    the redirect's target (:meth:`tracker.web.delivery.Delivery.location`);
    ``on_response(route, status, seconds)`` counts the answer as Quart's ``after_request``
    does.
    """

    app: Any
    _deps: ApiDeps
    _best: Callable[[str, str], SnapshotSource | None]
    _on_response: ResponseCounter | None = None
    #: Requests answered here (not by Quart).
    answered: int = attrs.field(default=0, init=False)
    _routes: dict[str, tuple[str, bool]] = attrs.field(init=False, factory=_short_routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        began = time.monotonic()
        answer, rule = None, ""
        if asks_websocket(scope):
            status = await refuse_websocket(scope, send)
            self.answered += 1
            if self._on_response is not None:
                self._on_response("unmatched", status, time.monotonic() - began)
            return
        if scope["type"] == "http" and unroutable_host(scope):
            answer, rule = bad_host_answer(scope.get("path", "")), "unmatched"
        elif scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = scope.get("path", "")
            route = self._routes.get(path)
            if route is not None:
                answer, rule = self._answer(scope, *route), path
            elif scope["method"] == "GET" and self._deps.config().object_store is not None:
                answer, rule = await self._bucket(scope, path)
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        self.answered += 1
        head = scope["method"] == "HEAD"  # HEAD: the GET's headers, no body (as Quart)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        # Counted before the body goes out: a client that asks /metrics right after its
        # answer finds it counted.
        if self._on_response is not None:
            self._on_response(rule, status, time.monotonic() - began)
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _bucket(self, scope: Any, path: str) -> tuple[RawAnswer | None, str]:
        """A GET of ``/v1/{group}/{name}`` or ``/{name}`` that the object store answers with
        a 303 (and the route's rule, for the metrics)."""
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "v1":
            group, text, rule = parts[2], parts[3], "/v1/<group>/<name>"
            try:
                group = known_group(self._deps.config(), group)
            except RequestError:
                return None, ""
        elif len(parts) == 2:
            group, text, rule = self._deps.config().default_group, parts[1], "/<name>"
        else:
            return None, ""
        parsed = parse_archive_name(text)
        if parsed is None:
            return None, ""
        agent = _header(scope, b"user-agent")
        location = await self._deps.delivery.bucket_location(group, parsed.file_name, agent)
        if location is None:
            return None, ""
        return _redirect(location), rule

    def _answer(self, scope: Any, kind: str, alias: bool) -> RawAnswer | None:
        """The answer, or None when Quart must give it (an error with its own wording)."""
        config = self._deps.config()
        if alias:
            group = config.default_group
        else:
            try:
                group = resolve_group(config, _first_values(scope.get("query_string", b"")))
            except RequestError:
                return None
        where = partial(self._deps.delivery.location, group, alias=alias)
        short = short_answer(self._best(group, kind), where, alias=alias)
        if short.location is not None:
            return _redirect(short.location)
        length = str(len(short.body)).encode()
        return short.status, [_TEXT, (b"content-length", length)], short.body


def unroutable_host(scope: Any) -> bool:
    """True when the request's ``Host`` is one Quart cannot route: werkzeug binds its URL map
    to the host's name encoded as IDNA, which refuses an empty label (``a..b``, ``.``) or
    one over 63 letters, and raises before any handler runs (a 500 with a traceback logged,
    uncounted). Such a request is answered 400 before Quart (:func:`bad_host_answer`)."""
    name = _header(scope, b"host").lower().partition(":")[0]
    try:
        name.encode("idna")
    except UnicodeError:
        return True
    return False


def is_json_route(path: str) -> bool:
    """True when the route at ``path`` answers JSON, its errors too: under ``/v1/`` but for
    an archive's name (a file's name has a dot; an error there is one line of text)."""
    return path.startswith("/v1/") and "." not in path.rsplit("/", 1)[-1]


def bad_host_answer(path: str) -> RawAnswer:
    """The 400 of a request :func:`unroutable_host` refuses, worded as the API's errors are
    (JSON under ``/v1/`` but for an archive's name, text elsewhere)."""
    reason = "malformed host header"
    if is_json_route(path):
        body = json.dumps({"error": reason}, separators=(",", ":")).encode()
        kind = (b"content-type", b"application/json")
    else:
        body, kind = f"{reason}\n".encode(), _TEXT
    return 400, [kind, (b"content-length", str(len(body)).encode())], body


#: The one line a WebSocket request is answered (:func:`refuse_websocket`).
NO_WEBSOCKET = "this server does not speak WebSocket"


def asks_websocket(scope: Any) -> bool:
    """True for a WebSocket request: a WebSocket scope, or an HTTP one of a GET that asks
    to switch to it (``connection: upgrade``, ``upgrade: websocket``), as the tracker's
    listeners give it (:func:`tracker.zerocopy.server.http_streams_only`)."""
    if scope["type"] == "websocket":
        return True
    if scope["type"] != "http" or scope.get("method") != "GET":
        return False
    tokens = _header(scope, b"connection").lower().split(",")
    upgrade = _header(scope, b"upgrade").strip().lower()
    return upgrade == "websocket" and any(token.strip() == "upgrade" for token in tokens)


async def refuse_websocket(scope: Any, send: Any) -> int:
    """Answer a WebSocket request (:func:`asks_websocket`) before Quart (no route speaks
    it, and Quart's error handlers, which read the HTTP request, raised on one: a 500 and a
    traceback logged for every upgrade a client sent): 400 with one line where the server
    can send an HTTP answer to it (an HTTP scope, or the ASGI ``websocket.http.response``
    extension), else the handshake refused (the server answers 403). An HTTP scope's
    connection is closed after it: what its client sends next is no HTTP. Returns the
    status."""
    body = f"{NO_WEBSOCKET}\n".encode()
    headers = [_TEXT, (b"content-length", str(len(body)).encode())]
    if scope["type"] == "http":
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return 400
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return 403
    await send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
    return 400


def checked_host(app: Any) -> Any:
    """``app`` (an ASGI app) behind the :func:`unroutable_host` check and the WebSocket
    refusal (:func:`refuse_websocket`): for the internal listener, whose requests do not
    pass :class:`FastRedirects`."""

    async def checked(scope: Any, receive: Any, send: Any) -> None:
        if asks_websocket(scope):
            await refuse_websocket(scope, send)
            return
        if scope["type"] != "http" or not unroutable_host(scope):
            await app(scope, receive, send)
            return
        status, headers, body = bad_host_answer(scope.get("path", ""))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return checked


def _first_values(query: bytes) -> dict[str, str]:
    """The first value of each query parameter, as ``request.args.get`` gives it."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        values.setdefault(name, value)
    return values


def _redirect(location: str) -> RawAnswer | None:
    """A 303 as :func:`tracker.web.delivery.redirect` makes it (None: not latin-1, which
    werkzeug would refuse in its own words)."""
    try:
        value = location.encode("latin-1")  # as werkzeug encodes header values
    except UnicodeEncodeError:
        return None
    return 303, [_TEXT, (b"content-length", b"0"), (b"location", value)], b""


def _header(scope: Any, name: bytes) -> str:
    """The first value of request header ``name`` (lower case), as werkzeug decodes it."""
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return ""
