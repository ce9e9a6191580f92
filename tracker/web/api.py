"""The public HTTP API (§7): JSON listings, short redirects and concrete archive routes.

Routes only, with the tracker's own base URL as clients see it (:func:`public_base`):
parsing lives in :mod:`tracker.web.queries`, the byte path in :mod:`tracker.web.delivery`, the
ranking in :mod:`tracker.ordering.index`. ``create_app`` takes every dependency; nothing is
global.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import quart
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tracker.config.schema import Config
from tracker.core.digests import Verified, sha256sum_line
from tracker.core.hosts import is_authority
from tracker.errors import RequestError
from tracker.observability.redact import redact_url
from tracker.ordering.index import SnapshotSource
from tracker.serving.httpanswer import retry_after
from tracker.web.delivery import redirect
from tracker.web.deps import ApiDeps, ResponseCounter
from tracker.web.listings import Fragments, ListingCache
from tracker.web.queries import (
    archive_name,
    group_filter,
    known_group,
    parse_max,
    parse_slot,
    resolve_group,
)
from tracker.web.shortcuts import SHORT_NAMES, best_source, is_json_route, short_answer
from tracker.web.wire import held_copy, listing_body, statements_json, targets_body

#: The suffix of the digest routes (``{archive}.sha256``).
DIGEST_SUFFIX = ".sha256"
#: The suffix of the signed statement routes (``{archive}.attestation``).
ATTESTATION_SUFFIX = ".attestation"
#: Seconds between renderings of ``/v1/targets`` that show the throughputs' decay.
THROUGHPUT_SHOWN = 10

#: The value of a listing route's one query parameter, as its parser gives it.
_Q = TypeVar("_Q")


def json_response(body: Any, status: int = 200) -> quart.Response:
    """Compact JSON with an explicit length."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return quart.Response(data, status=status, content_type="application/json")


def create_app(deps: ApiDeps, *, on_response: ResponseCounter | None = None) -> QuartTrio:
    """The public Quart app. Every route reads the live config through ``deps.config``.

    ``on_response(route, status, seconds)`` is called for every answer (metrics); ``route``
    is the route's pattern, never the raw path, so that the number of series stays bounded;
    ``seconds`` runs from the request's arrival to its response head (None when unknown).
    """
    app = QuartTrio(__name__)
    # No route has an empty segment: werkzeug answered a ``//`` inside a path with a 308 of
    # its own (an HTML page, a location built from the raw Host, the query kept), not one
    # of the redirects docs/http-api.md describes. Set before the routes, which read it.
    app.url_map.merge_slashes = False
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


def _error(status: int, reason: str) -> quart.Response:
    if is_json_route(quart.request.path):
        return json_response({"error": reason}, status)
    path = quart.request.path
    if status == 404 and not path.startswith("/v1/") and not path.endswith(ATTESTATION_SUFFIX):
        # The validator's own server answers an unknown archive with an empty 404 (it has
        # no statements: their 404 says why, as under /v1/).
        return quart.Response(b"", status=404, content_type="text/plain")
    return quart.Response(reason + "\n", status=status, content_type="text/plain")


def _register_errors(app: QuartTrio) -> None:
    @app.errorhandler(RequestError)
    async def request_error(exc: RequestError) -> quart.Response:
        response = _error(exc.status, exc.reason)
        if exc.status == 503:
            response.headers["retry-after"] = retry_after(exc.retry_after)
        return response

    @app.after_request
    async def retry_later(response: quart.Response) -> quart.Response:
        # Every 503 says when to come back (docs/http-api.md, "Errors"): those that know
        # set their own value, any other gets the default.
        if response.status_code == 503 and "retry-after" not in response.headers:
            response.headers["retry-after"] = retry_after(None)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> quart.Response:
        response = _error(exc.code or 500, (exc.name or "error").lower())
        # a 405 names the methods the route takes (RFC 9110, 15.5.6: it must)
        response.headers.update((k, v) for k, v in exc.get_headers() if k.lower() == "allow")
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> quart.Response:
        app.logger.exception("unhandled error on %s", quart.request.path)
        return _error(500, "internal error")


# What may appear in a Host / X-Forwarded-Host value we echo back into URLs: a host name, an
# IPv4 or bracketed IPv6 address, and a port (core.hosts). Anything else falls back to the
# request's Host.


def public_base(public_url: str, headers: Mapping[str, str], scheme: str, host: str) -> str:
    """The tracker's own base URL as clients see it (proxy mode rewrites JSON URLs with it):
    ``public_url`` (trailing slash dropped), else X-Forwarded-Proto/Host, else the request."""
    if public_url:
        return public_url.rstrip("/")
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    fwd_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
    if proto not in ("http", "https"):
        proto = scheme if scheme in ("http", "https") else "http"
    if not is_authority(fwd_host):
        fwd_host = host if is_authority(host) else "localhost"
    return f"{proto}://{fwd_host}"


