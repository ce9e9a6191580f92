"""An upload as a refresh makes it, without a refresh: the file whole and checked, the
tier's upload with its side objects, then what the tier learns of it and its retention
(:meth:`tracker.objectstore.tier.ObjectTier.completed`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tracker.objectstore.tier import ObjectTier
from tracker.proof.levels import STRUCTURE_ONLY


class Done:
    """A refresh whose file is whole and checked (what an upload follows)."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.proof = STRUCTURE_ONLY
        self.repairs = 0
        self.verified, self.failed, self.repairing = True, False, False

    def storable(self) -> int:
        return self.size

    async def wait_progress(self) -> None:
        raise AssertionError("a whole file needs no wait")


async def upload(
    tier: ObjectTier, tmp_path: Path, group: str, name: str, data: bytes | None = None
) -> None:
    """``tier`` uploads ``name`` of ``group`` (``data``, by default a few bytes; staged in
    ``tmp_path``) as a refresh does, then learns of it and applies retention."""
    data = name.encode() * 3 if data is None else data
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = Done(data)
        info = await tier.upload(tier.object_key(group, name), fd, done, {})
    finally:
        os.close(fd)
    await tier.completed(group, name, info, done.sha256)
