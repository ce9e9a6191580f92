"""The check of a snapshot archive (placeholder: only the SHA-256 of its bytes).

The real check (the compression layer and the tar stream decoded to their end, the entries
every snapshot holds) replaces this module; the signature stays.
"""

from __future__ import annotations

import hashlib

#: Bytes read at a time.
READ_SIZE = 1024 * 1024


def check_file(path: str, name: str | None = None) -> str:
    """Check the archive at ``path`` (named ``name``, else its file name) and return the
    lower-case hex SHA-256 of its bytes. Raises :class:`tracker.errors.ArchiveInvalid` (one
    line) when it is not a valid archive, OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
