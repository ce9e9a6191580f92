"""The object store's wire, below botocore's public API: every answer botocore reads whole
before it parses it (a listing's page, an error's body, a write's answer; all but an object's
bytes) is read at most :data:`MAX_ANSWER` bytes and only until its call's deadline, then its
connection dropped and a StoreError raised, never retried. botocore has no bound of its own:
a page of a gigabyte or an endless chunked body from a misbehaving or compromised endpoint
grew the tracker's memory for as long as it was sent, and its worker thread read on past the
call's deadline (docs/architecture.md, "Threat model"). tracker/zerocopy/README.md lists the
assumptions this makes of botocore and urllib3 and their canary tests.
"""

from __future__ import annotations

import time
from typing import Any, cast

from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.exceptions import ConnectionClosedError, HTTPClientError, ReadTimeoutError, SSLError
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError
from urllib3.exceptions import SSLError as URLLib3SSLError

from tracker.errors import StoreError

#: The most bytes of one answer read whole (a listing's page, an error, a write's answer; an
#: object's bytes are streamed to callers that bound each read). A page of 1,000 keys of
#: S3's longest (1,024 bytes) is under 1.5 MiB, 3.5 MiB were every byte of each escaped;
#: 4 MiB of XML parses into about 90 MiB at most, in the call's worker thread.
MAX_ANSWER = 4 * 1024 * 1024
#: Bytes asked of the socket at once while an answer is read: whatever has come is taken
#: (``read1``), so that a trickled answer is seen to pass its deadline.
_READ_SIZE = 65536


def bound_answers(client: object, seconds: float) -> None:
    """Make the boto3 client ``client`` read each answer it reads whole within
    :data:`MAX_ANSWER` bytes and ``seconds`` from its request's sending. botocore offers no
    public way to its HTTP session (its Config has no bound on answers): the endpoint's own,
    built with the client's proxies, CA bundle and pool, is wrapped in place."""
    transport = cast(Any, client)._endpoint
    transport.http_session = BoundedSession(transport.http_session, seconds)


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
            try:
                bounded.read_whole()
            except StoreError:
                raise  # past the bound: never asked again
            except Exception as exc:
                raise transport_error(request, exc) from exc
        return bounded

    def close(self) -> None:
        """Close the connections of the session (the client's endpoint closes)."""
        self._inner.close()


def transport_error(request: AWSRequest | AWSPreparedRequest, exc: Exception) -> Exception:
    """The botocore error ``URLLib3Session.send`` makes of urllib3's ``exc`` raised while an
    answer was read whole: botocore read it inside ``send``, and retries these as transient
    (``retries`` of tracker/objectstore/botoclients.py: a connection reset in a listing's
    page is asked again once). Read here, outside it, urllib3's own errors were not retried:
    a store error at the first reset. Pure."""
    url = request.url or ""
    if isinstance(exc, URLLib3ReadTimeoutError):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, URLLib3SSLError):
        return SSLError(endpoint_url=url, error=exc)
    if isinstance(exc, ProtocolError):
        return ConnectionClosedError(error=exc, request=request, endpoint_url=url)
    return HTTPClientError(error=exc)


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
