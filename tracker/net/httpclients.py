"""HTTP clients for a group's own sources: its TLS settings, bounded pools, explicit timeouts;
the one factory of clients for archive bytes (:func:`bulk_client`).

Credentials are not set on the client: callers add the group's ``authorization`` header per
request, and only to that group's own sources (redirects are never followed automatically, so
a header cannot leak to another origin). No client keeps cookies (:func:`no_cookies`): what a
source sets is never replayed, to it or to another group's source on the same host.
"""

from __future__ import annotations

import base64
import functools
import http.cookiejar
import os
import ssl
import urllib.request
from collections.abc import Callable, Collection, Generator
from functools import partial
from urllib.parse import unquote, urlsplit

import attrs
import httpcore
import httpx
import trio

from tracker.config.bounded import LOOK_BOUND, answered
from tracker.config.files import tls_context
from tracker.config.schema import TargetGroup, TLSConfig
from tracker.core.text import TRACKER_AGENT


def ssl_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """A client TLS context for ``tls`` (system CAs when no ``ca_file``;
    :func:`tracker.config.files.tls_context`, which the config's check builds too).

    One context per setting and state of its files, shared by the clients made of it:
    loading a CA store takes ~30 ms of the event loop, and a reload makes each group's probe
    and discovery clients again. A file replaced (the system's CA bundle too) makes a new
    one; one that fails to load is tried again on the next call."""
    files = tls_files(tls)
    if tls is None or not tls.ca_file:  # the system's CAs are loaded: their state counts
        files += _system_ca_files()
    return _context(tls, files)


@functools.lru_cache(maxsize=64)
def _context(tls: TLSConfig | None, _files: tuple[object, ...]) -> ssl.SSLContext:
    # ``_files`` only keys the cache: a context of files since replaced is not handed out
    if tls is None:
        return ssl.create_default_context()
    return tls_context(tls.ca_file, tls.cert_file, tls.key_file, tls.insecure_skip_verify)


@attrs.frozen
class _Loaded:
    """A TLS setting's context, and its files' state when it was loaded."""

    files: tuple[object, ...]
    context: ssl.SSLContext


def _load(tls: TLSConfig | None) -> _Loaded:
    """:func:`ssl_context` of ``tls`` with the state of the files it was made of. Blocking."""
    files = tls_files(tls)
    return _Loaded(files, ssl_context(tls))


class TlsContexts:
    """The client TLS contexts of the config's settings, loaded off the event loop at
    start-up and at each reload (:meth:`load`, in threads within the config's bound on a
    look) and handed out on it without a look at the files: on the event loop, the stats
    and loads of a CA or client certificate on a hung mount froze every request at a reload
    (the probes' and discovery's clients are made then), and each download's stat of its
    group's files froze it at every request (docs/configuration.md, "Paths on a hung
    mount"). A setting not loaded so (a test's) is loaded where it is asked for, as before.
    """

    def __init__(self) -> None:
        self._loaded: dict[TLSConfig | None, _Loaded] = {}
        #: The settings of the last load that answered (the config in force): theirs are kept
        #: through the next one (a request of the config before may still ask), the others'
        #: dropped.
        self._before: frozenset[TLSConfig | None] = frozenset()

    async def load(
        self, settings: Collection[TLSConfig | None], bound: float = LOOK_BOUND
    ) -> set[TLSConfig | None]:
        """Load the context of each of ``settings`` (files replaced since are loaded again),
        each in a thread within ``bound`` seconds, all at once; returns those whose files
        did not answer (a hung mount: one still hanging from an earlier load answers at
        once, no second thread). One whose files do not load keeps no context here: it is
        loaded again where it is asked for, and its error said there."""
        found: dict[TLSConfig | None, _Loaded | None] = {}
        failed: set[TLSConfig | None] = set()

        async def load_one(tls: TLSConfig | None) -> None:
            # one thread per setting and state of the mount: a setting whose load still
            # hangs from an earlier load is not asked again meanwhile
            ask = partial(answered, ("tls context", repr(tls)), partial(_load, tls), bound)
            try:
                found[tls] = await trio.to_thread.run_sync(ask, abandon_on_cancel=True)
            except (ssl.SSLError, OSError, ValueError):
                failed.add(tls)

        async with trio.open_nursery() as nursery:
            for tls in set(settings):
                nursery.start_soon(load_one, tls)
        now = frozenset(settings)
        kept = self._before | now
        self._loaded = {
            tls: loaded for tls, loaded in self._loaded.items() if tls in kept and tls not in failed
        }
        self._loaded.update({tls: loaded for tls, loaded in found.items() if loaded is not None})
        unanswered = {tls for tls, loaded in found.items() if loaded is None}
        if not unanswered:  # else refused: the settings in force stay those kept next time
            self._before = now
        return unanswered

    def context(self, tls: TLSConfig | None) -> ssl.SSLContext:
        """The context of ``tls``, as :meth:`load` made it (else :func:`ssl_context`'s)."""
        loaded = self._loaded.get(tls)
        return loaded.context if loaded is not None else ssl_context(tls)

    def files(self, tls: TLSConfig | None) -> tuple[object, ...]:
        """The state of the files of ``tls`` as :meth:`load` found it (else
        :func:`tls_files`' now)."""
        loaded = self._loaded.get(tls)
        return loaded.files if loaded is not None else tls_files(tls)


