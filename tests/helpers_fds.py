"""Descriptors a test counts: what this process holds open on a file."""

from __future__ import annotations

import os
from pathlib import Path


def open_fds(path: Path) -> int:
    """Descriptors of this process open on ``path`` (also after it was replaced or deleted)."""
    names = {str(path), f"{path} (deleted)"}
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{entry}") in names
        except OSError:
            continue  # the listing's own descriptor, already closed
    return count
