"""The public HTTP API (§7): JSON listings, short redirects and concrete archive routes.

Routes only: parsing lives in :mod:`tracker.web.queries`, the byte path in
:mod:`tracker.web.delivery`, the ranking in :mod:`tracker.core.index`. ``create_app`` takes
every dependency; nothing is global.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import attrs
import quart
import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tracker.core.config import Config
from tracker.core.digests import Digests, sha256sum_line
from tracker.core.index import Index, SnapshotSource, TargetKey
from tracker.core.redact import redact_text, redact_url, redact_userinfo
from tracker.core.rejections import Rejections
from tracker.core.snapshots import format_time, info_to_json
from tracker.discovery.scrape import Scraper, TargetHealth, health_json
from tracker.errors import RequestError
from tracker.web.delivery import Delivery, redirect, tracker_path
from tracker.web.health import HealthChecker
from tracker.web.listings import Fragments, ListingCache
from tracker.web.queries import (
    archive_name,
    group_filter,
    known_group,
    parse_max,
    parse_slot,
    resolve_group,
)
from tracker.web.shortcuts import SHORT_NAMES, best_source
from tracker.web.urls import public_base

#: ``(route template, status, seconds to the response head or None)`` of every answer.
ResponseCounter = Callable[[str, int, float | None], None]


@attrs.define
class ApiDeps:
    """What the API reads: the live config (swapped on reload), the index, and helpers."""

    config: Callable[[], Config]
    index: Index
    scraper: Scraper
    delivery: Delivery
    health: HealthChecker
    #: The object store's status (docs/http-api.md#with-an-object-store-object_store), None without
    #: one.
    store_status: Callable[[], dict[str, Any] | None] = lambda: None
    #: Digests of the archives held verified, and sources whose copy failed its check
    #: (docs/http-api.md, "Verified archives").
    digests: Digests = attrs.Factory(Digests)
    rejections: Rejections = attrs.Factory(Rejections)
    #: Monotonic seconds (rejections run out on this clock).
    clock: Callable[[], float] = trio.current_time
    #: Per group: why its last refresh streamed uncached for want of disk room.
    uncached: Callable[[], Mapping[str, str]] = dict


#: The suffix of the digest routes (``{archive}.sha256``).
DIGEST_SUFFIX = ".sha256"
#: Seconds between renderings of ``/v1/targets`` that show the throughputs' decay.
THROUGHPUT_SHOWN = 10


def json_response(body: Any, status: int = 200) -> quart.Response:
    """Compact JSON with an explicit length."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return quart.Response(data, status=status, content_type="application/json")


def source_json(
    source: SnapshotSource,
    base: str | None,
    *,
    files_base: str | None = None,
    here: str = "",
    digest: Callable[[str, str], str | None] = lambda _group, _name: None,
    predicted: float | None = None,
    node_version: str = "",
) -> dict[str, Any]:
    """The wire form of a source (docs/http-api.md, "Wire format"); with ``base`` (proxy
    mode) URLs point at the tracker.

    ``files_base`` (a source the tracker proxies in redirect mode because it needs
    credentials) points only the files' URLs at the tracker. Userinfo and queries of the
    configured target are masked; file URLs keep their query (a link the source handed out).
    Each file carries ``url``, where this source's copy is fetched from (the source itself,
    or the tracker's ``here`` route for a copy the tracker serves: local, proxied,
    credentialed), and ``sha256`` when ``digest(group, name)`` knows the tracker's verified
    copy. ``predicted``: the seconds to a running node of the source's pair, in a group
    ranked by it (docs/ranking.md; infinite: ``null``, it never catches up).
    ``node_version``: a discovered node's version (shown as ``version``; "": unknown).
    """
    info, group = source.info, source.key.group
    files_base = base if base is not None else files_base
    if files_base is not None:
        names = [files_base + tracker_path(f.bare_name, group, alias=False) for f in info.files]
    else:
        names = [redact_userinfo(f.file_name) for f in info.files]
    out = info_to_json(info, names)
    for f, name, wire in zip(info.files, names, out["files"], strict=True):
        if files_base is not None:
            wire["url"] = name
        elif f.url:
            wire["url"] = redact_userinfo(f.url)
        elif here:
            wire["url"] = here + tracker_path(f.bare_name, group, alias=False)
        sha256 = digest(group, f.bare_name)
        if sha256:
            wire["sha256"] = sha256
    out["target"] = base if base is not None else redact_text(source.key.target)
    out["group"] = group
    out["updated_at"] = format_time(source.updated_at)
    if node_version:  # a discovered node's, from getClusterNodes (docs/http-api.md#trust)
        out["version"] = node_version
    # Measurements behind the ranking (docs/http-api.md#trust), once there are some.
    if source.latency is not None:
        out["latency_ms"] = math.ceil(source.latency * 1000)
    if source.throughput > 0:
        out["throughput_bps"] = round(source.throughput)
    if predicted is not None:
        out["predicted_seconds"] = round(predicted, 1) if math.isfinite(predicted) else None
    return out


