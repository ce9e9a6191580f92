"""Upstream servers for the source-probe tests, imported by their tests in unit/ and integration/.

- :class:`ScriptedApp`: an ASGI app answering each path from a table (or an async handler),
  recording every request; serve it with ``helpers_server.serve_app``.
- :func:`file_json`, :func:`info_json`: entries of a sidecar's ``/v1/snapshots`` list.
- :func:`serve_raw`: a raw trio TCP server for answers no well-behaved server gives (a body
  that never ends, a Content-Length that lies, a connection that hangs, plain text to TLS).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import base58
import trio

#: Fixed, valid base58 32-byte hashes.
HASHES = [base58.b58encode(bytes([i + 1]) * 32).decode() for i in range(8)]


def file_json(slot: int, hash_: str, *, base: int = 0, ext: str = ".tar.zst", **extra: Any):
    """A sidecar's file entry (extra keys: size, mod_time, ...)."""
    if base:
        name = f"incremental-snapshot-{base}-{slot}-{hash_}{ext}"
    else:
        name = f"snapshot-{slot}-{hash_}{ext}"
    out: dict[str, Any] = {"file_name": name, "slot": slot, "hash": hash_, "ext": ext}
    if base:
        out["base_slot"] = base
    return out | extra


def info_json(*files: dict[str, Any]) -> dict[str, Any]:
    """A sidecar's snapshot info: ``files`` newest first, the first one its head."""
    head = files[0]
    return {
        "slot": head["slot"],
        "base_slot": head.get("base_slot", head["slot"]),
        "hash": head["hash"],
        "files": list(files),
        "size": sum(f.get("size", 0) for f in files),
    }


@attrs.frozen
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@attrs.frozen
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]


Handler = Callable[[Request], Awaitable[Answer]]


@attrs.define
class ScriptedApp:
    """ASGI app: ``routes[path]`` answers (404 otherwise); ``requests`` records each request."""

    routes: dict[str, Answer | Handler] = attrs.Factory(dict)
    requests: list[Request] = attrs.Factory(list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
        )
        self.requests.append(request)
        route = self.routes.get(request.path, Answer(404))
        answer = route if isinstance(route, Answer) else await route(request)
        headers = [(k.encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        body = b"" if request.method == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


RawHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(
    handler: RawHandler, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``handler`` on 127.0.0.1 (free port) until cancelled; reports ``http://host:port``.

    A peer that hangs up mid-answer ends its handler quietly.
    """

    async def guarded(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, guarded, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        task_status.started(f"http://127.0.0.1:{port}")


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """Read a request's header block (up to the blank line)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data
