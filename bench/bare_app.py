"""The redirect figure's baseline: a bare quart-trio hello-world on hypercorn (trio worker).

Run as ``python bench/bare_app.py HOST:PORT``. Served like the tracker serves its API (no
access log, no read timeout), so the difference measured is the tracker's own work.
"""

from __future__ import annotations

import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio


def create_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    async def hello(path: str) -> str:
        return "hello"

    return app


def main() -> None:
    config = Config()
    config.bind = [sys.argv[1]]
    config.accesslog = None
    config.read_timeout = None
    config.keep_alive_timeout = 75
    trio.run(serve, create_app(), config)


if __name__ == "__main__":
    main()
