"""The internal listener: the status page ``/``, ``/metrics``, ``POST /reload``, ``/healthz``."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

import quart
import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tracker.errors import ConfigError
from tracker.web.statuspage import PAGE_HEADERS, StatusView, parse_refresh, render_status

Reloader = Callable[[], Awaitable[None]]
Renderer = Callable[[], tuple[bytes, str]]
#: The status page's value, given the seconds between the page's own reloads.
StatusGatherer = Callable[[int], Awaitable[StatusView]]


def create_internal_app(
    reload: Reloader, render_metrics: Renderer, status: StatusGatherer | None = None
) -> QuartTrio:
    """The internal app. ``reload`` raises ConfigError when the new file is refused;
    ``status`` gathers the status page's value (no page without it)."""
    app = QuartTrio(__name__)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.get("/healthz")
    async def healthz() -> quart.Response:
        return quart.Response(b"ok\n", content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> quart.Response:
        # In a worker thread: thousands of discovered targets make megabytes of text, half a
        # second of rendering that held every other request (the collectors lock their
        # series for it).
        body, content_type = await trio.to_thread.run_sync(render_metrics)
        return quart.Response(body, content_type=content_type)

    @app.post("/reload")
    async def reload_route() -> quart.Response:
        headers = quart.request.headers
        refused = reload_refusal(
            headers.get("host", ""), headers.get("origin"), headers.get("sec-fetch-site")
        )
        if refused:
            return quart.Response(f"{refused}\n".encode(), status=403, content_type="text/plain")
        try:
            await reload()
        except ConfigError as exc:
            text = "config refused:\n" + "\n".join(exc.problems) + "\n"
            return quart.Response(text.encode(), status=400, content_type="text/plain")
        return quart.Response(b"reloaded\n", content_type="text/plain")

    if status is not None:
        gather = status

        @app.get("/")
        async def status_page() -> quart.Response:
            try:
                refresh = parse_refresh(quart.request.args.get("refresh"))
            except ValueError as exc:
                return quart.Response(f"{exc}\n", status=400, content_type="text/plain")
            view = await gather(refresh)
            # A frozen value: rendered in a worker thread, the event loop goes on meanwhile
            # (thousands of targets make a page of a megabyte).
            page = await trio.to_thread.run_sync(render_status, view)
            return quart.Response(page.encode(), headers=PAGE_HEADERS)

    # One plain line, as the public listener answers (the framework's HTML pages were a
    # paragraph of markup in `fetch`'s error when its --tracker named this port).
    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> quart.Response:
        reason = (exc.name or "error").lower()
        response = quart.Response(f"{reason}\n", status=exc.code or 500, content_type="text/plain")
        # a 405 names the methods the route takes (RFC 9110, 15.5.6: it must)
        response.headers.update((k, v) for k, v in exc.get_headers() if k.lower() == "allow")
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> quart.Response:
        app.logger.exception("unhandled error on %s", quart.request.path)
        return quart.Response(b"internal error\n", status=500, content_type="text/plain")

    return app


def reload_refusal(host: str, origin: str | None, fetch_site: str | None) -> str:
    """Why a ``POST /reload`` is refused (one line), "" when it is taken: a page in an
    operator's browser must not reload the daemon, by a form posted across sites (a POST
    needs no preflight) nor under a name of its own resolving to this listener (DNS
    rebinding: its origin is then the listener's). So it is taken when addressed to an IP
    literal or ``localhost`` (``Host``), from no other origin than that (``Origin``, sent by
    browsers), and not from another site (``Sec-Fetch-Site``). curl and scripts send none
    of those (and ``SIGHUP`` needs no listener). Pure."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return "reload refused: requested by a page of another site"
    name = host.rpartition("]")[0][1:] if host.startswith("[") else host.partition(":")[0]
    if name.lower() != "localhost" and not _is_ip(name):
        return "reload refused: address the listener by its IP address or localhost"
    if origin is not None and origin.partition("://")[2].lower() != host.lower():
        return "reload refused: requested by a page of another origin"
    return ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
