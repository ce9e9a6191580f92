"""A store that answers without end: boto3 reads every answer but an object's bytes whole
(a listing, an error, a write's answer) before it parses it, so a page of a gigabyte or an
endless chunked body from a misbehaving or compromised endpoint grew the tracker's memory
until the answer ended, and an answer trickled a byte at a time held its worker thread long
after the call's deadline gave up on it. Each answer is read up to
:data:`~tracker.clientwire.storewire.MAX_ANSWER` bytes and the call's deadline, then the
connection is dropped: a StoreError, the store marked down (docs/replicas.md). Real servers
on 127.0.0.1 that speak just enough HTTP stand in for the store."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading

import pytest
import trio
from helpers_sources import read_head, serve_raw

from tracker.clientwire.storewire import MAX_ANSWER, MAX_PAGE
from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore import bucket as bucket_module
from tracker.objectstore.botoclients import THREADS
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
    most = MAX_PAGE if operation == "LIST" else MAX_ANSWER  # a page costs its parse
    with trio.fail_after(10), pytest.raises(StoreError) as raised:
        await calls[operation]()
    assert str(raised.value) == f"{operation}: an answer over {most} bytes"
    assert not bucket.health.up
    with trio.fail_after(5):
        await done.wait()  # the tracker hung up instead of reading on
    assert sent[0] < most + 8 * MiB  # what the sockets' buffers hold
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


async def test_a_page_of_a_thousand_of_the_longest_keys_is_listed(nursery: trio.Nursery) -> None:
    # The bound on a listing's page (MAX_PAGE, tighter than MAX_ANSWER: a hostile page costs
    # its parse in the worker thread) leaves room for any page a real store sends of 1,000
    # entries: S3's keys are at most 1,024 bytes, and anyone who can write the prefix may
    # have put such keys there.
    entry = (
        b"<Contents><Key>p/%s</Key><LastModified>2026-11-28T00:00:00.000Z</LastModified>"
        b"<ETag>&quot;0123456789abcdef0123456789abcdef-10000&quot;</ETag>"
        b"<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT"
        b"</ChecksumType><Size>123456789012</Size><StorageClass>STANDARD_IA</StorageClass>"
        b"</Contents>"
    )
    entries = b"".join(entry % (b"%04d" % n + b"k" * 1018) for n in range(1000))
    page = LISTING_HEAD + b"</IsTruncated><KeyCount>1000</KeyCount>" + entries
    page += b"</ListBucketResult>"
    assert len(page) > 1.25 * MiB

    async def answer(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
            % len(page)
        )
        await stream.send_all(page)

    bucket = Bucket(store_at(await nursery.start(serve_raw, answer)))
    with trio.fail_after(20):
        listed = await bucket.list_objects("p/")
    assert len(listed) == 1000
    assert all(len(info.key) == 1024 for info in listed)


def trickled(head: bytes, done: trio.Event):
    """A raw server that sends ``head`` and then one byte every 20 ms for minutes (each
    far inside botocore's read timeout), until the peer hangs up; ``done`` set then."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await read_head(stream)
            await stream.send_all(head)
            for _ in range(30_000):
                await stream.send_all(b"a")
                await trio.sleep(0.02)
        finally:
            done.set()

    return handler


@pytest.mark.parametrize(
    ("operation", "head"),
    [
        # the header block never ends: http.client reads it a line at a time, each read
        # bounded by the read timeout alone
        pytest.param("HEAD", b"HTTP/1.1 200 OK\r\nX-Slow: ", id="head-HEAD"),
        pytest.param("LIST", b"HTTP/1.1 200 OK\r\nX-Slow: ", id="head-LIST"),
        # a small object's bytes, streamed and read in the thread (a digest, a side object)
        pytest.param("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", id="bytes-GET"),
        # the store's "Connection: close" (or HTTP/1.0, or a body framed by its end): the
        # connection is closed as the head is read, the response reading on its socket
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n",
            id="bytes-GET-close",
        ),
        pytest.param("GET", b"HTTP/1.0 200 OK\r\n\r\n", id="bytes-GET-unframed"),
        pytest.param(
            "LIST",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + LISTING_HEAD,
            id="page-LIST-close",
        ),
    ],
)
async def test_a_head_or_small_object_trickled_past_the_deadline_ends_its_thread(
    nursery: trio.Nursery, operation: str, head: bytes
) -> None:
    # trio gave up on the call at its deadline while its worker thread read on, a byte at a
    # time for as long as the store sent them: it kept one of the bucket's 16 threads, and a
    # store that trickled 16 answers left the bucket no thread at all, for good.
    done = trio.Event()
    store = store_at(await nursery.start(serve_raw, trickled(head, done)), request_timeout=0.5)
    calls = {
        "HEAD": lambda: Bucket(store).on_request_path().head("p/g/x"),
        "LIST": lambda: Bucket(store, deadline=0.5).list_objects("p/"),  # the tracker's own
        "GET": lambda: Bucket(store).on_request_path().get_small("p/g/x.sha256"),
    }
    with pytest.raises(StoreError, match=rf"{operation}: no answer within 0\.5s"):
        await calls[operation]()
    with trio.fail_after(5):
        await done.wait()  # its thread hung up at the call's deadline


