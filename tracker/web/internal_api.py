"""The internal listener: ``/metrics``, ``POST /reload``, ``/healthz``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import quart
from quart_trio import QuartTrio

from tracker.errors import ConfigError

Reloader = Callable[[], Awaitable[None]]
Renderer = Callable[[], tuple[bytes, str]]


def create_internal_app(reload: Reloader, render_metrics: Renderer) -> QuartTrio:
    """The internal app. ``reload`` raises ConfigError when the new file is refused."""
    app = QuartTrio(__name__)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.get("/healthz")
    async def healthz() -> quart.Response:
        return quart.Response(b"ok\n", content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> quart.Response:
        body, content_type = render_metrics()
        return quart.Response(body, content_type=content_type)

    @app.post("/reload")
    async def reload_route() -> quart.Response:
        try:
            await reload()
        except ConfigError as exc:
            text = "config refused:\n" + "\n".join(exc.problems) + "\n"
            return quart.Response(text.encode(), status=400, content_type="text/plain")
        return quart.Response(b"reloaded\n", content_type="text/plain")

    return app
