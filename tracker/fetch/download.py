"""One archive into the ledger: parallel ``Range`` requests over the sources that hold it.

:func:`download` inspects the best ``max_sources`` candidate URLs, ``checks_at_once`` at a
time (a ``GET`` of byte 0, redirects followed: size, validators, whether ranges work), keeps
those of the archive's size (the listed one, else the one most of them announce), takes the
first as the reference and pools every other one that has the same bytes in a sample of
ranges: archives of one slot and hash made by different nodes differ, so bytes of two of
them are never mixed. ``connections`` workers then claim pieces (:mod:`tracker.fetch.pieces`),
each from a live source of the pool, and ``pwrite`` them into ``{ledger}/.tmp-{name}``; a
source that fails three times in a row, or is slower than ``min_speed`` while another is
left, is dropped and its pieces go back to the pool. A state file (:mod:`tracker.fetch.state`)
is saved every ``state_every`` seconds, after the bytes it claims are synced, so a killed
fetch resumes. A complete file is synced, checked (:mod:`tracker.files.archivecheck`, and
its SHA-256 against the tracker's), renamed into place and given the source's
``Last-Modified`` as its mtime. When every source of the pool failed, or its copy failed the
check (deleted), the next candidate that is not in the pool is tried from the start.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from email.utils import parsedate_to_datetime

import attrs
import httpx
import trio

from tracker.core.contentrange import MAX_DIGITS, ContentRange, parse_content_range, states_range
from tracker.core.logs import log_event
from tracker.core.samefile import Sameness, Validators, sameness
from tracker.core.untrusted import ascii_digits
from tracker.errors import ArchiveInvalid, CopyRejected, FetchError, SourceFailed, TransportError
from tracker.fetch.pieces import Claim, Pieces
from tracker.fetch.progress import Progress
from tracker.fetch.state import (
    Identity,
    State,
    load_state,
    remove_state,
    save_state,
    temp_path,
)
from tracker.files.archivecheck import check_file
from tracker.net.bodies import body_chunks
from tracker.net.exchange import send
from tracker.zerocopy.kernelcopy import splice_to_file
from tracker.zerocopy.transport import BigReadStream, splice_stream

log = logging.getLogger("tracker.fetch")

MiB = 1024 * 1024


@attrs.frozen
class FetchSettings:
    """Tunables of a download (seconds, bytes, bytes per second)."""

    connections: int = 8
    #: The smallest piece handed out (bigger for big files: four per connection).
    piece_size: int = 8 * MiB
    #: Longest wait for a response head (connect included).
    request_timeout: float = 3.0
    #: Longest wait for one read of a body.
    read_timeout: float = 30.0
    #: A source slower than this (bytes/s, over ``speed_window``) is dropped when another is
    #: left; 0 turns the check off.
    min_speed: int = 10 * MiB
    speed_window: float = 5.0
    #: Ranges compared before two sources are used together, and their size.
    samples: int = 3
    sample_size: int = 64 * 1024
    #: Seconds between two saves of the state file.
    state_every: float = 0.25
    #: Bytes gathered per ``pwrite`` (per connection), and asked of the socket per read.
    write_size: int = 2 * MiB
    write_delay: float = 0.05
    read_size: int = 1 * MiB
    #: Failures in a row after which a source is dropped.
    max_failures: int = 3
    #: URLs of a file used at most (the best by the listing's order), and how many of them
    #: are asked (first byte, samples) at once.
    max_sources: int = 32
    checks_at_once: int = 16
    #: Check each downloaded archive (tracker.files.archivecheck) and compare its SHA-256
    #: with the tracker's before the rename into the ledger.
    verify: bool = True


@attrs.define(eq=False)
class Source:
    """One URL of the file, as inspected, and what it delivered."""

    url: str
    identity: Identity
    ranges: bool
    sent: int = 0
    failures: int = 0
    dropped: str = ""
    scopes: set[trio.CancelScope] = attrs.Factory(set)

    def drop(self, reason: str) -> None:
        """Stop using this source; its running requests are cancelled (their pieces return)."""
        if not self.dropped:
            self.dropped = reason
            log_event(log, "warning", "fetch_source_dropped", url=self.url, reason=reason)
        for scope in self.scopes:
            scope.cancel()


@attrs.frozen
class Result:
    """A completed download."""

    path: str
    size: int
    seconds: float
    sources: tuple[Source, ...]
    #: Claims of slow connections whose back half an idle one took over.
    steals: int = 0
    #: The archive's SHA-256 (lower-case hex) when it was verified, else "".
    sha256: str = ""


async def download(
    client: httpx.AsyncClient,
    name: str,
    urls: list[str],
    ledger: str,
    settings: FetchSettings,
    progress: Progress,
    *,
    size: int = 0,
    sha256: frozenset[str] = frozenset(),
) -> Result:
    """Download archive ``name`` from ``urls`` (best first) into ``ledger``.

    ``size`` (0: unknown) is what the listing said; a source announcing another size is not
    used. With ``settings.verify``, the complete copy is checked and its SHA-256 must be one
    of ``sha256`` when that lists any; a copy that fails is deleted and the sources not yet
    tried are asked for a fresh one. Raises :class:`FetchError` with a one-line reason (no
    space, every source failed, no good copy); the temp file and state stay for a later
    resume unless there is no room or the copy was bad.
    """
    # The best few by the listing's order: each is asked, and sampled against the others.
    inspected = await _inspect_all(
        client, list(dict.fromkeys(urls))[: settings.max_sources], settings
    )
    finals: dict[str, Source] = {}  # a redirect and the URL it leads to are one source
    for s in inspected:
        if isinstance(s, Source):
            finals.setdefault(s.url, s)
    wanted = chosen_size(size, [s.identity.size for s in finals.values()])
    usable = [s for s in finals.values() if s.identity.size == wanted]
    if not usable:
        why = summary([str(s) for s in inspected if not isinstance(s, Source)])
        raise FetchError(f"{name}: no source could deliver it ({why or 'wrong size'})")
    for other in finals.values():
        if other.identity.size != wanted:
            reason = f"size {other.identity.size}, not {wanted}"
            log_event(log, "info", "fetch_source_unused", url=other.url, reason=reason)
    reasons: list[str] = []
    tried: set[str] = set()
    rejected = False
    for reference in usable:
        if reference.url in tried:
            continue
        _check_space(ledger, reference.identity.size, name, reference.identity)
        pool = [reference, *await _same_bytes(client, reference, usable, settings)]
        tried.update(s.url for s in pool)
        try:
            return await _download_from(client, name, pool, ledger, settings, progress, sha256)
        except SourceFailed as exc:
            reasons.append(str(exc))
            rejected = rejected or isinstance(exc, CopyRejected)
    what = "no source delivered a good copy" if rejected else "every source failed"
    raise FetchError(f"{name}: {what}: " + summary(reasons))


#: Reasons of sources named in one error line; the others are counted.
MAX_REASONS = 4


def summary(reasons: list[str]) -> str:
    """Reasons joined for one line, at most MAX_REASONS of them (a listing may name dozens
    of sources)."""
    shown = "; ".join(reasons[:MAX_REASONS])
    more = len(reasons) - MAX_REASONS
    return f"{shown}; and {more} more" if more > 0 else shown


def chosen_size(listed: int, offered: list[int]) -> int:
    """The size of the archive: the listed one when known (0: not), else the one most
    sources announce (``offered``, best source first; a tie goes to the better source), so
    that one source's error page or JSON answer is never taken for the archive. 0 when
    nothing is known."""
    if listed:
        return listed
    votes = Counter(offered)
    return max(offered, key=lambda size: votes[size], default=0)


async def _inspect_all(
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
    async with _request(client, url, {"range": "bytes=0-0"}, settings) as response:
        status = response.status_code
        if status == 206:
            got = response.headers.get("content-range", "")
            total = first_byte_total(got)
            if total is None:
                raise SourceFailed(f"{url}: content-range {_shown(got)} is not bytes 0-0/SIZE")
            size, ranges = total, True
        elif status == 200:
            length = response.headers.get("content-length", "")
            size_or_none = digits(length)
            if size_or_none is None:
                raise SourceFailed(f"{url}: content-length {_shown(length)} is not a size")
            size, ranges = size_or_none, False
        else:
            raise SourceFailed(f"{url}: status {status}")
        identity = Identity(
            size, response.headers.get("etag", ""), response.headers.get("last-modified", "")
        )
        return Source(str(response.url), identity, ranges)


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


def _shown(value: str) -> str:
    """A header value quoted for a one-line reason, cut short (it came from the network)."""
    return repr(value[:80] + ("..." if len(value) > 80 else ""))


@asynccontextmanager
async def _request(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], settings: FetchSettings
) -> AsyncIterator[httpx.Response]:
    """A streamed GET, its head within the request timeout, errors as SourceFailed, closed
    (shielded) when the block ends."""
    try:
        with trio.fail_after(settings.request_timeout):
            response = await send(client, "GET", url, headers)
    except trio.TooSlowError:
        raise SourceFailed(f"{url}: no answer within {settings.request_timeout:g}s") from None
    except TransportError as exc:
        raise SourceFailed(f"{url}: {exc}") from exc
    try:
        yield response
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _same_bytes(
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
    async with _request(client, source.url, headers, settings) as response:
        _check_range(response, source, start, end)
        data = bytearray()
        try:
            with trio.fail_after(settings.read_timeout):
                async with body_chunks(response) as chunks:
                    async for chunk in chunks:
                        data += chunk
                        if len(data) > end - start:
                            break
        except trio.TooSlowError:
            reason = f"no sample within {settings.read_timeout:g}s"
            raise SourceFailed(f"{source.url}: {reason}") from None
        except TransportError as exc:
            raise SourceFailed(f"{source.url}: {exc}") from exc
    if len(data) != end - start:
        raise SourceFailed(f"{source.url}: sample of {len(data)} bytes, not {end - start}")
    return bytes(data)


def _check_range(response: httpx.Response, source: Source, start: int, end: int) -> None:
    """A 206 of exactly the bytes asked, of the file the source was inspected with."""
    if response.status_code != 206:
        raise SourceFailed(f"{source.url}: answered {response.status_code} to a range")
    got = response.headers.get("content-range", "").strip()
    if not states_range(got, start, end - 1, source.identity.size):
        expected = ContentRange(start, end - 1, source.identity.size).text()
        raise SourceFailed(f"{source.url}: content-range {got!r}, expected {expected!r}")
    if not _same_validators(response, source.identity):
        raise SourceFailed(f"{source.url}: the file changed (etag or last-modified)")


def _check_whole(response: httpx.Response, source: Source) -> None:
    """A 200 of the whole file the source was inspected with (a source without ranges)."""
    if response.status_code != 200:
        raise SourceFailed(f"{source.url}: status {response.status_code}")
    length = response.headers.get("content-length", "").strip()
    if length != str(source.identity.size):
        raise SourceFailed(
            f"{source.url}: content-length {length or 'missing'}, expected {source.identity.size}"
        )
    if not _same_validators(response, source.identity):
        raise SourceFailed(f"{source.url}: the file changed (etag or last-modified)")


async def _skipped(
    chunks: AsyncIterator[bytes], count: int, settings: FetchSettings
) -> AsyncGenerator[bytes]:
    """``chunks`` without their first ``count`` bytes (a whole-file answer to a retry that
    already has them)."""
    while count > 0:
        with trio.fail_after(settings.read_timeout):
            chunk = await anext(chunks, None)
        if chunk is None:
            return
        if len(chunk) > count:
            yield chunk[count:]
        count = max(0, count - len(chunk))
    async for chunk in chunks:
        yield chunk


def _same_validators(response: httpx.Response, identity: Identity) -> bool:
    """False when the answer's validators prove it is another file than ``identity``
    (:func:`tracker.core.samefile.sameness`: different, not merely unproven; the size is
    checked anyway). Checked on every answer rather than asked with ``If-Range``, which a
    tracker's change of ETag (its cache's own) would turn into a whole-file 200.
    """
    found = Validators.of(response.headers)
    return sameness(identity.validators, found) is not Sameness.DIFFERENT


async def _download_from(
    client: httpx.AsyncClient,
    name: str,
    pool: list[Source],
    ledger: str,
    settings: FetchSettings,
    progress: Progress,
    sha256: frozenset[str],
) -> Result:
    reference = pool[0]
    size = reference.identity.size
    state = load_state(ledger, name)
    done = (
        list(state.done)
        if state is not None
        and state.identity.same_file(reference.identity)
        and reference.ranges  # a source that ignores Range starts at byte 0, always
        else []
    )
    if not done:
        remove_state(ledger, name)
    # About four pieces per connection (fewer requests for a 100 GB file); stealing evens
    # out the tails, so big pieces cost nothing at the end. A source without ranges sends
    # the whole file to every request: one piece, from byte 0.
    piece_size = max(settings.piece_size, size // (4 * settings.connections) + 1)
    if not reference.ranges:
        piece_size = max(1, size)
    pieces = Pieces(size, piece_size, done)
    path = temp_path(ledger, name)
    # Never through a link planted under the temp file's name: a fresh one is created (what
    # was there is gone with the state), a resumed one is the regular file load_state saw.
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags if done else flags | os.O_CREAT | os.O_EXCL, 0o644)
    started = trio.current_time()
    progress.start(name, size, pieces.done_bytes)
    try:
        await trio.to_thread.run_sync(os.ftruncate, fd, size)
        saver = _StateSaver(ledger, State(name, reference.identity), pieces, fd)
        await saver.save()
        connections = settings.connections if reference.ranges else 1
        live = pool if reference.ranges else [reference]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver.run, settings.state_every)
            if settings.min_speed and len(live) > 1:
                nursery.start_soon(_watch_speed, live, settings)
            async with trio.open_nursery() as workers:
                for index in range(connections):
                    workers.start_soon(_worker, client, index, live, pieces, fd, settings, progress)
            nursery.cancel_scope.cancel()
        await saver.save()
        if not pieces.complete:
            reasons = dict.fromkeys(f"{s.url}: {s.dropped or 'failed'}" for s in live)
            raise SourceFailed(summary(list(reasons)))
        await trio.to_thread.run_sync(os.fsync, fd)
    finally:
        os.close(fd)
        progress.finish()
    digest = await _verify(ledger, name, live, sha256) if settings.verify else ""
    final = os.path.join(ledger, name)
    os.replace(path, final)
    remove_state(ledger, name)
    _set_mtime(final, reference.identity.last_modified)
    seconds = trio.current_time() - started
    return Result(final, size, seconds, tuple(live), pieces.steals, digest)


async def _verify(ledger: str, name: str, pool: list[Source], sha256: frozenset[str]) -> str:
    """The SHA-256 of the complete temp file of ``name`` when it passes the archive check
    and is one of ``sha256`` (when that lists any); else the temp file and its state are
    deleted and CopyRejected raised (docs: README "Fetching a snapshot into a ledger")."""
    try:
        # Abandoned when the fetch is cancelled: a whole archive's read is not waited for.
        digest = await trio.to_thread.run_sync(
            check_file, temp_path(ledger, name), name, abandon_on_cancel=True
        )
    except ArchiveInvalid as exc:
        reason = f"archive failed verification: {exc.reason}"
    else:
        if not sha256 or digest in sha256:
            return digest
        reason = f"sha256 {digest} is not the tracker's {' or '.join(sorted(sha256))}"
    remove_state(ledger, name)
    urls = ", ".join(s.url for s in pool if s.sent)
    log_event(log, "warning", "fetch_archive_rejected", file=name, sources=urls, reason=reason)
    raise CopyRejected(f"{urls or name}: {reason}")


def _check_space(ledger: str, needed: int, name: str, identity: Identity | None = None) -> None:
    """FetchError when ``ledger`` has less than ``needed`` bytes free (the bytes of a
    resumable temp file of the same file count as there)."""
    if identity is not None:
        state = load_state(ledger, name)
        if state is not None and state.identity.same_file(identity):
            needed -= sum(end - start for start, end in state.done)
    free = shutil.disk_usage(ledger).free
    if free < needed:
        raise FetchError(
            f"{name}: not enough space in {ledger}: {needed} bytes needed, {free} free"
        )


@attrs.define
class _StateSaver:
    """Saves the state of a download; a state never claims bytes that are not on disk: the
    temp file is synced (``fdatasync``) before a state claiming more bytes is written, both
    in a worker thread. Saves are ``every`` seconds apart (after the previous one ended), so
    a slow disk spaces them out rather than queueing them."""

    ledger: str
    state: State
    pieces: Pieces
    fd: int
    saved: tuple[tuple[int, int], ...] | None = None

    async def save(self) -> None:
        """Write the state of what is done now, unless it did not change."""
        done = tuple(self.pieces.done())  # taken before the sync: every byte in it is written
        if done == self.saved:
            return
        state = attrs.evolve(self.state, done=done)
        await trio.to_thread.run_sync(_sync_and_save, self.ledger, state, self.fd)
        self.saved = done

    async def run(self, every: float) -> None:
        """Save every ``every`` seconds until cancelled."""
        while True:
            await trio.sleep(every)
            await self.save()


def _sync_and_save(ledger: str, state: State, fd: int) -> None:
    os.fdatasync(fd)
    save_state(ledger, state)


async def _watch_speed(pool: list[Source], settings: FetchSettings) -> None:
    """Drop a source slower than ``min_speed`` over a window while another one is left."""
    last = {id(s): s.sent for s in pool}
    while True:
        await trio.sleep(settings.speed_window)
        for source in pool:
            rate = (source.sent - last[id(source)]) / settings.speed_window
            last[id(source)] = source.sent
            others = [s for s in pool if s is not source and not s.dropped]
            if not source.dropped and others and rate < settings.min_speed:
                source.drop(f"slower than {settings.min_speed} bytes/s ({rate:.0f})")


async def _worker(
    client: httpx.AsyncClient,
    index: int,
    pool: list[Source],
    pieces: Pieces,
    fd: int,
    settings: FetchSettings,
    progress: Progress,
) -> None:
    """Claim pieces and fetch them until none is left or no source is."""
    while True:
        live = [s for s in pool if not s.dropped]
        if not live:
            return
        source = live[index % len(live)]
        claim = pieces.claim(trio.current_time())
        if claim is None:
            if not pieces.active:
                return
            await trio.sleep(0.25)  # a claim may become worth stealing: look again
            continue
        scope = trio.CancelScope()
        source.scopes.add(scope)
        try:
            with scope:
                await _fetch_claim(client, source, claim, pieces, fd, settings, progress)
            source.failures = 0
        except SourceFailed as exc:
            source.failures += 1
            log_event(log, "warning", "fetch_piece_failed", url=source.url, reason=str(exc))
            if source.failures >= settings.max_failures:
                source.drop(str(exc).removeprefix(f"{source.url}: "))  # said once, in url
        finally:
            source.scopes.discard(scope)
            pieces.finish(claim)


async def _fetch_claim(
    client: httpx.AsyncClient,
    source: Source,
    claim: Claim,
    pieces: Pieces,
    fd: int,
    settings: FetchSettings,
    progress: Progress,
) -> None:
    """Fetch the bytes of ``claim`` from ``source`` and write them at their offsets."""
    headers = {}
    # The range as asked: the claim's end may shrink meanwhile (stolen), not the answer.
    first, end = claim.position, claim.end
    if source.ranges:
        headers["range"] = f"bytes={first}-{end - 1}"
    async with _request(client, source.url, headers, settings) as response:
        # Bytes of the body before the claim's position: a whole-file 200 starts at byte 0
        # and is only ever written at the offsets its bytes belong to.
        skip = 0
        if source.ranges:
            _check_range(response, source, first, end)
        else:
            _check_whole(response, source)
            skip = first
        stream = splice_stream(response, end - first if source.ranges else pieces.size)
        try:
            if stream is not None and not skip:  # the rest, if stolen, goes with the connection
                await _splice_body(stream, source, claim, pieces, fd, settings, progress)
            else:
                async with (
                    body_chunks(response) as chunks,
                    aclosing(_skipped(chunks, skip, settings)) as body,
                ):
                    await _write_body(body, source, claim, pieces, fd, settings, progress)
        except trio.TooSlowError:
            raise SourceFailed(f"{source.url}: no data for {settings.read_timeout:g}s") from None
        except TransportError as exc:
            raise SourceFailed(f"{source.url}: {exc}") from exc
    if claim.position < claim.end:
        raise SourceFailed(f"{source.url}: body ended at {claim.position} of {claim.end}")


async def _write_body(
    chunks: AsyncIterator[bytes],
    source: Source,
    claim: Claim,
    pieces: Pieces,
    fd: int,
    settings: FetchSettings,
    progress: Progress,
) -> None:
    """Write the body's bytes at their offsets until the claim's (possibly shrunk) end,
    gathered into writes of up to ``write_size`` bytes (fewer trips to a worker thread) but
    held at most ``write_delay`` seconds (what a killed fetch loses stays small)."""
    buffer: list[memoryview] = []
    buffered = 0
    flushed = trio.current_time()

    async def flush() -> None:
        nonlocal flushed, buffered
        flushed = trio.current_time()
        if buffered:
            await trio.to_thread.run_sync(_write_all, fd, buffer, claim.position)
            pieces.advance(claim, buffered)
            source.sent += buffered
            progress.add(buffered)
            buffer.clear()
            buffered = 0

    while True:
        with trio.fail_after(settings.read_timeout):
            chunk = await anext(chunks, None)
        if chunk is None:
            await flush()
            return
        count = claim.take(len(chunk))
        if count:
            buffer.append(memoryview(chunk)[:count])
            buffered += count
        if count < len(chunk) or claim.reserved >= claim.end:
            await flush()
            return  # the claim's end: the rest of this answer is someone else's (stolen)
        if buffered >= settings.write_size or trio.current_time() - flushed > settings.write_delay:
            await flush()


#: Longest a splice into the file runs before its progress is accounted (speed checks,
#: state file, progress bar), seconds.
SPLICE_SECONDS = 0.1
#: The least a splice call reserves of its claim once the claim's pace is known (bytes).
SPLICE_RESERVE_MIN = 256 * 1024


def _splice_quota(claim: Claim, settings: FetchSettings, now: float) -> int:
    """How many bytes of ``claim`` the next splice call reserves: what its pace moves in two
    calls' time, so that the rest of a slow claim stays free to steal while the call runs
    (a reservation is never stolen). Before its pace is known, ``write_size * 8``."""
    done, elapsed = claim.position - claim.start, now - claim.started
    if done <= 0 or elapsed <= 0:
        return settings.write_size * 8
    return max(SPLICE_RESERVE_MIN, int(2 * SPLICE_SECONDS * done / elapsed))


async def _splice_body(
    stream: BigReadStream,
    source: Source,
    claim: Claim,
    pieces: Pieces,
    fd: int,
    settings: FetchSettings,
    progress: Progress,
) -> None:
    """Move the body from the socket into the file with splice(2), up to the claim's
    (possibly shrinking) end: no byte passes through Python (plain HTTP; httpx reads the
    rest). Each call of the worker thread runs SPLICE_SECONDS at most."""
    sock = stream.get_extra_info("socket")
    heard = trio.current_time()
    while count := claim.take(_splice_quota(claim, settings, trio.current_time())):
        if trio.current_time() - heard > settings.read_timeout:
            raise SourceFailed(f"{source.url}: sent nothing for {settings.read_timeout:g} s")
        src = os.dup(sock.fileno())  # the event loop may close its own meanwhile
        try:
            moved = await trio.to_thread.run_sync(
                splice_to_file,
                src,
                fd,
                claim.position,
                count,
                settings.read_timeout,
                SPLICE_SECONDS,
            )
        except SourceFailed as exc:
            raise SourceFailed(f"{source.url}: {exc}") from exc
        finally:
            os.close(src)
        claim.reserved = claim.position + moved  # what was taken but not moved goes back
        if moved:
            heard = trio.current_time()
        pieces.advance(claim, moved)
        source.sent += moved
        progress.add(moved)


def _write_all(fd: int, pieces: list[memoryview], offset: int) -> None:
    """``pwritev`` every piece at ``offset`` (gathered, not copied; a short write goes on)."""
    while pieces:
        written = os.pwritev(fd, pieces, offset)
        offset += written
        while pieces and written >= len(pieces[0]):
            written -= len(pieces[0])
            pieces = pieces[1:]
        if pieces and written:
            pieces = [pieces[0][written:], *pieces[1:]]


def _set_mtime(path: str, last_modified: str) -> None:
    if not last_modified:
        return
    try:
        when = parsedate_to_datetime(last_modified).timestamp()
    except (TypeError, ValueError):
        return
    os.utime(path, (when, when))
