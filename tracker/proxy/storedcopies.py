"""The executors of the stored copies: the bucket's redirect, the disk cache, the bucket's
stream and the holder replica (``REDIRECT``, ``CACHE_HIT``, ``FROM_BUCKET`` and
``FROM_HOLDER`` of :class:`~tracker.proxy.decisions.Step`).

Each answers the request, counted as its outcome, or passes (None) when performing it shows
that it cannot: the object is not there, the URL could not be signed, the cached file is
gone, the stream could not start. The route then goes on (docs/http-api.md, "With an object
store"). A copy whose digest is known says so (``repr-digest``, "Verified archives").
"""

from __future__ import annotations

import logging
import os
from functools import partial

import attrs

from tracker.cache.store import Cache
from tracker.config.schema import TargetGroup
from tracker.core.digests import repr_digest
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError
from tracker.objectstore.locks import Holder
from tracker.observability.folding import log_folded
from tracker.observability.metrics import ByteSource, Metrics
from tracker.proof.records.localcopies import FileIdentity, identity_of
from tracker.proxy.ask import Ask
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.decisions import Copy
from tracker.proxy.relay import relay
from tracker.proxy.transfers import Launcher, head_answer
from tracker.serving.fileresponse import (
    ChunkBudget,
    ExtraHeaders,
    OpenFile,
    file_answer,
    file_response,
    open_file,
)
from tracker.serving.httpanswer import Answer, redirect_answer
from tracker.serving.threads import given_way

log = logging.getLogger("tracker.streamer")


async def served_from_disk(
    path: str,
    ask: Ask,
    source: ByteSource,
    metrics: Metrics | None,
    budget: ChunkBudget | None,
    extra_headers: ExtraHeaders | None,
) -> Answer:
    """The file at ``path`` as the answer to ``ask`` (Range, conditionals and HEAD answered
    from disk, zero-copy on the client's connection when it has one), its bytes counted as
    served from ``source``. Raises FileNotFoundError, or another OSError for what is not a
    regular file: the caller says what that means for its copy (the cache's, a local one).
    """
    on_bytes = partial(metrics.add_served_bytes, source) if metrics is not None else None
    return await file_response(
        path,
        ask,
        connection=ask.connection,
        on_bytes=on_bytes,
        budget=budget,
        extra_headers=extra_headers,
    )


async def presigned(
    launcher: Launcher, objects: ObjectPath | None, group: str, archive: ArchiveName
) -> str | None:
    """The bucket's presigned URL of the file (counted as a redirect); None: not there."""
    assert objects is not None  # the route redirects only with a bucket
    url = await objects.presigned(group, archive.file_name)
    if url is not None:
        launcher.count("object_redirect")
    return url


async def redirect(
    launcher: Launcher, objects: ObjectPath | None, group: str, archive: ArchiveName
) -> Answer | None:
    """303 to the bucket's copy (first: a hit leaves the data path before any file
    system work)."""
    url = await presigned(launcher, objects, group, archive)
    return None if url is None else redirect_answer(url)


async def cache_hit(
    metrics: Metrics | None,
    budget: ChunkBudget | None,
    cache: Cache,
    looked: Looked,
    group: str,
    archive: ArchiveName,
    ask: Ask,
) -> Answer | None:
    """The cached file ``looked`` opened (a copy the route found servable, :func:`look`),
    Range, conditionals and HEAD answered from disk with no further call to the file
    system; None when it is not there, or when the file opened is not the copy that passed
    its check (replaced or written since: it is checked again, and the route goes on as
    for a copy not checked yet; docs/http-api.md, "Verified archives")."""
    found, failed = looked.opened, looked.failed
    if isinstance(failed, FileNotFoundError):  # gone since it was found: its digest goes now
        cache.checked.confirmed(group, archive.file_name, looked.now)
        return None
    if failed is not None:  # something else than a file at the path: not cached
        log_folded(log, "warning", "cache_unreadable", path=looked.path, error=failed)
        return None
    if found is None:  # not opened: its copy was not servable when looked at
        return None

    def digest_of(st: os.stat_result) -> dict[str, str]:
        # Asked of the opened file's fstat: no system call on the hit path but the look's.
        digest = cache.opened(group, archive.file_name, st)
        return {"repr-digest": repr_digest(digest)} if digest else {}

    on_bytes = partial(metrics.add_served_bytes, "cache") if metrics is not None else None
    try:
        response = file_answer(
            found,
            ask,
            connection=ask.connection,
            on_bytes=on_bytes,
            budget=budget,
            extra_headers=digest_of,
        )
    except RequestError:  # not the copy checked
        return None
    if metrics is not None:
        metrics.count_outcome("cache_hit")
    return response


