"""Local-directory probe: the snapshot archives in one directory of this machine.

Only regular files are listed. Symbolic links are skipped, even to valid archives: the tracker
serves local files itself, and following a link would serve whatever the daemon can read,
anywhere on the disk, under an archive name, with a size and mtime that do not belong to the
configured directory. A validator writes real files; archives kept elsewhere can be served by
adding that directory as another local target.

The tracker offers only what it can read: :func:`readable_archives` leaves out of a scan each
archive its user may not open (agave run with systemd's ``UMask=0077`` writes its archives
0600, its own user's), and names it, so that none is ranked and handed out only to fail its
GET.

Every blocking call on a directory (its listing, the stat of files in it) runs through
:class:`tracker.serving.threads.DirectoryThreads`: a directory on a mount that hangs (a stuck
NFS or FUSE server) costs its own callers and one thread, never the other directories'
listings (docs/architecture.md, "Proven archives": "Local files").
"""

from __future__ import annotations

import errno
import os

import attrs

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files, parse_archive_name
from tracker.core.untrusted import utc_time
from tracker.errors import ProbeError

#: The most entries a local target's directory may hold: a ledger's or a snapshot
#: directory's top level holds tens (validators keep a few archives), so two orders of
#: magnitude above that, which a scan reads in well under a second.
MAX_ENTRIES = 20_000


def scan_local(directory: str) -> list[SnapshotInfo]:
    """Every archive in ``directory`` (not recursive), best first, incrementals chained.

    Each file carries its size, its mtime (UTC), ``path`` (absolute) and its bare name as
    ``file_name``. Hidden names, names that are not archive names (the validator's
    ``tmp-snapshot-*`` work directories, partial downloads), directories and symlinks are
    skipped. Blocking: run it in a worker thread. Raises :class:`ProbeError` when the
    directory cannot be listed, an archive in it cannot be stat'ed, or it holds more than
    :data:`MAX_ENTRIES` entries (no ledger does: a scan that read them all would outlast
    the scrape's timeout and hold its thread past it, round after round).
    """
    root = os.path.abspath(directory)
    files: list[SnapshotFile] = []
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries, 1):
                if count > MAX_ENTRIES:
                    raise ProbeError(
                        f"{root} holds more than {MAX_ENTRIES} entries: not a ledger or"
                        " snapshot directory"
                    )
                if (file := _archive(entry)) is not None:
                    files.append(file)
    except OSError as exc:
        raise ProbeError(f"cannot list {root}: {exc.strerror or exc}") from exc
    files.sort(key=lambda f: f.name.order_key(), reverse=True)
    return chains_from_files(files)


def _archive(entry: os.DirEntry[str]) -> SnapshotFile | None:
    if entry.name.startswith("."):
        return None
    name = parse_archive_name(entry.name)
    if name is None:
        return None
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
        stat = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # purged by the validator between the listing and the stat
    except OSError as exc:
        raise ProbeError(f"cannot stat {entry.path}: {exc.strerror or exc}") from exc
    return SnapshotFile(
        name=name,
        file_name=entry.name,
        size=stat.st_size,
        mod_time=utc_time(stat.st_mtime),
        path=entry.path,
    )


@attrs.frozen
class LocalListing:
    """A scan less what this process may not read (:func:`readable_archives`): the
    ``snapshots`` it can serve, and each archive left out (``unreadable``): its path and the
    one-line reason (``Permission denied``)."""

    snapshots: list[SnapshotInfo]
    unreadable: tuple[tuple[str, str], ...] = ()


def readable_archives(scanned: list[SnapshotInfo]) -> LocalListing:
    """``scanned`` (what :func:`scan_local` found) less each archive whose permissions refuse
    this process: each file opened once, read-only, no link followed, and closed at once.
    One gone, or swapped for a link, since the scan is left out too (unnamed). Blocking: run
    it in a worker thread, after the scan. Raises :class:`ProbeError` when a file cannot be
    opened for another cause (this process's want of descriptors among them: the caller
    defers such a probe, :func:`tracker.net.limits.exhausted`)."""
    files = {f.path: f for info in scanned for f in info.files}
    kept: list[SnapshotFile] = []
    unreadable: list[tuple[str, str]] = []
    for path, file in files.items():
        refused = _refused(path)
        if refused == "":
            kept.append(file)
        elif refused is not None:
            unreadable.append((path, refused))
    if len(kept) == len(files):
        return LocalListing(scanned)
    kept.sort(key=lambda f: f.name.order_key(), reverse=True)
    return LocalListing(chains_from_files(kept), tuple(unreadable))


def _refused(path: str) -> str | None:
    """Why this process may not open the file at ``path`` ("": it may; None: gone, or a link
    now). Only the file's permissions leave it out: any other failure fails the probe of its
    directory, as a stat that fails does."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        os.close(os.open(path, flags))
    except PermissionError as exc:
        return exc.strerror or str(exc)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise ProbeError(f"cannot open {path}: {exc.strerror or exc}") from exc
    return ""