async def test_trickling_answers_take_the_buckets_threads_only(nursery: trio.Nursery) -> None:
    # A store that trickles every answer costs the bucket's own threads (THREADS, its own
    # limiter), never trio's default ones the cache's disk I/O and the proofs run on; and
    # the threads of the calls given up are freed at their deadline, not when the store
    # stops trickling (until then no call of the bucket got a thread).
    done = trio.Event()
    base = await nursery.start(serve_raw, trickled(b"HTTP/1.1 200 OK\r\nX-Slow: ", done))
    bucket = Bucket(store_at(base, request_timeout=0.5)).on_request_path()
    threads = bucket.clients.limiter
    before = threading.active_count()
    most, failed = [before], [0]

    async def head(n: int) -> None:
        with pytest.raises(StoreError):
            await bucket.head(f"p/g/{n}")
        failed[0] += 1

    async def count_threads() -> None:
        while True:  # polling: a thread's start has nothing to wait on
            most[0] = max(most[0], threading.active_count())
            await trio.sleep(0.01)

    with trio.fail_after(10):
        async with trio.open_nursery() as calls:
            calls.start_soon(count_threads)
            for n in range(3 * THREADS):
                calls.start_soon(head, n)
            while threads.borrowed_tokens < THREADS:
                await trio.sleep(0.01)
            assert failed[0] == 0  # every thread of the bucket reads a trickle
            with trio.fail_after(0.4):  # trio's default threads are not theirs
                assert await trio.to_thread.run_sync(lambda: 42) == 42
            while failed[0] < 3 * THREADS:
                await trio.sleep(0.01)
            calls.cancel_scope.cancel()
    assert most[0] <= before + THREADS + 1
    with trio.fail_after(5):
        while threads.borrowed_tokens:  # every thread ended at its call's deadline
            await trio.sleep(0.01)


def socket_descriptors() -> dict[str, int]:
    """How many of this process's descriptors each open socket has (by its inode)."""
    import collections
    import os

    found: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found[target] += 1
    return dict(found)


async def test_a_pooled_connection_holds_one_descriptor_between_calls(
    nursery: trio.Nursery,
) -> None:
    # The twin a call shuts down when it is given up is the call's: a connection idle in
    # the pool costs one descriptor, as the start's split of the descriptor limit counts
    # the store's connections (tracker/zerocopy/limit.py), not two.
    answered = [0]

    async def keep_alive(stream: trio.SocketStream) -> None:
        while await read_head(stream):
            answered[0] += 1
            await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")

    bucket = Bucket(store_at(await nursery.start(serve_raw, keep_alive)))
    before = socket_descriptors()
    with trio.fail_after(10):
        await bucket.delete("p/g/x")
        await bucket.delete("p/g/y")  # the pooled connection again
    assert answered[0] == 2
    after = socket_descriptors()
    assert len(after) == len(before) + 2  # the pooled connection and the server's side
    assert sorted(count for key, count in after.items() if key not in before) == [1, 1]


