"""Whether a directory the tracker writes into (the disk cache's) can be used.

Checked when the config is loaded (``check-config`` and ``serve`` refuse an unusable
``proxy_snapshot_cache_dir``, as nginx refuses an unusable ``proxy_cache_path``) and again
by the running cache, so that a directory that became unusable shows as such
(README.md, "Config reference", ``proxy_snapshot_cache_dir``).
"""

from __future__ import annotations

import os


def unusable_directory(path: str) -> str:
    """Why ``path`` cannot be used as a directory to create files in ("" when it can).

    A missing directory is usable when it can be created: its nearest existing ancestor is
    a directory the process may write into. ``os.access`` reports a read-only file system
    (EROFS) to root as well, and creates nothing.
    """
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "not a directory" if existing == path else "under a file that is not a directory"
        return f"{what}: {existing!r}"
    if not os.access(existing, os.W_OK | os.X_OK | (os.R_OK if existing == path else 0)):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "read-only file system" if read_only else "permission denied"
        return f"cannot write in {existing!r}: {why}"
    return ""