def create_app(deps: ApiDeps, *, on_response: ResponseCounter | None = None) -> QuartTrio:
    """The public Quart app. Every route reads the live config through ``deps.config``.

    ``on_response(route, status, seconds)`` is called for every answer (metrics); ``route``
    is the route's pattern, never the raw path, so that the number of series stays bounded;
    ``seconds`` runs from the request's arrival to its response head (None when unknown).
    """
    app = QuartTrio(__name__)
    if on_response is not None:
        _count_responses(app, on_response)
    # Downloads last hours; stalled clients are bounded at the socket level instead.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    _register_errors(app)
    _register_listings(app, deps)
    _register_redirects(app, deps)
    _register_archives(app, deps)
    return app


def _count_responses(app: QuartTrio, on_response: ResponseCounter) -> None:
    @app.before_request
    async def started() -> None:
        quart.g.started = time.monotonic()

    @app.after_request
    async def count(response: quart.Response) -> quart.Response:
        rule = quart.request.url_rule
        began = getattr(quart.g, "started", None)
        seconds = time.monotonic() - began if began is not None else None
        on_response(rule.rule if rule is not None else "unmatched", response.status_code, seconds)
        return response


def _is_json_route() -> bool:
    path = quart.request.path
    return path.startswith("/v1/") and "." not in path.rsplit("/", 1)[-1]


def _error(status: int, reason: str) -> quart.Response:
    if _is_json_route():
        return json_response({"error": reason}, status)
    if status == 404 and not quart.request.path.startswith("/v1/"):
        # The validator's own server answers an unknown archive with an empty 404.
        return quart.Response(b"", status=404, content_type="text/plain")
    return quart.Response(reason + "\n", status=status, content_type="text/plain")


def _register_errors(app: QuartTrio) -> None:
    @app.errorhandler(RequestError)
    async def request_error(exc: RequestError) -> quart.Response:
        return _error(exc.status, exc.reason)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> quart.Response:
        return _error(exc.code or 500, (exc.name or "error").lower())

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> quart.Response:
        app.logger.exception("unhandled error on %s", quart.request.path)
        return _error(500, "internal error")


def _base_url(config: Config) -> str | None:
    if not config.proxy_snapshot_downloads:
        return None
    return _request_base(config)


def _request_base(config: Config) -> str:
    req = quart.request
    headers = {k.lower(): v for k, v in req.headers.items()}
    # Userinfo in public_url would be handed to every client: masked like every configured URL.
    return public_base(redact_url(config.public_url), headers, req.scheme, req.host)


def _listing_body(
    deps: ApiDeps,
    fragments: Fragments,
    sources: list[SnapshotSource],
    base: str | None,
    here: str,
) -> bytes:
    """The JSON array of ``sources``; the files of proxied sources point at the tracker.
    Each source's JSON is kept between renderings (:class:`Fragments`)."""
    proxied = deps.delivery.proxied
    parts = []
    version = deps.digests.version
    health = deps.scraper.health
    for s in sources:
        files_base = here if proxied(s) else None
        predicted = deps.index.predicted(s)
        node = health.get(s.key)
        node_version = node.target.version if node is not None else ""
        render = partial(_source_bytes, deps, s, base, files_base, here, predicted, node_version)
        key = (base, files_base, here, version, predicted, node_version)
        parts.append(fragments.get(s, key, render))
    return b"[" + b",".join(parts) + b"]"


