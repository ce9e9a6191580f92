"""Proxy mode, upstream side: the download path's tunables (:class:`ProxySettings`), download
clients, header filtering, asking one source (:func:`ask_source`), choosing among the sources
of a file with failover and hedging (:func:`open_upstream`), and asking the same source again
for the rest of a file whose body broke (:func:`resume_upstream`).

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

Choosing among the sources of a file: the first one whose body starts, with hedging.
Several sources often advertise the same archive. :func:`open_upstream` asks the first; when
it fails (refused, an error status, a wrong size) the next is asked at once, and when it has not
*started its body* within ``hedge_after`` seconds (``first_byte_timeout``, README.md#clients)
the next is asked as well, while the slow one keeps its chance: whichever starts its body first
wins, every other attempt is cancelled and closed. A source that accepts connections and never
answers therefore costs a client ``first_byte_timeout``, not the whole answer timeout.

"Started" means a body byte is in the socket (peeked, not read: the body stays whole for the
splice path, :func:`tracker.clientwire.transport.body_started`); on a TLS connection the head
is all that can be watched. Once an answer is returned no other source is ever used for that
response: archives of one slot and hash made by different nodes are not byte-identical, so
bytes of two sources are never spliced into one body.

Resuming: a resume asks the *same* source only (:func:`resume_upstream`), for
``Range: bytes={received}-`` with ``If-Range``, and is accepted only when the ``206`` proves
the same representation as the first answer (:func:`same_representation`, by the one rule of
:mod:`tracker.multisource.samefile`) with a ``Content-Range`` that is exactly the rest of the
file (:func:`resume_problem`): bytes of two versions of a file are never spliced. How a
pump's body uses it is :class:`tracker.proxy.pumps.UpstreamBody`'s.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from urllib.parse import urljoin, urlsplit

import attrs
import httpcore
import httpx
import trio

from tracker.clientwire.transport import BigReadBackend, PoolTransport, body_started
from tracker.config.schema import Config, SourceLimits, TargetGroup, TLSConfig
from tracker.core.snapshots import SnapshotFile
from tracker.core.text import TRACKER_AGENT, one_line, quoted
from tracker.errors import (
    SourceBusy,
    SourceFailed,
    SourceGone,
    SourcesBusy,
    SourceWithdrawn,
    UpstreamError,
)
from tracker.multisource.contentrange import ContentRange, parse_content_range, states_range
from tracker.multisource.samefile import Validators, not_same_reason
from tracker.net.egress import CheckingBackend, EgressPolicy, Resolver, resolve, resolve_strangers
from tracker.net.exchange import coding_problem, send, source_failures
from tracker.net.httpclients import (
    ClientShape,
    PoolTransportOf,
    authorization,
    bulk_client,
    origin,
    ssl_context,
    tls_files,
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
#: The events of a resume.
resume_log = logging.getLogger("tracker.resume")

#: Upstream response headers passed on to the client (lower case). Everything else is dropped.
PASSED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-range", "accept-ranges", "etag", "last-modified", "content-type"}
)
#: Upstream statuses that are answers for the client; anything else makes us try the next source.
ANSWER_STATUSES = frozenset({200, 206, 304, 412, 416})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: A file the source's listing named and that it no longer has: pruned since (SourceGone).
_GONE = frozenset({404, 410})
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
    #: How long a request waits for a refresh that has every byte to be synced and renamed
    #: into place (to be a cache hit) before it is streamed uncached instead.
    promotion_wait: float = 60.0


def download_client(
    tls: TLSConfig | None,
    settings: ProxySettings,
    network: httpcore.AsyncNetworkBackend | None = None,
    transport: PoolTransportOf = PoolTransport,
) -> httpx.AsyncClient:
    """An HTTP/1.1 client for archive downloads: big reads, no overall read deadline, no
    cookie jar.

    Separate from the probe clients: a download may last hours, so only each socket read is
    bounded (``read_timeout``), and the pool is sized for many parallel downloads.
    ``network`` is the backend that opens connections (default: trio's; the egress policy's
    :class:`~tracker.net.egress.CheckingBackend` for origins that came from the network);
    ``transport`` turns the pool into the client's transport (a test's
    ``httpx.MockTransport`` where a socket adds nothing: tests/unit/test_upstream_answers.py).
    """
    shape = ClientShape(
        TRACKER_AGENT,
        settings.connect_timeout,
        settings.read_timeout,
        settings.max_connections,
        keepalive_expiry=30.0,
    )
    return bulk_client(
        shape, BigReadBackend(settings.read_size, network), transport, ssl_context(tls)
    )


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
    ) -> None:
        #: The proxy's tunables: read size, timeouts, pool (one value, never replaced).
        self.settings = settings
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
        probes use the new one, so must the downloads)."""
        client = self._clients.get(tls)
        files = tls_files(tls)
        if client is not None and self._made_of.get(tls) == files:
            return client
        try:
            made = download_client(tls, self.settings, transport=self._transport)
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
                None, self.settings, checking, self._transport
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
        if status not in _REDIRECTS or location is None:
            raise SourceFailed(status_reason(response))
        url = _redirect_target(url, location)
    raise SourceFailed(f"more than {settings.max_redirects} redirects")


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


