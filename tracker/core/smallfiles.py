"""Small files the tracker keeps or reads back: one bounded reader, one atomic writer.

What lies on disk under a name the tracker uses is hostile: a symbolic link planted there
(to a file the tracker must neither overwrite nor reveal), a FIFO (an ``open`` that blocks
until a writer comes, i.e. forever), a device, a directory, a file of gigabytes. Every small
file (what the tracker learned, a cached archive's digest, a fetch's state) is read with
:func:`read_small` and written with :func:`write_atomically`, so that each of these is
refused once, here (docs/http-api.md#what-the-tracker-learned):

- the reader opens with ``O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC`` (a FIFO opens at once, a
  link is not followed), takes only a regular file (``fstat``) of at most ``max_bytes``;
- the writer creates a temp file in the same directory with ``O_EXCL | O_NOFOLLOW`` (never
  through a link planted under its name), with the mode given whatever the umask, writes it
  whole, fsyncs it, renames it into place and fsyncs the directory: a reader sees the old
  file or the new one, never part of one.

Blocking functions (no event loop here): callers in trio run them in worker threads. The
refusals are ``OSError`` with an ``errno``, a one-line ``strerror`` and the file's name
(``filename``: a failed write says which file the disk refused).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

#: Temp files start with this (dot files: never listed as archives; the disk cache removes
#: leftovers of its directory at start-up).
TEMP_PREFIX = ".tmp-"
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def read_small(path: str, max_bytes: int, *, follow: bool = False) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` (see the module
    doc); OSError when it cannot be read or is refused. ``follow``: a path the operator
    named (``file_targets``), whose links are the operator's own (Kubernetes mounts a
    ConfigMap's files as links): followed; never for a file the tracker keeps."""
    return read_small_file(path, max_bytes, follow=follow)[0]


def read_small_file(
    path: str, max_bytes: int, *, follow: bool = False
) -> tuple[bytes, os.stat_result]:
    """:func:`read_small`, with the status of the file read (its owner, mode, times)."""
    try:
        fd = os.open(path, READ_FLAGS & ~os.O_NOFOLLOW if follow else READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a link: say it plainly
            # followed, the same errno is links that lead back to themselves
            why = "symbolic links in a loop" if follow else "a symbolic link, not followed"
            raise OSError(errno.ELOOP, why, path) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file: {_kind(info.st_mode)}", path)
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than {max_bytes}", path)
        chunks: list[bytes] = []
        left = max_bytes + 1  # one byte more tells a file that grew past the bound
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise OSError(errno.EFBIG, f"more than {max_bytes} bytes", path)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def write_atomically(
    path: str,
    data: bytes,
    *,
    mode: int = 0o644,
    mtime_ns: int | None = None,
    temp_name: str = "",
    replace: bool = True,
) -> None:
    """Replace the file at ``path`` with ``data`` (see the module doc): ``mode`` exactly,
    ``mtime_ns`` its modification time (None: now); ``temp_name`` the temp file's name in
    the same directory (default: ``.tmp-{name}.{random}``; a given one left by an earlier
    run goes first). The directory must exist; OSError when the file could not be written,
    and then ``path`` is as it was. ``replace=False``: never replace anything at ``path``
    (FileExistsError when a file, a link or anything is there): the whole file appears at
    once through ``link(2)``, which, unlike a rename, refuses an existing name."""
    directory, name = os.path.split(path)
    if os.sep in temp_name:
        raise ValueError(f"a temp file's name, not a path: {temp_name!r}")
    temp = os.path.join(directory, temp_name or _temp_name(name))
    if temp_name:
        # A stale temp file, or anything planted under its name, goes first (unlink never
        # follows a link; a directory stays and O_EXCL then refuses).
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(temp)
    fd = os.open(temp, CREATE_FLAGS, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            _write_all(fd, data)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)
        except OSError as exc:
            if exc.filename is not None:
                raise
            # A write, fchmod or fsync names no file: its error line would not say which
            # file the disk refused ("No space left on device" and nothing else).
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path, follow_symlinks=False)
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(directory or ".")


#: The longest name of a file (Linux's ``NAME_MAX``, in bytes).
NAME_MAX = 255


def _temp_name(name: str) -> str:
    """``.tmp-{name}.{random}``, ``name`` cut so that the whole is a name a file may have
    (a name of 242 to 255 bytes was refused: "File name too long")."""
    suffix = f".{secrets.token_hex(4)}"
    room = NAME_MAX - len(TEMP_PREFIX) - len(suffix)
    return f"{TEMP_PREFIX}{os.fsdecode(os.fsencode(name.lstrip('.'))[:room])}{suffix}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def fsync_dir(directory: str) -> None:
    """Make the renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
