"""HTTP-server probe: ``HEAD {url}/snapshot.tar.bz2`` and ``{url}/incremental-snapshot.tar.bz2``.

A validator (or any snapshot server following its convention) answers these aliases with a
redirect to the concrete archive, e.g. ``/snapshot-123-<hash>.tar.zst``. Redirects are not
followed: the ``Location`` itself names the archive, and not following it keeps the group's
credentials away from other origins. A ``Location`` on another origin than the target's came
from the network: its host is resolved and checked by the egress policy before the archive is
accepted (clients would be sent there, or the tracker would fetch from there). The stored URL
never carries userinfo: credentials belong to the configured target and go per request.

The redirect carries no size, but the early head of proxy mode and the JSON need one
(README.md#clients): each newly seen concrete URL on the target's own origin gets one
``HEAD``, whose ``Content-Length`` is remembered (:class:`SizeMemo`) for as long as the URL
is advertised. A URL on another origin is not asked (its size stays unknown): the probe
client connects without the egress check, which the proxy's downloads of such URLs get.

A node found by cluster discovery (anyone can be one) is held to more in redirect mode
(:func:`off_origin`): the tracker hands its archive URL to clients, who resolve a name in it
themselves, perhaps to another address than the one the egress policy checked (DNS
rebinding, split horizon: one inside the client's network). Its archives must be at the
address it was discovered at, as agave's are (it answers ``Location: /{name}``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import attrs
import httpx
import trio

from tracker.core.snapshots import (
    MAX_URL,
    SnapshotFile,
    SnapshotInfo,
    chains_from_files,
    parse_archive_name,
)
from tracker.core.text import quoted
from tracker.core.untrusted import ascii_digits
from tracker.errors import EgressRefused, ProbeError, TransportError
from tracker.net.egress import EgressPolicy, Resolver, checked_addresses, resolve
from tracker.net.exchange import Heads, head, join_url, parse_url
from tracker.net.httpclients import origin
from tracker.net.limits import NO_HEADERS, status_reason

__all__ = ["Heads", "SizeMemo", "off_origin", "probe_http"]

#: Seconds an archive's size HEAD may take when the probe has no deadline of its own.
SIZE_WITHIN = 5.0
FULL_ALIAS = "snapshot.tar.bz2"
INCREMENTAL_ALIAS = "incremental-snapshot.tar.bz2"

# Statuses that mean "no snapshot of this kind" (the validator answers 404, sidecars 202).
_NONE = (202, 404)


class SizeMemo:
    """Sizes of concrete archive URLs learned by ``HEAD`` (0: the HEAD gave none), newest
    ``limit`` kept: a URL is asked once, not at every scrape."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._sizes: OrderedDict[str, int] = OrderedDict()

    @property
    def limit(self) -> int:
        """How many URLs are kept at most."""
        return self._limit

    def fit(self, targets: int) -> None:
        """Keep room for ``targets`` HTTP targets' URLs (a full and an incremental each, and
        the incrementals that replaced those): a memo smaller than what one round asks
        forgets every URL before it is asked again (least recently used, in a cycle)."""
        self._limit = max(self._limit, 4 * targets)

    def get(self, url: str) -> int | None:
        """The remembered size of ``url``; None when it was never asked."""
        size = self._sizes.get(url)
        if size is not None:
            self._sizes.move_to_end(url)
        return size

    def put(self, url: str, size: int) -> None:
        """Remember ``size`` for ``url`` (the oldest entry goes beyond the limit)."""
        self._sizes[url] = size
        self._sizes.move_to_end(url)
        while len(self._sizes) > self._limit:
            self._sizes.popitem(last=False)