# -- choosing among the sources of a file ----------------------------------------------------

#: Seconds a request that may get an early head, and cannot hold its early head back while it
#: waits (no ``slotted`` event), waits in the queue of the last source of a file left to ask
#: when it has no free transfer slot (``source_limits.max_transfers``), before the answer is
#: 503. Below the early head's 0.5 s (docs/http-api.md#archive-answers): a 503 must go out
#: before a 200 head would. Other requests wait up to
#: :attr:`~tracker.proxy.upstream.ProxySettings.busy_wait`.
BUSY_WAIT = 0.4


@attrs.define
class _Race:
    """One request's attempts: what every source is asked (``method`` with ``headers``
    through the group's ``clients``; ``promised``: the length an early head promised the
    client, 0: none; ``exact``: sources that always state their length, the bucket and a
    holder), the winner, and why each loser failed."""

    scope: trio.CancelScope
    clients: DownloadClients
    group: TargetGroup
    method: str
    headers: Mapping[str, str]
    promised: int = 0
    exact: bool = False
    #: A source's measured bytes per second (0: unknown): when its transfer will end, which a
    #: request turned away is told (``Retry-After``).
    rate: Callable[[TargetKey], float] | None = None
    #: Set once a source is asked (a transfer slot is held): an early head is due only
    #: ``early_head_after`` seconds after that, never while the request waits in a queue.
    slotted: trio.Event | None = None
    #: Told of every source that failed (metrics).
    on_failure: Callable[[], None] | None = None
    #: The group each source is asked with once its slot is held (None: ``group``).
    asking: Asking | None = None
    #: ``(source key, seconds since it was asked)`` of each source that failed to answer a
    #: GET by its own doing (:func:`failed_to_answer`): what ranks it (docs/ranking.md,
    #: "Failed transfers").
    refused: Callable[[TargetKey, float], None] | None = None
    reasons: dict[int, str] = attrs.Factory(dict)
    #: The attempts the next source was asked beside, their body not started in time.
    hedged: set[int] = attrs.Factory(set)
    #: The attempts that failed for want of a transfer slot.
    busy: set[int] = attrs.Factory(set)
    #: When the busy sources expect a slot to free (seconds from their refusal; None: unknown).
    retry_after: list[float] = attrs.Factory(list)
    winner: UpstreamAnswer | None = None

    @property
    def queue_wait(self) -> float:
        """How long the last source left is waited for in its queue (see :data:`BUSY_WAIT`)."""
        longest = self.clients.settings.busy_wait
        return min(longest, BUSY_WAIT) if self.promised and self.slotted is None else longest


