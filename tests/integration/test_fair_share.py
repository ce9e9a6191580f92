"""One machine cannot lock the others out of the public listener: at the connection limit and
at the download limit, the client (an address; an IPv6 one as its /64) holding the most gives
one up to a client holding at least two fewer (docs/http-api.md, "Connections").

The tracker's own components on 127.0.0.1 (a local archive, sent with sendfile); the clients
are sockets bound to other loopback addresses, 127.0.0.2 and 127.0.0.3, two machines to the
tracker. The choice on its own: tests/unit/test_exhaustion_unit.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import trio
from helpers_proxy import proxy_tracker
from helpers_tls import client_tls
from test_download_slots import DATA, NAME, local_archive

#: The machine that takes everything, and another one.
HOG, OTHER = "127.0.0.2", "127.0.0.3"
#: Download slots, or connections, of the tracker under test.
LIMIT = 4


async def stalled_from(address: str, base: str) -> trio.SocketStream:
    """A client at ``address`` that asks ``base`` for NAME, takes the head and then nothing,
    through a receive buffer of a few KiB: its download stays in progress."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.bind((address, 0))
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET /{NAME} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
    assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 200")
    return stream


def client_at(address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    transport = httpx.AsyncHTTPTransport(local_address=address, verify=client_tls())
    return httpx.AsyncClient(transport=transport, timeout=10, trust_env=False)


async def answer_from(address: str, base: str) -> bytes:
    """What a new connection from ``address`` asking ``base`` for ``/v1/snapshots`` gets
    before the tracker closes it (b"": closed unanswered)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect((host, int(port)))
    received = b""
    with trio.fail_after(10):
        async with trio.SocketStream(sock) as stream:
            try:
                await stream.send_all(b"GET /v1/snapshots HTTP/1.1\r\nhost: t\r\n\r\n")
                while chunk := await stream.receive_some(65536):
                    received += chunk
                    if received.endswith(b"]"):  # the listing's end: answered
                        break
            except trio.BrokenResourceError:  # closed with the request unread: a reset
                pass
    return received


async def test_a_machine_holding_every_download_slot_gives_one_to_another(
    tmp_path: Path,
) -> None:
    """Every slot held by one machine's clients, none stalled long enough to be reclaimed (a
    slow reader): another machine's download got 503 for as long as they kept reading. Now
    one of the first machine's slots goes to it, and that machine's own next download is
    still refused: the two never take turns."""
    async with proxy_tracker(index=local_archive(tmp_path)) as t:
        slots = t.parts.delivery.slots
        slots.limit, slots.reclaim_after = LIMIT, 3600.0  # no client counts as stalled
        hog = [await stalled_from(HOG, t.base) for _ in range(LIMIT)]
        try:
            async with client_at(HOG) as hog_client, client_at(OTHER) as other:
                again = await hog_client.get(f"{t.base}/{NAME}")
                answer = await other.get(f"{t.base}/{NAME}")
        finally:
            for stream in hog:
                await stream.aclose()
    assert (again.status_code, again.text) == (
        503,
        f"too many downloads at once ({LIMIT}), try again\n",
    )
    assert answer.status_code == 200
    assert answer.content == DATA
    assert (slots.shared, slots.reclaimed) == (1, 0)


async def test_a_machine_holding_every_connection_gives_one_to_another(tmp_path: Path) -> None:
    """Every connection of the listener busy with one machine's downloads that take nothing:
    another machine's connection was closed unanswered, the API too, until those downloads
    hit the stall timeout (5 minutes; reconnected at once, for ever). Now the first
    machine's least recently active connection makes room, and its own next one is still
    refused."""
    async with proxy_tracker(index=local_archive(tmp_path), max_connections=LIMIT) as t:
        hog = [await stalled_from(HOG, t.base) for _ in range(LIMIT)]
        try:
            refused = await answer_from(HOG, t.base)
            answered = await answer_from(OTHER, t.base)
        finally:
            for stream in hog:
                await stream.aclose()
    assert refused == b""
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n"), answered[:200]


async def downloaded(stream: trio.SocketStream) -> int:
    """How many bytes of NAME's body the download on ``stream`` (its first KiB read by
    :func:`stalled_from`) still gets before it ends: len(DATA), or fewer when the tracker
    ended the connection under it."""
    received = 0
    with trio.fail_after(10):
        try:
            while received < len(DATA) and (chunk := await stream.receive_some(1 << 20)):
                received += len(chunk)
        except trio.BrokenResourceError:  # ended with a reset
            pass
    return received


async def test_a_silent_connection_of_another_machine_ends_no_download(tmp_path: Path) -> None:
    """Every connection busy with one machine's downloads (an aria2c -x4 reading slowly); a
    scanner from another address connects and sends nothing. Its connection took the place
    of one of those downloads at once, ended under the client, and the scanner never asked
    for anything. Now it waits, over the limit, for a request: only a request takes a busy
    connection's place."""
    async with proxy_tracker(index=local_archive(tmp_path), max_connections=LIMIT) as t:
        hog = [await stalled_from(HOG, t.base) for _ in range(LIMIT)]
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        scanner = trio.socket.socket()
        await scanner.bind((OTHER, 0))
        await scanner.connect((host, int(port)))
        try:
            # accepted after the scanner's (one accept queue): the machine holding every
            # connection is refused one more, so the scanner's has been weighed by then
            barrier = await answer_from(HOG, t.base)
            got = [await downloaded(stream) for stream in hog]
        finally:
            scanner.close()
            for stream in hog:
                await stream.aclose()
    # the first KiB of each answer was read with its head
    assert all(n > len(DATA) - 1024 for n in got), got
    assert barrier == b""


#: A third machine, one that connects and asks nothing (a scanner, or a client that means
#: harm), over and over.
SCANNER = "127.0.0.4"


async def silent_from(address: str, base: str) -> trio.SocketStream:
    """A connection from ``address`` to ``base`` that has asked nothing (yet)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect((host, int(port)))
    return trio.SocketStream(sock)


async def test_a_machine_that_keeps_connecting_silently_locks_no_newcomer_out(
    tmp_path: Path,
) -> None:
    """Every connection busy with one machine's downloads. A newcomer of another machine
    waits over the limit for its first request; a third machine connects again and again,
    asking nothing. Each of its connections took the waiting one's place: the newcomer was
    closed before its request was read, and one address churning silent connections locked
    every other machine out of a full listener. Now each machine's newest waits, beside
    the others' (a few at once): the silent machine replaces only its own."""
    async with proxy_tracker(index=local_archive(tmp_path), max_connections=LIMIT) as t:
        hog = [await stalled_from(HOG, t.base) for _ in range(LIMIT)]
        silent = [await silent_from(SCANNER, t.base)]
        newcomer = await silent_from(OTHER, t.base)
        silent += [await silent_from(SCANNER, t.base) for _ in range(3)]
        try:
            # accepted after them (one accept queue), and refused: they were weighed
            assert await answer_from(HOG, t.base) == b""
            await newcomer.send_all(b"GET /v1/snapshots HTTP/1.1\r\nhost: t\r\n\r\n")
            answered = b""
            with trio.fail_after(10):
                try:
                    while not answered.endswith(b"]") and (
                        chunk := await newcomer.receive_some(65536)
                    ):
                        answered += chunk
                except trio.BrokenResourceError:  # closed with the request unread
                    pass
        finally:
            for stream in [*hog, *silent, newcomer]:
                await stream.aclose()
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n"), answered[:200]
