"""The short redirects answered before Quart: the API's hottest routes, at a fraction of the cost.

Every validator that (re)starts, and every monitoring probe, asks ``/snapshot.tar.bz2`` and
friends; the answer is a 303 computed from the index in microseconds, yet Quart's request
machinery (request and app contexts, routing, signals, response object) cost more than the
rest of the request together: a replica answered 0.66x the redirects of a bare quart-trio
hello-world (bench/README.md). :class:`ShortRedirects` answers these routes itself, as plain
ASGI, with the same status, headers and body as the Quart routes of :mod:`tracker.web.api`
(tests/test_shortcuts.py compares the two byte for byte). Anything it would not answer the
same way (a malformed or unknown ``group``, another method) goes on to Quart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from tracker.core.index import Index, SnapshotSource
from tracker.errors import RequestError
from tracker.web.queries import resolve_group

if TYPE_CHECKING:
    from tracker.web.api import ApiDeps

#: The short names and the kind of archive each redirects to.
SHORT_NAMES = {
    "snapshot.tar.bz2": "full",
    "snapshot.tar.zst": "full",
    "incremental-snapshot.tar.bz2": "incremental",
    "incremental-snapshot.tar.zst": "incremental",
}

_TEXT = (b"content-type", b"text/plain")
_NO_SNAPSHOT = b"no snapshot available\n"

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def best_source(index: Index, group: str, kind: str) -> SnapshotSource | None:
    """The best source of ``group`` for a short name's ``kind`` (full or incremental)."""
    return index.best_full(group) if kind == "full" else index.best_incremental(group)


class ShortRedirects:
    """ASGI wrapper: answers GET and HEAD of the short redirect routes, passes the rest on.

    ``best(group, kind)`` is the best source of a kind; ``location(group, source, alias)``
    the redirect's target (:meth:`tracker.web.delivery.Delivery.location`);
    ``on_response(route, status)`` counts the answer as Quart's ``after_request`` does.
    """

    def __init__(
        self,
        app: Any,
        deps: ApiDeps,
        best: Callable[[str, str], SnapshotSource | None],
        on_response: Callable[[str, int], None] | None = None,
    ) -> None:
        self.app = app
        self._deps = deps
        self._best = best
        self._on_response = on_response
        #: Requests answered here (not by Quart).
        self.answered = 0
        self._routes: dict[str, tuple[str, bool]] = {}
        for short, kind in SHORT_NAMES.items():
            self._routes[f"/v1/{short}"] = (kind, False)
            self._routes[f"/{short}"] = (kind, True)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self._routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        answer = None
        if route is not None and scope.get("method") in ("GET", "HEAD"):
            answer = self._answer(scope, *route)
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        self.answered += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        if self._on_response is not None:
            self._on_response(scope["path"], status)

    def _answer(self, scope: Any, kind: str, alias: bool) -> Answer | None:
        """The answer, or None when Quart must give it (an error with its own wording)."""
        config = self._deps.config()
        if alias:
            group = config.default_group
        else:
            try:
                group = resolve_group(config, _first_values(scope.get("query_string", b"")))
            except RequestError:
                return None
        source = self._best(group, kind)
        if source is None:
            if alias:  # the validator's own server: an empty 404
                return 404, [_TEXT, (b"content-length", b"0")], b""
            length = str(len(_NO_SNAPSHOT)).encode()
            return 202, [_TEXT, (b"content-length", length)], _NO_SNAPSHOT
        location = self._deps.delivery.location(group, source, alias=alias)
        try:
            value = location.encode("latin-1")  # as werkzeug encodes header values
        except UnicodeEncodeError:
            return None
        return 303, [_TEXT, (b"content-length", b"0"), (b"location", value)], b""


def _first_values(query: bytes) -> dict[str, str]:
    """The first value of each query parameter, as ``request.args.get`` gives it."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        values.setdefault(name, value)
    return values