async def probe_http(
    client: Heads,
    url: str,
    *,
    headers: Mapping[str, str] = NO_HEADERS,
    policy: EgressPolicy | None = None,
    resolver: Resolver = resolve,
    sizes: SizeMemo | None = None,
) -> list[SnapshotInfo]:
    """The full and the incremental snapshot an HTTP server at ``url`` redirects to.

    Both aliases are asked concurrently. 404 or 202 means "none of that kind"; a 3xx with a
    ``Location`` (relative or absolute, resolved against the request URL) whose last path
    segment is an archive name of the right kind yields a file whose ``file_name`` and
    ``url`` are that absolute URL. Its size is learned with one ``HEAD`` of that URL when it
    is on the target's own origin and ``sizes`` has not seen it (else 0, unknown). The
    incremental's info also lists the full when the full's slot is its base slot.

    A ``Location`` on another origin must resolve to addresses ``policy`` allows (default: the
    policy with no ``allow``/``deny``: public addresses only).

    Raises :class:`ProbeError` (one line, naming the alias) on a transport/TLS failure, any
    other status, a missing or unparsable ``Location``, or one the egress policy refuses.
    Cancellation propagates untouched; the caller owns the timeout.
    """
    base = _target_url(url)
    check = _Check(policy if policy is not None else EgressPolicy(), resolver, url)
    found: dict[str, SnapshotFile] = {}
    failures: list[ProbeError] = []

    async def head(alias: str) -> None:
        try:
            file = await _head_alias(client, base, alias, headers, check)
            if file is not None and sizes is not None and check.is_home(file.url):
                file = attrs.evolve(file, size=await _size_of(client, file.url, headers, sizes))
        except ProbeError as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()  # the other answer no longer matters
        else:
            if file is not None:
                found[alias] = file

    async with trio.open_nursery() as nursery:
        nursery.start_soon(head, FULL_ALIAS)
        nursery.start_soon(head, INCREMENTAL_ALIAS)
    if failures:
        raise failures[0]
    return chains_from_files([found[a] for a in (FULL_ALIAS, INCREMENTAL_ALIAS) if a in found])


def off_origin(node: str, infos: Iterable[SnapshotInfo]) -> str:
    """Why the archives ``infos`` of a node found by cluster discovery at ``node`` cannot be
    handed to clients in redirect mode: the first whose URL is on another origin (scheme,
    host, port) than the node's own, in one line; "" when each is at the node's origin.

    The node's origin is the address ``getClusterNodes`` gave and the egress policy checked
    (an IP address: a client connects to that very address). Another origin's name is
    resolved by each client itself, perhaps to another address than the one the tracker
    checked (DNS rebinding, split horizon); an address there is no node's own. Agave
    redirects its aliases within its origin (``/{name}``), so no agave node is refused
    (docs/http-api.md, "Trust"). Pure."""
    home = origin(node)
    for info in infos:
        for f in info.files:
            try:
                there: tuple[str, str, int | None] | None = origin(f.url)
            except ValueError:  # a port no socket has: no origin of the node's either
                there = None
            if there != home:
                shown = quoted(_origin_text(there) if there else f.url)
                return (
                    f"{f.bare_name}: at {shown}, not at the node's own address: in redirect "
                    "mode a discovered node's archives must be at the address it was found at"
                )
    return ""


def _origin_text(there: tuple[str, str, int | None]) -> str:
    scheme, host, port = there
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def _target_url(url: str) -> httpx.URL:
    try:
        parsed = parse_url(url)
    except TransportError as exc:
        raise ProbeError(f"invalid target URL: {exc}") from exc
    # The URL itself stays out of the reason: it may carry an API key; the target names it.
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ProbeError("target is not an absolute http(s) URL")
    # Its userinfo is the target's credentials: the caller sends them as a header, and no
    # URL derived from it (a relative Location) may carry them.
    return parsed.copy_with(username=None, password=None)


class _Check:
    """The egress check of a probe's ``Location`` values (other origins only)."""

    def __init__(self, policy: EgressPolicy, resolver: Resolver, target: str) -> None:
        self._policy = policy
        self._resolver = resolver
        self._home = origin(target)

    def is_home(self, url: str) -> bool:
        """True when ``url`` is on the configured target's own origin."""
        return origin(url) == self._home

    async def __call__(self, alias: str, url: httpx.URL) -> None:
        try:
            scheme, host, port = origin(str(url))
        except ValueError:  # a port httpx parses but no socket has (65536)
            raise ProbeError(f"{alias}: Location has no usable port") from None
        if (scheme, host, port) == self._home:
            return  # the target itself: configured by the operator, trusted as typed
        if port is None:
            raise ProbeError(f"{alias}: Location has no port for scheme {scheme!r}")
        try:
            await checked_addresses(self._policy, host, port, self._resolver)
        except EgressRefused as exc:
            raise ProbeError(f"{alias}: Location {exc}") from None
        except OSError as exc:
            raise ProbeError(f"{alias}: cannot resolve the Location's host {host}: {exc}") from None


