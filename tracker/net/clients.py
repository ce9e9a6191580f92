"""HTTP clients for a group's own sources: its TLS settings, bounded pools, explicit timeouts.

Credentials are not set on the client: callers add the group's ``authorization`` header per
request, and only to that group's own sources (redirects are never followed automatically, so
a header cannot leak to another origin). No client keeps cookies (:func:`no_cookies`): what a
source sets is never replayed, to it or to another group's source on the same host.
"""

from __future__ import annotations

import base64
import http.cookiejar
import ssl
import urllib.request
from urllib.parse import unquote, urlsplit

import httpx

from tracker.config.schema import TargetGroup, TLSConfig
from tracker.core.text import TRACKER_AGENT


def ssl_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """A client TLS context for ``tls`` (system CAs when no ``ca_file``)."""
    ctx = ssl.create_default_context(cafile=tls.ca_file or None if tls else None)
    if tls is None:
        return ctx
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _RefuseCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that stores nothing and sends nothing."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar for httpx clients (``cookies=``) that never keeps a cookie.

    httpx keeps every ``Set-Cookie`` it sees in the client's jar and sends it again on later
    requests to that host; a source could plant a cookie that the tracker then replays to
    another group's source on the same host.
    """
    return http.cookiejar.CookieJar(policy=_RefuseCookies())


def build_client(
    group: TargetGroup,
    *,
    connect_timeout: float,
    read_timeout: float | None,
    max_connections: int,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """A client for ``group``'s sources. HTTP/1.1 only (HTTP/2 is far slower for bulk bodies).

    ``tls``: a context built by :func:`ssl_context` for this group, to share between clients
    (loading the system's CA store costs milliseconds each time).
    """
    return httpx.AsyncClient(
        verify=tls or ssl_context(group.tls_config),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(connect_timeout, read=read_timeout, pool=connect_timeout),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=min(64, max_connections)
        ),
        headers={"accept-encoding": "identity", "user-agent": TRACKER_AGENT},
        cookies=no_cookies(),
    )


def auth_headers(group: TargetGroup, target: str = "") -> dict[str, str]:
    """The credentials of ``group``'s source ``target`` as request headers (empty when it has
    none): see :func:`authorization`."""
    value = authorization(group, target)
    return {"authorization": value} if value else {}


def authorization(group: TargetGroup, target: str) -> str | None:
    """The ``Authorization`` value for requests to ``target``'s own origin, or None.

    The group's ``bearer_auth``/``basic_auth`` first; else the userinfo of the configured
    target URL itself (``http://user:password@host/``), as Basic credentials.
    """
    value = group.authorization
    if value:
        return value
    parts = urlsplit(target)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``: lower case, the scheme's default port filled in.

    Raises ValueError for a port that is not a number from 0 to 65535.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def without_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` part (credentials go per request, per origin)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