async def from_bucket(
    launcher: Launcher, objects: ObjectPath | None, ask: Ask, group: str, archive: ArchiveName
) -> Answer | None:
    """Not on disk: a HEAD answered from the object's metadata, or the object
    streamed from the bucket (Range and conditionals passed on). None: the bucket has
    no copy, or the store failed."""
    assert objects is not None  # the route asks the bucket only with one
    if ask.method == "HEAD":
        return await objects.head(group, archive.file_name, ask.lines)
    source = await objects.stream_source(group, archive)
    if source is None:
        return None
    target_group, found, digest = source
    job = launcher.job(target_group, ask, archive, found, origin="object_store")
    started = await launcher.start(partial(relay, job), client=False, failed="object_stream_failed")
    if isinstance(started, Answer):
        return None  # the store failed: another path
    launcher.count("object_store")
    response = head_answer(started)
    if digest and started.status in (200, 206):
        response.headers["repr-digest"] = repr_digest(digest)
    return response


async def from_holder(
    launcher: Launcher,
    objects: ObjectPath | None,
    holder: Holder,
    ask: Ask,
    group: TargetGroup,
    archive: ArchiveName,
    size: int,
) -> Answer | None:
    """Proxied from the replica that holds the file's lock (its refresh in flight) as a
    source of ``size`` bytes (the index's); None when it cannot be followed or failed
    (then streamed from upstream uncached)."""
    assert objects is not None  # a holder comes from the bucket
    source = objects.holder_source(holder, group.group, archive, size)
    if source is None:
        return None
    target_group, found = source
    # No zero-copy connection: a holder's bytes pass through Python (as they always did).
    job = launcher.job(target_group, ask, archive, found, origin="replica", zero_copy=False)
    started = await launcher.start(partial(relay, job), client=False, failed="replica_unreachable")
    if isinstance(started, Answer):
        return None  # streamed from the source uncached instead
    launcher.count("replica")
    return head_answer(started)


def copy_of(cache: Cache | None, path: str | None, servable: bool) -> Copy:
    """What the disk cache may hold of a file (``tracker.proxy.decisions.Copy``), its
    ``path`` in the cache being None when the file cannot be cached there, ``servable``
    whether its copy passed its check (:meth:`tracker.cache.store.Cache.servable`)."""
    if cache is None:
        return "no_cache"
    if path is None:
        return "outside"
    return "servable" if servable else "unchecked"


@attrs.frozen
class Looked:
    """What one look at the disk cache's copy of a file found (:func:`look`): its validated
    ``path`` (None: the file cannot be cached here, ``refused`` says why); when it was
    opened, the file (``opened``), or why it could not be (``failed``; for a file gone, the
    identity of what its name held a moment after, ``now``: None, nothing)."""

    path: str | None
    refused: RequestError | None = None
    opened: OpenFile | None = None
    failed: OSError | None = None
    now: FileIdentity | None = None

    def close(self) -> None:
        """Close the file opened, if any (a look given up)."""
        if self.opened is not None:
            self.opened.close()


async def look(cache: Cache, group: str, archive: ArchiveName, *, opens: bool) -> Looked:
    """The cache path of a file, validated, and (``opens``: a copy that may be served) the
    file opened with its fstat: every file system call of a cache hit before its first byte
    in one thread of its own, one hop, never on the event loop (a cache directory on a hung
    mount froze every request), given up on cancellation (a hung one holds its thread only,
    never one of trio's shared ones; what it opens once the mount answers is closed then).
    A path that cannot be used, or a cache directory where a look has not answered for
    :data:`~tracker.serving.threads.HUNG_AFTER` seconds (no thread more is parked there),
    makes the file streamed uncached (logged here)."""
    calls = partial(_look, cache, group, archive, opens)
    try:
        looked = await given_way(calls, Looked.close, name="cache look", place=cache.root)
    except TimeoutError as exc:  # a look there has hung for a while: none more is parked
        looked = Looked(None, refused=RequestError(503, exc.strerror or str(exc)))
    if looked.refused is not None:
        name, reason = archive.file_name, looked.refused.reason
        log_folded(log, "warning", "cache_path_refused", group=group, file=name, reason=reason)
    return looked


def _look(cache: Cache, group: str, archive: ArchiveName, opens: bool) -> Looked:
    """:func:`look`'s calls (blocking: its thread)."""
    try:
        # A configured group whose name cannot be a directory (such as ``..``), or a path
        # leading out of the cache directory through a symlink planted in it: nothing
        # outside the cache directory is touched.
        path = cache.path_for(group, archive)  # its real path: a stat of each part
    except RequestError as exc:
        return Looked(None, refused=exc)
    if not opens:
        return Looked(path)
    try:
        return Looked(path, opened=open_file(path))
    except FileNotFoundError as exc:
        # What its name holds now, for its digest (as Cache.confirm looks): a promotion may
        # have renamed another copy there since.
        try:
            now: FileIdentity | None = identity_of(os.stat(path, follow_symlinks=False))
        except OSError:
            now = None
        return Looked(path, failed=exc, now=now)
    except OSError as exc:
        return Looked(path, failed=exc)
