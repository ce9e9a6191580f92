"""Reason phrases in the status lines h11 writes (tracker/h11patches/statusline.py), and the
bytes after a request that closes its connection dropped (tracker/h11patches/closing.py)."""

from __future__ import annotations

import h11
import h11._connection
import h11._readers
import pytest

from tracker.h11patches.statusline import install, reason_phrase


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(200, b"OK"), (206, b"Partial Content"), (303, b"See Other"), (502, b"Bad Gateway"),
     (599, b"")],
)  # fmt: skip
def test_reason_phrase(status: int, phrase: bytes) -> None:
    assert reason_phrase(status) == phrase


def head_of(response: h11.Response) -> bytes:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    head = conn.send(response)
    assert head is not None
    return head


def test_h11_writes_the_phrase_of_the_code_when_the_event_has_none() -> None:
    """Canary of assumption 11 (tracker/zerocopy/README.md): h11 looks its response writer
    up in ``h11._writers.WRITERS`` for every connection, and writes ``HTTP/1.1 {code} ``
    for an event without a reason (hypercorn's), which the installed writer completes."""
    install()
    redirect = h11.Response(status_code=303, headers=[("location", "/a"), ("content-length", "0")])
    assert head_of(redirect) == (
        b"HTTP/1.1 303 See Other\r\nlocation: /a\r\ncontent-length: 0\r\n\r\n"
    )
    odd = h11.Response(status_code=599, headers=[("content-length", "0")])
    assert head_of(odd).startswith(b"HTTP/1.1 599 \r\n")  # no phrase known: as h11 writes it
    own = h11.Response(status_code=200, headers=[("content-length", "0")], reason=b"Fine")
    assert head_of(own).startswith(b"HTTP/1.1 200 Fine\r\n")  # a given one is kept


def test_h11_reads_what_follows_a_closing_request_with_the_reader_of_its_table() -> None:
    """Canary of assumption 12 (tracker/zerocopy/README.md): h11 looks the reader of a
    client up in ``h11._readers.READERS`` by (role, state), the one its connections use
    (``h11._connection.READERS``), and reads a client in MUST_CLOSE with it: the installed
    one drops a stray line after an HTTP/1.0 request (h11's own raised), and the end of
    the connection still comes as ConnectionClosed."""
    from tracker.h11patches.closing import install as drop_bytes_after_the_last_request

    assert h11._connection.READERS is h11._readers.READERS
    drop_bytes_after_the_last_request()
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.0\r\n\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    assert isinstance(server.next_event(), h11.EndOfMessage)
    assert server.their_state is h11.MUST_CLOSE
    assert server.next_event() is h11.NEED_DATA  # the stray line, dropped
    server.receive_data(b"")
    assert isinstance(server.next_event(), h11.ConnectionClosed)
