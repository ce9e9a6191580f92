"""The connections of one download from several sources: each claims a piece
(:mod:`tracker.multisource.claims`), asks a live source for it and writes it at its offsets,
spliced from the socket into the file when the answer is plain HTTP. What they share is one
:class:`Crew` (the file, the pieces, how a source is asked and who is told of what landed);
each claim is fetched and written by a :class:`ClaimWriter`, which is also the sink of the
splice loop (:mod:`tracker.zerocopy.filesplice`).

Two loops drive the claims: :func:`worker` (``fetch``: connection ``index`` asks the live
sources in turn) and :func:`lane` (the cache's refresh: a connection bound to one source,
so that each origin gets at most its ``source_limits.max_transfers``). A source that keeps
failing is dropped and its claims go back to the pool, where the other sources take them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Protocol

import attrs
import httpx
import trio

from tracker.clientwire.transport import BigReadStream, splice_stream
from tracker.errors import SourceBusy, SourceFailed, SourceOverloaded
from tracker.multisource.claims import Claim, Pieces
from tracker.multisource.sources import Source, check_range, check_whole
from tracker.net.bodyreads import body_chunks
from tracker.net.exchange import source_failures
from tracker.net.sourcelimits import UNCAPPED, Pacer
from tracker.observability.logs import log_event
from tracker.zerocopy.filesplice import SPLICE_SECONDS, Splicer, splice_into_file
from tracker.zerocopy.kernelcopy import splice_to_file

log = logging.getLogger("tracker.multisource")

#: Longest wait of an idle connection before it looks for a claim again (a claim may have
#: become worth stealing); it looks at once when a claim ends or a piece lands.
IDLE_LOOK = 0.25
#: Seconds a connection waits after its source had no free transfer slot.
BUSY_PAUSE = 0.5


class Tunables(Protocol):
    """What the engine reads of its caller's settings."""

    @property
    def read_timeout(self) -> float:
        """Longest wait for one read of a body."""
        ...

    @property
    def write_size(self) -> int:
        """Bytes gathered per ``pwrite`` (per connection)."""
        ...

    @property
    def write_delay(self) -> float:
        """Longest time bytes wait in memory before their ``pwrite``."""
        ...

    @property
    def max_failures(self) -> int:
        """Failures in a row after which a source is dropped."""
        ...


@attrs.frozen
class PieceAnswer:
    """An answer to a request for a piece, body unread, and the rate its source may send
    at (``source_limits.max_rate``)."""

    response: httpx.Response
    pacer: Pacer = UNCAPPED
    #: Closes the answer and frees its transfer slot (None: closing the response does).
    release: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        """Close the answer, also while the task is being cancelled."""
        with trio.CancelScope(shield=True):
            if self.release is not None:
                await self.release()
            else:
                await self.response.aclose()


#: ``open(source, headers)``: the source asked for a piece with ``headers`` (a ``Range``),
#: as an async context manager that closes the answer (and frees its transfer slot).
Opener = Callable[[Source, dict[str, str]], AbstractAsyncContextManager[PieceAnswer]]
#: ``write(fd, buffers, offset)``: the buffers written at ``offset`` (blocking).
Writer = Callable[[int, list[memoryview], int], None]


def _nothing(_source: Source, _offset: int, _count: int) -> None:
    return None


def write_all(fd: int, pieces: list[memoryview], offset: int) -> None:
    """``pwritev`` every piece at ``offset`` (gathered, not copied; a short write goes on)."""
    while pieces:
        written = os.pwritev(fd, pieces, offset)
        offset += written
        while pieces and written >= len(pieces[0]):
            written -= len(pieces[0])
            pieces = pieces[1:]
        if pieces and written:
            pieces = [pieces[0][written:], *pieces[1:]]


@attrs.define(eq=False)
class Crew:
    """What the connections of one download share: the caller's tunables, the pieces they
    claim, the file they write (``fd``), how a source is asked (``open``), who is told of
    the bytes that landed (``landed(source, offset, count)``: progress, the refresh's
    prefix, who wrote which bytes), and the blocking steps (``splice``, ``write``,
    ``fetch_claim``: replaceable, tests inject faults there)."""

    settings: Tunables
    pieces: Pieces
    fd: int
    open: Opener
    landed: Callable[[Source, int, int], None] = _nothing
    splice: Splicer = splice_to_file
    write: Writer = write_all
    fetch_claim: Callable[[Crew, Source, Claim, PieceAnswer | None], Awaitable[None]] | None = None
    #: Each source is asked for one byte before its lanes claim a piece (the refresh):
    #: whether it honours ``Range`` (:func:`lane`).
    probe_ranges: bool = False
    _changed: trio.Event = attrs.Factory(trio.Event)
    #: The probes running (:func:`_probe`): cancelled once the file is complete.
    probes: set[trio.CancelScope] = attrs.field(factory=set, init=False)

    def changed(self) -> None:
        """A claim ended or bytes landed: idle connections look again (a probe still out
        once every byte is in tells nothing anyone needs: cancelled)."""
        self._changed.set()
        self._changed = trio.Event()
        if self.pieces.complete:
            for probe in self.probes:
                probe.cancel()

    async def idle(self) -> None:
        """Wait until something changed, at most IDLE_LOOK seconds."""
        with trio.move_on_after(IDLE_LOOK):
            await self._changed.wait()