def _base_url(config: Config) -> str | None:
    if not config.proxy_snapshot_downloads:
        return None
    return _request_base(config)


def _request_base(config: Config) -> str:
    req = quart.request
    headers = {k.lower(): v for k, v in req.headers.items()}
    # Userinfo in public_url would be handed to every client: masked like every configured URL.
    return public_base(redact_url(config.public_url), headers, req.scheme, req.host)


def _query_listing(
    deps: ApiDeps,
    listings: ListingCache,
    name: str,
    query: tuple[str, Callable[[str | None], _Q]],
    select: Callable[[Config, str | None, _Q], list[SnapshotSource]],
) -> quart.Response:
    """The answer of a listing route: its group and its one query parameter (``query``: the
    name and the parser) read from the request, the listing of what ``select`` picks kept
    under ``name`` and both. One reading of the request for every listing, so that they
    take the group and key their cache alike."""
    config = deps.config()
    group = group_filter(config, quart.request.args)
    arg, parse = query
    value = parse(quart.request.args.get(arg))
    picked = partial(select, config, group, value)
    return _listing(deps, listings, config, (name, group, value), picked)


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
    deps.attestations.sync(deps.wall_clock())  # signs what is due: a no-op most times
    versions = (deps.digests.version, deps.attestations.version)
    body = listings.get(
        # The roster: a node's version changes with its target (discovery.roster.Roster).
        (*key, base, here, config, versions, deps.scraper.roster),
        lambda: listing_body(deps, fragments, select(), base, here),
    )
    return quart.Response(body, content_type="application/json")


def with_held(sources: list[SnapshotSource], held: list[SnapshotSource]) -> list[SnapshotSource]:
    """``sources`` (by group name, then best first) with the archives the tracker holds that
    no source lists any more (``held``, newest first) among them: each before the first
    source of its group whose snapshot ranks below it (``rank_key``), else after its
    group's. They came after every group's sources: ``?slot=B`` listed a kept incremental
    after every source's older one on B, and clients (fetch) take the first. Pure."""
    by_group: dict[str, list[SnapshotSource]] = {}
    for s in sources:
        by_group.setdefault(s.key.group, []).append(s)
    for h in held:
        ranked = by_group.setdefault(h.key.group, [])
        key = h.info.rank_key()
        below = next((i for i, s in enumerate(ranked) if s.info.rank_key() < key), len(ranked))
        ranked.insert(below, h)
    return [s for name in sorted(by_group) for s in by_group[name]]


