"""The one factory of clients for archive bytes (tracker/net/httpclients.py ``bulk_client``) and
fetch's client made with it (tracker/fetch/run.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpcore
import httpx
import pytest
from helpers_tls import issue

import tracker.fetch.run as fetch_run
from tracker.clientwire.transport import BigReadBackend, PoolTransport
from tracker.config.schema import TLSConfig
from tracker.core.text import FETCH_AGENT
from tracker.fetch.run import _client
from tracker.fetch.settings import FetchSettings
from tracker.net.httpclients import ClientShape, OriginCredentials, bulk_client, ssl_context


class Recorded(httpx.AsyncBaseTransport):
    """A transport that keeps the pool it was made of."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self.pool = pool


def built(
    shape: ClientShape, tls: ssl.SSLContext | None = None
) -> tuple[httpx.AsyncClient, Recorded]:
    made: list[Recorded] = []

    def transport(pool: httpcore.AsyncConnectionPool) -> Recorded:
        made.append(Recorded(pool))
        return made[-1]

    network = BigReadBackend(1024)
    client = bulk_client(shape, network, transport, tls)
    (recorded,) = made
    assert recorded.pool._network_backend is network  # what was given opens connections
    return client, recorded


def test_a_bulk_client_reads_raw_keeps_no_cookie_and_bounds_each_phase() -> None:
    shape = ClientShape("agent/1", connect_timeout=2.0, read_timeout=30.0, max_connections=100)
    client, recorded = built(shape)
    assert client.headers["user-agent"] == "agent/1"
    assert client.headers["accept-encoding"] == "identity"
    assert not client.follow_redirects and not client.trust_env
    assert client.timeout == httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=2.0)
    request = httpx.Request("GET", "http://s.example/x")
    client.cookies.extract_cookies(
        httpx.Response(200, headers={"set-cookie": "a=1"}, request=request)
    )
    assert not list(client.cookies.jar)  # a cookie is never kept
    pool = recorded.pool
    assert (pool._max_connections, pool._max_keepalive_connections) == (100, 64)
    assert pool._keepalive_expiry is None and pool._http1 and not pool._http2


def test_a_shape_says_what_differs() -> None:
    tls = ssl.create_default_context()
    shape = ClientShape(
        "a",
        connect_timeout=1.0,
        read_timeout=5.0,
        max_connections=8,
        pool_timeout=7.0,
        max_keepalive=8,
        keepalive_expiry=30.0,
        max_redirects=5,
    )
    client, recorded = built(shape, tls)
    assert client.follow_redirects and client.max_redirects == 5
    assert client.timeout.pool == 7.0
    pool = recorded.pool
    assert (pool._max_keepalive_connections, pool._keepalive_expiry) == (8, 30.0)
    assert pool._ssl_context is tls


def test_fetchs_client_is_a_bulk_client_that_follows_redirects() -> None:
    settings = FetchSettings(connections=4, request_timeout=3.0, read_timeout=20.0)
    client = _client(settings, OriginCredentials([]))
    assert isinstance(client._transport, PoolTransport)
    assert client.headers["user-agent"] == FETCH_AGENT
    assert client.headers["accept-encoding"] == "identity"
    assert client.follow_redirects and client.max_redirects == 5 and not client.trust_env
    assert client.timeout == httpx.Timeout(connect=3.0, read=20.0, write=20.0, pool=20.0)


def test_typed_credentials_go_to_their_own_origin_only() -> None:
    """``fetch --tracker``/``--source`` URLs with userinfo: Basic credentials to each one's
    origin (the scheme's default port filled in), none to another, one already set kept."""
    credentials = OriginCredentials(["http://u:p@a.example", "https://b.example:8443/x", ""])
    client = _client(FetchSettings(), credentials)
    assert client.auth is credentials

    def sent(url: str, **headers: str) -> str | None:
        flow = credentials.auth_flow(httpx.Request("GET", url, headers=headers))
        return next(flow).headers.get("authorization")

    assert sent("http://a.example:80/snapshot.tar.bz2") == "Basic dTpw"
    assert sent("https://a.example/x") is None  # another scheme: another origin
    assert sent("http://b.example:8443/") is None  # no credentials typed for it
    assert sent("http://a.example/", authorization="Bearer t") == "Bearer t"
    assert not OriginCredentials(["http://a.example"])