async def worker(crew: Crew, index: int, pool: list[Source]) -> None:
    """Claim pieces and fetch them until none is left or no source is (``fetch``: this
    connection asks the live sources in turn, by its ``index``)."""
    while True:
        live = [s for s in pool if not s.dropped]
        if not live:
            return
        if not await _one_claim(crew, live[index % len(live)], None):
            return


#: Why a source that ignores ``Range`` gives no pieces (:attr:`Source.left_out`).
IGNORES_RANGE = "ignores Range (answered a Range request with the whole file)"


async def lane(crew: Crew, source: Source, first: tuple[PieceAnswer, Claim] | None = None) -> None:
    """Claim pieces and fetch them from ``source`` alone until none is left or it is
    dropped. ``first``: an answer of the source already open, the whole file from byte 0
    (the refresh's first answer, which its readers got their first byte from), with the
    claim it carries (made before any lane ran, so that it is the file's head): it carries
    that claim on over the next pieces for as long as nobody else holds them.

    With ``crew.probe_ranges``, the source is asked for its first byte before this lane
    claims a piece (:func:`_probe`, one at a time for all its lanes, holding no claim so
    the first answer may run on meanwhile); one that ignores Range asks nothing more: only
    an answer already open (the first) goes on, and once no answer of it runs the source is
    left out (:data:`IGNORES_RANGE`)."""
    answer, claim = first if first is not None else (None, None)
    try:
        while source.live and not crew.pieces.complete:
            if answer is None and not source.ranges:
                # It ignores Range: an answer of it still open (the first) is all it gives.
                if not source.scopes:
                    source.left_out = IGNORES_RANGE
                    crew.changed()
                return
            if answer is None and crew.probe_ranges and not source.ranges_shown:
                if source.probing:
                    await crew.idle()  # one probe tells for all its lanes
                else:
                    await _probe(crew, source)
                continue
            if not await _one_claim(crew, source, answer, claim):
                return
            claim = None  # finished (or given back) by _one_claim
            if answer is not None:
                # Its claim ended: its transfer slot goes to this lane's next request.
                ended, answer = answer, None
                await ended.aclose()
    finally:
        if answer is not None:
            await answer.aclose()
        if claim is not None:
            crew.pieces.finish(claim)  # never fetched (the source was dropped): back to the pool


async def _probe(crew: Crew, source: Source) -> None:
    """Ask ``source`` for its first byte, holding no claim, to learn whether it honours
    ``Range``: a checked 206 shows it does (:attr:`Source.ranges_shown`), a 200 that it
    ignores Range (:meth:`Source.ignores_range`; the answer closed unread: a probe's worth
    of its bytes at most, never the file); any other answer is a failure as a piece's is."""
    scope = trio.CancelScope()
    source.scopes.add(scope)
    crew.probes.add(scope)
    source.probing = True
    busy = False
    try:
        with scope:
            async with crew.open(source, {"range": "bytes=0-0"}) as answer:
                response = answer.response
                if response.status_code == 200:
                    check_whole(response, source)  # the file it was chosen for, whole
                    source.ignores_range(response.status_code)
                else:
                    check_range(response, source, 0, 1)
                    source.ranges_shown = True
        source.failures = 0
    except SourceBusy:
        busy = True
    except SourceFailed as exc:
        _failed(crew, source, exc)
    finally:
        source.probing = False
        source.scopes.discard(scope)
        crew.probes.discard(scope)
        crew.changed()
    if busy:
        await _slot_pause(source)


def _failed(crew: Crew, source: Source, exc: SourceFailed) -> None:
    """One more failure of ``source`` in a row: dropped at ``max_failures``."""
    source.failures += 1
    if not source.dropped:  # every failure of the row a busy answer (503, 429): not failing
        source.busy = isinstance(exc, SourceOverloaded) and (source.failures == 1 or source.busy)
    log_event(log, "warning", "piece_failed", url=source.url, reason=str(exc))
    if source.failures >= crew.settings.max_failures:
        source.drop(str(exc).removeprefix(f"{source.url}: "))  # said once, in url