def _system_ca_files() -> tuple[object, ...]:
    """What the system's CA file and directory are now (as :func:`tls_files` tells)."""
    paths = ssl.get_default_verify_paths()
    return tuple(_file_state(path) for path in (paths.cafile, paths.capath))


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
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=min(64, max_connections)
    )
    pool = httpx.AsyncHTTPTransport(
        verify=tls or ssl_context(group.tls_config), trust_env=False, limits=limits
    )
    return httpx.AsyncClient(
        transport=AskedAgain(pool),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(connect_timeout, read=read_timeout, pool=connect_timeout),
        headers={"accept-encoding": "identity", "user-agent": TRACKER_AGENT},
        cookies=no_cookies(),
    )


class AskedAgain(httpx.AsyncBaseTransport):
    """Sends a ``GET`` or ``HEAD`` once more when its connection broke before any answer.

    A source's server ends an idle keep-alive connection when its own timeout says so; a
    request sent on that connection at that moment meets a close, not an answer (``Server
    disconnected without sending a response``, or a reset). The request was not handled, and
    these methods are idempotent, so it is sent again (RFC 9110, 9.2.2, as browsers do), on
    another connection: the pool drops the broken one. Without it one source of a round now
    and then counted as down until the next round, more often the busier the host. A second
    failure is the answer. Anything else (a timeout, a refused connect, another method)
    is not repeated.
    """

    RETRIED = ("GET", "HEAD")

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The answer to ``request``, asked twice at most (see the class doc)."""
        try:
            return await self._inner.handle_async_request(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            if request.method not in self.RETRIED:
                raise
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the pool under it."""
        await self._inner.aclose()


def rpc_client() -> httpx.AsyncClient:
    """The client of the tracker's JSON-RPC calls (``rpc``: the health check's slot, the
    cluster's votes): no cookie jar (:func:`no_cookies`), no proxy or certificates from the
    environment; each call sets its own timeout."""
    return httpx.AsyncClient(trust_env=False, cookies=no_cookies())


@attrs.frozen
class ClientShape:
    """What tells one client for archive bytes from another: its ``User-Agent``, timeouts
    (seconds) and pool, and whether it follows redirects (``max_redirects`` 0: a redirect
    is an answer). Everything else is :func:`bulk_client`'s, the same for every one."""

    agent: str
    connect_timeout: float
    #: Longest wait for one read (or write) of a socket: a download may last hours.
    read_timeout: float
    max_connections: int
    #: Longest wait for a connection of the pool (None: ``connect_timeout``).
    pool_timeout: float | None = None
    #: Idle connections kept (None: ``max_connections``, at most 64).
    max_keepalive: int | None = None
    #: Seconds an idle connection is kept (None: until the pool closes).
    keepalive_expiry: float | None = None
    max_redirects: int = 0


#: What turns an httpcore pool into the transport of an httpx client.
PoolTransportOf = Callable[[httpcore.AsyncConnectionPool], httpx.AsyncBaseTransport]


