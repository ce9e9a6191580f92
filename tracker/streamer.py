"""Proxy mode's byte path: cache hit, refresh, or plain proxy — the table of SPEC §8.

:class:`ProxyStreamer` is the :class:`tracker.delivery.ByteStreamer` of proxy mode. For a
concrete archive request it

1. serves the file from the disk cache when it is there (HEAD, Range and conditionals
   included; no upstream request);
2. otherwise, for a plain GET of the group's current best full or incremental with no refresh
   of it running, becomes that file's refresher: the upstream bytes go to the client and to a
   temp file at once (:mod:`tracker.transfers`, :mod:`tracker.cache`);
3. otherwise streams from upstream without caching (HEAD, Range or conditional requests,
   other files, a refresh already running, no cache configured).

"Plain" GET: no ``Range``, ``If-Range`` or conditional header. A conditional or partial
answer from upstream could not fill the cache, and the request is served uncached instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

import attrs
import quart
from quart.wrappers.response import ResponseBody

from tracker.cache import Cache
from tracker.config import Config, TargetGroup
from tracker.errors import RequestError, UpstreamError
from tracker.fileresponse import file_response
from tracker.index import Index, SnapshotSource
from tracker.metrics import Kind, Metrics, Outcome
from tracker.proxy import (
    FORWARDED_REQUEST_HEADERS,
    DownloadClients,
    ProxySettings,
    open_upstream,
    upstream_request_headers,
)
from tracker.snapshots import SnapshotFile, parse_archive_name
from tracker.transfers import Head, StreamEvents, StreamJob, Transfers, pump

log = logging.getLogger("tracker.streamer")

CacheFactory = Callable[[str], Cache]
Found = list[tuple[SnapshotFile, SnapshotSource]]


class ProxyStreamer:
    """Answers archive requests in proxy mode, with the disk cache when one is configured.

    ``config`` returns the live config (the cache directory is read per request, so a reload
    that changes it takes effect; each directory gets its own :class:`Cache`, cleaned up on
    first use). ``cache_factory`` builds a Cache for a directory (tests inject faults there).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        transfers: Transfers,
        *,
        metrics: Metrics | None = None,
        settings: ProxySettings | None = None,
        cache_factory: CacheFactory | None = None,
    ) -> None:
        self._config = config
        self._index = index
        self._transfers = transfers
        self._metrics = metrics
        self.settings = settings if settings is not None else ProxySettings()
        self._clients = DownloadClients(self.settings)
        self._cache_factory = cache_factory or self._default_cache
        self._caches: dict[str, Cache] = {}

    def _default_cache(self, root: str) -> Cache:
        on_size = self._metrics.set_cache_size if self._metrics is not None else None
        return Cache(root, on_size=on_size)

    def cache(self) -> Cache | None:
        """The cache of the current config (None without one); made and cleaned on first use.

        The service calls it once at start-up so that leftover temp files go before any
        request arrives.
        """
        config = self._config()
        root = config.proxy_snapshot_cache_dir
        if not (config.proxy_snapshot_downloads and root):
            return None
        cache = self._caches.get(root)
        if cache is None:
            cache = self._caches[root] = self._cache_factory(root)
            cache.startup_cleanup()
        return cache

    async def aclose(self) -> None:
        """Close the download clients (at service stop, after the transfers ended)."""
        await self._clients.aclose()

    async def serve(
        self, request: quart.Request, group: str, name: str, found: Found
    ) -> quart.Response:
        """Answer a GET or HEAD of archive ``name`` of ``group`` (advertised by ``found``).

        Raises RequestError (404/400) for a name or group that cannot be used. Upstream
        failures answer 502 with a one-line reason; a stopping tracker answers 503.
        Cancellation (client gone) before the upstream answered closes everything opened.
        """
        config = self._config()
        target_group = config.group_named(group)
        if target_group is None:
            raise RequestError(404, f"unknown group {group!r}")
        cache = self.cache()
        cache_path = _cache_path(cache, group, name) if cache is not None else None
        if cache is not None and cache_path is not None:
            hit = await self._from_cache(cache_path, request)
            if hit is not None:
                return hit
            self._count("cache_miss")
        job = self._job(config, target_group, request, name, found)
        if cache is not None and cache_path is not None and self._may_refresh(request, group, name):
            job = _with_refresh(job, cache, group, name, partial(self._is_best, group, name))
        return await self._stream(job)

    async def _from_cache(self, path: str, request: quart.Request) -> quart.Response | None:
        on_bytes = None
        if self._metrics is not None:
            on_bytes = partial(self._metrics.add_served_bytes, "cache")
        try:
            response = await file_response(path, request, on_bytes=on_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:  # something else than a file at the path: not cached
            log.warning("cache_unreadable path=%s error=%s", path, exc)
            return None
        self._count("cache_hit")
        if isinstance(response.response, ResponseBody) and self._metrics is not None:
            response.response = _CountedBody(response.response, self._metrics)
        return response

    def _may_refresh(self, request: quart.Request, group: str, name: str) -> bool:
        if request.method != "GET" or _has_forwarded_headers(request):
            return False
        return self._is_best(group, name)

    def _is_best(self, group: str, name: str) -> bool:
        """True when ``name`` is the group's current best full or best incremental."""
        best = (self._index.best_full(group), self._index.best_incremental(group))
        return any(s is not None and s.info.files[0].bare_name == name for s in best)

    def _job(
        self,
        config: Config,
        group: TargetGroup,
        request: quart.Request,
        name: str,
        found: Found,
    ) -> StreamJob:
        headers = upstream_request_headers(request.headers.items(), None)
        opener = partial(open_upstream, self._clients, group, found, request.method, headers)
        return StreamJob(
            open=opener,
            method=request.method,
            known_size=found[0][0].size if found else 0,
            settings=self.settings,
            events=self._events(group.group, name),
            keep_on_disconnect=config.cache_complete_on_disconnect,
        )

    async def _stream(self, job: StreamJob) -> quart.Response:
        try:
            head: Head = await self._transfers.start(pump, job)
        except BaseException as exc:
            # start() raising means the pump ended (or never ran): the refresh is free.
            if job.refresh is not None:
                job.refresh.abort()
            if not isinstance(exc, UpstreamError):
                raise
            if not self._transfers.accepting:
                return _text(503, str(exc))
            self._count("upstream_failed")
            log.warning("proxy_failed reason=%s", exc)
            return _text(502, str(exc))
        self._count("proxy")
        return _response(head)

    def _events(self, group: str, name: str) -> StreamEvents:
        metrics = self._metrics
        if metrics is None:
            return StreamEvents()
        kind: Kind = "full" if _is_full(name) else "incremental"
        return StreamEvents(
            upstream_bytes=partial(metrics.add_upstream_bytes, group, kind),
            client_bytes=partial(metrics.add_served_bytes, "upstream"),
            refresh_outcome=metrics.count_outcome,
            stream_started=metrics.active_streams.inc,
            stream_ended=metrics.active_streams.dec,
        )

    def _count(self, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.count_outcome(outcome)


def _with_refresh(
    job: StreamJob, cache: Cache, group: str, name: str, still_wanted: Callable[[], bool]
) -> StreamJob:
    refresh = cache.begin_refresh(group, name)
    if refresh is None:
        return job  # a refresh of this file is running: stream uncached
    return attrs.evolve(job, refresh=refresh, still_wanted=still_wanted)


def _cache_path(cache: Cache, group: str, name: str) -> str | None:
    """The validated cache path of a request; None when this file cannot be cached here.

    A name that is not a canonical archive name is a 404. A configured group whose name
    cannot be a directory (such as ``..``), or a path leading out of the cache directory
    through a symlink planted in it, makes the file streamed uncached: nothing outside the
    cache directory is touched.
    """
    parsed = parse_archive_name(name)
    if parsed is None or parsed.file_name != name:
        raise RequestError(404, "not a snapshot archive name")
    try:
        return cache.path_for(group, name)
    except RequestError as exc:
        log.warning("cache_path_refused group=%r file=%s reason=%s", group, name, exc.reason)
        return None


def _has_forwarded_headers(request: quart.Request) -> bool:
    return any(
        name.lower() in FORWARDED_REQUEST_HEADERS for name, _value in request.headers.items()
    )


def _is_full(name: str) -> bool:
    parsed = parse_archive_name(name)
    return parsed is not None and parsed.is_full


def _text(status: int, reason: str) -> quart.Response:
    return quart.Response(reason + "\n", status=status, content_type="text/plain")


def _response(head: Head) -> quart.Response:
    body: ResponseBody | bytes = head.body if head.body is not None else b""
    response = quart.Response(body, status=head.status)
    # Exactly the planned headers: not Quart's text/html default, not a derived length.
    response.headers.clear()
    response.headers.update(head.headers)
    response.timeout = None  # downloads last hours (DESIGN trap 2)
    return response


class _CountedBody(ResponseBody):
    """Counts a cache response as an active stream while the server sends it."""

    def __init__(self, inner: ResponseBody, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def __aenter__(self) -> Any:
        chunks = await self._inner.__aenter__()
        self._metrics.active_streams.inc()
        return chunks

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._inner.__aexit__(exc_type, exc_value, tb)  # type: ignore[arg-type]
        finally:
            self._metrics.active_streams.dec()