async def _one_claim(
    crew: Crew, source: Source, first: PieceAnswer | None, claim: Claim | None = None
) -> bool:
    """Claim a piece (or take ``claim``) and fetch it from ``source`` (with ``first``: from
    that answer); False once there is nothing left to claim."""
    if claim is None:
        claim = crew.pieces.claim(trio.current_time())
    if claim is None:
        if not crew.pieces.active:
            return False
        await crew.idle()
        return True
    scope = trio.CancelScope()
    source.scopes.add(scope)
    busy = False
    try:
        with scope:
            fetch = crew.fetch_claim or fetch_claim
            await fetch(crew, source, claim, first)
        source.failures = 0
    except SourceBusy:
        busy = True
    except SourceFailed as exc:
        _failed(crew, source, exc)
    finally:
        source.scopes.discard(scope)
        crew.pieces.finish(claim)
        crew.changed()
    if busy:
        await _slot_pause(source)
    return True


async def _slot_pause(source: Source) -> None:
    """After ``source``'s origin had no free transfer slot: not the source's fault, so it
    is counted (:attr:`Source.slot_waits`: the speed judge leaves that window out) and the
    pause before its next request runs with no request of it open (not busy)."""
    source.slot_waits += 1
    await trio.sleep(BUSY_PAUSE)


async def fetch_claim(crew: Crew, source: Source, claim: Claim, first: PieceAnswer | None) -> None:
    """Fetch the bytes of ``claim`` from ``source`` (or from ``first``, an answer of the
    whole file already open) and write them at their offsets."""
    writer = ClaimWriter(crew, source, claim, continuous=first is not None)
    if first is not None:
        await writer.take_answer(first, claim.position, claim.end)
        return
    await writer.fetch()


#: The least a splice call reserves of its claim once the claim's pace is known (bytes).
SPLICE_RESERVE_MIN = 256 * 1024


