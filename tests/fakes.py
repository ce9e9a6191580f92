"""Small real upstreams for tests: a sidecar, a validator HTTP server, a Solana RPC node.

Each is a quart-trio app whose state the test changes between scrapes; serve it with
``helpers_server.serve_app`` on 127.0.0.1:0.
"""

from __future__ import annotations

from typing import Any

import attrs
import quart
from quart_trio import QuartTrio


def lower_headers() -> dict[str, str]:
    """The current request's headers with lower-case names."""
    return {k.lower(): v for k, v in quart.request.headers.items()}


def sidecar_info(*names_and_sizes: tuple[str, int]) -> dict[str, Any]:
    """A sidecar's JSON info for a chain of files, as the sidecar would list it."""
    from tracker.core.snapshots import parse_archive_name

    files = []
    for name, size in names_and_sizes:
        parsed = parse_archive_name(name)
        assert parsed is not None, name
        entry: dict[str, Any] = {
            "file_name": name,
            "slot": parsed.slot,
            "hash": parsed.hash,
            "ext": parsed.ext,
            "size": size,
            "mod_time": "2026-11-21T10:00:00Z",
        }
        if parsed.base_slot:
            entry["base_slot"] = parsed.base_slot
        files.append(entry)
    head = parse_archive_name(names_and_sizes[0][0])
    assert head is not None
    return {
        "slot": head.slot,
        "base_slot": head.base_slot or head.slot,
        "hash": head.hash,
        "files": files,
        "size": sum(s for _, s in names_and_sizes),
    }


@attrs.define
class Sidecar:
    """A sidecar: ``/v1/snapshots`` answers ``body`` (or ``status``), files from ``files``."""

    body: Any = attrs.Factory(list)
    status: int = 200
    files: dict[str, bytes] = attrs.Factory(dict)
    requests: list[tuple[str, str, dict[str, str]]] = attrs.Factory(list)

    def app(self) -> QuartTrio:
        """The quart-trio app of this sidecar."""
        app = QuartTrio(__name__)

        @app.get("/v1/snapshots")
        async def snapshots() -> quart.Response:
            self.requests.append(("GET", "/v1/snapshots", lower_headers()))
            data = self.body if isinstance(self.body, bytes | str) else quart.json.dumps(self.body)
            return quart.Response(data, status=self.status, content_type="application/json")

        @app.route("/v1/snapshot/<name>", methods=["GET", "HEAD"])
        async def snapshot(name: str) -> quart.Response:
            self.requests.append((quart.request.method, name, lower_headers()))
            if name not in self.files:
                return quart.Response(b"", status=404)
            return quart.Response(self.files[name], content_type="application/octet-stream")

        return app


@attrs.define
class Validator:
    """A validator's HTTP server: HEAD /snapshot.tar.bz2 redirects to ``full`` (if any)."""

    full: str | None = None
    incremental: str | None = None
    absolute_base: str = ""  # when set, Location is absolute on this base
    status_when_none: int = 404
    #: Sizes of the archives it serves, answered to a HEAD of ``/{name}`` (else 404).
    sizes: dict[str, int] = attrs.Factory(dict)

    def app(self) -> QuartTrio:
        """The quart-trio app of this validator."""
        app = QuartTrio(__name__)

        def answer(name: str | None) -> quart.Response:
            if name is None:
                return quart.Response(b"", status=self.status_when_none)
            response = quart.Response(b"", status=303)
            response.headers["location"] = f"{self.absolute_base}/{name}"
            return response

        @app.route("/snapshot.tar.bz2", methods=["GET", "HEAD"])
        async def full() -> quart.Response:
            return answer(self.full)

        @app.route("/incremental-snapshot.tar.bz2", methods=["GET", "HEAD"])
        async def incremental() -> quart.Response:
            return answer(self.incremental)

        @app.route("/<name>", methods=["HEAD"])
        async def archive(name: str) -> quart.Response:
            if name not in self.sizes:
                return quart.Response(b"", status=404)
            response = quart.Response(b"", status=200)
            response.headers["content-length"] = str(self.sizes[name])
            return response

        return app


@attrs.define
class Rpc:
    """A Solana JSON-RPC node answering ``getSlot`` with ``slot`` (or HTTP ``status``)."""

    slot: int = 0
    status: int = 200
    seen: list[Any] = attrs.Factory(list)

    def app(self) -> QuartTrio:
        """The quart-trio app of this RPC node."""
        app = QuartTrio(__name__)

        @app.post("/")
        async def rpc() -> quart.Response:
            body = await quart.request.get_json()
            self.seen.append(body)
            if self.status != 200:
                return quart.Response(b"oops", status=self.status)
            return quart.jsonify({"jsonrpc": "2.0", "id": body["id"], "result": self.slot})

        return app
