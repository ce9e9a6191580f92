"""The raw wire the tests read answers with (tests/helpers_wire.py): past a complete body it
reads on to the server's close, with no timed window, so that bytes a server sends past its
Content-Length land in ``Wire.body`` whenever they come before that close."""

from __future__ import annotations

from functools import partial

import trio
from helpers_wire import raw_request

#: An answer of five body bytes, and what a server with a framing bug sends after it.
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
PAST_THE_BODY = b"EXTRA"


async def answer_then_more_once_ended(stream: trio.SocketStream) -> None:
    """Answer a request with :data:`ANSWER`; once the client ended its side, send
    :data:`PAST_THE_BODY` (bytes past the Content-Length) and close."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    await stream.send_all(ANSWER)
    while await stream.receive_some(65536):
        pass
    await stream.send_all(PAST_THE_BODY)
    await stream.aclose()


async def test_bytes_past_the_body_are_read_up_to_the_servers_close() -> None:
    """Its extra bytes come only as the client ends its side: a helper that waited a while
    with the connection open (0.3 s, as it did) got ``hello`` and missed them."""
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, answer_then_more_once_ended, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        wire = await raw_request(f"http://127.0.0.1:{port}", "/")
        nursery.cancel_scope.cancel()
    # ``closed``: the server closed before the body was complete (here it was our end)
    assert (wire.status, wire.body, wire.closed) == (200, b"helloEXTRA", False)
