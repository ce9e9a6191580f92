"""The sources of one archive for ``fetch``: what each offers, and which go together.

:func:`inspect_all` asks each URL for its first byte (a ``GET``, redirects followed: the
final URL, the size, the validators, whether ranges are honoured); :func:`same_bytes` keeps
the sources whose bytes match the reference's in a sample of ranges (fetch's policy: a
ledger copy has no check to fall back on when ``--verify`` is off). Every answer of a
download is then checked against its source by the shared engine
(:func:`tracker.multisource.sources.check_range`,
:func:`tracker.multisource.sources.check_whole`). A failing source raises
:class:`~tracker.errors.SourceFailed` with a one-line reason that starts with its URL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import trio

from tracker.core.untrusted import ascii_digits
from tracker.errors import SourceFailed
from tracker.fetch.settings import FetchSettings
from tracker.multisource.contentrange import MAX_DIGITS, parse_content_range
from tracker.multisource.sources import Identity, Source, check_range
from tracker.net.bodyreads import body_chunks
from tracker.net.exchange import coding_problem, send, source_failures
from tracker.net.httpclients import origin
from tracker.observability.logs import log_event

log = logging.getLogger("tracker.fetch")


async def inspect_all(
    client: httpx.AsyncClient, urls: list[str], settings: FetchSettings
) -> list[Source | SourceFailed]:
    """Every URL inspected, ``checks_at_once`` at a time (a thousand at once would all time
    out together)."""
    results: list[Source | SourceFailed] = [SourceFailed("not asked")] * len(urls)
    limiter = trio.CapacityLimiter(settings.checks_at_once)

    async def one(index: int, url: str) -> None:
        async with limiter:
            try:
                results[index] = await _inspect(client, url, settings)
            except SourceFailed as exc:
                results[index] = exc

    async with trio.open_nursery() as nursery:
        for index, url in enumerate(urls):
            nursery.start_soon(one, index, url)
    return results


async def _inspect(client: httpx.AsyncClient, url: str, settings: FetchSettings) -> Source:
    """Ask ``url`` for its first byte (a GET, as presigned URLs allow no HEAD): the final
    URL after redirects, the size, the validators, and whether ranges are honoured."""
    async with request(client, url, {"range": "bytes=0-0"}, settings) as response:
        status = response.status_code
        if status not in _SIZE_OF_ANSWER:
            raise SourceFailed(f"{url}: status {status}")
        if (coded := coding_problem(response)) is not None:
            raise SourceFailed(f"{url}: {coded}")
        header, parse, expected, ranges = _SIZE_OF_ANSWER[status]
        got = response.headers.get(header, "")
        size = parse(got)
        if size is None:
            raise SourceFailed(f"{url}: {header} {_shown(got)} is not {expected}")
        identity = Identity(
            size, response.headers.get("etag", ""), response.headers.get("last-modified", "")
        )
        final = str(response.url)
        return Source(final, identity, ranges, listed_at=url if final != url else "")


#: Answers of a URL that a redirect led to which say the link, not the file, is no longer
#: good (a presigned URL expired: S3 and R2 answer 403, GCS 400): the URL the source was
#: listed at is asked again (:func:`not_renewed`).
LINK_GONE = frozenset({400, 401, 403, 404, 410})


def not_renewed(before: str, now: str) -> str:
    """Why ``now``, where a source's listed URL leads when asked again, is not a renewal of
    ``before``, where it led (one line); "" when it is: the same origin and path, only the
    query (a presigned URL's signature) changed. Pure. Another path may be another node's
    archive of that slot (a tracker's redirect follows its ranking), whose bytes must never
    join this copy (docs/fetch.md, "How")."""
    try:
        same = origin(before) == origin(now)
    except ValueError:  # a port httpx took and no origin has: not this one
        same = False
    if same and urlsplit(before).path == urlsplit(now).path:
        return ""
    return f"its listed URL leads to {now} now, not to a renewal of {before}"


def digits(text: str) -> int | None:
    """The number in a header made of ASCII digits only (at most MAX_DIGITS), else None:
    ``str.isdigit`` also takes ``"²"``, which ``int`` then refuses."""
    return ascii_digits(text.strip(), max_digits=MAX_DIGITS)


def first_byte_total(content_range: str) -> int | None:
    """The total size in the ``content-range`` of an answer to ``bytes=0-0``, else None."""
    stated = parse_content_range(content_range)
    if stated is None or (stated.first, stated.last) != (0, 0):
        return None
    return stated.size


#: How the size of the file is read from an answer to ``bytes=0-0``, by status: the header,
#: its parser, what a bad value is said not to be, and whether the source honours ranges.
#: One table, so that both answers are checked and reported the same way.
_SIZE_OF_ANSWER: dict[int, tuple[str, Callable[[str], int | None], str, bool]] = {
    206: ("content-range", first_byte_total, "bytes 0-0/SIZE", True),
    200: ("content-length", digits, "a size", False),
}


def _shown(value: str) -> str:
    """A header value quoted for a one-line reason, cut short (it came from the network)."""
    return repr(value[:80] + ("..." if len(value) > 80 else ""))


@asynccontextmanager
async def request(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], settings: FetchSettings
) -> AsyncIterator[httpx.Response]:
    """A streamed GET, its head within the request timeout, errors as SourceFailed, closed
    (shielded) when the block ends."""
    silence = f"no answer within {settings.request_timeout:g}s"
    with source_failures(url, silence), trio.fail_after(settings.request_timeout):
        response = await send(client, "GET", url, headers)
    try:
        yield response
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def same_bytes(
    client: httpx.AsyncClient, reference: Source, others: list[Source], settings: FetchSettings
) -> list[Source]:
    """The sources of ``others`` that may be used with ``reference``: same size, ranges,
    and identical bytes in ``settings.samples`` ranges spread over the file."""
    others = [
        o for o in others if o is not reference and o.identity.size == reference.identity.size
    ]
    if not reference.ranges or not others:
        return []
    size = reference.identity.size
    spots = sorted(
        {
            min(max(0, size - settings.sample_size), size * i // max(1, settings.samples - 1))
            for i in range(settings.samples)
        }
    )
    wanted = [(start, min(size, start + settings.sample_size)) for start in spots]
    try:
        expected = [await _sample(client, reference, s, e, settings) for s, e in wanted]
    except SourceFailed:
        return []
    same: set[int] = set()
    limiter = trio.CapacityLimiter(settings.checks_at_once)

    async def compare(index: int, other: Source) -> None:
        async with limiter:
            try:
                got = [await _sample(client, other, s, e, settings) for s, e in wanted]
            except SourceFailed as exc:
                log_event(log, "info", "fetch_source_unused", url=other.url, reason=str(exc))
                return
        if got == expected:
            same.add(index)
        else:
            log_event(log, "info", "fetch_source_unused", url=other.url, reason="other bytes")

    async with trio.open_nursery() as nursery:
        for index, other in enumerate(others):
            if other.ranges:
                nursery.start_soon(compare, index, other)
    return [other for index, other in enumerate(others) if index in same]


async def _sample(
    client: httpx.AsyncClient, source: Source, start: int, end: int, settings: FetchSettings
) -> bytes:
    headers = {"range": f"bytes={start}-{end - 1}"}
    async with request(client, source.url, headers, settings) as response:
        check_range(response, source, start, end)
        data = bytearray()
        silence = f"no sample within {settings.read_timeout:g}s"
        with source_failures(source.url, silence), trio.fail_after(settings.read_timeout):
            async with body_chunks(response) as chunks:
                async for chunk in chunks:
                    data += chunk
                    if len(data) > end - start:
                        break
    if len(data) != end - start:
        raise SourceFailed(f"{source.url}: sample of {len(data)} bytes, not {end - start}")
    return bytes(data)