async def _head_alias(
    client: Heads,
    base: httpx.URL,
    alias: str,
    headers: Mapping[str, str],
    check: _Check,
) -> SnapshotFile | None:
    # Like Go's path.Join: "https://h", "https://h/" and "https://h/p/" all work; the query
    # (an RPC provider's API key, say) is kept.
    request_url = base.copy_with(path=base.path.rstrip("/") + "/" + alias)
    try:
        response = await head(client, request_url, headers)
    except TransportError as exc:
        raise ProbeError(f"{alias}: {exc}") from exc
    if response.status_code in _NONE:
        return None
    location = response.headers.get("location")
    if response.is_success:
        hint = "expected a redirect to a named archive"
        raise ProbeError(f"{alias}: {status_reason(response, hint)}")
    if not 300 <= response.status_code < 400:
        raise ProbeError(f"{alias}: {status_reason(response)}")
    if location is None:
        raise ProbeError(f"{alias}: {status_reason(response, 'no Location header')}")
    found = _archive_at(request_url, location, alias)
    await check(alias, httpx.URL(found.url))
    return found


async def _size_of(client: Heads, url: str, headers: Mapping[str, str], sizes: SizeMemo) -> int:
    """The size of the archive at ``url`` (0: unknown), asked once per URL.

    A HEAD that fails, redirects or gives no digits-only ``Content-Length`` leaves the size
    unknown (remembered as such): it is a hint for the proxy, not a condition of the source.
    """
    known = sizes.get(url)
    if known is not None:
        return known
    size = 0
    # Within half the probe's time left: a HEAD that hangs took the whole probe's
    # scrape_timeout, and a target whose aliases answered was down every round.
    left = trio.current_effective_deadline() - trio.current_time()
    response: httpx.Response | None = None
    # max: the probe's deadline may have passed before a checkpoint told it (a busy loop)
    with trio.move_on_after(max(0.0, left / 2) if math.isfinite(left) else SIZE_WITHIN):
        try:
            response = await head(client, url, headers)
        except TransportError:
            return 0  # asked again at the next scrape: a transient failure is not remembered
    if response is None:
        return 0  # no answer in time: asked again at the next scrape
    length = ascii_digits(response.headers.get("content-length", "").strip(), max_digits=19)
    if response.status_code == 200 and length is not None:
        size = length
    sizes.put(url, size)
    return size


def _archive_at(request_url: httpx.URL, location: str, alias: str) -> SnapshotFile:
    """The archive a ``Location`` names, checked to be of the kind the alias asks for."""
    try:
        target = join_url(request_url, location)
    except TransportError as exc:
        raise ProbeError(f"{alias}: invalid Location {quoted(location)}") from exc
    name = parse_archive_name(target.path.rsplit("/", 1)[-1])
    if target.scheme not in ("http", "https") or not target.host or name is None:
        raise ProbeError(f"{alias}: Location {quoted(location)} does not name a snapshot archive")
    if name.is_full != (alias == FULL_ALIAS):
        kind = "a full" if name.is_full else "an incremental"
        raise ProbeError(f"{alias}: Location {quoted(location)} names {kind} snapshot")
    absolute = str(target.copy_with(username=None, password=None))
    if len(absolute) > MAX_URL:
        # Kept, it is held in the index, the sizes memo and every listing, and fetch
        # would refuse it from the tracker's listing anyway (docs/configuration.md,
        # ``http_targets``).
        raise ProbeError(
            f"{alias}: Location names a URL of {len(absolute)} characters, over {MAX_URL}"
        )
    return SnapshotFile(name=name, file_name=absolute, url=absolute)