def splice_quota(claim: Claim, settings: Tunables, now: float) -> int:
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
    in the crew's file: spliced from the socket when the answer allows, else written from
    Python. It is also the sink of that splice
    (:class:`~tracker.zerocopy.filesplice.SpliceSink`). ``continuous``: the answer is the
    whole file, so the claim may grow over the next free piece (:meth:`Pieces.extend`)."""

    crew: Crew
    source: Source
    claim: Claim
    continuous: bool = False

    async def fetch(self) -> None:
        """Fetch the claim's bytes; SourceFailed (prefixed with the source's URL) when the
        source fails, falls silent or ends its body early."""
        source, claim = self.source, self.claim
        headers = {}
        # The range as asked: the claim's end may shrink meanwhile (stolen), not the answer.
        first, end = claim.position, claim.end
        if source.ranges:
            headers["range"] = f"bytes={first}-{end - 1}"
        async with self.crew.open(source, headers) as answer:
            await self.take_answer(answer, first, end)

    async def take_answer(self, answer: PieceAnswer, first: int, end: int) -> None:
        """Write the body of ``answer`` (bytes ``first`` to ``end`` when the source honours
        ranges and this is not the whole-file answer, else the whole file) at its offsets."""
        source, claim, settings = self.source, self.claim, self.crew.settings
        response = answer.response
        # Bytes of the body before the claim's position: a whole-file 200 starts at byte
        # 0 and is only ever written at the offsets its bytes belong to.
        skip = 0
        ranged = source.ranges and not self.continuous
        if ranged:
            check_range(response, source, first, end)
            source.ranges_shown = True
        else:
            check_whole(response, source)
            skip = first
        length = end - first if ranged else self.crew.pieces.size
        stream = splice_stream(response, length)
        with source_failures(source.url, f"no data for {settings.read_timeout:g}s"):
            if stream is not None and not skip:  # the rest, if stolen, goes with it
                await self._splice_body(stream, answer.pacer)
            else:
                async with (
                    body_chunks(response) as chunks,
                    aclosing(skipped(chunks, skip, settings)) as body,
                ):
                    await self._write_body(body, answer.pacer)
        if claim.position < claim.end:
            raise SourceFailed(f"{source.url}: body ended at {claim.position} of {claim.end}")

    def _room(self, wanted: int) -> None:
        """A whole-file answer's claim grows over the next free pieces its ``wanted`` bytes
        reach, one piece at a time and only once the claim is used up (or the bytes in hand
        run past it): never ahead of need, so the other sources' lanes get the pieces that
        follow (it would otherwise take a whole window before they asked)."""
        claim = self.claim
        while self.continuous and claim.end - max(claim.position, claim.reserved) < wanted:
            if not self.crew.pieces.extend(claim):
                return

    async def _write_body(self, chunks: AsyncIterator[bytes], pacer: Pacer) -> None:
        """Write the body's bytes at their offsets until the claim's (possibly shrunk) end,
        gathered into writes of up to ``write_size`` bytes (fewer trips to a worker thread)
        but held at most ``write_delay`` seconds (what a killed download loses stays small)."""
        claim, settings = self.claim, self.crew.settings
        buffer: list[memoryview] = []
        buffered = 0
        flushed = trio.current_time()

        async def flush() -> None:
            nonlocal flushed, buffered
            flushed = trio.current_time()
            if buffered:
                await trio.to_thread.run_sync(self.crew.write, self.crew.fd, buffer, claim.position)
                self._landed(buffered)
                buffer.clear()
                buffered = 0

        while True:
            with trio.fail_after(settings.read_timeout):
                chunk = await anext(chunks, None)
            if chunk is None:
                await flush()
                return
            self._room(len(chunk))
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
            await pacer.pace(len(chunk))  # source_limits.max_rate (uncapped: at once)

    async def _splice_body(self, stream: BigReadStream, pacer: Pacer) -> None:
        """Move the body from the socket into the file with splice(2), up to the claim's
        (possibly shrinking) end: no byte passes through Python (plain HTTP; httpx reads the
        rest). Each call of the worker thread runs SPLICE_SECONDS at most."""
        stream.take_body()
        sock = stream.get_extra_info("socket")
        timeout = self.crew.settings.read_timeout
        try:
            await splice_into_file(sock, self, timeout, pacer=pacer, splice=self.crew.splice)
        except SourceFailed as exc:
            raise SourceFailed(f"{self.source.url}: {exc}") from exc

    def take(self, most: int) -> int:
        """Reserve the next bytes of the claim for one splice call (0: the claim is done)."""
        quota = min(most, splice_quota(self.claim, self.crew.settings, trio.current_time()))
        self._room(1)  # at the claim's end only: the next piece, when free
        return self.claim.take(quota)

    def destination(self) -> tuple[int, int]:
        """The file and the claim's position in it."""
        return self.crew.fd, self.claim.position

    def moved(self, taken: int, moved: int) -> None:
        """What was taken but not moved goes back to the claim; what moved is accounted."""
        self.claim.reserved = self.claim.position + moved
        self._landed(moved)

    def _landed(self, count: int) -> None:
        """``count`` bytes at the claim's position are in the file."""
        offset = self.claim.position
        self.crew.pieces.advance(self.claim, count)
        self.source.sent += count
        if count:
            self.crew.landed(self.source, offset, count)


async def skipped(
    chunks: AsyncIterator[bytes], count: int, settings: Tunables
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


#: ``judge(rates, live, busy, overall)``: the reason to drop each source ("" to keep it),
#: from the bytes per second each delivered over the last window, whether it is still in
#: use, whether it had a request running at both ends of the window and never waited for
#: a transfer slot meanwhile, and the bytes per second each delivered since the watch began.
Judge = Callable[[list[float], list[bool], list[bool], list[float]], list[str]]


async def watch_speed(pool: list[Source], window: float, judge: Judge) -> None:
    """Every ``window`` seconds, drop the sources ``judge`` finds too slow (the caller's
    policy: :mod:`tracker.multisource.judging`); their claims go back to the others."""
    began, first = trio.current_time(), [s.sent for s in pool]
    last = list(first)
    asking = [bool(s.scopes) for s in pool]
    waits = [s.slot_waits for s in pool]
    while True:
        await trio.sleep(window)
        elapsed = max(window, trio.current_time() - began)
        rates = [(s.sent - before) / window for s, before in zip(pool, last, strict=True)]
        overall = [(s.sent - before) / elapsed for s, before in zip(pool, first, strict=True)]
        # busy: asking at both ends of the window, and never for want of a slot meanwhile
        busy = [
            was and bool(s.scopes) and s.slot_waits == waited
            for s, was, waited in zip(pool, asking, waits, strict=True)
        ]
        last, asking = [s.sent for s in pool], [bool(s.scopes) for s in pool]
        waits = [s.slot_waits for s in pool]
        reasons = judge(rates, [s.live for s in pool], busy, overall)
        for source, reason in zip(pool, reasons, strict=True):
            if reason and source.live:
                # dropped for its pace, its own doing: not for busy answers, whatever its
                # row of failures held (docs/ranking.md, "Busy answers")
                source.busy = False
                source.drop(reason)
