"""Run an ASGI app on a real server on 127.0.0.1 with a free port, for tests.

The server is the tracker's own (:func:`tracker.zerocopy.server.serve`: hypercorn's connection
handler with sendfile for file bodies), so every test that serves files exercises that path.

Usage::

    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve_app, app)   # "http://127.0.0.1:54321"
        ...                                               # talk to it over real sockets
        nursery.cancel_scope.cancel()                     # graceful stop, see below

Quart's test client hides HEAD-body and Content-Length bugs; a real server
on a real socket does not.
"""

from __future__ import annotations

from typing import Any

import quart
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from tracker.h11patches.headers import install as lower_case_headers
from tracker.h11patches.statusline import install as reason_phrases
from tracker.serving.fileresponse import PlainRequest, file_response
from tracker.web.delivery import to_response
from tracker.web.listeners import bind_socket
from tracker.zerocopy.connection import Connections, zero_copy_connection
from tracker.zerocopy.server import serve


def local_config(**settings: Any) -> Config:
    """A hypercorn Config for tests: access log off, short grace.

    ``settings`` are set as attributes afterwards (for example ``graceful_timeout=0.5``).
    """
    config = Config()
    config.accesslog = None
    config.graceful_timeout = 2.0
    for name, value in settings.items():
        setattr(config, name, value)
    return config


async def serve_app(
    app: Any,
    *,
    config: Config | None = None,
    stop_timeout: float = 5.0,
    connections: Connections | None = None,
    plain: bool = False,
    max_connections: int = 4096,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host`` (a loopback address; a free port) until cancelled; start
    with ``nursery.start``.

    ``config`` defaults to :func:`local_config`. Reports the base URL
    (``http://{host}:PORT``) through ``task_status.started``, after the app's lifespan
    startup has finished. ``connections`` lets a test see the zero-copy pieces sent;
    ``plain`` serves with hypercorn's own ``serve`` instead (no sendfile: file bodies are read
    and sent as bytes); ``max_connections``: the listener's connection limit (zero-copy
    server only).

    On cancellation the server is stopped through its ``shutdown_trigger`` so that hypercorn
    runs its graceful shutdown and the app's lifespan shutdown (cancelling hypercorn's own
    nursery would skip them). That shutdown runs shielded from the cancellation that caused
    it, bounded by ``stop_timeout`` seconds after which it is cancelled hard. Errors of the
    server (for example a failing lifespan startup) propagate from here.
    """
    config = local_config() if config is None else config
    shutdown = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
        with server_scope:
            if plain:
                # The tracker's h11 patches, which its server installs process-wide: installed
                # here too, the wire of a plain server does not depend on whether a test of
                # this process started the tracker's server before (a reason phrase or not).
                lower_case_headers()
                reason_phrases()
                config.bind = [f"{host}:0"]
                await hypercorn_serve(
                    app, config, shutdown_trigger=shutdown.wait, task_status=task_status
                )
                return
            sock = bind_socket(host, 0, user_timeout=None)
            await serve(
                app,
                config,
                sock,
                connections or Connections(),
                shutdown_trigger=shutdown.wait,
                max_connections=max_connections,
                task_status=task_status,
            )

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run_server)
        task_status.started(binds[0])
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
            server_scope.deadline = trio.current_time() + stop_timeout


async def file_for_request(path: str, **options: Any) -> quart.Response:
    """:func:`file_response` of ``path`` for the Quart request being handled, as the web
    layer answers it (tracker/web/delivery.py: the request read once, the answer converted)."""
    request = quart.request
    asked = PlainRequest(request.method, list(request.headers.items()))
    connection = zero_copy_connection(request.scope)
    return to_response(await file_response(path, asked, connection=connection, **options))
