"""Where a request's bytes come from: the one place that picks the byte path.

An archive request is answered by exactly one of: a redirect to the source (redirect mode), a
file the tracker reads itself (a local source), or the proxy with its disk cache (proxy mode).

A source that needs credentials (the group's basic or bearer auth, a TLS client certificate,
or userinfo or a query in its configured URL) is proxied in redirect mode too: a client sent
to it would either fail without the credentials or have to be handed them. Its files then go
through the plain proxy (the disk cache exists only with ``proxy_snapshot_downloads``).

It is also the one place an :class:`~tracker.serving.httpanswer.Answer` becomes a Quart
response (:func:`to_response`): the byte paths (tracker/serving, tracker/cache,
tracker/proxy) know no web framework; they answer with a status, exactly the headers to send
and a :class:`~tracker.serving.responsebodies.Body`. Quart sends a body it knows as a
``ResponseBody`` untouched (``async with body as chunks``), so a Body is registered as one:
the zero-copy placeholders (tracker/zerocopy/connection.py) pass through as the very objects
the body yields.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol, cast
from urllib.parse import quote, urlsplit

import quart
from quart.wrappers.response import ResponseBody

from tracker.accounting.downloads import DownloadSlot, DownloadSlots, account_download
from tracker.config.schema import Config, TargetGroup
from tracker.core.snapshots import ArchiveName, SnapshotFile
from tracker.core.text import wants_bytes
from tracker.errors import RequestError
from tracker.observability.metrics import Metrics, Outcome
from tracker.observability.redact import has_secrets, redact_userinfo
from tracker.ordering.index import Index, SnapshotSource
from tracker.proxy.ask import Ask, ask_of
from tracker.proxy.storedcopies import served_from_disk
from tracker.serving.fileresponse import ChunkBudget, content_disposition
from tracker.serving.httpanswer import Answer, redirect_answer
from tracker.serving.responsebodies import Body
from tracker.zerocopy.connection import zero_copy_connection

ResponseBody.register(Body)  # type: ignore[type-abstract]


def to_response(answer: Answer) -> quart.Response:
    """``answer`` as a Quart response: exactly its headers (not Quart's text/html default
    type nor a derived length), no response timeout (downloads last hours,
    docs/architecture.md#traps-of-the-stack, 2)."""
    body = answer.body
    response = quart.Response(body if isinstance(body, bytes) else cast(ResponseBody, body))
    response.status_code = answer.status
    response.headers.clear()
    response.headers.update(answer.headers)
    response.timeout = None
    return response


class ByteStreamer(Protocol):
    """What proxy mode plugs in: streams (and possibly caches) a remote archive."""

    async def serve(
        self,
        ask: Ask,
        group: str,
        archive: ArchiveName,
        found: list[tuple[SnapshotFile, SnapshotSource]],
    ) -> Answer:
        """Answer ``ask`` for ``archive`` of ``group`` from one of ``found``."""
        ...

    async def bucket_location(self, group: str, name: str, user_agent: str) -> str | None:
        """The location of the 303 to the object store :meth:`serve` would answer a GET
        with; None when it would answer otherwise."""
        ...


def needs_credentials(group: TargetGroup | None, target: str) -> bool:
    """True when reaching ``target`` of ``group`` takes something a client must not be given.

    That is the group's ``basic_auth`` or ``bearer_auth``, a client certificate in its
    ``tls_config``, or userinfo or a query (an API key) in the configured URL ``target``.
    A local directory needs nothing. An unknown group (dropped by a reload) counts as needing
    them: nothing is known about it, so nothing is handed out.
    """
    if "://" not in target:
        return False  # a local directory: the tracker reads it itself
    if group is None:
        return True
    if group.basic_auth is not None or group.bearer_auth is not None:
        return True
    if group.tls_config is not None and group.tls_config.cert_file:
        return True
    return has_secrets(target)


def redirect(location: str) -> quart.Response:
    """A 303 with a lower-case ``location`` header and an empty body."""
    return to_response(redirect_answer(location))


def tracker_path(name: str, group: str, *, alias: bool) -> str:
    """The tracker's own route for an archive: ``/{name}`` (the default group's, for the
    validator-compatible aliases) or ``/v1/{group}/{name}``.

    Never a query string: clients that save under the last path segment of the final URL
    (``wget --trust-server-names``, aria2c) must get the archive's name (README.md#clients).
    """
    return f"/{name}" if alias else f"/v1/{quote(group, safe='')}/{name}"


#: ``(group, path, st)``: whether the local file at ``path`` of ``group``, opened as ``st``,
#: may be served (RequestError when not) and the headers it carries (its ``repr-digest``):
#: :meth:`tracker.proof.background.localfiles.LocalProofs.admit`.
LocalAdmit = Callable[[str, str, os.stat_result], Mapping[str, str]]


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
        slots: DownloadSlots | None = None,
        local_admit: LocalAdmit | None = None,
    ) -> None:
        self._config = config
        #: Asked of a local file once opened (:data:`LocalAdmit`; None: served as it is).
        self.local_admit = local_admit
        self._budget = budget
        #: Answers that carry an archive's bytes at once (tracker/zerocopy/limit.py).
        self.slots = slots if slots is not None else DownloadSlots()
        self._index = index
        self._streamer = streamer
        self._metrics = metrics
        #: Whether the tracker is ending the transfers still running (its shutdown grace
        #: ended: ``Transfers.cut``); the download line says who ended an answer.
        self.cut: Callable[[], bool] = lambda: False

    def serves_bytes(self, f: SnapshotFile, source: SnapshotSource) -> bool:
        """True when the tracker answers for ``f`` of ``source`` itself: a local file, proxy
        mode, or a source that needs credentials."""
        return bool(f.path) or self._config().proxy_snapshot_downloads or self.proxied(source)

    def proxied(self, source: SnapshotSource) -> bool:
        """True when ``source`` is proxied whatever the mode (it needs credentials). A node
        found by cluster discovery never gets the group's credentials: it needs none."""
        key = source.key
        if key.discovered:
            return False
        return needs_credentials(self._config().group_named(key.group), key.target)

    def location(self, group: str, source: SnapshotSource, *, alias: bool) -> str:
        """The ``location`` of a short redirect to ``source``'s own archive.

        A root alias (``alias``) always points at the tracker's own root concrete route,
        ``/{name}``, as a validator does: Firedancer and solana-snapshot-finder accept only a
        ``location`` starting with ``/`` and re-send it to the same address (README.md#clients);
        that route then serves the bytes or redirects to the source. It takes no
        ``public_url`` prefix: those clients ask a validator's root, never under a prefix.
        """
        f = source.info.files[0]
        if alias:
            return tracker_path(f.bare_name, group, alias=True)
        if self.serves_bytes(f, source):
            # Under ``public_url``'s path prefix, as the listings' URLs are: behind a reverse
            # proxy that strips it, a bare ``/v1/...`` would leave the prefix (a 404).
            prefix = urlsplit(self._config().public_url).path
            return prefix + tracker_path(f.bare_name, group, alias=False)
        return redact_userinfo(f.url)

    async def serve(
        self, request: quart.Request, group: str, archive: ArchiveName, *, root: bool = False
    ) -> quart.Response:
        """Answer a concrete archive request for ``archive`` (parsed once, by the route).
        Raises RequestError(404) when nobody has it, RequestError(503) when the tracker
        serves as many downloads as it can at once.

        ``root``: the validator-compatible route ``/{name}``, where clients named in
        ``serve_user_agents`` get the bytes even in redirect mode. Every archive body counts
        as an active stream while it is sent and logs one ``download`` line at its end
        (bytes, duration, outcome).
        """
        # What was asked, read from the request once: nothing below reads it again.
        ask = ask_of(request.method, request.headers.items(), zero_copy_connection(request.scope))
        name = archive.file_name
        slot, answer = await self._answer(ask, group, archive, root=root)
        if answer.status in (200, 206) and "content-disposition" not in answer.headers:
            # The archive's real name for `curl -OJ`, aria2c and browsers, whatever URL
            # (often /snapshot.tar.bz2 before its redirect) the client started from.
            # An archive name is parsed, so always safe: the one builder checks it anyway.
            answer.headers["content-disposition"] = content_disposition(name)
        account_download(
            answer, ask.method, self._metrics, slot, group=group, file=name,
            connection=zero_copy_connection(request.scope), cut=self.cut,
        )  # fmt: skip
        return to_response(answer)

    async def _answer(
        self, ask: Ask, group: str, archive: ArchiveName, *, root: bool
    ) -> tuple[DownloadSlot | None, Answer]:
        """The answer, and the download slot it holds (None: a redirect, which holds none)."""
        name = archive.file_name
        found = self._index.find_file(group, name)
        if not found:
            self._count("not_found")  # clients asking for a file gone: the dashboard shows it
            raise RequestError(404, f"no source of group {group!r} advertises {name}")
        f, source = found[0]
        config = self._config()
        served = root and wants_bytes(ask.asked.user_agent, config.serve_user_agents)
        proxied = config.proxy_snapshot_downloads or served or self.proxied(source)
        if not f.path and not f.url and not config.proxy_snapshot_downloads:
            # Held by the tracker only (ordering.index.Holdings): served by proxy mode alone.
            self._count("not_found")
            raise RequestError(404, f"no source of group {group!r} advertises {name}")
        if not f.path and not proxied:
            self._count("redirect")
            return None, redirect_answer(redact_userinfo(f.url))
        slot = self._take_slot(ask)
        try:
            if f.path:
                return slot, await self._local(ask, f.path, name, group)
            if self._streamer is None:
                raise RequestError(502, f"{name} must be proxied and no proxy is running")
            return slot, await self._streamer.serve(ask, group, archive, found)
        except BaseException:
            slot.release()
            raise

    def _take_slot(self, ask: Ask) -> DownloadSlot:
        try:
            # The connection can tell whether its client takes bytes (its slot may be
            # reclaimed when it does not); a connection of plain bytes cannot.
            return self.slots.take(ask.connection)
        except RequestError:
            self._count("busy")
            raise

    async def _local(self, ask: Ask, path: str, name: str, group: str) -> Answer:
        self._count("local")
        # The file as opened must be the one its check proved (docs/http-api.md, "Proven
        # archives"): a file replaced since is not served on its predecessor's proof.
        admit = partial(self.local_admit, group, path) if self.local_admit else None
        try:
            return await served_from_disk(path, ask, "local", self._metrics, self._budget, admit)
        except FileNotFoundError as exc:
            raise RequestError(404, f"{name} is gone from its local directory") from exc
        except TimeoutError as exc:  # its directory hangs (serving.threads.given_way)
            reason = f"cannot read {name} in its local directory: {exc.strerror or exc}"
            raise RequestError(503, reason) from exc
        except PermissionError as exc:
            # closed to the tracker's user since the scrape (a scan leaves such a file out:
            # docs/http-api.md, "Snapshot sources"): the file is there, the tracker's own
            # reading failed, so no 404
            reason = f"cannot read {name} in its local directory: {exc.strerror or exc}"
            raise RequestError(502, reason) from exc
        except OSError as exc:  # a symlink, FIFO or directory put there since the scrape
            raise RequestError(404, f"{name} is not a regular file any more") from exc

    async def bucket_location(self, group: str, name: str, user_agent: str) -> str | None:
        """For a GET of archive ``name`` of ``group``: the location of the 303 to the object
        store that :meth:`serve` would answer, or None when it would answer otherwise."""
        found = self._index.find_file(group, name)
        if self._streamer is None or not found or found[0][0].path:
            return None
        if not self._config().proxy_snapshot_downloads:
            return None
        return await self._streamer.bucket_location(group, name, user_agent)

    def _count(self, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.count_outcome(outcome)