async def open_upstream(
    clients: DownloadClients,
    group: TargetGroup,
    method: str,
    headers: Mapping[str, str],
    found: Iterable[tuple[SnapshotFile, SnapshotSource]],
    *,
    promised: int = 0,
    exact: bool = False,
    rate: Callable[[TargetKey], float] | None = None,
    slotted: trio.Event | None = None,
    hedge_after: float | None = None,
    on_failure: Callable[[], None] | None = None,
    asking: Asking | None = None,
    refused: Callable[[TargetKey, float], None] | None = None,
) -> UpstreamAnswer:
    """The first usable answer of the sources in ``found`` (in order) to ``method``, body
    unread, asked through the group's ``clients``.

    ``headers`` are the client's whitelisted headers (credentials are added per origin by
    :func:`~tracker.proxy.upstream.ask_source`). A source fails on a connection error, a
    timeout, a status that is not an answer, too many redirects, or a length that
    contradicts its advertised size; when the client may be promised the whole file of
    ``promised`` bytes (an early head), also on any status but 200 or any other length.
    ``rate``: a source's measured bytes per second (when a busy source's transfer ends,
    ``Retry-After``); ``slotted`` is set once a source is asked (a transfer slot held).
    With ``hedge_after`` the next source is also asked when the previous one has not started
    its body after that many seconds (see the module doc); without it, sources are asked one
    after another. Raises :class:`UpstreamError` with a one-line reason when every source
    failed; it numbers the sources instead of naming them (the log names them).
    Cancellation propagates; nothing stays open. With ``exact`` (sources that always state
    their length) a 200 without ``Content-Length`` fails too. ``asking``: the group each
    source is sent with when it is asked (:func:`ask_source`): a source asked after a
    reload (a hedge, the next after a failure, a request that waited in a queue) carries
    the credentials of now, and one of a group or target the reload removed fails.
    ``refused`` is told ``(source key, seconds since it was asked)`` of each source that
    failed to answer a GET by its own doing (:func:`failed_to_answer`).
    """
    candidates = [(f, source) for f, source in found if f.url]
    if not candidates:
        raise UpstreamError("no remote source advertises the file")
    wait = hedge_after if hedge_after is not None else math.inf
    race: _Race | None = None
    try:
        async with trio.open_nursery() as nursery:
            race = _Race(
                nursery.cancel_scope,
                clients,
                group,
                method,
                headers,
                promised,
                exact,
                rate,
                slotted,
                on_failure,
                asking,
                refused,
            )
            for index, (f, source) in enumerate(candidates):
                done = trio.Event()
                # A busy source gives way to the next at once; the last one is waited for.
                busy_wait = race.queue_wait if index + 1 == len(candidates) else 0.0
                nursery.start_soon(_attempt, race, index, done, f, source, busy_wait)
                if index + 1 < len(candidates):
                    with trio.move_on_after(wait) as hedge:
                        await done.wait()
                    if hedge.cancelled_caught:  # its body did not start in time
                        race.hedged.add(index)
    except BaseException:
        if race is not None and race.winner is not None:
            await race.winner.aclose()
        raise
    if race.winner is not None:
        return race.winner
    reasons = [f"source {i + 1}: {race.reasons[i]}" for i in sorted(race.reasons)]
    if race.busy and len(race.busy) == len(race.reasons):
        retry = min(race.retry_after) if race.retry_after else None
        reason = one_line("every source of the file is busy: " + "; ".join(reasons))
        raise SourcesBusy(reason, retry_after=retry)
    raise UpstreamError(one_line("no source could deliver the file: " + "; ".join(reasons)))


async def _attempt(
    race: _Race,
    index: int,
    done: trio.Event,
    f: SnapshotFile,
    source: SnapshotSource,
    busy_wait: float,
) -> None:
    """One source's attempt: the winner when its body starts first, else closed."""
    asked = trio.current_time()
    try:
        answer = await _answer(race, f, source, busy_wait)
    except trio.Cancelled:
        _lost(race, index, source, None, asked)  # a winner's, or the request's, cancel
        raise
    except SourceFailed as exc:
        _lost(race, index, source, exc, asked)
        if isinstance(exc, SourceBusy):
            race.busy.add(index)
            if exc.retry_after is not None:
                race.retry_after.append(exc.retry_after)
        log_event(log, "warning", "upstream_failed", url=f.url, reason=exc)
        race.reasons[index] = str(exc)
        if race.on_failure is not None:
            race.on_failure()
        done.set()
        return
    if race.winner is None:
        race.winner = answer
        race.scope.cancel()  # every other attempt, and the wait for the next one
    else:
        await answer.aclose()  # another source started first
    done.set()


