"""What the proxy makes of its upstreams' answers (tracker.proxy.upstream.ask_source and
check_size), over the real download client with an ``httpx.MockTransport`` in place of its
pool (``DownloadClients(transport=...)``): statuses, redirects, credentials per origin,
lengths against the advertised size, headers. Where a socket adds nothing; what needs one
(short bodies, dropped connections, the egress check of another origin, big reads) is in
tests/integration (test_proxy.py, test_credentials.py, test_download_client.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio

from tracker.config.schema import BearerAuth, TargetGroup, TLSConfig
from tracker.core.snapshots import SnapshotFile, SnapshotSource, info_from_files, parse_archive_name
from tracker.core.text import TRACKER_AGENT
from tracker.errors import SourceFailed
from tracker.ordering.index import TargetKey
from tracker.proxy.upstream import (
    DownloadClients,
    ProxySettings,
    UpstreamAnswer,
    ask_source,
    check_size,
)

GROUP = TargetGroup(group="g", bearer_auth=BearerAuth(token="s3cret"))
SOURCE = "http://a.example"
NAME = "snapshot-100-11111111111111111111111111111111.tar.zst"
FILE = f"{SOURCE}/files/{NAME}"
KEY = TargetKey("g", SOURCE)


def _copy() -> tuple[SnapshotFile, SnapshotSource]:
    parsed = parse_archive_name(NAME)
    assert parsed is not None
    f = SnapshotFile(name=parsed, file_name=NAME, url=FILE)
    return f, SnapshotSource(info_from_files([f]), KEY, datetime.now(UTC))


#: FILE as SOURCE offers it (what :func:`ask_source` is asked for).
COPY = _copy()
Handler = Callable[[httpx.Request], httpx.Response]


def mocked(handler: Handler, settings: ProxySettings | None = None) -> DownloadClients:
    """Download clients whose every request is answered by ``handler``."""
    chosen = settings or ProxySettings()
    return DownloadClients(chosen, transport=lambda _pool: httpx.MockTransport(handler))


async def ask(
    handler: Handler,
    *,
    settings: ProxySettings | None = None,
    headers: dict[str, str] | None = None,
) -> UpstreamAnswer:
    """:func:`ask_source` for FILE of SOURCE, its answer's body already read and closed."""
    clients = mocked(handler, settings)
    try:
        asked = await ask_source(clients, GROUP, *COPY, "GET", headers or {})
        await asked.response.aread()
        await asked.response.aclose()
        await asked.slot.aclose()
        return asked
    finally:
        await clients.aclose()


def answering(status: int, headers: dict[str, str] | None = None) -> Handler:
    return lambda _request: httpx.Response(status, headers=headers, content=b"body")


@pytest.mark.parametrize("status", [200, 206, 304, 412, 416])
async def test_answers_for_the_client_are_returned_unread(status: int) -> None:
    asked = await ask(answering(status))
    assert (asked.response.status_code, asked.url) == (status, FILE)


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        (404, None, "HTTP 404 Not Found"),
        (500, None, "HTTP 500 Internal Server Error"),
        (503, {"retry-after": "5"}, "HTTP 503 Service Unavailable"),
        (401, None, "HTTP 401 Unauthorized"),
        (302, None, "HTTP 302 Found"),  # a redirect with no Location
        (204, None, "HTTP 204 No Content"),  # a success that is no answer for the client
    ],
)
async def test_other_statuses_fail_the_source(
    status: int, headers: dict[str, str] | None, reason: str
) -> None:
    with pytest.raises(SourceFailed) as failed:
        await ask(answering(status, headers))
    assert str(failed.value) == reason


async def test_a_transport_failure_fails_the_source() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(SourceFailed) as failed:
        await ask(refused)
    assert "\n" not in str(failed.value) and str(failed.value)


class Hops:
    """An upstream that redirects each URL of ``moves`` to its Location, answers 200
    elsewhere, and keeps every request it got."""

    def __init__(self, moves: dict[str, str]) -> None:
        self.moves, self.seen = moves, list[httpx.Request]()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        location = self.moves.get(str(request.url))
        if location is not None:
            return httpx.Response(302, headers={"location": location})
        return httpx.Response(200, content=b"body")

    def asked(self) -> list[tuple[str, str | None]]:
        """Each request's URL and the credentials it carried."""
        return [(str(r.url), r.headers.get("authorization")) for r in self.seen]


BEARER = "Bearer s3cret"


@pytest.mark.parametrize(
    ("moves", "asked"),
    [
        # A relative Location on the source's own origin: credentials again.
        ({FILE: "/files/y"}, [(FILE, BEARER), (f"{SOURCE}/files/y", BEARER)]),
        # Another origin gets none, nor do the hops after it; back home, they return.
        (
            {FILE: "http://b.example/z", "http://b.example/z": f"{SOURCE}/files/y"},
            [(FILE, BEARER), ("http://b.example/z", None), (f"{SOURCE}/files/y", BEARER)],
        ),
        # The same host on another port is another origin.
        ({FILE: "http://a.example:8080/x"}, [(FILE, BEARER), ("http://a.example:8080/x", None)]),
        # Userinfo in a Location is never sent: credentials go per origin.
        ({FILE: "http://u:p@b.example/z"}, [(FILE, BEARER), ("http://b.example/z", None)]),
    ],
)
async def test_redirects_keep_credentials_on_the_source_origin_only(
    moves: dict[str, str], asked: list[tuple[str, str | None]]
) -> None:
    hops = Hops(moves)
    answer = await ask(hops)
    assert hops.asked() == asked
    assert answer.url == asked[-1][0]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("ftp://a.example/x", "redirect to 'ftp://a.example/x' is not http(s)"),
        ("http://a.example:99999/x", "redirect to 'http://a.example:99999/x' is not a usable URL"),
        ("http://a.example:-1/x", "is not a usable URL"),
        # httpx refuses these itself, reading the answer's Location.
        ("http://[::1/x", "malformed HTTP answer: Invalid URL in location header"),
        ("http://a.example:80:80/x", "malformed HTTP answer: Invalid URL in location header"),
    ],
)
async def test_an_unusable_redirect_fails_the_source(location: str, reason: str) -> None:
    hops = Hops({FILE: location})
    with pytest.raises(SourceFailed) as failed:
        await ask(hops)
    assert reason in str(failed.value) and "\n" not in str(failed.value)
    assert len(hops.seen) == 1


