"""The bucket of the object-store tier: every call the tracker makes to the store.

boto3 does the signing (SigV4) and the multipart protocol; it is synchronous, so every call
runs in a worker thread, at most :data:`~tracker.objectstore.botoclients.THREADS` at once per
bucket, each bounded by the
client's connect and read timeouts and a single attempt more on a transient error, and each
answer read whole at most :data:`~tracker.clientwire.storewire.MAX_ANSWER` bytes, within
the call's deadline (a listing: pages of
:data:`~tracker.clientwire.storewire.MAX_PAGE` bytes, :data:`MAX_LISTED` entries,
:data:`MAX_PAGES` pages, :data:`LISTING_BYTES` in all, and one call's deadline in all), its
sockets shut down when it is given up. Calls on a
client request's path (:meth:`Bucket.on_request_path`: is the object there, the refresh lock,
a hand-out, the health check) have one attempt and ``request_timeout`` in all: a store that
hangs (accepts connections, never answers) costs a request that long once, then it is marked
down and requests take another path. Presigning is local computation and runs inline.
Why boto3: the reference S3 client, thread-safe clients, conditional writes
(``IfNoneMatch``/``IfMatch``) and presigned GETs with response overrides; the asyncio-only
clients (aiobotocore) do not run under trio.

Every failure becomes a :class:`~tracker.errors.StoreError` with one line naming the operation
and the store's answer; credentials never appear in it.
:class:`~tracker.objectstore.storehealth.StoreHealth` records whether
the store answered the last call: a store that is down is not asked on the request path; only
the health watcher (:meth:`tracker.objectstore.tier.ObjectTier.watch`) asks it again, so that
requests do not each wait for its timeouts. The clients are
:mod:`tracker.objectstore.botoclients`', what the store answers
:mod:`tracker.objectstore.storeanswers`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs
import botocore.exceptions
import trio

from tracker.clientwire.storewire import MAX_ANSWER, MAX_PAGE, CallLine
from tracker.config.schema import ObjectStore
from tracker.core.text import one_line
from tracker.errors import StoreConflict, StoreError
from tracker.objectstore.storeanswers import (
    ObjectInfo,
    UploadInfo,
    aware,
    listed,
    store_time,
    uploads,
)
from tracker.objectstore.storehealth import StoreHealth

if TYPE_CHECKING:
    from tracker.objectstore.botoclients import BucketClients

_T = TypeVar("_T")

#: Objects listed at most (start-up, retention): far more than a prefix ever holds.
MAX_LISTED = 100_000
#: Pages of one listing asked for at most: a store that never stops saying there is more
#: (its pages empty, or each of a few entries) would otherwise hold the start-up or a group's
#: retention in the listing for good. A store that fills its pages (1,000 entries asked)
#: reaches MAX_LISTED in a tenth of them.
MAX_PAGES = 1000
#: Bytes of one listing's pages read at most: those of MAX_LISTED entries, 1,000 a page, each
#: page at most MAX_PAGE (a real listing reaches MAX_LISTED first: a page of 1,000 of S3's
#: longest keys is 1.3 MiB). A store whose pages list nothing counted (padding, elements not
#: asked for) was read up to MAX_PAGES pages of MAX_PAGE, 2 GB parsed in one of the bucket's
#: threads (minutes of it), at every start-up, retention and sync of the learned documents.
LISTING_BYTES = MAX_LISTED // 1000 * MAX_PAGE
#: Seconds one of the tracker's own calls (not a client's request's) may take in all: boto's
#: timeouts bound each read, not a store that trickles its answer a byte at a time, which
#: held the start-up, the retention or the learned documents' sync for good.
CALL_DEADLINE = 600.0
#: Answers that mean "the store works, this object is not there / not as asked".
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload", "InvalidRange"})
_CONFLICT = frozenset({"412", "409", "PreconditionFailed", "ConditionalRequestConflict"})
#: The calls of the tracker's housekeeping: deletes (retention's, of locks, marks and side
#: objects), the listing and abort of incomplete uploads. No request's bytes and no upload
#: depend on one, and an operator's bucket policy may refuse them (a role without
#: ``s3:ListBucketMultipartUploads``, marks or archives left to a lifecycle rule): such a
#: refusal costs that housekeeping, not the store. A HEAD, GET, PUT or an upload's call
#: refused is the store's failure: nothing is served or filled without it.
_CHORES = frozenset({"DELETE", "ListMultipartUploads", "AbortMultipartUpload"})
#: A policy's refusal. Not 403 as such: wrong or expired credentials are 403 too
#: (``SignatureDoesNotMatch``, ``InvalidAccessKeyId``) and fail every call.
_DENIED = frozenset({"AccessDenied"})

#: What an error answer says of the store (:func:`verdict`).
StoreVerdict = Literal["conflict", "absent", "denied", "down"]


def verdict(operation: str, code: str, status: int) -> StoreVerdict:
    """What the store's error answer (its ``code`` and HTTP ``status``) to ``operation``
    says: another replica's object (``conflict``), no such object or range (``absent``), a
    housekeeping call the bucket's policy refuses (``denied``: the store works, that
    housekeeping is skipped), else the store is unusable (``down``). Pure."""
    if code in _CONFLICT or status in (409, 412):
        return "conflict"
    if code in _NOT_FOUND or status in (404, 416):  # 416: a range of an empty object
        return "absent"
    if code in _DENIED and operation in _CHORES:
        return "denied"
    return "down"  # 403 (credentials, a policy refusing what serving needs), 5xx, throttling


class Bucket:
    """One bucket of one store; async methods run boto3 in worker threads.

    ``client`` serves the tracker's own calls; ``signer`` (for ``public_endpoint``) only
    presigns. ``health`` is updated by every call. :meth:`on_request_path` is the same bucket
    with a deadline on every call.
    """

    def __init__(
        self,
        store: ObjectStore,
        health: StoreHealth | None = None,
        *,
        clients: BucketClients | None = None,
        deadline: float | None = None,
    ) -> None:
        self.store = store
        self.name = store.bucket
        self.health = health if health is not None else StoreHealth()
        self.request_timeout = store.request_timeout
        if clients is None:
            # boto3 comes with the first bucket: a tracker without an object store starts
            # without it (a fifth of a second of every start)
            from tracker.objectstore.botoclients import BucketClients

            clients = BucketClients.of(store, CALL_DEADLINE)
        self.clients = clients
        self._client = self.clients.calls
        self._signer = self.clients.signer
        self._limiter = self.clients.limiter
        #: Seconds a call may take in all (None: :data:`CALL_DEADLINE`).
        self._deadline = deadline

    def on_request_path(self) -> Bucket:
        """This bucket (same health, same threads) for calls a client's request waits for:
        one attempt, and a call that has no answer within ``request_timeout`` fails (the
        worker thread is abandoned; its own timeouts end it) and marks the store down."""
        quick = attrs.evolve(self.clients, calls=self.clients.quick)
        return Bucket(self.store, self.health, clients=quick, deadline=self.request_timeout)

    @property
    def deadline(self) -> float:
        """Seconds one call may take in all (a listing too, all its pages)."""
        return CALL_DEADLINE if self._deadline is None else self._deadline

    async def _call(
        self,
        operation: str,
        fn: Callable[..., _T],
        *,
        most: int = MAX_ANSWER,
        line: CallLine | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run ``fn(Bucket=…, **kwargs)`` in a worker thread, its answers read whole at most
        ``most`` bytes (``line``'s bound when it is given, which then counts what they
        came to); StoreError on any failure (the store marked down unless it answered "not
        found" or "conflict"), never another exception but cancellation."""
        call = partial(fn, Bucket=self.name, **kwargs)
        deadline = self.deadline
        # the call's sockets shut down when it is given up (past its deadline, cancelled),
        # so that its abandoned thread ends then and not when the store stops trickling
        line = CallLine(most) if line is None else line
        try:
            with trio.move_on_after(deadline):
                result = await trio.to_thread.run_sync(
                    partial(line.run, call), limiter=self._limiter, abandon_on_cancel=True
                )
                self.health.answered()
                return result
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(operation, exc) from None
        except Exception as exc:
            # Whatever else the call raised, the store's answer caused it: botocore parses
            # an answer's fields with errors not its own (a Last-Modified that is no date:
            # ValueError "Invalid timestamp"; one it reads as an epoch past the calendar,
            # "1e20" or "inf": RuntimeError "Unable to calculate correct timezone offset";
            # malformed XML of a 200: ResponseParserError, a bare Exception), and urllib3's
            # errors while a body streams are not wrapped (a TLS record that fails its MAC:
            # urllib3's SSLError, no OSError). Listing them one by one let the next one past
            # the tier: a 500 on the request path, the daemon's end from an upload's lock
            # release. Cancellation is no Exception and passes (the worker thread abandoned:
            # abandon_on_cancel), as do KeyboardInterrupt and SystemExit.
            reason = f"{operation}: {one_line(str(exc)) or type(exc).__name__}"
            self.health.failed(reason)
            raise StoreError(reason) from None
        finally:
            line.hang_up()  # nothing when the call returned
        reason = f"{operation}: no answer within {deadline:g}s"
        self.health.failed(reason)
        raise StoreError(reason)

    def _parse(self, operation: str, build: Callable[[], _T]) -> _T:
        """``build()`` from a store's answer; an answer missing a field or holding one of the
        wrong type is a StoreError (the store is not usable), never a KeyError on a client's
        request."""
        try:
            return build()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = f"{operation}: malformed answer ({type(exc).__name__}: {one_line(str(exc))})"
            self.health.failed(reason)
            raise StoreError(reason) from None

    def _client_error(self, operation: str, exc: botocore.exceptions.ClientError) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        reason = f"{operation}: {code or 'error'} (HTTP {status})"
        said = verdict(operation, code, status)
        if said == "down":
            self.health.failed(reason)
            return StoreError(reason)
        self.health.answered()
        if said == "conflict":
            return StoreConflict(reason)
        if said == "denied":
            self.health.denied(operation, reason)  # logged once per operation
            return StoreError(reason, down=False, denied=True)
        return StoreError(reason, down=False, dated=store_time(exc.response))

    # -- objects -------------------------------------------------------------------------

    async def check(self) -> None:
        """Ask the store whether the bucket is there and ours (StoreError when not)."""
        await self._call("HeadBucket", self._client.head_bucket)

    async def head(self, key: str) -> ObjectInfo | None:
        """The object at ``key``, or None when there is none."""
        found, _now = await self.head_dated(key)
        return found

    async def head_dated(self, key: str) -> tuple[ObjectInfo | None, datetime]:
        """The object at ``key`` (or None) and the store's clock when it answered (the
        ``Date`` header): lock ages are measured on the store's clock, not ours."""
        try:
            answer = await self._call("HEAD", self._client.head_object, Key=key)
        except StoreError as exc:
            if exc.down or isinstance(exc, StoreConflict):
                raise
            # the store's clock of its "not found" (a side object's age is judged by it: on
            # this replica's clock, one running ahead deleted another's upload's sides)
            return None, exc.dated or datetime.now(UTC)
        info = self._parse(
            "HEAD",
            lambda: ObjectInfo(
                key=key,
                size=int(answer["ContentLength"]),
                etag=str(answer.get("ETag", "")),
                last_modified=aware(answer["LastModified"]),
                metadata=dict(answer.get("Metadata", {})),
            ),
        )
        return info, store_time(answer)

    async def read_first_byte(self, key: str) -> bool:
        """GET the first byte of the object at ``key`` (a ranged GET: the store reads stored
        bytes, which a HEAD does not prove it can); True when it came (the health then has
        ``reads_proven``), False when there is no such object. StoreError when the store
        failed."""

        def first_byte(**kwargs: Any) -> bytes:
            answer = self._client.get_object(Range="bytes=0-0", **kwargs)
            with closing(answer["Body"]) as body:
                return bytes(body.read(2))

        try:
            data = await self._call("GET", first_byte, Key=key)
        except StoreError as exc:
            if exc.down or isinstance(exc, StoreConflict):
                raise
            return False
        if not data:
            reason = "GET: no byte of a stored object"
            self.health.failed(reason)
            raise StoreError(reason)
        self.health.read_worked()
        return True

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str = "",
    ) -> str:
        """Write a small object; its ETag. StoreConflict when the condition fails."""
        extra: dict[str, Any] = {"Metadata": metadata or {}}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        answer = await self._call("PUT", self._client.put_object, Key=key, Body=body, **extra)
        return answer.get("ETag", "")

    async def get_small(self, key: str, limit: int = 4096) -> bytes | None:
        """The first ``limit`` bytes of a small object (a digest); None when there is none."""
        got = await self.get_small_tagged(key, limit)
        return got[0] if got is not None else None

    async def get_small_tagged(self, key: str, limit: int = 4096) -> tuple[bytes, str] | None:
        """The first ``limit`` bytes of a small object and its ETag (what a conditional
        write of it names); None when there is none."""
        try:
            data, etag = await self._call("GET", partial(_read_small, self._client, limit), Key=key)
        except StoreError as exc:
            if exc.down:
                raise
            return None
        if data:
            self.health.read_worked()
        return data, etag

    async def delete(self, key: str, *, if_match: str = "") -> None:
        """Remove the object at ``key`` (no error when it is gone already); with
        ``if_match``, only while its ETag is that one (StoreConflict when it is not)."""
        extra: dict[str, Any] = {"IfMatch": if_match} if if_match else {}
        await self._call("DELETE", self._client.delete_object, Key=key, **extra)

    async def tidy(self, key: str) -> None:
        """Delete the object at ``key`` as housekeeping (a lock, a mark, a side object): one
        the bucket's policy refuses to delete is left (the refusal is logged once), as one
        that is gone already; StoreError when the store failed."""
        try:
            await self.delete(key)
        except StoreError as exc:
            if not exc.denied:
                raise

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (at most :data:`MAX_LISTED`). StoreError when the
        listing does not end (:meth:`_endless`)."""
        found: list[ObjectInfo] = []
        token = ""
        read = [0, 0]
        # the listing in all within one call's deadline: each page within it, 1,000 of them,
        # held the start-up or a retention for days
        with trio.move_on_after(self.deadline):
            for _page in range(MAX_PAGES):
                extra = {"ContinuationToken": token} if token else {}
                page = await self._page(
                    "LIST",
                    self._client.list_objects_v2,
                    read,
                    Prefix=prefix,
                    MaxKeys=1000,
                    **extra,
                )
                found += self._parse("LIST", partial(listed, page))
                del found[MAX_LISTED:]  # a page of more than it was asked for counts too
                sent, token = token, page.get("NextContinuationToken", "")
                if not page.get("IsTruncated") or not token or len(found) >= MAX_LISTED:
                    return found
                if token == sent:
                    raise self._endless("LIST", "the same page again")
            raise self._endless("LIST", f"more than {MAX_PAGES} pages")
        raise self._overdue("LIST", read[1])

    async def _page(
        self, operation: str, fn: Callable[..., Any], read: list[int], **kwargs: Any
    ) -> Any:
        """One page of a listing (at most :data:`~tracker.clientwire.storewire.MAX_PAGE`
        bytes); ``read``, the bytes of the listing's pages so far and how many came, counts
        it. StoreError once they pass :data:`LISTING_BYTES` (:meth:`_endless`)."""
        line = CallLine(MAX_PAGE)
        page = await self._call(operation, fn, line=line, **kwargs)
        read[0] += line.read
        read[1] += 1
        if read[0] > LISTING_BYTES:
            raise self._endless(operation, f"more than {LISTING_BYTES >> 20} MiB of pages")
        return page

    def _overdue(self, operation: str, came: int) -> StoreError:
        """The listing's deadline passed after ``came`` pages: with none, a call that did
        not answer (as :meth:`_call` says); else a listing that does not end."""
        seconds = self.deadline
        if came:
            return self._endless(operation, f"no end within {seconds:g}s")
        reason = f"{operation}: no answer within {seconds:g}s"
        self.health.failed(reason)
        return StoreError(reason)

    def _endless(self, operation: str, why: str) -> StoreError:
        """The store's listing does not end (``why``): it names the page just sent as the
        next, or says there is more past :data:`MAX_PAGES` pages, :data:`LISTING_BYTES` of
        pages or the call's deadline. A malformed answer: the store is marked down, as for
        one that does not parse (docs/architecture.md, "Threat model")."""
        reason = f"{operation}: a listing that does not end ({why})"
        self.health.failed(reason)
        return StoreError(reason)

    # -- multipart uploads ---------------------------------------------------------------

    async def create_upload(self, key: str, metadata: dict[str, str]) -> str:
        """Begin a multipart upload of ``key``; its upload id."""
        answer = await self._call(
            "CreateMultipartUpload",
            self._client.create_multipart_upload,
            Key=key,
            Metadata=metadata,
            ContentType="application/octet-stream",
        )
        return self._parse("CreateMultipartUpload", lambda: str(answer["UploadId"]))

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (from 1); its ETag."""
        answer = await self._call(
            "UploadPart",
            self._client.upload_part,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return self._parse("UploadPart", lambda: str(answer["ETag"]))

    async def complete_upload(
        self, key: str, upload_id: str, etags: list[str], *, if_none_match: bool = False
    ) -> None:
        """Make the object of the upload's parts (``etags`` in part order) appear;
        ``if_none_match``: only where no object is (StoreConflict otherwise; a store that
        does not take the condition ignores it)."""
        parts: list[Any] = [
            {"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)
        ]
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        await self._call(
            "CompleteMultipartUpload",
            self._client.complete_multipart_upload,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **extra,
        )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an upload: its parts are removed (no error when it is gone already)."""
        try:
            await self._call(
                "AbortMultipartUpload",
                self._client.abort_multipart_upload,
                Key=key,
                UploadId=upload_id,
            )
        except StoreError as exc:
            if exc.down:
                raise

    async def list_uploads(self, prefix: str) -> list[UploadInfo]:
        """The incomplete multipart uploads of keys under ``prefix`` (at most
        :data:`MAX_LISTED`). StoreError when the listing does not end (:meth:`_endless`)."""
        operation = "ListMultipartUploads"
        found: list[UploadInfo] = []
        key_marker = upload_marker = ""
        read = [0, 0]
        with trio.move_on_after(self.deadline):  # in all, as list_objects
            for _page in range(MAX_PAGES):
                extra = (
                    {"KeyMarker": key_marker, "UploadIdMarker": upload_marker} if key_marker else {}
                )
                page = await self._page(
                    operation, self._client.list_multipart_uploads, read, Prefix=prefix, **extra
                )
                found += self._parse(operation, partial(uploads, page))
                del found[MAX_LISTED:]
                sent = (key_marker, upload_marker)
                key_marker = page.get("NextKeyMarker", "")
                upload_marker = page.get("NextUploadIdMarker", "")
                if not page.get("IsTruncated") or not key_marker or len(found) >= MAX_LISTED:
                    return found
                if (key_marker, upload_marker) == sent:
                    raise self._endless(operation, "the same page again")
            raise self._endless(operation, f"more than {MAX_PAGES} pages")
        raise self._overdue(operation, read[1])

    # -- presigning ----------------------------------------------------------------------

    def presign_get(self, key: str, ttl: float, *, file_name: str = "", public: bool = True) -> str:
        """A presigned GET URL of ``key`` valid ``ttl`` seconds, signed for the public
        endpoint (``public``) or the tracker's own; with ``file_name``, the store answers
        ``content-disposition: attachment; filename="…"``. Raises StoreError when signing
        fails (no credentials found, say)."""
        params: dict[str, str] = {"Bucket": self.name, "Key": key}
        if file_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{file_name}"'
        client = self._signer if public else self._client
        try:
            return client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=max(1, int(ttl))
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StoreError(f"presign: {one_line(str(exc))}", down=False) from None


def _read_small(client: Any, limit: int, **kwargs: Any) -> tuple[bytes, str]:
    """GET an object and read at most ``limit`` bytes of it, with its ETag (in the worker
    thread)."""
    answer = client.get_object(**kwargs)
    body = answer["Body"]
    try:
        data: bytes = body.read(limit)
    finally:
        body.close()
    return data, str(answer.get("ETag", ""))
