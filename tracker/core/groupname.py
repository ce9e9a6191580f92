"""The one rule of a group's name, for the config, the requests and the disk cache alike.

A group's name is a directory of the disk cache and a path segment of ``/v1/{group}/{name}``:
letters, digits, ``_``, ``-`` and ``.``, at most 128 characters, not starting with ``.``
(``.`` and ``..`` would leave the cache directory, and dot files there are its temp files).
"""

from __future__ import annotations

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