def bulk_client(
    shape: ClientShape,
    network: httpcore.AsyncNetworkBackend,
    transport: PoolTransportOf,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """A client for archive bytes (``fetch``'s downloads, the proxy's upstreams): HTTP/1.1
    only (HTTP/2 is far slower for bulk bodies), bodies raw (``accept-encoding:
    identity``), no cookie jar (:func:`no_cookies`), no proxy or certificates from the
    environment, per-phase timeouts and no overall read deadline.

    ``network`` opens its connections and reads them (the big reads of
    :class:`tracker.clientwire.transport.BigReadBackend`, which must wrap any egress check),
    ``transport`` turns the pool into the client's transport
    (:class:`tracker.clientwire.transport.PoolTransport`); both are passed in since they rely
    on httpcore's internals, which only :mod:`tracker.zerocopy` may use. ``tls``: the
    context of the sources' TLS settings (None: httpcore's default one).
    """
    keepalive = shape.max_keepalive
    if keepalive is None:
        keepalive = min(64, shape.max_connections)
    pool = httpcore.AsyncConnectionPool(
        ssl_context=tls,
        max_connections=shape.max_connections,
        max_keepalive_connections=min(64, shape.max_connections)
        if keepalive is None
        else keepalive,
        keepalive_expiry=shape.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=network,
    )
    pool_timeout = shape.connect_timeout if shape.pool_timeout is None else shape.pool_timeout
    return httpx.AsyncClient(
        transport=transport(pool),
        trust_env=False,
        follow_redirects=shape.max_redirects > 0,
        max_redirects=shape.max_redirects,
        cookies=no_cookies(),
        timeout=httpx.Timeout(
            connect=shape.connect_timeout,
            read=shape.read_timeout,
            write=shape.read_timeout,
            pool=pool_timeout,
        ),
        headers={"accept-encoding": "identity", "user-agent": shape.agent},
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
    return group.authorization or basic_credentials(target)


def basic_credentials(url: str) -> str | None:
    """The ``Authorization`` value of the userinfo of ``url`` (``http://user:pw@host/``), as
    Basic credentials; None when it has none."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class OriginCredentials(httpx.Auth):
    """The userinfo of URLs the user typed (``fetch --tracker``/``--source``), sent as
    Basic credentials to each one's own origin only: every request to that origin (the
    archives a validator redirects to on its own origin, the tracker's routes) carries
    them, none to another (a redirect to another origin: :meth:`own_origin_only`)."""

    def __init__(self, urls: list[str]) -> None:
        self._by_origin: dict[tuple[str, str, int | None], str] = {}
        for url in urls:
            value = basic_credentials(url)
            if value is not None:
                self._by_origin.setdefault(origin(url), value)

    def __bool__(self) -> bool:
        return bool(self._by_origin)

    def _typed_for(self, request: httpx.Request) -> str | None:
        """The credentials typed for the origin ``request`` goes to. None too for a URL
        httpx takes and :func:`origin` refuses (a port past 65535, from a listing or a
        redirect: network input): no typed URL's origin, it fails at its connect as any
        unreachable source does."""
        try:
            return self._by_origin.get(origin(str(request.url)))
        except ValueError:
            return None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the origin's credentials to ``request`` (one it already has are kept)."""
        value = self._typed_for(request)
        if value is not None and "authorization" not in request.headers:
            request.headers["authorization"] = value
        yield request

    async def own_origin_only(self, request: httpx.Request) -> None:
        """A request hook, run for every hop of a redirect: typed credentials of another
        origin are removed (one set otherwise is kept). httpx keeps the header on a redirect
        from ``http`` to ``https`` of one host (its "upgrade"): another origin all the same."""
        value = self._typed_for(request)
        sent = request.headers.get("authorization")
        if sent is not None and sent != value and sent in self._by_origin.values():
            del request.headers["authorization"]


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


def tls_files(tls: TLSConfig | None) -> tuple[object, ...]:
    """What the files of ``tls`` are now (each one's identity, size, mtime and ctime; None
    where it cannot be read): a client made of them is made again when this changes. The
    ctime tells a file rewritten in place with its mtime kept (``cp -p``, ``install -p``:
    same inode, often the same size) from the one loaded; nobody can set it back."""
    if tls is None:
        return ()
    return tuple(_file_state(path) for path in (tls.ca_file, tls.cert_file, tls.key_file))


def _file_state(path: str | None) -> object:
    """A file's identity, size, mtime and ctime (None: no path, or it cannot be read)."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