def _source_bytes(
    deps: ApiDeps,
    source: SnapshotSource,
    base: str | None,
    files_base: str | None,
    here: str,
    predicted: float | None,
    node_version: str,
) -> bytes:
    digest = deps.digests.get
    body = source_json(
        source,
        base,
        files_base=files_base,
        here=here,
        digest=digest,
        predicted=predicted,
        node_version=node_version,
    )
    return json.dumps(body, separators=(",", ":")).encode()


def _listing(
    deps: ApiDeps,
    listings: ListingCache,
    config: Config,
    key: tuple[object, ...],
    select: Callable[[], list[SnapshotSource]],
) -> quart.Response:
    """The listing of what ``select()`` picks, rendered once per index change (``key``: the
    request's parameters)."""
    base = _base_url(config)
    here = _request_base(config) if base is None else base
    fragments = listings.fragments
    body = listings.get(
        # The roster: a node's version changes with its target (discovery.health.Roster).
        (*key, base, here, config, deps.digests.version, deps.scraper.roster),
        lambda: _listing_body(deps, fragments, select(), base, here),
    )
    return quart.Response(body, content_type="application/json")


def _health_bytes(
    health: TargetHealth, count: int, mismatch: str, speed: int, uncached: str
) -> bytes:
    out = health_json(health, count, mismatch)
    if speed > 0:  # measured (docs/http-api.md#speed-tests)
        out["throughput_bps"] = speed
    if uncached:  # the group's last refresh found too little room on the cache's disk
        out["cache"] = uncached
    return json.dumps(out, separators=(",", ":")).encode()


def _targets_body(
    scraper: Scraper,
    index: Index,
    fragments: Fragments,
    group: str | None,
    rejected: Mapping[TargetKey, str],
    now: float,
    uncached: Mapping[str, str],
) -> bytes:
    """The JSON array of every target's health (of ``group``), in display order. A target
    whose copy of an archive failed its check shows why (``rejected``) unless its probe
    failed; a measured one its throughput as of ``now``; the targets of a group whose last
    refresh streamed uncached for want of disk room show why (``uncached``, per group) as
    ``cache``."""
    parts = []
    fragments.sweep()  # every target is asked for below: the gone ones go
    mismatches = {**index.mismatches(), **rejected}
    for h in scraper.in_order():
        key = h.target.key
        if group is not None and key.group != group:
            continue
        if h.target.kind == "cluster":  # an RPC URL: no snapshots of its own
            count, mismatch = 0, ""
        else:
            count, mismatch = index.count(key), mismatches.get(key, "")
        # A target's entry changes only when its probe does: its JSON is kept until then
        # (thousands of discovered nodes, polled during a round).
        speed = round(index.throughput(key, now))
        reason = uncached.get(key.group, "")
        state = (
            *(h.health, h.last_error, h.last_scrape, h.last_duration),
            *(count, mismatch, speed, reason),
        )
        render = partial(_health_bytes, h, count, mismatch, speed, reason)
        parts.append(fragments.get(h, state, render))
    return b"[" + b",".join(parts) + b"]"


