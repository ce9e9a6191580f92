"""The boto3 clients of a bucket: signing (SigV4), timeouts and retries, the worker threads
they share, and the bound on what the store answers.

botocore reads every answer but an object's bytes whole before it parses it (a listing's
page, an error's body, a write's answer), with no bound of its own: a page of a gigabyte or
an endless chunked body from a misbehaving or compromised endpoint grew the tracker's memory
for as long as it was sent, and its worker thread read on past the call's deadline, a byte at
a time for as long as the store sent them (docs/architecture.md, "Threat model"). Each
client's HTTP session reads such an answer up to :data:`MAX_ANSWER` bytes and only until the
call's deadline, then drops the connection: a StoreError, never retried.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import attrs
import boto3
import trio
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.config import Config as BotoConfig
from botocore.httpsession import URLLib3Session

from tracker.config.schema import ObjectStore
from tracker.errors import StoreError
from tracker.objectstore.bucket import CALL_DEADLINE

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Worker threads per bucket (the client's connection pool has as many connections).
THREADS = 16
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
#: The most bytes of one answer read whole (a listing's page, an error, a write's answer; an
#: object's bytes are streamed to callers that bound each read). A page of 1,000 keys of
#: S3's longest (1,024 bytes) is under 1.5 MiB, 3.5 MiB were every byte of each escaped;
#: 4 MiB of XML parses into about 90 MiB at most, in the call's worker thread.
MAX_ANSWER = 4 * 1024 * 1024
#: Bytes asked of the socket at once while an answer is read: whatever has come is taken
#: (``read1``), so that a trickled answer is seen to pass its deadline.
_READ_SIZE = 65536


def make_client(store: ObjectStore, endpoint: str, *, timeout: float | None = None) -> S3Client:
    """A boto3 S3 client for ``endpoint`` ("" = AWS) with ``store``'s credentials and style;
    with ``timeout``, one attempt per call with that connect and read timeout."""
    config = BotoConfig(
        signature_version="s3v4",
        s3={"addressing_style": "virtual" if store.addressing_style == "virtual" else "path"},
        connect_timeout=CONNECT_TIMEOUT if timeout is None else timeout,
        read_timeout=READ_TIMEOUT if timeout is None else timeout,
        retries={"max_attempts": 2 if timeout is None else 1, "mode": "standard"},
        max_pool_connections=THREADS,
        # boto3 >= 1.36 adds CRC checksums to uploads; not every S3 server checks them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=store.region or None,
        config=config,
        # None: boto3's default chain (environment, shared files, instance roles).
        aws_access_key_id=store.resolved_access_key_id or None,
        aws_secret_access_key=store.resolved_secret_access_key or None,
    )
    # botocore offers no public way to its HTTP session (its Config has no bound on
    # answers): the endpoint's own, built with the proxies, CA bundle and pool above, is
    # wrapped in place
    transport = cast(Any, client)._endpoint
    seconds = CALL_DEADLINE if timeout is None else timeout
    transport.http_session = BoundedSession(transport.http_session, seconds)
    return client


class BoundedSession:
    """botocore's HTTP session (``inner``) whose answers are read whole at most
    :data:`MAX_ANSWER` bytes and ``seconds`` after the request was sent
    (:class:`BoundedAnswer`); an object's bytes stay a stream."""

    def __init__(self, inner: URLLib3Session, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def send(self, request: AWSRequest | AWSPreparedRequest) -> AWSResponse:
        """Send ``request``; its answer, read whole as botocore would but bounded (a
        StoreError past the bound), unless the operation streams it (an object's bytes)."""
        sent = time.monotonic()
        whole = not request.stream_output
        request.stream_output = True  # botocore would read it whole in there, unbounded
        try:
            answer = self._inner.send(request)
        finally:
            request.stream_output = not whole
        bounded = BoundedAnswer(answer, sent, self._seconds)
        if whole:
            bounded.read_whole()
        return bounded

    def close(self) -> None:
        """Close the connections of the session (the client's endpoint closes)."""
        self._inner.close()


class BoundedAnswer(AWSResponse):
    """An answer of the store whose body, when it is read whole (any answer of an operation
    that does not stream its bytes, and an error of one that does), is read at most
    :data:`MAX_ANSWER` bytes and for ``seconds`` from its request's sending (``sent``,
    ``time.monotonic()``); past either the connection is closed and StoreError raised."""

    def __init__(self, answer: AWSResponse, sent: float, seconds: float) -> None:
        super().__init__(answer.url, answer.status_code, answer.raw.headers, answer.raw)
        self._sent = sent
        self._seconds = seconds
        self._whole: bytes | None = None

    @property
    def content(self) -> bytes:
        """The answer's body, read whole (once) within the bounds."""
        return self.read_whole()

    def read_whole(self) -> bytes:
        """Read the body (once): StoreError past :data:`MAX_ANSWER` bytes or the deadline."""
        if self._whole is None:
            self._whole = _read_bounded(self.raw, self._sent, self._seconds)
        return self._whole


def _read_bounded(raw: Any, sent: float, seconds: float) -> bytes:
    """The body of urllib3's answer ``raw``, at most :data:`MAX_ANSWER` bytes, read until
    ``seconds`` after ``sent`` (``time.monotonic()``); the connection closed and StoreError
    past either."""
    parts: list[bytes] = []
    size = 0
    try:
        while chunk := raw.read1(_READ_SIZE):
            size += len(chunk)
            if size > MAX_ANSWER:
                raise StoreError(f"an answer over {MAX_ANSWER} bytes")
            if time.monotonic() - sent > seconds:
                raise StoreError(f"an answer still coming after {seconds:g}s")
            parts.append(chunk)
    except BaseException:
        raw.close()  # the rest unread: the connection is not used again
        raise
    return b"".join(parts)


@attrs.frozen
class BucketClients:
    """The boto3 clients of one bucket and the worker threads they share: ``calls`` for the
    tracker's own calls, ``quick`` (one attempt, ``request_timeout``) for those a client's
    request waits for, ``signer`` for presigned URLs (the public endpoint's, when set)."""

    calls: S3Client
    quick: S3Client
    signer: S3Client
    limiter: trio.CapacityLimiter

    @classmethod
    def of(cls, store: ObjectStore) -> BucketClients:
        """The clients of ``store``'s bucket."""
        calls = make_client(store, store.endpoint)
        quick = make_client(store, store.endpoint, timeout=store.request_timeout)
        public = store.public_endpoint
        signer = make_client(store, public) if public else calls
        return cls(calls, quick, signer, trio.CapacityLimiter(THREADS))
