"""Local-directory probe: the snapshot archives in one directory of this machine.

Only regular files are listed. Symbolic links are skipped, even to valid archives: the tracker
serves local files itself, and following a link would serve whatever the daemon can read,
anywhere on the disk, under an archive name, with a size and mtime that do not belong to the
configured directory. A validator writes real files; archives kept elsewhere can be served by
adding that directory as another local target.
"""

from __future__ import annotations

import os

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
