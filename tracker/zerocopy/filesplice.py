"""The one loop that moves an upstream body from its socket into a file with ``splice(2)``.

Both byte paths that store a body use it: a refresh of the disk cache
(:meth:`tracker.cache.refresh.Refresh.splice_from`) and a connection of ``snapshot-tracker
fetch`` (:mod:`tracker.fetch.workers`). What differs between them is passed in: what the
next call may move and where it goes (a :class:`SpliceSink`: the end of a temp file, or the
claimed piece of a download), what is accounted once bytes landed (the sink's
:meth:`~SpliceSink.moved`: readers woken, progress counted) and the pace of the source
(an optional :class:`~tracker.net.sourcelimits.Pacer`).

Each call runs in a worker thread for at most :data:`SPLICE_SECONDS` (the blocking loop is
:func:`~tracker.zerocopy.kernelcopy.splice_to_file`), so what moved is accounted that often.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Protocol

import trio

from tracker.errors import SourceFailed
from tracker.net.sourcelimits import UNCAPPED, Pacer
from tracker.zerocopy.kernelcopy import splice_to_file

#: Longest one splice call runs before what it moved is accounted (readers of a growing
#: file wake, a download's speed checks, state file and progress see it), seconds. Short
#: enough that a reader of a refresh trails it by little; long enough that a thread hop per
#: call costs nothing next to the bytes it moves (bench: refresh, fetch).
SPLICE_SECONDS = 0.05

#: ``splice_to_file``'s shape: (socket fd, file fd, offset, count, read timeout, seconds) ->
#: bytes moved; callers may give their own (tests inject faults there).
Splicer = Callable[[int, int, int, int, float, float], int]


class SpliceSink(Protocol):
    """Where a body spliced into a file goes, and who is told of what landed."""

    def take(self, most: int) -> int:
        """How many bytes the next call moves, at most ``most``; 0 ends the loop."""
        ...

    def destination(self) -> tuple[int, int]:
        """The file's descriptor (the loop duplicates it for its thread) and the offset the
        next bytes go to."""
        ...

    def moved(self, taken: int, moved: int) -> None:
        """``moved`` of the ``taken`` bytes of the last call are in the file now (0: the
        source sent nothing meanwhile)."""
        ...


async def splice_into_file(
    sock: trio.socket.SocketType,
    sink: SpliceSink,
    read_timeout: float,
    *,
    pacer: Pacer = UNCAPPED,
    splice: Splicer = splice_to_file,
) -> None:
    """Move the bytes arriving on ``sock`` into ``sink``'s file until it takes no more.

    Each call moves what ``sink.take`` allows (and ``pacer`` within one call's time) in a
    worker thread, for at most SPLICE_SECONDS; then ``sink.moved`` is told and ``pacer``
    waits while the source is over its rate (uncapped: not at all). Raises SourceFailed when
    the source breaks, closes early or sends nothing for ``read_timeout`` seconds (what
    arrived before is in the file and was accounted); OSError when the file cannot be
    written (or what ``splice`` raises). Cancellation waits for the current call.
    """
    heard = trio.current_time()
    while count := sink.take(pacer.slice(SPLICE_SECONDS, sys.maxsize)):
        if trio.current_time() - heard > read_timeout:
            raise SourceFailed(f"upstream sent nothing for {read_timeout:g} s")
        fd, offset = sink.destination()
        # Duplicates: the event loop may close either original meanwhile.
        src = os.dup(sock.fileno())
        try:
            dst = os.dup(fd)
        except BaseException:
            os.close(src)
            raise
        try:
            moved = await trio.to_thread.run_sync(
                splice, src, dst, offset, count, read_timeout, SPLICE_SECONDS
            )
        finally:
            os.close(src)
            os.close(dst)
        sink.moved(count, moved)
        if moved:
            heard = trio.current_time()
            await pacer.pace(moved)  # uncapped: returns at once