def failed_to_answer(failure: SourceFailed | None, hedged: bool, won: bool, method: str) -> bool:
    """Whether a source whose attempt did not win failed to answer by its own doing: it
    ``failure`` (None: cancelled) of a request for ``method``; ``hedged``: the next source
    was asked beside it, its body not started within ``first_byte_timeout``; ``won``:
    another source's answer won. A refusal, an error status, a wrong size, a body not
    started in time are the source's; a source busy under our own ``source_limits``
    (SourceBusy), one a reload withdrew (SourceWithdrawn), one that pruned the file since
    its listing (SourceGone: 404, 410), one beaten while it still had
    its time, or a request that ended (the client left, the tracker stopped) are not. Only
    a GET's: the figure it yields is a transfer's (docs/ranking.md, "Failed transfers"). A
    source answering its speed tests fast and refusing every real GET otherwise stayed
    first, every request paying its failover. Pure."""
    if method != "GET":
        return False
    if failure is not None:
        return not isinstance(failure, (SourceBusy, SourceWithdrawn, SourceGone))
    return hedged and won


def _lost(
    race: _Race,
    index: int,
    source: SnapshotSource,
    failure: SourceFailed | None,
    asked: float,
) -> None:
    """Tell ``race.refused`` of a source that failed to answer by its own doing."""
    if race.refused is None:
        return
    hedged, won = index in race.hedged, race.winner is not None
    if failed_to_answer(failure, hedged, won, race.method):
        race.refused(source.key, trio.current_time() - asked)


async def _answer(
    race: _Race, f: SnapshotFile, source: SnapshotSource, busy_wait: float = 0.0
) -> UpstreamAnswer:
    """Ask one source (within its ``source_limits``: a transfer slot, waited for at most
    ``busy_wait`` seconds, else SourceBusy); return once its answer is usable and its body
    (if any) started."""
    clients, group = race.clients, race.group
    slotted = race.slotted
    taken = slotted.set if slotted is not None else None
    answer = await ask_source(
        clients,
        group,
        f,
        source,
        race.method,
        race.headers,
        wait=busy_wait,
        taken=taken,
        asking=race.asking,
    )
    response, method = answer.response, race.method
    if race.rate is not None and answer.transfer is not None:
        rate = race.rate(source.key)
        answer.transfer.ends_at = expected_end(response, rate, answer.pacer.rate)
    try:
        await check_size(response, race.promised or f.size, exact=race.exact)
        if (coded := coding_problem(response)) is not None:
            raise SourceFailed(coded)
        status = response.status_code
        ranged = any(name.lower() == "range" for name in race.headers)
        if (race.promised and status != 200) or (status == 206 and not ranged):
            # a 206 to no Range is part of a file answered as if whole (the index may not
            # know the size to tell it from the length)
            raise SourceFailed(f"answered {status} to a request for the whole file")
        if method == "GET" and status in (200, 206):
            await _body_start(response, clients.settings.answer_timeout)
    except BaseException:
        await answer.aclose()
        raise
    return answer


def expected_end(response: httpx.Response, measured: float, cap: int) -> float | None:
    """When the body of ``response`` should have come (trio's clock), at the source's
    ``measured`` bytes per second, at most its ``cap`` (0: none); None when its length or
    its speed is unknown."""
    length = response.headers.get("content-length", "").strip()
    rate = min(measured, cap) if cap > 0 and measured > 0 else (measured or cap)
    if not (length.isascii() and length.isdigit()) or len(length) > 20 or rate <= 0:
        return None
    return trio.current_time() + int(length) / rate


async def head_due(slotted: trio.Event | None, after: float) -> None:
    """Return when an early head is due: ``after`` seconds once a source is asked
    (``slotted``; None: at once), so a request that waits in a source's queue gets none."""
    if slotted is not None:
        await slotted.wait()
    await trio.sleep(after)


