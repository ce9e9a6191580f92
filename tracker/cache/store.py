"""The disk cache of proxy mode: the newest full and incremental archive of each group (§8).

Layout: ``{root}/{group}/{archive name}``; a refresh writes ``{root}/{group}/.tmp-{name}.{rand}``
and renames it into place when complete. Names that come from requests are validated by
:meth:`Cache.path_for` before any file system access, and the resolved path must lie inside
``root``: nothing outside the cache directory is ever read or written.

A refresh (one per file at a time, see :meth:`Cache.begin_refresh`) goes through::

    begin_refresh ─► Refresh.open(size) ─► write(chunk)… ─► commit()   (promoted)
                                  │                 │
                                  └── None/False ───┴──────► abort()     (temp file removed)

``abort`` is synchronous and idempotent, so it can sit in any ``finally``, under cancellation
too. Blocking file work runs in worker threads that are not abandoned on cancellation: a
descriptor is never closed while a thread still uses it.

A refresh also exposes its progress to readers of the growing temp file (shared in-flight
downloads, :mod:`tracker.proxy.sharing`): ``written`` bytes so far of ``size``,
:meth:`Refresh.wait_progress` to sleep until that changes, and how it ended (``ended`` is set
by ``abort``, which ends every refresh; ``verified`` tells that every byte arrived and was
checked, promoted or not).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from functools import partial
from typing import cast

import attrs
import outcome
import trio

from tracker.core.logs import log_event
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import CacheError, RequestError
from tracker.files.threads import Background

log = logging.getLogger("tracker.cache")

TEMP_PREFIX = ".tmp-"
# A group name as the config allows it, minus names starting with a dot ("." and ".." match
# [A-Za-z0-9_.-]+ and would leave the cache directory; dot files are our temp files).
_GROUP_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

#: Dirty bytes after which a refresh starts the kernel's writeback of what it wrote.
WRITEBACK_EVERY = 32 * 1024 * 1024
#: ``write(fd, data) -> bytes written``, as :func:`os.write`; injectable for fault tests.
#: ``os.pwrite``'s shape: (fd, data, offset) -> bytes written.
Writer = Callable[[int, bytes | memoryview, int], int]
#: Writes of one refresh in flight at once (each a chunk of up to ProxySettings.read_size).
WRITE_WINDOW = 4
#: Free bytes of the file system holding a directory.
FreeSpace = Callable[[str], int]


def disk_free(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    return shutil.disk_usage(path).free


class Cache:
    """Archives on disk under ``root``, one refresher per file.

    ``free_space``, ``write`` and ``sync`` (the temp file's fsync) are injectable (tests
    simulate a full disk or a slow one with them);
    ``min_free`` bytes are kept free on top of a refresh's announced length;
    ``writeback_every`` dirty bytes start the kernel's writeback of a refresh's temp file;
    ``on_size(total)`` is called with the bytes of archives cached after every change.
    """

    def __init__(
        self,
        root: str,
        *,
        free_space: FreeSpace = disk_free,
        write: Writer = os.pwrite,
        sync: Callable[[int], None] = os.fsync,
        min_free: int = 0,
        on_size: Callable[[int], None] | None = None,
        writeback_every: int = WRITEBACK_EVERY,
    ) -> None:
        if not os.path.isabs(root):
            raise ValueError(f"cache root must be absolute: {root!r}")
        self.root = os.path.realpath(root)
        self._free_space = free_space
        self._write = write
        self._sync = sync
        self._min_free = min_free
        self._on_size = on_size
        self._writeback_every = writeback_every
        self._refreshing: dict[tuple[str, str], Refresh] = {}

    # -- names and lookups ---------------------------------------------------------------

    def group_dir(self, group: str) -> str:
        """``{root}/{group}`` for a valid group name; RequestError(400) otherwise."""
        if not _GROUP_RE.fullmatch(group):
            raise RequestError(400, "malformed group name")
        return self._inside(os.path.join(self.root, group))

    def path_for(self, group: str, name: str) -> str:
        """The cache path of archive ``name`` of ``group``, validated.

        Raises RequestError: 400 for a malformed group, 404 for a name that is not a canonical
        archive name; 400 if the path would resolve outside the root (a symlink planted in
        the cache directory).
        """
        parsed = parse_archive_name(name)
        if parsed is None or parsed.file_name != name:
            raise RequestError(404, "not a snapshot archive name")
        return self._inside(os.path.join(self.group_dir(group), name))

    def _inside(self, path: str) -> str:
        real = os.path.realpath(path)
        if os.path.commonpath([self.root, real]) != self.root or real == self.root:
            raise RequestError(400, "path outside the cache directory")
        return real

    def lookup(self, group: str, name: str) -> str | None:
        """The path of archive ``name`` of ``group`` when it is cached, else None.

        Validates like :meth:`path_for` (and raises the same RequestError).
        """
        path = self.path_for(group, name)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    async def wait_promotion(self, group: str, name: str, longest: float) -> None:
        """Wait (at most ``longest`` seconds) while a refresh of ``name`` of ``group`` has all
        its bytes and is being synced and renamed into place.

        Its clients got their last byte before that, so a request right after one of them
        waits here and is then a cache hit, instead of starting a second upstream transfer.
        """
        refresh = self._refreshing.get((group, name))
        if refresh is not None and refresh.verified:
            with trio.move_on_after(longest):
                await refresh.ended.wait()

    def is_refreshing(self, group: str, name: str) -> bool:
        """True while a refresh of ``name`` of ``group`` is running."""
        return (group, name) in self._refreshing

    # -- start-up and accounting ---------------------------------------------------------

    def startup_cleanup(self) -> int:
        """Create the root if missing and remove leftover temp files; return how many.

        Called once before the cache is used (nothing else writes then). Errors are logged,
        not raised: a cache that cannot be cleaned still serves what it holds.
        """
        try:
            os.makedirs(self.root, exist_ok=True)
            groups = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log_event(log, "error", "cache_unusable", root=self.root, error=exc)
            return 0
        removed = 0
        for group in groups:
            for entry in _scan(group.path):
                if entry.name.startswith(TEMP_PREFIX) and _unlink(entry.path):
                    removed += 1
        if removed:
            log_event(log, "info", "cache_temp_removed", root=self.root, count=removed)
        self._report_size()
        return removed

    def total_size(self) -> int:
        """Bytes of archives in the cache (temp files excluded)."""
        total = 0
        for group in _scan(self.root):
            if group.is_dir(follow_symlinks=False):
                for entry in _scan(group.path):
                    if _is_archive_entry(entry):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def _report_size(self) -> None:
        if self._on_size is not None:
            # A file vanishing under the scan raises OSError; the next change reports again.
            with contextlib.suppress(OSError):
                self._on_size(self.total_size())

    # -- refreshes -----------------------------------------------------------------------

    def begin_refresh(self, group: str, name: str) -> Refresh | None:
        """Register the single refresher of ``name`` of ``group``; None if one is running.

        Synchronous, so a lookup followed by this call cannot race another request. The
        returned :class:`Refresh` must end with ``commit()`` or ``abort()``.
        """
        key = (group, name)
        if key in self._refreshing:
            return None
        refresh = Refresh(self, group, name, self.path_for(group, name))
        self._refreshing[key] = refresh
        return refresh

    def _release(self, refresh: Refresh) -> None:
        key = (refresh.group, refresh.name)
        if self._refreshing.get(key) is refresh:
            del self._refreshing[key]

    def _reserved(self, exclude: Refresh) -> int:
        """Bytes other running refreshes will still write (not yet taken from the disk)."""
        return sum(r.remaining for r in self._refreshing.values() if r is not exclude)


@attrs.define
class _Write:
    """One write of a refresh: where the file ends once it is done, and its thread."""

    end: int
    finished: bool = False
    background: Background[None] = attrs.field(init=False)


class Refresh:
    """One refresh of one cached file: temp file, writes, then promotion or removal."""

    def __init__(self, cache: Cache, group: str, name: str, final: str) -> None:
        self.cache = cache
        self.group = group
        self.name = name
        self.final = final
        self.temp = ""
        self.size = 0
        self.written = 0
        self._flushed = 0  # bytes handed to the kernel's writeback so far
        #: Set when ``open`` found too little free disk (as opposed to an unwritable cache).
        self.no_space = False
        #: Set (by :meth:`mark_verified`) once all ``size`` bytes are written and the upstream
        #: body was checked complete; readers may then send every byte, promoted or not.
        self.verified = False
        #: Set when the refresh is over, whatever its end (by :meth:`abort`).
        self.ended = trio.Event()
        self._progress = trio.Event()
        self._fd: int | None = None
        #: Writes in flight, oldest first (at most WRITE_WINDOW).
        self._writes: collections.deque[_Write] = collections.deque()
        self._queued = 0  # bytes handed to write threads so far
        self._write_error: OSError | None = None
        self._writeback: Background[None] | None = None
        self._done = False

    @property
    def remaining(self) -> int:
        """Announced bytes not written yet."""
        return max(0, self.size - self.written)

    @property
    def failed(self) -> bool:
        """True once the refresh ended without all of its bytes."""
        return self.ended.is_set() and not self.verified

    def readable(self) -> int:
        """How many bytes from the start a reader of the temp file may send now.

        Everything once the refresh is verified (every byte written, the upstream body
        checked complete); before that, what was written except the last byte: a reader's
        last byte waits until the end is known, so that it never completes a body the refresh
        then finds broken. It does not wait for the fsync and rename (a request arriving then
        waits for them instead: :meth:`Cache.wait_promotion`).
        """
        if self.verified:
            return self.size
        return min(self.written, max(0, self.size - 1))

    async def wait_progress(self) -> None:
        """Sleep until more bytes were written or the refresh ended (returns at once if it
        has ended). Cancellation just ends the wait."""
        if not self.ended.is_set():
            await self._progress.wait()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def mark_verified(self) -> None:
        """Record that all ``size`` bytes were written and the upstream body is complete."""
        if self.written == self.size:
            self.verified = True
            self._notify()

    async def open(self, size: int) -> bool:
        """Make room for ``size`` bytes and create the temp file; False means "stream uncached".

        Not enough free space (after removing stale files of the same group and kind) or a
        cache directory that cannot be written end the refresh (it is released) and return
        False. Cancellation aborts the refresh.
        """
        self.size = size
        # Read here, not in the worker thread: the registry changes in trio's thread.
        needed = size + self.cache._min_free + self.cache._reserved(self)
        try:
            self._fd = await trio.to_thread.run_sync(self._prepare, needed)
        except BaseException:
            self.abort()
            raise
        self.cache._report_size()  # stale files may have been evicted to make room
        if self._fd is None:
            self.abort()
            return False
        return True

    def _prepare(self, needed: int) -> int | None:
        directory = os.path.dirname(self.final)
        free_space = self.cache._free_space
        try:
            os.makedirs(directory, exist_ok=True)
            if free_space(directory) < needed:
                _evict(directory, self.name, _kind_of(self.name))
                if free_space(directory) < needed:
                    self.no_space = True
                    log_event(
                        log,
                        "warning",
                        "cache_no_space",
                        group=self.group,
                        file=self.name,
                        size=self.size,
                    )
                    return None
            self.temp = os.path.join(directory, f"{TEMP_PREFIX}{self.name}.{secrets.token_hex(4)}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            return os.open(self.temp, flags, 0o644)
        except OSError as exc:
            log_event(
                log,
                "error",
                "cache_refresh_unwritable",
                group=self.group,
                file=self.name,
                error=exc,
            )
            self.temp = ""
            return None

    async def write(self, data: bytes) -> None:
        """Append ``data`` to the temp file in a worker thread, overlapping the caller's next
        upstream reads: returns once this write started, waiting first while WRITE_WINDOW
        writes are in flight (so a slow page cache or disk slows the caller, never costs
        unbounded memory). ``written`` grows (and readers wake) as the writes complete, in
        order. Raises CacheError (disk full, I/O error) for an earlier write; the caller then
        aborts."""
        while len(self._writes) >= WRITE_WINDOW:
            await self._writes[0].background.wait()
        self._raise_write_error()
        if self._fd is None:
            raise CacheError("refresh is not open")
        self._start_writeback()
        offset, self._queued = self._queued, self._queued + len(data)
        # The thread writes through its own descriptor: abort() may close ours meanwhile.
        fd = os.dup(self._fd)
        entry = _Write(self._queued)
        entry.background = Background(
            partial(self._write_chunk, fd, data, offset), on_done=partial(self._wrote, entry)
        )
        self._writes.append(entry)

    def _start_writeback(self) -> None:
        """Every WRITEBACK_EVERY bytes written, ask the kernel to start writing them out.

        Otherwise a whole archive stays dirty in the page cache for the final fsync (seconds
        per GiB). In a thread of its own, one at a time: sync_file_range blocks while the
        disk's queue is full, and the writes (the client's pace) must not wait for the disk.
        """
        if self.written - self._flushed < self.cache._writeback_every or self._fd is None:
            return
        if self._writeback is not None and not self._writeback.done():
            return
        fd, start, length = os.dup(self._fd), self._flushed, self.written - self._flushed
        self._flushed = self.written
        self._writeback = Background(partial(_writeback_and_close, fd, start, length))

    async def flush(self) -> None:
        """Wait for every write in flight; raises CacheError when one failed."""
        while self._writes:
            await self._writes[0].background.wait()
        self._raise_write_error()

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            reason = os.strerror(self._write_error.errno or errno.EIO)
            raise CacheError(f"cache write failed: {reason}") from self._write_error

    def _wrote(self, entry: _Write, result: outcome.Outcome[None]) -> None:
        """A write finished (in trio's thread): advance ``written`` over the finished prefix."""
        entry.finished = True
        if isinstance(result, outcome.Error) and self._write_error is None:
            error = result.error
            self._write_error = error if isinstance(error, OSError) else OSError(errno.EIO, "")
        advanced = False
        while self._writes and self._writes[0].finished:
            end = self._writes.popleft().end
            if self._write_error is None and not self.ended.is_set():
                self.written, advanced = end, True
        if advanced:
            self._notify()

    def _write_chunk(self, fd: int, data: bytes, offset: int) -> None:
        try:
            _write_all(self.cache._write, fd, data, offset)
        finally:
            os.close(fd)

    async def commit(self, mtime: float | None = None) -> None:
        """Sync the temp file, rename it into place, then remove every other file of the same
        group and kind (the caller promotes only the group's current best of that kind).

        ``mtime`` (the upstream's Last-Modified) is set on the file when given. Raises
        CacheError on an I/O error; the temp file is then removed and nothing promoted.
        """
        if self._fd is None or self._done:
            raise CacheError("refresh is not open")
        try:
            await self.flush()
            await trio.to_thread.run_sync(self._promote, mtime)
        except OSError as exc:
            raise CacheError(f"cache commit failed: {exc.strerror or exc}") from exc
        finally:
            # Promoted: only releases the refresh. Failed or cancelled: also removes the
            # temp file.
            self.abort()
            self.cache._report_size()

    def _promote(self, mtime: float | None) -> None:
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            self.cache._sync(fd)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        directory = os.path.dirname(self.final)
        os.replace(self.temp, self.final)
        self.temp, self._done = "", True
        try:
            _fsync_dir(directory)  # makes the rename durable; the file is in place either way
        except OSError as exc:
            log_event(log, "warning", "cache_dir_fsync_failed", dir=directory, error=exc)
        _evict(directory, self.name, _kind_of(self.name))
        log_event(
            log, "info", "cache_promoted", group=self.group, file=self.name, size=self.written
        )

    def abort(self) -> None:
        """Close and remove the temp file, release the refresh and mark it ended (readers
        wake up). Idempotent, never raises. Readers that opened the temp file keep reading
        their descriptor: after a promotion it is the cached file (a rename keeps the inode).
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.temp:
            _unlink(self.temp)
            self.temp = ""
        self.cache._release(self)
        self.ended.set()
        self._notify()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` dirty bytes from ``offset`` (no waiting).

    Only an optimisation: the final fsync is what makes the file durable, so a file system
    that does not support it is fine.
    """
    sync_file_range = _libc_sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: ignored


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def _writeback_and_close(fd: int, offset: int, length: int) -> None:
    try:
        start_writeback(fd, offset, length)
    finally:
        os.close(fd)


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    # Python's os module has no sync_file_range; glibc has had it since 2.6.
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


def _write_all(write: Writer, fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = write(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind_of(name: str) -> bool:
    parsed = parse_archive_name(name)
    return parsed is not None and parsed.is_full


def _parse_entry(entry: os.DirEntry[str]) -> ArchiveName | None:
    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
        return None
    return parse_archive_name(entry.name)


def _is_archive_entry(entry: os.DirEntry[str]) -> bool:
    return _parse_entry(entry) is not None


def _same_kind(directory: str, name: str, full: bool) -> list[str]:
    """Cached archives of ``directory`` of the same kind as ``name``, other than ``name``."""
    out = []
    for entry in _scan(directory):
        parsed = _parse_entry(entry)
        if parsed is not None and parsed.is_full == full and entry.name != name:
            out.append(entry.name)
    return out


def _evict(directory: str, keep: str, full: bool) -> None:
    """Remove every cached archive of the kind ``full`` in ``directory`` except ``keep``."""
    for other in _same_kind(directory, keep, full):
        if _unlink(os.path.join(directory, other)):
            log_event(log, "info", "cache_evicted", dir=directory, file=other)


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def _unlink(path: str) -> bool:
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log_event(log, "warning", "cache_unlink_failed", path=path, error=exc)
        return False
    return True
