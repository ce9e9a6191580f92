"""What the tracker learned, kept in the cache dir and in the bucket
(docs/http-api.md#what-the-tracker-learned).

:class:`Learning` reads the state file (``{cache dir}/.learned.json``) and every replica's
object (``{prefix}.learned/{replica}.json``) at start, merges them into the index and the
rejections (:mod:`tracker.learning.learned`), and every :data:`SYNC_EVERY` seconds writes its
own (the file atomically: :func:`tracker.core.smallfiles.write_atomically`) and merges the
others' again; once more when it stops. A file or object that cannot be read costs itself,
an entry that cannot costs itself (logged, counted in ``learned_dropped_total``), never the
start or the sync; the file is read with :func:`tracker.core.smallfiles.read_small` (no
link, no FIFO, nothing but a small regular file) in a worker thread a stop does not wait
for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs
import trio

from tracker.config.schema import Config
from tracker.core.smallfiles import read_small, write_atomically
from tracker.errors import StateError, StoreError
from tracker.learning.learned import (
    MAX_BYTES,
    Learned,
    decode,
    encode,
    gather,
    merge,
    plausible,
    restore,
)
from tracker.observability.logs import log_event
from tracker.observability.metrics import LearnedLoss, Metrics
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.sourcehistory import Rejections

if TYPE_CHECKING:
    # not at run time: a tracker without an object store never loads botocore
    from tracker.objectstore.bucket import Bucket

log = logging.getLogger("tracker.learned")

FILE_NAME = ".learned.json"
OBJECTS = ".learned/"
#: Seconds between two writes (and reads of the other replicas' objects).
SYNC_EVERY = 60.0
#: Replicas' objects read at most.
MAX_OBJECTS = 64
#: Longest the last write may take while the tracker stops.
FINAL_WRITE = 5.0


@attrs.define(eq=False)
class Learning:
    """Keeps what ``index`` and ``rejections`` learned; started by the service (:meth:`run`).

    Times are on the index's clock (the one of what it keeps), ``wall`` the wall clock;
    ``bucket`` the shared store (None: none); ``replica`` names this replica's object
    (default: from ``replica_url`` or the host name); ``metrics`` counts what could not be
    read; ``every``: seconds between syncs (None: :data:`SYNC_EVERY`, read when it runs).
    """

    _config: Callable[[], Config]
    _index: Index
    _rejections: Rejections
    _bucket: Bucket | None = None
    _wall: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    _every: float | None = attrs.field(default=None, kw_only=True)
    _replica: str = attrs.field(default="", kw_only=True)
    _metrics: Metrics | None = attrs.field(default=None, kw_only=True)
    #: The targets the config names now (the document names them without credentials:
    #: :func:`tracker.learning.learned.restore`).
    _named: Callable[[], Iterable[TargetKey]] = attrs.field(default=tuple, kw_only=True)
    #: Writes completed (tests wait on it).
    saved: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._replica = self._replica or replica_name(self._config())

    async def _restore_guarded(self) -> None:
        """:meth:`restore`, whose unforeseen failure (a document no rule refused) is logged
        and costs that restore only: this replica's own state is saved all the same."""
        try:
            await self.restore()
        except Exception as exc:
            log_event(log, "error", "learned_restore_error", exc_info=exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore, then sync every ``every`` seconds until cancelled; a last write then."""
        await self._restore_guarded()
        task_status.started()
        try:
            while True:
                await trio.sleep(SYNC_EVERY if self._every is None else self._every)
                await self._restore_guarded()
                await self.save()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + FINAL_WRITE
                await self.save()

    async def restore(self) -> None:
        """Merge the state file's and the replicas' documents into the running state."""
        found = await self._read_file()
        found += await self._read_objects()
        if found:
            hold, moment = self._config().reject_for, self._moment()
            kept = [plausible(doc, wall=moment["wall"], longest_hold=hold) for doc in found]
            pairs = zip(found, kept, strict=True)
            future = sum(after.dropped - before.dropped for before, after in pairs)
            if future:  # times no replica's clock could have written (or a longer hold)
                log_event(log, "warning", "learned_entries_dropped", source="ahead", count=future)
                self._count("entry", future)
            restore(
                merge(kept),
                self._index,
                self._rejections,
                **moment,
                longest_hold=hold,
                named=self._named(),
            )

    async def save(self) -> None:
        """Write what is learned now to the state file and this replica's object."""
        data = encode(gather(self._index, self._rejections, **self._moment()))
        path = self._path()
        if path:
            try:
                # Abandoned when cancelled: a stop never waits on a hung disk past its grace.
                await trio.to_thread.run_sync(_write, path, data, abandon_on_cancel=True)
            except OSError as exc:
                log_event(log, "warning", "learned_not_saved", path=path, error=exc)
        if self._bucket is not None:
            try:
                await self._bucket.put(f"{self._objects()}{self._replica}.json", data)
            except StoreError as exc:
                log_event(log, "warning", "learned_not_stored", error=exc)
        self.saved += 1

    def _moment(self) -> dict[str, float]:
        # The index's clock: the one clock of what it keeps (throughputs, rejections).
        return {"now": self._index.clock(), "wall": self._wall()}

    def _path(self) -> str:
        root = self._config().proxy_snapshot_cache_dir
        return os.path.join(root, FILE_NAME) if root else ""

    def _objects(self) -> str:
        store = self._config().object_store
        return f"{store.prefix if store else ''}{OBJECTS}"

    async def _read_file(self) -> list[Learned]:
        path = self._path()
        if not path:
            return []
        try:
            # Abandoned when cancelled: a stop never waits on a hung disk past its grace.
            data = await trio.to_thread.run_sync(
                read_small, path, MAX_BYTES, abandon_on_cancel=True
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            log_event(log, "warning", "learned_unreadable", path=path, error=exc)
            self._count("document")
            return []
        return await self._decoded(data, path)

    async def _read_objects(self) -> list[Learned]:
        if self._bucket is None:
            return []
        found = []
        try:
            listed = await self._bucket.list_objects(self._objects())
            # the newest first: documents of replicas gone (a container made again under a
            # new host name writes a new one) stay, and in key order 64 of them kept the
            # live replicas' out for good
            listed.sort(key=lambda info: info.last_modified, reverse=True)
            for info in listed[:MAX_OBJECTS]:
                if info.size <= MAX_BYTES:
                    data = await self._bucket.get_small(info.key, MAX_BYTES + 1)
                    found += await self._decoded(data or b"", info.key)
                else:
                    log_event(log, "warning", "learned_unreadable", source=info.key, size=info.size)
                    self._count("document")
        except StoreError as exc:
            log_event(log, "warning", "learned_unreadable", error=exc)
        return found

    async def _decoded(self, data: bytes, where: str) -> list[Learned]:
        """``data`` decoded in a worker thread (up to 4 MiB of another replica's JSON, up to
        64 of them each minute: parsed on the event loop, each held it for a quarter of a
        second), or nothing (logged, counted) when it is not a state document; entries it
        drops are logged and counted too."""
        try:
            learned = await trio.to_thread.run_sync(decode, data)
        except StateError as exc:
            log_event(log, "warning", "learned_unreadable", source=where, error=exc)
            self._count("document")
            return []
        if learned.dropped:
            log_event(
                log, "warning", "learned_entries_dropped", source=where, count=learned.dropped
            )
            self._count("entry", learned.dropped)
        return [learned]

    def _count(self, what: LearnedLoss, count: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.count_learned_dropped(what, count)


def replica_name(config: Config) -> str:
    """A name for this replica's object, stable across restarts."""
    store = config.object_store
    seed = (store.replica_url if store else "") or socket.gethostname()
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def _write(path: str, data: bytes) -> None:
    """Write the state file (blocking): its directory made if missing, then atomically,
    readable by the tracker's user only (it names the sources and what they did)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, data, mode=0o600)
