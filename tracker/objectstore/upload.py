"""A multipart upload that follows a file while it is being written.

The refresh of an archive writes a local temp file at the upstream's pace; the upload reads
each part from that file once it is there (``os.pread`` of a descriptor the caller opened:
a rename that promotes the file keeps it valid) and uploads the parts one after another.
Memory is one part. The object appears only when the file ended *verified* (every announced
byte written, the upstream body checked complete) and the store then reports exactly that
length; on any failure, cancellation included, the upload is aborted so that no part stays.

A refresh from several sources whose copy failed its check is repaired in place (its
readers cut off, wrong bytes rewritten, the copy checked again: docs/architecture.md, "A
refresh from several sources"): parts read before the cut may hold the wrong bytes, so the
upload is aborted, waits for the repair, and starts again from the first byte once the copy
passed its check: the repaired copy reaches the bucket with that refresh, under its lock.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import trio

from tracker.core.digests import sha256sum_line
from tracker.errors import StoreError
from tracker.objectstore.keys import DIGEST_SUFFIX
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.observability.logs import log_event
from tracker.proof.levels import Proof

if TYPE_CHECKING:
    # not at run time: a tracker without an object store never loads botocore
    from tracker.objectstore.bucket import Bucket

log = logging.getLogger("tracker.objectstore")

MIN_PART = 8 * 1024 * 1024
#: S3 allows 10,000 parts; leave room.
MAX_PARTS = 9_000
#: Longest wait for an abort while the upload is being cancelled.
ABORT_TIMEOUT = 30.0


class Growing(Protocol):
    """A file being written (:class:`tracker.cache.refresh.Refresh` is one)."""

    size: int

    @property
    def verified(self) -> bool:
        """True once every byte is written and every check passed."""
        ...

    #: The archive's SHA-256 (hex) once it passed its check ("" unchecked).
    sha256: str
    #: What that check proved.
    proof: Proof

    #: How many times the file's readers were cut off for a repair (bytes read before the
    #: last one may be wrong).
    repairs: int

    @property
    def failed(self) -> bool: ...

    @property
    def repairing(self) -> bool:
        """True while the file is being repaired (neither checked good again nor given up)."""
        ...

    def storable(self) -> int:
        """How many bytes from the start may be stored (the end once the whole check passed)."""
        ...

    async def wait_progress(self) -> None: ...


def part_size(size: int) -> int:
    """Bytes per part for a ``size``-byte object: at least 8 MiB, at most 9,000 parts."""
    wanted = max(MIN_PART, math.ceil(size / MAX_PARTS))
    mib = 1024 * 1024
    return math.ceil(wanted / mib) * mib


def digest_key(key: str) -> str:
    """Where the digest of the object at ``key`` is kept: ``{key}.sha256`` (it does not end
    in the archive's name, so no listing or mirror takes it for an archive)."""
    return key + DIGEST_SUFFIX


#: The objects written beside a verified upload: (key, body) in order, given the file.
SideObjects = Callable[[Growing], list[tuple[str, bytes]]]


def digest_only(key: str) -> SideObjects:
    """The digest object alone (:func:`digest_key`): the side objects of an upload nobody
    proves or signs more of."""
    name = key.rsplit("/", 1)[-1]
    return lambda growing: [(digest_key(key), sha256sum_line(growing.sha256, name).encode())]


#: Fresh starts of an upload whose file was repaired meanwhile, at most (a refresh repairs
#: its copy once; a second cut means the repair itself is being redone).
MAX_RESTARTS = 2


async def upload_following(
    bucket: Bucket,
    key: str,
    fd: int,
    growing: Growing,
    metadata: dict[str, str],
    sides: SideObjects | None = None,
    before_complete: Callable[[], Awaitable[float]] | None = None,
) -> ObjectInfo:
    """Upload ``growing`` (read from ``fd``) to ``key`` as it is written; the object.

    The last part is read only once the file is verified (its archive check passed), and
    the objects beside it (``sides``, by default the digest object :func:`digest_key`; the
    tier adds its proof and statement: :mod:`tracker.objectstore.sides`) are written before
    the upload completes, so the archive never appears in the bucket without its digest.
    ``before_complete`` is awaited before those objects and the complete are sent (a
    refresh's lock: :meth:`~tracker.objectstore.locks.Lock.until_held`); it gives the
    time (``trio.current_time()``) by which each object beside the archive must be written:
    past it the write is given up, none of its attempts sent again (a retry after the
    lease landed on the object of the replica that took the lock over), and the upload
    fails.
    When the file is repaired meanwhile (:attr:`Growing.repairs`), the upload is aborted
    and started again once the repair passed (see the module doc). Raises StoreError when
    the store failed or the file ended unverified (the upload is then aborted);
    cancellation aborts it too.
    """
    for _start in range(MAX_RESTARTS + 1):
        repairs = growing.repairs
        info = await _upload_once(
            bucket, key, fd, growing, metadata, sides, repairs, before_complete
        )
        if info is not None:
            return info
        log_event(log, "info", "object_upload_restarted", key=key, reason="the copy is repaired")
        while growing.repairing:
            await growing.wait_progress()
        if growing.failed:
            raise StoreError("the refresh this upload followed failed", down=False)
    raise StoreError("the copy this upload followed was repaired too often", down=False)


async def _upload_once(
    bucket: Bucket,
    key: str,
    fd: int,
    growing: Growing,
    metadata: dict[str, str],
    sides: SideObjects | None,
    repairs: int,
    before_complete: Callable[[], Awaitable[float]] | None = None,
) -> ObjectInfo | None:
    """One upload of ``growing`` (see :func:`upload_following`); None (aborted, nothing
    left) when the file's readers were cut off since ``repairs``."""
    size = growing.size
    step = part_size(size)
    upload_id = await bucket.create_upload(key, metadata)
    try:
        etags: list[str] = []
        for offset in range(0, size, step):
            end = min(size, offset + step)
            if not await _until_readable(growing, end, repairs):
                break
            data = await trio.to_thread.run_sync(os.pread, fd, end - offset, offset)
            if len(data) != end - offset:
                raise StoreError(f"the local file ended at byte {offset + len(data)}", down=False)
            etags.append(await bucket.upload_part(key, upload_id, len(etags) + 1, data))
        else:
            if size == 0:
                raise StoreError("an empty archive is not uploaded", down=False)
            # Each write beside it and the complete are sent under the lock's lease, each
            # looked at again: a side object sent after the lease lapsed landed on the
            # object of the replica that took the lock over (its digest replaced for good).
            if growing.sha256 and growing.repairs == repairs:
                for side, body in (sides or digest_only(key))(growing):
                    until = math.inf
                    if before_complete is not None:
                        until = await before_complete()
                    await _put_by(bucket, side, body, until)
            if growing.repairs == repairs:  # no part read before a cut
                if before_complete is not None:
                    await before_complete()
                # only where no object is: a complete of a holder past its lease never
                # replaces the one the replica that took the lock over completed
                await bucket.complete_upload(key, upload_id, etags, if_none_match=True)
                upload_id = ""
        if upload_id:
            await _abort(bucket, key, upload_id)
            return None
    except BaseException:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + ABORT_TIMEOUT
            await _abort(bucket, key, upload_id)
        raise
    info = await bucket.head(key)
    if info is None or info.size != size:
        await bucket.delete(key)
        raise StoreError(f"the store holds {info.size if info else 'no'} bytes, not {size}")
    return info


async def _put_by(bucket: Bucket, key: str, body: bytes, until: float) -> None:
    """Write the small object ``key`` by ``until`` (``trio.current_time()``; the lock's
    lease's end); StoreError when the store has not answered by then. The call is given up
    with its connections (:meth:`Bucket._call`), so boto3 sends no attempt of it after
    that: resent after its read timeout (30 s, twice), a write sent under the lease landed
    long past it. A request already on the wire may still be applied by a store that
    holds it (no client can call that back)."""
    with trio.move_on_at(until):
        await bucket.put(key, body)
        return
    raise StoreError(f"PUT {key}: no answer within the lock's lease", down=False)


async def _abort(bucket: Bucket, key: str, upload_id: str) -> None:
    """Abort the multipart upload ``upload_id`` of ``key`` ("": none left), logging a
    failure (the store's own expiry of unfinished uploads then cleans up)."""
    if not upload_id:
        return
    try:
        await bucket.abort_upload(key, upload_id)
    except StoreError as exc:
        log_event(log, "warning", "object_upload_abort_failed", key=key, reason=str(exc))


async def _until_readable(growing: Growing, end: int, repairs: int) -> bool:
    """Wait until bytes up to ``end`` may be read (the last one only once verified); False
    when the file's readers were cut off since ``repairs`` (its bytes may be rewritten)."""
    while growing.storable() < end:
        if growing.repairs != repairs:
            return False
        if growing.failed:
            raise StoreError("the refresh this upload followed failed", down=False)
        await growing.wait_progress()
    return growing.repairs == repairs
