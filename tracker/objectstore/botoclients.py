"""The boto3 clients of a bucket: signing (SigV4), timeouts and retries, the worker threads
they share, and the bound on what the store answers (each client's answers read whole within
:data:`~tracker.clientwire.storewire.MAX_ANSWER` bytes and its call's deadline:
:func:`~tracker.clientwire.storewire.bound_answers`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import boto3
import trio
from botocore.config import Config as BotoConfig

from tracker.clientwire.storewire import bound_answers
from tracker.config.schema import ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Worker threads per bucket (the client's connection pool has as many connections).
THREADS = 16
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


def make_client(
    store: ObjectStore, endpoint: str, *, deadline: float, timeout: float | None = None
) -> S3Client:
    """A boto3 S3 client for ``endpoint`` ("" = AWS) with ``store``'s credentials and style,
    each answer it reads whole read within ``deadline`` seconds of its request; with
    ``timeout``, one attempt per call with that connect and read timeout, and that deadline."""
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
    bound_answers(client, deadline if timeout is None else timeout)
    return client


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
    def of(cls, store: ObjectStore, deadline: float) -> BucketClients:
        """The clients of ``store``'s bucket, ``deadline`` the seconds one of the tracker's
        own calls may take in all."""
        calls = make_client(store, store.endpoint, deadline=deadline)
        quick = make_client(store, store.endpoint, deadline=deadline, timeout=store.request_timeout)
        public = store.public_endpoint
        signer = make_client(store, public, deadline=deadline) if public else calls
        return cls(calls, quick, signer, trio.CapacityLimiter(THREADS))
