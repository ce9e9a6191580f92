"""The zero-copy mechanism's pieces without a socket: placeholders that cost no resident memory,
piece sizes, the canary of h11 writing the framing headers it adds in lower case, and how a
spliced relay counts its client's stalls (downloads over real sockets:
tests/integration/test_zerocopy.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from tracker.zerocopy.connection import (
    LARGEST_PIECE,
    LARGEST_SOCKET_PIECE,
    SMALLEST_PIECE,
    Connections,
    FilePiece,
    piece_size,
)
from tracker.zerocopy.kernelcopy import ClientTook, SocketSplice, untaken
from tracker.zerocopy.pieces import SocketPiece

MiB = 1024 * 1024


#: Run in a fresh interpreter, as the tracker builds them at its start: the placeholders'
#: own resident bytes, each found with ``mincore(2)`` on the pages its buffer spans (where a
#: ``bytes`` object's data starts: CPython's ``ob_sval``, ``__basicsize__ - 1`` past it).
MEASURE = """
import ctypes, json, os
from tracker.zerocopy.connection import Connections

PAGE = os.sysconf("SC_PAGE_SIZE")
mincore = ctypes.CDLL(None, use_errno=True).mincore
mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
mincore.restype = ctypes.c_int

def resident(data):
    start = id(data) + bytes.__basicsize__ - 1
    first = start - start % PAGE
    pages = (start + len(data) - first + PAGE - 1) // PAGE
    vector = (ctypes.c_ubyte * pages)()
    if mincore(first, pages * PAGE, vector) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vector) * PAGE

found = Connections().placeholders.values()
print(json.dumps([[len(p), resident(p)] for p in found]))
"""


def test_placeholders_cost_no_resident_memory() -> None:
    """The placeholders of every piece size (255 MiB together) are zero pages never touched:
    address space, not memory. A Python that filled them would cost every tracker 255 MiB.

    Measured on the placeholders' own pages (not the process's RSS, which other threads
    and allocations move meanwhile), in a fresh interpreter: in a process that already
    freed big buffers, glibc may serve even a large ``calloc`` from its heap and clear it.
    """
    done = subprocess.run(
        [sys.executable, "-c", MEASURE], capture_output=True, check=True, timeout=60
    )
    sizes = json.loads(done.stdout)
    assert sum(size for size, _resident in sizes) > 200 * MiB
    # The two smallest come from the heap (below glibc's mmap threshold) and may be
    # touched: 192 KiB; each larger one is a mapping of its own, its header page resident.
    assert sum(resident for _size, resident in sizes) < MiB


def test_piece_sizes() -> None:
    assert piece_size(SMALLEST_PIECE - 1) == 0
    assert piece_size(SMALLEST_PIECE) == SMALLEST_PIECE
    assert piece_size(3 * MiB - 1) == 2 * MiB
    assert piece_size(100 * LARGEST_PIECE) == LARGEST_PIECE == 128 * MiB
    assert piece_size(100 * LARGEST_PIECE, LARGEST_SOCKET_PIECE) == 64 * MiB
    connection = Connections().open((("127.0.0.1", 1), ("127.0.0.1", 2)))
    with pytest.raises(ValueError, match="not a piece size"):
        connection.stage(FilePiece(3 * MiB))


@pytest.mark.parametrize(
    ("request_line", "extra", "added"),
    [
        (b"GET / HTTP/1.0", b"", b"connection: close"),
        (b"GET / HTTP/1.1", b"Connection: close\r\n", b"connection: close"),
        (b"GET / HTTP/1.1", b"", b"transfer-encoding: chunked"),
    ],
)
def test_h11_writes_the_framing_headers_it_adds_in_lower_case(
    request_line: bytes, extra: bytes, added: bytes
) -> None:
    """Canary of assumption 8 (tracker/h11patches/headers.py): h11's connection module looks
    ``set_comma_header`` up at call time, and the installed wrapper makes the headers h11
    adds itself (``connection: close``, ``transfer-encoding: chunked``) lower case."""
    import h11

    from tracker.h11patches.headers import install

    install()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request_line + b"\r\nHost: x\r\n" + extra + b"\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    head = conn.send(h11.Response(status_code=200, headers=[("content-type", "text/plain")]))
    assert head is not None
    lines = head.split(b"\r\n")[1:]
    assert added in lines, head
    assert all(line == line.lower() for line in lines), head


async def test_an_upstream_closed_between_two_waits_fails_its_piece() -> None:
    """The shutdown grace ended and the tracker cut a spliced relay's upstream while its
    piece sat between two waits: the wait was given descriptor -1 and trio raised
    ValueError, a traceback in the server's log ("Error in ASGI Framework") instead of the
    relay's one line. The piece fails as for any closed source."""
    from tracker.errors import SourceFailed
    from tracker.zerocopy.kernelcopy import SocketSplice
    from tracker.zerocopy.pieces import SocketPiece

    upstream, other = trio.socket.socketpair()
    upstream.close()
    other.close()
    piece = SocketPiece(count=10, sock=upstream, splice=SocketSplice(10))
    with pytest.raises(SourceFailed, match="upstream connection closed"):
        await piece.wait_source()


