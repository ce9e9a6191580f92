"""A refresh's temp file on disk: the blocking steps at both ends (run in worker threads),
room on the disk and a fresh temp file, then sync, rename into place, the digest beside it
and eviction of the files that need not stay beside it; and the kernel's writeback of what is
written meanwhile (:class:`Writeback`)."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Collection
from functools import partial

import attrs

from tracker.cache.disk import (
    PROOF,
    TEMP_PREFIX,
    DiskOps,
    evict,
    fsync_dir,
    write_digest,
    writeback_and_close,
)
from tracker.core.digests import Verified, sha256sum_line
from tracker.observability.logs import log_event
from tracker.serving.threads import Background

log = logging.getLogger("tracker.cache")


@attrs.frozen
class Opened:
    """A temp file created for a refresh (``fd`` and ``temp`` path), or why not: ``fd`` is
    None, with ``no_space`` when the disk had too little room (else the cache directory
    could not be written)."""

    fd: int | None
    temp: str = ""
    no_space: bool = False
    #: Free bytes found on the cache's file system (with ``no_space``).
    free: int = 0


def open_temp(
    final: str, group: str, name: str, size: int, needed: int, ops: DiskOps, served: Collection[int]
) -> Opened:
    """Make ``needed`` bytes of room beside ``final`` (removing, when short, the files that
    need not stay once ``name`` is in place: :func:`~tracker.cache.disk.evict` with the full
    slots still ``served``) and create a fresh temp file there, read-write (the archive
    check reads it through a duplicate)."""
    directory = os.path.dirname(final)
    try:
        os.makedirs(directory, exist_ok=True)
        if ops.free_space(directory) < needed:
            evict(directory, name, served)
            free = ops.free_space(directory)
            if free < needed:
                log_event(
                    log,
                    "warning",
                    "cache_no_space",
                    group=group,
                    file=name,
                    size=size,
                    needed=needed,
                    free=free,
                )
                return Opened(None, no_space=True, free=free)
        temp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        return Opened(os.open(temp, flags, 0o644), temp)
    except OSError as exc:
        log_event(log, "error", "cache_refresh_unwritable", group=group, file=name, error=exc)
        return Opened(None)


def rename_into_place(fd: int, temp: str, final: str, mtime: float | None, ops: DiskOps) -> None:
    """Sync the temp file (``ops.sync``), give it ``mtime`` (when known), close it and
    rename it to ``final``."""
    try:
        ops.sync(fd)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
    os.replace(temp, final)


def settle(
    final: str,
    group: str,
    name: str,
    size: int,
    checked: Verified | None,
    served: Collection[int],
) -> list[str]:
    """After the rename: write the digest and the proof beside ``final`` (when checked),
    make the rename durable and remove the files that need not stay
    (:func:`~tracker.cache.disk.evict`, with the full slots still ``served``); the names
    evicted."""
    directory = os.path.dirname(final)
    sha256 = checked.sha256 if checked is not None else ""
    if checked is not None:
        # After the rename: the digest file's ctime is then never older than the
        # archive's, which is how start-up knows the archive did not change since.
        write_digest(final, json.dumps(checked.proof.to_json()) + "\n", PROOF)
        write_digest(final, sha256sum_line(sha256, name))
    try:
        fsync_dir(directory)  # makes the rename durable; the file is in place either way
    except OSError as exc:
        log_event(log, "warning", "cache_dir_fsync_failed", dir=directory, error=exc)
    evicted = evict(directory, name, served)
    log_event(
        log, "info", "cache_promoted", group=group, file=name, size=size, sha256=sha256 or None
    )
    return evicted


class Writeback:
    """Every ``every`` bytes written, asks the kernel to start writing them out.

    Otherwise a whole archive stays dirty in the page cache for the final fsync (seconds per
    GiB). In a thread of its own, one at a time: sync_file_range blocks while the disk's
    queue is full, and the writes (the client's pace) must not wait for the disk.
    """

    def __init__(self, every: int) -> None:
        self._every = every
        self._flushed = 0  # bytes handed to the kernel's writeback so far
        self._running: Background[None] | None = None

    def advance(self, fd: int | None, written: int) -> None:
        """``written`` bytes of the file open as ``fd`` (None: closed) are written."""
        if written - self._flushed < self._every or fd is None:
            return
        if self._running is not None and not self._running.done():
            return
        start, length = self._flushed, written - self._flushed
        self._flushed = written
        self._running = Background(partial(writeback_and_close, os.dup(fd), start, length))
