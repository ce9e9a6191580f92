"""The disk cache's directories: the one rule of a group's name, and whether a directory the
tracker writes into can be used.

A group's name is a directory of the disk cache and a path segment of ``/v1/{group}/{name}``:
letters, digits, ``_``, ``-`` and ``.``, at most 128 characters, not starting with ``.``
(``.`` and ``..`` would leave the cache directory, and dot files there are its temp files).
The config, the requests and the cache apply this one rule.

Whether ``proxy_snapshot_cache_dir`` can be used is checked when the config is loaded
(``check-config`` and ``serve`` refuse an unusable one, as nginx refuses an unusable
``proxy_cache_path``) and again by the running cache, so that a directory that became
unusable shows as such (docs/configuration.md, ``proxy_snapshot_cache_dir``).
"""

from __future__ import annotations

import os
import re

#: The longest name a group may have.
MAX_LENGTH = 128
_ALLOWED = re.compile(r"[A-Za-z0-9_.-]+")


def group_name_problem(name: str) -> str:
    """Why ``name`` cannot be a group's name; "" when it can."""
    if not _ALLOWED.fullmatch(name):
        return f"group name must match [A-Za-z0-9_.-]+, got {name!r}"
    if name.startswith("."):
        return f"group name must not start with '.', got {name!r}"
    if len(name) > MAX_LENGTH:
        return f"group name must be at most {MAX_LENGTH} characters, got {len(name)}"
    return ""


def is_group_name(name: str) -> bool:
    """True when ``name`` can be a group's name (:func:`group_name_problem` has none)."""
    return not group_name_problem(name)


def unusable_directory(path: str) -> str:
    """Why ``path`` cannot be used as a directory to create files in ("" when it can).

    A missing directory is usable when it can be created: its nearest existing ancestor is
    a directory the process may write into. ``os.access`` reports a read-only file system
    (EROFS) to root as well, and creates nothing.
    """
    existing = path
    while True:
        try:
            os.lstat(existing)
            break
        except (FileNotFoundError, NotADirectoryError):
            # missing, or under a file: its nearest existing ancestor says
            existing = os.path.dirname(existing)
        except OSError as exc:  # a name too long, a loop of links: it can never be created
            return f"cannot be used: {existing!r}: {exc.strerror}"
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
