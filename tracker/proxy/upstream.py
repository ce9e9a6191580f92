"""Proxy mode, upstream side: the download path's tunables (:class:`ProxySettings`), download
clients, header filtering, and asking one source (:func:`ask_source`), its answer's length held
to the size advertised. Choosing among the sources of a file, and asking the same one again for
the rest of a body that broke, is :mod:`tracker.proxy.failover`'s.

What crosses the tracker in proxy mode is decided by two whitelists, in both directions:

- to the upstream go only the client's ``Range``, ``If-Range`` and conditional headers
  (:data:`tracker.proxy.ask.FORWARDED_REQUEST_HEADERS`), plus the group's own
  ``Authorization`` — never the client's cookies or credentials;
- to the client go only :data:`PASSED_RESPONSE_HEADERS` of the upstream answer: hop-by-hop
  headers, ``Set-Cookie``, ``Server`` and everything else stay behind.

:func:`ask_source` asks one source for a file and returns a usable answer (200/206/304/412/416)
with its body still unread; redirects are followed by hand (at most
:attr:`ProxySettings.max_redirects`), each hop within the ``source_limits`` of the origin it
asks (the slot is the serving origin's, not the first URL's). The group's credentials (and
the userinfo of the configured target URL) and its TLS client settings are only used on the
origin of the *configured* source: a file URL that a probe's ``Location`` put on another
origin, or a redirect to one, gets a client without them that connects only where the
egress policy allows (:mod:`tracker.net.egress`). No client keeps cookies.
An answer whose length contradicts the size the source advertised (``Content-Length`` of a
200, the total of a 206's ``Content-Range``) fails that source: the tracker never serves or
caches a file shorter or longer than the one announced.

Download clients read the socket in large pieces (docs/architecture.md#traps-of-the-stack, 5):
httpcore asks its network
stream for 64 KiB per read, which caps a proxy at about 0.5 GB/s; :class:`BigReadBackend`
turns every read into a read of up to :attr:`ProxySettings.read_size` bytes.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from urllib.parse import urljoin, urlsplit

import attrs
import httpcore
import httpx
import trio

from tracker.clientwire.transport import BigReadBackend, PoolTransport
from tracker.config.schema import Config, SourceLimits, TargetGroup, TLSConfig
from tracker.core.snapshots import SnapshotFile
from tracker.core.text import TRACKER_AGENT, quoted
from tracker.errors import (
    SourceFailed,
    SourceGone,
    SourceOverloaded,
    SourceWithdrawn,
    UpstreamError,
)
from tracker.multisource.contentrange import parse_content_range
from tracker.net.egress import CheckingBackend, EgressPolicy, Resolver, resolve, resolve_strangers
from tracker.net.exchange import send, source_failures
from tracker.net.httpclients import (
    ClientShape,
    PoolTransportOf,
    TlsContexts,
    authorization,
    bulk_client,
    origin,
    ssl_context,
    without_userinfo,
)
from tracker.net.limits import status_reason
from tracker.net.sourcelimits import (
    QUEUE,
    UNCAPPED,
    Pacer,
    QueueEvent,
    Slot,
    SourceLimiter,
)
from tracker.observability.logs import log_event
from tracker.ordering.index import SnapshotSource, TargetKey
from tracker.proxy.ask import upstream_request_headers

log = logging.getLogger("tracker.proxy")

#: Upstream response headers passed on to the client (lower case). Everything else is dropped.
PASSED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-range", "accept-ranges", "etag", "last-modified", "content-type"}
)
#: Upstream statuses that are answers for the client; anything else makes us try the next source.
ANSWER_STATUSES = frozenset({200, 206, 304, 412, 416})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: A file the source's listing named and that it no longer has: pruned since (SourceGone).
_GONE = frozenset({404, 410})
#: A source too busy to answer now (SourceOverloaded): agave's RPC and nginx's ``limit_conn``
#: at their connection limit answer 503, a rate limiter 429.
BUSY_STATUSES = frozenset({429, 503})
#: Reads of its share one channel stream holds at most: the read in flight, the read-ahead
#: (up to a share, plus the read that overflowed it), the piece waiting to be handed over
#: and the piece being sent (each up to a share plus a read).
CHANNEL_PIECES = 7
#: Longest wait for an upstream answer to close (it may be closed while being cancelled).
CLOSE_TIMEOUT = 5.0


@attrs.frozen(cache_hash=True)
class ProxySettings:
    """Tunables of the download path (seconds and bytes)."""

    #: TCP (and TLS) connect timeout per source.
    connect_timeout: float = 5.0
    #: How long a source may take to answer with its status line and headers (and then to
    #: start its body); ``first_byte_timeout`` asks the next source much sooner.
    answer_timeout: float = 15.0
    #: When a plain request for a file of known size has no upstream answer after this long,
    #: its head goes out anyway (Firedancer gives a peer 1 s for the whole head, README.md#clients).
    early_head_after: float = 0.5
    #: Longest wait for one socket read of the body: a stalled upstream fails after this.
    read_timeout: float = 60.0
    #: Connections per download client (one client per TLS setting).
    max_connections: int = 512
    #: Bytes asked of the socket per read (the size of chunks, at most); a stream that passes
    #: its bytes through Python (the channel) reads less when many do (``channel_budget``).
    read_size: int = 1024 * 1024
    #: Pieces waiting between the upstream reader and the client writer, per stream, on top
    #: of the reader's read-ahead (which already holds what arrived while a piece is sent).
    queue_chunks: int = 0
    #: Memory shared by every stream that passes its bytes through Python (the channel: TLS
    #: upstreams, HTTP/2 clients); each holds up to CHANNEL_PIECES reads of its share, from
    #: ``smallest_read`` up to ``read_size`` (bench/README.md, "memory").
    channel_budget: int = 32 * 1024 * 1024
    smallest_read: int = 64 * 1024
    #: How long a stream waits for the server to start sending its body before deciding that
    #: the client went away (docs/architecture.md#traps-of-the-stack, 4).
    drain_start_timeout: float = 30.0
    #: Requests that wait at once for a transfer slot of one source (``source_limits``,
    #: docs/http-api.md "Source limits"); one more is answered 503 at once.
    busy_queue: int = QUEUE
    #: Longest wait in that queue: a slot that frees meanwhile is taken at once. A request
    #: that waits there gets no early head (its clock starts once a source is asked), so
    #: its answer is the source's head or a 503, never a 200 head whose body breaks.
    busy_wait: float = 5.0
    #: Redirects followed per source, each checked by the egress policy when it leaves the
    #: source's own origin.
    max_redirects: int = 5
    #: Waits before each attempt to resume a broken cache refresh with a Range request; as
    #: many attempts per break as there are delays (an attempt that brought bytes resets it).
    resume_delays: tuple[float, ...] = (0.2, 0.5, 1.0)
    #: After a source answered 503 or 429, how long it is asked after the others (at least;
    #: doubled for each such answer in a row, and longer when its ``Retry-After`` says so:
    #: :func:`tracker.ordering.sourcehistory.busy_backoff`).
    busy_backoff: float = 10.0
    #: How long a request waits for a refresh that has every byte to be synced and renamed
    #: into place (to be a cache hit) before it is streamed uncached instead.
    promotion_wait: float = 60.0


def download_client(
    tls: TLSConfig | None,
    settings: ProxySettings,
    network: httpcore.AsyncNetworkBackend | None = None,
    transport: PoolTransportOf = PoolTransport,
    context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """An HTTP/1.1 client for archive downloads: big reads, no overall read deadline, no
    cookie jar.

    Separate from the probe clients: a download may last hours, so only each socket read is
    bounded (``read_timeout``), and the pool is sized for many parallel downloads.
    ``network`` is the backend that opens connections (default: trio's; the egress policy's
    :class:`~tracker.net.egress.CheckingBackend` for origins that came from the network);
    ``transport`` turns the pool into the client's transport (a test's
    ``httpx.MockTransport`` where a socket adds nothing: tests/unit/test_upstream_answers.py);
    ``context``: the TLS context of ``tls`` loaded before (None: loaded here, blocking).
    """
    shape = ClientShape(
        TRACKER_AGENT,
        settings.connect_timeout,
        settings.read_timeout,
        settings.max_connections,
        keepalive_expiry=30.0,
    )
    context = context if context is not None else ssl_context(tls)
    return bulk_client(shape, BigReadBackend(settings.read_size, network), transport, context)


class DownloadClients:
    """Download clients by TLS setting, made on first use and kept until :meth:`aclose`.

    Groups with the same TLS setting share a client (credentials are per request). A URL on
    another origin than its configured source (named by a probe's ``Location`` or reached by
    a redirect) gets :meth:`foreign`: system CAs, no client certificate, and connections only
    to addresses the egress policy (``policy()``, read per connection) allows.
    """

    def __init__(
        self,
        settings: ProxySettings,
        policy: Callable[[], EgressPolicy] = EgressPolicy,
        resolver: Resolver = resolve,
        on_queue: Callable[[QueueEvent], None] | None = None,
        transport: PoolTransportOf = PoolTransport,
        strangers: Resolver = resolve_strangers,
        tls: TlsContexts | None = None,
    ) -> None:
        #: The proxy's tunables: read size, timeouts, pool (one value, never replaced).
        self.settings = settings
        #: The TLS contexts of the groups' settings, loaded off the event loop (at start-up
        #: and at each reload): a request never looks at a TLS file itself.
        self.tls = tls if tls is not None else TlsContexts()
        self._transport = transport  # what every client's pool is wrapped in (download_client)
        #: Transfers and rate per source (``source_limits``), shared by every stream;
        #: ``on_queue`` is told what becomes of the requests in a source's queue (metrics).
        self.limits = SourceLimiter() if on_queue is None else SourceLimiter(on_queue=on_queue)
        self._policy = policy
        self._resolver = resolver
        #: Looks up the names a discovered source's redirects give (lookups of their own:
        #: docs/http-api.md#trust).
        self._strangers = strangers
        #: By TLS setting (None: the foreign client's key is "foreign"), with the files it
        #: was made of as they were then.
        self._clients: dict[object, httpx.AsyncClient] = {}
        self._made_of: dict[object, tuple[object, ...]] = {}
        #: Clients whose files changed since: their downloads go on, closed at the end.
        self._retired: list[httpx.AsyncClient] = []

    def for_tls(self, tls: TLSConfig | None) -> httpx.AsyncClient:
        """The client for sources of a group with TLS settings ``tls``: made again when
        one of its files changed (a CA or client certificate replaced, then a reload: the
        probes use the new one, so must the downloads), as :attr:`tls` last loaded them
        (never a look at the files here: on the event loop, a stat of a file on a hung mount
        froze every request)."""
        client = self._clients.get(tls)
        files = self.tls.files(tls)
        if client is not None and self._made_of.get(tls) == files:
            return client
        try:
            context = self.tls.context(tls)
            made = download_client(tls, self.settings, transport=self._transport, context=context)
        except (ssl.SSLError, OSError, ValueError) as exc:
            if client is None:
                raise
            # half replaced (a certificate written before its key): the client made of
            # the files as they were goes on until they load again
            log_event(log, "warning", "tls_files_unusable", error=exc)
            return client
        if client is not None:
            self._retired.append(client)
        self._clients[tls], self._made_of[tls] = made, files
        return made

    def foreign(self, *, strangers: bool = False) -> httpx.AsyncClient:
        """The client for origins that are not a group's own configured source;
        ``strangers``: of a discovered source, whose redirects' names are looked up in
        lookups of their own (a hostile node's names that never resolve hold none of those
        the operator's sources need)."""
        kind = "strangers" if strangers else "foreign"
        client = self._clients.get(kind)
        if client is None:
            resolver = self._strangers if strangers else self._resolver
            checking = CheckingBackend(self._policy, httpcore.TrioBackend(), resolver)
            client = self._clients[kind] = download_client(
                None, self.settings, checking, self._transport, self.tls.context(None)
            )
        return client

    async def aclose(self) -> None:
        """Close every client (and the connections they pool)."""
        clients, self._clients = [*self._clients.values(), *self._retired], {}
        self._retired = []
        for client in clients:
            await client.aclose()


def client_response_headers(upstream: httpx.Headers) -> dict[str, str]:
    """The upstream answer's headers that may reach the client, lower-case names."""
    return {
        name: value for name, value in upstream.items() if name.lower() in PASSED_RESPONSE_HEADERS
    }


@attrs.define
class UpstreamAnswer:
    """A usable upstream answer (body unread) from ``url``, for ``file`` of ``source``
    (:func:`ask_source`); the caller must close it."""

    response: httpx.Response
    url: str
    file: SnapshotFile
    source: SnapshotSource
    #: The transfer of the origin that gave it (``source_limits``): its pacer, and when it
    #: expects to end (None: no transfer slot was taken).
    transfer: Slot | None = None
    #: The transfer slot of the source (``source_limits.max_transfers``), freed by aclose.
    slot: AsyncExitStack | None = None

    @property
    def pacer(self) -> Pacer:
        """The serving origin's rate (``source_limits.max_rate``): readers of the body pace
        with it."""
        return self.transfer.pacer if self.transfer is not None else UNCAPPED

    async def aclose(self) -> None:
        """Close the answer (drops the connection when the body was not read to its end)
        and free its source's transfer slot.

        Shielded and bounded: an answer is closed on every path, also while the task that
        owns it is being cancelled (the client left, the service stops).
        """
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_TIMEOUT
            try:
                await self.response.aclose()
            finally:
                slot, self.slot = self.slot, None
                if slot is not None:
                    await slot.aclose()


#: ``asking(key)``: the group to ask source ``key`` with now (raises UpstreamError when a
#: reload removed the group or the source: :func:`group_asking`).
Asking = Callable[[TargetKey], TargetGroup]


def group_now(group: TargetGroup, asking: Asking | None, key: TargetKey) -> TargetGroup:
    """The group to send a request to ``key`` with at this moment (``group`` without
    ``asking``); SourceFailed when a reload removed the group or the source: that source
    fails (SourceWithdrawn), the next one is asked."""
    if asking is None:
        return group
    try:
        return asking(key)
    except UpstreamError as exc:
        raise SourceWithdrawn(str(exc)) from None


def limits_now(group: TargetGroup, asking: Asking | None, key: TargetKey) -> SourceLimits:
    """The ``source_limits`` a request to ``key`` is held to at this moment: its group's in
    the config in force (a request waiting in a source's queue is let in under a reload's
    new limits, docs/http-api.md, "Source limits"); ``group``'s once a reload removed the
    group or the source (it is asked nothing then: :func:`group_now` once it holds a slot)."""
    try:
        return group_now(group, asking, key).source_limits
    except SourceFailed:
        return group.source_limits


def group_asking(config: Config, group: str, listed: bool) -> TargetGroup:
    """The group a source of ``group`` is asked with under ``config``, the config in force
    now: what outlives a reload (a refresh, a speed-test round, a head read waiting for its
    turn) asks with the credentials of now, and only a source the config still has
    (docs/configuration.md: credentials go to the group's configured sources only).
    ``listed``: the index still lists the source. UpstreamError once the reload removed
    the group, or the source (or left it behind: :mod:`tracker.discovery.targetset`)."""
    now = config.group_named(group)
    if now is None:
        raise UpstreamError(f"group {group!r} was removed by a reload")
    if not listed:
        raise UpstreamError("the source is no longer listed (removed by a reload?)")
    return now


async def ask_source(
    clients: DownloadClients,
    group: TargetGroup,
    file: SnapshotFile,
    source: SnapshotSource,
    method: str,
    headers: Mapping[str, str],
    *,
    url: str | None = None,
    wait: float = 0.0,
    taken: Callable[[], None] | None = None,
    asking: Asking | None = None,
) -> UpstreamAnswer:
    """Ask for ``file`` of ``source`` (at its URL, or ``url``: where an earlier answer
    came from), following redirects, each hop within the
    ``source_limits`` of the origin it asks (waiting in its queue, docs/http-api.md, "Source
    limits").

    ``asking`` gives the group to send each hop with once its slot is held (a reload may
    come while the request waits in a queue: its credentials and TLS settings are those of
    now, and a group or source the reload removed is asked nothing, SourceFailed); None:
    ``group`` throughout.

    The transfer slot (docs/http-api.md, "Source limits") belongs to the origin asked for the
    bytes: each hop takes a slot of its own origin (waiting for one at most ``wait`` seconds
    in all, else SourceBusy; ``taken`` is told each time it holds one: the early head's
    clock starts then, not while it waits) and gives it back as soon as that origin answered
    a redirect, so
    a request never holds one origin's slot while it waits for another's (two requests
    redirected across each other's origins would wait for each other for ever). The answer
    keeps the slot of the origin that gave it, in :attr:`UpstreamAnswer.slot`.

    A source that answers 404 or 410 raises SourceGone (pruned since its listing), 503 or
    429 SourceOverloaded (busy: docs/ranking.md, "Busy answers"), any other status that is
    no answer SourceFailed.

    Only a URL on the source's own origin gets the group's credentials and TLS client
    settings; any other origin (named by a probe's Location or by a redirect) gets the
    foreign client, which connects only where the egress policy allows. A discovered source
    (cluster discovery) has no own origin: every URL of it is foreign.
    """
    settings, key = clients.settings, source.key
    url = file.url if url is None else url
    trusted = not key.discovered
    own_origin = origin(key.target) if trusted else None
    deadline = trio.current_time() + wait
    for _hop in range(settings.max_redirects + 1):
        own = _origin_of(url) == own_origin
        url = without_userinfo(url)  # credentials go per origin, never from a URL
        slot = AsyncExitStack()
        left = max(0.0, deadline - trio.current_time())
        taking = clients.limits.transfer(
            url, partial(limits_now, group, asking, key), wait=left, queue=settings.busy_queue
        )
        transfer = await slot.enter_async_context(taking)
        try:
            # Read once the slot is held, not when the request came: the wait in the queue
            # (up to busy_wait) may span a reload that rotated or removed the credentials.
            group = group_now(group, asking, key)
            credentials = authorization(group, key.target) if trusted and own else None
            client = (
                clients.for_tls(group.tls_config) if own else clients.foreign(strangers=not trusted)
            )
        except BaseException:
            await slot.aclose()
            raise
        request_headers = upstream_request_headers(headers.items(), credentials)
        if taken is not None:
            taken()
        try:
            response = await _send(client, method, url, request_headers, settings.answer_timeout)
            status = response.status_code
            if status in ANSWER_STATUSES:
                return UpstreamAnswer(response, url, file, source, transfer, slot)
            location = response.headers.get("location")
            await response.aclose()
        except BaseException:
            await slot.aclose()
            raise
        await slot.aclose()  # the redirecting origin's slot: it answered
        if status in _GONE:
            raise SourceGone(status_reason(response))  # pruned since its listing
        if status in BUSY_STATUSES:  # busy, not slow: docs/ranking.md, "Busy answers"
            retry = stated_retry(response.headers.get("retry-after"))
            raise SourceOverloaded(status_reason(response), retry_after=retry)
        if status not in _REDIRECTS or location is None:
            raise SourceFailed(status_reason(response))
        url = _redirect_target(url, location)
    raise SourceFailed(f"more than {settings.max_redirects} redirects")


def stated_retry(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header's ``value`` asks for, in its delta-seconds form
    (None: none, or an HTTP date: the default back-off then). Pure."""
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        return None
    return float(int(value))


def _origin_of(url: str) -> tuple[str, str, int | None]:
    try:
        return origin(url)
    except ValueError:
        raise SourceFailed(f"not a usable URL: {quoted(url)}") from None


def _redirect_target(url: str, location: str) -> str:
    try:
        target = urljoin(url, location.strip())
        parts = urlsplit(target)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise SourceFailed(f"redirect to {quoted(location)} is not a usable URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise SourceFailed(f"redirect to {quoted(location)} is not http(s)")
    return target


async def _send(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], limit: float
) -> httpx.Response:
    with source_failures("", f"no answer within {limit:g}s"), trio.fail_after(limit):
        return await send(client, method, url, headers)


async def check_size(response: httpx.Response, advertised: int, *, exact: bool = False) -> None:
    """Raise SourceFailed (closing ``response``) when its length contradicts ``advertised``
    (with ``exact``, also when a 200 does not state it)."""
    problem = size_problem(response, advertised, exact=exact)
    if problem is not None:
        await response.aclose()
        raise SourceFailed(problem)


def size_problem(response: httpx.Response, advertised: int, *, exact: bool = False) -> str | None:
    """Why ``response`` cannot be the ``advertised``-byte file (0: size unknown); None when
    it can. A 200's ``Content-Length`` and a 206's ``Content-Range`` total must equal it;
    with ``exact`` (a source that always states its length: the bucket, a holder replica) a
    200 without ``Content-Length`` cannot be it either."""
    if advertised <= 0:
        return None
    status = response.status_code
    if status == 200:
        length = response.headers.get("content-length")
        if length is None and exact:
            return f"no content-length: not shown to be the advertised size {advertised}"
        if length is not None and length.strip() != str(advertised):
            return f"content-length {quoted(length)} is not the advertised size {advertised}"
    elif status == 206:
        got = response.headers.get("content-range", "")
        stated = parse_content_range(got)
        if stated is None or stated.size != advertised:
            return f"content-range {quoted(got)} is not of the advertised size {advertised}"
    return None
