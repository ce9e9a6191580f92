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
from collections.abc import Callable, Collection

import attrs

# The small files' temp prefix and directory fsync, shared with the cache's own temp files.
from tracker.core.libc import libc_function
from tracker.core.smallfiles import TEMP_PREFIX as TEMP_PREFIX
from tracker.core.smallfiles import fsync_dir as fsync_dir
from tracker.core.smallfiles import read_small_file, write_atomically
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.observability.logs import log_event
from tracker.ordering.keeping import cache_keeps
from tracker.zerocopy.filesplice import Splicer
from tracker.zerocopy.kernelcopy import splice_to_file

log = logging.getLogger("tracker.cache")

__all__ = ["TEMP_PREFIX", "fsync_dir"]  # the small files' (tracker.core.smallfiles), shared
#: Dirty bytes after which a refresh starts the kernel's writeback of what it wrote.
WRITEBACK_EVERY = 32 * 1024 * 1024
#: ``os.pwrite``'s shape: (fd, data, offset) -> bytes written; injectable for fault tests.
Writer = Callable[[int, bytes | memoryview, int], int]
#: Free bytes of the file system holding a directory.
FreeSpace = Callable[[str], int]


def disk_free(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    return shutil.disk_usage(path).free


@attrs.frozen
class DiskOps:
    """The disk operations and limits of a cache's refreshes, given to each
    :class:`~tracker.cache.refresh.Refresh` (tests simulate a full, slow or failing disk
    with them).

    ``write`` writes a chunk, ``splice`` moves an upstream socket's bytes into the temp file,
    ``sync`` is the temp file's fsync; ``min_free`` bytes stay free on top of a refresh's
    announced length; ``writeback_every`` dirty bytes start the kernel's writeback.
    """

    free_space: FreeSpace = disk_free
    write: Writer = os.pwrite
    splice: Splicer = splice_to_file
    sync: Callable[[int], None] = os.fsync
    min_free: int = 0
    writeback_every: int = WRITEBACK_EVERY


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` dirty bytes from ``offset`` (no waiting).

    Only an optimisation: the final fsync is what makes the file durable, so a file system
    that does not support it is fine.
    """
    # Python's os module has no sync_file_range; glibc has had it since 2.6.
    sync_file_range = libc_function(
        "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    )
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: ignored


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def writeback_and_close(fd: int, offset: int, length: int) -> None:
    try:
        start_writeback(fd, offset, length)
    finally:
        os.close(fd)


def write_all(write: Writer, fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = write(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def _parse_entry(entry: os.DirEntry[str]) -> ArchiveName | None:
    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
        return None
    return parse_archive_name(entry.name)


def is_archive_entry(entry: os.DirEntry[str]) -> bool:
    return _parse_entry(entry) is not None


def evict(directory: str, promoted: str, served: Collection[int]) -> list[str]:
    """Remove the cached archives of ``directory`` that need not stay once ``promoted`` is in
    place (:func:`~tracker.ordering.keeping.cache_keeps`: one full, and the newest incremental
    of every full still served, ``served`` being the fulls' slots), with their digest files;
    the names removed."""
    names = []
    for entry in scan(directory):
        if _parse_entry(entry) is not None:
            names.append(entry.name)
    keep = cache_keeps(names, promoted, served)
    removed = []
    for other in sorted(set(names) - keep):
        path = os.path.join(directory, other)
        if unlink(path):
            unlink(digest_path(path))
            unlink(digest_path(path, PROOF))
            removed.append(other)
            log_event(log, "info", "cache_evicted", dir=directory, file=other)
    return removed


#: The suffixes of the files kept beside a cached archive: its digest, what its check proved.
SHA256, PROOF = ".sha256", ".proof"


def digest_path(path: str, suffix: str = SHA256) -> str:
    """Where the digest of the cached archive at ``path`` is kept: ``.{name}.sha256`` beside
    it (a dot file: never listed as an archive, and it does not end in the archive's name);
    with ``suffix`` :data:`PROOF`, what its check proved (``.{name}.proof``, JSON)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{suffix}")


def write_digest(path: str, line: str, suffix: str = SHA256) -> None:
    """Write the ``sha256sum`` line of the archive at ``path`` beside it (``suffix``
    :data:`PROOF`: its proof), atomically (:func:`~tracker.core.smallfiles.write_atomically`),
    with the archive's mtime."""
    st = os.stat(path, follow_symlinks=False)
    # Exactly 0644 whatever the umask: a restart trusts it only when no one else can have
    # written it (cache.checked).
    write_atomically(digest_path(path, suffix), line.encode(), mode=0o644, mtime_ns=st.st_mtime_ns)


#: Longest digest file read: a ``sha256sum`` line is 64 hex digits, two spaces and a name.
MAX_DIGEST_BYTES = 4096


def read_digest(
    path: str, max_bytes: int = MAX_DIGEST_BYTES, suffix: str = SHA256
) -> tuple[str, os.stat_result] | None:
    """The digest file (or, with ``suffix``, the proof file) of the archive at ``path``: its
    text and status, or None (missing, not a small regular file, a link, unreadable:
    :func:`~tracker.core.smallfiles.read_small`)."""
    try:
        data, st = read_small_file(digest_path(path, suffix), max_bytes)
    except OSError:
        return None
    return data.decode("utf-8", "replace"), st


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