#: The head and tail of a page of each listing that says there is more; ``%s`` its next
#: token or marker, new each page.
TRUNCATED = {
    "LIST": (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><IsTruncated>true'
        b"</IsTruncated><NextContinuationToken>t%d</NextContinuationToken>",
        b"</ListBucketResult>",
    ),
    "ListMultipartUploads": (
        b'<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><IsTruncated>true'
        b"</IsTruncated><NextKeyMarker>k%d</NextKeyMarker><NextUploadIdMarker>u"
        b"</NextUploadIdMarker>",
        b"</ListMultipartUploadsResult>",
    ),
}


def pages_of_nothing(operation: str, size: int, sent: list[int], pause: float = 0.0):
    """A raw server whose every page of ``operation``'s listing is ``size`` bytes of
    nothing (XML padding), says there is more and names a new next page, after ``pause``
    seconds; ``sent``: the bytes of pages sent, then the pages."""
    head, tail = TRUNCATED[operation]

    async def handler(stream: trio.SocketStream) -> None:
        while await read_head(stream):
            sent[1] += 1
            first = head % sent[1]
            padding = b"<!--" + b"x" * (size - len(first) - len(tail) - 7) + b"-->"
            page = first + padding + tail
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
                % len(page)
            )
            if pause:
                await trio.sleep(pause)  # the store's pace, each page within its deadline
            await stream.send_all(page)
            sent[0] += len(page)

    return handler


@pytest.mark.parametrize("operation", ["LIST", "ListMultipartUploads"])
async def test_a_listing_of_pages_of_nothing_ends_at_its_bytes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    # Each page was bounded (MAX_PAGE), the listing only by its pages (MAX_PAGES): a store
    # that sent 1,000 pages of 2 MiB that list nothing cost a listing 2 GB read and parsed
    # in one of the bucket's threads (minutes of it), at every start-up and retention. The
    # bound is 16 MiB here, not 200: the same reading, in a twelfth of the pages.
    bound = 16 * MiB
    monkeypatch.setattr(bucket_module, "LISTING_BYTES", bound)
    sent = [0, 0]
    base = await nursery.start(serve_raw, pages_of_nothing(operation, MAX_PAGE - 4096, sent))
    bucket = Bucket(store_at(base))
    listing = bucket.list_objects if operation == "LIST" else bucket.list_uploads
    with trio.fail_after(30), pytest.raises(StoreError) as raised:
        await listing("p/")
    why = "more than 16 MiB of pages"
    assert str(raised.value) == f"{operation}: a listing that does not end ({why})"
    assert not bucket.health.up
    assert bound < sent[0] <= bound + MAX_PAGE  # read to the bound, no further


@pytest.mark.parametrize("operation", ["LIST", "ListMultipartUploads"])
async def test_a_listing_of_slow_pages_ends_at_its_calls_deadline(
    nursery: trio.Nursery, operation: str
) -> None:
    # Each page had the call's deadline, the listing 1,000 of them: a store that answered
    # each page just inside it held the start-up, a retention or the learned documents'
    # sync in one listing for days (1,000 pages of 10 minutes).
    sent = [0, 0]
    base = await nursery.start(serve_raw, pages_of_nothing(operation, 1024, sent, pause=0.2))
    bucket = Bucket(store_at(base), deadline=1.0)  # the tracker's own calls, 1 s each
    listing = bucket.list_objects if operation == "LIST" else bucket.list_uploads
    with trio.fail_after(10), pytest.raises(StoreError) as raised:
        await listing("p/")
    why = "no end within 1s"
    assert str(raised.value) == f"{operation}: a listing that does not end ({why})"
    assert not bucket.health.up
    assert sent[1] <= 6  # 0.2 s a page: the listing gave up at 1 s in all
