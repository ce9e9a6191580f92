"""Emulations of the clients of README.md#clients, each following its client's rules exactly.

- :func:`firedancer` is Firedancer's snapshot peer logic (``fd_ssresolve.c``/``fd_sshttp.c``):
  ``HEAD`` then ``GET`` of ``/snapshot.tar.bz2`` and ``/incremental-snapshot.tar.bz2`` with
  ``User-Agent: Firedancer`` and a ``Host`` without port; a redirect is followed only when
  its ``location`` starts with ``/`` and the rest is a bare ``.tar.zst`` archive name (no
  directory, no query), re-sent to the same address, at most 4 hops; connect, send and the
  whole response head each within 1 s; only a 200 with a digits-only ``content-length`` is
  accepted; a 404 on either alias makes the whole peer unusable.
- :func:`snapshot_finder_heads` is solana-snapshot-finder 0.3.9's check of a peer: ``HEAD``
  of both aliases with a 1 s timeout, the lower-case ``location`` read from the answer; it
  then downloads ``http://{host:port}{location}`` with ``wget --trust-server-names``.

Both talk HTTP/1.1 over plain sockets so that the wire is seen as the client sees it.
"""

from __future__ import annotations

import re

import attrs
import trio

ALIASES = ("/snapshot.tar.bz2", "/incremental-snapshot.tar.bz2")
#: What Firedancer accepts as the rest of a ``location`` after its leading ``/``.
_FD_NAME = re.compile(
    r"(incremental-)?snapshot-[0-9]+-([0-9]+-)?[1-9A-HJ-NP-Za-km-z]{32,44}\.tar\.zst"
)
_HEAD_LIMIT = 8192
_REDIRECTS = (301, 302, 303, 307, 308)


class PeerRefused(AssertionError):
    """The emulated client refuses the peer (the reason says which rule failed)."""


@attrs.define
class Answer:
    """One response as the client parsed it."""

    status: int
    headers: dict[str, str]  # names as sent (the client matches them case-sensitively)
    body: bytes = b""
    head_seconds: float = 0.0  # from the start of the request to the end of its head


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    *,
    limit: float = 1.0,
) -> Answer:
    """One request on a fresh connection; connect, send and the head each within ``limit``."""
    start = trio.current_time()
    with trio.move_on_after(limit) as connecting:
        stream = await trio.open_tcp_stream(host, port)
    if connecting.cancelled_caught:
        raise PeerRefused(f"{method} {path}: no connection within {limit}s")
    async with stream:
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        with trio.move_on_after(limit) as sending:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        if sending.cancelled_caught:
            raise PeerRefused(f"{method} {path}: request not sent within {limit}s")
        data = bytearray()
        head_started = trio.current_time()
        with trio.move_on_after(limit) as reading:
            while b"\r\n\r\n" not in data and len(data) < _HEAD_LIMIT:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        if reading.cancelled_caught or b"\r\n\r\n" not in data:
            spent = trio.current_time() - head_started
            raise PeerRefused(f"{method} {path}: no whole head within {limit}s ({spent:.2f}s)")
        head_seconds = trio.current_time() - start
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = dict(line.split(": ", 1) for line in header_lines)
        answer = Answer(int(status_line.split()[1]), answer_headers, b"", head_seconds)
        if method == "GET" and answer.status == 200:
            answer.body = await _read_body(stream, rest, answer_headers)
        return answer


async def _read_body(stream: trio.SocketStream, rest: bytes, headers: dict[str, str]) -> bytes:
    length = headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        raise PeerRefused(f"content-length {length!r} is not digits only")
    body = bytearray(rest)
    with trio.fail_after(30):
        while len(body) < int(length):
            chunk = await stream.receive_some(1 << 20)
            if not chunk:
                raise PeerRefused(f"body ended after {len(body)} of {length} bytes")
            body += chunk
    return bytes(body)


async def firedancer(host: str, port: int) -> dict[str, tuple[str, bytes]]:
    """Firedancer's download of a peer's full and incremental archive (see the module doc).

    Returns, per alias, the archive name the redirect named and the bytes of the ``GET``.
    Raises :class:`PeerRefused` when any rule fails.
    """
    got: dict[str, tuple[str, bytes]] = {}
    for alias in ALIASES:
        names = []
        for method in ("HEAD", "GET"):
            name, answer = await _firedancer_follow(host, port, method, alias)
            names.append(name)
            if method == "GET":
                got[alias] = (name, answer.body)
        if names[0] != names[1]:
            raise PeerRefused(f"{alias}: HEAD named {names[0]}, GET named {names[1]}")
    return got


async def _firedancer_follow(host: str, port: int, method: str, alias: str) -> tuple[str, Answer]:
    headers = [("Host", host), ("User-Agent", "Firedancer"), ("Accept", "*/*")]
    path, name = alias, ""
    for _hop in range(4):
        answer = await request(host, port, method, path, headers)
        if answer.status == 404:
            raise PeerRefused(f"{method} {path}: 404 makes the peer unusable")
        if answer.status in _REDIRECTS:
            location = answer.headers.get("location")
            if location is None:
                raise PeerRefused(f"{method} {path}: redirect without a lower-case location")
            if not location.startswith("/") or not _FD_NAME.fullmatch(location[1:]):
                raise PeerRefused(f"{method} {path}: location {location!r} is not /<name>.tar.zst")
            path, name = location, location[1:]
            continue
        if answer.status != 200:
            raise PeerRefused(f"{method} {path}: status {answer.status}")
        length = answer.headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            raise PeerRefused(f"{method} {path}: content-length {length!r} is not digits only")
        if not name:
            raise PeerRefused(f"{method} {alias}: a 200 without a redirect names no archive")
        return name, answer
    raise PeerRefused(f"{method} {alias}: more than 4 hops")


async def snapshot_finder_heads(host: str, port: int) -> dict[str, str]:
    """solana-snapshot-finder's check: the lower-case ``location`` of both aliases, each
    answered within 1 s (HEAD, no redirect followed)."""
    locations = {}
    for alias in ALIASES:
        answer = await request(host, port, "HEAD", alias, [("Host", f"{host}:{port}")])
        location = answer.headers.get("location")
        if location is None:
            raise PeerRefused(f"HEAD {alias}: no lower-case location ({answer.status})")
        locations[alias] = location
    return locations
