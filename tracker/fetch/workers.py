"""The connections of one ``fetch`` download over the shared engine
(:mod:`tracker.multisource.crew`): connection ``index`` asks the live sources of the pool in
turn; a source slower than ``min_speed`` while another is left is dropped
(:func:`watch_speed`, fetch's policy); the state file is saved as bytes land
(:class:`StateSaver`). What the connections share is one :class:`FetchCrew`; the engine's
blocking steps are looked up here at each call (``splice_to_file``, ``_write_all``,
``_fetch_claim``), where tests inject their faults."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import trio

from tracker.errors import FetchError, SourceFailed
from tracker.fetch.progress import Progress
from tracker.fetch.settings import FetchSettings
from tracker.fetch.sourcechecks import LINK_GONE, not_renewed, request
from tracker.fetch.state import State, save_state, state_path, temp_path, writer_of
from tracker.multisource import crew as engine
from tracker.multisource.claims import Claim, Pieces
from tracker.multisource.crew import PieceAnswer, skipped
from tracker.multisource.judging import slower_than
from tracker.multisource.sources import Source
from tracker.observability.logs import log_event
from tracker.zerocopy.kernelcopy import splice_to_file

log = logging.getLogger("tracker.fetch")

#: The engine's whole-file answer filter, under the name fetch's tests know it by.
_skipped = skipped


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
    #: The sources of this run: those that sent bytes join the state's writers.
    pool: list[Source] = attrs.Factory(list)
    saved: tuple[tuple[int, int], ...] | None = None

    def writers(self) -> tuple[str, ...]:
        """The URLs of the sources whose bytes the temp file holds: an earlier run's
        (the state resumed) and this run's that sent any, sorted."""
        sent = {writer_of(s.url) for s in self.pool if s.sent}
        return tuple(sorted(set(self.state.writers) | sent))

    async def save(self) -> None:
        """Write the state of what is done now, unless it did not change. FetchError when
        it cannot be written (a full disk): one line naming the file, the system's words and
        what a next run resumes (the last state saved stays as it was)."""
        done = tuple(self.pieces.done())  # taken before the sync: every byte in it is written
        # No await since ``done``: every source whose bytes it claims has counted them.
        writers = self.writers()
        if done == self.saved and writers == self.state.writers:
            return
        state = attrs.evolve(self.state, done=done, writers=writers)
        try:
            await trio.to_thread.run_sync(_sync_and_save, self.ledger, state, self.fd)
        except OSError as exc:
            raise FetchError(self._failed(exc)) from exc
        self.saved, self.state = done, state

    def _failed(self, exc: OSError) -> str:
        """Why the state could not be saved, and what a next run resumes."""
        state = state_path(self.ledger, self.state.name)
        return self.stopped(exc, state, "the download's state could not be saved")

    def stopped(self, exc: OSError, where: str, what: str = "the download stopped") -> str:
        """One line: the file ``exc`` names (else ``where``), the system's words, ``what``
        happened, and what a next run resumes: the bytes of the last state saved
        (docs/fetch.md, "Safely": a state never claims more than that)."""
        kept = sum(end - start for start, end in self.saved or ())
        return (
            f"{exc.filename or where}: {exc.strerror or exc}: {what}; "
            f"{kept} of {self.state.identity.size} bytes kept, run again to resume"
        )

    async def run(self, every: float) -> None:
        """Save every ``every`` seconds until cancelled."""
        while True:
            await trio.sleep(every)
            await self.save()


def _sync_and_save(ledger: str, state: State, fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:  # the error line names the file that failed
        raise OSError(exc.errno, exc.strerror, temp_path(ledger, state.name)) from exc
    save_state(ledger, state)


async def watch_speed(pool: list[Source], settings: FetchSettings) -> None:
    """Drop a source slower than ``min_speed`` over a window while another one is left."""
    await engine.watch_speed(pool, settings.speed_window, partial(slower_than, settings.min_speed))


@attrs.frozen
class FetchCrew:
    """What the connections of one download share: the client they ask with, its tunables,
    the pieces they claim, the temp file they write (``fd``) and the progress shown; and
    the engine's crew made of them (:attr:`engine`)."""

    client: httpx.AsyncClient
    settings: FetchSettings
    pieces: Pieces
    fd: int
    progress: Progress
    engine: engine.Crew = attrs.field(init=False)
    #: The byte ranges each source wrote (this run's): whose word the bytes no level binds
    #: are in a copy of several sources (:mod:`tracker.fetch.unbound`).
    written: dict[Source, list[tuple[int, int]]] = attrs.field(init=False, factory=dict)
    #: Where each source's pieces are asked since its link was renewed (:meth:`_open`).
    renewed: dict[Source, str] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        crew = engine.Crew(
            self.settings,
            self.pieces,
            self.fd,
            self._open,
            landed=self._landed,
            splice=_splice,
            write=_write,
            fetch_claim=_engine_fetch_claim,
        )
        object.__setattr__(self, "engine", crew)

    @asynccontextmanager
    async def _open(self, source: Source, headers: dict[str, str]) -> AsyncIterator[PieceAnswer]:
        """``source`` asked at the URL its redirects led to (or its renewal); when that says
        the link is gone (:data:`LINK_GONE`: a presigned URL lives 15 minutes, a full's
        download longer), the URL it was listed at is asked again, and where that leads now
        is taken only as a renewal of the same URL (:func:`not_renewed`)."""
        async with request(
            self.client, self.renewed.get(source, source.url), headers, self.settings
        ) as response:
            status = response.status_code
            if not (source.listed_at and status in LINK_GONE):
                yield PieceAnswer(response)
                return
        async with request(self.client, source.listed_at, headers, self.settings) as again:
            why = not_renewed(source.url, str(again.url))
            if why:
                raise SourceFailed(f"{source.url}: status {status}; {why}")
            log_event(log, "info", "fetch_link_renewed", url=source.url, status=status)
            self.renewed[source] = str(again.url)
            yield PieceAnswer(again)

    def _landed(self, source: Source, offset: int, count: int) -> None:
        self.progress.add(count)
        ranges = self.written.setdefault(source, [])
        if ranges and ranges[-1][1] == offset:  # the same claim going on
            ranges[-1] = (ranges[-1][0], offset + count)
        else:
            ranges.append((offset, offset + count))


async def worker(crew: FetchCrew, index: int, pool: list[Source]) -> None:
    """Claim pieces and fetch them until none is left or no source is."""
    await engine.worker(crew.engine, index, pool)


async def _fetch_claim(crew: engine.Crew, source: Source, claim: Claim) -> None:
    """Fetch the bytes of ``claim`` from ``source`` and write them at their offsets."""
    await engine.fetch_claim(crew, source, claim, None)


async def _engine_fetch_claim(
    crew: engine.Crew, source: Source, claim: Claim, first: PieceAnswer | None
) -> None:
    await _fetch_claim(crew, source, claim)  # looked up at each call (tests replace it)


def _splice(*args: Any) -> int:
    return splice_to_file(*args)  # looked up at each call (tests replace it)


def _write(fd: int, pieces: list[memoryview], offset: int) -> None:
    _write_all(fd, pieces, offset)  # looked up at each call (tests replace it)


def _write_all(fd: int, pieces: list[memoryview], offset: int) -> None:
    """``pwritev`` every piece at ``offset`` (:func:`tracker.multisource.crew.write_all`)."""
    engine.write_all(fd, pieces, offset)
