"""A store that answers without end: boto3 reads every answer but an object's bytes whole
(a listing, an error, a write's answer) before it parses it, so a page of a gigabyte or an
endless chunked body from a misbehaving or compromised endpoint grew the tracker's memory
until the answer ended, and an answer trickled a byte at a time held its worker thread long
after the call's deadline gave up on it. Each answer is read up to
:data:`~tracker.clientwire.storewire.MAX_ANSWER` bytes and the call's deadline, then the
connection is dropped: a StoreError, the store marked down (docs/replicas.md). Real servers
on 127.0.0.1 that speak just enough HTTP stand in for the store."""

from __future__ import annotations

import itertools
import socket
import struct

import pytest
import trio
from helpers_sources import read_head, serve_raw

from tracker.clientwire.storewire import MAX_ANSWER
from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore.bucket import Bucket

MiB = 1024 * 1024
#: What a server below sends at most: a tracker that reads answers whole fails the test, not
#: the machine.
SENT_AT_MOST = 64 * MiB
#: XML that parses as far as it goes (a comment expat skips), and never ends.
PADDING = b"<!--" + b"x" * 65536 + b"-->"
LISTING_HEAD = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><IsTruncated>false'


def store_at(base: str, **settings: float) -> ObjectStore:
    return ObjectStore(
        endpoint=base, bucket="b", access_key_id="k", secret_access_key="s", **settings
    )


def endless(status: bytes, framing: bytes, sent: list[int], done: trio.Event):
    """A raw server answering ``status`` and then XML padding until the peer hangs up (or
    :data:`SENT_AT_MOST`): ``framing`` is ``chunked`` or a Content-Length of a gigabyte.
    ``sent``: the bytes of body sent, then the requests answered."""
    chunked = framing == b"chunked"
    header = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % 2**30
    head = b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\n%s\r\n\r\n" % (status, header)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await read_head(stream)
            sent[1] += 1
            await stream.send_all(head)
            for data in itertools.chain([LISTING_HEAD], itertools.repeat(PADDING)):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent[0] += len(data)
                if sent[0] > SENT_AT_MOST:
                    break
        finally:
            done.set()

    return handler


@pytest.mark.parametrize("framing", [b"chunked", b"length"])
@pytest.mark.parametrize(
    ("status", "operation"),
    [
        (b"200 OK", "LIST"),  # a listing's page
        (b"503 Slow Down", "PUT"),  # an error's body
        (b"500 Internal Server Error", "GET"),  # an error's body where bytes are streamed
    ],
)
async def test_an_endless_answer_costs_that_answer_only(
    nursery: trio.Nursery, status: bytes, operation: str, framing: bytes
) -> None:
    sent, done = [0, 0], trio.Event()
    bucket = Bucket(store_at(await nursery.start(serve_raw, endless(status, framing, sent, done))))
    calls = {
        "LIST": lambda: bucket.list_objects("p/"),
        "PUT": lambda: bucket.put("p/g/x", b"x"),
        "GET": lambda: bucket.get_small("p/g/x.sha256"),
    }
    with trio.fail_after(10), pytest.raises(StoreError) as raised:
        await calls[operation]()
    assert str(raised.value) == f"{operation}: an answer over {MAX_ANSWER} bytes"
    assert not bucket.health.up
    with trio.fail_after(5):
        await done.wait()  # the tracker hung up instead of reading on
    assert sent[0] < MAX_ANSWER + 8 * MiB  # what the sockets' buffers hold
    assert sent[1] == 1  # no second attempt read another


async def test_an_answer_trickled_past_the_calls_deadline_ends_its_thread(
    nursery: trio.Nursery,
) -> None:
    # The call gave up after its deadline (trio's side) while its worker thread read on, a
    # byte at a time for as long as the store sent them, holding one of the bucket's threads:
    # enough such calls and no call of the bucket got a thread again.
    done = trio.Event()

    async def trickle(stream: trio.SocketStream) -> None:
        try:
            await read_head(stream)
            await stream.send_all(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(100_000):
                await stream.send_all(b" ")
                await trio.sleep(0.02)
        finally:
            done.set()

    base = await nursery.start(serve_raw, trickle)
    quick = Bucket(store_at(base, request_timeout=0.5)).on_request_path()
    with pytest.raises(StoreError, match=r"PUT: no answer within 0\.5s"):
        await quick.put("p/.locks/g/x.lock", b"x", if_none_match=True)
    with trio.fail_after(5):
        await done.wait()  # its thread hung up at the call's deadline


@pytest.mark.parametrize("framing", [b"chunked", b"length"])
async def test_an_answer_cut_off_mid_body_is_asked_again_as_before(
    nursery: trio.Nursery, framing: bytes
) -> None:
    # botocore maps urllib3's errors while it reads an answer whole (a connection reset, a
    # chunked body cut short) to its own, and retries them once (a transient error): the
    # bounded read must keep that, or a listing cut off once failed the start-up's listing
    # or a retention where it worked before.
    page = LISTING_HEAD + b"</IsTruncated></ListBucketResult>"
    asked = [0]

    async def cut_once(stream: trio.SocketStream) -> None:
        await read_head(stream)
        asked[0] += 1
        chunked = framing == b"chunked"
        header = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(page)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n%s\r\n\r\n" % header
        )
        if asked[0] == 1:  # half of it, then the connection reset
            body = page[: len(page) // 2]
            await stream.send_all(b"%x\r\n%s" % (len(page), body) if chunked else body)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            return
        await stream.send_all(b"%x\r\n%s\r\n0\r\n\r\n" % (len(page), page) if chunked else page)
        await stream.aclose()

    bucket = Bucket(store_at(await nursery.start(serve_raw, cut_once)))
    with trio.fail_after(10):
        assert await bucket.list_objects("p/") == []
    assert asked[0] == 2
    assert bucket.health.up