def _register_listings(app: QuartTrio, deps: ApiDeps) -> None:
    listings = ListingCache(deps.index)
    target_fragments = Fragments()
    kept_targets: dict[tuple[object, ...], bytes] = {}

    @app.get("/v1/snapshots")
    async def snapshots() -> quart.Response:
        config = deps.config()
        group = group_filter(config, quart.request.args)
        slot = parse_slot(quart.request.args.get("slot"))

        def select() -> list[SnapshotSource]:
            # What the tracker holds (cache, bucket) after every source moved on is listed
            # too: a node that spent its time on a full still finds an incremental on it.
            sources = deps.index.sources(group)
            if config.proxy_snapshot_downloads:
                sources += deps.index.held(group)
            if slot is not None:
                sources = [s for s in sources if s.info.base_slot == slot]
            return sources

        return _listing(deps, listings, config, ("snapshots", group, slot), select)

    @app.get("/v1/best_snapshots")
    async def best_snapshots() -> quart.Response:
        config = deps.config()
        group = group_filter(config, quart.request.args)
        limit = parse_max(quart.request.args.get("max"))

        def select() -> list[SnapshotSource]:
            ranked = deps.index.sources(group) if group is not None else deps.index.ranked()
            return ranked[:limit]

        return _listing(deps, listings, config, ("best", group, limit), select)

    @app.get("/v1/store")
    async def store() -> quart.Response:
        status = deps.store_status()
        if status is None:
            raise RequestError(404, "no object_store is configured")
        return json_response(status, 200 if status["up"] else 503)

    @app.get("/v1/targets")
    async def targets() -> quart.Response:
        group = group_filter(deps.config(), quart.request.args)
        scraper, index, rejections = deps.scraper, deps.index, deps.rejections
        now = deps.clock()
        uncached = deps.uncached()
        # What the body shows changes only with these: kept until one of them moves.
        # Measured throughputs decay with age: shown afresh every THROUGHPUT_SHOWN seconds.
        tick = int(now // THROUGHPUT_SHOWN)
        state = (
            group,
            scraper.roster,
            scraper.shown,
            index.generation,
            rejections.sweep(now),
            tick,
            tuple(sorted(uncached.items())),
        )
        body = kept_targets.get(state)
        if body is None:
            kept_targets.clear()
            rejected = rejections.errors(now)
            body = _targets_body(scraper, index, target_fragments, group, rejected, now, uncached)
            kept_targets[state] = body
        return quart.Response(body, content_type="application/json")

    @app.get("/v1/health")
    async def health() -> quart.Response:
        group = resolve_group(deps.config(), quart.request.args)
        status, body = await deps.health.check(group)
        return json_response(body, status)


def _register_redirects(app: QuartTrio, deps: ApiDeps) -> None:
    # Served by tracker.web.shortcuts.FastRedirects before Quart; these routes give the
    # answers it leaves to Quart (errors) and the reference it is tested against.
    best = partial(best_source, deps.index)
    for short, kind in SHORT_NAMES.items():

        async def v1_short(kind: str = kind) -> quart.Response:
            group = resolve_group(deps.config(), quart.request.args)
            source = best(group, kind)
            if source is None:
                return quart.Response(b"no snapshot available\n", 202, content_type="text/plain")
            return redirect(deps.delivery.location(group, source, alias=False))

        async def root_short(kind: str = kind) -> quart.Response:
            group = deps.config().default_group
            source = best(group, kind)
            if source is None:
                return quart.Response(b"", 404, content_type="text/plain")
            return redirect(deps.delivery.location(group, source, alias=True))

        app.add_url_rule(f"/v1/{short}", f"v1_{short}", v1_short, methods=["GET", "HEAD"])
        app.add_url_rule(f"/{short}", f"root_{short}", root_short, methods=["GET", "HEAD"])


def _digest_answer(deps: ApiDeps, group: str, name: str) -> quart.Response:
    """``GET {archive}.sha256``: the ``sha256sum`` line of the tracker's verified copy."""
    archive = archive_name(name[: -len(DIGEST_SUFFIX)]).file_name
    digest = deps.digests.get(group, archive)
    if digest is None:
        raise RequestError(404, "no verified copy of this archive is known")
    body = sha256sum_line(digest, archive).encode()
    return quart.Response(body, 200, content_type="text/plain; charset=utf-8")


def _register_archives(app: QuartTrio, deps: ApiDeps) -> None:
    @app.route("/v1/<name>", methods=["GET", "HEAD"])
    async def v1_archive(name: str) -> quart.Response:
        group = resolve_group(deps.config(), quart.request.args)
        if name.endswith(DIGEST_SUFFIX):
            return _digest_answer(deps, group, name)
        return await deps.delivery.serve(quart.request, group, archive_name(name).file_name)

    @app.route("/v1/<group>/<name>", methods=["GET", "HEAD"])
    async def v1_group_archive(group: str, name: str) -> quart.Response:
        # The query-free form redirects and proxy-mode JSON use (README.md#clients): clients save
        # the
        # file under the last path segment, which must be the archive's name.
        group = known_group(deps.config(), group)
        if name.endswith(DIGEST_SUFFIX):
            return _digest_answer(deps, group, name)
        return await deps.delivery.serve(quart.request, group, archive_name(name).file_name)

    @app.route("/<name>", methods=["GET", "HEAD"])
    async def root_archive(name: str) -> quart.Response:
        group = deps.config().default_group
        if name.endswith(DIGEST_SUFFIX):
            return _digest_answer(deps, group, name)
        name = archive_name(name).file_name
        return await deps.delivery.serve(quart.request, group, name, root=True)
