"""Disk helpers of the cache: free space, writes, syncs, writeback hints, eviction, listing,
the archives of groups no longer configured (found, named, removed for a refresh short of
room: :func:`orphans_to_remove`), and a refresh's temp file at both ends (room on the disk
and a fresh temp file, then sync, rename into place, the digest beside it and eviction of
the files that need not stay beside it; :func:`open_temp`, :func:`settle`) with the kernel's
writeback of what is written meanwhile (:class:`Writeback`).

Blocking functions: callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Sequence
from functools import partial

import attrs

# The small files' temp prefix and directory fsync, shared with the cache's own temp files.
from tracker.core.cachedirs import is_group_name
from tracker.core.digests import Verified, sha256sum_line
from tracker.core.libc import libc_function
from tracker.core.smallfiles import TEMP_PREFIX as TEMP_PREFIX
from tracker.core.smallfiles import fsync_dir as fsync_dir
from tracker.core.smallfiles import read_small_file, write_atomically
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.observability.logs import log_event
from tracker.ordering.keeping import cache_keeps
from tracker.proof.levels import Proof
from tracker.serving.threads import Background
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


def evict(
    directory: str, promoted: str, served: Collection[int], aside: list[str] | None = None
) -> list[str]:
    """Remove the cached archives of ``directory`` that need not stay once ``promoted`` is in
    place (:func:`~tracker.ordering.keeping.cache_keeps`: one full, and the newest incremental
    of every full still served, ``served`` being the fulls' slots), with their digest files;
    the names removed. With ``aside``, each is renamed aside (:func:`set_aside`) and its
    temp path appended there, for the caller to free once it let its group go."""
    names = []
    for entry in scan(directory):
        if _parse_entry(entry) is not None:
            names.append(entry.name)
    keep = cache_keeps(names, promoted, served)
    removed = []
    for other in sorted(set(names) - keep):
        path = os.path.join(directory, other)
        if aside is None:
            gone = remove_archive(path)
        else:
            moved = set_aside(path)
            gone = moved is not None
            if moved:
                aside.append(moved)
        if gone:
            removed.append(other)
            log_event(log, "info", "cache_evicted", dir=directory, file=other)
    return removed


# -- orphaned groups' archives ------------------------------------------------------------
# A group a reload (or a restart with another config) dropped leaves its directory behind,
# and a mainnet full there is ~100 GB. Removed at once, a typo that drops a group for one
# reload would cost its re-download; kept forever, it takes the room the configured groups'
# refreshes need. So they stay, are named in the log, and go only for a refresh of a
# configured group that lacks the room (docs/proxy.md, "Orphaned archives").


@attrs.frozen
class OrphanedArchive:
    """An archive in a directory of the cache that no configured group names: its
    ``group`` (the directory's name), ``name``, bytes and mtime (Unix time)."""

    group: str
    name: str
    size: int
    mtime: float


def orphans_to_remove(orphans: Sequence[OrphanedArchive], shortfall: int) -> list[OrphanedArchive]:
    """Which of ``orphans`` to remove for ``shortfall`` more bytes of room: the oldest first
    (mtime; group and name after it, so that equal times choose the same way every time),
    as few as make the room; none when there is no shortfall, or when all of them together
    would not make it (the refresh would stream uncached anyway, and the archives might be
    wanted again when their group comes back). Pure."""
    if shortfall <= 0:
        return []
    chosen: list[OrphanedArchive] = []
    freed = 0
    for orphan in sorted(orphans, key=lambda o: (o.mtime, o.group, o.name)):
        if freed >= shortfall:
            break
        chosen.append(orphan)
        freed += orphan.size
    return chosen if freed >= shortfall else []


def orphaned_archives(root: str, groups: Collection[str]) -> list[OrphanedArchive]:
    """Every archive of the cache at ``root`` in a directory that none of ``groups`` names.

    Only real directories whose name can be a group's are looked in: never a link, a dot
    directory (the proofs' spill, ``.accounts-proof``) or another name (``lost+found``); and
    in them only regular files named as archives (:func:`is_archive_entry`). Blocking.
    """
    found: list[OrphanedArchive] = []
    for group in scan(root):
        if group.name in groups or not is_group_name(group.name):
            continue
        if not group.is_dir(follow_symlinks=False):
            continue
        try:
            fd = _open_directory(group.path)
        except OSError:
            continue
        try:
            for entry in _scan_fd(fd):
                if not is_archive_entry(entry):
                    continue
                with contextlib.suppress(OSError):  # gone meanwhile
                    st = entry.stat(follow_symlinks=False)
                    found.append(OrphanedArchive(group.name, entry.name, st.st_size, st.st_mtime))
        finally:
            os.close(fd)
    return found


def remove_orphaned(
    root: str,
    orphans: Sequence[OrphanedArchive],
    refresh: str,
    configured: Callable[[], Collection[str] | None] | None = None,
) -> list[OrphanedArchive]:
    """Remove ``orphans`` from the cache at ``root`` in their order, each with the files
    beside it (its digest, proof and stakes), for the refresh of ``refresh`` (``group/name``,
    logged), then each directory they leave empty; those removed. ``configured`` (the
    groups configured now, None: not known) is asked again before each: a reload that
    configured an orphan's group again since the scan keeps its archives.

    Through descriptors of the directories opened without following a link: a directory
    replaced by a link since the scan is not followed, and nothing outside ``root`` is
    touched. A client still reading an archive removed keeps reading it (its descriptor
    holds the file); its bytes are freed when that download ends.
    """
    removed: list[OrphanedArchive] = []
    try:
        root_fd = _open_directory(root)
    except OSError as exc:
        log_event(log, "warning", "cache_unlink_failed", path=root, error=exc)
        return removed
    try:
        for orphan in orphans:
            now = configured() if configured is not None else None
            if now is not None and orphan.group in now:
                continue  # its group is configured again: its archives are wanted
            try:
                fd = _open_directory(orphan.group, root_fd)
            except OSError:
                continue  # gone, or no longer a directory
            try:
                shown = os.path.join(root, orphan.group)
                if not _unlink_at(fd, orphan.name, shown):
                    continue
                for suffix in SIDES:
                    _unlink_at(fd, f".{orphan.name}{suffix}", shown)
            finally:
                os.close(fd)
            removed.append(orphan)
            log_event(
                log,
                "warning",
                "cache_orphan_removed",
                group=orphan.group,
                file=orphan.name,
                size=orphan.size,
                refresh=refresh,
            )
        for group in sorted({o.group for o in removed}):
            with contextlib.suppress(OSError):  # only when empty: anything else stays
                os.rmdir(group, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    return removed


def report_orphaned(root: str, groups: Collection[str]) -> list[str]:
    """Log one ``cache_orphaned`` warning for each directory of the cache at ``root`` that
    holds archives none of ``groups`` names (:func:`orphaned_archives`): its path, how many
    archives, their bytes; the groups named. Blocking."""
    by_group: dict[str, list[OrphanedArchive]] = {}
    for orphan in orphaned_archives(root, groups):
        by_group.setdefault(orphan.group, []).append(orphan)
    for group, orphans in sorted(by_group.items()):
        log_event(
            log,
            "warning",
            "cache_orphaned",
            group=group,
            dir=os.path.join(root, group),
            archives=len(orphans),
            size=sum(o.size for o in orphans),
        )
    return sorted(by_group)


def _open_directory(path: str, dir_fd: int | None = None) -> int:
    """A descriptor of the directory ``path`` (relative to ``dir_fd``), never through a
    link at its last component."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, dir_fd=dir_fd)


def _scan_fd(fd: int) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(fd) as entries:  # of a duplicate: ``fd`` stays open
            return list(entries)
    except OSError:
        return []


def _unlink_at(dir_fd: int, name: str, shown: str) -> bool:
    """Remove the file ``name`` of the directory open as ``dir_fd`` (a link itself, never
    what it points to; never a directory); whether it was there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:  # a directory (EISDIR), no permission
        log_event(log, "warning", "cache_unlink_failed", path=os.path.join(shown, name), error=exc)
        return False
    return True


#: The suffixes of the files kept beside a cached archive: its digest, what its check proved,
#: the stakes of its manifest's epoch (what a finality certificate of its slot is read in:
#: :attr:`tracker.proof.levels.Proof.epoch_stakes`, written only when the manifest had them).
SHA256, PROOF, STAKES = ".sha256", ".proof", ".stakes"
SIDES = (SHA256, PROOF, STAKES)


def remove_archive(path: str) -> bool:
    """Remove the cached archive at ``path`` and the files beside it; whether it was there."""
    if not unlink(path):
        return False
    for suffix in SIDES:
        unlink(digest_path(path, suffix))
    return True


def set_aside(path: str) -> str | None:
    """Rename the cached archive at ``path`` to a temp name beside it and remove the files
    beside it: gone from its name at once, its bytes freed by :func:`free_aside` once its
    group's changes may go on (an unlink of ~100 GB takes seconds on ext4); a temp name is
    removed at start-up should the tracker stop first. The temp path; "" when it could not
    be renamed and was removed here instead; None when nothing was removed."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        moved = os.path.join(
            os.path.dirname(path), f"{TEMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(4)}"
        )
        os.rename(path, moved)
    except FileNotFoundError:
        return None
    except OSError:
        return "" if remove_archive(path) else None
    for suffix in SIDES:
        unlink(digest_path(path, suffix))
    return moved


def free_aside(paths: Collection[str]) -> None:
    """Remove the archives :func:`set_aside` renamed aside (blocking: a worker thread)."""
    for path in paths:
        unlink(path)


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
    write_side(path, line.encode(), suffix)


def write_side(path: str, data: bytes, suffix: str) -> None:
    """Write the file ``suffix`` of the archive at ``path`` beside it (:func:`digest_path`),
    atomically, with the archive's mtime."""
    st = os.stat(path, follow_symlinks=False)
    # Exactly 0644 whatever the umask: a restart trusts it only when no one else can have
    # written it (cache.checked).
    write_atomically(digest_path(path, suffix), data, mode=0o644, mtime_ns=st.st_mtime_ns)


def write_proof_files(path: str, proof: Proof) -> None:
    """Write what a check proved of the archive at ``path`` beside it: its proof file, and
    the stakes of its manifest's epoch (the stale file of an earlier check removed when
    this one has none)."""
    if proof.epoch_stakes is not None:
        write_side(path, proof.epoch_stakes, STAKES)
    else:
        unlink(digest_path(path, STAKES))
    write_digest(path, json.dumps(proof.to_json()) + "\n", PROOF)


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


@attrs.frozen
class Opened:
    """A temp file created for a refresh (``fd`` and ``temp`` path), or why not: ``fd`` is
    None, with ``no_space`` when the disk had too little room (else the cache directory
    could not be written)."""

    fd: int | None
    temp: str = ""
    no_space: bool = False
    #: Why the group's directory or the temp file could not be created (None: it was, or
    #: ``no_space``).
    error: OSError | None = None
    #: Free bytes found on the cache's file system, and the bytes needed (with ``no_space``).
    free: int = 0
    needed: int = 0
    #: The orphaned archives removed to make the room (:func:`remove_orphaned`).
    orphans_removed: tuple[OrphanedArchive, ...] = ()
    #: The group's own archives evicted to make the room (:func:`evict`).
    evicted: tuple[str, ...] = ()


def open_temp(
    final: str,
    group: str,
    name: str,
    size: int,
    needed: int,
    ops: DiskOps,
    served: Collection[int],
    configured: Callable[[], Collection[str] | None] | None = None,
) -> Opened:
    """Make ``needed`` bytes of room beside ``final`` (removing, when short, the files that
    need not stay once ``name`` is in place: :func:`~tracker.cache.disk.evict` with the full
    slots still ``served``; then, when still short, the orphaned archives of the cache's
    directories that none of the groups ``configured()`` names, oldest first, as few as
    make the room: :func:`orphans_to_remove`; None: not known, none removed; asked again
    before each removal, :func:`remove_orphaned`) and create a fresh temp file there,
    read-write (the archive check reads it through a duplicate)."""
    directory = os.path.dirname(final)
    removed: list[OrphanedArchive] = []
    evicted: tuple[str, ...] = ()
    try:
        if os.path.islink(directory):
            # The group's directory replaced by a link (the cache's root is a real path,
            # the group one part of it): the refresh would write, rename and evict where
            # it points, another group's archives or outside the cache.
            raise OSError(f"{directory} is a symlink in the cache directory")
        os.makedirs(directory, exist_ok=True)
        if ops.free_space(directory) < needed:
            evicted = tuple(evict(directory, name, served))
            free = ops.free_space(directory)
            groups = configured() if configured is not None and free < needed else None
            if groups is not None:
                # ``final`` is {root}/{group}/{name} (Cache.path_for): the root is two up.
                root = os.path.dirname(directory)
                chosen = orphans_to_remove(orphaned_archives(root, groups), needed - free)
                removed = remove_orphaned(root, chosen, f"{group}/{name}", configured)
                if removed:
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
                orphans = tuple(removed)
                return Opened(
                    None,
                    no_space=True,
                    free=free,
                    needed=needed,
                    orphans_removed=orphans,
                    evicted=evicted,
                )
        temp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(temp, flags, 0o644)
        return Opened(fd, temp, orphans_removed=tuple(removed), evicted=evicted)
    except OSError as exc:
        log_event(log, "error", "cache_refresh_unwritable", group=group, file=name, error=exc)
        return Opened(None, error=exc, orphans_removed=tuple(removed), evicted=evicted)


def sync_temp(fd: int, mtime: float | None, ops: DiskOps) -> None:
    """Sync the temp file open as ``fd`` (``ops.sync``) and give it ``mtime`` (when known):
    its bytes are durable before it is renamed into place."""
    ops.sync(fd)
    if mtime is not None:
        os.utime(fd, (mtime, mtime))


def rename_into_place(fd: int, temp: str, final: str) -> None:
    """Close the synced temp file ``fd`` and rename it (``temp``) to ``final``."""
    os.close(fd)
    os.replace(temp, final)


def settle(
    final: str,
    group: str,
    name: str,
    size: int,
    checked: Verified | None,
    served: Collection[int],
) -> tuple[list[str], list[str]]:
    """After the rename: write the digest and the proof beside ``final`` (when checked),
    make the rename durable and remove the files that need not stay
    (:func:`~tracker.cache.disk.evict`, with the full slots still ``served``); the names
    evicted, and the temp paths they were set aside to (:func:`free_aside` frees them)."""
    directory = os.path.dirname(final)
    sha256 = checked.sha256 if checked is not None else ""
    if checked is not None:
        try:
            # After the rename: the digest file's ctime is then never older than the
            # archive's, which is how start-up knows the archive did not change since.
            write_proof_files(final, checked.proof)
            write_digest(final, sha256sum_line(sha256, name))
        except OSError:
            # (a full disk) in place without its digest, the archive would be neither
            # served nor evicted, its space taken until a restart: it goes with the refresh
            remove_archive(final)
            raise
    try:
        fsync_dir(directory)  # makes the rename durable; the file is in place either way
    except OSError as exc:
        log_event(log, "warning", "cache_dir_fsync_failed", dir=directory, error=exc)
    aside: list[str] = []
    evicted = evict(directory, name, served, aside)
    log_event(
        log, "info", "cache_promoted", group=group, file=name, size=size, sha256=sha256 or None
    )
    return evicted, aside


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


#: A failed write's errors that say the cache's disk (or its owner's quota) is full.
NO_ROOM_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_reason(name: str, reason: str) -> str:
    """Why a refresh of ``name`` failed when the disk filled under it (``reason``: the
    system's words): one line for the log, the status page and ``/v1/targets``."""
    return f"{name} not cached: the cache's disk ran out of room while it was written ({reason})"


def os_reason(exc: OSError) -> str:
    """The system's words for ``exc``: its errno's, else its own text, else "I/O error"."""
    return os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc) or "I/O error"


def unopened_reason(name: str, exc: OSError) -> str:
    """Why a refresh of ``name`` could not create its temp file (``exc``): one line for the
    log, the status page and ``/v1/targets``; a full disk (no inode, a quota) said as one."""
    reason = os_reason(exc)
    if exc.errno in NO_ROOM_ERRORS:
        return f"{name} streamed uncached: the cache's disk has no room for a new file ({reason})"
    return f"{name} streamed uncached: its temp file could not be created ({reason})"


def no_room_reason(name: str, needed: int, free: int) -> str:
    """Why a refresh of ``name`` did not start: one line for the log, the status page and
    ``/v1/targets``."""
    return (
        f"{name} streamed uncached: the cache needs {needed} bytes free "
        f"(the archive and proxy_snapshot_cache_min_free), {free} are"
    )
