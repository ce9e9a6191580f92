"""The executors of the refresh decisions: start a refresh, join one, read it, and find
those running here (docs/architecture.md, "One request's path").

A :class:`~tracker.proxy.decisions.Start` begins a *detached* refresh
(:func:`tracker.proxy.cachefill.fill` in the transfers nursery: it may outlive its client);
every client reads its growing temp file (:func:`join`, below). A refresh is
registered in one place, the cache (:meth:`tracker.cache.store.Cache.begin_refresh`), from
its start to its end (the status page lists its readers) and, when its start says
``register``, found there by requests of its file (:meth:`tracker.cache.store.Cache.running`);
it is shared synchronously with the start, so a request arriving next finds it. While a
request asks the bucket for a file's lock, others of that file wait
(:meth:`Refreshes.settled`): the lock decides who refreshes.

Its readers (:func:`join`, ``cache_share_inflight`` for others than its starter): while a
detached refresh writes an archive to its temp file at the upstream's pace, every GET of that
file that joins it, ranges included, is answered from the temp file::

    upstream ──► detached pump ──► temp file ──► reader 1 (os.pread, its own pace)
                   (one stream)       │     └──► reader 2 ...
                                      └── written / ended / verified (Refresh)

A reader opens the temp file when it joins and keeps that descriptor to the end: the rename
that promotes the file keeps the inode, so its reads go on. It sends what is on disk at once
(a late joiner starts with everything written so far), then waits for the refresh's progress.
It is told the full ``content-length`` up front; if the refresh fails, its body raises and
the server breaks the connection (never a short 200). The last byte of the file is sent only
once the refresh ended verified (see :meth:`tracker.cache.refresh.Refresh.readable`), and
while the archive is checked, so is the last byte of every range
(:meth:`tracker.cache.refresh.Refresh.range_end`): a 206 of bytes not checked yet never
looks complete. A range that ends before the file's end would so wait for the whole file:
the route relays it instead (:func:`tracker.proxy.decisions.on_miss`, docs/architecture.md,
"The release rule").
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import AsyncGenerator, Callable
from functools import partial

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.cache.store import Cache
from tracker.config.schema import TargetGroup
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError, UpstreamError
from tracker.objectstore.locks import Holder, Lock
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.objectstore.tier import let_go
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.observability.metrics import ByteSource
from tracker.proxy.ask import Ask
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.cachefill import fill
from tracker.proxy.decisions import Asked, Claimed, Start, prefetches, start_prefetch
from tracker.proxy.failover import head_due
from tracker.proxy.pumps import EarlyBody
from tracker.proxy.storedcopies import served_from_disk
from tracker.proxy.transfers import Head, Launcher, Pump, early_answer, head_answer
from tracker.serving.fileresponse import ChunkBudget
from tracker.serving.httpanswer import Answer, text_answer
from tracker.serving.ranges import UNSATISFIABLE, parse_range
from tracker.serving.responsebodies import Body, GeneratorBody
from tracker.zerocopy.connection import Connection, FilePiece, piece_size

log = logging.getLogger("tracker.streamer")

Started = Refresh | Answer | None
#: What a refresh's own stream asks its sources: the whole file.
WHOLE_FILE = Ask(Asked("GET"), {})


#: A refresh begun: the refresh, its pump still to start, the event set once it asks a source.
Begun = tuple[Refresh, Pump, trio.Event | None]
#: A file's key while its bucket lock is asked for: cache root, group, file name.
SharedKey = tuple[str, str, str]


class Refreshes:
    """Starts, joins and reads the disk cache's refreshes; see the module doc."""

    def __init__(
        self, launcher: Launcher, objects: ObjectPath | None, budget: ChunkBudget | None = None
    ) -> None:
        self._launcher = launcher
        self._objects = objects
        #: The read memory of answers from the disk cache (a followed refresh promoted).
        self._budget = budget
        #: Files whose bucket lock this replica is asking for (a second request waits).
        self._claiming: dict[SharedKey, trio.Event] = {}

    async def settled(self, key: SharedKey) -> None:
        """Return once no request here is asking for the bucket's lock of the file."""
        while (claiming := self._claiming.get(key)) is not None:
            await claiming.wait()

    async def claim(self, key: SharedKey) -> Lock | Holder | ObjectInfo | None:
        """The bucket's lock of a file about to be refreshed here (None: no bucket, or it
        cannot be used), its live holder, or the object that landed meanwhile. Other
        requests for the file wait meanwhile."""
        if self._objects is None:
            return None
        self._claiming[key] = done = trio.Event()
        try:
            return await self._objects.claim(key[1], key[2])
        finally:
            del self._claiming[key]
            done.set()

    async def join_shared(self, refresh: Refresh, ask: Ask) -> Answer | None:
        """Read the running refresh (counted as a shared reader); None when it ended
        unread."""
        return self._counted(await self.read(refresh, ask))

    async def join_behind(self, refresh: Refresh, ask: Ask) -> Answer | None:
        """A ``Range`` GET read from a background refresh's temp file (the range's first
        byte is written); None when it ended. Its bytes count as the cache's served bytes
        (they counted nowhere: aria2c's and axel's ranges are this path), and go out
        zero-copy where the connection allows, as every reader of a temp file's do."""
        answer = await join(
            refresh,
            "GET",
            ask.asked.range,
            served=self._launcher.served("cache"),
            connection=ask.connection,
        )
        return self._counted(answer)

    def _counted(self, answer: Answer | None) -> Answer | None:
        """``answer`` of a shared reader, counted as one when there is one."""
        metrics = self._launcher.metrics
        if answer is not None and metrics is not None:
            metrics.count_shared_reader()
        return answer

    async def start_and_read(
        self,
        group: TargetGroup,
        archive: ArchiveName,
        cache: Cache,
        step: Start,
        lock: Lock | None,
        ask: Ask,
    ) -> tuple[Answer | None, Refresh | None]:
        """Start the refresh of ``archive`` as ``step`` says, with its early head, and read
        it. The answer (None: a refresh of the file runs already, or the one started ended
        unread), and the refresh read when one was."""
        if step.early:
            begun = await self._begun(group, archive, cache, step, lock)
            started = None if begun is None else await self._start_early(begun, archive, step, ask)
        else:
            started = await self.start(group, archive, cache, step, lock)
        if not isinstance(started, Refresh):
            return started, None  # None (a refresh runs), 502/503, uncached, early
        return await self.read(started, ask, step.origin), started

    async def read(self, refresh: Refresh, ask: Ask, origin: ByteSource = "cache") -> Answer | None:
        """``ask`` answered from the temp file of ``refresh``; None when it cannot be (the
        route then asks whether it was promoted meanwhile). Its bytes count as ``origin``'s."""
        return await join(
            refresh,
            ask.method,
            ask.asked.range,
            served=self._launcher.served(origin),
            connection=ask.connection,
        )

    async def start(
        self, group: TargetGroup, archive: ArchiveName, cache: Cache, step: Start, lock: Lock | None
    ) -> Started:
        """Begin a detached refresh of ``archive`` as ``step`` says (kept to its end or not,
        registered or not, whether a client waits), under the bucket's ``lock`` when one
        was got (the refresh is then uploaded, which releases it); once it is open, the
        Refresh.

        None when a refresh of the file already runs, or (no client waits) it could not open.
        For a client, an Answer when the upstream failed (502/503) or the refresh could
        not open (no room): the client is then streamed uncached.
        """
        begun = await self._begun(group, archive, cache, step, lock)
        if begun is None:
            return None
        return await self._open(begun[0], begun[1], client=step.client)

    async def prefetch(self, group: TargetGroup, cache: Cache, archive: ArchiveName) -> bool:
        """Refresh ``archive`` with no client when :func:`~tracker.proxy.decisions.prefetches`
        says so and, with a bucket, the bucket has no copy and no other replica holds its
        lock; whether it was promoted (see
        :meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`)."""
        name = archive.file_name
        best = self._launcher.is_best(group.group, name)
        found = self._launcher.index.find_file(group.group, name) if best else []
        cached = bool(found) and await _cached(cache, group.group, name)
        if not prefetches(best, found, cached):
            return False
        lock = None
        if self._objects is not None:
            if await self._objects.tier.lookup(group.group, name) is not None:
                return False  # clients are sent to the bucket's copy
            claim = await self.claim((cache.root, group.group, name))
            if claimed_of(claim) == "holder":  # another replica refreshes the file
                return False
            lock = claim if isinstance(claim, Lock) else None
        step = start_prefetch(locked=lock is not None)
        started = await self.start(group, archive, cache, step, lock)
        if not isinstance(started, Refresh):
            return False
        return await _prefetched(started, cache, group.group, name)

    async def _start_early(
        self, begun: Begun, archive: ArchiveName, step: Start, ask: Ask
    ) -> Started:
        """:meth:`start` (its refresh ``begun``) for a client that is sent an early head
        (README.md#clients) when the refresh has not opened within ``early_head_after`` of
        asking a source (not while it waits in a source's queue): the start goes on in the
        background, and the early head's body follows the refresh once it is open (or
        breaks when it never does). A fast start answers as :meth:`start` does."""
        done = trio.Event()
        outcome: list[Started] = []

        async def opening() -> None:
            try:
                outcome.append(await self._open(begun[0], begun[1], client=True))
            except Exception:  # a bug must not take the transfers nursery down
                log_folded(log, "error", "stream_failed", file=archive.file_name, exc_info=True)
                outcome.append(None)
            finally:
                if not outcome:  # cancelled: the transfers end, the tracker is stopping
                    outcome.append(text_answer(503, "the tracker is stopping"))
                done.set()

        if not self._launcher.transfers.spawn(opening):
            begun[0].shut()
            begun[0].abort()
            return text_answer(503, "the tracker is stopping")
        async with trio.open_nursery() as nursery:

            async def head_is_due() -> None:
                # Not while the refresh waits in a source's queue ("Source limits").
                await head_due(begun[2], self._launcher.settings.early_head_after)
                nursery.cancel_scope.cancel()

            nursery.start_soon(head_is_due)
            await done.wait()
            nursery.cancel_scope.cancel()
        if done.is_set():
            return outcome[0]

        # The early head's client is the refresh's reader from its head on, until its join
        # (which counts it from then) or its leaving: leaving first, it may be the last
        # reader, and a refresh not to be kept (``cache_complete_on_disconnect: false``)
        # then stops.
        refresh, counted = begun[0], [True]
        refresh.reader_joined()

        def let_go() -> None:
            if counted:
                counted.clear()
                refresh.reader_left()

        async def resolve() -> Body:
            await done.wait()
            try:
                return await self._follow(outcome[0], step.early, step.origin, ask)
            finally:
                let_go()  # joined (counted by its join now), or no body follows

        return early_answer(step.early, EarlyBody(resolve, on_finish=let_go))

    async def _follow(self, started: Started, size: int, origin: ByteSource, ask: Ask) -> Body:
        """The body that follows an early head of ``size`` bytes: the refresh's (or,
        when it was checked and promoted before the body began, the cached file's), or the
        uncached stream's when the refresh could not open; UpstreamError otherwise."""
        if isinstance(started, Refresh):
            served = self._launcher.served(origin)
            response = await join(started, "GET", None, served=served, connection=ask.connection)
            if response is None and started.verified:
                # A small or fast refresh ended while its head went out: the copy is whole
                # and checked on disk now, so the body comes from there.
                response = await self._promoted(started.final, ask)
        else:
            response = started
        if response is None:
            raise UpstreamError("the cache refresh this download followed ended")
        length = response.headers.get("content-length")
        if response.status != 200 or length != str(size) or not isinstance(response.body, Body):
            raise UpstreamError(f"the source answered {response.status} after an early head")
        return response.body

    async def _promoted(self, path: str, ask: Ask) -> Answer | None:
        """The promoted copy at ``path`` as the answer to ``ask``; None when it went again."""
        try:
            answer = await served_from_disk(
                path, ask, "cache", self._launcher.metrics, self._budget, None
            )
        except OSError:
            return None
        self._launcher.count("cache_hit")
        return answer

    async def _begun(
        self,
        target: TargetGroup,
        archive: ArchiveName,
        cache: Cache,
        step: Start,
        lock: Lock | None,
    ) -> Begun | None:
        """:meth:`_begin`; when it begins nothing, ``lock`` is released here, shielded
        (:func:`~tracker.objectstore.tier.let_go`): not in a background task, which a
        stopping tracker does not start and cancels at once (docs/replicas.md)."""
        begun = self._begin(target, archive, cache, step, lock)
        if begun is None and lock is not None:
            await let_go(lock)
        return begun

    def _begin(
        self,
        target: TargetGroup,
        archive: ArchiveName,
        cache: Cache,
        step: Start,
        lock: Lock | None,
    ) -> Begun | None:
        """Claim the refresh of the file and, when ``step`` says so, register it for
        readers, synchronously (a request arriving next finds it); its pump, still to start,
        and the event set once it asks a source (``StreamJob.slotted``).
        None: one runs, or the tracker is stopping (the caller releases ``lock``:
        :meth:`_begun`). Unregistered, only its starter reads it (``cache_share_inflight``
        off). With the bucket's lock, the refresh's file is also uploaded to the bucket
        (:meth:`tracker.proxy.bucketcopies.ObjectPath.upload`, which releases the lock).
        """
        launcher, transfers = self._launcher, self._launcher.transfers
        group, name = target.group, archive.file_name
        refresh = cache.begin_refresh(group, name)
        if refresh is None or (lock is not None and not transfers.accepting):
            if refresh is not None:
                refresh.abort()
            return None
        found = launcher.index.find_file(group, name)
        job = launcher.job(target, WHOLE_FILE, archive, found)
        job = attrs.evolve(
            job, refresh=refresh, still_wanted=partial(launcher.still_wanted, group, name)
        )
        refresh.share(job.stop, keep=step.keep, register=step.register)
        if lock is not None and self._objects is not None:
            transfers.spawn(self._objects.upload, refresh, lock, group, name)
        return refresh, partial(fill, job, fallback=step.client), job.slotted

    async def _open(self, refresh: Refresh, pump: Pump, *, client: bool) -> Started:
        """Start a begun refresh's pump; see :meth:`start` for what it returns."""
        try:
            head = await self._launcher.start(pump, refresh=refresh, client=client)
        except BaseException:
            refresh.shut()
            raise
        if isinstance(head, Head) and head.refresh is not None:
            return refresh  # open, announced to its readers by its pump
        refresh.shut()
        if not client:
            return None
        if isinstance(head, Answer):
            return head
        self._launcher.count("proxy")  # the refresh could not open (no room): streamed uncached
        return head_answer(head)