@pytest.mark.parametrize(
    ("waits", "stalled"),
    [
        # each wait for room in the client's socket: (bytes the client had taken when it
        # began, began, ended)
        ([(0, 0.0, 1.0)], 1.0),
        ([(0, 0.0, 1.0), (0, 1.0, 3.0)], 3.0),  # nothing taken between: one span
        ([(0, 0.0, 1.0), (0, 1.2, 3.0)], 3.0),  # ... the moment between included
        ([(0, 0.0, 1.0), (100, 1.5, 2.0)], 1.0),  # bytes taken between: two spans
        # a slow reader: many short waits, bytes taken between each
        ([(0, 0.0, 0.1), (100, 0.2, 0.3), (200, 0.4, 0.5), (300, 0.6, 0.7)], 0.1),
        ([(0, 0.0, 0.1), (100, 0.2, 0.3), (100, 0.3, 6.3), (300, 6.4, 6.5)], 6.1),
    ],
)
def test_a_splice_counts_the_longest_span_its_client_took_no_byte(
    waits: list[tuple[int, float, float]], stalled: float
) -> None:
    """A stalled client, not a slow one (docs/ranking.md, "Failed transfers"): the longest
    span of waits with no byte taken between them, told from the waits' own times."""
    splice = SocketSplice(1000)
    try:
        for sent, began, ended in waits:
            splice.sent = sent
            splice.client_wait(began, ended)
        assert splice.client_stalled == pytest.approx(stalled)
        assert splice.client_waited == pytest.approx(sum(e - b for _, b, e in waits))
    finally:
        splice.close()


@pytest.mark.parametrize(
    ("since", "ended", "took", "expected"),
    [
        # the client never seen taking bytes: the whole span since its first wait
        (0.0, 6.0, None, (6.0, 0.0)),
        # a steady slow client whose socket had room again only after 6 s: seen taking
        # bytes every second, it never went a second without
        (0.0, 6.0, ClientTook(1.0, 6.0, 1.0), (1.0, 6.0)),
        # took bytes at 1 s, then nothing until 8 s, when room came back: a 7 s stall
        (0.0, 8.0, ClientTook(1.0, 8.0, 7.0), (7.0, 8.0)),
        # seen taking bytes last at 2 s, the wait cancelled at 9 s: a stall of 7 s at the end
        (0.0, 9.0, ClientTook(0.5, 2.0, 1.5), (7.0, 2.0)),
        # the span began in the worker thread, before the event loop's wait: 3 s to the first
        (-3.0, 4.0, ClientTook(0.0, 4.0, 1.0), (3.0, 4.0)),
    ],
)
def test_a_wait_for_room_restarts_its_stall_span_whenever_the_client_took_bytes(
    since: float, ended: float, took: ClientTook | None, expected: tuple[float, float]
) -> None:
    """The longest span with no byte taken in a wait for room in the client's socket, told
    from the moments its acknowledgements were seen to move (docs/ranking.md, "Failed
    transfers"): a client that reads steadily is not stalled however long its socket had
    no room."""
    assert untaken(since, ended, took) == pytest.approx(expected)


def test_a_splice_told_its_client_took_bytes_during_a_long_wait_is_not_stalled() -> None:
    """A socket piece's event-loop wait of 6 s in which its client was seen taking bytes
    every second (no TCP_NOTSENT_LOWAT: room comes back only once a third of the queue
    went) is no stall; the span goes on from the last of those moments."""
    splice = SocketSplice(1000)
    try:
        piece = SocketPiece(count=1000, splice=splice)
        splice.client_wait(0.0, 0.05)  # the thread lingered, then handed over
        took = ClientTook(1.0, 1.0)
        for moment in (2.0, 3.0, 4.0, 5.0, 6.0):
            took = took.then(moment)
        piece.client_wait(0.05, 6.0, took)  # room came back at 6 s, the client reading on
        assert piece.stalled_client() == pytest.approx(1.0)
        splice.client_wait(6.0, 6.05)  # the thread again, nothing put on the socket yet
        assert piece.stalled_client() == pytest.approx(1.0)
        assert piece.waited_for_client() == pytest.approx(6.05)
    finally:
        splice.close()


def test_a_stall_runs_across_the_worker_threads_waits_and_the_event_loops() -> None:
    """A socket piece's waits in the event loop (between two calls of the worker thread)
    and in the thread make one span while the client takes no byte."""
    splice = SocketSplice(1000)
    try:
        piece = SocketPiece(count=1000, splice=splice)
        splice.client_wait(0.0, 0.05)  # the thread lingered, then handed over
        piece.client_wait(0.05, 4.0)  # the event loop waited for room
        splice.client_wait(4.0, 4.05)  # the thread again: still nothing taken
        assert piece.stalled_client() == pytest.approx(4.05)
        assert piece.waited_for_client() == pytest.approx(4.05)
    finally:
        splice.close()
