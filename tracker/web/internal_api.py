"""The internal listener: the status page ``/``, ``/metrics``, ``POST /reload``, ``/healthz``."""

from __future__ import annotations

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
