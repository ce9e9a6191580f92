"""Disk helpers of the cache: free space, writes, syncs, writeback hints, eviction, listing.

Blocking functions: callers run them in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from typing import cast

from tracker.core.logs import log_event
from tracker.core.snapshots import ArchiveName, parse_archive_name

log = logging.getLogger("tracker.cache")

#: Temp files of refreshes start with this (dot files: never listed as archives).
TEMP_PREFIX = ".tmp-"
#: Dirty bytes after which a refresh starts the kernel's writeback of what it wrote.
WRITEBACK_EVERY = 32 * 1024 * 1024
#: ``os.pwrite``'s shape: (fd, data, offset) -> bytes written; injectable for fault tests.
Writer = Callable[[int, bytes | memoryview, int], int]
#: ``splice_to_file``'s shape: (socket fd, file fd, offset, count, read timeout, seconds) ->
#: bytes moved; injectable for fault tests.
Splicer = Callable[[int, int, int, int, float, float], int]
#: Free bytes of the file system holding a directory.
FreeSpace = Callable[[str], int]


def disk_free(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    return shutil.disk_usage(path).free


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` dirty bytes from ``offset`` (no waiting).

    Only an optimisation: the final fsync is what makes the file durable, so a file system
    that does not support it is fine.
    """
    sync_file_range = _libc_sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: ignored


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def writeback_and_close(fd: int, offset: int, length: int) -> None:
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


def write_all(write: Writer, fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = write(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kind_of(name: str) -> bool:
    parsed = parse_archive_name(name)
    return parsed is not None and parsed.is_full


def _parse_entry(entry: os.DirEntry[str]) -> ArchiveName | None:
    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
        return None
    return parse_archive_name(entry.name)


def is_archive_entry(entry: os.DirEntry[str]) -> bool:
    return _parse_entry(entry) is not None


def _same_kind(directory: str, name: str, full: bool) -> list[str]:
    """Cached archives of ``directory`` of the same kind as ``name``, other than ``name``."""
    out = []
    for entry in scan(directory):
        parsed = _parse_entry(entry)
        if parsed is not None and parsed.is_full == full and entry.name != name:
            out.append(entry.name)
    return out


def evict(directory: str, keep: str, full: bool) -> None:
    """Remove every cached archive of the kind ``full`` in ``directory`` except ``keep``."""
    for other in _same_kind(directory, keep, full):
        if unlink(os.path.join(directory, other)):
            log_event(log, "info", "cache_evicted", dir=directory, file=other)


def scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def unlink(path: str) -> bool:
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