async def _prefetched(refresh: Refresh, cache: Cache, group: str, name: str) -> bool:
    """Wait for a prefetch's refresh to end; whether it was promoted. Cancelled (the service
    stopping), it stops the refresh unless clients read it."""
    log_event(log, "info", "cache_prefetch_started", group=group, file=name)
    try:
        await refresh.ended.wait()
    except BaseException:
        if refresh.readers == 0:
            refresh.shut()
            if refresh.stop is not None:
                refresh.stop.cancel()  # nobody waits for this refresh
        raise
    return refresh.verified and not refresh.failed and await _cached(cache, group, name)


async def _cached(cache: Cache, group: str, name: str) -> bool:
    """Whether ``name`` of ``group`` is cached, servable (looked at off the event loop)."""
    try:
        return await cache.has_copy(group, name)
    except RequestError:  # a name or group that cannot be cached, or a hung directory:
        return True  # nothing to prefetch


def claimed_of(claim: Lock | Holder | ObjectInfo | None) -> Claimed:
    """What asking the bucket for a file's lock gave, as the decisions know it."""
    if isinstance(claim, Holder):
        return "holder"
    if isinstance(claim, ObjectInfo):
        return "stored"
    return "none" if claim is None else "lock"


# -- the readers of a refresh ---------------------------------------------------------------

