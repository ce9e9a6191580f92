"""Room in the ledger for a fetch: the check before the first byte, and the preallocation.

A fetch that runs out of space after an hour of download wastes the hour: the free space
(``statvfs``: what an unprivileged user may take) is checked before anything is downloaded,
against every archive planned, less what resumable temp files already hold. The temp file
of a new download is then preallocated (``fallocate(2)``), so the disk cannot fill under
it half way; where the file system cannot preallocate, it stays a sparse file, as before.
Not ``posix_fallocate``: where the file system has no preallocation, glibc emulates it by
writing a byte into every block, which for a 100 GB archive on NFS or ZFS takes longer than
the download it prepares.

What a download takes on disk is more than its bytes: its temp file takes whole blocks, and
its state file (``.tmp-{name}.state``) is replaced by writing ``.state.new`` beside it, so
two of them exist at once during a save (docs/fetch.md, "Safely"). The check counts both
(:func:`room_needed`): where only the archive's bytes fitted, the temp file was allocated,
the state file's next save failed with ENOSPC, and every run downloaded the whole archive
only to record none of it.

A full's accounts proof spills its index beside the download by default (``.accounts-proof``
in the ledger) while the download runs. Before each of its writes it leaves free what the
temp file still lacks on disk (:func:`not_on_disk`: a resumed temp file is not preallocated,
nor one on a file system without ``fallocate``), so the proof stops short of room ("not
proven") where it would otherwise take the room the download needs.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from tracker.core.libc import libc_function

#: The free bytes of the file system holding a path (injectable in tests).
FreeBytes = Callable[[str], int]

#: fallocate's answers where the file system has no preallocation: no error.
NO_PREALLOCATION = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


#: fallocate(2) of the C library (Linux), or None where there is none.
_FALLOCATE = libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
)


def fallocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file of ``fd`` on disk, never by writing them: an
    OSError with EOPNOTSUPP where the file system (or the platform) cannot."""
    if _FALLOCATE is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _FALLOCATE(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def free_bytes(path: str) -> int:
    """The bytes an unprivileged writer may still put on the file system of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


#: Block size assumed where ``statvfs`` cannot tell.
DEFAULT_BLOCK = 4096

#: The most a state file is counted for: a few hundred bytes, one range per gap between
#: the pieces done (a few per connection), so a few KiB even for many connections.
STATE_BYTES = 16 * 1024


def block_size(path: str) -> int:
    """The block size of the file system of ``path`` (``f_frsize``), DEFAULT_BLOCK where it
    cannot be read (the ledger not created yet)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return DEFAULT_BLOCK
    return info.f_frsize or info.f_bsize or DEFAULT_BLOCK


def on_disk(size: int, block: int) -> int:
    """The bytes a file of ``size`` bytes takes in whole blocks of ``block`` bytes."""
    return -(-size // block) * block


def room_needed(sizes: list[int], block: int) -> int:
    """The bytes downloads of ``sizes`` (one after the other) take on disk: each archive's
    temp file in whole blocks, and room for its state file twice (the state and the
    ``.state.new`` that replaces it; one download's state is gone before the next one's
    is written)."""
    if not sizes:
        return 0
    return sum(on_disk(size, block) for size in sizes) + 2 * on_disk(STATE_BYTES, block)


def shortfall(needed: int, held: int, free: int) -> int:
    """Bytes missing for a download of ``needed`` bytes of which ``held`` are already on
    disk (a resumable temp file) when ``free`` are free; 0 when it fits."""
    return max(0, max(0, needed - held) - free)


def no_room_reason(what: str, ledger: str, needed: int, held: int, free: int) -> str:
    """The one line of a fetch that does not fit; "" when it does. ``needed`` is what it
    takes on disk (:func:`room_needed`), ``held`` what its files there already take."""
    if not shortfall(needed, held, free):
        return ""
    return (
        f"{what}: not enough space in {ledger}: {needed - held} bytes needed, {free} free "
        f"({_gib(needed - held)} needed, {_gib(free)} free)"
    )


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def preallocate(fd: int, size: int) -> None:
    """Give the file of ``fd`` its ``size`` bytes on disk, allocated where the file system
    can (an OSError such as ENOSPC is raised); elsewhere only its length is set."""
    if size > 0:
        try:
            fallocate(fd, size)
        except OSError as exc:
            if exc.errno not in NO_PREALLOCATION:
                raise
    os.ftruncate(fd, size)


def not_on_disk(path: str, size: int) -> int:
    """Bytes of the ``size``-byte temp file at ``path`` that its blocks on disk do not hold
    yet (a sparse or resumed file lacks them; a preallocated one none); 0 once it is gone
    (renamed into place). Never follows a link."""
    try:
        blocks = os.lstat(path).st_blocks
    except OSError:
        return 0
    return max(0, size - blocks * 512)


def same_file_system(path: str, other: str) -> bool:
    """Whether ``path``, or where it would be made (its nearest parent that exists), lies
    on the file system of ``other``; False when either cannot be looked at."""
    try:
        device = os.stat(other).st_dev
    except OSError:
        return False
    at = os.path.abspath(path)
    while True:
        try:
            return os.stat(at).st_dev == device
        except FileNotFoundError:
            parent = os.path.dirname(at)
            if parent == at:
                return False
            at = parent
        except OSError:
            return False