async def _body_start(response: httpx.Response, limit: float) -> None:
    """Wait (at most ``limit`` seconds) until the body of ``response`` starts to arrive."""
    if response.headers.get("content-length", "").strip() == "0":
        return
    try:
        silence = f"no body within {limit:g}s of the answer"
        with source_failures("", silence), trio.fail_after(limit):
            started = await body_started(response)
    except OSError as exc:  # body_started peeks at the socket: it reads nothing through httpx
        raise SourceFailed(f"connection broke before the body: {exc}") from None
    if started is False:
        raise SourceFailed("closed the connection before the body")


# -- the rest of a file from the same source ------------------------------------------------

#: ``reopen(first, offset, size)``: an answer carrying bytes ``offset``.. of the file ``first``
#: answered; raises UpstreamError.
Reopen = Callable[[UpstreamAnswer, int, int], Awaitable[UpstreamAnswer]]


def resumable(first: httpx.Response) -> bool:
    """True when a break in ``first``'s body may be resumed: it carries a strong ETag or a
    Last-Modified date, so that a ``206`` can prove it continues the same file."""
    return Validators.of(first.headers).if_range() is not None


def same_representation(first: httpx.Response, resumed: httpx.Response) -> str | None:
    """Why ``resumed`` is not provably the same file as ``first``; None when it is
    (:func:`tracker.multisource.samefile.sameness` says *same*)."""
    return not_same_reason(Validators.of(first.headers), Validators.of(resumed.headers))


async def resume_upstream(
    clients: DownloadClients,
    group: TargetGroup,
    first: UpstreamAnswer,
    offset: int,
    size: int,
    asking: Asking | None = None,
) -> UpstreamAnswer:
    """Ask the source of ``first`` (a 200 of ``size`` bytes) for bytes ``offset`` to
    ``size - 1``, with ``Range: bytes={offset}-`` and ``If-Range`` (its strong ETag, else its
    Last-Modified date: a source whose file changed answers 200, which is refused).

    Only that source: another source's copy of the same name may differ byte for byte. The
    answer counts only as a ``206`` with ``Content-Range: bytes {offset}-{size-1}/{size}``
    and the validators of ``first`` (:func:`same_representation`). Raises
    :class:`UpstreamError` otherwise. Cancellation propagates; nothing stays open.
    ``asking``: as :func:`open_upstream`'s (a resume may wait for a slot).
    """
    validator = Validators.of(first.response.headers).if_range()
    if validator is None:
        raise UpstreamError("cannot resume: the source gave no ETag or Last-Modified")
    headers = {"range": f"bytes={offset}-", "if-range": validator}
    try:
        answer = await open_upstream(
            clients, group, "GET", headers, [(first.file, first.source)], asking=asking
        )
    except UpstreamError as exc:
        raise UpstreamError(one_line(f"cannot resume: {exc}")) from exc
    problem = resume_problem(answer.response, offset, size) or same_representation(
        first.response, answer.response
    )
    if problem is None:
        return answer
    await answer.aclose()
    log_event(resume_log, "warning", "upstream_resume_refused", url=answer.url, reason=problem)
    raise UpstreamError(one_line(f"cannot resume: {problem}"))


def resume_problem(response: httpx.Response, offset: int, size: int) -> str | None:
    """Why ``response`` is not bytes ``offset``..``size - 1`` of a ``size``-byte file; None
    when it is."""
    if response.status_code != 206:
        return f"answered {response.status_code} to a range request, not 206"
    if (coded := coding_problem(response)) is not None:
        return coded
    got = response.headers.get("content-range", "")
    if not states_range(got, offset, size - 1, size):
        expected = ContentRange(offset, size - 1, size).text()
        return f"content-range {quoted(got)} is not {quoted(expected)}"
    length = response.headers.get("content-length")
    if length is not None and length.strip() != str(size - offset):
        return f"content-length {quoted(length)} does not match the range"
    return None