#: Bytes read per ``os.pread`` (as for cached files).
CHUNK_SIZE = 4 * 1024 * 1024


def _nothing(*_args: object) -> None:
    return None


async def join(
    refresh: Refresh,
    method: str,
    range_header: str | None,
    *,
    served: Callable[[int], None] = _nothing,
    chunk_size: int = CHUNK_SIZE,
    connection: Connection | None = None,
) -> Answer | None:
    """Answer a GET (``range_header`` honoured) from ``refresh``'s temp file: the one place
    a reader joins a refresh (docs/architecture.md, "One refresh, one owner").

    Waits until the refresh is open (:meth:`Refresh.announce`). Returns None when it cannot
    be read (it failed or ended meanwhile: the caller serves the request another way);
    otherwise a 200, 206 or 416 response whose body follows the refresh. With the client's
    zero-copy ``connection`` the bytes on disk go out with sendfile, else through
    ``os.pread``. Cancellation (client gone) closes what was opened.
    """
    if method != "GET":
        return None
    await refresh.ready.wait()
    while refresh.repairing:  # its readers were cut off: the repaired copy, or none
        await refresh.wait_progress()
    if not refresh.joinable or not refresh.temp:
        return None
    try:
        fd = await trio.to_thread.run_sync(_open_reader, refresh.temp)
    except OSError:
        return None  # promoted or removed meanwhile
    response, offset, length = _plan(refresh.headers, refresh.size, range_header)
    # Before any checkpoint: the descriptor has an owner.
    body = SharedBody(fd, refresh, offset, length, chunk_size, served, connection)
    if refresh.failed or length == 0:
        body.release()
        return None if refresh.failed else response
    response.body = body
    return response