async def test_typed_credentials_do_not_follow_an_upgrade_to_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx keeps Authorization on a redirect from http to https of one host (its port 80 to
    # 443 "upgrade"): another origin, which the typed credentials are not for.
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.scheme == "http":
            return httpx.Response(302, headers={"location": "https://a.example/full.tar.zst"})
        return httpx.Response(200, content=b"x")

    def mocked(*_args: object) -> httpx.AsyncClient:  # the wire replaced: no network here
        return httpx.AsyncClient(transport=httpx.MockTransport(answer), follow_redirects=True)

    monkeypatch.setattr(fetch_run, "bulk_client", mocked)
    credentials = OriginCredentials(["http://u:p@a.example"])
    client = _client(FetchSettings(), credentials)
    async with client:
        assert (await client.get("http://a.example/full.tar.zst")).content == b"x"
    assert seen == [
        ("http://a.example/full.tar.zst", "Basic dTpw"),
        ("https://a.example/full.tar.zst", None),
    ]


async def test_only_typed_credentials_of_another_origin_are_removed() -> None:
    credentials = OriginCredentials(["http://u:p@a.example", "http://v:q@b.example"])

    async def kept(url: str, value: str) -> str | None:
        request = httpx.Request("GET", url, headers={"authorization": value})
        await credentials.own_origin_only(request)
        return request.headers.get("authorization")

    assert await kept("http://a.example/", "Basic dTpw") == "Basic dTpw"  # its own
    assert await kept("https://a.example/", "Basic dTpw") is None  # another origin's
    assert await kept("http://b.example/", "Basic dTpw") is None
    assert await kept("https://c.example/", "Bearer set-by-hand") == "Bearer set-by-hand"
    # a port httpx takes and the origin's parse refuses (network input): nobody's origin
    assert await kept("http://a.example:65536/", "Basic dTpw") is None
    flow = credentials.auth_flow(httpx.Request("GET", "http://a.example:65536/"))
    assert "authorization" not in next(flow).headers


def test_one_tls_context_per_setting_and_state_of_its_files(tmp_path: Path) -> None:
    # Loading a CA store takes tens of milliseconds of the event loop, once per context:
    # every client made of one setting shares one, until a file of it is replaced.
    assert ssl_context(None) is ssl_context(None)
    ca = issue(tmp_path, "ca")
    tls = TLSConfig(ca_file=str(ca.cert))
    first = ssl_context(tls)
    assert ssl_context(TLSConfig(ca_file=str(ca.cert))) is first
    assert ssl_context(TLSConfig(ca_file=str(ca.cert), insecure_skip_verify=True)) is not first
    replaced = tmp_path / "replaced.pem"
    (tmp_path / "other").mkdir()
    replaced.write_bytes(issue(tmp_path / "other", "another ca").cert.read_bytes())
    replaced.replace(ca.cert)  # another CA in its place (a new inode): a new context
    second = ssl_context(tls)
    assert second is not first
    assert second.get_ca_certs() != first.get_ca_certs()
    ca.cert.write_text("not a certificate")
    for _ in range(2):  # a file that does not load is refused each time, never kept
        with pytest.raises(ssl.SSLError):
            ssl_context(tls)


@pytest.mark.parametrize("setting", ["none", "empty", "client certificate"])
def test_the_system_ca_context_is_made_again_when_its_bundle_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    # No tls_config, or one without ca_file (a client certificate of a public CA's source):
    # the system's CAs are loaded, and a bundle replaced since (update-ca-certificates, then
    # a reload) is what the next context trusts.
    mine = issue(tmp_path, "client")
    tls = {
        "none": None,
        "empty": TLSConfig(),
        "client certificate": TLSConfig(cert_file=str(mine.cert), key_file=str(mine.key)),
    }[setting]
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(issue(tmp_path, "system ca").cert.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # what OpenSSL reads as the system's
    first = ssl_context(tls)
    assert ssl_context(tls) is first
    assert [c["subject"] for c in first.get_ca_certs()] == [((("commonName", "system ca"),),)]
    (tmp_path / "new").mkdir()
    new = tmp_path / "new.pem"
    new.write_bytes(issue(tmp_path / "new", "updated ca").cert.read_bytes())
    new.replace(bundle)  # as update-ca-certificates writes it
    second = ssl_context(tls)
    assert second is not first
    assert [c["subject"] for c in second.get_ca_certs()] == [((("commonName", "updated ca"),),)]