def _register_listings(app: QuartTrio, deps: ApiDeps) -> None:
    listings = ListingCache(deps.index)
    target_fragments = Fragments()
    kept_targets: dict[tuple[object, ...], bytes] = {}

    def every_source(config: Config, group: str | None, slot: int | None) -> list[SnapshotSource]:
        # What the tracker holds (cache, bucket) after every source moved on is listed
        # too: a node that spent its time on a full still finds an incremental on it.
        sources = deps.index.sources(group)
        if config.proxy_snapshot_downloads:
            # Of the groups configured now only: a shared bucket holds other replicas'
            # groups, and one a reload dropped (its URLs would answer 404). Each group's
            # after its sources, the listing by group name (all were after every group).
            names = [group] if group is not None else sorted(g.group for g in config.target_groups)
            held = [s for name in names for s in deps.index.held(name)]
            if held:
                sources = with_held(sources, held)
        if slot is not None:
            sources = [s for s in sources if s.info.base_slot == slot]
        return sources

    def best_sources(config: Config, group: str | None, limit: int) -> list[SnapshotSource]:
        ranked = deps.index.sources(group) if group is not None else deps.index.ranked()
        return ranked[:limit]

    @app.get("/v1/snapshots")
    async def snapshots() -> quart.Response:
        return _query_listing(deps, listings, "snapshots", ("slot", parse_slot), every_source)

    @app.get("/v1/best_snapshots")
    async def best_snapshots() -> quart.Response:
        return _query_listing(deps, listings, "best", ("max", parse_max), best_sources)

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
        # While bytes come from a source, its live rate is shown afresh every second.
        period = 1 if deps.flowing.active else THROUGHPUT_SHOWN
        tick = int(now // period)
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
            # the throughputs as of the tick's start: a target's entry (its kept JSON) stays
            # the same until the next tick, not re-rendered for every request of a round
            body = targets_body(deps, target_fragments, group, now, shown_at=tick * period)
            kept_targets[state] = body
        return quart.Response(body, content_type="application/json")

    @app.get("/v1/statements")
    async def statements() -> quart.Response:
        deps.attestations.sync(deps.wall_clock())  # signs what is due, as the listings do
        return json_response(statements_json(deps.attestations), 200)

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
            return _short(deps, group, best(group, kind), alias=False)

        async def root_short(kind: str = kind) -> quart.Response:
            group = deps.config().default_group
            return _short(deps, group, best(group, kind), alias=True)

        app.add_url_rule(f"/v1/{short}", f"v1_{short}", v1_short, methods=["GET", "HEAD"])
        app.add_url_rule(f"/{short}", f"root_{short}", root_short, methods=["GET", "HEAD"])


def _short(
    deps: ApiDeps, group: str, best: SnapshotSource | None, *, alias: bool
) -> quart.Response:
    """:func:`tracker.web.shortcuts.short_answer` as a Quart response."""
    short = short_answer(best, partial(deps.delivery.location, group, alias=alias), alias=alias)
    if short.location is not None:
        return redirect(short.location)
    return quart.Response(short.body, short.status, content_type="text/plain")


async def _served_copy(deps: ApiDeps, group: str, archive: str) -> Verified | None:
    """The tracker's verified copy of ``archive`` that its own route serves (the first
    found: a group may hold two local files of one name, other bytes each), as the
    listings show it; never a cached copy no longer under its name (docs/http-api.md,
    "Verified archives")."""
    await deps.confirm_cached(group, archive)
    found = deps.index.find_file(group, archive)
    if found:
        return held_copy(deps.digests, group, found[0][0])
    return deps.digests.verified(group, archive)


async def _digest_answer(deps: ApiDeps, group: str, name: str) -> quart.Response:
    """``GET {archive}.sha256``: the ``sha256sum`` line of the tracker's verified copy."""
    archive = archive_name(name[: -len(DIGEST_SUFFIX)]).file_name
    verified = await _served_copy(deps, group, archive)
    if verified is None:
        raise RequestError(404, "no verified copy of this archive is known")
    body = sha256sum_line(verified.sha256, archive).encode()
    return quart.Response(body, 200, content_type="text/plain; charset=utf-8")


async def _attestation_answer(deps: ApiDeps, group: str, name: str) -> quart.Response:
    """``GET {archive}.attestation``: the signed statement of the copy the archive's route
    serves (the tracker's own, else one another replica left in the bucket): never one of
    other bytes of the name, which a client checking the two together would refuse."""
    archive = archive_name(name[: -len(ATTESTATION_SUFFIX)]).file_name
    verified = await _served_copy(deps, group, archive)
    deps.attestations.sync(deps.wall_clock())
    documents = [
        d
        for d in deps.attestations.documents(group, archive)
        if verified is not None and d.statement.sha256 == verified.sha256
    ]
    if not documents:
        raise RequestError(404, "no signed statement of this archive is held")
    return quart.Response(documents[0].encode(), 200, content_type="application/json")


async def _side_answer(deps: ApiDeps, group: str, name: str) -> quart.Response | None:
    """The answer of a route beside an archive (``.sha256``, ``.attestation``), None for
    the archive's own."""
    if name.endswith(DIGEST_SUFFIX):
        return await _digest_answer(deps, group, name)
    if name.endswith(ATTESTATION_SUFFIX):
        return await _attestation_answer(deps, group, name)
    return None


def _register_archives(app: QuartTrio, deps: ApiDeps) -> None:
    @app.route("/v1/<name>", methods=["GET", "HEAD"])
    async def v1_archive(name: str) -> quart.Response:
        group = resolve_group(deps.config(), quart.request.args)
        side = await _side_answer(deps, group, name)
        if side is not None:
            return side
        return await deps.delivery.serve(quart.request, group, archive_name(name))

    @app.route("/v1/<group>/<name>", methods=["GET", "HEAD"])
    async def v1_group_archive(group: str, name: str) -> quart.Response:
        # The query-free form redirects and proxy-mode JSON use (README.md#clients): clients
        # save the file under the last path segment, which must be the archive's name.
        group = known_group(deps.config(), group)
        side = await _side_answer(deps, group, name)
        if side is not None:
            return side
        return await deps.delivery.serve(quart.request, group, archive_name(name))

    @app.route("/<name>", methods=["GET", "HEAD"])
    async def root_archive(name: str) -> quart.Response:
        group = deps.config().default_group
        side = await _side_answer(deps, group, name)
        if side is not None:
            return side
        return await deps.delivery.serve(quart.request, group, archive_name(name), root=True)