def _open_reader(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    if hasattr(os, "posix_fadvise"):  # Linux: larger readahead for sequential reads
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def _plan(
    upstream_headers: dict[str, str], size: int, range_header: str | None
) -> tuple[Answer, int, int]:
    """Status and headers for a reader, and the bytes to send (offset, length)."""
    headers = dict(upstream_headers)
    headers["accept-ranges"] = "bytes"
    headers["content-length"] = str(size)
    wanted = parse_range(range_header, size)
    status, offset, length = 200, 0, size
    if wanted is UNSATISFIABLE:
        status, length = 416, 0
        headers.update({"content-range": f"bytes */{size}", "content-length": "0"})
    elif wanted is not None:
        status, offset, length = 206, wanted.start, wanted.length
        headers["content-range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
        headers["content-length"] = str(length)
    return Answer(status, headers), offset, length


def _collected(fd: int, token: trio.lowlevel.TrioToken, left: Callable[[], None]) -> None:
    os.close(fd)
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(left)


class SharedBody(GeneratorBody):
    """``length`` bytes from ``offset`` of a refresh's temp file, read from the descriptor
    ``fd`` and sent as they arrive: with sendfile pieces when ``connection`` (the client's
    zero-copy connection) is given. ``served`` is told the bytes of each piece sent.

    The body holds its reader's place among the refresh's readers, and its descriptor:
    released exactly once, when it ends, explicitly (:meth:`release`), or when it is
    collected unsent (the client left before the server started the body,
    docs/architecture.md#traps-of-the-stack, 4), which may happen in another thread: the
    reader count is then updated through the trio token.
    """

    def __init__(
        self,
        fd: int,
        refresh: Refresh,
        offset: int,
        length: int,
        chunk_size: int,
        served: Callable[[int], None],
        connection: Connection | None = None,
    ) -> None:
        self.fd = fd
        self._refresh = refresh
        self._offset, self._length, self._chunk_size = offset, length, chunk_size
        self._served = served
        self._connection = connection
        refresh.reader_joined()
        token = trio.lowlevel.current_trio_token()
        self._finalizer = weakref.finalize(self, _collected, fd, token, refresh.reader_left)

    def release(self) -> None:
        """Close the descriptor and leave the readers (idempotent)."""
        if self._finalizer.detach() is not None:
            os.close(self.fd)
            self._refresh.reader_left()

    async def _finish(self, error: BaseException | None) -> None:
        self.release()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        position, end = self._offset, self._offset + self._length
        while position < end:
            limit = await _readable(self._refresh, position, end)
            connection = self._connection
            size = piece_size(limit - position) if connection is not None else 0
            if size and connection is not None:
                piece = FilePiece(size, fd=self.fd, offset=position)
                yield connection.stage(piece)
                connection.finish(piece, self._served)
            else:
                size = min(self._chunk_size, limit - position)
                # Not abandonable on cancel (trio's default): the descriptor is closed only
                # after the thread has finished reading from it.
                chunk = await trio.to_thread.run_sync(os.pread, self.fd, size, position)
                if not chunk:
                    raise UpstreamError(f"the refresh's file ended at byte {position}")
                size = len(chunk)
                yield chunk
            position += size
            self._served(size)


async def _readable(refresh: Refresh, position: int, end: int) -> int:
    """How far (up to ``end``) a reader at ``position`` may read; waits for progress.
    Raises UpstreamError when the refresh failed."""
    while True:
        if refresh.failed:
            raise UpstreamError("the cache refresh this download followed failed")
        limit = refresh.range_end(end)  # a range's own end waits for the check too
        if limit > position:
            return limit
        await refresh.wait_progress()
