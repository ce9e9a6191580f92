"""Where a request's bytes come from: the one place that picks the byte path.

An archive request is answered by exactly one of: a redirect to the source (redirect mode), a
file the tracker reads itself (a local source), or the proxy with its disk cache (proxy mode).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol
from urllib.parse import quote

import quart

from tracker.config import Config
from tracker.downloads import account_download
from tracker.errors import RequestError
from tracker.fileresponse import ChunkBudget, file_response
from tracker.index import Index, SnapshotSource
from tracker.metrics import Metrics, Outcome
from tracker.snapshots import SnapshotFile


class ByteStreamer(Protocol):
    """What proxy mode plugs in: streams (and possibly caches) a remote archive."""

    async def serve(
        self,
        request: quart.Request,
        group: str,
        name: str,
        found: list[tuple[SnapshotFile, SnapshotSource]],
    ) -> quart.Response:
        """Answer ``request`` for archive ``name`` of ``group`` from one of ``found``."""
        ...


def redirect(location: str) -> quart.Response:
    """A 303 with a lower-case ``location`` header and an empty body."""
    response = quart.Response(b"", status=303, content_type="text/plain")
    response.headers["location"] = location
    return response


def tracker_path(name: str, group: str, *, alias: bool) -> str:
    """The tracker's own route for an archive: ``/{name}`` or ``/v1/{name}?group={group}``."""
    return f"/{name}" if alias else f"/v1/{name}?group={quote(group, safe='')}"


class Delivery:
    """Chooses redirect, local file or proxy for each archive request."""

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        *,
        streamer: ByteStreamer | None = None,
        metrics: Metrics | None = None,
        budget: ChunkBudget | None = None,
    ) -> None:
        self._config = config
        self._budget = budget
        self._index = index
        self._streamer = streamer
        self._metrics = metrics

    def serves_bytes(self, f: SnapshotFile) -> bool:
        """True when the tracker answers for ``f`` itself (local file or proxy mode)."""
        return bool(f.path) or self._config().proxy_snapshot_downloads

    def location(self, group: str, source: SnapshotSource, *, alias: bool) -> str:
        """The ``location`` of a short redirect to ``source``'s own archive."""
        f = source.info.files[0]
        if self.serves_bytes(f):
            return tracker_path(f.bare_name, group, alias=alias)
        return f.url

    async def serve(self, request: quart.Request, group: str, name: str) -> quart.Response:
        """Answer a concrete archive request. Raises RequestError(404) when nobody has it.

        Every archive body counts as an active stream while it is sent and logs one
        ``download`` line at its end (bytes, duration, outcome).
        """
        response = await self._answer(request, group, name)
        if response.status_code in (200, 206) and "content-disposition" not in response.headers:
            # The archive's real name for `curl -OJ`, aria2c and browsers, whatever URL
            # (often /snapshot.tar.bz2 before its redirect) the client started from.
            response.headers["content-disposition"] = f'attachment; filename="{name}"'
        account_download(response, request, self._metrics, group=group, file=name)
        return response

    async def _answer(self, request: quart.Request, group: str, name: str) -> quart.Response:
        found = self._index.find_file(group, name)
        if not found:
            raise RequestError(404, f"no source of group {group!r} advertises {name}")
        f = found[0][0]
        if f.path:
            self._count("local")
            on_bytes = partial(self._metrics.add_served_bytes, "local") if self._metrics else None
            try:
                return await file_response(f.path, request, on_bytes=on_bytes, budget=self._budget)
            except FileNotFoundError as exc:
                raise RequestError(404, f"{name} is gone from its local directory") from exc
            except OSError as exc:  # a symlink, FIFO or directory put there since the scrape
                raise RequestError(404, f"{name} is not a regular file any more") from exc
        if self._config().proxy_snapshot_downloads and self._streamer is not None:
            return await self._streamer.serve(request, group, name, found)
        self._count("redirect")
        return redirect(f.url)

    def _count(self, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.count_outcome(outcome)
