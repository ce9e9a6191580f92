"""The one splice-into-file loop (tracker/zerocopy/filesplice.py) and its two sinks: the
claimed piece of a download (tracker/multisource/crew.py ``ClaimWriter``, fetch's and the
refresh's) and the end of a cache
refresh's temp file (tracker/cache/refresh.py). Unix socket pairs: no network."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trio.testing
from helpers_tls import client_tls

from tracker.errors import SourceFailed
from tracker.fetch.progress import NoProgress
from tracker.fetch.settings import FetchSettings
from tracker.fetch.workers import FetchCrew
from tracker.multisource.claims import Pieces
from tracker.multisource.crew import ClaimWriter
from tracker.multisource.sources import Identity, Source
from tracker.net.sourcelimits import Pacer
from tracker.zerocopy import filesplice
from tracker.zerocopy.filesplice import SPLICE_SECONDS, splice_into_file


@attrs.define
class Sink:
    """A sink of ``left`` bytes from ``offset`` of ``fd``, recording what it is asked."""

    fd: int
    offset: int
    left: int
    asked: list[int] = attrs.Factory(list)
    told: list[tuple[int, int]] = attrs.Factory(list)

    def take(self, most: int) -> int:
        self.asked.append(most)
        return min(most, self.left)

    def destination(self) -> tuple[int, int]:
        return self.fd, self.offset

    def moved(self, taken: int, moved: int) -> None:
        self.told.append((taken, moved))
        self.offset += moved
        self.left -= moved


@attrs.define
class CountingPacer(Pacer):
    """A pacer that records what it was told (and never waits)."""

    paced: list[int] = attrs.Factory(list)

    async def pace(self, size: int) -> None:
        self.paced.append(size)


async def test_the_loop_moves_every_byte_to_the_sinks_offsets_and_tells_sink_and_pacer(
    tmp_path: Path,
) -> None:
    data = os.urandom(300_000)
    calls: list[tuple[int, int]] = []

    def splice(src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        """What splice_to_file does, from ``data`` (a real socket: the integration tests),
        at most 70,000 bytes a call (a call that ran its seconds)."""
        assert (timeout, s) == (5.0, SPLICE_SECONDS)
        calls.append((offset, count))
        return os.pwrite(fd, data[offset - 10 : offset - 10 + min(count, 70_000)], offset)

    left, right = trio.socket.socketpair()
    path = tmp_path / "file"
    path.write_bytes(b"-" * 10)
    fd = os.open(path, os.O_WRONLY)
    try:
        sink = Sink(fd, 10, len(data))
        pacer = CountingPacer(0)
        await splice_into_file(right, sink, 5.0, pacer=pacer, splice=splice)
    finally:
        os.close(fd)
        left.close()
        right.close()
    assert path.read_bytes() == b"-" * 10 + data
    assert [offset for offset, _count in calls] == [10 + n * 70_000 for n in range(5)]
    assert [moved for _taken, moved in sink.told] == [70_000] * 4 + [20_000] == pacer.paced
    assert sink.told[0] == (300_000, 70_000)  # taken: all that was left; moved: a call's worth
    assert sink.asked[-1] and sink.left == 0  # asked until it took nothing more


async def test_a_capped_pacer_bounds_each_call_to_its_rate_over_one_call() -> None:
    calls: list[int] = []

    def splice(src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        calls.append(count)
        return count

    left, right = trio.socket.socketpair()
    sink = Sink(os.dup(0), 0, 1000)
    try:
        await splice_into_file(right, sink, 5.0, pacer=CountingPacer(4000), splice=splice)
    finally:
        os.close(sink.fd)
        left.close()
        right.close()
    per_call = int(4000 * SPLICE_SECONDS)
    assert sink.asked[0] == per_call and calls == [per_call] * (1000 // per_call)


async def test_a_silent_source_fails_after_the_read_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    def silent(src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        trio.from_thread.run_sync(mock_clock.jump, 0.3)  # a call that waited for nothing
        return 0

    left, right = trio.socket.socketpair()
    sink = Sink(os.dup(0), 0, 1000)
    try:
        with pytest.raises(SourceFailed, match="upstream sent nothing for 1 s"):
            await splice_into_file(right, sink, 1.0, splice=silent)
    finally:
        os.close(sink.fd)
        left.close()
        right.close()
    # Calls until the read timeout passed (0.3 s each), each told to the sink as nothing.
    assert len(sink.told) == 4
    assert {moved for _taken, moved in sink.told} == {0}


async def test_the_loop_closes_its_duplicates_whatever_the_splice_raises() -> None:
    def full(src: int, fd: int, offset: int, count: int, timeout: float, s: float) -> int:
        raise OSError(28, "No space left on device")

    left, right = trio.socket.socketpair()
    sink = Sink(os.dup(0), 0, 1000)
    before = len(os.listdir("/proc/self/fd"))
    try:
        for _ in range(20):
            with pytest.raises(OSError, match="No space"):
                await splice_into_file(right, sink, 1.0, splice=full)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(sink.fd)
        left.close()
        right.close()


def test_one_constant_paces_both_byte_paths() -> None:
    import tracker.cache.refresh
    import tracker.multisource.crew

    assert not hasattr(tracker.cache.refresh, "SPLICE_SECONDS")
    assert tracker.multisource.crew.SPLICE_SECONDS is filesplice.SPLICE_SECONDS


def writer(size: int = 8 * 1024 * 1024) -> ClaimWriter:
    pieces = Pieces(size, size)
    claim = pieces.claim(0.0)
    assert claim is not None
    source = Source("http://s/x", Identity(size), ranges=True)
    crew = FetchCrew(
        httpx.AsyncClient(verify=client_tls()),
        FetchSettings(write_size=1024),
        pieces,
        -1,
        NoProgress(),
    )
    return ClaimWriter(crew.engine, source, claim)


async def test_a_claim_writer_reserves_its_quota_and_gives_back_what_did_not_move() -> None:
    piece = writer()
    # Before its pace is known: write_size * 8, within what the pacer allows.
    assert piece.take(1 << 40) == 8 * 1024
    assert piece.claim.reserved == 8 * 1024
    assert piece.destination() == (-1, 0)
    piece.moved(8 * 1024, 3000)  # the rest of the reservation goes back to the claim
    assert (piece.claim.position, piece.claim.reserved) == (3000, 3000)
    assert piece.source.sent == 3000
    assert piece.destination() == (-1, 3000)
    assert piece.take(100) == 100  # a capped pacer's share
    piece.moved(100, 0)
    assert (piece.claim.position, piece.claim.reserved) == (3000, 3000)