@pytest.mark.parametrize("most", [0, 1, 5])
async def test_at_most_max_redirects_are_followed(most: int) -> None:
    hops = Hops({FILE: FILE})  # a loop
    with pytest.raises(SourceFailed) as failed:
        await ask(hops, settings=ProxySettings(max_redirects=most))
    assert str(failed.value) == f"more than {most} redirects"
    assert len(hops.seen) == most + 1


async def test_what_goes_upstream_and_no_cookie_comes_back() -> None:
    """The client's range and conditionals go, its cookies and credentials do not; the
    client's own headers are the archive-bytes client's; a cookie set by one answer is
    never sent again (no cookie jar)."""
    seen: list[httpx.Request] = []

    def planting(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"set-cookie": "session=planted"}, content=b"x")

    clients = mocked(planting)
    client_headers = {"range": "bytes=0-9", "cookie": "c=1", "authorization": "Basic eDp5"}
    for _ in range(2):
        asked = await ask_source(clients, GROUP, *COPY, "GET", client_headers)
        await asked.response.aclose()
        await asked.slot.aclose()
    await clients.aclose()
    for request in seen:
        assert request.headers["range"] == "bytes=0-9"
        assert request.headers["authorization"] == BEARER
        assert request.headers["user-agent"] == TRACKER_AGENT
        assert request.headers["accept-encoding"] == "identity"
        assert "cookie" not in request.headers


@pytest.mark.parametrize(
    ("status", "headers", "problem"),
    [
        (200, {"content-length": "100"}, None),
        (200, {"content-length": "99"}, "content-length '99' is not the advertised size 100"),
        (206, {"content-range": "bytes 0-3/100"}, None),
        (206, {"content-range": "bytes 0-3/101"}, "is not of the advertised size 100"),
        (206, {"content-range": "bytes 0-3/*"}, "is not of the advertised size 100"),
        (206, {}, "content-range '' is not of the advertised size 100"),
    ],
)
async def test_an_answer_of_another_length_fails_the_source(
    status: int, headers: dict[str, str], problem: str | None
) -> None:
    """Through the real client: the lengths it reports are the upstream's own, not the
    body's it read (the check happens before any byte of the body)."""

    async def body() -> AsyncIterator[bytes]:
        yield b"body"

    clients = mocked(lambda _r: httpx.Response(status, headers=headers, content=body()))
    asked = await ask_source(clients, GROUP, *COPY, "GET", {})
    try:
        if problem is None:
            await check_size(asked.response, 100)
            assert not asked.response.is_closed
        else:
            with pytest.raises(SourceFailed, match=problem):
                await check_size(asked.response, 100)
            assert asked.response.is_closed
    finally:
        await asked.response.aclose()
        await asked.slot.aclose()
        await clients.aclose()


async def test_a_tls_file_replaced_makes_the_download_client_again(tmp_path: Path) -> None:
    # Downloads kept the client made of the first CA file until a restart, while the
    # probes took the new one at the reload (a source whose certificate changed CA was "up"
    # and every download of it failed verification).
    data = Path(__file__).parent.parent / "data" / "config"
    ca = tmp_path / "ca.pem"
    ca.write_bytes((data / "ca.pem").read_bytes())
    tls = TLSConfig(ca_file=str(ca))
    clients = DownloadClients(ProxySettings())
    first = clients.for_tls(tls)
    assert clients.for_tls(tls) is first
    replaced = tmp_path / "new.pem"
    replaced.write_bytes((data / "client.pem").read_bytes())
    replaced.replace(ca)
    second = clients.for_tls(tls)
    assert second is not first and clients.for_tls(tls) is second
    # half replaced (no certificate in it yet): the last client that loaded goes on, once
    ca.write_text("being written")
    assert clients.for_tls(tls) is second and clients.for_tls(tls) is second
    assert clients._retired == [first]
    await clients.aclose()
    assert first.is_closed and second.is_closed


async def test_a_tls_file_rewritten_in_place_with_its_mtime_kept_is_seen(tmp_path: Path) -> None:
    # `cp -p new.pem ca.pem` writes into the same inode and sets the old mtime back: the
    # same size too (two certificates of one key type often are), only the ctime moved.
    data = Path(__file__).parent.parent / "data" / "config"
    ca, other = tmp_path / "ca.pem", data / "ca.pem"
    ca.write_bytes(other.read_bytes())
    tls = TLSConfig(ca_file=str(ca))
    clients = DownloadClients(ProxySettings())
    first = clients.for_tls(tls)
    before = ca.stat()
    after = before
    while after.st_ctime_ns == before.st_ctime_ns:  # file times tick coarsely: a later tick
        await trio.sleep(0.001)
        with ca.open("r+b") as f:  # the same bytes, written again in place
            f.write(other.read_bytes())
        os.utime(ca, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = ca.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns,
    )  # fmt: skip
    try:
        assert clients.for_tls(tls) is not first
    finally:
        await clients.aclose()
