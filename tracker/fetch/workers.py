"""The connections of one download: each claims a piece (:mod:`tracker.fetch.claims`),
fetches it from a live source of the pool and writes it at its offsets, spliced from the
socket into the file when the answer is plain HTTP; a source that keeps failing, or is slower
than ``min_speed`` while another is left, is dropped; the state file is saved as bytes land
(:class:`StateSaver`). What the connections share is one :class:`Crew`; each claim is
fetched and written by a :class:`ClaimWriter`, which is also the sink of the splice loop
(:mod:`tracker.zerocopy.filesplice`, shared with the cache's refreshes)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import attrs
import httpx
import trio

from tracker.clientwire.transport import BigReadStream, splice_stream
from tracker.core.logs import log_event
from tracker.errors import SourceFailed
from tracker.fetch.claims import Claim, Pieces
from tracker.fetch.progress import Progress
from tracker.fetch.settings import FetchSettings
from tracker.fetch.sourcechecks import Source, check_range, check_whole, request
from tracker.fetch.state import State, save_state
from tracker.net.bodyreads import body_chunks
from tracker.net.exchange import source_failures
from tracker.zerocopy.filesplice import SPLICE_SECONDS, splice_into_file
from tracker.zerocopy.kernelcopy import splice_to_file

log = logging.getLogger("tracker.fetch")


@attrs.define
class StateSaver:
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


async def watch_speed(pool: list[Source], settings: FetchSettings) -> None:
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


@attrs.frozen
class Crew:
    """What the connections of one download share: the client they ask with, its tunables,
    the pieces they claim, the temp file they write (``fd``) and the progress shown."""

    client: httpx.AsyncClient
    settings: FetchSettings
    pieces: Pieces
    fd: int
    progress: Progress


async def worker(crew: Crew, index: int, pool: list[Source]) -> None:
    """Claim pieces and fetch them until none is left or no source is."""
    while True:
        live = [s for s in pool if not s.dropped]
        if not live:
            return
        source = live[index % len(live)]
        claim = crew.pieces.claim(trio.current_time())
        if claim is None:
            if not crew.pieces.active:
                return
            await trio.sleep(0.25)  # a claim may become worth stealing: look again
            continue
        scope = trio.CancelScope()
        source.scopes.add(scope)
        try:
            with scope:
                await _fetch_claim(crew, source, claim)
            source.failures = 0
        except SourceFailed as exc:
            source.failures += 1
            log_event(log, "warning", "fetch_piece_failed", url=source.url, reason=str(exc))
            if source.failures >= crew.settings.max_failures:
                source.drop(str(exc).removeprefix(f"{source.url}: "))  # said once, in url
        finally:
            source.scopes.discard(scope)
            crew.pieces.finish(claim)


async def _fetch_claim(crew: Crew, source: Source, claim: Claim) -> None:
    """Fetch the bytes of ``claim`` from ``source`` and write them at their offsets."""
    await ClaimWriter(crew, source, claim).fetch()


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


@attrs.define
class ClaimWriter:
    """Fetches the bytes of one ``claim`` from ``source`` and writes them at their offsets
    in the crew's temp file: spliced from the socket when the answer allows, else written
    from Python. It is also the sink of that splice
    (:class:`~tracker.zerocopy.filesplice.SpliceSink`)."""

    crew: Crew
    source: Source
    claim: Claim

    async def fetch(self) -> None:
        """Fetch the claim's bytes; SourceFailed (prefixed with the source's URL) when the
        source fails, falls silent or ends its body early."""
        source, claim, settings = self.source, self.claim, self.crew.settings
        headers = {}
        # The range as asked: the claim's end may shrink meanwhile (stolen), not the answer.
        first, end = claim.position, claim.end
        if source.ranges:
            headers["range"] = f"bytes={first}-{end - 1}"
        async with request(self.crew.client, source.url, headers, settings) as response:
            # Bytes of the body before the claim's position: a whole-file 200 starts at byte
            # 0 and is only ever written at the offsets its bytes belong to.
            skip = 0
            if source.ranges:
                check_range(response, source, first, end)
            else:
                check_whole(response, source)
                skip = first
            length = end - first if source.ranges else self.crew.pieces.size
            stream = splice_stream(response, length)
            with source_failures(source.url, f"no data for {settings.read_timeout:g}s"):
                if stream is not None and not skip:  # the rest, if stolen, goes with it
                    await self._splice_body(stream)
                else:
                    async with (
                        body_chunks(response) as chunks,
                        aclosing(_skipped(chunks, skip, settings)) as body,
                    ):
                        await self._write_body(body)
        if claim.position < claim.end:
            raise SourceFailed(f"{source.url}: body ended at {claim.position} of {claim.end}")

    async def _write_body(self, chunks: AsyncIterator[bytes]) -> None:
        """Write the body's bytes at their offsets until the claim's (possibly shrunk) end,
        gathered into writes of up to ``write_size`` bytes (fewer trips to a worker thread)
        but held at most ``write_delay`` seconds (what a killed fetch loses stays small)."""
        claim, settings = self.claim, self.crew.settings
        buffer: list[memoryview] = []
        buffered = 0
        flushed = trio.current_time()

        async def flush() -> None:
            nonlocal flushed, buffered
            flushed = trio.current_time()
            if buffered:
                await trio.to_thread.run_sync(_write_all, self.crew.fd, buffer, claim.position)
                self._landed(buffered)
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
            if (
                buffered >= settings.write_size
                or flushed < trio.current_time() - settings.write_delay
            ):
                await flush()

    async def _splice_body(self, stream: BigReadStream) -> None:
        """Move the body from the socket into the file with splice(2), up to the claim's
        (possibly shrinking) end: no byte passes through Python (plain HTTP; httpx reads the
        rest). Each call of the worker thread runs SPLICE_SECONDS at most."""
        sock = stream.get_extra_info("socket")
        timeout = self.crew.settings.read_timeout
        try:
            await splice_into_file(sock, self, timeout, splice=splice_to_file)
        except SourceFailed as exc:
            raise SourceFailed(f"{self.source.url}: {exc}") from exc

    def take(self, most: int) -> int:
        """Reserve the next bytes of the claim for one splice call (0: the claim is done)."""
        quota = _splice_quota(self.claim, self.crew.settings, trio.current_time())
        return self.claim.take(min(most, quota))

    def destination(self) -> tuple[int, int]:
        """The temp file and the claim's position in it."""
        return self.crew.fd, self.claim.position

    def moved(self, taken: int, moved: int) -> None:
        """What was taken but not moved goes back to the claim; what moved is accounted."""
        self.claim.reserved = self.claim.position + moved
        self._landed(moved)

    def _landed(self, count: int) -> None:
        """``count`` bytes at the claim's position are in the file."""
        self.crew.pieces.advance(self.claim, count)
        self.source.sent += count
        self.crew.progress.add(count)


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
