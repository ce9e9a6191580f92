"""The zero-copy mechanism's pieces without a socket: placeholders that cost no resident memory,
piece sizes, and the canary of h11 writing the framing headers it adds in lower case (downloads
over real sockets: tests/integration/test_zerocopy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.zerocopy.connection import (
    LARGEST_PIECE,
    LARGEST_SOCKET_PIECE,
    SMALLEST_PIECE,
    Connections,
    FilePiece,
    piece_size,
)

MiB = 1024 * 1024


def resident_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_placeholders_cost_no_resident_memory() -> None:
    """The placeholders of every piece size (255 MiB together) are zero pages never touched:
    address space, not memory. A Python that filled them would cost every tracker 255 MiB."""
    before = resident_kib()
    connections = Connections()
    assert sum(len(p) for p in connections.placeholders.values()) > 200 * MiB
    assert resident_kib() - before < 16 * 1024


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
    """Canary of assumption 8 (tracker/zerocopy/headers.py): h11's connection module looks
    ``set_comma_header`` up at call time, and the installed wrapper makes the headers h11
    adds itself (``connection: close``, ``transfer-encoding: chunked``) lower case."""
    import h11

    from tracker.zerocopy.headers import install

    install()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request_line + b"\r\nHost: x\r\n" + extra + b"\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    head = conn.send(h11.Response(status_code=200, headers=[("content-type", "text/plain")]))
    assert head is not None
    lines = head.split(b"\r\n")[1:]
    assert added in lines, head
    assert all(line == line.lower() for line in lines), head
