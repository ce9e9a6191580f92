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
